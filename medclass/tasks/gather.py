"""Gather the `metrics.json` of every run under a folder into one table, mean ± std over seeds.

    medclass-gather outputs/train/multirun/2026-11-22_10-00-00 [--out table] [--sort best_val/val/auc]

Runs that differ only in `seed=` or `data.fold=` form one row; its `over` column says what the
mean ± std is over ("5 folds", "3 seeds", "5 folds × 3 seeds"). Overrides shared by every run are printed once above
the table instead of in every row. A job that failed (an `error.txt` and no `metrics.json`, as a
sweep leaves it) is counted in its row's `failed` column and listed under the table, never averaged
in. Rows are sorted on a validation metric (never on test, so the table does not invite picking a
model on test). Writes `<out>.md` and a numeric `<out>.csv`
(one mean and one std column per metric) when --out is given.
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

from medclass.utils.io import write_csv, write_text

METRICS = ("test/acc", "test/auc", "best_val/val/acc", "best_val/val/auc", "run/train_seconds")
SORT_BY = "best_val/val/acc"

Row = dict[str, "str | int | float"]


ERROR_FILE = "error.txt"  # what a failed sweep job leaves (medclass.utils.cli)
VARYING = ("seed=", "data.fold=")  # what a row averages over


def _overrides(run_dir: Path) -> list[str]:
    overrides_file = run_dir / ".hydra" / "overrides.yaml"
    overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
    return [o for o in overrides or [] if not o.startswith(VARYING)]


def load_runs(folder: Path) -> list[tuple[list[str], dict[str, float]]]:
    """Each run's command-line overrides (without `seed=`) and its flattened numeric metrics."""
    runs = []
    for path in sorted(folder.rglob("metrics.json")):
        data = json.loads(path.read_text())
        flat = {f"{section}/{k}" if section != "test" else k: v for section, values in data.items()
                if isinstance(values, dict) for k, v in values.items() if isinstance(v, (int, float))}
        runs.append((_overrides(path.parent), flat))
    return runs


def load_failures(folder: Path) -> list[tuple[list[str], str, Path]]:
    """Each failed job's overrides (without `seed=`), its one-line error and its folder."""
    failures = []
    for path in sorted(folder.rglob(ERROR_FILE)):
        if (path.parent / "metrics.json").is_file():
            continue
        first = (path.read_text().splitlines() or ["error: (empty error.txt)"])[0]
        failures.append((_overrides(path.parent), first.removeprefix("error: "), path.parent))
    return failures


def common_overrides(runs: list[tuple[list[str], dict[str, float]]]) -> list[str]:
    """Overrides every run shares, when the runs form more than one configuration."""
    if len({tuple(o) for o, _ in runs}) < 2:
        return []
    shared = set.intersection(*(set(o) for o, _ in runs))
    return [o for o in runs[0][0] if o in shared]


def summarize(runs: list[tuple[list[str], dict[str, float]]], metrics: tuple[str, ...] = METRICS,
              sort_by: str = SORT_BY, failures: list[tuple[list[str], str, Path]] = ()) -> list[Row]:
    """One row per configuration: run count, then mean and std of each metric (std 0 for one run);
    with failures, a `failed` count per row (a configuration whose every job failed has runs 0)."""
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
            vals = [v[m] for v in members if m in v]
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

    lines = [f"Common to every run: `{' '.join(common)}`\n"] if common else []
    lines += ["| " + " | ".join(["config", *counts, *metrics]) + " |", "|" + "---|" * (len(metrics) + len(counts) + 1)]
    for r in rows:
        lines.append("| " + " | ".join([str(r["config"]), *(str(r.get(c, "")) for c in counts),
                                        *(cell(r, m) for m in metrics)]) + " |")
    return "\n".join(lines)


def failure_lines(failures: list[tuple[list[str], str, Path]]) -> str:
    """The failed jobs under the table: overrides, error, folder."""
    if not failures:
        return ""
    items = [f"- `{' '.join(o) or '(defaults)'}`: {message} ({folder})" for o, message, folder in failures]
    return "\n".join([f"\n\nFailed jobs ({len(failures)}, not averaged in):", *items])


def parser() -> argparse.ArgumentParser:
    """`medclass-gather`'s command line (the docs-commands test parses documented calls with it)."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun folder (or any folder holding runs)")
    parser.add_argument("--out", type=Path, help="write <out>.csv and <out>.md")
    parser.add_argument("--sort", default=SORT_BY, help=f"metric to sort rows on, best first (default {SORT_BY})")
    return parser


def main() -> None:
    args = parser().parse_args()
    if not args.folder.is_dir():
        raise SystemExit(f"error: {args.folder} is not a folder; pass a train.py run or multirun folder")
    runs, failures = load_runs(args.folder), load_failures(args.folder)
    if not runs and not failures:
        raise SystemExit(f"error: no metrics.json under {args.folder}; pass a train.py run or multirun folder")
    rows = summarize(runs, sort_by=args.sort, failures=failures)
    table = to_markdown(rows, common_overrides([*runs, *((o, {}) for o, _, _ in failures)])) + failure_lines(failures)
    print(table)
    if args.out:
        write_text(args.out.with_suffix(".md"), table + "\n")
        write_csv(args.out.with_suffix(".csv"), rows)


if __name__ == "__main__":
    main()
