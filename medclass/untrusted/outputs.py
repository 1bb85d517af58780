"""A model's outputs checked to be probabilities before anything is written from them: a stranger's ONNX graph
can return anything, and weights that overflow give NaN, either of which would otherwise become a confident
prediction with exit code 0. One rule for both model kinds (`module.scoring`, `untrusted.onnx_model`)."""

from __future__ import annotations

from typing import Any

import numpy as np


def probability_problem(out: Any, batch: int, classes: int, task: str, float32_only: bool = False) -> str:
    """What keeps `out` from being probabilities of shape (batch, classes), or "" when nothing does: a float
    array (float32 exactly with `float32_only`), finite, in [0, 1], rows summing to 1 unless the task is
    multi-label. The text never quotes the values beyond their range."""
    expected = (batch, classes)
    if (not isinstance(out, np.ndarray) or out.shape != expected
            or (out.dtype != np.float32 if float32_only else out.dtype.kind != "f")):
        shown = f"{out.dtype} of shape {out.shape}" if isinstance(out, np.ndarray) else "not an array"
        return f"{shown} where {'float32 ' if float32_only else ''}probabilities of shape {expected} belong"
    if not np.isfinite(out).all():
        return "values that are not finite (NaN or infinity)"
    if out.size and (out.min() < -1e-6 or out.max() > 1 + 1e-6):
        return f"values outside [0, 1] (from {out.min():.3g} to {out.max():.3g})"
    if task != "multi-label" and out.size and np.abs(out.sum(axis=1, dtype=np.float64) - 1).max() > 1e-3:
        return f"rows that do not sum to 1 ({task}: one probability per class)"
    return ""
