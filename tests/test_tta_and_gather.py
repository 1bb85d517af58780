"""Test-time views respect dataset symmetry; gather turns run folders into a mean ± std table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medclass.errors import MedclassError
from medclass.gather import load_runs, summarize, to_markdown
from medclass.module.tta import tta_views


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


def test_gather_groups_seeds(tmp_path: Path) -> None:
    for i, (seed, acc) in enumerate([(1, 0.9), (2, 0.8), (1, 0.5)]):
        run = tmp_path / str(i)
        (run / ".hydra").mkdir(parents=True)
        lr = "optimizer.lr=0.1" if i < 2 else "optimizer.lr=0.2"
        (run / ".hydra" / "overrides.yaml").write_text(f"- {lr}\n- seed={seed}\n")
        (run / "metrics.json").write_text(json.dumps({"test": {"test/acc": acc}, "run": {"train_seconds": 1}}))
    rows = summarize(load_runs(tmp_path))
    assert [r["config"] for r in rows] == ["optimizer.lr=0.1", "optimizer.lr=0.2"]
    assert rows[0]["runs"] == "2" and rows[0]["test/acc"] == "0.8500 ± 0.0707"
    assert "| optimizer.lr=0.2 | 1 | 0.5000 ± 0.0000 |" in to_markdown(rows)
