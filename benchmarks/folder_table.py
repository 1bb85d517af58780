"""The class-per-folder results table, made in one command: each folder recipe × seeds on one fixed split.

    MEDCLASS_DATA=../shared/data MEDCLASS_WEIGHTS=../shared/weights python benchmarks/folder_table.py
    python benchmarks/folder_table.py --recipes mednist --seeds 1          # a slice

For each recipe (`conf/experiment/<name>.yaml`) it runs `train.py -m experiment=<name> seed=...`
into `<runs>/<name>/` (reused when every seed finished: delete it to rerun), then gathers the runs
with `medclass-gather`'s own functions and writes `benchmarks/results/folder_sets.md`: test ACC/AUC
and validation ACC, mean ± std over seeds, the split key they share, the training seconds and the
machine. The split follows `data.split_seed` (0), never `seed`, so the seeds share one test set.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from medclass.tasks.gather import load_runs, summarize

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
RECIPES = {  # recipe: (what it is, seeds by default)
    "mednist": ("MedNIST, 6 classes: ImageNet EfficientNet-Lite0 at 64 px, 10 epochs", "1,2,3"),
    "modality": ("CT / MRI / X-ray (MedNIST's images): custom CNN at 32 px", "1,2,3"),
    "brain_tumor_mri": ("brain tumour MRI, 4 classes, tested on `Testing/`: EfficientNet-Lite0 at 128 px, 8 epochs",
                        "1"),
}
METRICS = ("test/acc", "test/auc", "best_val/val/acc", "run/train_seconds")


def sweep(name: str, seeds: str, runs: Path) -> Path:
    folder = runs / name
    done = len(list(folder.glob("*/metrics.json"))) if folder.is_dir() else 0
    if done == len(seeds.split(",")):
        print(f"{name}: {done} finished runs in {folder}, reused", flush=True)
        return folder
    cmd = [sys.executable, "train.py", "-m", f"experiment={name}", f"seed={seeds}", *QUIET,
           f"hydra.sweep.dir={folder}"]
    print("  $ python " + " ".join(cmd[1:]), flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "sweep.log").open("a") as log:
        code = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"error: {name} exit {code}; see {folder / 'sweep.log'}")
    return folder


def row(name: str, folder: Path, seeds: str) -> str:
    (summary,) = summarize(load_runs(folder), metrics=METRICS)
    keys = {json.loads(p.read_text())["data"]["split_key"] for p in folder.glob("*/metrics.json")}
    what, _ = RECIPES[name]
    digits = {m: 0 if m.startswith("run/") else 4 for m in METRICS}
    cells = [("–" if m not in summary else f"{summary[m]:.{digits[m]}f}" if summary["runs"] == 1
              else f"{summary[m]:.{digits[m]}f} ± {summary[m + ' std']:.{digits[m]}f}") for m in METRICS]
    command = f"`python train.py -m experiment={name} seed={seeds}`"
    return f"| {what} | {command} | {summary['runs']} | {' | '.join(cells)} | {', '.join(sorted(keys))} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--seeds", help="comma-separated seeds for every recipe (default: 1,2,3; brain: 1)")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "folder_sets")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "folder_sets.md")
    args = parser.parse_args()
    started = time.strftime("%Y-%m-%d %H:%M")
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    seeds = {name: args.seeds or RECIPES[name][1] for name in args.recipes}
    rows = [row(name, sweep(name, seeds[name], args.runs), seeds[name]) for name in args.recipes]
    command = "python benchmarks/folder_table.py " + " ".join(sys.argv[1:])
    text = "\n".join([
        "# Class-per-folder sets: the recipes on one fixed split", "",
        f"Made by `{command.strip()}` ({started}, {machine}, torch {torch.__version__}, Python "
        f"{platform.python_version()}; `MEDCLASS_DATA=../shared/data MEDCLASS_WEIGHTS=../shared/weights`). "
        "Mean ± std over seeds of each run's best-validation checkpoint (one value: one seed). Every seed "
        "of a recipe uses the same split (`data.split_seed=0`; its key in the last column), so the spread "
        "is training variance alone. Training seconds are per run.", "",
        "| set and recipe | command | runs | test ACC | test AUC | best val ACC | training s | split key |",
        "|---|---|---|---|---|---|---|---|", *rows, ""])
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
