"""Every hostile model file of tests/attacks.py through eval.py, predict.py and export.py, on the command line.

    python tools/attack_check.py [--keep DIR]

Trains one short run on a synthetic class-per-folder set (train.py debug=fast), builds each attack
from its checkpoint in a fresh folder, runs the command as a user types it, and prints one row per
attack and command: exit code, number of `error:` lines, whether the victims survived and nothing
forbidden was written or printed, the seconds the command took, and the error line. It ends with
exit code 1 when any row is not a clean refusal. A check for people, not a test: the suite runs the
same attacks in-process (tests/test_checkpoint_attacks.py).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.attacks import ATTACKS  # noqa: E402
from tests.conftest import clean_tree  # noqa: E402

COMMANDS = ("eval", "predict", "export")


def run(script: str, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.CompletedProcess, float]:
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, str(ROOT / script), *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "MEDCLASS_DATA": "", **(env or {})}, timeout=120)
    return proc, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="medclass-attacks-"))
    root = clean_tree(work / "data", classes=("a", "b"), per_class=12)
    proc, _ = run("train.py", "data=folder", f"data.root={root}", "data.image_size=16", "debug=fast",
                  f"hydra.run.dir={work / 'run'}")
    if proc.returncode:
        print(proc.stderr[-3000:])
        return 1
    base = torch.load(next((work / "run" / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=True)
    print("| attack | command | exit | error lines | victims intact | seconds | error line |")
    print("|---|---|---|---|---|---|---|")
    clean = True
    for name, build in ATTACKS.items():
        for command in COMMANDS:
            folder = work / f"{name}-{command}"
            folder.mkdir(parents=True)
            attack = build(base, folder)
            extra = [f"inputs={root}"] if command == "predict" else []
            proc, seconds = run(f"{command}.py", f"ckpt_path={attack.ckpt}", *extra, f"hydra.run.dir={folder / 'out'}",
                                env=attack.env)
            output = proc.stdout + proc.stderr
            errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
            intact = (all(v.read_text() == "precious" for v in attack.victims)
                      and not any(p.exists() for p in attack.forbidden)
                      and not (attack.secret and attack.secret in output))
            if command in attack.refused_by:
                ok = proc.returncode == 2 and len(errors) == 1 and intact and bool(re.search(attack.expect, errors[0]))
            else:  # the command never reads the attacked part: it must simply work and harm nothing
                ok = proc.returncode == 0 and intact
            clean &= ok
            line = (errors[0] if errors else output[-200:]).replace("|", "\\|")
            print(f"| {attack.name} | {command} | {proc.returncode} | {len(errors)} | {'yes' if intact else 'NO'} | "
                  f"{seconds:.1f} | {line[:150]}{'…' if len(line) > 150 else ''} |")
    verdict = "every attack refused with one error line, victims intact" if clean else "SOME ATTACKS WERE NOT REFUSED"
    print(f"\n{verdict} (work folder {work})")
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
