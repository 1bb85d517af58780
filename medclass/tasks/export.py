"""ONNX export of a checkpoint's network, checked against onnxruntime, and prediction from the file.

The graph ends in softmax (sigmoid for multi-label), so it outputs probabilities, and its batch axis
is dynamic. Class names and preprocessing (image size, channels, mean, std, task) ride along in the
file's `metadata_props` under the key `medclass`, so `predict.py onnx_path=<file>` needs nothing else.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from medclass.module import Classifier
from medclass.module.checkpoint import model_meta
from medclass.module.tasks import probabilities
from medclass.utils.errors import MedclassError
from medclass.utils.extras import require

log = logging.getLogger("medclass")
META_KEY = "medclass"
INPUT, OUTPUT = "image", "probabilities"


class ProbabilityNet(nn.Module):
    """The network plus its task's link function: what a deployed model should return."""

    def __init__(self, net: nn.Module, task: str) -> None:
        super().__init__()
        self.net, self.task = net, task

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.net(x), self.task)


def export_onnx(module: Classifier, path: str | Path, opset: int = 18, operating: dict[str, Any] | None = None) -> Path:
    """Write `path` (float32 NCHW input `image`, output `probabilities`, dynamic batch) with the metadata;
    `operating` (eval.py's temperature and thresholds) rides along in it for predict.py."""
    onnx = require("onnx", "onnx", "ONNX export")
    require("onnxscript", "onnx", "ONNX export")

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**model_meta(module), **(operating or {})}
    wrapper = ProbabilityNet(module.net, meta["task"]).eval().cpu()
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines (passes run, nodes removed) would flood the log
        logging.getLogger(name).setLevel(logging.WARNING)
    example = torch.zeros(2, meta["in_chans"], meta["image_size"], meta["image_size"])  # 2: not specialized to 1
    try:
        # The torch.export-based exporter (dynamo=True): the default since torch 2.9, where the TorchScript
        # one is deprecated. Here it exported the custom CNN, ResNet-18 and EfficientNet-Lite0 with a
        # dynamic batch and matched onnxruntime to < 1e-7 (the legacy one also worked, but warns of removal).
        torch.onnx.export(wrapper, (example,), str(path), input_names=[INPUT], output_names=[OUTPUT],
                          dynamic_shapes=({0: torch.export.Dim("batch")},), opset_version=opset, dynamo=True,
                          external_data=False, verbose=False)
    except Exception as err:
        raise MedclassError(f"torch.onnx.export of {module.hparams.net.get('_target_')} failed ({type(err).__name__}:"
                            f" {str(err)[:300]}); try another opset (now {opset}) or report the network") from err
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    onnx.save(model, str(path))
    return path


class OnnxModel:
    """An exported file as `probabilities = model(batch)`, with the `meta` predict.py needs."""

    def __init__(self, path: str | Path) -> None:
        ort = require("onnxruntime", "onnx", "running an ONNX file (onnx_path=)")

        path = Path(path)
        if not path.is_file():
            raise MedclassError(f"onnx_path={path} does not exist; export one with python export.py ckpt_path=<ckpt>")
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as err:
            raise MedclassError(f"onnx_path={path} is not a loadable ONNX model ({type(err).__name__}: {err})") from err
        props = self.session.get_modelmeta().custom_metadata_map
        if META_KEY not in props:
            raise MedclassError(f"onnx_path={path} carries no class names or preprocessing (metadata key "
                                f"{META_KEY!r}); export it with python export.py ckpt_path=<ckpt>")
        self.meta: dict[str, Any] = json.loads(props[META_KEY])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        return self.session.run(None, {self.input: np.ascontiguousarray(array, np.float32)})[0]


def max_abs_difference(module: Classifier, path: str | Path, batch: int = 8, seed: int = 0) -> float:
    """Largest |p_torch - p_onnx| over a seeded batch of `batch` images and a batch of one (the dynamic axis)."""
    meta = model_meta(module)
    x = torch.randn(max(batch, 1), meta["in_chans"], meta["image_size"], meta["image_size"],
                    generator=torch.Generator().manual_seed(seed))
    wrapper = ProbabilityNet(module.net, meta["task"]).eval().cpu()
    onnx_model = OnnxModel(path)
    with torch.inference_mode():
        expected = wrapper(x).numpy()
    got = [onnx_model(x), onnx_model(x[:1])]
    return float(max(np.abs(got[0] - expected).max(), np.abs(got[1] - expected[:1]).max()))


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """What export.py does: export, check against onnxruntime, write export.json; fails above the tolerance."""
    from medclass.eval import operating_file
    from medclass.module.checkpoint import load_classifier
    from medclass.utils.io import write_json

    module = load_classifier(cfg.ckpt_path)
    operating = operating_file.load(cfg.ckpt_path)
    out = Path(cfg.paths.output_dir)
    path = export_onnx(module, Path(cfg.output) if cfg.get("output") else out / "model.onnx", opset=cfg.opset,
                       operating=operating)
    diff = max_abs_difference(module, path, batch=cfg.check_batch)
    message = (f"ONNX check: max abs difference of probabilities {diff:.3g} (tolerance {cfg.tolerance:g}) on a "
               f"batch of {cfg.check_batch} and of 1")
    print(message)
    summary = {"onnx": str(path), "checkpoint": str(cfg.ckpt_path), "opset": cfg.opset,
               "max_abs_diff": diff, "tolerance": cfg.tolerance, "meta": {**model_meta(module), **operating}}
    write_json(out / "export.json", summary)
    if not diff <= cfg.tolerance:  # NaN fails too
        raise MedclassError(f"{path} differs from the checkpoint by {diff:.3g} > tolerance={cfg.tolerance:g}; try "
                            f"another opset (now {cfg.opset}) or report the network")
    log.info("exported %s", path)
    return summary
