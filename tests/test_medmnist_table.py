"""benchmarks/medmnist_table.py end to end on a synthetic set: both protocols, official metrics, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT, compose_train, write_npz


def test_paper_protocol_preset(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=medmnist_paper", "data.name=pneumoniamnist"], tmp_path)
    assert cfg.model.name == "resnet18" and cfg.model.small_input and not cfg.model.pretrained
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.batch_size) == (1e-3, 0.0, 128)
    scheduler = cfg.scheduler.scheduler
    assert scheduler._target_.endswith("MultiStepLR") and list(scheduler.milestones) == [50, 75]
    assert cfg.trainer.max_epochs == 100 and cfg.module.tta == "none" and not cfg.augment
    assert (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode) == ("val/auc", "max")


@pytest.mark.slow  # four trainings and four evals in subprocesses: about 70 s
def test_table_from_two_protocols(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "medmnist", "breastmnist", n=(48, 24, 24)).parent
    out, runs = tmp_path / "table.md", tmp_path / "runs"
    cmd = [sys.executable, "benchmarks/medmnist_table.py", "--data-root", str(data), "--protocols", "recipe", "paper",
           "--paper-epochs", "2", "--seeds", "1", "--runs", str(runs), "--out", str(out),
           "--train-args", "debug=fast", "logger=none", "data.batch_size=16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    assert "| ResNet-18 (28) (paper) | paper | 0.863 | 0.901 | +0.000 | +0.000 |" in text
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert [r.split(" | ")[0] for r in rows] == ["| **medclass recipe**", "| **paper protocol, 2 epochs**"]
    for protocol in ("recipe", "paper"):
        (run,) = (runs / "breastmnist" / protocol).glob("*/metrics.json")
        official = json.loads((run.parent / "test_report" / "report.json").read_text())["medmnist_official"]
        assert f"{official['acc']:.4f} ± 0.0000" in next(r for r in rows if ("recipe" in r) == (protocol == "recipe"))
    verdicts = [line for line in text.splitlines() if line.startswith("- ")]
    assert len(verdicts) == 2 and all("ResNet-18 (28)" in v and "10 minutes" in v for v in verdicts), verdicts
    # finished sweeps are reused, not rerun
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0 and again.stdout.count("reusing") == 2, again.stdout[-2000:]
