"""Gather the `metrics.json` of every run under a folder into one table, mean ± std over seeds.

    medclass-gather outputs/train/multirun/2026-11-22_10-00-00 [--out table] [--sort best_val/val/auc]

Runs that differ only in `seed=` or `data.fold=` form one row; its `over` column says what the
mean ± std is over ("5 folds", "3 seeds", "5 folds × 3 seeds"). Overrides shared by every run are printed once above
the table instead of in every row. A job that failed (an `error.txt` and no `metrics.json`, as a
sweep leaves it) is counted in its row's `failed` column and listed under the table, never averaged
in. Rows are sorted on a validation metric (never on test, so the table does not invite picking a
model on test). Writes `<out>.md` and a numeric `<out>.csv`
(one mean and one std column per metric) when --out is given.

A sweep folder may come from someone else (docs/reliability.md): it is read as data. Only regular files inside it
are read, each bounded (`medclass.untrusted.files`); no symbolic link is followed, neither a linked file
(`error.txt` pointing at `/proc/self/environ`) nor a linked folder, and each link found is listed under the table
with the reason. A run whose `metrics.json` holds NaN or Infinity, or a non-number where a metric belongs, is a
failed run with that reason. Text taken from the folder (overrides, error lines, folder names) is shown with its
control characters escaped, so it cannot drive the terminal.
"""

from __future__ import annotations

import argparse
import math
import os
import stat
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from medclass.untrusted.files import MiB, Refused, printable, read_bytes, read_json, read_text
from medclass.utils.errors import MedclassError
from medclass.utils.io import write_csv, write_text

METRICS = ("test/acc", "test/auc", "best_val/val/acc", "best_val/val/auc", "run/train_seconds")
SORT_BY = "best_val/val/acc"

Row = dict[str, "str | int | float"]


ERROR_FILE = "error.txt"  # what a failed sweep job leaves (medclass.utils.cli)
METRICS_FILE = "metrics.json"
OVERRIDES_FILE = Path(".hydra") / "overrides.yaml"
VARYING = ("seed=", "data.fold=")  # what a row averages over
# -- bounds: far above what a sweep writes (metrics.json ~2 kB, overrides.yaml ~1 kB, error.txt a few kB), far
# below what would cost a user minutes or gigabytes
MAX_METRICS_BYTES = 1 * MiB
MAX_OVERRIDES_BYTES = 1 * MiB
MAX_ERROR_BYTES = 1 * MiB  # error.txt holds the traceback too; only its first line is shown
MAX_ERROR_LINE = 4_000  # bytes of error.txt's first line kept (500 characters are shown)
MAX_OVERRIDES = 10_000  # overrides of one run (a command line holds a few dozen)
MAX_RUNS = 100_000  # run folders (metrics.json or error.txt) under one folder
MAX_ENTRIES = 3_000_000  # files and folders walked (a run holds about 20: checkpoints, logs, .hydra)
MAX_DEPTH = 32  # folder levels below the given folder (a sweep's runs lie 1 to 5 levels down)
MAX_TOTAL_BYTES = 1024 * MiB  # read over the whole gather (100,000 real runs read ~300 MB)
MAX_YAML_TOTAL = 64 * MiB  # overrides parsed over the whole gather (YAML parsing runs at ~1-5 MB/s)
MAX_VALUE = 1e100  # beyond any metric, seed or seconds; keeps mean and std finite
SHOWN_SKIPPED = 100  # skipped items listed under the table (the rest counted)
NOT_READ = "(overrides not read)"  # the config of a run whose overrides.yaml could not be read

Runs = list[tuple[list[str], dict[str, float]]]
Failures = list[tuple[list[str], str, Path]]


@dataclass
class Sweep:
    """What a folder holds: finished runs (overrides, flattened metrics), failed runs (overrides, one-line reason,
    folder) and what was not read at all (a linked or too deep folder, with the reason)."""

    runs: Runs = field(default_factory=list)
    failures: Failures = field(default_factory=list)
    skipped: list[tuple[Path, str]] = field(default_factory=list)  # the first SHOWN_SKIPPED
    not_entered: int = 0  # all of them


@dataclass
class _Budget:
    """Bytes read and YAML parsed over one gather: per-file bounds alone let 100,000 sparse 1 MiB files cost
    100 GiB of reading."""

    folder: Path
    read: int = 0
    yaml: int = 0

    def spend(self, data: bytes | str | int, yaml_text: bool = False) -> None:
        """Count `data` (or a byte count); past a budget, one error line."""
        size = data if isinstance(data, int) else len(data)
        self.read += size
        self.yaml += size if yaml_text else 0
        if self.read > MAX_TOTAL_BYTES or self.yaml > MAX_YAML_TOTAL:
            raise MedclassError(f"{printable(self.folder, 500)} holds more run files than gather reads "
                                f"({MAX_TOTAL_BYTES // MiB} MiB in all, {MAX_YAML_TOTAL // MiB} MiB of overrides); "
                                "pass one sweep folder")


def _size(path: Path) -> int:
    """The size `lstat` gives (a link's own size), 0 when it cannot say: what reading `path` may cost at most."""
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _reason(err: Refused, run_dir: Path, path: Path) -> str:
    """A file's refusal, naming it relative to its run folder (the folder is shown beside it)."""
    return str(err).replace(str(path), str(path.relative_to(run_dir)))


def _walk(folder: Path) -> tuple[list[Path], list[tuple[Path, str]], int]:
    """The run folders under `folder` (a folder holding `metrics.json` or `error.txt`, of any kind: what kind is
    judged when it is read), sorted; the first SHOWN_SKIPPED folders not entered (links, too deep, unlistable) and
    how many there were. No link is followed. The walk is iterative (no recursion limit), streams each listing
    (a folder of millions of entries is never held whole) and is bounded in entries, depth and runs."""
    runs: list[str] = []
    skipped: list[tuple[Path, str]] = []
    not_entered = 0
    stack: list[tuple[str, int]] = [(str(folder), 0)]
    entries = 0

    def skip(path: str, reason: str) -> None:
        nonlocal not_entered
        not_entered += 1
        if len(skipped) < SHOWN_SKIPPED:
            skipped.append((Path(path), reason))

    while stack:
        current, depth = stack.pop()
        is_run = False
        try:
            with os.scandir(current) as listing:
                for entry in listing:
                    entries += 1
                    if entries > MAX_ENTRIES:
                        raise MedclassError(f"{printable(folder, 500)} holds more than {MAX_ENTRIES:,} files and "
                                            "folders; pass one sweep folder")
                    is_run = is_run or entry.name in (METRICS_FILE, ERROR_FILE)
                    try:
                        if entry.is_symlink():
                            if entry.is_dir():  # a stat of the target only, to say what was not followed
                                skip(entry.path, "a symbolic link to a folder, not followed")
                            continue
                        if not entry.is_dir(follow_symlinks=False):
                            continue
                    except OSError:
                        continue
                    if depth + 1 > MAX_DEPTH:
                        skip(entry.path, f"more than {MAX_DEPTH} folders deep, not read")
                    else:
                        stack.append((entry.path, depth + 1))
        except OSError as err:
            skip(current, f"cannot be listed ({err.strerror or type(err).__name__})")
            continue
        if is_run:
            runs.append(current)
            if len(runs) > MAX_RUNS:
                raise MedclassError(f"{printable(folder, 500)} holds more than {MAX_RUNS:,} runs; pass one sweep "
                                    "folder")
    return [Path(run) for run in sorted(runs)], sorted(skipped), not_entered


def _overrides(run_dir: Path, budget: _Budget | None = None) -> list[str]:
    """The run's command-line overrides (without `seed=` / `data.fold=`); [] without an overrides.yaml. Refused
    (one line naming the file) when it is a link, too large, not YAML or not a list of strings."""
    hydra, path = run_dir / ".hydra", run_dir / OVERRIDES_FILE
    try:
        info = os.lstat(hydra)
    except FileNotFoundError:
        return []
    except OSError as err:
        raise Refused(f".hydra cannot be read ({err.strerror or type(err).__name__})") from None
    if stat.S_ISLNK(info.st_mode):
        raise Refused(".hydra is a symbolic link; links are not followed here")
    if not os.path.lexists(path):
        return []
    if budget is not None:
        budget.spend(min(_size(path), MAX_OVERRIDES_BYTES), yaml_text=True)
    try:
        text = read_text(path, "the run's", MAX_OVERRIDES_BYTES, follow_links=False)
    except Refused as err:
        raise Refused(_reason(err, run_dir, path)) from None
    try:
        overrides = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))  # plain values only
    except (yaml.YAMLError, RecursionError, ValueError):
        raise Refused(f"{OVERRIDES_FILE} is not readable YAML") from None
    overrides = [] if overrides is None else overrides
    if not isinstance(overrides, list) or not all(isinstance(o, str) for o in overrides):
        raise Refused(f"{OVERRIDES_FILE} is not a list of strings (as Hydra writes it)")
    if len(overrides) > MAX_OVERRIDES or sum(map(len, overrides)) > MAX_OVERRIDES_BYTES:
        raise Refused(f"{OVERRIDES_FILE} holds more than {MAX_OVERRIDES:,} overrides or "
                      f"{MAX_OVERRIDES_BYTES // MiB} MiB of text")
    return [o for o in overrides if not o.startswith(VARYING)]


def _describe(value: Any) -> str:
    """What a bad metric value is, in words (never the value itself beyond NaN / Infinity)."""
    if isinstance(value, float) and math.isnan(value):
        return "NaN"
    if isinstance(value, float) and math.isinf(value):
        return "Infinity" if value > 0 else "-Infinity"
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"a number beyond ±{MAX_VALUE:g}"
    return {bool: "a boolean", str: "a string", list: "a list", dict: "an object"}.get(type(value), "a non-number")


def _number(value: Any) -> float | None:
    """`value` as a float when it is a real, finite number within ±MAX_VALUE; else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    try:
        number = float(value)
    except OverflowError:  # an integer of thousands of digits
        return None
    return number if math.isfinite(number) and abs(number) <= MAX_VALUE else None


def flatten(data: Any, wanted: Iterable[str] = METRICS) -> dict[str, float]:
    """A metrics.json's `wanted` numbers (and the run's fold and seed) as `section/key` (test keys as they are).
    Refused naming the key when any number is NaN, infinite or beyond ±MAX_VALUE, or when a `wanted` metric is not
    a number (null counts as absent)."""
    if not isinstance(data, dict):
        raise Refused(f"{METRICS_FILE} is not a JSON object")
    wanted = {*wanted, "run/fold", "run/seed"}
    flat: dict[str, float] = {}
    for section, values in data.items():
        if not isinstance(values, dict):
            continue
        for key, value in values.items():
            name = f"{section}/{key}" if section != "test" else str(key)
            if value is None:
                continue
            number = _number(value)
            is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if number is None and (is_number or name in wanted):
                extra = "" if is_number else ", not a number"
                raise Refused(f"{METRICS_FILE} holds {_describe(value)} for {printable(name, 100)}{extra}")
            if number is not None and name in wanted:  # only what is summarized is kept: memory stays per run
                flat[name] = number
    return flat


def _read_run(run_dir: Path, budget: _Budget, wanted: Iterable[str]) -> tuple[list[str], dict[str, float] | None,
                                                                             str]:
    """(overrides, metrics or None, the failure reason) of one run folder."""
    try:
        overrides = _overrides(run_dir, budget)
    except Refused as err:
        return [NOT_READ], None, str(err)
    metrics, error = run_dir / METRICS_FILE, run_dir / ERROR_FILE
    if os.path.lexists(metrics):
        try:
            budget.spend(min(_size(metrics), MAX_METRICS_BYTES))  # before reading: what it may cost
            data = read_json(metrics, "the run's", MAX_METRICS_BYTES, follow_links=False)
            return overrides, flatten(data, wanted), ""
        except Refused as err:
            return overrides, None, _reason(err, run_dir, metrics)
    try:
        budget.spend(min(_size(error), MAX_ERROR_BYTES))
        data = read_bytes(error, "the run's", MAX_ERROR_BYTES, follow_links=False)
    except Refused as err:
        return overrides, None, _reason(err, run_dir, error)
    first = data.split(b"\n", 1)[0][:MAX_ERROR_LINE].decode("utf-8", errors="replace").rstrip("\r")
    return overrides, None, first.removeprefix("error: ") or "(empty error.txt)"


def scan(folder: Path, metrics: Iterable[str] = METRICS) -> Sweep:
    """Every run under `folder`: finished, failed (with the reason) and skipped. Bounded in runs, files walked,
    bytes read and depth; a bound passed is one MedclassError line."""
    wanted = tuple(metrics)
    budget = _Budget(Path(folder))
    run_dirs, skipped, not_entered = _walk(Path(folder))
    sweep = Sweep(skipped=skipped, not_entered=not_entered)
    for run_dir in run_dirs:
        overrides, values, reason = _read_run(run_dir, budget, wanted)
        if values is not None:
            sweep.runs.append((overrides, values))
        else:
            sweep.failures.append((overrides, reason, run_dir))
    return sweep


def load_runs(folder: Path, metrics: Iterable[str] = METRICS) -> Runs:
    """Each finished run's command-line overrides (without `seed=`) and its flattened numeric metrics."""
    return scan(folder, metrics).runs


def load_failures(folder: Path, metrics: Iterable[str] = METRICS) -> Failures:
    """Each failed job's overrides (without `seed=`), its one-line error (or why its files were not read) and its
    folder."""
    return scan(folder, metrics).failures


def common_overrides(runs: list[tuple[list[str], dict[str, float]]]) -> list[str]:
    """Overrides every run shares, when the runs form more than one configuration."""
    if len({tuple(o) for o, _ in runs}) < 2:
        return []
    shared = set.intersection(*(set(o) for o, _ in runs))
    return [o for o in runs[0][0] if o in shared]


def summarize(runs: list[tuple[list[str], dict[str, float]]], metrics: tuple[str, ...] = METRICS,
              sort_by: str = SORT_BY, failures: Failures = ()) -> list[Row]:
    """One row per configuration: run count, then mean and std of each metric (std 0 for one run);
    with failures, a `failed` count per row (a configuration whose every job failed has runs 0).
    Values that are not finite numbers (a caller's own runs) are left out of the mean, never averaged in."""
    common = set(common_overrides([*runs, *((o, {}) for o, _, _ in failures)]))

    def label(overrides: list[str]) -> str:
        return " ".join(o for o in overrides if o not in common) or "(defaults)"

    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    failed: dict[str, int] = defaultdict(int)
    for overrides, values in runs:
        groups[label(overrides)].append(values)
    for overrides, _, _ in failures:
        failed[label(overrides)] += 1
        groups.setdefault(label(overrides), [])
    rows: list[Row] = []
    for key, members in groups.items():
        row: Row = {"config": key, "runs": len(members)}
        if over(members):
            row["over"] = over(members)
        if failures:
            row["failed"] = failed.get(key, 0)
        for m in metrics:
            vals = [number for v in members if m in v and (number := _number(v[m])) is not None]
            if vals:
                row[m] = statistics.mean(vals)
                row[f"{m} std"] = statistics.stdev(vals) if len(vals) > 1 else 0.0
        rows.append(row)
    key = sort_by if any(sort_by in r for r in rows) else next((m for m in metrics if any(m in r for r in rows)), "")
    return sorted(rows, key=lambda r: float(r.get(key, float("-inf"))), reverse=True)


def over(members: list[dict[str, float]]) -> str:
    """What a row's spread is over: the distinct folds and seeds among its runs (metrics.json `run`)."""
    folds = {m["run/fold"] for m in members if "run/fold" in m}
    seeds = {m["run/seed"] for m in members if "run/seed" in m}
    parts = ([f"{len(folds)} folds"] if len(folds) > 1 else []) + ([f"{len(seeds)} seeds"] if len(seeds) > 1 else [])
    return " × ".join(parts)


def shown(text: Any, limit: int = 2000) -> str:
    """Text from a sweep folder as it may reach a terminal or a table cell: control characters escaped
    (`printable`), one line, `|` escaped so it cannot add a column."""
    return printable(text, limit).replace("|", "\\|")


def _code(text: str) -> str:
    """`text` as a markdown code span whatever backticks it holds (a longer fence than any run inside)."""
    longest = max((len(run) for run in _runs(text)), default=0)
    fence = "`" * (longest + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _runs(text: str) -> list[str]:
    """The runs of consecutive backticks in `text`."""
    out, current = [], ""
    for char in text:
        if char == "`":
            current += char
        elif current:
            out.append(current)
            current = ""
    return out + ([current] if current else [])


def to_markdown(rows: list[Row], common: list[str] = ()) -> str:
    """`mean ± std` cells; a single run shows its value alone. Scores to 4 places, seconds to 1."""
    metrics = [c for c in dict.fromkeys(k for r in rows for k in r)
               if c not in ("config", "runs", "failed", "over") and not c.endswith(" std")]
    counts = ["runs"] + [c for c in ("over", "failed") if any(c in r for r in rows)]

    def cell(r: Row, m: str) -> str:
        if m not in r:
            return ""
        digits = 1 if m.endswith("seconds") else 4
        return f"{r[m]:.{digits}f}" + (f" ± {r[f'{m} std']:.{digits}f}" if int(r["runs"]) > 1 else "")

    lines = [f"Common to every run: {_code(shown(' '.join(common)))}\n"] if common else []
    lines += ["| " + " | ".join(["config", *counts, *(shown(m, 200) for m in metrics)]) + " |",
              "|" + "---|" * (len(metrics) + len(counts) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([shown(r["config"]), *(str(r.get(c, "")) for c in counts),
                                        *(cell(r, m) for m in metrics)]) + " |")
    return "\n".join(lines)


def failure_lines(failures: Failures) -> str:
    """The failed jobs under the table: overrides, error, folder (all shown escaped)."""
    if not failures:
        return ""
    items = [f"- {_code(shown(' '.join(o) or '(defaults)'))}: {shown(message, 500)} ({shown(folder, 1000)})"
             for o, message, folder in failures]
    return "\n".join([f"\n\nFailed jobs ({len(failures)}, not averaged in):", *items])


def skipped_lines(skipped: list[tuple[Path, str]], count: int | None = None) -> str:
    """What was not read (linked or too deep folders), under the table: the first SHOWN_SKIPPED named, of `count`."""
    count = len(skipped) if count is None else count
    if not count:
        return ""
    items = [f"- {shown(path, 1000)}: {reason}" for path, reason in skipped[:SHOWN_SKIPPED]]
    more = [f"- and {count - len(items):,} more"] if count > len(items) else []
    return "\n".join([f"\n\nNot read ({count:,}):", *items, *more])


def parser() -> argparse.ArgumentParser:
    """`medclass-gather`'s command line (the docs-commands test parses documented calls with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun folder (or any folder holding runs)")
    parser.add_argument("--out", type=Path, help="write <out>.csv and <out>.md")
    parser.add_argument("--sort", default=SORT_BY, help=f"metric to sort rows on, best first (default {SORT_BY})")
    return parser


def gather(folder: Path, out: Path | None, sort_by: str) -> str:
    """The table (and under it the failed and unread items) for `folder`; written to `<out>.md/.csv` when given."""
    if not folder.is_dir():
        raise MedclassError(f"{printable(folder, 500)} is not a folder; pass a train.py run or multirun folder")
    sweep = scan(folder)
    if not sweep.runs and not sweep.failures:
        unread = f" ({sweep.not_entered:,} folders not read: links or too deep)" if sweep.not_entered else ""
        raise MedclassError(f"no metrics.json under {printable(folder, 500)}; pass a train.py run or multirun folder"
                            + unread)
    rows = summarize(sweep.runs, sort_by=sort_by, failures=sweep.failures)
    common = common_overrides([*sweep.runs, *((o, {}) for o, _, _ in sweep.failures)])
    table = to_markdown(rows, common) + failure_lines(sweep.failures) + skipped_lines(sweep.skipped, sweep.not_entered)
    if out:
        write_text(out.with_suffix(".md"), table + "\n")
        write_csv(out.with_suffix(".csv"), rows)
    return table


def main() -> None:
    """`medclass-gather`: the table on stdout; a MedclassError is one `error:` line and exit code 2."""
    args = parser().parse_args()
    try:
        table = gather(args.folder, args.out, args.sort)
    except MedclassError as err:
        print(f"error: {printable(err, 2000)}", file=sys.stderr)
        sys.exit(2)
    print(table)


if __name__ == "__main__":
    main()
