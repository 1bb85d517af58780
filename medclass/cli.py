"""Shared plumbing for the entry scripts: user errors as one line, full trace on request."""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medclass.errors import MedclassError

CONF = Path(__file__).resolve().parents[1] / "conf"
GROUP_CHOICE = re.compile(r"^[+~]{0,2}(?P<group>[a-z_]+(?:/[a-z_]+)*)(?:@[\w.]+)?=(?P<values>[^()\[\]{}]*)$")


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


def check_group_choices(argv: Sequence[str], conf: Path = CONF) -> None:
    """`model=nosuch` as one `error:` line listing the options (Hydra's own message runs to 20 lines).

    Sweeps (`model=cnn,resnet18`) are checked choice by choice; sweeper functions are left to Hydra.
    """
    for arg in argv:
        match = GROUP_CHOICE.match(arg)
        if not match or match["group"].startswith("hydra") or not (conf / match["group"]).is_dir():
            continue
        group = match["group"]
        options = sorted(p.stem for p in (conf / group).glob("*.yaml"))
        for value in match["values"].split(","):
            if value and value != "null" and value not in options:
                print(f"error: {group}={value} is not an option; {group} options: {', '.join(options)}",
                      file=sys.stderr)
                sys.exit(2)


def check_output_folder(argv: Sequence[str]) -> None:
    """One `error:` line, before Hydra tries, when the run folder cannot be created (a file in the way, no access)."""
    given = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    key, folder = next(((k, given[k]) for k in ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir") if k in given),
                       ("MEDCLASS_OUTPUTS", os.environ.get("MEDCLASS_OUTPUTS") or "outputs"))
    path = Path(folder.split("$")[0] or ".").expanduser().absolute()  # up to the first interpolation
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        print(f"error: cannot create the run folder {folder}: {existing} is not a writable folder; "
              f"choose another {key}", file=sys.stderr)
        sys.exit(2)


def check_command_line(argv: Sequence[str]) -> None:
    """What Hydra would report as a long message or a stack trace, as one line and exit code 2."""
    check_group_choices(argv)
    check_output_folder(argv)
