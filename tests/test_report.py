"""eval.py's report folder, MedMNIST's official metric definitions, and calibration."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist.evaluator import getACC, getAUC
from PIL import Image
from sklearn.metrics import roc_auc_score
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from medclass.eval.calibration import apply_temperature, ece, fit_temperature
from medclass.eval.metrics import OFFICIAL_TASK, classification_metrics, official
from medclass.module.task_kinds import make_metrics

from .conftest import run_script


def scores(task: str, n: int = 200, k: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Informative but imperfect scores, as a trained model gives."""
    rng = np.random.default_rng(seed)
    if task == "multi-label":
        labels = rng.integers(0, 2, (n, k))
        return 1 / (1 + np.exp(-(2 * labels - 1 + rng.normal(0, 1.5, (n, k))))), labels
    k = 2 if task == "binary-class" else k
    labels = rng.integers(0, k, n)
    logits = 1.5 * np.eye(k)[labels] + rng.normal(0, 1, (n, k))
    return np.exp(logits) / np.exp(logits).sum(1, keepdims=True), labels[:, None]


@pytest.mark.parametrize("task", ["multi-class", "binary-class", "multi-label", "ordinal-regression"])
def test_training_metrics_equal_the_official_medmnist_evaluator(task: str) -> None:
    """The test/acc and test/auc that training logs are MedMNIST's numbers on the same scores."""
    probs, labels = scores(task)
    metrics = make_metrics(task, probs.shape[1])
    ours = {k: float(v) for k, v in metrics(torch.tensor(probs, dtype=torch.float64), torch.tensor(labels).squeeze(-1)
                                            if task != "multi-label" else torch.tensor(labels)).items()}
    expected = {"acc": getACC(labels, probs, OFFICIAL_TASK[task]), "auc": getAUC(labels, probs, OFFICIAL_TASK[task])}
    assert ours["acc"] == pytest.approx(expected["acc"], abs=1e-6)
    assert ours["auc"] == pytest.approx(expected["auc"], abs=1e-6)
    assert official(probs, labels, task) == pytest.approx(expected, abs=1e-12)
    report = classification_metrics(probs, labels, [f"c{i}" for i in range(probs.shape[1])], task)
    assert report["accuracy"] == pytest.approx(expected["acc"], abs=1e-9)
    assert report["auc_macro_ovr"] == pytest.approx(expected["auc"], abs=1e-9)
    if task == "binary-class":
        # two softmax columns: each class's one-vs-rest AUC is the positive-class AUC, scored by sklearn directly
        positive = roc_auc_score(labels.ravel(), probs[:, 1])
        assert [c["auc"] for c in report["per_class"]] == pytest.approx([positive, positive], abs=1e-9)
        assert report["accuracy"] == pytest.approx(float(((probs[:, 1] > 0.5) == labels.ravel()).mean()), abs=1e-12)


def test_per_class_numbers_and_confusion() -> None:
    probs = np.array([[0.9, 0.1, 0.0], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [0.1, 0.1, 0.8]])
    labels = np.array([0, 1, 1, 2])
    m = classification_metrics(probs, labels, ["a", "b", "c"], "multi-class")
    assert m["confusion"]["counts"] == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    assert m["confusion"]["normalized"][1] == [0.5, 0.5, 0.0]
    a, b, _ = m["per_class"]
    assert (a["precision"], a["recall"], a["support"]) == (0.5, 1.0, 1) and (b["precision"], b["recall"]) == (1.0, 0.5)
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)


def test_temperature_scaling_fixes_overconfidence_without_changing_predictions() -> None:
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.5, (4000, 4))
    calibrated_truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(4, p=p) for p in calibrated_truth])  # labels drawn from the probabilities
    over = np.exp(4 * logits) / np.exp(4 * logits).sum(1, keepdims=True)  # the same model, 4x overconfident
    t = fit_temperature(over[:2000], labels[:2000], "multi-class")  # fitted on the "validation" half
    fixed = apply_temperature(over[2000:], "multi-class", t)
    assert t == pytest.approx(4.0, rel=0.15)
    assert ece(fixed, labels[2000:], "multi-class") < ece(over[2000:], labels[2000:], "multi-class") / 3
    assert (fixed.argmax(1) == over[2000:].argmax(1)).all()


@pytest.fixture(scope="module")
def report(blood_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "eval"
    ckpt = next((blood_run / "checkpoints").glob("best-*.ckpt"))
    proc = run_script("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def test_report_folder_files_exist_and_parse(report: Path) -> None:
    data = json.loads((report / "report.json").read_text())
    assert data["metrics"]["n"] == 48 and len(data["metrics"]["per_class"]) == 8
    assert np.asarray(data["metrics"]["confusion"]["counts"]).sum() == 48
    assert {"acc", "auc"} == set(data["medmnist_official"])
    assert data["medmnist_official"]["acc"] == pytest.approx(data["metrics"]["accuracy"])
    # the report is built from the very pass that wrote metrics.json (no second prediction)
    scored = json.loads((report / "metrics.json").read_text())["test"]
    assert scored["test/acc"] == pytest.approx(data["metrics"]["accuracy"], abs=1e-6)
    assert {"ece", "temperature", "ece_after_temperature"} <= set(data["calibration"])
    with open(report / "per_class.csv") as f:
        rows = list(csv.DictReader(f))
    assert [r["class"] for r in rows][0] == "basophil" and sum(int(r["support"]) for r in rows) == 48
    figures = {Path(f).stem for f in data["figures"]}
    assert figures == {"confusion", "roc", "reliability", "training_curves", "risk_coverage"}
    for name in figures:
        with Image.open(report / "figures" / f"{name}.png") as im:
            assert im.size[0] > 200 and im.size[1] > 150
    markdown = (report / "report.md").read_text()
    linked = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert sorted(linked) == sorted(data["figures"]) and all((report / f).is_file() for f in linked)
    assert "| basophil |" in markdown and "MedMNIST official ACC / AUC" in markdown


def test_report_figures_are_in_tensorboard(report: Path) -> None:
    events = EventAccumulator(str(report / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    assert {"test/confusion", "test/roc", "test/reliability", "test/training_curves"} <= set(events.Tags()["images"])
