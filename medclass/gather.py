"""Gather the `metrics.json` of every run under a folder into one table, mean ± std over seeds.

    python -m medclass.gather outputs/train/multirun/2026-11-22_10-00-00 [--out table]

Runs that differ only in `seed=` form one row. Writes `<out>.csv` and `<out>.md` when --out is given.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
from collections import defaultdict
from pathlib import Path

import yaml

METRICS = ("test/acc", "test/auc", "best_val/val/acc", "best_val/val/auc", "run/train_seconds")


def load_runs(folder: Path) -> list[tuple[str, dict[str, float]]]:
    runs = []
    for path in sorted(folder.rglob("metrics.json")):
        overrides_file = path.parent / ".hydra" / "overrides.yaml"
        overrides = yaml.safe_load(overrides_file.read_text()) if overrides_file.is_file() else []
        key = " ".join(o for o in overrides if not o.startswith("seed=")) or "(defaults)"
        data = json.loads(path.read_text())
        flat = {f"{section}/{k}" if section != "test" else k: v for section, values in data.items()
                if isinstance(values, dict) for k, v in values.items() if isinstance(v, (int, float))}
        runs.append((key, flat))
    return runs


def summarize(runs: list[tuple[str, dict[str, float]]], metrics: tuple[str, ...] = METRICS) -> list[dict[str, str]]:
    groups: dict[str, list[dict[str, float]]] = defaultdict(list)
    for key, values in runs:
        groups[key].append(values)
    rows = []
    for key, members in groups.items():
        row = {"config": key, "runs": str(len(members))}
        for m in metrics:
            vals = [v[m] for v in members if m in v]
            if vals:
                sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
                mean = statistics.mean(vals)
                digits = 4 if abs(mean) < 10 else 1  # scores to 4 places, seconds to 1
                row[m] = f"{mean:.{digits}f} ± {sd:.{digits}f}"
        rows.append(row)
    return sorted(rows, key=lambda r: r.get(metrics[0], ""), reverse=True)


def to_markdown(rows: list[dict[str, str]]) -> str:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(r.get(c, "") for c in cols) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", type=Path, help="a multirun folder (or any folder holding runs)")
    parser.add_argument("--out", type=Path, help="write <out>.csv and <out>.md")
    args = parser.parse_args()
    runs = load_runs(args.folder)
    if not runs:
        raise SystemExit(f"error: no metrics.json under {args.folder}; pass a train.py run or multirun folder")
    rows = summarize(runs)
    table = to_markdown(rows)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.with_suffix(".md").write_text(table + "\n")
        with args.out.with_suffix(".csv").open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for r in rows for k in r)))
            writer.writeheader()
            writer.writerows(rows)


if __name__ == "__main__":
    main()
