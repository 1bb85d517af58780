"""Loss, probabilities and metrics by MedMNIST task type.

Binary sets use two logits with softmax cross-entropy, as MedMNIST's own baselines do: one code
path for every single-label task, and the positive-class probability is simply column 1.
Multi-label sets use one logit per label with BCE-with-logits. Ordinal sets train as multi-class.
The losses themselves live in `medclass.module.losses`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from medclass.utils.errors import MedclassError

if TYPE_CHECKING:
    from torchmetrics import MetricCollection

TASKS = ("multi-class", "binary-class", "multi-label", "ordinal-regression")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise MedclassError(f"unknown task {task!r}; choose one of {TASKS}")
    return task


def probabilities(logits: torch.Tensor, task: str) -> torch.Tensor:
    return torch.sigmoid(logits) if task == "multi-label" else torch.softmax(logits, dim=-1)


def make_metrics(task: str, num_classes: int, with_auc: bool = True) -> MetricCollection:
    """ACC as MedMNIST defines it (argmax; mean per-label accuracy at 0.5 for multi-label), macro AUC and F1,
    and for single-label tasks balanced accuracy (validation and test). torchmetrics is imported here, by
    training and eval only: reading a model file's task and scoring images do not need it."""
    from torchmetrics import MetricCollection
    from torchmetrics.classification import (
        MulticlassAccuracy,
        MulticlassAUROC,
        MulticlassF1Score,
        MultilabelAccuracy,
        MultilabelAUROC,
        MultilabelF1Score,
    )

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
        if with_auc:  # validation and test
            metrics["auc"] = MulticlassAUROC(num_classes=num_classes, average="macro")
            # the mean of per-class recalls: what accuracy hides on imbalanced sets; a valid checkpoint monitor
            metrics["balanced_acc"] = MulticlassAccuracy(num_classes=num_classes, average="macro")
    return MetricCollection(metrics)
