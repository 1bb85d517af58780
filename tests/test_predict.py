"""predict.py: a folder with bad files, one file, a glob, Grad-CAM overlays, multi-label, the Python API."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import timm
import torch
import torchvision
from PIL import Image

from medclass.data import registry as data_registry
from medclass.eval.explain import target_layer
from medclass.module import Classifier
from medclass.module.checkpoint import load_classifier
from medclass.tasks.predict import (
    TorchModel,
    collect_inputs,
    predict_image,
    predict_images,
    run_predict,
)
from medclass.tasks.prediction_files import write_outputs
from medclass.utils.errors import MedclassError

from .conftest import FAST, clean_tree, compose_train, run_script, save

CLASSES = ("a", "b", "c")
TINY = [*FAST, "data=folder", "data.image_size=16", "model.widths=[8,16]", "model.hidden=16", "logger=none",
        "trainer.max_epochs=2"]


def train_tiny(tmp: Path) -> Path:
    """A real checkpoint from the real CLI: 3 classes of 20 px grey images, a two-block CNN, seconds."""
    root = clean_tree(tmp / "data", classes=CLASSES, per_class=8)
    proc = run_script("train.py", *TINY, f"data.root={root}", f"hydra.run.dir={tmp / 'run'}",
                      f"paths.log_dir={tmp / 'outputs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return tmp / "run" / "checkpoints" / "last.ckpt"


def messy_inputs(root: Path) -> Path:
    """The training images, one larger RGB image, and three files no one can read."""
    clean_tree(root, classes=CLASSES, per_class=8)
    save(root / "c" / "wide.png", np.full((24, 30, 3), 200, np.uint8))
    (root / "a" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    (root / "b" / "empty.png").write_bytes(b"")
    (root / "README.txt").write_text("about these scans")
    return root


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def folder_run(ckpt: Path) -> tuple[Path, str]:
    """predict.py over a messy folder with Grad-CAM, as a user runs it."""
    tmp = ckpt.parents[2]
    inputs = messy_inputs(tmp / "inputs")
    out = tmp / "pred"
    proc = run_script("predict.py", f"ckpt_path={ckpt}", f"inputs={inputs}", "cam=true", "k=2",
                      f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def rows(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def predict_cfg(ckpt: Path, inputs: str, out: Path, **kw: object) -> object:
    cfg = compose_train([f"ckpt_path={ckpt}", f"inputs={inputs}", *(f"{k}={v}" for k, v in kw.items())], out,
                        config_name="predict")
    return cfg


def test_folder_with_bad_files_lists_them_and_predicts_the_rest(folder_run: tuple[Path, str]) -> None:
    out, log = folder_run
    predictions = rows(out / "predictions.csv")
    assert len(predictions) == 3 * 8 + 1
    payload = json.loads((out / "predictions.json").read_text())
    assert payload["count"] == len(payload["predictions"]) == len(predictions)
    assert payload["class_names"] == list(CLASSES)  # the training folders' names
    for row, record in zip(predictions, payload["predictions"], strict=True):
        assert row["path"] == record["path"] and row["class"] == record["class"] in CLASSES
        assert float(row["confidence"]) == record["confidence"] == record["top_k"][0]["probability"]
        assert len(record["top_k"]) == 2 and abs(sum(record["probabilities"].values()) - 1) < 1e-4
    reasons = {Path(r["path"]).name: r["reason"] for r in rows(out / "skipped.csv")}
    assert reasons["README.txt"].startswith("not an image") and reasons["empty.png"] == "empty file"
    assert reasons["corrupt.png"].startswith("unreadable image") and len(reasons) == 3
    assert "skipped 3 files" in log


def test_gradcam_overlays_have_the_image_size(folder_run: tuple[Path, str]) -> None:
    out, _ = folder_run
    records = json.loads((out / "predictions.json").read_text())["predictions"]
    assert len(list((out / "cam").glob("*.png"))) == len(records)
    for record in records:
        with Image.open(record["path"]) as source, Image.open(record["cam"]) as cam:
            assert cam.size == source.size and cam.mode == "RGB"


def test_single_file_glob_and_python_api(ckpt: Path, tmp_path: Path) -> None:
    inputs = ckpt.parents[2] / "data"  # the training tree: exists without the folder_run fixture
    result = run_predict(predict_cfg(ckpt, str(inputs / "b" / "img3.png"), tmp_path / "one"))
    assert [Path(r["path"]).name for r in result.records] == ["img3.png"] and not result.skipped
    result = run_predict(predict_cfg(ckpt, f"'{inputs}/*/img1.png'", tmp_path / "glob", k=5))
    assert sorted(Path(r["path"]).parent.name for r in result.records) == list(CLASSES)
    assert len(rows(tmp_path / "glob" / "predictions.csv")) == 3
    assert all(len(r["top_k"]) == 3 for r in result.records)  # k is capped at the number of classes


def test_a_csv_of_inputs_carries_its_columns_beside_each_prediction(ckpt: Path, tmp_path: Path) -> None:
    data = ckpt.parents[2] / "data"
    listing = tmp_path / "new_patients.csv"
    listing.write_text("path,patient,class\n"  # `class` collides with predict's own column: kept as input_class
                       f"{data / 'a' / 'img1.png'},P1,a\n"
                       f"{data / 'c' / 'img2.png'},P2,c\n")
    run_predict(predict_cfg(ckpt, str(listing), tmp_path / "out"))
    got = rows(tmp_path / "out" / "predictions.csv")
    assert [(Path(r["path"]).parent.name, r["patient"], r["input_class"]) for r in got] == [("a", "P1", "a"),
                                                                                             ("c", "P2", "c")]
    assert all(r["class"] in CLASSES for r in got)  # the prediction itself is not overwritten
    listing.write_text("file,patient\nx.png,P1\n")
    with pytest.raises(MedclassError, match="has no `path` column"):
        run_predict(predict_cfg(ckpt, str(listing), tmp_path / "bad"))


def training_pipeline_probabilities(ckpt: Path) -> dict[Path, torch.Tensor]:
    """Softmax of the checkpoint's network on every image as the training data pipeline prepared it
    (the checkpoint's own data config, evaluation transform), computed here without medclass.tasks.predict."""
    module = load_classifier(ckpt).eval()
    info = module.hparams.data_info
    dm = data_registry.build(module.hparams.data_cfg, mean=info["mean"], std=info["std"], in_chans=info["in_chans"],
                             split_dir=str(ckpt.parents[1] / "splits"), cache_dir=None)
    dm.setup()
    out = {}
    for split in ("train", "val", "test"):
        paths = [dm.root / r[0] for r in dm.rows() if r[2] == split]  # relative to the root, or absolute
        x = torch.stack([dm.datasets[split][i][0] for i in range(len(paths))])
        with torch.no_grad():
            probs = torch.softmax(module(x), dim=-1)
        out.update(zip(paths, probs, strict=True))
    return out


def test_predicted_probabilities_are_the_networks_softmax_on_the_training_preprocessing(ckpt: Path) -> None:
    """predict_image scores a file exactly as the checkpoint scores it inside its data set."""
    reference = training_pipeline_probabilities(ckpt)
    module = load_classifier(ckpt)
    images = [ckpt.parents[2] / "data" / c / f"img{i}.png" for c in CLASSES for i in (0, 5)]
    for path in images:
        record = predict_image(module, path)
        expected = reference[path]
        assert list(record["probabilities"].values()) == pytest.approx(expected.tolist(), abs=1e-6), path
        assert record["class"] == CLASSES[int(expected.argmax())]
        assert record["confidence"] == pytest.approx(float(expected.max()), abs=1e-6)
    # the comparison has teeth: another image's probabilities lie far outside the tolerance (a record
    # scored from the wrong image, or from a differently normalized one, would not match)
    first = [reference[ckpt.parents[2] / "data" / c / "img0.png"] for c in CLASSES]
    assert min(float((a - b).abs().max()) for a, b in ((first[0], first[1]), (first[1], first[2]))) > 1e-4


def test_no_readable_image_is_one_clear_error(ckpt: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (bad / "notes.txt").write_text("x")
    with pytest.raises(MedclassError, match="none of the 2 files"):
        run_predict(predict_cfg(ckpt, str(bad), tmp_path / "out"))
    assert len(rows(tmp_path / "out" / "skipped.csv")) == 2
    with pytest.raises(MedclassError, match="no file, folder or glob"):
        collect_inputs(tmp_path / "nowhere")
    with pytest.raises(MedclassError, match="exactly one of"):
        run_predict(predict_cfg(ckpt, str(bad), tmp_path / "out", onnx_path="x.onnx"))


def tiny_classifier(task: str, names: list[str]) -> Classifier:
    info = {"task": task, "class_names": names, "in_chans": 1, "image_size": 16, "mean": [0.5], "std": [0.25]}
    net = {"_target_": "medclass.model.SimpleCNN", "widths": [4, 8], "hidden": 8}
    return Classifier(net=net, data_info=info, optimizer={"_target_": "torch.optim.Adam", "_partial_": True})


def test_multi_label_gives_per_label_probabilities_and_labels(tmp_path: Path) -> None:
    clean_tree(tmp_path / "in", per_class=2)
    files, _ = collect_inputs(tmp_path / "in")
    model = tiny_classifier("multi-label", ["effusion", "nodule", "mass"])
    with torch.no_grad():
        model.net.head[-1].bias.copy_(torch.tensor([5.0, -5.0, 5.0]))  # two labels on, one off
        model.net.head[-1].weight.zero_()
    result = predict_images(model, files, batch_size=3)
    assert len(result.records) == 4
    for record in result.records:
        assert record["labels"] == ["effusion", "mass"] and sum(record["probabilities"].values()) > 1.5
    write_outputs(tmp_path / "out", result, TorchModel(model).meta, {})
    assert rows(tmp_path / "out" / "predictions.csv")[0]["labels"] == "effusion;mass"


def test_tta_option_is_checked() -> None:
    model = tiny_classifier("multi-class", ["x", "y"])
    assert TorchModel(model, tta="shift").module.tta == "shift"
    with pytest.raises(MedclassError, match="tta"):
        TorchModel(model, tta="sometimes")


def test_gradcam_target_layer_is_the_last_conv_stage() -> None:
    cnn = tiny_classifier("multi-class", ["x", "y"]).net
    assert target_layer(cnn) is cnn.features
    assert target_layer(cnn, "features.0") is cnn.features[0]
    resnet = timm.create_model("resnet18", num_classes=2)
    assert target_layer(resnet) is resnet.layer4
    tv = torchvision.models.resnet18(num_classes=2)
    assert target_layer(tv) is tv.layer4
    with pytest.raises(MedclassError, match="cam_layer=nosuch"):
        target_layer(cnn, "nosuch")


@pytest.mark.parametrize("shape", [(28, 28), (28, 28, 1), (28, 28, 3), (17, 23, 3)])
def test_predicts_normalization_is_the_evaluation_transforms_bit_for_bit(shape: tuple[int, ...]) -> None:
    """predict.py normalizes without importing Albumentations (`augment.normalize.to_input`): the tensors must be
    exactly those of eval_transform, or predictions would drift from what eval.py measured."""
    from medclass.augment import eval_transform
    from medclass.augment.normalize import to_input

    image = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    chans = shape[2] if len(shape) == 3 else 1
    mean, std = [0.5, 0.4, 0.3][:chans], [0.2, 0.25, 0.3][:chans]
    expected = eval_transform(None, mean, std)(image=image)["image"]
    assert torch.equal(to_input(image, mean, std), expected.reshape(chans, *shape[:2]))
