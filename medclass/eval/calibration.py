"""How far a confidence can be trusted: expected calibration error and temperature scaling.

Temperature scaling (Guo et al., 2017) divides the logits by one scalar fitted on validation, which
changes confidences but never the predicted class. Probabilities are turned back into logits
(log-probabilities for softmax, log-odds for sigmoid), so it also works on test-time-averaged output.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from medclass.module.task_kinds import probabilities

EPS = 1e-7
T_RANGE = (0.05, 20.0)


def ece(probs: np.ndarray, labels: np.ndarray, task: str, n_bins: int = 15) -> float:
    """Top-label ECE (L1, equal-width bins); multi-label: over every (image, label) pair."""
    from torchmetrics.functional.classification import binary_calibration_error, multiclass_calibration_error

    p, y = torch.as_tensor(probs, dtype=torch.float64), torch.as_tensor(labels)
    if task == "multi-label":
        return float(binary_calibration_error(p.flatten(), y.reshape(p.shape).flatten().long(), n_bins=n_bins))
    return float(multiclass_calibration_error(p, y.reshape(-1).long(), num_classes=p.shape[1], n_bins=n_bins))


def reliability_bins(probs: np.ndarray, labels: np.ndarray, task: str, n_bins: int = 15) -> dict[str, list[float]]:
    """Per confidence bin: mean confidence, accuracy and count (the reliability diagram's bars)."""
    if task == "multi-label":
        conf, correct = probs.ravel(), labels.reshape(probs.shape).ravel().astype(float)  # P(label) vs label present
    else:
        conf, correct = probs.max(1), (probs.argmax(1) == labels.reshape(-1)).astype(float)
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, n_bins - 1)
    out: dict[str, list[float]] = {"edges": edges.tolist(), "confidence": [], "accuracy": [], "count": []}
    for b in range(n_bins):
        mask = which == b
        out["count"].append(int(mask.sum()))
        out["confidence"].append(float(conf[mask].mean()) if mask.any() else float("nan"))
        out["accuracy"].append(float(correct[mask].mean()) if mask.any() else float("nan"))
    return out


def to_logits(probs: np.ndarray, task: str) -> torch.Tensor:
    p = torch.as_tensor(probs, dtype=torch.float64).clamp(EPS, 1 - EPS)
    return torch.logit(p) if task == "multi-label" else p.log()


def fit_temperature(probs: np.ndarray, labels: np.ndarray, task: str) -> float:
    """The temperature minimizing validation negative log-likelihood (LBFGS over log T)."""
    logits = to_logits(probs, task)
    y = torch.as_tensor(labels)
    if task == "multi-label":
        y, loss_fn = y.reshape(logits.shape).double(), torch.nn.functional.binary_cross_entropy_with_logits
    else:
        y, loss_fn = y.reshape(-1).long(), torch.nn.functional.cross_entropy
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = loss_fn(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    # with no validation mistakes the likelihood keeps rising as T -> 0: keep T in a sane range
    return float(log_t.detach().exp().clamp(*T_RANGE))


def apply_temperature(probs: np.ndarray, task: str, temperature: float) -> np.ndarray:
    return probabilities(to_logits(probs, task) / temperature, task).numpy()


def calibration_summary(probs: np.ndarray, labels: np.ndarray, task: str, n_bins: int,
                        temperature: float | None = None) -> dict[str, Any]:
    summary: dict[str, Any] = {"ece": ece(probs, labels, task, n_bins), "bins": n_bins}
    if temperature is not None:
        summary.update(temperature=temperature,
                       ece_after_temperature=ece(apply_temperature(probs, task, temperature), labels, task, n_bins))
    return summary
