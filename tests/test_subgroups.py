"""Subgroup report (issue 29): per-subgroup metrics against scikit-learn, gap intervals, patient resampling, bins."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from medclass.eval.bootstrap import bootstrap_ci
from medclass.eval.subgroups import bin_values, forest_figure, patient_weights, subgroup_markdown, subgroup_report
from medclass.utils.errors import MedclassError
from medclass.utils.io import save_figure


def scores(n: int, k: int = 2, seed: int = 0, signal: float = 1.2, decimals: int | None = 2
           ) -> tuple[np.ndarray, np.ndarray]:
    """Informative but imperfect probabilities; rounded ones have ties, as a saturated net gives."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, k, n)
    logits = rng.normal(0, 1, (n, k)) + signal * np.eye(k)[labels]
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    return (probs if decimals is None else np.round(probs, decimals)), labels


def by_value(report: dict, column: str) -> dict[str, dict]:
    return {row["value"]: row for row in report["columns"][column]["subgroups"]}


def test_binary_subgroup_metrics_equal_sklearn_on_each_subset() -> None:
    probs, labels = scores(900, seed=1)
    site = np.random.default_rng(2).choice(["north", "south", "west"], 900).tolist()
    threshold = 0.37
    report = subgroup_report(probs, labels, "binary-class", {"site": site}, threshold=threshold, n_resamples=20)
    assert report["metrics"] == ["accuracy", "balanced_accuracy", "auc", "sensitivity", "specificity"]
    rows = by_value(report, "site")
    assert list(rows) == ["north", "south", "west"]
    subsets = {value: np.asarray(site) == value for value in rows} | {"all": np.ones(900, bool)}
    for value, mask in subsets.items():
        row = report["overall"] if value == "all" else rows[value]
        p, y = probs[mask], labels[mask]
        tn, fp, fn, tp = skm.confusion_matrix(y, (p[:, 1] >= threshold).astype(int)).ravel()
        expected = {"accuracy": skm.accuracy_score(y, p.argmax(1)),
                    "balanced_accuracy": skm.balanced_accuracy_score(y, p.argmax(1)),
                    "auc": skm.roc_auc_score(y, p[:, 1]), "sensitivity": tp / (tp + fn), "specificity": tn / (tn + fp)}
        assert row["n"] == mask.sum() and row["prevalence"] == pytest.approx(y.mean()) and row["n_groups"] is None
        for m, want in expected.items():
            cell = row["metrics"][m]
            assert cell["estimate"] == pytest.approx(want), (value, m)
            assert cell["low"] <= cell["estimate"] <= cell["high"], (value, m, cell)


def test_multiclass_subgroup_metrics_equal_sklearn_on_each_subset() -> None:
    probs, labels = scores(900, k=3, seed=3, decimals=None)
    scanner = np.random.default_rng(4).choice(["ge", "siemens"], 900).tolist()
    names = ["benign", "malignant", "normal"]
    report = subgroup_report(probs, labels, "multi-class", {"scanner": scanner}, threshold=0.5, n_resamples=20,
                             class_names=names)
    assert report["metrics"] == ["accuracy", "balanced_accuracy", "auc"]  # no operating point for multi-class
    for value, row in by_value(report, "scanner").items():
        mask = np.asarray(scanner) == value
        p, y = probs[mask], labels[mask]
        assert row["prevalence"] == pytest.approx({c: float((y == i).mean()) for i, c in enumerate(names)})
        assert row["metrics"]["accuracy"]["estimate"] == pytest.approx(skm.accuracy_score(y, p.argmax(1)))
        assert row["metrics"]["balanced_accuracy"]["estimate"] == pytest.approx(
            skm.balanced_accuracy_score(y, p.argmax(1)))
        assert row["metrics"]["auc"]["estimate"] == pytest.approx(
            skm.roc_auc_score(y, p, multi_class="ovr", average="macro"))


def planted(correct: dict[str, int], n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Binary scores where subgroup g's argmax is right for exactly correct[g] of its n images."""
    rng = np.random.default_rng(seed)
    labels, right, site = [], [], []
    for g, c in correct.items():
        labels.append(rng.integers(0, 2, n))
        right.append(rng.permutation(np.arange(n) < c))
        site += [g] * n
    y, ok = np.concatenate(labels), np.concatenate(right)
    pred = np.where(ok, y, 1 - y)
    p1 = np.clip(0.2 + 0.6 * pred + rng.uniform(-0.15, 0.15, len(y)), 0, 1)
    return np.stack([1 - p1, p1], 1), y, site


def test_gap_interval_contains_a_planted_difference_and_comes_from_the_shared_resamples() -> None:
    probs, labels, site = planted({"A": 1900, "B": 1500}, 2000)  # accuracy 0.95 and 0.75: gap 0.20
    report = subgroup_report(probs, labels, "binary-class", {"site": site}, n_resamples=200, seed=5)
    gap = report["columns"]["site"]["gaps"]["accuracy"]
    assert (gap["best"], gap["worst"]) == ("A", "B")
    assert gap["estimate"] == pytest.approx(0.20)
    assert 0 < gap["low"] < 0.20 < gap["high"], gap
    # the same interval by hand: one weight vector per resample, both subgroups read from it, gap per resample
    rng, right = np.random.default_rng(5), probs.argmax(1) == labels
    a = np.asarray(site) == "A"
    gaps = []
    for _ in range(200):
        w = patient_weights(rng, None, len(labels))
        gaps.append(np.average(right[a], weights=w[a]) - np.average(right[~a], weights=w[~a]))
    assert [gap["low"], gap["high"]] == pytest.approx(list(np.percentile(gaps, [2.5, 97.5])))
    lines = subgroup_markdown(report)
    assert "- largest gap in accuracy: 0.200 [" in lines and "(A 0.950 vs B 0.750)" in lines


def test_the_overall_row_without_groups_is_the_report_bootstrap() -> None:
    probs, labels = scores(400, k=3, seed=6)
    report = subgroup_report(probs, labels, "multi-class", {}, n_resamples=100, seed=7)
    ci = bootstrap_ci(probs, labels, "multi-class", n_resamples=100, seed=7)
    for m, key in (("accuracy", "accuracy"), ("balanced_accuracy", "balanced_accuracy"), ("auc", "auc_macro_ovr")):
        got = report["overall"]["metrics"][m]
        assert [got["estimate"], got["low"], got["high"]] == pytest.approx(
            [ci[key]["estimate"], ci[key]["low"], ci[key]["high"]]), m


def test_patient_resampling_keeps_patients_whole() -> None:
    sizes = np.random.default_rng(8).integers(1, 6, 60)  # 60 patients with 1 to 5 images each
    groups = np.repeat([f"p{i:02d}" for i in range(60)], sizes)
    groups = groups[np.random.default_rng(9).permutation(len(groups))]  # a patient's images are not adjacent
    n, rng, totals = len(groups), np.random.default_rng(10), []
    for _ in range(200):
        w = patient_weights(rng, groups, n)
        per_patient = {g: set(w[groups == g]) for g in np.unique(groups)}
        assert all(len(s) == 1 for s in per_patient.values())  # one multiplicity per patient
        assert sum(s.pop() for s in per_patient.values()) == 60  # 60 patients drawn
        totals.append(w.sum())
    assert len(set(totals)) > 1 and abs(np.mean(totals) - n) < 0.1 * n  # n images only on average
    image = np.random.default_rng(11)
    w = patient_weights(image, None, n)
    assert w.sum() == n and any(len(set(w[groups == g])) > 1 for g in np.unique(groups))  # images, split patients
    assert np.array_equal(w, np.bincount(np.random.default_rng(11).integers(0, n, n), minlength=n))


def test_subgroup_intervals_resample_patients_when_groups_are_known() -> None:
    # 40 patients of 25 images; a patient's images are all right or all wrong, so patients, not images, are the
    # independent units: the patient interval must be several times wider than the image one
    rng = np.random.default_rng(12)
    groups = np.repeat([f"p{i}" for i in range(40)], 25)
    ok = np.repeat(rng.permutation(np.arange(40) < 30), 25)
    labels = rng.integers(0, 2, 1000)
    p1 = np.where(ok, labels, 1 - labels) * 0.6 + 0.2
    probs = np.stack([1 - p1, p1], 1)
    sex = np.where(np.repeat(np.arange(40) % 2, 25), "F", "M").tolist()
    by_patient = subgroup_report(probs, labels, "binary-class", {"sex": sex}, groups=groups.tolist(), n_resamples=200)
    by_image = subgroup_report(probs, labels, "binary-class", {"sex": sex}, n_resamples=200)
    assert by_patient["resampled"] == "patients" and by_patient["overall"]["n_groups"] == 40
    assert {v: r["n_groups"] for v, r in by_value(by_patient, "sex").items()} == {"F": 20, "M": 20}
    width = {name: r["overall"]["metrics"]["accuracy"]["high"] - r["overall"]["metrics"]["accuracy"]["low"]
             for name, r in (("patient", by_patient), ("image", by_image))}
    assert width["patient"] > 3 * width["image"], width
    rng = np.random.default_rng(0)  # and it is exactly the patient bootstrap
    acc = [np.average(ok, weights=patient_weights(rng, groups, 1000)) for _ in range(200)]
    got = by_patient["overall"]["metrics"]["accuracy"]
    assert [got["low"], got["high"]] == pytest.approx(list(np.percentile(acc, [2.5, 97.5])))


@pytest.mark.filterwarnings("error")
def test_a_subgroup_missing_from_some_resamples_is_skipped_there_not_zero() -> None:
    # one patient of 30 images is its own subgroup: about a third of the patient resamples leave it out
    probs, labels = scores(300, seed=13)
    groups = [f"p{i // 30}" for i in range(300)]
    site = ["rare" if i < 30 else "common" for i in range(300)]
    report = subgroup_report(probs, labels, "binary-class", {"site": site}, groups=groups, n_resamples=100)
    cell = by_value(report, "site")["rare"]["metrics"]["accuracy"]
    assert cell["low"] is not None and cell["high"] is not None and cell["low"] > 0


def test_bins_with_a_closed_last_bin_missing_cells_and_sorted_by_edge() -> None:
    values = ["0", "39.9", "40", "64.99", "65", "120", "", "NA", " ", "7"]
    assert bin_values(values, [0, 40, 65, 120], "age") == [
        "[0, 40)", "[0, 40)", "[40, 65)", "[40, 65)", "[65, 120]", "[65, 120]", "missing", "missing", "missing",
        "[0, 40)"]
    assert bin_values(["0.5", "2"], [0, 0.5, 2.5], "dose") == ["[0.5, 2.5]", "[0.5, 2.5]"]
    probs, labels = scores(6)
    ages = bin_values(["150", "5", "", "30", "199", "120"], [0, 20, 100, 200], "age")
    report = subgroup_report(probs, labels, "binary-class", {"age": ages}, min_count=1, n_resamples=5)
    assert [r["value"] for r in report["columns"]["age"]["subgroups"]] == ["[0, 20)", "[20, 100)", "[100, 200]",
                                                                           "missing"]


@pytest.mark.parametrize(("values", "edges", "needle"), [
    (["30", "130"], [0, 40, 65, 120], "'130' is outside subgroup_bins.age=[0, 40, 65, 120]"),
    (["-1"], [0, 40, 65, 120], "'-1' is outside subgroup_bins.age"),
    (["thirty"], [0, 40, 65, 120], "'thirty' is not a number"),
    (["30"], [0, 40, 40, 120], "strictly increasing"),
    (["30"], [0, 65, 40], "strictly increasing"),
    (["30"], [40], "at least two"),
])
def test_bad_bins_name_the_column_and_the_value(values: list[str], edges: list[float], needle: str) -> None:
    with pytest.raises(MedclassError, match="age") as error:
        bin_values(values, edges, "age")
    assert needle in str(error.value) and "subgroup_bins.age" in str(error.value) and "\n" not in str(error.value)


def test_too_small_subgroups_are_reported_not_scored() -> None:
    probs, labels = scores(200, seed=14)
    site = ["big"] * 141 + ["edge"] * 30 + ["tiny"] * 29
    report = subgroup_report(probs, labels, "binary-class", {"site": site}, threshold=0.5, n_resamples=20)
    rows = by_value(report, "site")
    assert rows["tiny"]["too_small"] and "metrics" not in rows["tiny"] and rows["tiny"]["n"] == 29
    assert rows["tiny"]["prevalence"] == pytest.approx(labels[171:].mean())
    assert not rows["edge"]["too_small"] and rows["edge"]["metrics"]["accuracy"]["estimate"] is not None
    assert {report["columns"]["site"]["gaps"]["accuracy"][k] for k in ("best", "worst")} == {"big", "edge"}
    alone = subgroup_report(probs, labels, "binary-class", {"site": ["big"] * 171 + ["tiny"] * 29}, n_resamples=5)
    assert alone["columns"]["site"]["gaps"]["accuracy"] is None  # one scored subgroup: no gap
    text = subgroup_markdown(alone)
    assert "| tiny | 29 | " in text and "too small (n < 30)" in text and "fewer than two subgroups scored" in text


def test_multi_label_is_refused() -> None:
    probs = np.random.default_rng(15).uniform(size=(50, 4))
    with pytest.raises(MedclassError, match="binary and multi-class"):
        subgroup_report(probs, (probs > 0.5).astype(int), "multi-label", {"site": ["a"] * 50})


def test_markdown_table_and_forest_figure(tmp_path) -> None:
    probs, labels = scores(300, seed=16)
    site = ["a|b"] * 120 + ["c"] * 160 + ["d"] * 20
    groups = [f"p{i // 3}" for i in range(300)]
    report = subgroup_report(probs, labels, "binary-class", {"site": site}, groups=groups, threshold=0.4,
                             n_resamples=50)
    text = subgroup_markdown(report)
    assert ("| subgroup | images | patients | prevalence | accuracy [CI] | balanced acc [CI] | AUC [CI] | sens [CI] "
            "| spec [CI] |") in text
    assert "| a\\|b | 120 | 40 | " in text and "| **all** | 300 | 100 | " in text  # a `|` cannot split the row
    assert text.count("- largest gap in ") == 5
    fig = forest_figure(report, "site", "auc")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a|b (n=120)", "c (n=160)", "d (n=20, too small)"]
    assert len(ax.containers) == 2  # a point and interval for each scored subgroup, none for the small one
    assert ax.lines[-1].get_xdata()[0] == pytest.approx(report["overall"]["metrics"]["auc"]["estimate"])
    assert save_figure(fig, tmp_path / "forest.png").stat().st_size > 0
    with pytest.raises(MedclassError, match="'sex'"):
        forest_figure(report, "sex")
