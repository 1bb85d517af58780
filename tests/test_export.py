"""export.py: ONNX with probabilities and a dynamic batch, parity with torch, prediction from the file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from medclass.module.checkpoint import load_classifier
from medclass.module.onnx import OnnxModel
from medclass.tasks.export import export_onnx
from medclass.tasks.predict import TorchModel, collect_inputs, predict_images, run_predict
from medclass.utils.errors import MedclassError

from .conftest import compose_train, grey, run_script
from .test_predict import CLASSES, tiny_classifier, train_tiny


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A tiny real checkpoint and its export by the real CLI."""
    tmp = tmp_path_factory.mktemp("export")
    ckpt = train_tiny(tmp)
    proc = run_script("export.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp / 'export'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return ckpt, tmp / "export", proc.stdout


def test_export_matches_torch_within_tolerance(exported: tuple[Path, Path, str]) -> None:
    """onnxruntime runs the file itself (no medclass wrapper) on batches of 7 and 1, and its output is compared
    here with the checkpoint's network in torch followed by softmax: the difference is measured by the test,
    not read from export.json."""
    import onnxruntime as ort

    ckpt, out, stdout = exported
    session = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"] and [o.name for o in session.get_outputs()] == [
        "probabilities"]
    module = load_classifier(ckpt).eval()
    info = module.hparams.data_info
    images = np.stack([grey(40 + 80 * (i % 3), size=16, seed=50 + i) for i in range(7)])  # the classes' looks
    x = torch.as_tensor((images[:, None] / 255 - info["mean"][0]) / info["std"][0], dtype=torch.float32)
    with torch.no_grad():
        expected = torch.softmax(module.net(x), dim=1).numpy()
    for batch in (x, x[:1]):
        got = session.run(None, {"image": batch.numpy()})[0]
        assert got.shape == (len(batch), len(CLASSES))
        np.testing.assert_allclose(got, expected[: len(batch)], atol=1e-5, rtol=0)
    assert np.ptp(expected, axis=0).max() > 100 * 1e-5  # the images differ in output far beyond the tolerance
    summary = json.loads((out / "export.json").read_text())
    assert Path(summary["onnx"]) == out / "model.onnx" and summary["max_abs_diff"] <= 1e-4
    assert "ONNX check: max abs difference of probabilities" in stdout
    meta = OnnxModel(out / "model.onnx").meta
    assert meta["class_names"] == list(CLASSES) and meta["image_size"] == 16 and meta["in_chans"] == 1


def test_predict_from_onnx_equals_predict_from_checkpoint(exported: tuple[Path, Path, str], tmp_path: Path) -> None:
    ckpt, out, _ = exported
    data = ckpt.parents[2] / "data"
    cfg = compose_train([f"onnx_path={out / 'model.onnx'}", f"inputs={data}"], tmp_path, config_name="predict")
    from_onnx = run_predict(cfg).records
    files, _ = collect_inputs(data)
    from_ckpt = predict_images(TorchModel(load_classifier(ckpt), tta="none"), files, batch_size=5).records
    assert len(from_onnx) == len(from_ckpt) == 3 * 8
    for a, b in zip(from_onnx, from_ckpt, strict=True):
        assert a["path"] == b["path"] and a["class"] == b["class"]
        assert np.allclose(list(a["probabilities"].values()), list(b["probabilities"].values()), atol=1e-4)


def onnx_and_torch(task: str, names: list[str], path: Path) -> tuple[np.ndarray, torch.Tensor]:
    """The exported file's output and the torch network's logits on the same random batch."""
    torch.manual_seed(0)
    module = tiny_classifier(task, names).eval()
    with torch.no_grad():  # spread the logits, so sigmoid and softmax give clearly different numbers
        module.net.head[-1].bias.copy_(torch.linspace(-2.0, 2.0, len(names)))
    export_onnx(module, path)
    x = torch.randn(6, 1, 16, 16, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = module.net(x)
    return OnnxModel(path)(x.numpy()), logits


def test_multi_label_export_ends_in_sigmoid(tmp_path: Path) -> None:
    probs, logits = onnx_and_torch("multi-label", ["effusion", "nodule", "mass"], tmp_path / "ml.onnx")
    assert probs.shape == (6, 3)
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy(), atol=1e-5, rtol=0)
    assert np.abs(probs.sum(1) - 1).min() > 0.1  # independent labels: no row is a distribution
    assert np.abs(probs - torch.softmax(logits, 1).numpy()).max() > 0.1


def test_single_label_export_ends_in_softmax(tmp_path: Path) -> None:
    probs, logits = onnx_and_torch("multi-class", ["a", "b", "c"], tmp_path / "mc.onnx")
    assert probs.shape == (6, 3)
    np.testing.assert_allclose(probs, torch.softmax(logits, 1).numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    assert np.abs(probs - torch.sigmoid(logits).numpy()).max() > 0.1


def test_onnx_errors_name_the_file_and_the_fix(tmp_path: Path) -> None:
    (tmp_path / "junk.onnx").write_bytes(b"not onnx")
    with pytest.raises(MedclassError, match="not a loadable ONNX model"):
        OnnxModel(tmp_path / "junk.onnx")
    with pytest.raises(MedclassError, match="export.py"):
        OnnxModel(tmp_path / "missing.onnx")
    cfg = compose_train(["onnx_path=x.onnx", "inputs=.", "cam=true"], tmp_path, config_name="predict")
    with pytest.raises(MedclassError, match="ckpt_path"):
        run_predict(cfg)


@pytest.mark.parametrize(("edit", "message"), [({"image_size": 30000}, r"image_size=30000: expected a whole number"),
                                               ({"thresholds": {"youden": float("nan")}}, r"thresholds.youden=nan"),
                                               ({"class_names": "${oc.env:HOME}"}, "interpolation")])
def test_an_onnx_files_metadata_is_read_as_data(exported: tuple[Path, Path, str], tmp_path: Path, edit: dict,
                                                message: str) -> None:
    """The metadata of a stranger's ONNX file goes through the checkpoint's schemas: no giant images, no NaN
    threshold, nothing that looks like an interpolation."""
    import onnx

    _, out, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    meta = {**json.loads(next(p.value for p in model.metadata_props if p.key == "medclass")), **edit}
    onnx.helper.set_model_props(model, {"medclass": json.dumps(meta)})
    onnx.save(model, str(tmp_path / "edited.onnx"))
    with pytest.raises(MedclassError, match=message):
        OnnxModel(tmp_path / "edited.onnx")
