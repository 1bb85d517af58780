"""Selective prediction (issue 29): the risk-coverage curve and its area, and a refer threshold chosen on validation."""

from __future__ import annotations

import io

import numpy as np
import pytest
from matplotlib.figure import Figure

from medclass.eval.selective import (
    apply_threshold,
    choose_threshold,
    confidence,
    is_correct,
    risk_coverage,
    risk_coverage_figure,
    selective_markdown,
    selective_prediction,
)
from medclass.utils.errors import MedclassError

# five images, most confident first: right, right, wrong, right, right. Answered accuracy of the k most
# confident: k=1 1, k=2 1, k=3 2/3, k=4 3/4, k=5 4/5 (not monotone: it dips and recovers)
STEP_CONF = np.array([0.95, 0.9, 0.8, 0.7, 0.6])
STEP_CORRECT = np.array([1, 1, 0, 1, 1], dtype=bool)


def calibrated(n: int, seed: int, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Softmax probabilities and labels drawn from them, so an image is right with probability its confidence:
    val and test of the same distribution."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, (n, k))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = (rng.random((n, 1)) > probs.cumsum(1)).sum(1)
    return probs, np.minimum(labels, k - 1)


def test_aurc_of_a_hand_worked_example() -> None:
    conf = np.array([0.7, 0.9, 0.6, 0.8])  # shuffled: the curve must sort by confidence, highest first
    correct = np.array([1, 1, 0, 0], dtype=bool)
    # ranked: 0.9 right, 0.8 wrong, 0.7 right, 0.6 wrong
    # selective risk of the k most confident: k=1 0/1, k=2 1/2, k=3 1/3, k=4 2/4
    # AURC = (0 + 1/2 + 1/3 + 1/2) / 4 = (4/3) / 4 = 1/3
    # perfect ranking of 2 errors in 4 (both last): risks 0, 0, 1/3, 2/4 -> (1/3 + 1/2) / 4 = 5/24
    # e-AURC = 1/3 - 5/24 = 3/24 = 1/8
    curve = risk_coverage(conf, correct)
    assert curve["threshold"] == [0.9, 0.8, 0.7, 0.6]
    assert curve["coverage"] == [0.25, 0.5, 0.75, 1.0]
    assert curve["risk"] == pytest.approx([0, 1 / 2, 1 / 3, 1 / 2])
    assert curve["aurc"] == pytest.approx(1 / 3)
    assert curve["aurc_optimal"] == pytest.approx(5 / 24)
    assert curve["eaurc"] == pytest.approx(1 / 8)
    # table: at least 95%, 90%, 80% of 4 images is all 4 (ceil 3.8, 3.6, 3.2); 70% is 3 (ceil 2.8); 50% is 2
    table = {row["target_coverage"]: row for row in curve["table"]}
    assert [table[c]["answered"] for c in (1.0, 0.95, 0.9, 0.8, 0.7, 0.5)] == [4, 4, 4, 4, 3, 2]
    assert table[0.7]["threshold"] == 0.7 and table[0.7]["accuracy"] == pytest.approx(2 / 3)
    assert table[0.5]["threshold"] == 0.8 and table[0.5]["accuracy"] == pytest.approx(1 / 2)


def test_aurc_is_the_mean_selective_risk_over_every_k_without_ties() -> None:
    rng = np.random.default_rng(3)
    conf, correct = rng.random(300), rng.random(300) < 0.7
    ranked = correct[np.argsort(-conf)]
    mean_risk = np.mean([1 - ranked[:k].mean() for k in range(1, 301)])
    assert risk_coverage(conf, correct)["aurc"] == pytest.approx(mean_risk, abs=1e-12)


def test_tied_confidences_are_answered_or_referred_together() -> None:
    conf = np.array([0.5, 0.9, 0.5, 0.9, 0.5])
    correct = np.array([1, 1, 0, 0, 1], dtype=bool)
    # two steps only: the two 0.9s (1 error: risk 1/2), then all five (2 errors: risk 2/5)
    # AURC = (2 * 1/2 + 3 * 2/5) / 5 = (1 + 6/5) / 5 = 11/25
    curve = risk_coverage(conf, correct)
    assert curve["coverage"] == [0.4, 1.0] and curve["threshold"] == [0.9, 0.5]
    assert curve["risk"] == pytest.approx([1 / 2, 2 / 5])
    assert curve["aurc"] == pytest.approx(11 / 25)
    chosen = choose_threshold(conf, correct, coverage=0.2)  # one image would do, but its tie comes with it
    assert chosen["threshold"] == 0.9 and chosen["val_coverage"] == 0.4
    applied = apply_threshold(conf, correct, chosen["threshold"])
    assert (applied["answered"], applied["referred"], applied["accuracy"]) == (2, 3, 0.5)


def test_threshold_is_chosen_on_validation_and_applied_unchanged_to_test() -> None:
    val, test, other_test, other_val = (calibrated(20000, seed) for seed in (1, 2, 3, 4))
    out = selective_prediction(*test, "multi-class", val=val, coverage=0.9)
    chosen, applied = out["chosen"], out["applied"]
    alone = choose_threshold(confidence(val[0], "multi-class"), is_correct(*val, "multi-class"), coverage=0.9)
    assert chosen == alone and chosen["chosen_on"] == "val" and chosen["reached"]
    assert chosen["val_coverage"] == 0.9  # 18000 of 20000, no ties among continuous confidences
    # a function of validation only: other test images, same threshold; other validation images, another
    assert selective_prediction(*other_test, "multi-class", val=val, coverage=0.9)["chosen"] == chosen
    assert selective_prediction(*test, "multi-class", val=other_val, coverage=0.9)["chosen"] != chosen
    # applied unchanged: what test answers is exactly confidence >= the validation threshold, about 90% of it
    kept = test[0].max(1) >= chosen["threshold"]
    assert applied["threshold"] == chosen["threshold"] and applied["coverage"] == kept.mean()
    assert applied["coverage"] == pytest.approx(0.9, abs=0.01)  # binomial sd of the share is 0.002
    assert applied["accuracy"] == (test[0].argmax(1) == test[1])[kept].mean()
    assert out["curve"]["n"] == 20000 and out["curve"]["aurc"] < out["curve"]["errors"] / 20000  # ranks help


def test_target_coverage_keeps_the_fewest_images_that_make_the_share() -> None:
    conf, correct = np.arange(1, 101) / 100, np.ones(100, dtype=bool)  # 0.01 .. 1.00, all distinct
    # 0.07 * 100 is 7.000000000000001 in floating point (0.55 * 100 likewise): still 7 (55) images, not 8 (56)
    chosen = choose_threshold(conf, correct, coverage=0.07)
    assert chosen["val_coverage"] == 0.07 and chosen["threshold"] == 0.94
    assert choose_threshold(conf, correct, coverage=0.55)["val_coverage"] == 0.55
    assert choose_threshold(conf, correct, coverage=0.555)["val_coverage"] == 0.56  # at least the share
    assert [row["answered"] for row in risk_coverage(conf, correct)["table"]] == [100, 95, 90, 80, 70, 50]


def test_target_accuracy_keeps_the_largest_coverage_that_reaches_it() -> None:
    # 0.78: only all five images (4/5) reach it, though three and four do not; 0.85: the top two
    chosen = choose_threshold(STEP_CONF, STEP_CORRECT, accuracy=0.78)
    assert (chosen["threshold"], chosen["val_coverage"], chosen["val_accuracy"]) == (0.6, 1.0, 0.8)
    chosen = choose_threshold(STEP_CONF, STEP_CORRECT, accuracy=0.85)
    assert (chosen["threshold"], chosen["val_coverage"], chosen["val_accuracy"]) == (0.9, 0.4, 1.0)
    assert chosen["target"] == {"accuracy": 0.85} and chosen["reached"]


def test_target_accuracy_099_on_a_large_validation_set() -> None:
    rng = np.random.default_rng(5)
    conf = rng.uniform(0.5, 1, 20000)
    correct = rng.random(20000) < conf  # right as often as it is confident
    chosen = choose_threshold(conf, correct, accuracy=0.99)
    t = chosen["threshold"]
    assert chosen["reached"] and correct[conf >= t].mean() >= 0.99
    assert chosen["val_accuracy"] == correct[conf >= t].mean() and chosen["val_coverage"] == (conf >= t).mean()
    next_lower = conf[conf < t].max()
    assert correct[conf >= next_lower].mean() < 0.99
    ranked = correct[np.argsort(-conf)]  # no threshold below t reaches 0.99 either: t gives the largest coverage
    accuracy_of_top_k = ranked.cumsum() / np.arange(1, 20001)
    assert np.flatnonzero(accuracy_of_top_k >= 0.99).max() + 1 == (conf >= t).sum()


def test_an_unreachable_accuracy_is_reported_not_raised() -> None:
    conf, correct = np.array([0.9, 0.8, 0.7]), np.array([0, 1, 0], dtype=bool)  # accuracies 0, 1/2, 1/3
    chosen = choose_threshold(conf, correct, accuracy=0.99)
    assert not chosen["reached"]
    assert (chosen["threshold"], chosen["val_coverage"], chosen["val_accuracy"]) == (0.9, 1 / 3, 0.0)
    text = selective_markdown(risk_coverage(conf, correct), chosen, apply_threshold(conf, correct, 0.9))
    assert "not reached on validation" in text


def test_apply_threshold_answers_at_or_above_it() -> None:
    conf, correct = np.array([0.9, 0.8, 0.8, 0.3]), np.array([1, 1, 0, 0], dtype=bool)
    applied = apply_threshold(conf, correct, 0.8)  # both 0.8s are answered: >=, not >
    assert applied == {"threshold": 0.8, "n": 4, "answered": 3, "referred": 1, "coverage": 0.75,
                       "accuracy": pytest.approx(2 / 3), "referred_accuracy": 0.0}
    assert apply_threshold(conf, correct, 0.95)["accuracy"] is None  # nothing answered


@pytest.mark.parametrize(("accuracy", "coverage", "message"), [
    (0.99, 0.9, "both given"), (None, None, "neither given"), (1.5, None, "abstain.accuracy=1.5"),
    (None, 0, "abstain.coverage=0"), (True, None, "abstain.accuracy=True"), (None, "0.9", "abstain.coverage='0.9'"),
])
def test_one_target_in_range_or_a_clear_error(accuracy: object, coverage: object, message: str) -> None:
    with pytest.raises(MedclassError, match=message) as error:
        choose_threshold(STEP_CONF, STEP_CORRECT, accuracy=accuracy, coverage=coverage)  # type: ignore[arg-type]
    assert "\n" not in str(error.value)
    if message.endswith("given"):
        assert "abstain.accuracy" in str(error.value) and "abstain.coverage" in str(error.value)


def test_confidence_is_the_predicted_class_probability_and_multi_label_is_refused() -> None:
    binary = np.array([[0.2, 0.8], [0.6, 0.4], [0.45, 0.55]])
    assert confidence(binary, "binary-class").tolist() == [0.8, 0.6, 0.55]
    assert is_correct(binary, np.array([1, 1, 1]), "binary-class").tolist() == [True, False, True]
    assert confidence(np.array([[0.1, 0.7, 0.2]]), "multi-class").tolist() == [0.7]
    multi_label = np.array([[0.9, 0.8], [0.1, 0.6]])
    with pytest.raises(MedclassError, match="multi-label"):
        confidence(multi_label, "multi-label")
    with pytest.raises(MedclassError, match="multi-label"):
        selective_prediction(multi_label, np.array([[1, 1], [0, 1]]), "multi-label")
    with pytest.raises(MedclassError, match="validation"):  # never chosen on the split it scores
        selective_prediction(binary, np.array([1, 1, 1]), "binary-class", coverage=0.9)


def test_figure_and_markdown_show_the_operating_point() -> None:
    curve = risk_coverage(STEP_CONF, STEP_CORRECT)
    chosen = choose_threshold(STEP_CONF, STEP_CORRECT, accuracy=0.85)
    applied = apply_threshold(STEP_CONF, STEP_CORRECT, chosen["threshold"])
    fig = risk_coverage_figure(curve, applied)
    assert isinstance(fig, Figure)
    marker = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"]
    assert [(line.get_xdata()[0], line.get_ydata()[0]) for line in marker] == [(0.4, 0.0)]
    fig.savefig(io.BytesIO(), format="png")
    text = selective_markdown(curve, chosen, applied)
    # 0.95 r, 0.9 r, 0.8 w, 0.7 r, 0.6 r: risks 0, 0, 1/3, 1/4, 1/5 -> AURC (1/3 + 1/4 + 1/5) / 5 = 47/300
    assert f"AURC {47 / 300:.4f}" in text
    assert "| 0.6000 (≥ 0.5) | 0.8000 | 3 | 0.6667 |" in text
    assert ("Threshold 0.9000 chosen on validation for target accuracy ≥ 0.85 (validation: coverage 0.4000, "
            "accuracy 1.0000): test coverage 0.4000, accuracy 1.0000, 3 of 5 referred") in text
