"""Every config option composes, instantiates and runs a few real training steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from hydra.utils import instantiate

from medclass.runner import train

from .conftest import CONF, FAST, clean_tree, compose_train, write_npz

GROUPS = ("data", "augment", "model", "module", "optimizer", "scheduler", "trainer", "callbacks", "logger",
          "experiment", "paths", "debug")


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


@pytest.fixture
def medmnist_root(tmp_path: Path) -> Path:
    """Synthetic stand-ins for every set the presets name."""
    root = tmp_path / "medmnist"
    write_npz(root, "bloodmnist", channels=3, classes=8, n=(64, 32, 32))
    write_npz(root, "organamnist", channels=1, classes=11, n=(66, 33, 33))
    write_npz(root, "breastmnist", n=(64, 32, 32))
    write_npz(root, "pneumoniamnist", n=(64, 32, 32))
    return root


def test_every_group_has_options() -> None:
    for group in GROUPS:
        assert options(group), f"conf/{group}/ is empty"


@pytest.mark.parametrize("group", GROUPS)
def test_every_option_composes(group: str, tmp_path: Path) -> None:
    for option in options(group):
        cfg = compose_train([f"{group}={option}"], tmp_path)
        assert cfg.data._target_ and cfg.trainer._target_ == "lightning.Trainer"


def test_eval_config_composes(tmp_path: Path) -> None:
    cfg = compose_train(["ckpt_path=x.ckpt", "split=val", "data.root=/d"], tmp_path, config_name="eval")
    assert cfg.split == "val" and cfg.data.root == "/d" and cfg.tta is None


CASES = [(g, o) for g in ("augment", "model", "optimizer", "scheduler", "callbacks", "logger", "experiment")
         for o in options(g)]


def folder_data(tmp_path: Path, test_root: bool = False) -> list[str]:
    """A tiny class-per-folder tree in place of the real set a preset names."""
    train = clean_tree(tmp_path / "Training", per_class=12)
    return [f"data.root={train}"] + ([f"data.test_root={clean_tree(tmp_path / 'Testing', per_class=3)}"]
                                     if test_root else [])


def synthetic(tmp_path: Path, medmnist_root: Path) -> list[str]:
    return [f"data.root={medmnist_root}"]


# what an option needs beyond the synthetic MedMNIST files: offline weights, a size VGG can pool, folder data
EXTRA = {
    # 138 M parameters: a frozen base and one checkpoint keep this test to seconds
    "model=vgg16": lambda tmp, root: [*synthetic(tmp, root), "data.image_size=32", "module.freeze_backbone=true",
                                      "callbacks.model_checkpoint.save_last=false"],
    "model=efficientnet_lite0": lambda tmp, root: [*synthetic(tmp, root), "model.pretrained=false"],
    "experiment=mednist": lambda tmp, root: [*folder_data(tmp), "model.pretrained=false"],
    "experiment=modality": lambda tmp, root: folder_data(tmp),
    "experiment=brain_tumor_mri": lambda tmp, root: [*folder_data(tmp, test_root=True), "model.pretrained=false",
                                                     "data.image_size=32"],
}


SLOW_CASES = {("model", "vgg16")}  # 138 M parameters: half a minute for a few CPU steps


@pytest.mark.parametrize(("group", "option"), [
    pytest.param(g, o, id=f"{g}={o}", marks=[pytest.mark.slow] if (g, o) in SLOW_CASES else [])
    for g, o in CASES])
def test_option_trains_a_few_steps(group: str, option: str, tmp_path: Path, medmnist_root: Path) -> None:
    extra = EXTRA.get(f"{group}={option}", synthetic)(tmp_path, medmnist_root)
    cfg = compose_train([f"{group}={option}", *extra, *FAST], tmp_path / "run")
    metrics = train(cfg)
    assert 0.0 <= metrics["test"]["test/acc"] <= 1.0
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == metrics["test"]


@pytest.mark.parametrize("option", ["default", "cpu", "ddp"])
def test_cpu_trainers_instantiate(option: str, tmp_path: Path) -> None:
    cfg = compose_train([f"trainer={option}"], tmp_path)
    trainer = instantiate(cfg.trainer, accelerator="cpu", logger=False)
    assert trainer.max_epochs == cfg.trainer.max_epochs


def test_gpu_trainer_uses_mixed_precision(tmp_path: Path) -> None:
    cfg = compose_train(["trainer=gpu"], tmp_path)
    assert cfg.trainer.precision in ("16-mixed", "bf16-mixed") and cfg.trainer.accelerator == "gpu"
    if torch.cuda.is_available():
        assert instantiate(cfg.trainer, logger=False).precision == cfg.trainer.precision


def test_optimizer_and_scheduler_are_partials(tmp_path: Path) -> None:
    for name in options("optimizer"):
        assert compose_train([f"optimizer={name}"], tmp_path).optimizer._partial_
    for name in options("scheduler"):
        sched = compose_train([f"scheduler={name}"], tmp_path).scheduler
        assert not sched or sched.scheduler._partial_
