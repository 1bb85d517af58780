"""Test-time views respect dataset symmetry; gather turns run folders into a mean ± std table."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medclass.module.tta import tta_views
from medclass.tasks.gather import common_overrides, load_runs, summarize, to_markdown
from medclass.utils.errors import MedclassError


def test_view_counts_follow_symmetry() -> None:
    assert len(tta_views("auto", "invariant")) == 8
    assert len(tta_views("auto", "mirror")) == 2
    assert len(tta_views("auto", "sided")) == 1 and len(tta_views("none", "invariant")) == 1
    with pytest.raises(MedclassError, match="module.tta"):
        tta_views("flips", "invariant")


def test_dihedral_views_are_distinct_and_averaged() -> None:
    x = torch.arange(16.0).view(1, 1, 4, 4)
    views = [v(x) for v in tta_views("auto", "invariant")]
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    assert torch.equal(views[0], x)  # the plain view comes first: the loss is computed on it


def test_shift_views_move_one_pixel_without_wrapping() -> None:
    x = torch.arange(28.0 * 28).view(1, 1, 28, 28)
    views = tta_views("shift", "sided")
    assert len(views) == 5 and len(tta_views("shift", "mirror")) == 6
    up = views[1](x)  # dy=-1: row i shows row i-1, the first row repeated
    assert torch.equal(up[..., 1:, :], x[..., :-1, :]) and torch.equal(up[..., 0, :], x[..., 0, :])
    assert torch.equal(views[4](x)[..., :, :-1], x[..., :, 1:])  # dx=+1
    assert views[1](torch.zeros(2, 3, 56, 56)).shape == (2, 3, 56, 56)


def test_gather_groups_seeds_sorts_on_validation_and_states_shared_overrides_once(tmp_path: Path) -> None:
    for i, (seed, acc, val) in enumerate([(1, 0.9, 0.6), (2, 0.8, 0.6), (1, 0.5, 0.7)]):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        lr = "optimizer.lr=0.1" if i < 2 else "optimizer.lr=0.2"
        (run / ".hydra" / "overrides.yaml").write_text(f"- {lr}\n- trainer.max_epochs=3\n- seed={seed}\n")
        metrics = {"test": {"test/acc": acc}, "best_val": {"val/acc": val}, "run": {"train_seconds": 12.5}}
        (run / "metrics.json").write_text(json.dumps(metrics))
    runs = load_runs(tmp_path)
    rows = summarize(runs)
    assert [r["config"] for r in rows] == ["optimizer.lr=0.2", "optimizer.lr=0.1"]  # val 0.7 first, not test
    assert rows[1]["runs"] == 2 and rows[1]["test/acc"] == pytest.approx(0.85)
    assert rows[1]["test/acc std"] == pytest.approx(0.0707, abs=1e-4)
    table = to_markdown(rows, common_overrides(runs))
    assert table.startswith("Common to every run: `trainer.max_epochs=3`")
    assert "| optimizer.lr=0.2 | 1 | 0.5000 | 0.7000 | 12.5 |" in table
    assert "| optimizer.lr=0.1 | 2 | 0.8500 ± 0.0707 | 0.6000 ± 0.0000 | 12.5 ± 0.0 |" in table
    assert [r["config"] for r in summarize(runs, sort_by="test/acc")] == ["optimizer.lr=0.1", "optimizer.lr=0.2"]


def test_gather_csv_is_numeric_and_a_missing_folder_is_named(tmp_path: Path) -> None:
    run = tmp_path / "runs" / "0"
    run.mkdir(parents=True)
    (run / "metrics.json").write_text(json.dumps({"test": {"test/acc": 0.75}}))
    cmd = [sys.executable, "-m", "medclass.tasks.gather"]
    done = subprocess.run([*cmd, str(tmp_path / "runs"), "--out", str(tmp_path / "t")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    rows = list(csv.DictReader((tmp_path / "t.csv").open()))
    assert rows == [{"config": "(defaults)", "runs": "1", "test/acc": "0.75", "test/acc std": "0.0"}]
    missing = subprocess.run([*cmd, str(tmp_path / "nope")], capture_output=True, text=True)
    assert missing.returncode != 0 and "nope is not a folder" in missing.stderr
