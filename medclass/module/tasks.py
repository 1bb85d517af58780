"""Loss, probabilities and metrics by MedMNIST task type.

Binary sets use two logits with softmax cross-entropy, as MedMNIST's own baselines do: one code
path for every single-label task, and the positive-class probability is simply column 1.
Multi-label sets use one logit per label with BCE-with-logits. Ordinal sets train as multi-class.
"""

from __future__ import annotations

import torch
from torch import nn
from torchmetrics import MetricCollection
from torchmetrics.classification import (
    MulticlassAccuracy,
    MulticlassAUROC,
    MulticlassF1Score,
    MultilabelAccuracy,
    MultilabelAUROC,
    MultilabelF1Score,
)

from medclass.errors import MedclassError

TASKS = ("multi-class", "binary-class", "multi-label", "ordinal-regression")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise MedclassError(f"unknown task {task!r}; choose one of {TASKS}")
    return task


class SmoothedBCEWithLogits(nn.BCEWithLogitsLoss):
    """BCE-with-logits whose 0/1 targets are pulled toward 0.5 by `smoothing` (y(1-s) + s/2), the
    per-label counterpart of cross-entropy's label smoothing."""

    def __init__(self, smoothing: float = 0.0) -> None:
        super().__init__()
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target.float() * (1 - self.smoothing) + self.smoothing / 2)


def make_loss(task: str, label_smoothing: float = 0.0) -> nn.Module:
    if not 0.0 <= label_smoothing < 1.0:
        raise MedclassError(f"module.label_smoothing={label_smoothing} must be in [0, 1)")
    if check_task(task) == "multi-label":
        return SmoothedBCEWithLogits(label_smoothing)
    return nn.CrossEntropyLoss(label_smoothing=label_smoothing)


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, dim=-1)


def make_metrics(task: str, num_classes: int, with_auc: bool = True) -> MetricCollection:
    """ACC as MedMNIST defines it (argmax; mean per-label accuracy at 0.5 for multi-label), macro AUC and F1."""
    if check_task(task) == "multi-label":
        metrics = {
            "acc": MultilabelAccuracy(num_labels=num_classes, average="macro"),
            "f1": MultilabelF1Score(num_labels=num_classes, average="macro"),
        }
        if with_auc:
            metrics["auc"] = MultilabelAUROC(num_labels=num_classes, average="macro")
    else:
        metrics = {
            "acc": MulticlassAccuracy(num_classes=num_classes, average="micro"),
            "f1": MulticlassF1Score(num_classes=num_classes, average="macro"),
        }
        if with_auc:
            metrics["auc"] = MulticlassAUROC(num_classes=num_classes, average="macro")
    return MetricCollection(metrics)
