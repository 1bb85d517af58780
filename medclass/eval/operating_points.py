"""Operating points of a binary classifier: the threshold one would deploy, and what it does.

Thresholds are chosen on validation (Youden's J, and the highest threshold that reaches a target
sensitivity) and then applied unchanged to the split being scored, so the scored split's
sensitivity, specificity, PPV and NPV are honest estimates, not fitted ones. The positive class is
the second class (column 1), as in MedMNIST's binary sets.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.metrics import roc_curve


def confusion_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, int]:
    """TP, FP, FN, TN when `score >= threshold` is called positive."""
    called, positive = scores >= threshold, positive.astype(bool)
    return {"tp": int((called & positive).sum()), "fp": int((called & ~positive).sum()),
            "fn": int((~called & positive).sum()), "tn": int((~called & ~positive).sum())}


def _ratio(a: int, b: int) -> float | None:
    return a / b if b else None


def rates(counts: dict[str, int]) -> dict[str, float | None]:
    """Sensitivity (recall, TPR), specificity (TNR), PPV (precision) and NPV from a confusion table."""
    tp, fp, fn, tn = counts["tp"], counts["fp"], counts["fn"], counts["tn"]
    return {"sensitivity": _ratio(tp, tp + fn), "specificity": _ratio(tn, tn + fp),
            "ppv": _ratio(tp, tp + fp), "npv": _ratio(tn, tn + fn)}


def youden_threshold(scores: np.ndarray, positive: np.ndarray) -> float:
    """The threshold maximizing sensitivity + specificity - 1 (Youden's J) on these scores."""
    fpr, tpr, thresholds = roc_curve(positive, scores)
    best = int(np.argmax(tpr - fpr))
    return float(min(thresholds[best], 1.0))  # sklearn's first threshold is +inf: never called positive


def sensitivity_threshold(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """The highest threshold whose sensitivity on these scores reaches `target` (most specific such one);
    every threshold is kept, since the first to reach the target may sit inside a run of positives."""
    fpr, tpr, thresholds = roc_curve(positive, scores, drop_intermediate=False)
    reaching = np.flatnonzero(tpr >= target)
    return float(min(thresholds[reaching[0]], 1.0))


def operating_points(probs: np.ndarray, labels: np.ndarray, val: tuple[np.ndarray, np.ndarray] | None,
                     target_sensitivity: float = 0.95) -> dict[str, Any]:
    """Each threshold (0.5; Youden's J and the target sensitivity, both chosen on `val`) applied to the scored
    split: the threshold, where it was chosen, the confusion table and the four rates."""
    scores, positive = probs[:, 1], labels.reshape(-1) == 1
    chosen: dict[str, tuple[float, str]] = {"default_0.5": (0.5, "fixed")}
    if val is not None:
        val_scores, val_positive = val[0][:, 1], val[1].reshape(-1) == 1
        if 0 < val_positive.sum() < len(val_positive):
            chosen["youden"] = (youden_threshold(val_scores, val_positive), "val")
            chosen[f"sensitivity_{target_sensitivity:g}"] = (
                sensitivity_threshold(val_scores, val_positive, target_sensitivity), "val")
    points = {}
    for name, (threshold, source) in chosen.items():
        counts = confusion_at(scores, positive, threshold)
        points[name] = {"threshold": threshold, "chosen_on": source, **counts, **rates(counts)}
    return points
