"""Reports a reviewer accepts (issue 20): bootstrap intervals, operating points, ordinal metrics."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from sklearn import metrics as skm

from medclass.eval.bootstrap import bootstrap_ci, metric_values
from medclass.eval.metrics import classification_metrics
from medclass.eval.operating_points import confusion_at, operating_points, rates, sensitivity_threshold
from medclass.eval.report import write_report


def scores(n: int, k: int = 3, seed: int = 0, signal: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities that are informative but imperfect, with ties (rounded) as a saturated net gives."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + signal * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return np.round(probs, 2), labels


def test_weighted_metrics_equal_sklearn_on_the_resampled_arrays() -> None:
    probs, labels = scores(300)
    full = classification_metrics(probs, labels, ["a", "b", "c"], "multi-class")
    ones = metric_values(probs, labels, "multi-class", np.ones(len(labels)))
    assert ones["accuracy"] == pytest.approx(full["accuracy"]) and ones["f1_macro"] == pytest.approx(
        full["average"]["macro"]["f1"])
    assert ones["auc_macro_ovr"] == pytest.approx(full["auc_macro_ovr"])
    index = np.random.default_rng(1).integers(0, 300, 300)
    weights = np.bincount(index, minlength=300).astype(float)
    resampled = classification_metrics(probs[index], labels[index], ["a", "b", "c"], "multi-class")
    got = metric_values(probs, labels, "multi-class", weights)
    assert got["accuracy"] == pytest.approx(resampled["accuracy"])
    assert got["balanced_accuracy"] == pytest.approx(resampled["balanced_accuracy"])
    assert got["f1_macro"] == pytest.approx(resampled["average"]["macro"]["f1"])
    assert got["auc_macro_ovr"] == pytest.approx(resampled["auc_macro_ovr"])  # ties count half, as sklearn's


def test_intervals_contain_the_estimate_and_narrow_with_more_data() -> None:
    small = bootstrap_ci(*scores(100), "multi-class", n_resamples=300, seed=0)
    large = bootstrap_ci(*scores(2000), "multi-class", n_resamples=300, seed=0)
    for m in ("accuracy", "balanced_accuracy", "auc_macro_ovr", "f1_macro"):
        for ci in (small, large):
            assert ci[m]["low"] <= ci[m]["estimate"] <= ci[m]["high"], (m, ci[m])
        assert large[m]["high"] - large[m]["low"] < 0.5 * (small[m]["high"] - small[m]["low"]), m
    assert bootstrap_ci(*scores(100), "multi-class", n_resamples=50, seed=3) == bootstrap_ci(
        *scores(100), "multi-class", n_resamples=50, seed=3)  # seeded


def test_operating_point_arithmetic_on_a_hand_made_table() -> None:
    s = np.array([0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1])
    y = np.array([1, 1, 0, 1, 0, 1, 0, 0])
    counts = confusion_at(s, y, 0.5)
    assert counts == {"tp": 3, "fp": 1, "fn": 1, "tn": 3}
    assert rates(counts) == {"sensitivity": 0.75, "specificity": 0.75, "ppv": 0.75, "npv": 0.75}
    probs = np.stack([1 - s, s], 1)
    points = operating_points(probs, y, val=(probs, y), target_sensitivity=1.0)
    assert points["default_0.5"]["chosen_on"] == "fixed" and points["youden"]["chosen_on"] == "val"
    assert points["sensitivity_1"]["threshold"] == 0.3 and points["sensitivity_1"]["sensitivity"] == 1.0
    assert points["sensitivity_1"]["specificity"] == 0.5  # 0.3 calls 0.7 and 0.4 positive as well
    j = {t: rates(confusion_at(s, y, t)) for t in s}
    best = max(j, key=lambda t: j[t]["sensitivity"] + j[t]["specificity"])
    assert points["youden"]["threshold"] == best


def test_ordinal_metrics_are_the_quadratic_weighted_kappa_and_mae() -> None:
    probs, labels = scores(200, k=5, signal=1.0)
    pred = probs.argmax(1)
    m = classification_metrics(probs, labels, list("abcde"), "ordinal-regression")["ordinal"]
    observed = skm.confusion_matrix(labels, pred, labels=range(5)).astype(float)
    expected = np.outer(observed.sum(1), observed.sum(0)) / observed.sum()
    w = (np.subtract.outer(np.arange(5), np.arange(5)) ** 2) / 16
    assert m["quadratic_weighted_kappa"] == pytest.approx(1 - (w * observed).sum() / (w * expected).sum())
    assert m["quadratic_weighted_kappa"] == pytest.approx(skm.cohen_kappa_score(labels, pred, weights="quadratic"))
    assert m["mae"] == pytest.approx(np.abs(labels - pred).mean())


def test_binary_report_has_intervals_and_operating_points(tmp_path: Path) -> None:
    probs, labels = scores(200, k=2)
    val = scores(100, k=2, seed=5)
    info = {"task": "binary-class", "class_names": ["normal", "pneumonia"]}
    report = write_report(tmp_path, split="test", probs=probs, labels=labels, data_info=info, checkpoint="x.ckpt",
                          medmnist=False, val=val, bootstrap=200, target_sensitivity=0.9)
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["ci"]["resamples"] == 200 and saved["ci"]["accuracy"] == report["ci"]["accuracy"]
    assert saved["operating_points"]["sensitivity_0.9"]["chosen_on"] == "val"
    text = (tmp_path / "report.md").read_text()
    assert "## Confidence intervals (95%, 200 bootstrap resamples" in text
    assert "## Operating points (positive class: pneumonia)" in text and "| youden = " in text


def test_eval_saves_temperature_and_thresholds_that_predict_and_export_apply(tmp_path: Path) -> None:
    from medclass.eval.calibration import apply_temperature
    from medclass.module import operating_file
    from medclass.module.checkpoint import load_classifier
    from medclass.module.onnx import OnnxModel
    from medclass.tasks.evaluate import evaluate
    from medclass.tasks.export import run_export
    from medclass.tasks.predict import run_predict
    from medclass.tasks.train import train

    from .conftest import FAST, compose_train, grey, save, write_npz
    from .test_eval_on_validation import fit_temperature_by_hand, softmax_by_hand

    root = write_npz(tmp_path / "medmnist", "breastmnist", n=(64, 40, 40)).parent
    metrics = train(compose_train([f"data.root={root}", "data.name=breastmnist", *FAST,
                                   "trainer.precision=32-true"], tmp_path / "run"))  # a model sized on fp32
    ckpt = metrics["run"]["best_checkpoint"]
    evaluate(compose_train([f"ckpt_path={ckpt}", "bootstrap=50"], tmp_path / "eval", config_name="eval"))
    saved = operating_file.load(ckpt)
    assert set(saved["thresholds"]) == {"youden", "sensitivity_0.95"}
    # the temperature is the one fitted here by hand on the validation split's probabilities (mirror views)
    npz = np.load(root / "breastmnist.npz")
    val_probs = softmax_by_hand(load_classifier(ckpt), npz["val_images"])
    by_hand = fit_temperature_by_hand(val_probs, npz["val_labels"])
    assert 0.05 < by_hand < 20  # inside the search range: a real optimum, not a bound
    assert saved["temperature"] == pytest.approx(by_hand, rel=1e-3)
    assert "saved beside the checkpoint" in (tmp_path / "eval" / "report.md").read_text()
    for i in range(6):
        save(tmp_path / "new" / f"{i}.png", grey(60 + 25 * i, size=28, seed=i))
    rows = {}
    for calibrated in ("true", "false"):
        run_predict(compose_train([f"ckpt_path={ckpt}", f"inputs={tmp_path / 'new'}", f"calibrated={calibrated}",
                                   "operating_point=sensitivity_0.95"], tmp_path / calibrated, config_name="predict"))
        with (tmp_path / calibrated / "predictions.csv").open() as f:
            rows[calibrated] = {r["path"]: r for r in csv.DictReader(f)}
    threshold = saved["thresholds"]["sensitivity_0.95"]
    for path, raw in rows["false"].items():
        p_raw = np.array([float(raw["prob_normal, benign"]), float(raw["prob_malignant"])][::-1])
        calibrated = apply_temperature(p_raw[None], "binary-class", saved["temperature"])[0]
        assert float(rows["true"][path]["prob_normal, benign"]) == pytest.approx(calibrated[1], abs=2e-6)
        assert raw["decision"] == rows["true"][path]["decision"] == (
            "normal, benign" if p_raw[1] >= threshold else "malignant")
    run_export(compose_train([f"ckpt_path={ckpt}"], tmp_path / "export", config_name="export"))
    onnx_meta = OnnxModel(tmp_path / "export" / "model.onnx").meta
    assert onnx_meta["temperature"] == saved["temperature"] and onnx_meta["thresholds"] == saved["thresholds"]


def test_target_sensitivity_threshold_inside_a_run_of_positives() -> None:
    # 3 negatives below 20 positives: sensitivity 0.5 is first reached at the 10th-highest positive, a point
    # roc_curve drops by default (no negative between it and its neighbours)
    scores = np.r_[np.linspace(0.1, 0.3, 3), np.linspace(0.4, 1.0, 20)]
    positive = np.r_[np.zeros(3), np.ones(20)].astype(bool)
    threshold = sensitivity_threshold(scores, positive, 0.5)
    assert threshold == pytest.approx(np.sort(scores[positive])[::-1][9])
    assert (scores[positive] >= threshold).mean() == 0.5


def test_class_names_show_as_text_in_the_markdown_report(tmp_path: Path) -> None:
    """A class name is any text (issue 35): in report.md it must neither add a table column nor be HTML."""
    probs, labels = scores(200, k=2)
    info = {"task": "binary-class", "class_names": ["a | x", "<img src=x onerror=alert(1)>"]}
    write_report(tmp_path, split="test", probs=probs, labels=labels, data_info=info, checkpoint="x.ckpt",
                 medmnist=False, val=scores(100, k=2, seed=5), bootstrap=0, target_sensitivity=0.9)
    text = (tmp_path / "report.md").read_text()
    assert "<img" not in text and "&lt;img src=x onerror=alert(1)&gt;" in text
    rows = [line for line in text.splitlines() if line.startswith("| a \\| x |")]
    assert rows and all(line.count(" | ") == 5 for line in rows), rows  # six cells, as the header
