"""Issue 29 through the command line a user types: eval.py with subgroups, an abstention target, an external set
with a many-to-one class map and a model card; predict.py then refers the images below the saved threshold."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from .conftest import FAST, grey, run_script, save

CLASSES = ("glioma", "meningioma", "notumor")


def _manifest_set(root: Path) -> Path:
    """Three classes told apart by brightness (noisy), two sites, patients of two images each."""
    rows = []
    for c, name in enumerate(CLASSES):
        for i in range(40):
            path = f"img/{name}_{i}.png"
            save(root / path, grey(40 + 60 * c + (i % 5) * 8, seed=1000 * c + i))
            rows.append({"path": path, "label": name, "group": f"P{c}_{i // 2}", "site": "AB"[i % 2],
                         "age": str(20 + (i // 2) * 4)})
    with (root / "labels.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "label", "group", "site", "age"])
        writer.writeheader()
        writer.writerows(rows)
    return root / "labels.csv"


def _external_set(root: Path) -> Path:
    """Another site: coarser labels, tumour / none."""
    for label, levels in (("tumour", (40, 100)), ("none", (160,))):
        for i in range(12):
            save(root / label / f"x{i}.png", grey(levels[i % len(levels)], seed=7000 + i))
    return root


@pytest.fixture(scope="module")
def clinical_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    tmp = tmp_path_factory.mktemp("clinical")
    manifest = _manifest_set(tmp / "data")
    run = tmp / "run"
    proc = run_script("train.py", "data=manifest", f"data.manifest={manifest}", "data.image_size=20", *FAST,
                      "trainer.max_epochs=2", "trainer.limit_train_batches=null", "trainer.limit_val_batches=null",
                      "trainer.limit_test_batches=null", "logger=none", f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = Path(json.loads((run / "metrics.json").read_text())["run"]["best_checkpoint"])
    external = _external_set(tmp / "site_b")
    report = tmp / "report"
    proc = run_script("eval.py", f"ckpt_path={ckpt}", "subgroups=[site,age]", "subgroup_bins.age=[0,40,65,120]",
                      "subgroup_min_count=5",
                      "abstain.coverage=0.8", f"external.root={external}",
                      "external.class_map={glioma:tumour,meningioma:tumour,notumor:none}", "bootstrap=100",
                      f"hydra.run.dir={report}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt, report, external


def test_report_has_subgroups_selective_external_and_card(clinical_run: tuple[Path, Path, Path]) -> None:
    ckpt, report, _ = clinical_run
    data = json.loads((report / "report.json").read_text())
    sites = {row["value"]: row for row in data["subgroups"]["columns"]["site"]["subgroups"]}
    assert set(sites) == {"A", "B"} and data["subgroups"]["resampled"] == "patients"
    assert sum(row["n"] for row in sites.values()) == data["metrics"]["n"]
    ages = {row["value"] for row in data["subgroups"]["columns"]["age"]["subgroups"]}
    assert len(ages) >= 2 and ages <= {"[0, 40)", "[40, 65)", "[65, 120]"}  # binned as typed on the command line
    rows = list(csv.DictReader((report / "predictions.csv").open()))
    for site, row in sites.items():  # each subgroup's accuracy is that of its own predictions.csv rows
        mine = [int(r["correct"]) for r in rows if r["site"] == site]
        assert row["n"] == len(mine) and row["metrics"]["accuracy"]["estimate"] == pytest.approx(np.mean(mine))
    chosen = data["selective"]["chosen"]
    assert chosen["chosen_on"] == "val" and data["selective"]["applied"]["n"] == data["metrics"]["n"]
    operating = json.loads(ckpt.with_name(ckpt.stem + ".operating.json").read_text())
    assert operating["abstain"]["threshold"] == pytest.approx(chosen["threshold"])
    assert operating["abstain"]["target"] == "coverage" and operating["abstain"]["value"] == 0.8
    external = data["external"]
    assert external["classes"] == ["none", "tumour"] and external["external"]["images"] == 24
    assert external["internal_test"]["images"] == data["metrics"]["n"]
    ext_rows = list(csv.DictReader((report / "external_predictions.csv").open()))
    assert len(ext_rows) == 24 and all(abs(float(r["prob_none"]) + float(r["prob_tumour"]) - 1) < 1e-5
                                       for r in ext_rows)
    text = (report / "report.md").read_text()
    for heading in ("## Subgroups", "## Selective prediction", "## External validation"):
        assert heading in text
    for figure in ("forest_site", "forest_age", "risk_coverage"):
        assert (report / "figures" / f"{figure}.png").is_file(), figure
    card = (report / "model_card.md").read_text()
    split_key = json.loads((report / "metrics.json").read_text())["split_key"]
    assert split_key in card and f"{data['metrics']['accuracy']:.4f}" in card


def test_predict_refers_images_below_the_saved_threshold(clinical_run: tuple[Path, Path, Path],
                                                          tmp_path: Path) -> None:
    ckpt, _, external = clinical_run
    threshold = json.loads(ckpt.with_name(ckpt.stem + ".operating.json").read_text())["abstain"]["threshold"]
    proc = run_script("predict.py", f"ckpt_path={ckpt}", f"inputs={external}", "calibrated=false",
                      f"hydra.run.dir={tmp_path / 'pred'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = list(csv.DictReader((tmp_path / "pred" / "predictions.csv").open()))
    assert len(rows) == 24
    for row in rows:  # the uncalibrated confidence against the threshold chosen on validation
        assert (row["decision"] == "refer") == (float(row["confidence"]) < threshold - 1e-6), row
        assert row["decision"] in ("refer", row["class"])


def eval_options(tmp_path: Path, *overrides: str):
    from medclass.eval.options import EvalOptions

    from .conftest import compose_train

    return EvalOptions.from_config(compose_train(["ckpt_path=x.ckpt", *overrides], tmp_path, config_name="eval"))


def test_bootstrap_means_the_same_in_every_section(tmp_path: Path) -> None:
    """`bootstrap` is one option for every interval: 0 turns the subgroups' intervals off too (they once drew
    1000 resamples whatever it said), and a positive count is what the subgroups resample."""
    from medclass.eval.sections import subgroup_section

    rng = np.random.default_rng(0)
    labels = np.arange(80) % 2
    probs = np.stack([1 - (p := np.clip(labels * 0.6 + rng.random(80) * 0.4, 0, 1)), p], 1)
    rows = [{"site": "a" if i % 3 else "b"} for i in range(80)]
    info = {"task": "binary-class", "class_names": ["no", "yes"]}
    for count in (0, 50):
        opts = eval_options(tmp_path, f"bootstrap={count}", "subgroups=[site]", "subgroup_min_count=10")
        assert opts.bootstrap == count
        result, markdown, _ = subgroup_section(opts, {}, info, probs, labels, rows)
        accuracy = result["overall"]["metrics"]["accuracy"]
        assert result["resamples"] == count and (accuracy["low"] is None) == (count == 0)
        assert ("[" in markdown.split("| **all** |")[1].splitlines()[0]) == (count > 0)
        assert ("bootstrap=0: no intervals" in markdown) == (count == 0)


@pytest.mark.parametrize(("override", "message"), [
    ("bootstrap=-1", "bootstrap=-1: expected a whole number, at least 0"),
    ("ece_bins=0", "ece_bins=0: expected a whole number, at least 1"),
    ("operating_point.sensitivity=1.5", "operating_point.sensitivity=1.5 is not a number in (0, 1]"),
    ("abstain.accuracy=0", "abstain.accuracy=0 is not a number in (0, 1]"),
])
def test_a_bad_eval_option_is_one_line_naming_it(tmp_path: Path, override: str, message: str) -> None:
    from medclass.utils.errors import MedclassError

    with pytest.raises(MedclassError) as raised:
        eval_options(tmp_path, override)
    assert message in str(raised.value) and "\n" not in str(raised.value)
