"""Model files as data (issue 25): the registry round trip of every shipped network, the pickle-free
safetensors export, the schema's limits, the one writer, and CSV cells that cannot become formulas."""

from __future__ import annotations

import csv
import json
import os
import stat
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torch.utils.data import DataLoader, TensorDataset

from medclass.module.checkpoint import load_classifier, load_network, read_hparams
from medclass.module.hparams import validate
from medclass.tasks.evaluate import evaluate
from medclass.tasks.predict import run_predict
from medclass.tasks.train import train
from medclass.utils import schema
from medclass.utils.errors import MedclassError
from medclass.utils.io import atomic_open, read_cell, safe_cell, write_csv, write_text

from .conftest import CONF, FAST, compose_train, grey, run_script, save

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
SLOW_MODELS = {"vgg16", "resnet50"}  # 138 M and 25 M parameters: a step and a save take long on 2 cores


# -- every shipped network survives save and load through the registry ------------------------------
@pytest.mark.parametrize("option", [pytest.param(p.stem, marks=pytest.mark.slow) if p.stem in SLOW_MODELS
                                    else p.stem for p in sorted((CONF / "model").glob("*.yaml"))])
def test_every_shipped_model_trains_a_step_saves_and_loads_with_identical_logits(tmp_path: Path,
                                                                                 option: str) -> None:
    cfg = compose_train([f"model={option}", *([] if option == "cnn" else ["model.pretrained=false"])], tmp_path)
    info = {"task": "multi-class", "class_names": ["a", "b", "c"], "in_chans": 3, "image_size": 32,
            "mean": [0.5] * 3, "std": [0.25] * 3, "symmetry": "sided", "split_key": "k", "class_counts": [2, 1, 1],
            "train_size": 4}
    module = instantiate(cfg.module, data_info=info, data_cfg=OmegaConf.to_container(cfg.data, resolve=True))
    x, y = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([0, 1, 2, 0])
    trainer = L.Trainer(max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu")
    trainer.fit(module, DataLoader(TensorDataset(x, y), batch_size=4))
    trainer.save_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    description = read_hparams(tmp_path / "m.ckpt")
    assert description["net"]["arch"] in ("cnn", "timm") and "_target_" not in description["net"]
    loaded = load_classifier(tmp_path / "m.ckpt").eval()
    network = load_network(tmp_path / "m.ckpt").eval()  # predict.py's reader, without Lightning
    with torch.inference_mode():
        assert torch.equal(loaded(x), module.eval()(x))
        assert torch.equal(network.predict_proba(x), loaded.predict_proba(x))


@pytest.mark.parametrize("module_options", [[], ["module.class_weights=balanced"],
                                            ["module.loss=focal", "module.class_weights=balanced"],
                                            ["model=resnet18", "model.pretrained=false",
                                             "module.freeze_layers=[layer1]"]])
@pytest.mark.parametrize("task", ["multi-class", "multi-label"])
def test_the_lightning_free_network_has_the_classifiers_state_dict(tmp_path: Path, module_options: list[str],
                                                                   task: str) -> None:
    """`Network` (predict.py, the model-file checks) must load exactly what a Classifier saves: the same names,
    shapes and dtypes, class-weight buffers of the loss included, or a file would pass one and fail the other."""
    from medclass.module.network import Network

    cfg = compose_train(module_options, tmp_path)
    info = {"task": task, "class_names": ["a", "b", "c"], "in_chans": 1, "image_size": 28, "mean": [0.5],
            "std": [0.25], "symmetry": "sided", "split_key": "k", "class_counts": [2, 1, 1], "train_size": 4}
    module = instantiate(cfg.module, data_info=info, data_cfg=OmegaConf.to_container(cfg.data, resolve=True))
    description = validate(dict(module.hparams), "the module's description")
    expected = {name: (t.shape, t.dtype) for name, t in module.state_dict().items()}
    assert {name: (t.shape, t.dtype) for name, t in Network(description).state_dict().items()} == expected
    assert any(name.startswith("loss.") for name in expected) == ("module.class_weights=balanced" in module_options)


# -- the pickle-free export --------------------------------------------------------------------------
def test_safetensors_export_predicts_what_the_checkpoint_predicts(blood_run: Path, tmp_path: Path) -> None:
    """`export.py format=safetensors` on the command line, then predict on both files: same probabilities."""
    ckpt = next((blood_run / "checkpoints").glob("best-*.ckpt"))
    proc = run_script("export.py", f"ckpt_path={ckpt}", "format=safetensors", f"hydra.run.dir={tmp_path / 'x'}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    weights, description = tmp_path / "x" / "model.safetensors", tmp_path / "x" / "model.json"
    assert weights.is_file() and json.loads(description.read_text())["hyper_parameters"]["net"]["arch"] == "cnn"
    assert weights.read_bytes()[8:9] == b"{"  # a JSON header, then raw tensors: nothing that unpickles
    images = tmp_path / "images"
    for i in range(6):
        save(images / f"{i}.png", np.stack([grey(40 * i, size=28, seed=i)] * 3, -1))
    probs = []
    for name, model in (("ckpt", ckpt), ("safetensors", weights)):
        cfg = compose_train([f"ckpt_path={model}", f"inputs={images}", "progress=false"], tmp_path / name,
                            config_name="predict")
        probs.append(np.array([list(r["probabilities"].values()) for r in run_predict(cfg).records]))
    assert np.abs(probs[0] - probs[1]).max() <= 1e-6


def test_eval_takes_a_safetensors_export(blood_run: Path, tmp_path: Path) -> None:
    ckpt = next((blood_run / "checkpoints").glob("best-*.ckpt"))
    from medclass.tasks.export import run_export

    run_export(compose_train([f"ckpt_path={ckpt}", "format=safetensors", f"output={tmp_path / 'm.safetensors'}"],
                             tmp_path / "x", config_name="export"))
    # an export carries no seal (medclass.untrusted.seal): its data paths are named by the user, as for any shared file
    root = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["data_cfg"]["root"]
    results = [evaluate(compose_train([f"ckpt_path={path}", *extra, "bootstrap=0", "report=false"], tmp_path / name,
                                      config_name="eval"))["test"]
               for name, path, extra in (("a", ckpt, []), ("b", tmp_path / "m.safetensors", [f"data.root={root}"]))]
    assert results[0] == results[1]
    (tmp_path / "m.json").write_text((tmp_path / "m.json").read_text().replace('"arch": "cnn"', '"arch": "evil"'))
    with pytest.raises(MedclassError, match=r"m.json: net.arch='evil' is not a registered network"):
        load_classifier(tmp_path / "m.safetensors")


def test_export_format_and_output_suffix_are_checked(blood_run: Path, tmp_path: Path) -> None:
    from medclass.tasks.export import run_export

    ckpt = next((blood_run / "checkpoints").glob("best-*.ckpt"))
    for args, message in ((["format=pickle"], "format=pickle is not one of onnx, safetensors"),
                          (["format=safetensors", "output=m.onnx"], "a safetensors file ends in .safetensors")):
        with pytest.raises(MedclassError, match=message):
            run_export(compose_train([f"ckpt_path={ckpt}", *args], tmp_path, config_name="export"))


# -- the schema ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("value", "message"), [
    ("a/b", "expected a plain name"), ("..", "expected a plain name"), ("x\x00y", "without control characters"),
    ("${a}", "interpolation"), (3, "expected a string")])
def test_names_that_could_leave_a_folder_or_resolve_are_refused(value: object, message: str) -> None:
    with pytest.raises(schema.Invalid, match=message):
        schema.name()(value, "data_cfg.name")


@pytest.mark.parametrize(("check", "value"), [(schema.integer(1, 4), True), (schema.integer(1, 4), 5),
                                              (schema.number(0, 1), float("nan")), (schema.number(0, 1), "0.5"),
                                              (schema.boolean, 1), (schema.plain(1), [[1]])])
def test_values_of_the_wrong_type_or_range_are_refused(check: schema.Check, value: object) -> None:
    with pytest.raises(schema.Invalid, match=r"x(\[0\])?=.*expected"):
        check(value, "x")


def test_an_edited_description_is_one_line_naming_the_key(blood_run: Path) -> None:
    ckpt = torch.load(next((blood_run / "checkpoints").glob("best-*.ckpt")), map_location="cpu", weights_only=True)
    good = ckpt["hyper_parameters"]
    assert validate(good, "x")["net"] == good["net"]
    for key, value, message in (("tta", "all", r"tta='all': expected one of none, auto, shift"),
                                ("class_weights", [1.0], "class_weights has 1 values for 8 classes"),
                                ("surprise", 1, "surprise is not a key medclass writes here")):
        with pytest.raises(schema.Invalid, match=message) as raised:
            validate({**good, key: value}, "checkpoint x")
        assert str(raised.value).startswith("checkpoint x: ") and "\n" not in str(raised.value)


# -- the one writer ------------------------------------------------------------------------------------
def test_a_link_at_the_target_is_replaced_not_followed(tmp_path: Path) -> None:
    victim, link = tmp_path / "bashrc", tmp_path / "out.json"
    victim.write_text("precious")
    link.symlink_to(victim)
    write_text(link, "{}")
    assert victim.read_text() == "precious" and not link.is_symlink() and link.read_text() == "{}"
    assert stat.S_IMODE(link.stat().st_mode) == 0o666 & ~_umask()  # not mkstemp's private 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "metrics.json"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half")
        raise RuntimeError("disk full")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


@pytest.mark.parametrize(("cell", "written"), [
    ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"), ("+cmd|' /C calc'!A0", "'+cmd|' /C calc'!A0"),
    ("-2+3", "'-2+3"), ("@SUM(A1)", "'@SUM(A1)"), ("\t=1", "'\t=1"), ("\r=1", "'\r=1"), ("'quoted", "''quoted"),
    ("-1.5", "-1.5"), ("+3e2", "+3e2"), ("plain", "plain"), (-1.5, -1.5), (7, 7)])
def test_formula_cells_are_neutralised_and_read_back_exactly(cell: object, written: object) -> None:
    assert safe_cell(cell) == written
    if isinstance(cell, str):
        assert read_cell(written) == cell


def test_written_csv_cells_are_neutralised_header_included(tmp_path: Path) -> None:
    write_csv(tmp_path / "t.csv", [{"=h": "=1+2", "n": 3}])
    assert (tmp_path / "t.csv").read_text().splitlines() == ["'=h,n", "'=1+2,3"]


def test_manifest_formulas_come_out_neutralised_in_split_and_prediction_files(tmp_path: Path) -> None:
    """Class names and columns of a stranger's manifest reach split.csv, eval's and predict's predictions.csv
    as text; the split file is read back to the same split (a second run reuses it)."""
    rows = []
    for i in range(16):
        label = "=1+2" if i % 2 else "@calm"
        save(tmp_path / "study" / f"img{i}.png", grey(60 + 100 * (i % 2), size=16, seed=i))
        rows.append({"path": f"img{i}.png", "label": label, "site": "+cmd|' /C calc'!A0", "age": "-3.5"})
    manifest = tmp_path / "study" / "labels.csv"
    with manifest.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    overrides = ["data=manifest", f"data.manifest={manifest}", "data.image_size=16", f"data.split_dir={tmp_path}",
                 *FAST, *QUIET]
    metrics = [train(compose_train(overrides, tmp_path / run)) for run in ("r1", "r2")]  # r2 reads r1's split file
    assert metrics[0]["data"]["split_key"] == metrics[1]["data"]["split_key"]
    assert (tmp_path / "r1" / "split.csv").read_text() == (tmp_path / "r2" / "split.csv").read_text()
    split = list(csv.DictReader((tmp_path / "r1" / "split.csv").open()))
    assert {r["label"] for r in split} == {"'=1+2", "'@calm"}
    assert {r["site"] for r in split} == {"'+cmd|' /C calc'!A0"} and {r["age"] for r in split} == {"-3.5"}
    ckpt = next((tmp_path / "r1" / "checkpoints").glob("best-*.ckpt"))
    evaluate(compose_train([f"ckpt_path={ckpt}", "bootstrap=0"], tmp_path / "eval", config_name="eval"))
    predicted = list(csv.DictReader((tmp_path / "eval" / "predictions.csv").open()))
    assert {r["label"] for r in predicted} <= {"'=1+2", "'@calm"} and predicted[0]["site"].startswith("'+")
    assert "prob_=1+2" in predicted[0]  # not at the start of its cell: no formula
    run_predict(compose_train([f"ckpt_path={ckpt}", f"inputs={manifest}", "progress=false"], tmp_path / "p",
                              config_name="predict"))
    rows_out = list(csv.DictReader((tmp_path / "p" / "predictions.csv").open()))
    assert rows_out[0]["site"].startswith("'+") and rows_out[0]["class"] in ("'=1+2", "'@calm")


def test_a_model_read_from_a_file_builds_no_optimizer(blood_run: Path) -> None:
    """Its optimizer config came from the file: fitting it is refused before anything is instantiated."""
    module = load_classifier(next((blood_run / "checkpoints").glob("best-*.ckpt")))
    with pytest.raises(MedclassError, match="a model read from a checkpoint is for evaluation and prediction"):
        module.configure_optimizers()


def test_a_regex_that_backtracks_is_stopped_by_the_time_limit() -> None:
    """The backstop behind the pattern check: Python's re has no timeout, but its loop sees the timer's signal."""
    import re
    import time

    from medclass.utils.limits import time_limit

    start = time.perf_counter()
    with pytest.raises(MedclassError, match="too slow"), time_limit(0.3, "too slow"):
        re.search(r"(.?){999}#", "a" * 40)
    assert time.perf_counter() - start < 5
