"""predict.py against a stranger's model file: memory bounded by a budget, outputs streamed, probabilities checked.

Issue 35 item 4 ("Inference"): a checkpoint may describe 100,000 classes or a 2048 px image with eight test-time
views while its weights stay small. The batch must shrink to fit `memory_mb` (or the command refuses in one line),
memory must not grow with images x classes, and probabilities that are not finite numbers in [0, 1] stop the run.
The attack builders below edit a real checkpoint the way tests/attacks.py does; the lead collects them into a table.
"""

from __future__ import annotations

import copy
import csv
import json
import logging
import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch

from medclass.module import Classifier
from medclass.tasks.predict import TorchModel, collect_inputs, predict_images, run_predict
from medclass.utils.errors import MedclassError

from .conftest import ROOT, compose_train, run_script, save


# -- attack builders (reusable: tools and the lead's table) ---------------------------------------------------
def load_base(ckpt: Path) -> dict[str, Any]:
    """A real checkpoint's content, as a stranger would open it to edit."""
    return torch.load(ckpt, map_location="cpu", weights_only=True)


def _save(ckpt: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, path)
    return path


def _head(state: dict[str, torch.Tensor]) -> tuple[str, str]:
    """The names of the last Linear layer's weight and bias (the classes' layer)."""
    weights = [k for k, v in state.items() if k.endswith(".weight") and v.ndim == 2]
    return weights[-1], weights[-1][: -len("weight")] + "bias"


def many_classes(base: dict[str, Any], folder: Path, classes: int = 100_000) -> Path:
    """The checkpoint with `classes` class names (the schema's largest) and a head to match: weights of 100 MB,
    200 images of predictions hold 20 million probabilities."""
    ckpt = copy.deepcopy(base)
    info = ckpt["hyper_parameters"]["data_info"]
    info["class_names"] = [f"class{i:06d}" for i in range(classes)]
    info["task"] = "multi-class"
    info.pop("class_counts", None)
    ckpt["hyper_parameters"]["class_weights"] = None
    weight, bias = _head(ckpt["state_dict"])
    hidden = ckpt["state_dict"][weight].shape[1]
    generator = torch.Generator().manual_seed(0)
    ckpt["state_dict"][weight] = torch.randn(classes, hidden, generator=generator) * 0.01
    ckpt["state_dict"][bias] = torch.zeros(classes)
    return _save(ckpt, folder / "many_classes.ckpt")


def large_image_size(base: dict[str, Any], folder: Path, size: int = 2048, symmetry: str = "sided",
                     tta: str = "auto") -> Path:
    """The checkpoint describing `size` px images (the schema's largest): the weights still fit, since the custom
    CNN pools globally, but one 32-channel activation of one image is 512 MB. `symmetry=invariant` with
    `tta=auto` adds eight test-time views."""
    ckpt = copy.deepcopy(base)
    ckpt["hyper_parameters"]["data_info"].update(image_size=size, symmetry=symmetry)
    ckpt["hyper_parameters"]["tta"] = tta
    return _save(ckpt, folder / f"size{size}_{symmetry}.ckpt")


def overflowing_head(base: dict[str, Any], folder: Path) -> Path:
    """Finite weights whose logits overflow float32 (3e38 in the head): every probability is NaN."""
    ckpt = copy.deepcopy(base)
    weight, bias = _head(ckpt["state_dict"])
    ckpt["state_dict"][weight] = torch.full_like(ckpt["state_dict"][weight], 3e38)
    ckpt["state_dict"][bias] = torch.full_like(ckpt["state_dict"][bias], 3e38)
    return _save(ckpt, folder / "overflowing_head.ckpt")


def input_dependent_overflow(base: dict[str, Any], folder: Path) -> Path:
    """Weights that are finite and give finite probabilities on any probe image in the normalized range (zeros,
    noise of a few standard deviations), but overflow to NaN on real images: the description's std is 1e-6, so a
    prepared pixel is up to a million, and the head is scaled so that probe-range inputs give logits near 1e36.
    A probe pass at load cannot see it; only a check of each batch's outputs can."""
    from medclass.model import registry as model_registry

    ckpt = copy.deepcopy(base)
    info = ckpt["hyper_parameters"]["data_info"]
    info.update(mean=[0.0] * info["in_chans"], std=[1e-6] * info["in_chans"])
    net = model_registry.build(ckpt["hyper_parameters"]["net"], in_chans=info["in_chans"],
                               num_classes=len(info["class_names"]), from_file=True)
    net.load_state_dict({k[len("net."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("net.")})
    size, chans = info["image_size"], info["in_chans"]
    probe_like = [torch.zeros(1, chans, size, size),
                  4 * torch.randn(4, chans, size, size, generator=torch.Generator().manual_seed(0))]
    with torch.no_grad():
        largest = max(float(net.eval()(x).abs().max()) for x in probe_like)
    weight, bias = _head(ckpt["state_dict"])
    scale = 1e36 / max(largest, 1e-6)
    ckpt["state_dict"][weight] = ckpt["state_dict"][weight] * scale
    ckpt["state_dict"][bias] = ckpt["state_dict"][bias] * scale
    return _save(ckpt, folder / "input_dependent_overflow.ckpt")


def small_images(folder: Path, count: int, size: int = 28) -> Path:
    """`count` small RGB PNGs: the inputs an attack is predicted on."""
    rng = np.random.default_rng(0)
    for i in range(count):
        save(folder / f"img{i:04d}.png", rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    return folder


# -- a real model file in a second, no training -----------------------------------------------------------------
def make_checkpoint(folder: Path, classes: int = 3, image_size: int = 16, widths: tuple[int, ...] = (4, 8),
                    tta: str = "none", symmetry: str = "sided", name: str = "model.ckpt") -> Path:
    """A checkpoint as train.py writes one (description and weights, saved with torch.save), of an untrained
    two-block CNN on grey images: predict.py reads it like any other model file."""
    info = {"task": "multi-class", "class_names": [f"c{i}" for i in range(classes)], "in_chans": 1,
            "image_size": image_size, "mean": [0.5], "std": [0.25], "symmetry": symmetry}
    torch.manual_seed(0)
    module = Classifier(net={"arch": "cnn", "widths": list(widths), "hidden": 8}, data_info=info, tta=tta,
                        optimizer={"_target_": "torch.optim.Adam", "_partial_": True})
    ckpt = {"hyper_parameters": dict(module.hparams), "state_dict": module.state_dict(), "epoch": 0,
            "global_step": 0, "pytorch-lightning_version": L.__version__}
    return _save(ckpt, folder / name)


def predict(ckpt: Path, inputs: Path, out: Path, **options: Any) -> Any:
    cfg = compose_train([f"ckpt_path={ckpt}", f"inputs={inputs}", "progress=false",
                         *(f"{k}={v}" for k, v in options.items())], out, config_name="predict")
    return run_predict(cfg)


def grey_images(folder: Path, count: int, size: int = 12) -> Path:
    rng = np.random.default_rng(1)
    for i in range(count):
        save(folder / f"g{i:03d}.png", rng.integers(0, 256, (size, size), dtype=np.uint8))
    return folder


def csv_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


# -- memory: the batch shrinks to fit, or one line ----------------------------------------------------------------
def test_the_batch_shrinks_to_fit_memory_mb_and_the_predictions_do_not_change(tmp_path: Path,
                                                                          caplog: pytest.LogCaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path, image_size=256)  # largest layer: 4 x 256² numbers, about 3 MB an image
    images = grey_images(tmp_path / "in", 10)
    with caplog.at_level(logging.INFO, logger="medclass"):
        small = predict(ckpt, images, tmp_path / "small", memory_mb=8, batch_size=32)
    assert "batch 32 -> 2 to fit memory_mb=8" in caplog.text  # 3.4 MB an image: two fit in 8 MB
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medclass"):
        large = predict(ckpt, images, tmp_path / "large", batch_size=32)
    assert "to fit memory_mb" not in caplog.text
    assert small.count == large.count == 10
    assert csv_rows(tmp_path / "small" / "predictions.csv") == csv_rows(tmp_path / "large" / "predictions.csv")


def test_an_image_that_alone_exceeds_memory_mb_is_one_line_naming_the_option(tmp_path: Path) -> None:
    ckpt = make_checkpoint(tmp_path, image_size=256)
    with pytest.raises(MedclassError, match=r"one 256 px image needs about \d+ MB .* more than memory_mb=2; raise "
                                            r"memory_mb=") as err:
        predict(ckpt, grey_images(tmp_path / "in", 2), tmp_path / "out", memory_mb=2)
    assert str(ckpt) in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "out" / "predictions.csv").exists()
    predict(ckpt, tmp_path / "in", tmp_path / "plain", memory_mb=8)  # fits without Grad-CAM ...
    with pytest.raises(MedclassError, match="Grad-CAM on every layer.* more than memory_mb=8"):
        predict(ckpt, tmp_path / "in", tmp_path / "cam", memory_mb=8, cam="true")  # ... which keeps every layer
    with pytest.raises(MedclassError, match="memory_mb=0: expected a whole number"):
        predict(ckpt, tmp_path / "in", tmp_path / "out", memory_mb=0)
    with pytest.raises(MedclassError, match="tta_gflop=many: expected a number"):
        predict(ckpt, tmp_path / "in", tmp_path / "out", tta_gflop="many")


def test_memory_measured_in_a_child_follows_the_budget_not_the_batch(tmp_path: Path) -> None:
    """Real peak memory of each step in a child: Linux's high-water mark of resident memory (VmHWM), reset before
    the step through /proc/self/clear_refs, less the memory resident when it started. (The process-lifetime
    ru_maxrss cannot do this: where importing or the warm-up peaked higher than a step, every step reads 0.)
    First a 2048 px description over memory_mb=256: refused from the description, before the weights are loaded
    and probed at full size, so the peak does not move. Then 12 images of 512 px through a CNN whose first layer
    makes 8 x 512² numbers (8 MB) per image: within memory_mb=32 the batch is 1 and the peak grows by tens of MB;
    with room for the whole batch it grows by hundreds."""
    huge = make_checkpoint(tmp_path, image_size=2048, widths=(8,), name="huge.ckpt")
    ckpt = make_checkpoint(tmp_path, image_size=512, widths=(8,))
    images = grey_images(tmp_path / "in", 12, size=32)
    script = textwrap.dedent(f"""
        from pathlib import Path
        from medclass.utils.errors import MedclassError
        from tests.test_untrusted_predict import predict, make_checkpoint

        def kb(field):
            return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(field))

        def growth(step):
            open("/proc/self/clear_refs", "w").write("5")  # the high-water mark starts again from what is resident
            before = kb("VmRSS:")
            step()
            return kb("VmHWM:") - before

        def refused():
            try:
                predict(Path({str(huge)!r}), images, tmp / "huge_out", memory_mb=256)
            except MedclassError as err:
                assert "more than memory_mb=256" in str(err), err
            else:
                raise AssertionError("a 2048 px image of 8 x 2048² activations fit 256 MB")

        tmp, images = Path({str(tmp_path)!r}), Path({str(images)!r})
        predict(make_checkpoint(tmp / "warm", image_size=16), images, tmp / "warm_out")  # imports, allocator
        grown = [growth(refused)]
        for budget in (32, 4096):
            grown.append(growth(lambda: predict(Path({str(ckpt)!r}), images, tmp / str(budget), memory_mb=budget,
                                                batch_size=12, tta="none")))
        print("growth_kb", *grown)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if "clear_refs" in proc.stderr and ("PermissionError" in proc.stderr or "OSError" in proc.stderr):
        pytest.skip("this kernel does not let a process reset its own peak memory (/proc/self/clear_refs)")
    assert proc.returncode == 0, proc.stderr[-3000:]
    refused, bounded, unbounded = (int(v) for v in proc.stdout.split("growth_kb")[-1].split())
    assert refused < 64 * 1024, refused  # the probe at 2048 px would take about 300 MB
    # one image at a time: 8 MB layers, a few copies, the weights, decoded images and the writer (61 MB measured)
    assert bounded < 100 * 1024, (bounded, unbounded)
    assert unbounded > bounded + 150 * 1024, (bounded, unbounded)  # 12 at a time: 287 MB measured, so it has teeth


# -- time: the file's own test-time views ---------------------------------------------------------------------
def test_the_files_own_test_time_views_stay_within_tta_gflop(tmp_path: Path,
                                                              caplog: pytest.LogCaptureFixture) -> None:
    ckpt = make_checkpoint(tmp_path, image_size=256, tta="auto", symmetry="invariant")  # 8 views of 0.08 GFLOP
    images = grey_images(tmp_path / "in", 2)
    with caplog.at_level(logging.INFO, logger="medclass"):
        predict(ckpt, images, tmp_path / "capped", tta_gflop=0.2)
    assert "asks for 8 test-time views" in caplog.text and "pass tta=auto to use them all" in caplog.text
    assert json.loads((tmp_path / "capped" / "predictions.json").read_text())["tta"] == "none"
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="medclass"):
        predict(ckpt, images, tmp_path / "asked", tta_gflop=0.2, tta="auto")  # the user asked: all views
        predict(ckpt, images, tmp_path / "room")  # the default leaves room for ordinary models
    assert "test-time views" not in caplog.text
    for out in ("asked", "room"):
        assert json.loads((tmp_path / out / "predictions.json").read_text())["tta"] == "auto"


# -- outputs: streamed, and probabilities or nothing -----------------------------------------------------------
def test_records_stream_to_disk_memory_follows_the_batch_not_images_x_classes(tmp_path: Path) -> None:
    """10,000 classes x 30 images: held as records, 300,000 per-class entries (about 20 MB of Python objects);
    streamed, the peak is a few records (about 5 MB)."""
    ckpt = make_checkpoint(tmp_path, classes=10_000)
    images = grey_images(tmp_path / "in", 30)
    predict(ckpt, grey_images(tmp_path / "warm", 2), tmp_path / "warm_out")  # imports and caches: not measured
    tracemalloc.start()
    try:
        result = predict(ckpt, images, tmp_path / "out", batch_size=4)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert result.count == 30
    assert peak < 10 * 2**20, f"{peak / 2**20:.0f} MB of Python objects while predicting"
    rows = csv_rows(tmp_path / "out" / "predictions.csv")
    assert len(rows) == 30 and len(rows[0]) == 3 + 6 + 10_000
    payload = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert payload["count"] == 30 and len(payload["predictions"][0]["probabilities"]) == 10_000
    first = payload["predictions"][0]
    assert float(rows[0]["prob_c9999"]) == first["probabilities"]["c9999"]
    assert rows[0]["class"] == first["class"] == first["top_k"][0]["class"]


def overflowing(classes: int = 3) -> Classifier:
    """A network whose head holds 3e38: finite weights, infinite logits, NaN probabilities."""
    info = {"task": "multi-class", "class_names": [f"c{i}" for i in range(classes)], "in_chans": 1,
            "image_size": 16, "mean": [0.5], "std": [0.25]}
    module = Classifier(net={"arch": "cnn", "widths": [4, 8], "hidden": 8}, data_info=info,
                        optimizer={"_target_": "torch.optim.Adam", "_partial_": True})
    with torch.no_grad():
        module.net.head[-1].weight.fill_(3e38)
        module.net.head[-1].bias.fill_(3e38)
    return module


class Outputs:
    """A model (anything callable with a `meta`, as an ONNX file is) that returns fixed rows."""

    def __init__(self, row: list[float], task: str = "multi-class") -> None:
        self.row, self.source = row, "onnx_path=stranger.onnx"
        self.meta = {"class_names": ["x", "y"], "task": task, "image_size": 16, "in_chans": 1, "mean": [0.5],
                     "std": [0.25]}

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        return np.array([self.row] * len(x), dtype=np.float32)


@pytest.mark.parametrize(("row", "task", "why"), [
    ([7.5, -3.0], "multi-class", r"values outside \[0, 1\] \(from -3 to 7.5\)"),
    ([float("nan"), 0.5], "multi-label", "not finite"), ([0.5, float("inf")], "multi-class", "not finite"),
    ([0.3, 0.3], "multi-class", "do not sum to 1"), ([1.5, 0.2], "multi-label", r"outside \[0, 1\]")])
def test_outputs_that_are_not_probabilities_stop_the_run(tmp_path: Path, row: list[float], task: str,
                                                         why: str) -> None:
    """The one line names the model file, the batch and which rule the outputs broke."""
    files, _ = collect_inputs(grey_images(tmp_path / "in", 3))
    with pytest.raises(MedclassError, match=r"onnx_path=stranger.onnx gave 3 x 2 outputs that are not "
                                            rf"probabilities \(.*{why}"):
        predict_images(Outputs(row, task), files)


def test_probabilities_pass_the_check_as_they_are(tmp_path: Path) -> None:
    files, _ = collect_inputs(grey_images(tmp_path / "in", 3))
    records = predict_images(Outputs([0.25, 0.75]), files).records
    assert [r["probabilities"] for r in records] == [{"x": 0.25, "y": 0.75}] * 3
    assert len(predict_images(Outputs([0.9, 0.8], "multi-label"), files).records) == 3  # labels need not sum to 1


def test_an_overflowing_network_is_one_line_not_nan_with_exit_0(tmp_path: Path) -> None:
    files, _ = collect_inputs(grey_images(tmp_path / "in", 3))
    with pytest.raises(MedclassError, match=r"the model gave 3 x 3 outputs that are not probabilities"):
        predict_images(TorchModel(overflowing()), files)


# -- the CSV of inputs is read bounded ---------------------------------------------------------------------------
def test_a_csv_of_inputs_is_read_bounded(tmp_path: Path) -> None:
    """A million header columns (7.9 MB) used to become a million-entry dict per row and a 915 MB predictions.json;
    the table reader refuses it, and a header over its column bound, in one line naming the file."""
    listing = tmp_path / "inputs.csv"
    listing.write_text("path," + ",".join(f"c{i}" for i in range(1_000_000)) + "\nimg.png\n")
    with pytest.raises(MedclassError, match=f"inputs {listing} line 1 is longer than"):
        collect_inputs(listing)
    listing.write_text("path," + ",".join(f"c{i}" for i in range(5_000)) + "\nimg.png\n")
    with pytest.raises(MedclassError, match=f"inputs {listing} has 5,001 columns"):
        collect_inputs(listing)


# -- the attacks of issue 35, on the command line -----------------------------------------------------------------
BUILDERS = {"large_image_size": lambda base, folder: large_image_size(base, folder, symmetry="invariant"),
            "overflowing_head": overflowing_head, "input_dependent_overflow": input_dependent_overflow}


@pytest.mark.parametrize("attack", [pytest.param(name, marks=[] if name == "input_dependent_overflow" else
                                                  [pytest.mark.slow]) for name in BUILDERS])
def test_issue_35_attacks_end_in_one_line_on_the_command_line(tmp_path: Path, attack: str) -> None:
    """Each ends in one `error:` line naming the file, exit 2, no predictions file. The input-dependent overflow
    passes every check at load (its probe outputs are finite): the per-batch output check is what stops it."""
    base = load_base(make_checkpoint(tmp_path / "base", widths=(32, 64), image_size=28, tta="auto",
                                     symmetry="invariant"))
    ckpt = BUILDERS[attack](base, tmp_path)
    proc = run_script("predict.py", f"ckpt_path={ckpt}", f"inputs={small_images(tmp_path / 'in', 3)}",
                      f"hydra.run.dir={tmp_path / 'out'}", "batch_size=32", timeout=300)
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and str(ckpt) in lines[0]
    assert not (tmp_path / "out" / "predictions.csv").exists()
    if attack == "input_dependent_overflow":
        assert "outputs that are not probabilities" in lines[0]
