"""The report's numbers from probabilities and labels: scikit-learn's definitions, and MedMNIST's own.

Single-label tasks predict the argmax; multi-label tasks threshold each label at 0.5, as the
official MedMNIST Evaluator does. `official` calls that Evaluator's functions, so the ACC/AUC a
report quotes for a MedMNIST set are the paper's definitions, not a re-implementation.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from medmnist.evaluator import getACC, getAUC
from sklearn import metrics as skm

OFFICIAL_TASK = {"multi-label": "multi-label, binary-class", "binary-class": "binary-class",
                 "multi-class": "multi-class", "ordinal-regression": "ordinal-regression"}


def official(probs: np.ndarray, labels: np.ndarray, task: str) -> dict[str, float]:
    """ACC and AUC exactly as `medmnist.Evaluator` computes them on the same scores."""
    name = OFFICIAL_TASK[task]
    return {"acc": float(getACC(labels, probs, name)), "auc": float(getAUC(labels, probs, name))}


def predictions(probs: np.ndarray, task: str) -> np.ndarray:
    return (probs > 0.5).astype(int) if task == "multi-label" else probs.argmax(1)


def _auc(y: np.ndarray, score: np.ndarray) -> float | None:
    """One-vs-rest ROC AUC, or None where a class is absent (AUC is undefined, not 0.5)."""
    return float(skm.roc_auc_score(y, score)) if 0 < y.sum() < len(y) else None


def _macro(values: list[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return float(np.mean(defined)) if defined else None


def classification_metrics(probs: np.ndarray, labels: np.ndarray, class_names: list[str],
                           task: str) -> dict[str, Any]:
    """Accuracy, balanced accuracy, per-class P/R/F1/support/AUC, macro and weighted averages, confusion."""
    labels = labels.reshape(len(labels), -1) if task == "multi-label" else labels.reshape(-1)
    pred = predictions(probs, task)
    k = len(class_names)
    if task == "multi-label":
        onehot = labels
        accuracy = float((pred == labels).mean())  # mean per-label accuracy, MedMNIST's ACC
        balanced = float(np.mean([skm.balanced_accuracy_score(labels[:, i], pred[:, i]) for i in range(k)]))
        p, r, f, s = skm.precision_recall_fscore_support(labels, pred, zero_division=0)
        confusion = {"per_label": skm.multilabel_confusion_matrix(labels, pred).tolist()}
    else:
        onehot = np.eye(k, dtype=int)[labels]
        accuracy = float(skm.accuracy_score(labels, pred))
        balanced = float(skm.balanced_accuracy_score(labels, pred))
        p, r, f, s = skm.precision_recall_fscore_support(labels, pred, labels=range(k), zero_division=0)
        counts = skm.confusion_matrix(labels, pred, labels=range(k))
        rows = counts.sum(1, keepdims=True)
        normalized = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)
        confusion = {"counts": counts.tolist(), "normalized": normalized.round(4).tolist()}
    aucs = [_auc(onehot[:, i], probs[:, i]) for i in range(k)]
    per_class = [{"class": name, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]),
                  "support": int(s[i]), "auc": aucs[i]} for i, name in enumerate(class_names)]
    support = s / max(s.sum(), 1)
    average = {
        "macro": {"precision": float(p.mean()), "recall": float(r.mean()), "f1": float(f.mean())},
        "weighted": {"precision": float(p @ support), "recall": float(r @ support), "f1": float(f @ support)},
    }
    out = {"n": int(len(labels)), "accuracy": accuracy, "balanced_accuracy": balanced,
           "auc_macro_ovr": _macro(aucs), "average": average, "per_class": per_class, "confusion": confusion}
    if task == "ordinal-regression":  # grades: how far off, not only whether (RetinaMNIST)
        out["ordinal"] = {"quadratic_weighted_kappa": float(skm.cohen_kappa_score(labels, pred, weights="quadratic")),
                          "mae": float(np.abs(labels - pred).mean())}
    return out
