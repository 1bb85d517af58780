"""Losses for imbalanced and multi-label data: class weights, label smoothing, focal loss.

`class_weights=balanced` is sklearn's definition, n_samples / (n_classes * n_c), for single-label
tasks, and BCE's `pos_weight` = negatives / positives per label for multi-label ones. Focal loss is
torchvision's `sigmoid_focal_loss` for multi-label tasks and its softmax counterpart here for the
others: (1 - p_t)^gamma down-weights the examples the network already gets right.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from medclass.utils.errors import MedclassError

LOSSES = ("ce", "focal")


def class_weights(spec: str | Sequence[float] | None, counts: Sequence[int], n_train: int,
                  multi_label: bool) -> torch.Tensor | None:
    """Per-class weights (single-label) or per-label `pos_weight` (multi-label) from `module.class_weights`."""
    if spec is None:
        return None
    if isinstance(spec, str):
        if spec != "balanced":
            raise MedclassError(f"module.class_weights={spec!r}: use balanced, null or a list of numbers")
        if not counts or min(counts) <= 0:
            raise MedclassError(f"module.class_weights=balanced needs every class in the training split; counts "
                                f"{list(counts)}")
        counts_t = torch.tensor(counts, dtype=torch.float32)
        if multi_label:
            return (n_train - counts_t).clamp(min=0) / counts_t
        return n_train / (len(counts) * counts_t)
    weights = torch.tensor([float(w) for w in spec], dtype=torch.float32)
    if len(weights) != len(counts) or (weights <= 0).any():
        raise MedclassError(f"module.class_weights={list(spec)} needs {len(counts)} positive numbers, one per class")
    return weights


class SmoothedBCEWithLogits(nn.BCEWithLogitsLoss):
    """BCE-with-logits whose 0/1 targets are pulled toward 0.5 by `smoothing` (y(1-s) + s/2), the
    per-label counterpart of cross-entropy's label smoothing; `pos_weight` weighs positives per label."""

    def __init__(self, smoothing: float = 0.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__(pos_weight=pos_weight)
        self.smoothing = smoothing

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return super().forward(logits, target.float() * (1 - self.smoothing) + self.smoothing / 2)


class SoftmaxFocalLoss(nn.Module):
    """-(1 - p_t)^gamma · log p_t, mean over the batch; `weight` scales each class as in cross-entropy."""

    def __init__(self, gamma: float = 2.0, weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("weight", weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        log_p = F.log_softmax(logits.float(), dim=-1).gather(1, target.long()[:, None])[:, 0]
        loss = -((1 - log_p.exp()) ** self.gamma) * log_p
        if self.weight is not None:
            loss = loss * self.weight[target.long()]
        return loss.mean()


class SigmoidFocalLoss(nn.Module):
    """torchvision's `sigmoid_focal_loss` (alpha off: class balance is `class_weights`' job), mean over all."""

    def __init__(self, gamma: float = 2.0, pos_weight: torch.Tensor | None = None) -> None:
        super().__init__()
        self.gamma = gamma
        self.register_buffer("pos_weight", pos_weight)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.float()
        from torchvision.ops import sigmoid_focal_loss  # torchvision loads only where a focal loss trains

        loss = sigmoid_focal_loss(logits.float(), target, alpha=-1, gamma=self.gamma, reduction="none")
        if self.pos_weight is not None:
            loss = loss * torch.where(target > 0, self.pos_weight, torch.ones_like(self.pos_weight))
        return loss.mean()


def make_loss(task: str, label_smoothing: float = 0.0, loss: str = "ce", weight: torch.Tensor | None = None,
              focal_gamma: float = 2.0) -> nn.Module:
    """The training loss for a task; `weight` is per class (single-label) or `pos_weight` (multi-label)."""
    if not 0.0 <= label_smoothing < 1.0:
        raise MedclassError(f"module.label_smoothing={label_smoothing} must be in [0, 1)")
    if loss not in LOSSES:
        raise MedclassError(f"module.loss={loss!r}: choose one of {LOSSES}")
    multi_label = task == "multi-label"
    if loss == "focal":
        if label_smoothing:
            raise MedclassError("module.loss=focal does not take module.label_smoothing; set it to 0")
        return SigmoidFocalLoss(focal_gamma, weight) if multi_label else SoftmaxFocalLoss(focal_gamma, weight)
    if multi_label:
        return SmoothedBCEWithLogits(label_smoothing, pos_weight=weight)
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=label_smoothing)
