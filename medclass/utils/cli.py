"""Shared plumbing for the entry scripts: user errors as one line, full trace on request."""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import re
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medclass.utils.errors import MedclassError
from medclass.utils.io import write_text

CONF = Path(next(iter(importlib.util.find_spec("medclass.conf").submodule_search_locations)))  # conf/, installed
# group=a, group=a,b (a sweep), group=[a,b] (several configs of one group); sweeper functions are Hydra's
GROUP_CHOICE = re.compile(r"^[+~]{0,2}(?P<group>[a-z_]+(?:/[a-z_]+)*)(?:@[\w.]+)?=\[?(?P<values>[^()\[\]{}]*?)\]?$")


# what a required option (`???` in the config) takes, for the one-line error when it is missing
REQUIRED_HINTS = {"ckpt_path": "<run>/checkpoints/<file>.ckpt", "inputs": "<image, folder, 'glob' or CSV>",
                  "data.root": "<folder with one sub-folder per class>", "data.manifest": "<labels.csv>",
                  "data.input_dir": "<folder or bucket URL written by medclass-prepare>",
                  "out": "<a new folder for the prepared data set>"}


def find_user_error(err: BaseException | None) -> MedclassError | None:
    """The MedclassError behind `err`, also when Hydra's instantiate wrapped it; a required option left
    unset (`???`) counts as one too."""
    from omegaconf.errors import MissingMandatoryValue

    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, MedclassError):
            return err
        if isinstance(err, MissingMandatoryValue):
            key = str(getattr(err, "full_key", "") or "").strip() or "an option"
            return MedclassError(f"{key} is required: add {key}={REQUIRED_HINTS.get(key, '<value>')} to the command")
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


# an error line's length on the console: past any message medclass writes (option lists included), short of a
# file's content pasted whole
CONSOLE_LIMIT = 5000


def console_text(text: Any, limit: int = CONSOLE_LIMIT) -> str:
    """`text` as one console line: control characters (escape sequences, newlines) and bidirectional overrides
    escaped by `medclass.utils.text.printable`, so what a file or a message holds cannot drive the terminal."""
    from medclass.utils.text import printable

    return printable(text, limit)


@dataclass
class SweepRecord:
    """This process's jobs under `-m` (the local launcher runs them all here), for the closing summary."""

    finished: int = 0
    failed: list[str] = field(default_factory=list)  # "<overrides>: <error> (<folder>/error.txt)"


SWEEP = SweepRecord()
ERROR_FILE = "error.txt"


def in_multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN


def record_failed_job(err: BaseException, user_error: MedclassError | None) -> None:
    """A failed sweep job: its error in its own folder (`error.txt`), one log line, and on with the sweep."""
    from hydra.core.hydra_config import HydraConfig

    hydra_cfg = HydraConfig.get()
    folder = Path(hydra_cfg.runtime.output_dir)
    overrides = " ".join(hydra_cfg.overrides.task) or "(defaults)"
    message = str(user_error) if user_error else f"{type(err).__name__}: {err}"
    folder.mkdir(parents=True, exist_ok=True)
    trace = "".join(traceback.format_exception(err))
    write_text(folder / ERROR_FILE, f"error: {message}\noverrides: {overrides}\n\n{trace}")
    SWEEP.failed.append(f"{overrides}: {message} ({folder / ERROR_FILE})")
    logging.getLogger("medclass").error("job failed, the sweep goes on: %s (%s)", console_text(message),
                                        console_text(folder / ERROR_FILE))


def report_user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a MedclassError into one `error:` line and exit code 2.

    Under `-m` no job's failure ends the sweep: any exception is written to the job's `error.txt`, the
    job returns None (the Optuna sweeper cannot read it as a number and marks the trial failed, then
    goes on) and `run` sums up at the end.
    Set HYDRA_FULL_ERROR=1 to get the full traceback of a single run instead.
    """

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            result = fn(*args, **kwargs)
        except Exception as err:
            user_error = find_user_error(err)
            if in_multirun():
                record_failed_job(err, user_error)
                return None
            if user_error is None or os.environ.get("HYDRA_FULL_ERROR") == "1":
                raise
            print(f"error: {console_text(user_error)}", file=sys.stderr)
            sys.exit(2)
        SWEEP.finished += 1
        return result

    return wrapper


def run(main: Callable[[], Any], argv: Sequence[str] | None = None) -> None:
    """An entry script's whole life: check the command line, run the Hydra main, sum up a sweep.

    A sweep with failed jobs ends with one line naming them and exit code 1.
    """
    argv = as_meant(sys.argv[1:] if argv is None else argv)
    sys.argv[1:] = argv  # what Hydra reads
    check_command_line(argv)
    try:
        main()
    finally:  # also when the sweeper itself gives up afterwards (Optuna with no completed trial)
        if SWEEP.failed:
            total = SWEEP.finished + len(SWEEP.failed)
            print(f"error: {SWEEP.finished} of {total} jobs finished; failed: "
                  + console_text("; ".join(SWEEP.failed), CONSOLE_LIMIT * 4), file=sys.stderr)
    if SWEEP.failed:
        sys.exit(1)


def group_choices(argv: Sequence[str]) -> Iterator[tuple[str, list[str]]]:
    """(group, the options chosen) for every config-group choice on the command line."""
    for arg in argv:
        match = GROUP_CHOICE.match(arg)
        if match:
            yield match["group"], [v for v in match["values"].split(",") if v]


def searchpath_folders(argv: Sequence[str]) -> list[Path] | None:
    """The `file://` folders of a `hydra.searchpath=[...]` override (relative ones from here); None when one
    is a `pkg://` package, whose options this check cannot list."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    folders: list[Path] = []
    for arg in argv:
        if arg.lstrip("+").startswith("hydra.searchpath="):
            try:
                value = OverridesParser.create().parse_overrides([arg])[0].value()
            except Exception:
                return None
            for entry in value if isinstance(value, list) else [value]:
                if not str(entry).startswith("file://"):
                    return None
                folders.append(Path(os.path.expanduser(str(entry)[len("file://"):])))
    return folders


def check_group_choices(argv: Sequence[str], conf: Path = CONF) -> None:
    """`model=nosuch` as one `error:` line listing the options (Hydra's own message runs to 20 lines).

    Sweeps (`model=cnn,resnet18`) are checked choice by choice; sweeper functions are left to Hydra. Your
    own config folders (`hydra.searchpath=[file://...]`) add their options; a `pkg://` one turns the check
    off (Hydra then reports an unknown option itself).
    """
    extra = searchpath_folders(argv)
    if extra is None:
        return
    for group, values in group_choices(argv):
        if group.startswith("hydra") or not any((root / group).is_dir() for root in (conf, *extra)):
            continue
        options = sorted({p.stem for root in (conf, *extra) for p in (root / group).glob("*.yaml")})
        for value in values:
            if value != "null" and value not in options:
                print("error: " + console_text(f"{group}={value} is not an option; {group} options: "
                                               f"{', '.join(options)}"), file=sys.stderr)
                sys.exit(2)


def check_output_folder(argv: Sequence[str]) -> None:
    """One `error:` line, before Hydra tries, when the run folder cannot be created (a file in the way, no access)."""
    given = dict(arg.split("=", 1) for arg in argv if "=" in arg)
    key, folder = next(((k, given[k]) for k in ("hydra.run.dir", "hydra.sweep.dir", "paths.log_dir") if k in given),
                       ("MEDCLASS_OUTPUTS", os.environ.get("MEDCLASS_OUTPUTS") or "outputs"))
    path = Path(folder.split("$")[0] or ".").expanduser().absolute()  # up to the first interpolation
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        print("error: " + console_text(f"cannot create the run folder {folder}: {existing} is not a writable folder; "
                                       f"choose another {key}"), file=sys.stderr)
        sys.exit(2)


def check_extras(argv: Sequence[str]) -> None:
    """`logger=mlflow` without mlflow installed: the pip command, not a plugin-not-found trace."""
    from medclass.utils.extras import missing_for_choices

    missing = missing_for_choices(group_choices(argv))
    if missing:
        print(f"error: {console_text(missing)}", file=sys.stderr)
        sys.exit(2)


# options whose keys the user names (eval.py `subgroup_bins.<column>=[edges]`): Hydra wants `+` for a new key
OPEN_MAPPINGS = ("subgroup_bins",)


def as_meant(argv: Sequence[str]) -> list[str]:
    """The command line as the user means it: `~` expanded (`expand_home`) and the keys of open mappings
    added (`open_mapping_keys`)."""
    return open_mapping_keys(expand_home(argv))


def open_mapping_keys(argv: Sequence[str]) -> list[str]:
    """`subgroup_bins.age=[0,40,65,120]` and `subgroup_bins={age:[...]}` as typed: each becomes Hydra's
    add-or-override (`++`), since the mapping starts empty and its keys are the user's column names."""
    out = []
    for arg in argv:
        key = arg.partition("=")[0]
        if "=" in arg and not arg.startswith(("+", "-")) and key.split(".")[0] in OPEN_MAPPINGS:
            arg = "++" + arg
        out.append(arg)
    return out


def expand_home(argv: Sequence[str]) -> list[str]:
    """`data.root=~/xray` as a user means it: the shell expands `~` after `=` only for names it takes as
    variable names (so `inputs=~/scans` arrives expanded, `data.root=~/xray` does not), and Hydra's lexer
    rejects a bare `~`. A value starting with `~` is expanded here, before Hydra reads it."""
    out = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if sep and not arg.startswith("-") and value.startswith("~"):
            arg = f"{key}={os.path.expanduser(value)}"
        out.append(arg)
    return out


# The command-line flags of `hydra.main`, whose argparse parser is not public API:
# those that take a value, the one whose value is optional, and switches. tests/test_train_cli.py holds these
# sets equal to Hydra's own parser, so a Hydra release that changes its flags fails there, not here at run time.
HYDRA_VALUE_FLAGS = frozenset({"--cfg", "-c", "--package", "-p", "--config-path", "-cp", "--config-name", "-cn",
                               "--config-dir", "-cd", "--experimental-rerun"})
HYDRA_OPTIONAL_VALUE_FLAGS = frozenset({"--info", "-i"})
HYDRA_SWITCHES = frozenset({"--help", "-h", "--hydra-help", "--version", "--resolve", "--run", "-r", "--multirun", "-m",
                            "--shell-completion", "-sc"})


def hydra_overrides(argv: Sequence[str]) -> tuple[list[str], bool] | None:
    """(the overrides, whether `-m`/`--multirun` is given) of a command line as `hydra.main` reads it; None when a
    flag is not Hydra's (Hydra then reports it itself)."""
    overrides: list[str] = []
    multirun = False
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        if arg.startswith("-") and len(arg) > 1:
            name, has_value = arg.split("=", 1)[0], "=" in arg
            if name in ("--multirun", "-m"):
                multirun = True
            elif name in HYDRA_VALUE_FLAGS and not has_value:
                i += 1  # its value
            elif name in HYDRA_OPTIONAL_VALUE_FLAGS and not has_value:
                i += 1 if i + 1 < len(args) and not args[i + 1].startswith("-") else 0  # argparse's nargs="?"
            elif name not in HYDRA_SWITCHES | HYDRA_VALUE_FLAGS | HYDRA_OPTIONAL_VALUE_FLAGS:
                return None
        else:
            overrides.append(arg)
        i += 1
    return overrides, multirun


def check_grammar(argv: Sequence[str]) -> None:
    """An override Hydra cannot parse, or a sweep without `-m`, as one `error:` line with the fix; Hydra's
    own report is a grammar trace of several lines."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parsed_line = hydra_overrides(argv)
    if parsed_line is None:  # a flag Hydra does not know: it prints its own usage error
        return
    overrides, multirun = parsed_line
    parser = OverridesParser.create()
    for override in overrides:
        key, _, value = override.partition("=")
        quote = f"; quote the value inside the override, as '{key}=\"{value}\"'"
        try:
            parsed = parser.parse_overrides([override])[0]
        except OverrideParseException as err:
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = next((line for line in lines[1:] if not line.startswith(("See ", "^"))), lines[0])
            hint = quote if any(c in value for c in "()[]{},~\\'\" :=") else ""
            print("error: " + console_text(f"cannot read the override '{override}' "
                                           f"({detail.split(' expecting ')[0]}){hint}"), file=sys.stderr)
            sys.exit(2)
        if parsed.is_sweep_override() and not multirun and not key.startswith(("hydra.", "+hydra.")):
            print("error: " + console_text(f"'{override}' is a sweep: add -m to run one job per value, write a list "
                                           f"as {key}=[{value}], or keep it as text{quote}"), file=sys.stderr)
            sys.exit(2)


def check_command_line(argv: Sequence[str]) -> None:
    """What Hydra would report as a long message or a stack trace, as one line and exit code 2."""
    check_group_choices(argv)  # first: `augment=nosuch,default` names the unknown option, not the missing -m
    check_grammar(argv)
    check_extras(argv)
    check_output_folder(argv)
