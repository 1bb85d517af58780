"""Every config option composes, instantiates and runs a few real training steps."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import albumentations as A
import pytest
import torch
from hydra.utils import instantiate
from lightning.pytorch.accelerators import CPUAccelerator
from lightning.pytorch.strategies import DDPStrategy
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medclass.tasks.build import auto_precision, build_trainer
from medclass.tasks.train import train

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


def test_eval_defaults_score_test_with_the_split_check_and_no_unused_seed(tmp_path: Path) -> None:
    cfg = compose_train(["ckpt_path=x.ckpt"], tmp_path, config_name="eval")
    assert cfg.split == "test" and cfg.split_check is True and cfg.tta is None  # tta null: as trained
    assert "seed" not in cfg  # eval.py draws no random numbers: a seed option would be ignored


# logger=mlflow and logger=wandb train and are read back through their own stores in test_loggers.py
CASES = [(g, o) for g in ("augment", "model", "optimizer", "scheduler", "callbacks", "logger", "experiment")
         for o in options(g) if (g, o) not in {("logger", "mlflow"), ("logger", "wandb")}]


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


# 138 M parameters: half a minute for a few CPU steps; ResNet-50 takes the path ResNet-18 and timm test (10 s)
SLOW_CASES = {("model", "vgg16"), ("model", "resnet50")}


@pytest.mark.parametrize(("group", "option"), [
    pytest.param(g, o, id=f"{g}={o}", marks=[pytest.mark.slow] if (g, o) in SLOW_CASES else [])
    for g, o in CASES])
def test_option_trains_a_few_steps(group: str, option: str, tmp_path: Path, medmnist_root: Path) -> None:
    extra = EXTRA.get(f"{group}={option}", synthetic)(tmp_path, medmnist_root)
    cfg = compose_train([f"{group}={option}", *extra, *FAST], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["run"]["steps"] > 0  # optimizer steps were taken
    assert {"test/acc", "test/auc", "test/loss"} <= set(metrics["test"]) and math.isfinite(metrics["test"]["test/loss"])
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["test"] == metrics["test"]
    if group == "logger":
        assert_logger_files(tmp_path / "run", option, metrics["run"]["steps"])
    if group == "optimizer":
        assert_optimizer_that_ran(tmp_path / "run", option)


# logger option: (writes csv/metrics.csv, writes TensorBoard event files)
LOGGER_FILES = {"none": (False, False), "csv": (True, False), "tensorboard": (False, True), "many": (True, True)}


def assert_logger_files(run: Path, option: str, steps: int) -> None:
    """What each logger option wrote, read back: the per-step training loss, once per optimizer step."""
    want_csv, want_tb = LOGGER_FILES[option]
    events = list(run.rglob("events.out.tfevents.*"))
    assert (run / "csv" / "metrics.csv").is_file() == want_csv and bool(events) == want_tb, sorted(run.rglob("*"))
    if want_csv:
        with (run / "csv" / "metrics.csv").open() as f:
            rows = list(csv.DictReader(f))
        assert len([r for r in rows if r.get("train/loss_step")]) == steps
        assert any(r.get("test/acc") for r in rows)
    if want_tb:
        acc = EventAccumulator(str(run / "tensorboard"))
        acc.Reload()
        assert len(acc.Scalars("train/loss_step")) == steps and acc.Scalars("test/acc")


def assert_optimizer_that_ran(run: Path, option: str) -> None:
    """The optimizer state saved by the trainer is the option's optimizer, with its settings."""
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (group,) = state["optimizer_states"][0]["param_groups"]
    moments = state["optimizer_states"][0]["state"][0]
    if option == "sgd":
        # momentum itself is cycled by the default one-cycle schedule (0.85..0.95), so not compared
        assert group["nesterov"] and group["momentum"] > 0 and set(moments) == {"momentum_buffer"}
    else:  # Adam and AdamW keep first and second moments
        assert {"exp_avg", "exp_avg_sq"} <= set(moments) and "nesterov" not in group


@pytest.mark.parametrize("option", ["default", "cpu", "ddp"])
def test_cpu_trainers_instantiate(option: str, tmp_path: Path) -> None:
    """The Trainer medclass builds on a CPU machine: DDP gets two processes and no SyncBatchNorm (torch refuses it
    on CPU), the others one CPU process; all in the precision `auto` picks for this CPU."""
    cfg = compose_train([f"trainer={option}", "trainer.accelerator=cpu"], tmp_path)
    trainer = build_trainer(cfg, logger=False)
    assert isinstance(trainer.accelerator, CPUAccelerator) and trainer.precision == auto_precision("cpu")[0]
    if option == "ddp":
        assert isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 2
        assert cfg.trainer.sync_batchnorm and trainer.strategy._layer_sync is None  # no SyncBatchNorm conversion
    else:
        assert not isinstance(trainer.strategy, DDPStrategy) and trainer.num_devices == 1


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


def logged_learning_rates(tmp_path: Path, root: Path, overrides: list[str]) -> list[float]:
    """Three short epochs through runner.train; the learning rate the LR monitor logged at each epoch start."""
    figures = ["~callbacks.sample_grid", "~callbacks.confusion_matrix", "~callbacks.worst_mistakes"]  # seconds each
    cfg = compose_train([*overrides, f"data.root={root}", *FAST, "trainer.max_epochs=3", "logger=csv",
                         "callbacks.lr_monitor.logging_interval=epoch", *figures, "test=false",
                         "trainer.limit_val_batches=1"], tmp_path / "run")
    metrics = train(cfg)
    assert metrics["run"]["steps"] == 6  # 64 training images, batches of 32, three epochs
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as f:
        return [float(r["lr-Adam"]) for r in csv.DictReader(f) if r.get("lr-Adam")]


def onecycle_at(steps: list[int], total: int, lr: float) -> list[float]:
    """torch's OneCycleLR alone, with conf/scheduler/onecycle.yaml's numbers and `total` steps."""
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=total, pct_start=0.15, div_factor=10,
                                                final_div_factor=100)
    seen = []
    for _ in range(total):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return [seen[s] for s in steps]


LR = 2e-3  # conf/optimizer/adam.yaml
SCHEDULES = {
    "none": ([], [LR, LR, LR]),
    # T_max = trainer.max_epochs = 3, eta_min = 1e-6
    "cosine": ([], [1e-6 + (LR - 1e-6) * (1 + math.cos(math.pi * e / 3)) / 2 for e in range(3)]),
    "multistep": (["scheduler.scheduler.milestones=[1,2]"], [LR, LR * 0.1, LR * 0.01]),
    # stepped per batch over all 6 steps: the epoch starts are steps 0, 2 and 4
    "onecycle": ([], onecycle_at([0, 2, 4], total=6, lr=LR)),
}


@pytest.mark.parametrize("option", list(SCHEDULES))
def test_scheduler_option_sets_the_learning_rate_that_ran(option: str, tmp_path: Path, blood_root: Path) -> None:
    extra, expected = SCHEDULES[option]
    lrs = logged_learning_rates(tmp_path, blood_root, [f"scheduler={option}", *extra])
    assert lrs == pytest.approx(expected, rel=1e-6, abs=1e-12)


def first_train_images(cfg_overrides: list[str], tmp_path: Path, n: int = 8) -> tuple[object, list[bool]]:
    """The data module train.py builds; for the first n training images, whether the training pipeline's
    tensor differs from the plain (evaluation) one of the same image."""
    cfg = compose_train(cfg_overrides, tmp_path)
    dm = instantiate(cfg.data)
    dm.setup()
    differs = [not torch.equal(dm.datasets["train"][i][0], dm.datasets["train_eval"][i][0]) for i in range(n)]
    return dm, differs


def test_augment_option_changes_the_training_images(tmp_path: Path, blood_root: Path) -> None:
    """augment=none trains on the evaluation tensors; default augments almost every image; strong widens the
    affine ranges that ran."""
    _, differs = first_train_images(["augment=none", f"data.root={blood_root}"], tmp_path)
    assert not any(differs)
    default, differs = first_train_images(["augment=default", f"data.root={blood_root}"], tmp_path)
    assert sum(differs) >= 6  # p_affine 0.8 plus flips (BloodMNIST is flip-invariant)
    strong, differs = first_train_images(["augment=strong", f"data.root={blood_root}"], tmp_path)
    assert all(differs)  # p_affine 1.0
    affine = {name: next(t for t in dm.datasets["train"].transform.transforms if isinstance(t, A.Affine))
              for name, dm in (("default", default), ("strong", strong))}
    assert affine["default"].rotate == (-15.0, 15.0) and affine["strong"].rotate == (-30.0, 30.0)
    assert affine["default"].p == 0.8 and affine["strong"].p == 1.0
