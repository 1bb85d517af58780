"""The clinical report on real data (docs/evaluation.md "Worked example"): brain tumour MRI, a subgroup,
another "site" with coarser labels, referral, and the model card.

    python benchmarks/clinical_example.py [--epochs 10] [--image-size 64] [--seed 1] [--work DIR] [--out FILE]

1. Two manifests under `--work`, both read from `$MEDCLASS_DATA/brain_tumor_mri` (never copied):
   - `training.csv`: every image of `Training/` with its class and one real acquisition attribute,
     `file_mode` (`rgb` or `grey`: the set was pooled from several sources, which stored their images
     differently, so the file mode stands in for a site);
   - `testing_coarse.csv`: every image of `Testing/`, labelled only `tumour` or `none`, as another
     site's registry would (the model never sees `Testing/` in training).
2. `train.py data=manifest`: the default CNN on the fast path at `--image-size`, split 80/10/10 from
   `Training/` by the manifest's own stratified split.
3. `eval.py` on the best-validation checkpoint: `subgroups=[file_mode]`, `abstain.coverage=0.9`, and
   `external.root=testing_coarse.csv` with the many-to-one map glioma, meningioma, pituitary → tumour,
   notumor → none. It writes report.md (subgroups, selective prediction, external validation), the
   figures, and model_card.md.
4. `predict.py` on `Testing/glioma`: `decision=refer` below the threshold chosen on validation.

It prints the commands and the headline numbers and writes them to `--out` (default
`benchmarks/results/clinical_example.md`). Every step is a real command-line run; a finished step in
`--work` is kept on a second call.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from medclass.data.scan import scan_folder  # noqa: E402
from medclass.utils.io import write_csv, write_text  # noqa: E402

COARSE = {"glioma": "tumour", "meningioma": "tumour", "pituitary": "tumour", "notumor": "none"}
CLASS_MAP = "external.class_map={" + ",".join(f"{k}:{v}" for k, v in COARSE.items()) + "}"


def file_mode(path: Path) -> str:
    """`rgb` or `grey`: how the file stores its pixels (read from the header, not the pixels)."""
    from PIL import Image

    with Image.open(path) as image:
        return "grey" if image.mode in ("L", "I", "I;16", "1") else "rgb"


def images(folder: Path) -> list[tuple[Path, str]]:
    """(image, class) pairs as `data=folder` reads them: the project's own scan (exact copies kept once)."""
    scan = scan_folder(folder)
    return list(zip(scan.files, scan.labels, strict=True))


def manifests(data: Path, work: Path) -> tuple[Path, Path]:
    training, coarse = work / "training.csv", work / "testing_coarse.csv"
    if not training.is_file():
        write_csv(training, [{"path": str(p), "label": c, "file_mode": file_mode(p)}
                             for p, c in images(data / "Training")])
    if not coarse.is_file():
        write_csv(coarse, [{"path": str(p), "label": COARSE[c]} for p, c in images(data / "Testing")])
    return training, coarse


def call(script: str, args: list[str], out: Path, work: Path) -> str:
    """Run `python <script> <args>` unless `out` already holds its result; the command as typed."""
    command = f"python {script} " + " ".join(shlex.quote(a) for a in args)
    done = {"train.py": "metrics.json", "eval.py": "report.json", "predict.py": "predictions.csv"}[script]
    if not (out / done).is_file():
        print(f"$ {command}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=work, capture_output=True, text=True)
        if proc.returncode:
            raise SystemExit(f"{command} failed:\n{proc.stderr[-3000:]}")
        print(f"  {time.perf_counter() - started:.0f} s", flush=True)
    return command


def fmt(part: dict, metric: str) -> str:
    value, ci = part["metrics"][metric], (part.get("ci") or {}).get(metric)
    return f"{value:.4f}" + (f" [{ci['low']:.4f}, {ci['high']:.4f}]" if ci else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path(os.environ.get("MEDCLASS_DATA", ROOT.parent / "shared"
                                                                         / "data")) / "brain_tumor_mri")
    parser.add_argument("--work", type=Path, default=ROOT / "outputs" / "clinical_example")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--coverage", type=float, default=0.9)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "clinical_example.md")
    args = parser.parse_args()
    if not (args.data / "Training").is_dir() or not (args.data / "Testing").is_dir():
        raise SystemExit(f"error: {args.data} has no Training/ and Testing/ folders; set MEDCLASS_DATA or --data")
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    training, coarse = manifests(args.data, work)

    train_dir, eval_dir, predict_dir = work / "train", work / "eval", work / "predict"
    train_args = ["data=manifest", f"data.manifest={training}", "data.name=brain_tumour",
                  f"data.image_size={args.image_size}", "augment=batch", f"trainer.max_epochs={args.epochs}",
                  f"seed={args.seed}", "logger=csv", f"hydra.run.dir={train_dir}"]
    commands = [call("train.py", train_args, train_dir, work)]
    metrics = json.loads((train_dir / "metrics.json").read_text())
    ckpt = Path(metrics["run"]["best_checkpoint"])
    commands.append(call("eval.py", [f"ckpt_path={ckpt}", "subgroups=[file_mode]", "subgroup_min_count=30",
                                     f"abstain.coverage={args.coverage}", f"external.root={coarse}", CLASS_MAP,
                                     f"hydra.run.dir={eval_dir}"], eval_dir, work))
    commands.append(call("predict.py", [f"ckpt_path={ckpt}", f"inputs={args.data / 'Testing' / 'glioma'}",
                                        f"hydra.run.dir={predict_dir}"], predict_dir, work))

    report = json.loads((eval_dir / "report.json").read_text())
    sub = report["subgroups"]["columns"]["file_mode"]
    sel, ext = report["selective"], report["external"]
    with (predict_dir / "predictions.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    referred = sum(r.get("decision") == "refer" for r in rows)
    lines = [
        "# Worked example: the clinical report on brain tumour MRI",
        "",
        f"Made by `python benchmarks/clinical_example.py --epochs {args.epochs} --image-size {args.image_size} "
        f"--seed {args.seed}` ({time.strftime('%Y-%m-%d %H:%M')}), one seed: an example of the report, not a "
        "result to compare methods on. The commands it ran:",
        "",
        "```bash",
        *[c.replace(str(work), "<work>").replace(str(args.data), "$MEDCLASS_DATA/brain_tumor_mri")
          for c in commands],
        "```",
        "",
        f"Training: {metrics['run']['train_seconds']:.0f} s, {metrics['run']['epochs']} epochs; internal test "
        f"split {report['metrics']['n']} images of `Training/` (never trained on).",
        "",
        "| what | figure |",
        "|---|---|",
        f"| internal test accuracy (4 classes) | {report['metrics']['accuracy']:.4f} |",
        f"| internal test macro AUC | {report['metrics']['auc_macro_ovr']:.4f} |",
    ]
    for row in sub["subgroups"]:
        acc = None if row["too_small"] else row["metrics"]["accuracy"]
        lines.append(f"| subgroup file_mode={row['value']}: {row['n']} images, accuracy | "
                     + (f"{acc['estimate']:.4f} [{acc['low']:.4f}, {acc['high']:.4f}]" if acc else "too small")
                     + " |")
    gap = (sub.get("gaps") or {}).get("accuracy")
    if gap:
        lines.append(f"| largest accuracy gap ({gap.get('best')} − {gap.get('worst')}) | {gap['estimate']:.4f} "
                     f"[{gap['low']:.4f}, {gap['high']:.4f}] |")
    lines += [
        f"| AURC on test (e-AURC) | {sel['aurc']:.4f} ({sel['eaurc']:.4f}) |",
        f"| abstention threshold, chosen on validation for coverage {args.coverage} | "
        f"{sel['chosen']['threshold']:.4f} |",
        f"| on test: coverage, accuracy of the answered | {sel['applied']['coverage']:.4f}, "
        f"{sel['applied']['accuracy']:.4f} |",
        f"| external (`Testing/`, tumour/none, {ext['external']['images']} images): accuracy | "
        f"{fmt(ext['external'], 'accuracy')} |",
        f"| external: AUC | {fmt(ext['external'], 'auc_macro_ovr')} |",
        f"| internal test mapped the same way: accuracy, AUC | {fmt(ext['internal_test'], 'accuracy')}, "
        f"{fmt(ext['internal_test'], 'auc_macro_ovr')} |",
        f"| predict.py on `Testing/glioma`: rows with decision=refer | {referred} of {len(rows)} |",
        "",
        "Files: `<work>/eval/report.md` (with `figures/forest_file_mode.png` and `figures/risk_coverage.png`), "
        "`<work>/eval/model_card.md`, `<work>/eval/external_predictions.csv`, `<work>/predict/predictions.csv`.",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    write_text(args.out, text)


if __name__ == "__main__":
    main()
