"""Shared plumbing for the entry scripts: user errors as one line, full trace on request."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from typing import Any

from medclass.errors import MedclassError


def find_user_error(err: BaseException | None) -> MedclassError | None:
    """The MedclassError behind `err`, also when Hydra's instantiate wrapped it."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MedclassError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def report_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a MedclassError into one `error:` line and exit code 2.

    Set HYDRA_FULL_ERROR=1 to get the full traceback instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {user_error}", file=sys.stderr)
            sys.exit(2)

    return wrapper
