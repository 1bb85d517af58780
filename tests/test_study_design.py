"""Study design (issue 20): manifests, patient-level (group) splits, k-fold cross-validation, gathering folds."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from medclass.data import FolderDataModule, ManifestDataModule
from medclass.data.splits import assign_splits, multilabel_strata
from medclass.tasks.evaluate import evaluate
from medclass.tasks.gather import load_runs, summarize, to_markdown
from medclass.tasks.train import train
from medclass.utils.errors import MedclassError

from .conftest import FAST, compose_train, grey, save

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def patients(n_patients: int = 30, per_patient: int = 4) -> tuple[list[str], list[str]]:
    """Labels and patient ids: each patient has one diagnosis and several images."""
    labels, groups = [], []
    for p in range(n_patients):
        for _ in range(per_patient):
            labels.append("sick" if p % 3 == 0 else "well")
            groups.append(f"P{p:03d}")
    return labels, groups


def splits_of_groups(groups: list[str], splits: list[str]) -> dict[str, set[str]]:
    seen: dict[str, set[str]] = defaultdict(set)
    for g, s in zip(groups, splits, strict=True):
        seen[g].add(s)
    return seen


def test_group_splits_never_divide_a_patient_and_keep_both_classes_everywhere() -> None:
    labels, groups = patients()
    splits = assign_splits(labels, (0.6, 0.2, 0.2), seed=0, groups=groups)
    assert all(len(s) == 1 for s in splits_of_groups(groups, splits).values())
    for name in ("train", "val", "test"):
        assert {lbl for lbl, s in zip(labels, splits, strict=True) if s == name} == {"sick", "well"}
    assert abs(splits.count("test") / len(splits) - 0.2) < 0.07  # as close as whole patients allow
    ungrouped = assign_splits(labels, (0.6, 0.2, 0.2), seed=0)
    assert any(len(s) > 1 for s in splits_of_groups(groups, ungrouped).values())  # what grouping prevents


def test_k_folds_partition_the_non_test_images_and_share_one_test_set() -> None:
    labels, groups = patients(40)
    runs = [assign_splits(labels, (0.8, 0.0, 0.2), seed=3, groups=groups, folds=5, fold=k) for k in range(5)]
    tests = [{i for i, s in enumerate(r) if s == "test"} for r in runs]
    assert all(t == tests[0] for t in tests) and tests[0]
    vals = [{i for i, s in enumerate(r) if s == "val"} for r in runs]
    assert all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])  # disjoint
    assert set().union(*vals) == set(range(len(labels))) - tests[0]  # cover every non-test image
    for r in runs:
        assert all(len(s) == 1 for s in splits_of_groups(groups, r).values())
    with pytest.raises(MedclassError, match="data.folds=5 data.fold=5"):
        assign_splits(labels, (0.8, 0.0, 0.2), seed=3, folds=5, fold=5)


def test_a_given_split_is_kept_and_blanks_are_drawn() -> None:
    labels = ["a", "b"] * 20
    given = ["test"] * 6 + ["val"] * 4 + [""] * 30
    splits = assign_splits(labels, (0.8, 0.1, 0.1), seed=0, given=given)
    assert splits[:6] == ["test"] * 6 and splits[6:10] == ["val"] * 4 and set(splits[10:]) == {"train"}
    with pytest.raises(MedclassError, match="split of item 0 is not one of"):
        assign_splits(labels, (0.8, 0.1, 0.1), seed=0, given=["holdout"] * 40)


def write_manifest(tmp: Path, rows: list[dict[str, str]], columns: tuple[str, ...]) -> Path:
    path = tmp / "study" / "labels.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    return path


def patient_images(tmp: Path, n_patients: int = 24, per_patient: int = 3, split: bool = False) -> Path:
    rows = []
    for p in range(n_patients):
        label = "sick" if p % 2 else "well"
        for k in range(per_patient):
            rel = f"images/P{p:03d}_{k}.png"
            save(tmp / "study" / rel, grey(60 + 100 * (p % 2), seed=1000 * p + k))
            rows.append({"path": rel, "label": label, "group": f"P{p:03d}", "site": f"site{p % 3}",
                         "split": ("test" if p < 4 else "") if split else ""})
    columns = ("path", "label", "group", "site", "split") if split else ("path", "label", "group", "site")
    return write_manifest(tmp, [{c: r[c] for c in columns} for r in rows], columns)


def module(tmp: Path, **kw) -> ManifestDataModule:
    return ManifestDataModule(image_size=16, num_workers=0, batch_size=8, split_dir=str(tmp / "splits"),
                              cache_dir=str(tmp / "cache"), **kw)


def test_manifest_with_groups_keeps_every_patient_in_one_split(tmp_path: Path) -> None:
    dm = module(tmp_path, manifest=str(patient_images(tmp_path)), split_fractions=(0.5, 0.25, 0.25))
    dm.setup()
    dm.write_split(tmp_path / "split.csv")
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    assert len(rows) == 72 and all(r["path"].startswith("images/P") for r in rows)
    assert all(r["group"] == r["path"][7:11] and r["site"] == f"site{int(r['group'][1:]) % 3}" for r in rows)
    by_patient = splits_of_groups([r["path"].split("/")[1][:4] for r in rows], [r["split"] for r in rows])
    assert all(len(s) == 1 for s in by_patient.values())
    assert dm.groups_across_splits == {"val_and_train": 0, "test_and_train": 0, "test_and_val": 0}
    assert dm.info.class_names == ["sick", "well"] and dm.info.split_key


def test_manifest_split_column_is_respected_and_leaks_are_counted(tmp_path: Path) -> None:
    manifest = patient_images(tmp_path, split=True)
    dm = module(tmp_path, manifest=str(manifest))
    dm.setup()
    dm.write_split(tmp_path / "split.csv")
    tests = {r["path"] for r in csv.DictReader((tmp_path / "split.csv").open()) if r["split"] == "test"}
    assert tests == {f"images/P{p:03d}_{k}.png" for p in range(4) for k in range(3)}
    text = manifest.read_text().replace("images/P006_0.png,well,P006,site0,", "images/P006_0.png,well,P006,site0,test")
    manifest.write_text(text)  # one image of patient P006 in test, the others drawn: a leak the check reports
    leaky = module(tmp_path, manifest=str(manifest))
    leaky.setup()
    assert leaky.groups_across_splits["test_and_train"] + leaky.groups_across_splits["test_and_val"] == 1


@pytest.mark.parametrize(("fault", "message"), [
    ("no_label_column", "has no column label"),
    ("missing_group", "line 3: empty 'group'"),
    ("empty_label", "line 3: no label"),
])
def test_bad_manifests_name_the_file_and_line(tmp_path: Path, fault: str, message: str) -> None:
    rows = [{"path": "a.png", "label": "x", "group": "P1"}, {"path": "b.png", "label": "y", "group": "P2"}]
    for r in rows:
        save(tmp_path / "study" / r["path"], grey(50, seed=len(r["label"]) + ord(r["label"])))
    columns: tuple[str, ...] = ("path", "label", "group")
    if fault == "no_label_column":
        columns = ("path", "group")
    elif fault == "missing_group":
        rows[1]["group"] = ""
    else:
        rows[1]["label"] = ""
    path = write_manifest(tmp_path, [{c: r[c] for c in columns} for r in rows], columns)
    with pytest.raises(MedclassError, match=message):
        module(tmp_path, manifest=str(path)).setup()


def test_group_by_regex_on_folder_file_names(tmp_path: Path) -> None:
    for p in range(20):
        for k in range(3):
            save(tmp_path / "data" / ("sick" if p % 2 else "well") / f"P{p:02d}_{k}.png", grey(80, seed=100 * p + k))
    dm = FolderDataModule(root=str(tmp_path / "data"), image_size=16, num_workers=0, group_by=r"(P\d+)_",
                          split_dir=str(tmp_path / "splits"), cache_dir=None, split_fractions=(0.6, 0.2, 0.2))
    dm.setup()
    dm.write_split(tmp_path / "split.csv")
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    by_patient = splits_of_groups([Path(r["path"]).name[:3] for r in rows], [r["split"] for r in rows])
    assert len(by_patient) == 20 and all(len(s) == 1 for s in by_patient.values())
    with pytest.raises(MedclassError, match="finds no group in"):
        FolderDataModule(root=str(tmp_path / "data"), group_by=r"^Q(\d+)", split_dir=str(tmp_path / "s2"),
                         cache_dir=None).setup()


def test_a_five_fold_sweep_gathers_into_one_row_over_folds(tmp_path: Path) -> None:
    """Five real runs, data.fold=0..4 of data.folds=5: one test set, five disjoint validation folds that cover every
    other image, whole patients in each; gather makes one row over 5 folds. Tiny images and network keep it fast."""
    folds = 5
    manifest = patient_images(tmp_path, n_patients=20, per_patient=2)
    for fold in range(folds):
        run = tmp_path / "sweep" / str(fold)
        cfg = compose_train(["data=manifest", f"data.manifest={manifest}", "data.image_size=16", f"data.folds={folds}",
                             f"data.fold={fold}", *FAST, *QUIET, "logger=none", "model.widths=[8,16]",
                             "model.hidden=16"], run)
        train(cfg)
        (run / ".hydra").mkdir(exist_ok=True)  # what a Hydra multirun leaves beside metrics.json
        (run / ".hydra" / "overrides.yaml").write_text(f"- data=manifest\n- data.folds={folds}\n- data.fold={fold}\n")
    splits = [list(csv.DictReader((tmp_path / "sweep" / str(f) / "split.csv").open())) for f in range(folds)]
    everything = {r["path"] for r in splits[0]}
    assert len(everything) == 40 and all({r["path"] for r in s} == everything for s in splits)
    tests = [{r["path"] for r in s if r["split"] == "test"} for s in splits]
    assert tests[0] and all(t == tests[0] for t in tests)
    vals = [{r["path"] for r in s if r["split"] == "val"} for s in splits]
    assert all(vals) and all(not (a & b) for i, a in enumerate(vals) for b in vals[i + 1:])  # pairwise disjoint
    assert set().union(*vals) == everything - tests[0]  # together, every image outside test
    for s in splits:
        assert all(len(v) == 1 for v in splits_of_groups([r["group"] for r in s], [r["split"] for r in s]).values())
    metrics = [json.loads((tmp_path / "sweep" / str(f) / "metrics.json").read_text()) for f in range(folds)]
    assert [(m["run"]["fold"], m["run"]["folds"]) for m in metrics] == [(f, folds) for f in range(folds)]
    rows = summarize(load_runs(tmp_path / "sweep"))
    assert len(rows) == 1 and rows[0]["runs"] == folds and rows[0]["over"] == "5 folds"
    accs = [m["test"]["test/acc"] for m in metrics]
    assert rows[0]["test/acc"] == pytest.approx(sum(accs) / folds)
    assert "| data=manifest data.folds=5 | 5 | 5 folds |" in to_markdown(rows)


def findings_manifest(tmp: Path, n_patients: int = 30) -> Path:
    """Multi-label rows: effusion (odd patients), nodule (every third), both, or none (an empty label)."""
    rows = []
    for p in range(n_patients):
        names = [n for n, present in (("nodule", p % 3 == 0), ("effusion", p % 2 == 1)) if present]
        for k in range(2):
            rel = f"img/P{p:02d}_{k}.png"
            save(tmp / "study" / rel, grey(40 + 60 * (p % 2) + 50 * (p % 3 == 0), seed=100 * p + k))
            rows.append({"path": rel, "label": ";".join(names), "group": f"P{p:02d}", "site": f"s{p % 2}"})
    return write_manifest(tmp, rows, ("path", "label", "group", "site"))


def test_multilabel_strata_spread_rare_findings_and_pool_singletons() -> None:
    # a: 5 rows, b: 2, c: 1. Each row is stratified by its rarest finding; c's stratum of one joins the largest
    labels = ["a;b", "a", "a", "a", "b", "", "", "c;a"]
    assert multilabel_strata(labels) == ["b", "a", "a", "a", "b", "", "", "a"]


def test_multilabel_manifest_trains_and_eval_writes_predictions_with_its_columns(tmp_path: Path) -> None:
    manifest = findings_manifest(tmp_path)
    with pytest.raises(MedclassError, match="line 6: no label"):  # an empty label needs multi_label=true
        module(tmp_path, manifest=str(manifest)).setup()
    labelled = manifest.with_name("labelled.csv")  # the same rows without the empty labels
    labelled.write_text("".join(line for line in manifest.open() if ".png,," not in line))
    with pytest.raises(MedclassError, match="line 6: the label names several classes .* but data.multi_label"):
        module(tmp_path, manifest=str(labelled), multi_label=False).setup()
    dm = module(tmp_path, manifest=str(manifest), multi_label=True, split_fractions=(0.6, 0.2, 0.2))
    dm.setup()
    assert dm.info.task == "multi-label" and dm.info.class_names == ["effusion", "nodule"]
    given = {r["path"]: r["label"] for r in csv.DictReader(manifest.open())}
    for split in ("train", "val", "test"):
        for item, y in zip(dm.split_items(split), dm._labels[split], strict=True):
            truth = given[item].split(";") if given[item] else []
            assert y.tolist() == [float("effusion" in truth), float("nodule" in truth)]
    dm.write_split(tmp_path / "split.csv")
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    assert all(r["label"] == ";".join(sorted(given[r["path"]].split(";"))) for r in rows if given[r["path"]])
    assert all(len(s) == 1 for s in splits_of_groups([r["group"] for r in rows], [r["split"] for r in rows]).values())
    assert {"effusion", "nodule", ""} <= {r["label"] for r in rows if r["split"] == "test"}  # rare ones reach test

    run = tmp_path / "run"
    metrics = train(compose_train(["data=manifest", f"data.manifest={manifest}", "data.multi_label=true",
                                   "data.image_size=16", *FAST, *QUIET], run))
    evaluate(compose_train([f"ckpt_path={metrics['run']['best_checkpoint']}", "bootstrap=0"], tmp_path / "eval",
                           config_name="eval"))
    scored = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    tests = [r for r in csv.DictReader((run / "split.csv").open()) if r["split"] == "test"]
    assert [r["path"] for r in scored] == [r["path"] for r in tests]  # every test image, in the split's order
    for row, truth in zip(scored, tests, strict=True):
        assert row["label"] == truth["label"] and row["group"] == truth["group"] and row["site"] == truth["site"]
        probs = {"effusion": float(row["prob_effusion"]), "nodule": float(row["prob_nodule"])}
        assert row["predicted"] == ";".join(n for n, p in probs.items() if p > 0.5)
        assert row["correct"] == str(int(row["predicted"] == row["label"]))
    # the run's test/auc (torchmetrics, macro over labels) is sklearn's ROC AUC of the scored probabilities
    truth = np.array([[float(n in r["label"].split(";")) for n in ("effusion", "nodule")] for r in scored])
    scores = np.array([[float(r["prob_effusion"]), float(r["prob_nodule"])] for r in scored])
    assert (truth.min(0) == 0).all() and (truth.max(0) == 1).all()  # both labels have positives and negatives
    assert metrics["test"]["test/auc"] == pytest.approx(roc_auc_score(truth, scores, average="macro"), abs=1e-4)


def test_manifest_takes_absolute_paths_and_stops_on_one_image_with_two_labels(tmp_path: Path) -> None:
    elsewhere = tmp_path / "pacs"
    rows = []
    for i in range(12):
        save(elsewhere / f"{i}.png", grey(60 + 120 * (i % 2), seed=i))
        rows.append({"path": str(elsewhere / f"{i}.png"), "label": "sick" if i % 2 else "well"})
    dm = module(tmp_path, manifest=str(write_manifest(tmp_path, rows, ("path", "label"))))
    assert sorted(r[0] for r in dm.rows()) == sorted(r["path"] for r in rows)  # absolute, outside the CSV's folder
    rows.append({"path": rows[0]["path"], "label": "sick"})  # image 0 again, under the other label
    with pytest.raises(MedclassError, match="the same image is in two classes"):
        module(tmp_path, manifest=str(write_manifest(tmp_path, rows, ("path", "label")))).setup()
