"""The MedMNIST v2 table, reproduced and beaten in one command: every 28 px set found locally × protocols × seeds.

    MEDCLASS_DATA=../shared/data python benchmarks/medmnist_table.py                       # all of it
    python benchmarks/medmnist_table.py --sets breastmnist --protocols recipe --seeds 1    # a slice

For each set (`<name>.npz` in `--data-root`) and protocol it runs `train.py -m ... seed=1,2,3` into
`<runs>/<set>/<protocol>/` and evaluates every run's best checkpoint once more with `eval.py` for the
MedMNIST Evaluator's own ACC and AUC (`report.json` → `medmnist_official`). Then it writes
`benchmarks/results/medmnist_28.md`: mean ± std over seeds beside the paper's figures and the
difference to ResNet-18 (28), with the budget (epochs, seconds of training per run, machine) that
produced each number.

Protocols: `recipe` is this project's preset for the set (`conf/experiment/<set>.yaml`, or the
default config with `data.name=<set>` where there is none); `paper` is `experiment=medmnist_paper`
(the paper's ResNet-18 (28) protocol) for `--paper-epochs` epochs, milestones moved along (100 in
full: a GPU job; 2-4 make a quick CPU check of the protocol, not a reproduction).

A sweep folder that already holds every seed's metrics is reused, not rerun (delete it to rerun).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]

# MedMNIST v2 (Yang et al., Scientific Data 10, 41 (2023), Table 3; https://medmnist.com): test (AUC, ACC).
# Checked against copies of Table 3: every PneumoniaMNIST cell, ChestMNIST's AUCs, and ResNet-18 (28) of
# Breast, Blood and OrganA (also in ../shared/data/README.md); the other cells are transcribed from the
# paper: check them against Table 3 before quoting them elsewhere.
PAPER_SOURCE = "Yang et al., MedMNIST v2, Scientific Data 10:41 (2023), Table 3 (test AUC / ACC)"
PAPER_METHODS = ("ResNet-18 (28)", "ResNet-18 (224)", "ResNet-50 (28)", "ResNet-50 (224)", "auto-sklearn",
                 "AutoKeras", "Google AutoML Vision")
PAPER: dict[str, tuple[tuple[float, float], ...]] = {
    "pathmnist": ((.983, .907), (.989, .909), (.990, .911), (.989, .892), (.934, .716), (.959, .834), (.944, .728)),
    "chestmnist": ((.768, .947), (.773, .947), (.769, .947), (.773, .948), (.649, .779), (.742, .937), (.778, .948)),
    "dermamnist": ((.917, .735), (.920, .754), (.913, .735), (.912, .731), (.902, .719), (.915, .749), (.914, .768)),
    "octmnist": ((.943, .743), (.958, .763), (.952, .762), (.958, .776), (.887, .601), (.955, .763), (.963, .771)),
    "pneumoniamnist": ((.944, .854), (.956, .864), (.948, .854), (.962, .884), (.942, .855), (.947, .878),
                       (.991, .946)),
    "retinamnist": ((.717, .524), (.710, .493), (.726, .528), (.716, .511), (.690, .515), (.719, .503), (.750, .531)),
    "breastmnist": ((.901, .863), (.891, .833), (.857, .812), (.866, .842), (.836, .803), (.871, .831), (.919, .861)),
    "bloodmnist": ((.998, .958), (.998, .963), (.997, .956), (.997, .950), (.984, .878), (.998, .961), (.998, .966)),
    "tissuemnist": ((.930, .676), (.933, .681), (.931, .680), (.932, .680), (.828, .532), (.941, .703), (.924, .673)),
    "organamnist": ((.997, .935), (.998, .951), (.997, .935), (.998, .947), (.963, .762), (.994, .905), (.990, .886)),
    "organcmnist": ((.992, .900), (.994, .920), (.992, .905), (.993, .911), (.976, .829), (.990, .879), (.988, .877)),
    "organsmnist": ((.972, .782), (.974, .778), (.972, .770), (.975, .785), (.945, .672), (.974, .813), (.964, .749)),
}


# How each recipe was chosen, printed under its set's verdict: a choice informed by test figures says so.
# From 2026-12 on (issue 19), recipe choices rest on validation only; the split never moves with `seed`.
CHOICES = {
    "breastmnist": "the weight average (`callbacks.ema`) was kept on test figures: its 78 validation images gave "
                   "no clear verdict (ACC 0.927 without the average against 0.897 with it, AUC 0.970 against "
                   "0.979), and in-run test metrics without it were 0.853 ± 0.029 / 0.900 ± 0.006. Read its "
                   "margin as within the seed spread.",
    "pneumoniamnist": "the fast path was chosen for epoch time; the checkpoint monitor (validation AUC, not "
                      "accuracy) was chosen knowing the test split's class balance (62 % pneumonia against 74 % in "
                      "training), so that choice is informed by test data.",
    "bloodmnist": "the narrower CNN was chosen for the 10-minute budget (timing), not on test; TTA was checked on "
                  "validation and test of one checkpoint.",
    "organamnist": "TTA (`tta: shift`) chosen on validation of three checkpoints; narrower CNNs were compared on "
                   "test (seed 1) and only used as evidence for not switching.",
}


def protocol_overrides(name: str, protocol: str, paper_epochs: int) -> list[str]:
    if protocol == "paper":
        milestones = f"[{max(1, paper_epochs // 2)},{max(1, paper_epochs * 3 // 4)}]"
        return ["experiment=medmnist_paper", f"data.name={name}", f"trainer.max_epochs={paper_epochs}",
                f"scheduler.scheduler.milestones={milestones}"]
    preset = ROOT / "conf" / "experiment" / f"{name}.yaml"
    return [f"experiment={name}"] if preset.is_file() else [f"data.name={name}"]


def run(cmd: list[str], log: Path) -> None:
    """A child process with its output in `log`; a failure stops the table and names the log."""
    log.parent.mkdir(parents=True, exist_ok=True)
    print("  $ python " + " ".join(cmd[1:]), flush=True)
    with log.open("a") as out:
        code = subprocess.call(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    if code:
        raise SystemExit(f"error: exit {code}; see {log}")


def complete_runs(sweep: Path) -> list[Path]:
    return sorted(p.parent for p in sweep.glob("*/metrics.json")) if sweep.is_dir() else []


def sweep_and_evaluate(name: str, protocol: str, args: argparse.Namespace) -> list[dict[str, float]]:
    """Train every seed (unless done), then re-evaluate each best checkpoint with the official metrics."""
    sweep = args.runs / name / protocol
    runs = complete_runs(sweep)
    if len(runs) < len(args.seeds):
        if sweep.exists():
            raise SystemExit(f"error: {sweep} holds {len(runs)} of {len(args.seeds)} finished runs; delete it "
                             "(or finish it with train.py ckpt_path=last) and rerun")
        run([sys.executable, "train.py", "-m", *protocol_overrides(name, protocol, args.paper_epochs),
             f"data.root={args.data_root}", "seed=" + ",".join(map(str, args.seeds)), f"hydra.sweep.dir={sweep}",
             *QUIET, *args.train_args], sweep.parent / f"{protocol}.log")
        runs = complete_runs(sweep)
    else:
        print(f"  reusing {sweep} ({len(runs)} runs)", flush=True)
    results = []
    for folder in runs:
        report = folder / "test_report" / "report.json"
        if not report.is_file():
            ckpt = json.loads((folder / "metrics.json").read_text())["run"]["best_checkpoint"]
            run([sys.executable, "eval.py", f"ckpt_path={ckpt}", "split=test", "calibrate=false",
                 f"data.root={args.data_root}", f"hydra.run.dir={folder / 'test_report'}"],
                sweep.parent / f"{protocol}_eval.log")
        official = json.loads(report.read_text())["medmnist_official"]
        metrics = json.loads((folder / "metrics.json").read_text())
        results.append({"acc": official["acc"], "auc": official["auc"],
                        "seconds": metrics.get("run", {}).get("train_seconds", float("nan")),
                        "epochs": metrics.get("run", {}).get("epochs", float("nan"))})
    return results


def mean_std(values: list[float]) -> str:
    """Four decimals: the paper rounds to three, so a margin of +0.000x must stay visible."""
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} ± {sd:.4f}"


def verdict(acc: float, auc: float, base_acc: float, base_auc: float, seconds: list[float]) -> str:
    """The issue's bar: beat ResNet-18 (28) in both ACC and AUC (means) within 10 minutes per run."""
    beats = acc > base_acc and auc > base_auc
    slowest = max(seconds)
    return (f"{'beats' if beats else 'does not beat'} ResNet-18 (28) in both ACC and AUC "
            f"(ACC {acc - base_acc:+.4f}, AUC {auc - base_auc:+.4f}); slowest run trained {slowest:.0f} s "
            f"({'within' if slowest <= 600 else 'over'} 10 minutes)")


def table(name: str, measured: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> list[str]:
    base_auc, base_acc = PAPER[name][0]
    lines = [f"### {name}", "", "| method | budget | ACC | AUC | ΔACC vs R18 (28) | ΔAUC vs R18 (28) |",
             "|---|---|---|---|---|---|"]
    notes: list[str] = []
    for method, (auc, acc) in zip(PAPER_METHODS, PAPER[name], strict=True):
        lines.append(f"| {method} (paper) | paper | {acc:.3f} | {auc:.3f} | {acc - base_acc:+.3f} | "
                     f"{auc - base_auc:+.3f} |")
    for protocol, runs in measured.items():
        acc, auc = [r["acc"] for r in runs], [r["auc"] for r in runs]
        epochs = "/".join(sorted({str(int(r["epochs"])) for r in runs if r["epochs"] == r["epochs"]}))
        seconds = [r["seconds"] for r in runs]
        budget = (f"{len(runs)} seeds, {epochs or '?'} epochs, {min(seconds):.0f}–{max(seconds):.0f} s "
                  f"training per run, {args.machine}")
        label = "medclass recipe" if protocol == "recipe" else f"paper protocol, {args.paper_epochs} epochs"
        lines.append(f"| **{label}** | {budget} | {mean_std(acc)} | {mean_std(auc)} | "
                     f"{statistics.mean(acc) - base_acc:+.4f} | {statistics.mean(auc) - base_auc:+.4f} |")
        notes.append(f"- {label}: " + verdict(statistics.mean(acc), statistics.mean(auc), base_acc, base_auc, seconds))
    if name in CHOICES:
        notes.append(f"- how the recipe was chosen: {CHOICES[name]}")
    return lines + [""] + notes + [""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    env = os.environ.get("MEDCLASS_DATA")
    parser.add_argument("--data-root", type=Path, default=Path(env) / "medmnist" if env else ROOT / "data" / "medmnist",
                        help="folder of <set>.npz files (default $MEDCLASS_DATA/medmnist)")
    parser.add_argument("--sets", nargs="*", help="set names (default: every 2D set found in --data-root)")
    parser.add_argument("--protocols", nargs="+", default=["recipe"], choices=["recipe", "paper"])
    parser.add_argument("--paper-epochs", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--train-args", nargs="*", default=[], metavar="KEY=VALUE",
                        help="extra train.py overrides for every run, e.g. trainer.max_epochs=5")
    parser.add_argument("--runs", type=Path, default=ROOT / "outputs" / "medmnist_28", help="sweep folders")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "medmnist_28.md")
    args = parser.parse_args()
    sets = args.sets or sorted(p.stem for p in args.data_root.glob("*.npz") if p.stem in PAPER)
    unknown = [s for s in sets if s not in PAPER]
    if not sets or unknown:
        raise SystemExit(f"error: no MedMNIST 2D set to run in {args.data_root} (unknown: {unknown}); "
                         f"choose from {sorted(PAPER)}")
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    args.machine = device
    started = time.strftime("%Y-%m-%d %H:%M")
    command = "python benchmarks/medmnist_table.py " + " ".join(sys.argv[1:])
    header = ["# MedMNIST 28 px: this project against the MedMNIST v2 paper", "",
              f"Made by `{command.strip()}` ({started}, {device}, torch {torch.__version__}, "
              f"Python {platform.python_version()}). ACC and AUC are the `medmnist` Evaluator's (`eval.py` "
              "report, `medmnist_official`), on each run's best-validation checkpoint, mean ± std over seeds. "
              "The seeds vary initialization, augmentation and batch order only: every run uses the file's "
              "official split.",
              f"Paper figures: {PAPER_SOURCE}.", ""]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    sections: list[str] = []
    for name in sets:
        print(f"{name}:", flush=True)
        measured = {p: sweep_and_evaluate(name, p, args) for p in args.protocols}
        sections += table(name, measured, args)
        args.out.write_text("\n".join(header + sections))  # after every set: a long run shows its progress
        print("\n".join(table(name, measured, args)), flush=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
