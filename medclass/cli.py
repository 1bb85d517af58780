"""Shared plumbing for the entry scripts: user errors as one line, full trace on request."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

from medclass.errors import MedclassError

log = logging.getLogger("medclass")


def report_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a MedclassError into one `error:` line and exit code 2.

    Set HYDRA_FULL_ERROR=1 to get the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except MedclassError as err:
            if os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {err}", file=sys.stderr)
            sys.exit(2)

    return wrapper
