"""Selective prediction: answer only above a confidence chosen on validation, and refer the rest to a human.

A clinical reader asks when the model should not answer. The answer here has two parts:

- the risk-coverage curve of the scored split: images sorted by the model's confidence in its own answer,
  and for each share of images answered (coverage) the error rate among them (selective risk), with its
  area (AURC) as one number to compare models by;
- one abstention threshold, chosen on validation for a target accuracy or a target coverage and then
  applied unchanged to the scored split, as `operating_points` does for binary thresholds. So the
  coverage and accuracy reported for test are estimates, not fitted values.

Images whose confidence is at least the threshold are answered; the others are referred. Images of equal
confidence cannot be told apart by a threshold, so they are always answered or referred together: the
curve steps only at distinct confidence values. Multi-label tasks have one answer per label, not per
image, so abstention covers binary, multi-class and ordinal tasks only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global figure registry, no display backend

from medclass.eval.metrics import predictions
from medclass.utils.errors import MedclassError

TABLE_COVERAGES = (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)
SINGLE_ANSWER_TASKS = ("binary-class", "multi-class", "ordinal-regression")


def confidence(probs: np.ndarray, task: str) -> np.ndarray:
    """The probability of the class the model answers (`metrics.predictions` takes the argmax).

    Binary sets have two softmax columns like every other single-label set (see `medclass.module.task_kinds`),
    so the largest column is the predicted class's probability for binary and multi-class alike.
    """
    if task == "multi-label":
        raise MedclassError("abstention (abstain.accuracy / abstain.coverage) needs one answer per image, and a "
                            "multi-label task gives one per label: leave abstain unset for this checkpoint")
    if task not in SINGLE_ANSWER_TASKS:
        raise ValueError(f"unknown task {task!r}: expected one of {', '.join(SINGLE_ANSWER_TASKS)}")
    probs = np.asarray(probs)
    if probs.ndim != 2 or probs.shape[1] < 2:
        raise ValueError(f"probabilities of shape (images, classes >= 2) expected, not {probs.shape}")
    return probs.max(1)


def is_correct(probs: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Whether each image's answer is its label: what the curve and the threshold count."""
    confidence(probs, task)  # the same task and shape checks
    return predictions(probs, task) == np.asarray(labels).reshape(-1)


def _arrays(conf: np.ndarray, correct: np.ndarray, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Flat float confidences and boolean correctness of equal, non-zero length, all finite."""
    conf, correct = np.asarray(conf, dtype=np.float64).reshape(-1), np.asarray(correct).reshape(-1).astype(bool)
    if len(conf) != len(correct):
        raise ValueError(f"{what}: {len(conf)} confidences but {len(correct)} correctness values")
    if not len(conf):
        raise MedclassError(f"{what}: no images to score selective prediction on; check the split is not empty")
    if not np.isfinite(conf).all():
        raise MedclassError(f"{what}: {int((~np.isfinite(conf)).sum())} confidences are NaN or infinite; the "
                            "model's output is broken, so check the checkpoint before choosing a threshold")
    return conf, correct


def _steps(conf: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    """One step per distinct confidence, highest first: the threshold (that confidence), the images kept
    (all with confidence >= it, so a run of ties enters at once) and the errors among them."""
    order = np.argsort(-conf, kind="stable")
    ranked, wrong = conf[order], ~correct[order]
    last_of_tie = np.flatnonzero(np.r_[ranked[1:] != ranked[:-1], True])
    return {"threshold": ranked[last_of_tie], "kept": last_of_tie + 1, "errors": np.cumsum(wrong)[last_of_tie]}


def _min_kept(coverage: float, n: int) -> int:
    """The fewest of n images that make at least this share; the epsilon keeps 0.7 * 10 from becoming 8."""
    return max(math.ceil(coverage * n - 1e-9), 1)


def optimal_aurc(n: int, errors: int) -> float:
    """AURC of a perfect ranking with the same errors: every correct image first, so for k > n - errors
    the first k images hold k - (n - errors) errors. Exact sum, not the continuous approximation
    err + (1 - err) ln(1 - err) of Geifman et al."""
    k = np.arange(n - errors + 1, n + 1)
    return float(np.sum((k - (n - errors)) / k) / n)


def risk_coverage(conf: np.ndarray, correct: np.ndarray) -> dict[str, Any]:
    """The risk-coverage curve, its area and a coarse table, as JSON-ready lists.

    AURC is the mean selective risk over all coverages k/n, k = 1..n (the definition of Geifman,
    Uziel and El-Yaniv, 2019, "Bias-reduced uncertainty estimation for deep neural classifiers"): the
    area under the step curve whose risk at coverage in ((k-1)/n, k/n] is the error rate of the k most
    confident images. A run of tied confidences enters as one step, and each of its coverages takes the
    risk at the end of the run, since no threshold answers part of it. Without ties this is exactly
    (1/n) sum_k risk(k). e-AURC subtracts the AURC of a perfect ranking with the same errors
    (`optimal_aurc`), leaving what the ranking of confidence costs beyond the model's error rate.

    The table gives, for each coverage in TABLE_COVERAGES, the highest threshold that answers at least
    that share (the coverage it really answers, which ties may raise) and the accuracy on the answered.
    """
    conf, correct = _arrays(conf, correct, "risk-coverage")
    n, s = len(conf), _steps(conf, correct)
    risk = s["errors"] / s["kept"]
    aurc = float(np.sum(np.diff(s["kept"], prepend=0) * risk) / n)
    best = optimal_aurc(n, int((~correct).sum()))
    table = []
    for target in TABLE_COVERAGES:
        j = int(np.argmax(s["kept"] >= _min_kept(target, n)))  # first step (highest threshold) that keeps enough
        table.append({"target_coverage": target, "coverage": float(s["kept"][j] / n),
                      "threshold": float(s["threshold"][j]), "answered": int(s["kept"][j]),
                      "accuracy": float(1 - risk[j])})
    return {"n": n, "errors": int((~correct).sum()), "threshold": s["threshold"].tolist(),
            "kept": s["kept"].tolist(), "coverage": (s["kept"] / n).tolist(), "risk": risk.tolist(),
            "accuracy": (1 - risk).tolist(), "aurc": aurc, "aurc_optimal": best, "eaurc": aurc - best,
            "table": table}


def _target(accuracy: float | None, coverage: float | None) -> tuple[str, float]:
    """The one target the user set, checked: a share in (0, 1]."""
    if (accuracy is None) == (coverage is None):
        given = "both" if accuracy is not None else "neither"
        raise MedclassError(f"abstention needs exactly one target, {given} given: set abstain.accuracy=0.99 "
                            "or abstain.coverage=0.9, not both")
    kind, value = ("accuracy", accuracy) if accuracy is not None else ("coverage", coverage)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= 1:
        raise MedclassError(f"abstain.{kind}={value!r} is not a share of images: give a number in (0, 1], "
                            f"e.g. abstain.{kind}={0.99 if kind == 'accuracy' else 0.9}")
    return kind, float(value)


def choose_threshold(conf_val: np.ndarray, correct_val: np.ndarray, accuracy: float | None = None,
                     coverage: float | None = None) -> dict[str, Any]:
    """The abstention threshold, from validation only, for one target.

    Target accuracy: the lowest threshold whose answered validation images reach it, i.e. the largest
    coverage that does (accuracy need not fall steadily as coverage grows, so every step is checked).
    If no threshold reaches it, the result says `reached: False` and keeps the highest threshold,
    which refers all but the most confident images: the run should report the miss, not stop.
    Target coverage: the highest threshold that answers at least that share of validation images.
    """
    kind, value = _target(accuracy, coverage)
    conf, correct = _arrays(conf_val, correct_val, "abstention threshold on validation")
    n, s = len(conf), _steps(conf, correct)
    if kind == "coverage":
        j, reached = int(np.argmax(s["kept"] >= _min_kept(value, n))), True
    else:
        meets = np.flatnonzero((s["kept"] - s["errors"]) / s["kept"] >= value)
        reached = len(meets) > 0
        j = int(meets[-1]) if reached else 0
    return {"threshold": float(s["threshold"][j]), "target": {kind: value}, "chosen_on": "val", "val_n": n,
            "val_coverage": float(s["kept"][j] / n), "val_accuracy": float(1 - s["errors"][j] / s["kept"][j]),
            "reached": reached}


def answered(conf: np.ndarray, threshold: float) -> np.ndarray:
    """Which images get an answer (confidence >= threshold); `medclass-predict` refers the others."""
    return np.asarray(conf, dtype=np.float64).reshape(-1) >= threshold


def apply_threshold(conf: np.ndarray, correct: np.ndarray, threshold: float) -> dict[str, Any]:
    """What a fixed threshold does to a split: the share answered, their accuracy, and the referred images
    with theirs (a good ranking refers the images the model gets wrong). Accuracies of an empty group: None."""
    conf, correct = _arrays(conf, correct, "abstention threshold")
    keep = answered(conf, threshold)
    kept, referred = int(keep.sum()), int((~keep).sum())
    return {"threshold": float(threshold), "n": len(conf), "answered": kept, "referred": referred,
            "coverage": kept / len(conf), "accuracy": float(correct[keep].mean()) if kept else None,
            "referred_accuracy": float(correct[~keep].mean()) if referred else None}


def risk_coverage_figure(curve: Mapping[str, Any], threshold_point: Mapping[str, Any] | None = None) -> Figure:
    """Selective risk against coverage as the step curve AURC integrates (shaded), the perfect ranking's
    curve for reference, and the operating point (`apply_threshold`'s result: coverage, accuracy)."""
    coverage, risk = np.r_[0.0, curve["coverage"]], np.r_[curve["risk"][0], curve["risk"]]
    n, errors = curve["n"], curve["errors"]
    k = np.arange(1, n + 1)
    fig = Figure(figsize=(5.5, 4.5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.fill_between(coverage, risk, step="pre", alpha=0.2)
    ax.step(coverage, risk, where="pre", lw=1.4, label=f"model (AURC {curve['aurc']:.4f})")
    ax.step(np.r_[0, k / n], np.r_[0, np.maximum(k - (n - errors), 0) / k], "k--", where="pre", lw=0.8,
            label=f"perfect ranking (AURC {curve['aurc_optimal']:.4f})")
    if threshold_point is not None:
        point_risk = 1 - threshold_point["accuracy"] if threshold_point.get("accuracy") is not None else 0.0
        label = f"threshold {threshold_point['threshold']:.4f}" if "threshold" in threshold_point else "operating point"
        ax.plot(threshold_point["coverage"], point_risk, "o", color="C3", ms=7,
                label=f"{label}: coverage {threshold_point['coverage']:.3f}, risk {point_risk:.4f}")
    ax.set(xlabel="coverage (share of images answered)", ylabel="selective risk (error rate of the answered)",
           xlim=(0, 1), ylim=(0, max(float(np.max(risk)) * 1.1, 0.01)))
    ax.legend(fontsize=7, loc="upper left")
    return fig


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _target_text(chosen: Mapping[str, Any]) -> str:
    kind, value = next(iter(chosen["target"].items()))
    return f"{kind} ≥ {value:g}"


def _chosen_line(chosen: Mapping[str, Any], applied: Mapping[str, Any], split: str) -> str:
    line = (f"Threshold {chosen['threshold']:.4f} chosen on validation for target {_target_text(chosen)} "
            f"(validation: coverage {chosen['val_coverage']:.4f}, accuracy {chosen['val_accuracy']:.4f}): "
            f"{split} coverage {applied['coverage']:.4f}, accuracy {_fmt(applied['accuracy'])}, "
            f"{applied['referred']} of {applied['n']} referred (accuracy on the referred "
            f"{_fmt(applied['referred_accuracy'])}).")
    if not chosen["reached"]:
        line = (f"The target {_target_text(chosen)} was not reached on validation at any threshold; the highest "
                "threshold is kept, which refers all but the most confident images. " + line)
    return line


def selective_markdown(curve: Mapping[str, Any], chosen: Mapping[str, Any] | None = None,
                       applied: Mapping[str, Any] | None = None, split: str = "test") -> str:
    """The report's section: AURC, the coverage table and, when a target was set, the threshold chosen on
    validation and what it does on the scored split."""
    lines = ["## Selective prediction", "",
             "Confidence is the probability of the predicted class; images below a threshold are referred. "
             "Risk is the error rate among the images answered.", "",
             f"AURC {curve['aurc']:.4f} (mean selective risk over coverages k/n; a perfect ranking with the same "
             f"{curve['errors']} errors in {curve['n']} images gives {curve['aurc_optimal']:.4f}, "
             f"e-AURC {curve['eaurc']:.4f}).", "",
             "| coverage | threshold | answered | accuracy of the answered |", "|---|---|---|---|"]
    lines += [f"| {r['coverage']:.4f} (≥ {r['target_coverage']:g}) | {r['threshold']:.4f} | {r['answered']} | "
              f"{r['accuracy']:.4f} |" for r in curve["table"]]
    if chosen is not None and applied is not None:
        lines += ["", _chosen_line(chosen, applied, split)]
    return "\n".join(lines) + "\n"


def selective_prediction(probs: np.ndarray, labels: np.ndarray, task: str,
                         val: tuple[np.ndarray, np.ndarray] | None = None, accuracy: float | None = None,
                         coverage: float | None = None) -> dict[str, Any]:
    """The curve of the scored split and, when a target is set, the threshold chosen on `val` (probabilities,
    labels) and applied unchanged to the scored split: {"curve", "chosen", "applied"} (the last two None
    without a target). A target without validation data is an error, as choosing on the scored split
    would flatter it."""
    conf, correct = confidence(probs, task), is_correct(probs, labels, task)
    out: dict[str, Any] = {"curve": risk_coverage(conf, correct), "chosen": None, "applied": None}
    if accuracy is None and coverage is None:
        return out
    _target(accuracy, coverage)
    if val is None:
        raise MedclassError("abstain.accuracy / abstain.coverage choose the threshold on validation, and there is "
                            "none here: score split=test with a validation split, or leave abstain unset")
    chosen = choose_threshold(confidence(val[0], task), is_correct(*val, task), accuracy, coverage)
    out |= {"chosen": chosen, "applied": apply_threshold(conf, correct, chosen["threshold"])}
    return out
