"""Class imbalance (issue 20): class weights, focal loss, a balanced sampler, balanced accuracy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score
from sklearn.utils.class_weight import compute_class_weight

from medclass.data import MedMNISTDataModule
from medclass.module.losses import class_weights, make_loss
from medclass.module.task_kinds import make_metrics
from medclass.tasks.train import train
from medclass.utils.errors import MedclassError

from .conftest import FAST, compose_train, write_npz

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 0.2], [-0.5, 1.5, 0.0], [0.0, 0.0, 3.0]])
TARGET = torch.tensor([0, 2, 1, 2])


def test_balanced_weights_are_sklearns_and_weigh_the_loss_as_by_hand() -> None:
    y = np.array([0] * 6 + [1] * 3 + [2] * 1)
    w = class_weights("balanced", np.bincount(y).tolist(), len(y), multi_label=False)
    assert np.allclose(w.numpy(), compute_class_weight("balanced", classes=np.arange(3), y=y))
    loss = make_loss("multi-class", weight=w)(LOGITS, TARGET)
    nll = -torch.log_softmax(LOGITS, -1)[torch.arange(4), TARGET]
    by_hand = (w[TARGET] * nll).sum() / w[TARGET].sum()  # cross-entropy's weighted mean
    assert loss.item() == pytest.approx(by_hand.item(), rel=1e-6)
    assert loss.item() != pytest.approx(nll.mean().item(), rel=1e-3)  # the weights changed it


def test_multi_label_pos_weight_is_negatives_over_positives() -> None:
    w = class_weights("balanced", [2, 8], 10, multi_label=True)
    assert w.tolist() == pytest.approx([4.0, 0.25])
    logits, target = torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, 0.0]])
    by_hand = -(4.0 * torch.log(torch.sigmoid(torch.tensor(1.0))) + torch.log(1 - torch.sigmoid(torch.tensor(-2.0))))
    assert make_loss("multi-label", weight=w)(logits, target).item() == pytest.approx(by_hand.item() / 2, rel=1e-6)


def test_focal_loss_by_hand_and_equal_to_cross_entropy_at_gamma_zero() -> None:
    p_t = torch.softmax(LOGITS, -1)[torch.arange(4), TARGET]
    by_hand = (-((1 - p_t) ** 2) * torch.log(p_t)).mean()
    assert make_loss("multi-class", loss="focal")(LOGITS, TARGET).item() == pytest.approx(by_hand.item(), rel=1e-6)
    ce = torch.nn.functional.cross_entropy(LOGITS, TARGET)
    assert make_loss("multi-class", loss="focal", focal_gamma=0.0)(LOGITS, TARGET).item() == pytest.approx(ce.item())
    logits, target = torch.tensor([[0.3, -1.0]]), torch.tensor([[1.0, 0.0]])
    p = torch.sigmoid(logits)
    bce = -(target * torch.log(p) + (1 - target) * torch.log(1 - p))
    p_t = p * target + (1 - p) * (1 - target)
    assert make_loss("multi-label", loss="focal")(logits, target).item() == pytest.approx(
        (bce * (1 - p_t) ** 2).mean().item(), rel=1e-5)


@pytest.mark.parametrize("spec", ["inverse", [1.0, 2.0]])
def test_bad_class_weights_name_the_value(spec: object) -> None:
    with pytest.raises(MedclassError, match="module.class_weights"):
        class_weights(spec, [5, 3, 2], 10, multi_label=False)


@pytest.mark.parametrize("augment", ["default", "batch"])
def test_balanced_sampler_draws_classes_about_equally(tmp_path: Path, augment: str) -> None:
    from hydra.utils import instantiate

    root = write_npz(tmp_path / "medmnist", "breastmnist", n=(400, 20, 20)).parent
    npz = dict(np.load(root / "breastmnist.npz"))
    npz["train_labels"] = (np.arange(400) % 10 == 0).astype(np.uint8)[:, None]  # 10 % class 1
    np.savez(root / "breastmnist.npz", **npz)
    cfg = compose_train([f"data.root={root}", "data.name=breastmnist", "data.sampler=balanced", f"augment={augment}",
                         "data.num_workers=0", "data.batch_size=50"], tmp_path)
    dm: MedMNISTDataModule = instantiate(cfg.data)
    torch.manual_seed(0)
    drawn = torch.cat([y for _, y in dm.train_dataloader()])
    assert len(drawn) == 400 and abs(drawn.float().mean().item() - 0.5) < 0.08  # about half class 1, not 10 %
    plain = compose_train([f"data.root={root}", "data.name=breastmnist", f"augment={augment}", "data.num_workers=0",
                           "data.batch_size=50"], tmp_path)
    assert torch.cat([y for _, y in instantiate(plain.data).train_dataloader()]).float().mean().item() < 0.11


def monitor_data(folder: Path) -> Path:
    """BreastMNIST-shaped data whose validation split rewards calling everything positive on accuracy but not on
    balanced accuracy: 36 positives (30 bright, 6 as dark as the negatives) and 4 dark negatives. A network that
    calls every image positive scores accuracy 0.9 and balanced accuracy 0.5; one that has learnt brightness
    scores 0.85 and 0.917. Train and test: dark negatives, bright positives."""
    rng = np.random.default_rng(0)

    def images(levels: np.ndarray) -> np.ndarray:
        return np.clip(levels[:, None, None] + rng.normal(0, 15, (len(levels), 28, 28)), 0, 255).astype(np.uint8)

    train_levels = np.r_[rng.uniform(40, 120, 48), rng.uniform(140, 220, 48)]
    train_labels = np.r_[np.zeros(48), np.ones(48)].astype(np.uint8)[:, None]
    val_levels = np.array([60.0] * 4 + [170.0] * 30 + [60.0] * 6)
    val_labels = np.r_[np.zeros(4), np.ones(36)].astype(np.uint8)[:, None]
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "breastmnist.npz", train_images=images(train_levels), train_labels=train_labels,
             val_images=images(val_levels), val_labels=val_labels, test_images=images(train_levels[::4]),
             test_labels=train_labels[::4])
    return folder


def test_balanced_accuracy_metric_is_sklearns_and_can_be_the_checkpoint_monitor(tmp_path: Path) -> None:
    """The metric is sklearn's balanced accuracy; as the checkpoint monitor it keeps the epoch with the highest
    logged val/balanced_acc (the first of equals), which here is not the epoch val/acc would keep."""
    import csv

    preds = torch.softmax(torch.randn(50, 3, generator=torch.Generator().manual_seed(0)), -1)
    target = torch.tensor([0] * 30 + [1] * 15 + [2] * 5)
    metrics = make_metrics("multi-class", 3)
    metrics.update(preds, target)
    expected = balanced_accuracy_score(target.numpy(), preds.argmax(1).numpy())
    assert metrics.compute()["balanced_acc"].item() == pytest.approx(expected, rel=1e-6)
    root = monitor_data(tmp_path / "medmnist")
    epochs = 3
    result = train(compose_train([f"data.root={root}", "data.name=breastmnist", "module.class_weights=balanced",
                                  "callbacks.model_checkpoint.monitor=val/balanced_acc", *FAST, "logger=csv",
                                  "model.widths=[8,16]", "model.hidden=16", "optimizer.lr=0.01", "scheduler=none",
                                  f"trainer.max_epochs={epochs}"], tmp_path / "run"))
    with (tmp_path / "run" / "csv" / "metrics.csv").open() as f:
        rows = [r for r in csv.DictReader(f) if r.get("val/balanced_acc") and int(r["epoch"]) < epochs]
    assert [int(r["epoch"]) for r in rows] == list(range(epochs))  # one validation per epoch of the fit
    balanced = [float(r["val/balanced_acc"]) for r in rows]
    accuracy = [float(r["val/acc"]) for r in rows]
    by_balanced, by_accuracy = int(np.argmax(balanced)), int(np.argmax(accuracy))
    assert by_balanced != by_accuracy, (balanced, accuracy)  # the data make the two monitors disagree
    assert Path(result["run"]["best_checkpoint"]).name == f"best-epoch{by_balanced:03d}.ckpt", (balanced, accuracy)
    assert result["best_val"]["val/balanced_acc"] == pytest.approx(balanced[by_balanced], abs=1e-6)
    assert "test/balanced_acc" in result["test"]
