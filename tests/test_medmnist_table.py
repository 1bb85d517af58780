"""benchmarks/medmnist_table.py end to end on a synthetic set: both protocols, official metrics, the table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from .conftest import ROOT, compose_train, write_npz


def test_paper_protocol_preset(tmp_path: Path) -> None:
    cfg = compose_train(["experiment=medmnist_paper", "data.name=pneumoniamnist"], tmp_path)
    assert cfg.model.name == "resnet18" and cfg.model.small_input and not cfg.model.pretrained
    assert (cfg.optimizer.lr, cfg.optimizer.weight_decay, cfg.data.batch_size) == (1e-3, 0.0, 128)
    scheduler = cfg.scheduler.scheduler
    assert scheduler._target_.endswith("MultiStepLR") and list(scheduler.milestones) == [50, 75]
    assert cfg.trainer.max_epochs == 100 and cfg.module.tta == "none" and not cfg.augment
    assert (cfg.callbacks.model_checkpoint.monitor, cfg.callbacks.model_checkpoint.mode) == ("val/auc", "max")


@pytest.mark.parametrize("name", ["bloodmnist", "organamnist", "pneumoniamnist", "breastmnist"])
def test_speed_presets_compose_for_every_table_set(name: str, tmp_path: Path) -> None:
    """`experiment=<set>_speed` exists for each set the table has goals for, trains that set, picks its precision
    from the hardware, and keeps its recipe's test-time views; the table's `speed` protocol runs exactly it."""
    from benchmarks.medmnist_table import FRONTIER, protocol_overrides

    assert name in FRONTIER
    assert protocol_overrides(name, "speed", 100) == [f"experiment={name}_speed"]
    cfg = compose_train([f"experiment={name}_speed"], tmp_path)
    recipe = compose_train([f"experiment={name}"], tmp_path)
    assert cfg.data.name == name and cfg.trainer.precision == "auto"
    assert cfg.module.tta == recipe.module.tta and cfg.augment._target_ == "medclass.augment.batch_train_transform"
    assert cfg.trainer.max_epochs <= recipe.trainer.max_epochs


@pytest.mark.slow  # six trainings and six evals in subprocesses: about 2 minutes
def test_table_from_three_protocols(tmp_path: Path) -> None:
    data = write_npz(tmp_path / "medmnist", "breastmnist", n=(48, 24, 24)).parent
    out, runs = tmp_path / "table.md", tmp_path / "runs"
    cmd = [sys.executable, "benchmarks/medmnist_table.py", "--data-root", str(data), "--protocols", "recipe", "speed",
           "paper", "--paper-epochs", "2", "--seeds", "1", "--runs", str(runs), "--out", str(out),
           "--train-args", "debug=fast", "logger=none", "data.batch_size=16"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    text = out.read_text()
    assert "| ResNet-18 (28) (paper) | paper | 0.863 | 0.901 | +0.000 | +0.000 | |" in text
    rows = [line for line in text.splitlines() if line.startswith("| **")]
    assert [r.split(" | ")[0] for r in rows] == ["| **medclass recipe (10 minutes)**", "| **medclass speed preset**",
                                                 "| **paper protocol, 2 epochs**"]
    for protocol, row in zip(("recipe", "speed", "paper"), rows, strict=True):
        (run,) = (runs / "breastmnist" / protocol).glob("*/metrics.json")
        official = json.loads((run.parent / "test_report" / "report.json").read_text())["medmnist_official"]
        assert f"{official['acc']:.4f} ± 0.0000" in row
        clock = [json.loads(line) for line in (run.parent / "paper_clock.jsonl").read_text().splitlines()]
        passed = next((r for r in clock if r["test_acc"] >= 0.863), None)
        assert row.rstrip(" |").endswith(f"{passed['seconds']:.0f} s" if passed else "not reached (0 of 1)"), row
    notes = [line for line in text.splitlines() if line.startswith("- ")]
    assert any("60 s goal" in n for n in notes) and any("600 s goal" in n for n in notes)
    assert any(n.startswith("- frontier goal") and "0.880" in n and "0.919" in n for n in notes), notes
    # finished sweeps are reused, not rerun
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0 and again.stdout.count("reusing") == 3, again.stdout[-2000:]


class FinalWeights(L.Callback):
    """Saves the network's weights as fit ends, for comparing two runs exactly."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        torch.save(pl_module.state_dict(), self.path)


def _train_with_clock(tmp_path: Path, name: str, clock: bool, extra: list[str]) -> tuple[dict, list[dict]]:
    """One in-process train.py run on a synthetic set, with or without benchmarks' paper clock."""
    from medclass.tasks.train import train

    root = tmp_path / "medmnist"  # noise with random labels: no accuracy saturates, no two splits score alike
    if not root.is_dir():
        rng = np.random.default_rng(0)
        root.mkdir()
        arrays = {}
        for split, n in (("train", 64), ("val", 24), ("test", 40)):
            arrays[f"{split}_images"] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
            arrays[f"{split}_labels"] = rng.integers(0, 2, (n, 1), dtype=np.uint8)
        np.savez(root / "breastmnist.npz", **arrays)
    out = tmp_path / name
    path = out / "paper_clock.jsonl"
    overrides = [f"data.root={root}", "data.name=breastmnist", "logger=none", "callbacks.progress_bar=null",
                 "trainer.enable_progress_bar=false", "data.batch_size=16", "data.num_workers=0", *extra]
    overrides.append(f"+callbacks.final_weights={{_target_:tests.test_medmnist_table.FinalWeights,path:'{out}/final.pt'}}")
    if clock:  # the exact override medmnist_table.py passes, paths interpolated by train.py
        overrides.append("+callbacks.paper_clock={_target_:benchmarks.medmnist_table.paper_clock,"
                         "path:'${paths.output_dir}/paper_clock.jsonl',target:1.01}")
    cfg = compose_train(overrides, out)
    train(cfg)
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(line) for line in path.read_text().splitlines()] if clock else []
    return metrics, rows


def test_paper_clock_scores_the_test_split_with_test_time_views(tmp_path: Path) -> None:
    """One epoch: the clock's test ACC is the in-run test ACC of the same (only) checkpoint, TTA included;
    a target above 1 is never reached, so every epoch gets a row and the table says "not reached"."""
    from benchmarks.medmnist_table import seconds_to_paper

    metrics, rows = _train_with_clock(tmp_path, "one", True, ["trainer.max_epochs=1", "module.tta=shift"])
    assert [r["epoch"] for r in rows] == [1] and rows[0]["seconds"] > 0
    assert rows[0]["test_acc"] == pytest.approx(metrics["test"]["test/acc"], abs=1e-6)
    assert seconds_to_paper(tmp_path / "one") is None


def test_paper_clock_leaves_training_unchanged(tmp_path: Path) -> None:
    """Its test passes run on a forked RNG: the second epoch shuffles and augments exactly as without it."""
    extra = ["trainer.max_epochs=2", "trainer.limit_train_batches=3", "seed=3", "trainer.deterministic=true"]
    without, _ = _train_with_clock(tmp_path, "without", False, extra)
    with_clock, rows = _train_with_clock(tmp_path, "with", True, extra)
    assert len(rows) == 2
    last = [torch.load(tmp_path / run / "final.pt", weights_only=True) for run in ("without", "with")]
    assert last[0].keys() == last[1].keys() and all(torch.equal(last[0][k], last[1][k]) for k in last[0])


def test_seconds_to_paper_is_the_first_passing_epoch(tmp_path: Path) -> None:
    from benchmarks.medmnist_table import clock_overhead, seconds_to_paper

    lines = [{"epoch": 1, "test_acc": 0.90, "target": 0.95, "seconds": 10.0},
             {"epoch": 2, "test_acc": 0.96, "target": 0.95, "seconds": 21.5},
             {"epoch": 3, "test_acc": 0.97, "target": 0.95, "seconds": 33.0}]
    (tmp_path / "paper_clock.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    assert seconds_to_paper(tmp_path) == 21.5
    (tmp_path / "paper_clock.jsonl").write_text(json.dumps({**lines[0], "overhead": 4.0}) + "\n")
    assert clock_overhead(tmp_path) == 4.0
