"""External validation (issue 29): class maps, many-to-one probability sums, and the one-line errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, roc_auc_score

from medclass.eval.external import (
    encode_labels,
    map_labels,
    map_probabilities,
    parse_class_map,
    scan_external,
    score_mapped,
)
from medclass.utils.errors import MedclassError

from .conftest import clean_tree

BRAIN = ["glioma", "meningioma", "notumor", "pituitary"]
COARSE = {"glioma": "tumour", "meningioma": "tumour", "pituitary": "tumour", "notumor": "none"}


def test_many_to_one_map_sums_probabilities() -> None:
    probs = np.array([[0.1, 0.2, 0.6, 0.1],    # none 0.6, tumour 0.1 + 0.2 + 0.1 = 0.4
                      [0.5, 0.3, 0.1, 0.1]])   # none 0.1, tumour 0.9
    mapped = map_probabilities(probs, BRAIN, parse_class_map(COARSE, BRAIN))
    np.testing.assert_allclose(mapped, [[0.6, 0.4], [0.1, 0.9]])  # columns: sorted labels none, tumour
    assert np.allclose(mapped.sum(1), 1.0)


def test_mapped_metrics_equal_sklearn_on_the_summed_probabilities() -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), 300)
    y = rng.integers(0, 2, 300)
    mapped = map_probabilities(probs, BRAIN, parse_class_map(COARSE, BRAIN))
    scored = score_mapped(mapped, y, ["none", "tumour"], 0, 0)
    assert scored["task"] == "binary-class"
    assert scored["metrics"]["accuracy"] == pytest.approx(accuracy_score(y, mapped.argmax(1)))
    assert scored["metrics"]["auc_macro_ovr"] == pytest.approx(roc_auc_score(y, mapped[:, 1]))


def test_internal_labels_are_mapped_like_the_probabilities() -> None:
    """The internal test split's class indices (glioma 0 … pituitary 3) become none 0 / tumour 1."""
    mapping = parse_class_map(COARSE, BRAIN)
    np.testing.assert_array_equal(map_labels(np.array([0, 1, 2, 3, 2]), BRAIN, mapping), [1, 1, 0, 1, 0])


def test_no_map_keeps_the_checkpoint_classes() -> None:
    assert parse_class_map(None, BRAIN) == {c: c for c in BRAIN}


@pytest.mark.parametrize(("class_map", "says"), [
    ({**COARSE, "astrocytoma": "tumour"}, "astrocytoma, not classes of this checkpoint"),
    ({k: v for k, v in COARSE.items() if k != "pituitary"}, "does not map pituitary"),
    ({**COARSE, "notumor": ""}, "gives notumor no external label"),
])
def test_a_class_that_cannot_be_mapped_is_one_error_line(class_map: dict, says: str) -> None:
    with pytest.raises(MedclassError, match=says) as err:
        parse_class_map(class_map, BRAIN)
    assert "\n" not in str(err.value)


def test_an_external_label_nothing_maps_onto_is_one_error_line(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "site_b", classes=("none", "tumour", "unsure"), per_class=3)
    scan = scan_external(root)
    with pytest.raises(MedclassError, match=r"'unsure' \(3 images\) is not an external label") as err:
        encode_labels(scan.labels, ["none", "tumour"], root)
    assert "\n" not in str(err.value) and "external.class_map" in str(err.value)


def test_external_root_must_be_a_folder_or_a_csv(tmp_path: Path) -> None:
    with pytest.raises(MedclassError, match="neither a folder of class folders nor a CSV"):
        scan_external(tmp_path / "missing")
