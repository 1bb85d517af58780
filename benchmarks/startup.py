"""How long each command takes to answer, as a user types it: `--help`, refusing a bad model file,
predicting one image and evaluating a tiny set (docs/development.md "Start-up").

    python benchmarks/startup.py [--repeats 3] [--keep <folder>]

Builds everything it needs in a temporary folder: a 3-channel 8-class BloodMNIST-layout npz of 64/48/48
images, a real checkpoint from `train.py debug=fast` on it, a junk file named `bad.ckpt`, a checkpoint whose
description names an unknown network, and one PNG. Each command runs `--repeats` times in a fresh
process (the median wall time is reported, with the peak memory of that run). The goals are issue 36's, on
2 cores. Run it alone: another job on the machine slows every row.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def write_npz(folder: Path) -> Path:
    """Brightness-coded synthetic BloodMNIST (the official npz layout), enough for a few steps to learn."""
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in zip(("train", "val", "test"), (64, 48, 48), strict=True):
        labels = (np.arange(count) % 8).astype(np.uint8)[:, None]
        level = labels.astype(np.float32).reshape(count, 1, 1, 1) / 7
        images = np.clip(60 + 120 * level + rng.normal(0, 20, (count, 28, 28, 3)), 0, 255)
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = images.astype(np.uint8), labels
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "bloodmnist.npz", **arrays)
    return folder


def timed(args: list[str], env: dict[str, str], log: Path) -> tuple[float, float, int, str]:
    """(seconds, peak MiB, exit code, last stderr line) of one fresh process (its own peak, from wait4)."""
    start = time.perf_counter()
    with open(log, "w") as err:
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=err)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    tail = (log.read_text().strip().splitlines() or [""])[-1][:90]
    return seconds, usage.ru_maxrss / 1024, proc.returncode, tail


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--keep", type=Path, help="build in this folder and keep it (default: a temporary one)")
    opts = parser.parse_args()
    work = opts.keep or Path(tempfile.mkdtemp(prefix="medclass-startup-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDCLASS_DATA": "", "MEDCLASS_HOME": str(work / "home")}
    py = sys.executable
    data = write_npz(work / "data")
    run = work / "run"
    if not any(run.glob("checkpoints/best-*.ckpt")):
        subprocess.run([py, "train.py", f"data.root={data}", "debug=fast", "trainer.max_epochs=1", "logger=none",
                        f"hydra.run.dir={run}"], cwd=ROOT, env=env, check=True, capture_output=True)
    ckpt = next(run.glob("checkpoints/best-*.ckpt"))
    (work / "bad.ckpt").write_bytes(b"not a checkpoint\n" * 64)
    # in a child: a process that imported torch would pass its memory to every command it starts (fork), and
    # each row's peak (wait4's ru_maxrss) would start from there
    edit = ("import sys, torch; c = torch.load(sys.argv[1], map_location='cpu', weights_only=True); "
            "c['hyper_parameters']['net']['arch'] = 'no_such_network'; torch.save(c, sys.argv[2])")
    subprocess.run([py, "-c", edit, str(ckpt), str(work / "edited.ckpt")], check=True)
    image = work / "one.png"
    Image.fromarray(np.full((28, 28, 3), 128, np.uint8)).save(image)

    rows = [
        ("train.py --help", [py, "train.py", "--help"], 1.5),
        ("eval.py --help", [py, "eval.py", "--help"], 1.5),
        ("predict.py --help", [py, "predict.py", "--help"], 1.5),
        ("predict.py, a junk model file", [py, "predict.py", f"ckpt_path={work / 'bad.ckpt'}", f"inputs={image}",
                                           f"hydra.run.dir={work / 'p0'}"], 3.0),
        ("predict.py, an unknown network", [py, "predict.py", f"ckpt_path={work / 'edited.ckpt'}", f"inputs={image}",
                                            f"hydra.run.dir={work / 'p1'}"], 3.0),
        ("eval.py, a junk model file", [py, "eval.py", f"ckpt_path={work / 'bad.ckpt'}",
                                        f"hydra.run.dir={work / 'e0'}"], 3.0),
        ("predict.py, one image", [py, "predict.py", f"ckpt_path={ckpt}", f"inputs={image}", "progress=false",
                                   f"hydra.run.dir={work / 'p2'}"], 4.0),
        ("eval.py, 48 test images", [py, "eval.py", f"ckpt_path={ckpt}", "bootstrap=0", "report=false",
                                     f"hydra.run.dir={work / 'e1'}"], None),
    ]
    print(f"| command | seconds (median of {opts.repeats}) | peak MiB | exit | goal (s) |")
    print("|---|---|---|---|---|")
    for name, args, goal in rows:
        results = [timed(args, env, work / 'stderr.txt') for _ in range(opts.repeats)]
        seconds = statistics.median(r[0] for r in results)
        code, tail = results[-1][2], results[-1][3]
        goal_text = "-" if goal is None else f"{goal:g} {'met' if seconds <= goal else 'NOT met'}"
        print(f"| {name} | {seconds:.2f} | {results[-1][1]:.0f} | {code} | {goal_text} |", flush=True)
        if code not in (0, 2):
            print(f"  unexpected exit {code}: {tail}", flush=True)
    print(f"\nbuilt in {work}; python {sys.version.split()[0]}, {os.cpu_count()} cores")


if __name__ == "__main__":
    main()
