"""Eval fits on validation and scores the other split: tests that fail when validation and test are mixed up.

The data are built so that validation and test come from different distributions (test images brighter, a
tenth of their labels flipped), so a temperature, a threshold or a checkpoint choice made on test differs
clearly from one made on validation. Every expected value is computed here by hand, from the images and
the checkpoint's weights (normalization, test-time views, temperature fit, thresholds by brute force),
never read back from what the code under test computed.
"""

from __future__ import annotations

import csv
import json
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from scipy.optimize import minimize_scalar
from scipy.stats import rankdata
from sklearn import metrics as skm
from torch.utils.data import DataLoader, TensorDataset

from medclass.data import FolderDataModule, ManifestDataModule
from medclass.data.splits import assign_splits
from medclass.eval.bootstrap import METRICS, bootstrap_ci, metric_values
from medclass.module import Classifier, operating_file
from medclass.module.checkpoint import load_classifier
from medclass.tasks.evaluate import evaluate
from medclass.tasks.train import train
from medclass.utils.errors import MedclassError

from .conftest import FAST, clean_tree, compose_train, grey, save

EPOCHS = 5
TARGET = 0.95  # eval's default operating_point.sensitivity
NAMES = ["malignant", "normal, benign"]  # BreastMNIST's classes: column 1 is the positive one


# -- the data: validation and test from different distributions ----------------------------------------------
def brightness_images(levels: np.ndarray, rng: np.random.Generator, size: int = 28) -> np.ndarray:
    """One noisy grey image per brightness level, uint8 (N, size, size) as MedMNIST stores them."""
    noise = rng.normal(0, 20, (len(levels), size, size))
    return np.clip(np.asarray(levels, float)[:, None, None] + noise, 0, 255).astype(np.uint8)


def two_class_split(n: int, negatives: tuple[float, float], positives: tuple[float, float], flip: float,
                    rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Alternating labels; brightness drawn per class; a share `flip` of the labels flipped (label noise)."""
    y = (np.arange(n) % 2).astype(np.uint8)
    levels = np.where(y == 1, rng.uniform(*positives, n), rng.uniform(*negatives, n))
    flipped = rng.random(n) < flip
    y[flipped] = 1 - y[flipped]
    return brightness_images(levels, rng), y[:, None]


def shifted_breastmnist(folder: Path) -> dict[str, np.ndarray]:
    """A BreastMNIST-shaped npz: train and validation alike (dark negatives, bright positives), test shifted
    brighter with 10 % of its labels flipped, so the model is overconfident on test and its scores there sit
    much higher: what is fitted on test differs clearly from what is fitted on validation."""
    rng = np.random.default_rng(0)
    arrays: dict[str, np.ndarray] = {}
    for split, (n, negatives, positives, flip) in {"train": (96, (40, 120), (120, 200), 0.0),
                                                    "val": (48, (40, 130), (110, 200), 0.0),
                                                    "test": (48, (120, 200), (170, 250), 0.1)}.items():
        arrays[f"{split}_images"], arrays[f"{split}_labels"] = two_class_split(n, negatives, positives, flip, rng)
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "breastmnist.npz", **arrays)
    return arrays


# -- by hand: preprocessing, test-time views, temperature, thresholds --------------------------------------
def normalized(images: np.ndarray, mean: float, std: float) -> torch.Tensor:
    """uint8 (N, H, W) grey images as the network sees them: scaled to 0..1, minus the mean, over the std."""
    return torch.as_tensor((images[:, None].astype(np.float64) / 255.0 - mean) / std, dtype=torch.float32)


def mirror_views(x: torch.Tensor) -> list[torch.Tensor]:
    """A left-right symmetric data set (BreastMNIST, `mirror`): the image and its left-right mirror."""
    return [x, torch.flip(x, dims=[3])]


@torch.no_grad()
def softmax_by_hand(module: Classifier, images: np.ndarray, views: bool = True) -> np.ndarray:
    """Softmax probabilities of a checkpoint's network, averaged over the mirror views (`views`) or of the
    plain image only (what validation during fit uses to choose the checkpoint)."""
    info = module.hparams.data_info
    x = normalized(images, info["mean"][0], info["std"][0])
    module.eval()
    chosen = mirror_views(x) if views else [x]
    return torch.stack([torch.softmax(module(v), dim=1) for v in chosen]).mean(0).numpy().astype(np.float64)


def fit_temperature_by_hand(probs: np.ndarray, labels: np.ndarray) -> float:
    """The T in [0.05, 20] minimizing the negative log-likelihood of softmax(log p / T) (Guo et al., 2017), by
    scipy's bounded scalar search over log T."""
    logp, y = np.log(np.clip(probs, 1e-7, 1.0)), labels.reshape(-1).astype(int)

    def nll(log_t: float) -> float:
        z = logp / np.exp(log_t)
        z = z - z.max(1, keepdims=True)
        return float(-(z[np.arange(len(y)), y] - np.log(np.exp(z).sum(1))).mean())

    best = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded",
                           options={"xatol": 1e-10})
    return float(np.exp(best.x))


def rates_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> tuple[float, float]:
    """(sensitivity, specificity) when `score >= threshold` is called positive."""
    called = scores >= threshold
    return float(called[positive].mean()), float((~called[~positive]).mean())


def youden_by_hand(scores: np.ndarray, positive: np.ndarray) -> float:
    """Brute force over every candidate threshold (each distinct score, and 1.0 which calls nothing positive):
    the one maximizing sensitivity + specificity - 1, the highest one among equals."""
    best, best_j = 1.0, 0.0
    for t in np.unique(scores)[::-1]:
        sens, spec = rates_at(scores, positive, t)
        if sens + spec - 1 > best_j + 1e-12:
            best, best_j = float(t), sens + spec - 1
    return best


def sensitivity_threshold_by_hand(scores: np.ndarray, positive: np.ndarray, target: float) -> float:
    """Brute force: the highest distinct score that, as a threshold, reaches the target sensitivity."""
    return next(float(t) for t in np.unique(scores)[::-1] if rates_at(scores, positive, t)[0] >= target)


def youden_with_sklearn(scores: np.ndarray, positive: np.ndarray) -> float:
    """The same choice read off sklearn's ROC curve (a second, independent route)."""
    fpr, tpr, thresholds = skm.roc_curve(positive, scores)
    return float(min(thresholds[int(np.argmax(tpr - fpr))], 1.0))


def counts_at(scores: np.ndarray, positive: np.ndarray, threshold: float) -> dict[str, int]:
    """TP, FP, FN, TN when `score >= threshold` is called positive."""
    called = scores >= threshold
    return {"tp": int((called & positive).sum()), "fp": int((called & ~positive).sum()),
            "fn": int((~called & positive).sum()), "tn": int((~called & ~positive).sum())}


# -- one real run shared by the eval tests ------------------------------------------------------------------
@dataclass
class ShiftedRun:
    """The data as written, the run folder, its best checkpoint, train's metrics and the test eval's folder."""

    arrays: dict[str, np.ndarray]
    run: Path
    ckpt: Path
    metrics: dict[str, dict]
    eval_dir: Path


@pytest.fixture(scope="module")
def shifted(tmp_path_factory: pytest.TempPathFactory) -> ShiftedRun:
    """Train a small CNN for 5 epochs (checkpoint chosen on val/balanced_acc, every epoch kept), then eval.py's
    code on the test split with its defaults: temperature, operating points, test-time views."""
    tmp = tmp_path_factory.mktemp("shifted")
    arrays = shifted_breastmnist(tmp / "medmnist")
    overrides = [f"data.root={tmp / 'medmnist'}", "data.name=breastmnist", *FAST, "logger=none",
                 "model.widths=[8,16]", "model.hidden=16", "optimizer.lr=0.01", "scheduler=none",
                 f"trainer.max_epochs={EPOCHS}", "callbacks.model_checkpoint.monitor=val/balanced_acc",
                 "callbacks.model_checkpoint.save_top_k=-1",
                 "trainer.precision=32-true"]  # the planted val/test gap was sized on fp32 training (auto: bf16 here)
    metrics = train(compose_train(overrides, tmp / "run"))
    ckpt = Path(metrics["run"]["best_checkpoint"])
    evaluate(compose_train([f"ckpt_path={ckpt}", "bootstrap=200"], tmp / "eval", config_name="eval"))
    return ShiftedRun(arrays, tmp / "run", ckpt, metrics, tmp / "eval")


def labels_of(run: ShiftedRun, split: str) -> np.ndarray:
    """A split's labels as a flat array (the npz stores one column)."""
    return run.arrays[f"{split}_labels"].reshape(-1)


def test_temperature_and_thresholds_are_fitted_on_validation_not_on_test(shifted: ShiftedRun) -> None:
    """report.json and `<ckpt>.operating.json` hold the temperature, Youden and 95 %-sensitivity thresholds of the
    validation predictions (computed here by hand), which differ clearly from those test would give."""
    module = load_classifier(shifted.ckpt)
    assert module.hparams.tta == "auto" and module.hparams.data_info["symmetry"] == "mirror"
    val = softmax_by_hand(module, shifted.arrays["val_images"])
    test = softmax_by_hand(module, shifted.arrays["test_images"])
    y_val, y_test = labels_of(shifted, "val"), labels_of(shifted, "test")

    by_hand = {"temperature": fit_temperature_by_hand(val, y_val),
               "youden": youden_by_hand(val[:, 1], y_val == 1),
               "sensitivity_0.95": sensitivity_threshold_by_hand(val[:, 1], y_val == 1, TARGET)}
    on_test = {"temperature": fit_temperature_by_hand(test, y_test),
               "youden": youden_by_hand(test[:, 1], y_test == 1),
               "sensitivity_0.95": sensitivity_threshold_by_hand(test[:, 1], y_test == 1, TARGET)}
    assert by_hand["youden"] == pytest.approx(youden_with_sklearn(val[:, 1], y_val == 1), abs=1e-6)
    # the data do their job: every value fitted on test is far from the one fitted on validation
    assert abs(np.log(on_test["temperature"] / by_hand["temperature"])) > np.log(3), (by_hand, on_test)
    assert abs(on_test["youden"] - by_hand["youden"]) > 0.3 and abs(
        on_test["sensitivity_0.95"] - by_hand["sensitivity_0.95"]) > 0.3, (by_hand, on_test)

    report = json.loads((shifted.eval_dir / "report.json").read_text())
    assert report["split"] == "test" and report["metrics"]["n"] == len(y_test)
    points = report["operating_points"]
    saved = {"temperature": report["calibration"]["temperature"], "youden": points["youden"]["threshold"],
             "sensitivity_0.95": points["sensitivity_0.95"]["threshold"]}
    assert saved["temperature"] == pytest.approx(by_hand["temperature"], rel=1e-3)
    assert saved["youden"] == pytest.approx(by_hand["youden"], abs=1e-5)
    assert saved["sensitivity_0.95"] == pytest.approx(by_hand["sensitivity_0.95"], abs=1e-5)
    for name in saved:
        assert saved[name] != pytest.approx(on_test[name], rel=0.05), name

    # applied unchanged to test: the scored split's confusion table at the validation threshold, by hand
    for name in ("youden", "sensitivity_0.95"):
        expected = counts_at(test[:, 1], y_test == 1, by_hand[name])
        assert {k: points[name][k] for k in expected} == expected, name
        assert points[name]["chosen_on"] == "val"

    file = operating_file.path_for(shifted.ckpt)
    raw = json.loads(file.read_text())
    assert raw["fitted_on"] == "val" and raw["checkpoint"] == shifted.ckpt.name
    assert raw["temperature"] == saved["temperature"]
    assert raw["thresholds"] == {"youden": saved["youden"], "sensitivity_0.95": saved["sensitivity_0.95"]}


def test_the_balanced_accuracy_monitor_chooses_on_validation_not_on_test(shifted: ShiftedRun) -> None:
    """The best checkpoint is the first epoch with the highest validation balanced accuracy, computed here from
    every epoch's saved weights (plain view, as validation during fit); test would have chosen another epoch."""
    scores: dict[str, list[float]] = {"val": [], "test": []}
    for epoch in range(EPOCHS):
        module = load_classifier(shifted.run / "checkpoints" / f"best-epoch{epoch:03d}.ckpt")
        for split in scores:
            pred = softmax_by_hand(module, shifted.arrays[f"{split}_images"], views=False).argmax(1)
            scores[split].append(skm.balanced_accuracy_score(labels_of(shifted, split), pred))
    on_val, on_test = int(np.argmax(scores["val"])), int(np.argmax(scores["test"]))
    assert on_val != on_test, scores  # the data make the two choices differ
    assert shifted.ckpt.name == f"best-epoch{on_val:03d}.ckpt", scores
    assert shifted.metrics["best_val"]["val/balanced_acc"] == pytest.approx(scores["val"][on_val], abs=1e-5)


def test_test_time_views_are_averaged_in_eval(shifted: ShiftedRun) -> None:
    """predictions.csv (tta: auto, the default) holds the mean of the softmax over the image and its mirror,
    computed here by hand; the plain view alone would give other numbers."""
    module = load_classifier(shifted.ckpt)
    images = shifted.arrays["test_images"]
    averaged = softmax_by_hand(module, images)
    plain = softmax_by_hand(module, images, views=False)
    assert np.abs(averaged - plain).max() > 1e-3  # the views disagree: averaging is visible
    with (shifted.eval_dir / "predictions.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [r["path"] for r in rows] == [f"test/{i}" for i in range(len(images))]
    written = np.array([[float(r[f"prob_{name}"]) for name in NAMES] for r in rows])
    np.testing.assert_allclose(written, averaged, atol=2e-6, rtol=0)


def test_tta_averages_every_dihedral_view_in_a_trainer(tmp_path: Path) -> None:
    """Trainer.predict on an `invariant` model (cells: 8 views) returns the mean of the probabilities over the
    four turns of the image and of its transpose, built here with other operations than medclass's; multi-class
    (softmax) and multi-label (sigmoid)."""
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing="ij")
    angles = torch.rand(6, generator=torch.Generator().manual_seed(3)) * 2 * torch.pi
    # oriented edges: a turned or mirrored image really is another input to the network (noise would not be)
    x = torch.stack([4 * torch.tanh(4 * (torch.cos(a) * xx + torch.sin(a) * yy + 0.3)) + 3 * xx * yy
                     for a in angles])[:, None]

    def dihedral(v: torch.Tensor) -> list[torch.Tensor]:
        turns = [v]
        for _ in range(3):
            turns.append(turns[-1].transpose(-2, -1).flip(-1))  # a quarter turn as a transpose and a flip
        return turns + [t.transpose(-2, -1) for t in turns]

    views = dihedral(x)
    assert len({tuple(v.flatten().tolist()) for v in views}) == 8
    for task, link in (("multi-class", lambda z: torch.softmax(z, 1)), ("multi-label", torch.sigmoid)):
        torch.manual_seed(0)
        info = {"task": task, "class_names": ["a", "b", "c"], "in_chans": 1, "image_size": 16, "mean": [0.5],
                "std": [0.25], "symmetry": "invariant"}
        net = {"_target_": "medclass.model.SimpleCNN", "widths": [4, 8], "hidden": 0, "dropout": 0.0}
        module = Classifier(net=net, data_info=info, optimizer={"_target_": "torch.optim.Adam", "_partial_": True},
                            tta="auto", channels_last=False)
        with torch.no_grad():  # large logits: the views disagree clearly, and a mean of logits is no mean of probs
            module.net.head[-1].weight.mul_(30)
        trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                            default_root_dir=tmp_path)
        got = torch.cat(trainer.predict(module, DataLoader(TensorDataset(x), batch_size=4)))
        module.eval()
        with torch.no_grad():
            expected = torch.stack([link(module.net(v)) for v in views]).mean(0)
            plain = link(module.net(x))
            of_mean_logits = link(torch.stack([module.net(v) for v in views]).mean(0))
        assert (expected - plain).abs().max() > 0.03 and (of_mean_logits - expected).abs().max() > 1e-3, task
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)


def test_eval_on_val_fits_nothing_and_writes_no_operating_file(shifted: ShiftedRun, tmp_path: Path) -> None:
    """split=val: no temperature, no threshold chosen on the split being scored, and `<ckpt>.operating.json` is
    neither written (a fresh checkpoint) nor replaced (one that has it); the numbers are validation's."""
    existing = operating_file.path_for(shifted.ckpt)
    before, stamp = existing.read_bytes(), existing.stat().st_mtime_ns
    fresh = tmp_path / "copy" / "model.ckpt"
    fresh.parent.mkdir()
    shutil.copy(shifted.ckpt, fresh)
    y_val = labels_of(shifted, "val")
    val = softmax_by_hand(load_classifier(shifted.ckpt), shifted.arrays["val_images"])
    for ckpt, out in ((shifted.ckpt, tmp_path / "val_eval"), (fresh, tmp_path / "fresh_eval")):
        evaluate(compose_train([f"ckpt_path={ckpt}", "split=val", "bootstrap=0"], out, config_name="eval"))
        report = json.loads((out / "report.json").read_text())
        assert report["split"] == "val" and report["metrics"]["n"] == len(y_val)
        assert report["metrics"]["accuracy"] == pytest.approx(float((val.argmax(1) == y_val).mean()))
        assert "temperature" not in report["calibration"]
        assert list(report["operating_points"]) == ["default_0.5"]
        assert report["operating_points"]["default_0.5"]["chosen_on"] == "fixed"
        assert "Fitted on validation" not in (out / "report.md").read_text()
        assert json.loads((out / "metrics.json").read_text())["val"]["val/acc"] == pytest.approx(
            report["metrics"]["accuracy"], abs=1e-6)
    assert existing.read_bytes() == before and existing.stat().st_mtime_ns == stamp
    assert not operating_file.path_for(fresh).exists()
    assert sorted(p.name for p in fresh.parent.iterdir()) == ["model.ckpt"]


# -- bootstrap intervals against a brute-force bootstrap ----------------------------------------------------
def scored(task: str, n: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Informative, imperfect probabilities (rounded: ties, as a saturated network gives) for each task type."""
    rng = np.random.default_rng(seed)
    if task == "multi-label":
        labels = (rng.random((n, 3)) < [0.5, 0.3, 0.1]).astype(int)  # a rare third label
        probs = 1 / (1 + np.exp(-(rng.normal(0, 1.2, (n, 3)) + 1.2 * (2 * labels - 1))))
        return np.round(probs, 3), labels
    k = 2 if task == "binary-class" else 3
    labels = rng.integers(0, k, n)
    z = rng.normal(0, 1, (n, k)) + 1.2 * np.eye(k)[labels]
    return np.round(np.exp(z) / np.exp(z).sum(1, keepdims=True), 3), labels


def auc_per_row(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Mann-Whitney AUC of each row (mean rank of the positives; ties count half); NaN without both classes."""
    n_pos = positive.sum(1)
    n_neg = positive.shape[1] - n_pos
    with np.errstate(invalid="ignore", divide="ignore"):
        return ((rankdata(scores, axis=1) * positive).sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def metrics_of_copies(probs: np.ndarray, labels: np.ndarray, task: str, index: np.ndarray) -> dict[str, np.ndarray]:
    """Each metric on every copy of the arrays that a row of `index` (B, n) draws, computed from the copied
    arrays themselves: accuracy, balanced accuracy (mean recall of the classes present; multi-label: per
    label), macro F1 and macro one-vs-rest AUC (binary: the positive class)."""
    k = probs.shape[1]
    multi = task == "multi-label"
    pred = (probs > 0.5).astype(int) if multi else probs.argmax(1)
    truth = labels[index] if multi else np.eye(k, dtype=int)[labels[index]]  # (B, n, k) 0/1
    called = pred[index] if multi else np.eye(k, dtype=int)[pred[index]]
    tp, fp = (called * truth).sum(1), (called * (1 - truth)).sum(1)
    fn, tn = ((1 - called) * truth).sum(1), ((1 - called) * (1 - truth)).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # nanmean of a row with no defined value
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0).mean(1)
        recall, specificity = tp / (tp + fn), tn / (tn + fp)
        if multi:
            accuracy = (called == truth).mean((1, 2))
            balanced = np.nanmean(np.stack([recall, specificity]), 0).mean(1)
        else:
            accuracy = (pred[index] == labels[index]).mean(1)
            balanced = np.nanmean(recall, 1)
        classes = [1] if task == "binary-class" else range(k)
        auc = np.nanmean(np.stack([auc_per_row(probs[index, c], truth[..., c] == 1) for c in classes], 1), 1)
    return {"accuracy": accuracy, "balanced_accuracy": balanced, "f1_macro": f1, "auc_macro_ovr": auc}


def brute_force_draws(probs: np.ndarray, labels: np.ndarray, task: str, resamples: int,
                      seed: int) -> dict[str, np.ndarray]:
    """Each metric on `resamples` copies of the arrays, images drawn with replacement."""
    index = np.random.default_rng(seed).integers(0, len(probs), (resamples, len(probs)))
    return metrics_of_copies(probs, labels, task, index)


@pytest.mark.parametrize("task", ["binary-class", "multi-class", "multi-label"])
def test_bootstrap_interval_matches_a_brute_force_percentile_bootstrap(task: str) -> None:
    """The 95 % interval equals the 2.5th and 97.5th percentiles of a brute-force bootstrap drawn independently
    (another seed), within Monte Carlo error: at 6000 resamples each, two estimates of the 2.5th percentile
    differ by about 0.05 bootstrap standard deviations (3 SD: 0.15); accuracy, which moves in steps of 1/n, may
    also land one step apart. A 90 % interval would sit about 0.3 SD inside."""
    probs, labels = scored(task)
    resamples = 6000
    ci = bootstrap_ci(probs, labels, task, n_resamples=resamples, seed=0)
    draws = brute_force_draws(probs, labels, task, resamples, seed=12345)
    assert ci["level"] == 0.95 and ci["method"] == "percentile"
    whole = metrics_of_copies(probs, labels, task, np.arange(len(probs))[None])
    for metric in METRICS:
        d = draws[metric]
        low, high = np.nanpercentile(d, [2.5, 97.5])
        tolerance = 0.15 * np.nanstd(d) + (1 / labels.size if metric == "accuracy" else 0.0)
        assert ci[metric]["low"] == pytest.approx(low, abs=tolerance), (metric, ci[metric], low, high)
        assert ci[metric]["high"] == pytest.approx(high, abs=tolerance), (metric, ci[metric], low, high)
        assert ci[metric]["estimate"] == pytest.approx(whole[metric][0])


@pytest.mark.parametrize("task", ["binary-class", "multi-label"])
def test_binary_and_multi_label_weighted_counts_equal_sklearn_on_resampled_arrays(task: str) -> None:
    """A resample's weights (multiplicities) give sklearn's numbers on the resampled arrays themselves."""
    probs, labels = scored(task, n=120, seed=4)
    for draw in range(3):
        index = np.random.default_rng(draw).integers(0, len(probs), len(probs))
        weights = np.bincount(index, minlength=len(probs)).astype(float)
        got = metric_values(probs, labels, task, weights)
        p, y = probs[index], labels[index]
        if task == "binary-class":
            pred = p.argmax(1)
            expected = {"accuracy": skm.accuracy_score(y, pred), "balanced_accuracy": skm.balanced_accuracy_score(
                y, pred), "f1_macro": skm.f1_score(y, pred, average="macro"), "auc_macro_ovr": skm.roc_auc_score(
                y, p[:, 1])}
        else:
            pred = (p > 0.5).astype(int)
            expected = {"accuracy": float((pred == y).mean()),
                        "balanced_accuracy": np.mean([skm.balanced_accuracy_score(y[:, i], pred[:, i])
                                                      for i in range(y.shape[1])]),
                        "f1_macro": skm.f1_score(y, pred, average="macro", zero_division=0),
                        "auc_macro_ovr": skm.roc_auc_score(y, p, average="macro")}
        for metric, value in expected.items():
            assert got[metric] == pytest.approx(value, abs=1e-12), (task, draw, metric)


def test_a_class_missing_from_a_resample_is_left_out_as_sklearn_leaves_it_out() -> None:
    """A resample without any image of a class: balanced accuracy is the mean recall of the classes present, its
    AUC is undefined (left out of the macro mean), its F1 is 0, as sklearn computes them on the resampled arrays;
    the same for a multi-label label without positives. Intervals stay finite."""
    probs, labels = scored("multi-class", n=90, seed=2)
    index = np.flatnonzero(labels != 2)  # every image once, except those of class 2
    weights = np.bincount(index, minlength=len(labels)).astype(float)
    p, y = probs[index], labels[index]
    pred = p.argmax(1)
    assert (pred == 2).any()  # class 2 is still predicted: false positives with no true images
    got = metric_values(probs, labels, "multi-class", weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # sklearn: y_pred has a class y_true lacks
        assert got["balanced_accuracy"] == pytest.approx(skm.balanced_accuracy_score(y, pred))
    assert got["accuracy"] == pytest.approx(skm.accuracy_score(y, pred))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, labels=[0, 1, 2], average="macro",
                                                         zero_division=0))
    assert got["auc_macro_ovr"] == pytest.approx(np.mean([skm.roc_auc_score(y == c, p[:, c]) for c in (0, 1)]))

    ml_probs, ml_labels = scored("multi-label", n=90, seed=2)
    keep = np.flatnonzero(ml_labels[:, 2] == 0)  # no positive of the rare third label
    weights = np.bincount(keep, minlength=len(ml_labels)).astype(float)
    p, y = ml_probs[keep], ml_labels[keep]
    pred = (p > 0.5).astype(int)
    got = metric_values(ml_probs, ml_labels, "multi-label", weights)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        balanced = np.mean([skm.balanced_accuracy_score(y[:, i], pred[:, i]) for i in range(3)])
    assert got["balanced_accuracy"] == pytest.approx(balanced)
    assert got["auc_macro_ovr"] == pytest.approx(np.mean([skm.roc_auc_score(y[:, i], p[:, i]) for i in (0, 1)]))
    assert got["f1_macro"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))

    # one positive among ten images: about a third of the resamples lack it and have no AUC; the interval is read
    # from the others (NaN draws left out), so it is finite and brackets the estimate
    scores = np.linspace(0.05, 0.95, 10)
    one_positive = (np.arange(10) == 7).astype(int)
    few = bootstrap_ci(np.stack([1 - scores, scores], 1), one_positive, "binary-class", n_resamples=300, seed=0)
    auc = few["auc_macro_ovr"]
    assert auc["estimate"] == pytest.approx(skm.roc_auc_score(one_positive, scores))
    assert np.isfinite([auc["low"], auc["high"]]).all() and auc["low"] <= auc["estimate"] <= auc["high"]


# -- split and data branches no other test reaches ----------------------------------------------------------
def patient_labels(n_patients: int = 40, per_patient: int = 3) -> tuple[list[str], list[str]]:
    """Labels and patient ids: one diagnosis per patient, alternating, several images each."""
    labels, groups = [], []
    for p in range(n_patients):
        labels += ["sick" if p % 2 else "well"] * per_patient
        groups += [f"P{p:03d}"] * per_patient
    return labels, groups


@pytest.mark.parametrize(("fractions", "split", "share"), [((0.2, 0.7, 0.1), "val", 0.7), ((0.2, 0.1, 0.7), "test",
                                                                                          0.7)])
def test_a_grouped_share_above_one_half_takes_the_larger_part(fractions: tuple[float, float, float], split: str,
                                                               share: float) -> None:
    """With groups, a split of more than half of what is left gets the larger part of the cut (whole patients),
    not the smaller one."""
    labels, groups = patient_labels()
    splits = assign_splits(labels, fractions, seed=0, groups=groups)
    by_patient: dict[str, set[str]] = {}
    for g, s in zip(groups, splits, strict=True):
        by_patient.setdefault(g, set()).add(s)
    assert all(len(s) == 1 for s in by_patient.values())
    got = splits.count(split) / len(splits)
    assert got > 0.5 and abs(got - share) < 0.1, (split, got)
    for name in ("train", "val", "test"):
        assert {lbl for lbl, s in zip(labels, splits, strict=True) if s == name} == {"sick", "well"}


@pytest.mark.parametrize("fractions", [(0.6, 0.0, 0.4), (0.7, 0.0, 0.3), (0.3, 0.3, 0.4), (0.8, 0.1, 0.1)])
def test_a_grouped_fraction_is_met_as_closely_as_whole_patients_allow(fractions: tuple[float, ...]) -> None:
    """docs/data.md: with groups, 'a fraction is met as closely as whole patients allow'. 60 patients of three
    images allow each of these shares to within two patients (one fold of round(1/share) gave 0.5 for 0.4)."""
    labels, groups = patient_labels(60)
    splits = assign_splits(labels, fractions, seed=0, groups=groups)
    for name, share in zip(("train", "val", "test"), fractions, strict=True):
        assert abs(splits.count(name) / len(splits) - share) <= 2 * 3 / len(splits), (name, fractions)


def test_given_splits_with_folds_keep_test_and_pool_train_and_val() -> None:
    """`folds` with a given split: given test rows stay test in every fold, given train and val rows are pooled
    and cut into the folds (each row is val in exactly one fold), and no further test rows are drawn."""
    labels = ["a", "b"] * 24
    given = ["test"] * 6 + ["val"] * 6 + ["train"] * 12 + [""] * 24
    runs = [assign_splits(labels, (0.8, 0.1, 0.1), seed=0, given=given, folds=3, fold=k) for k in range(3)]
    for r in runs:
        assert [i for i, s in enumerate(r) if s == "test"] == list(range(6))
        assert set(r) == {"train", "val", "test"}
    val_sets = [{i for i, s in enumerate(r) if s == "val"} for r in runs]
    assert sum(len(v) for v in val_sets) == len(labels) - 6 and set().union(*val_sets) == set(range(6, 48))
    assert any(runs[k][i] == "train" for k in range(3) for i in range(6, 12))  # a given val row trains elsewhere


def write_csv_rows(path: Path, rows: list[dict[str, str]]) -> Path:
    """A manifest CSV with the rows' keys as its header."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def small_study(tmp: Path, n_patients: int = 12) -> list[dict[str, str]]:
    """Two 16 px images per patient on disk, and their manifest rows (path, label, group)."""
    rows = []
    for p in range(n_patients):
        for k in range(2):
            rel = f"images/P{p:02d}_{k}.png"
            save(tmp / "study" / rel, grey(60 + 100 * (p % 2), size=16, seed=100 * p + k))
            rows.append({"path": rel, "label": "sick" if p % 2 else "well", "group": f"P{p:02d}"})
    return rows


def manifest_module(tmp: Path, manifest: Path, **kw) -> ManifestDataModule:
    """A manifest DataModule writing its split files under `tmp`, no cache."""
    return ManifestDataModule(manifest=str(manifest), image_size=16, num_workers=0, batch_size=8,
                              split_dir=str(tmp / "splits"), cache_dir=None, split_fractions=(0.5, 0.25, 0.25), **kw)


def test_a_manifest_row_naming_a_missing_file_is_skipped_and_reported(tmp_path: Path) -> None:
    """A row whose file is not there is left out with the reason 'missing file', in the skipped list and its CSV,
    and the other rows still load: an export from a hospital system often names a few files it did not copy."""
    rows = small_study(tmp_path)
    rows.insert(3, {"path": "images/gone.png", "label": "sick", "group": "P99"})
    dm = manifest_module(tmp_path, write_csv_rows(tmp_path / "study" / "labels.csv", rows))
    dm.setup()
    assert dm.skipped == [(tmp_path / "study" / "images" / "gone.png", "missing file")]
    assert sum(len(dm.split_items(s)) for s in ("train", "val", "test")) == len(rows) - 1
    with (tmp_path / "splits" / "labels_skipped.csv").open() as f:
        assert [(Path(r["path"]).name, r["reason"]) for r in csv.DictReader(f)] == [("gone.png", "missing file")]
    assert "images/gone.png" not in dm.split_file.read_text()


def test_group_by_naming_a_column_the_manifest_lacks_stops_with_its_columns(tmp_path: Path) -> None:
    """A misspelt group column must stop the run (a silent fall-back would split patients across train and test);
    a regex on the path is still taken."""
    manifest = write_csv_rows(tmp_path / "study" / "labels.csv", small_study(tmp_path))
    with pytest.raises(MedclassError, match=r"data.group_by='patient' is not a column of .*labels.csv \(3 named "
                                            r"columns in its header\)"):
        manifest_module(tmp_path, manifest, group_by="patient").setup()
    by_regex = manifest_module(tmp_path, manifest, group_by=r"P(\d+)_")  # a regex on the path still works
    by_regex.setup()
    assert {by_regex.item_columns(i)["group"] for i in by_regex.split_items("test")} <= {f"{p:02d}" for p in range(12)}


def test_a_split_file_with_another_header_is_refused(tmp_path: Path) -> None:
    """A file at the split's name that is not a split file (edited, or another tool's) is refused with the fix,
    never read as if its columns were path, label, split."""
    root = clean_tree(tmp_path / "data", per_class=10)
    kw = {"image_size": 16, "num_workers": 0, "split_dir": str(tmp_path / "splits"), "cache_dir": None}
    first = FolderDataModule(root=str(root), **kw)
    first.setup()
    text = first.split_file.read_text()
    assert text.startswith("path,label,split\n")
    first.split_file.write_text(text.replace("path,label,split", "file,class,split", 1))
    with pytest.raises(MedclassError, match=r"is not a split file \(header path,label,split\); delete it"):
        FolderDataModule(root=str(root), **kw).setup()
