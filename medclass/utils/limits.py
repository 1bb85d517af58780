"""Bounds on work a file can make medclass do: a time limit for regular expressions from anywhere.

Python's `re` has no timeout, and a pattern such as `(.?){999}#` backtracks for ever. Its matching
loop does check for signals, so a `SIGALRM` timer interrupts it. `time_limit` arms one in the main
thread (elsewhere, or on systems without `setitimer`, it does nothing) and turns it into one error line.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator

from medclass.utils.errors import MedclassError


@contextlib.contextmanager
def time_limit(seconds: float, message: str) -> Iterator[None]:
    """Raise MedclassError(`message`) if the block runs longer than `seconds`."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise MedclassError(message)

    previous = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
