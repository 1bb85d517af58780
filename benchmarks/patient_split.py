"""What an image-level split does on data with several images per patient: the Kermany chest X-rays.

    python benchmarks/patient_split.py [--seeds 1 2 3] [--epochs 8] [--image-size 64] [--out FILE]

For each split seed it trains the same recipe twice on `$MEDCLASS_DATA/chest_xray_kermany` (NORMAL /
PNEUMONIA, 1,034 images of about 440 patients): once with an image-level split (`data.group_by`
unset) and once with a patient-level split (`data.group_by` = the patient regex of the data's README).
It reads each run's `split.csv` and counts the test images whose patient also has images in train,
then prints one table: the leak share and the test accuracy and AUC, mean ± std over the seeds, with
the commands. The test set differs between the two protocols (that is the point), so the table
compares what each protocol would report, not one test set. Every job is a real `train.py` run.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PATIENT = r"((?:NORMAL2-)?IM-\d+|person\d+)"  # $MEDCLASS_DATA/README.md, chest_xray_kermany


def leak_share(split_csv: Path) -> tuple[int, int]:
    """(test images whose patient has a training image, test images)."""
    rows = list(csv.DictReader(split_csv.open()))
    patient = re.compile(PATIENT)
    train = {patient.search(r["path"]).group(1) for r in rows if r["split"] == "train"}
    test = [patient.search(r["path"]).group(1) for r in rows if r["split"] == "test"]
    return sum(p in train for p in test), len(test)


def run(protocol: str, seed: int, args: argparse.Namespace, work: Path) -> dict[str, float]:
    out = work / f"{protocol}-{seed}"
    overrides = ["data=folder", f"data.root={args.data}", "data.name=chest_xray_kermany",
                 f"data.image_size={args.image_size}", f"data.split_seed={seed}", f"seed={seed}",
                 f"trainer.max_epochs={args.epochs}", "logger=csv", f"hydra.run.dir={out}"]
    if protocol == "patient":
        overrides.append(f'data.group_by="{PATIENT}"')
    if (out / "metrics.json").is_file():  # --work of an interrupted call: finished runs are kept
        return read(out)
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), *overrides], capture_output=True, text=True,
                          cwd=work)
    if proc.returncode:
        raise SystemExit(f"train.py {' '.join(overrides)} failed:\n{proc.stderr[-3000:]}")
    return read(out)


def read(out: Path) -> dict[str, float]:
    metrics = json.loads((out / "metrics.json").read_text())
    leaked, n_test = leak_share(out / "split.csv")
    return {"acc": metrics["test"]["test/acc"], "auc": metrics["test"]["test/auc"], "leak": leaked / n_test,
            "n_test": n_test, "seconds": metrics["run"]["train_seconds"]}


def mean_std(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path,
                        default=Path(os.environ.get("MEDCLASS_DATA") or ROOT.parent / "shared" / "data")
                        / "chest_xray_kermany")
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--out", type=Path, help="also write the table here (markdown)")
    parser.add_argument("--work", type=Path, help="run folders here (default: a new temporary folder); runs "
                        "already finished in it are read, not repeated")
    args = parser.parse_args()
    if not args.data.is_dir():
        raise SystemExit(f"error: {args.data} is not a folder; set MEDCLASS_DATA to the folder holding "
                         "chest_xray_kermany/")
    work = args.work or Path(tempfile.mkdtemp(prefix="patient-split-"))
    work.mkdir(parents=True, exist_ok=True)
    results = {p: [run(p, s, args, work) for s in args.seeds] for p in ("image", "patient")}
    seeds = ",".join(map(str, args.seeds))
    lines = [f"Kermany pediatric chest X-rays ({args.data.name}), custom CNN, {args.image_size} px, "
             f"{args.epochs} epochs, split seeds {seeds} (training seed = split seed), 80/10/10; mean ± std over "
             "the seeds.", "",
             "| split | test images whose patient is in train | test ACC | test AUC | test images | training s |",
             "|---|---|---|---|---|---|"]
    for protocol, rows in results.items():
        lines.append(f"| {protocol}-level | {mean_std([r['leak'] for r in rows])} | "
                     f"{mean_std([r['acc'] for r in rows])} | {mean_std([r['auc'] for r in rows])} | "
                     f"{statistics.mean(r['n_test'] for r in rows):.0f} | "
                     f"{statistics.mean(r['seconds'] for r in rows):.0f} |")
    lines += ["", "Per seed (leak share / ACC / AUC):", ""]
    lines += [f"- {p} seed {s}: {r['leak']:.3f} / {r['acc']:.4f} / {r['auc']:.4f}"
              for p, rows in results.items() for s, r in zip(args.seeds, rows, strict=True)]
    lines += ["", "Commands (one per seed s):", "",
              "    python train.py data=folder data.root=$MEDCLASS_DATA/chest_xray_kermany "
              f"data.name=chest_xray_kermany data.image_size={args.image_size} data.split_seed=s seed=s "
              f"trainer.max_epochs={args.epochs}",
              f"    (patient-level: add 'data.group_by=\"{PATIENT}\"')",
              "", f"`python benchmarks/patient_split.py --seeds {' '.join(map(str, args.seeds))} "
              f"--epochs {args.epochs} --image-size {args.image_size}`"]
    table = "\n".join(lines)
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
