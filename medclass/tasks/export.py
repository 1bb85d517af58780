"""Sharing a trained model: ONNX for deployment, safetensors for a pickle-free medclass model.

`format=onnx` (the default): the graph ends in softmax (sigmoid for multi-label), so it outputs
probabilities, and its batch axis is dynamic. Class names and preprocessing (image size, channels,
mean, std, task) ride along in the file's `metadata_props` under the key `medclass`, so
`predict.py onnx_path=<file>` needs nothing else. Checked against onnxruntime.

`format=safetensors`: `<name>.safetensors` (the weights; the format holds tensors and nothing else)
and `<name>.json` (the checked description, eval's operating values and the run's metrics). eval.py,
predict.py and export.py take it as `ckpt_path=<name>.safetensors` wherever they take a `.ckpt`,
with no pickle involved at all. Checked by reading it back.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import nn

from medclass.module import Classifier
from medclass.module.checkpoint import model_meta
from medclass.module.onnx import META_KEY, OnnxModel
from medclass.module.task_kinds import probabilities
from medclass.utils.errors import MedclassError
from medclass.utils.extras import require
from medclass.utils.io import write_bytes, write_json

log = logging.getLogger("medclass")
INPUT, OUTPUT = "image", "probabilities"
FORMATS = {"onnx": ".onnx", "safetensors": ".safetensors"}


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
    meta = {**model_meta(module), **(operating or {})}
    wrapper = ProbabilityNet(module.net, meta["task"]).eval().cpu()
    for name in ("onnx_ir", "onnxscript"):  # their INFO lines (passes run, nodes removed) would flood the log
        logging.getLogger(name).setLevel(logging.WARNING)
    example = torch.zeros(2, meta["in_chans"], meta["image_size"], meta["image_size"])  # 2: not specialized to 1
    tmp = tempfile.TemporaryDirectory()
    try:
        # The torch.export-based exporter (dynamo=True): the default since torch 2.9, where the TorchScript
        # one is deprecated. Here it exported the custom CNN, ResNet-18 and EfficientNet-Lite0 with a
        # dynamic batch and matched onnxruntime to < 1e-7 (the legacy one also worked, but warns of removal).
        torch.onnx.export(wrapper, (example,), str(Path(tmp.name) / "model.onnx"), input_names=[INPUT],
                          output_names=[OUTPUT], dynamic_shapes=({0: torch.export.Dim("batch")},),
                          opset_version=opset, dynamo=True, external_data=False, verbose=False)
        model = onnx.load(str(Path(tmp.name) / "model.onnx"))
    except Exception as err:
        raise MedclassError(f"torch.onnx.export of network {module.hparams.net['arch']!r} failed ("
                            f"{type(err).__name__}: {str(err)[:300]}); try another opset (now {opset}) or report the "
                            "network") from err
    finally:
        tmp.cleanup()
    onnx.helper.set_model_props(model, {META_KEY: json.dumps(meta)})
    return write_bytes(path, model.SerializeToString())


def export_safetensors(module: Classifier, path: str | Path, operating: dict[str, Any],
                       metrics: dict[str, Any] | None, source: str) -> Path:
    """`path` (.safetensors: every tensor of the module's state dict) and its `.json` description beside it."""
    from safetensors.torch import save

    from medclass.module.checkpoint import DESCRIPTION_FORMAT, description_path

    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}
    write_bytes(path, save(tensors, metadata={"format": DESCRIPTION_FORMAT}))
    write_json(description_path(path), {"format": DESCRIPTION_FORMAT, "version": 1, "source": source,
                                        "hyper_parameters": dict(module.hparams), "operating": operating,
                                        "metrics": metrics}, sort_keys=False)
    return Path(path)


def max_abs_difference(module: Classifier, path: str | Path, batch: int = 8, seed: int = 0) -> float:
    """Largest |p_torch - p_file| over a seeded batch of `batch` images and a batch of one (the dynamic axis);
    the file is an ONNX export run by onnxruntime, or a safetensors export read back by medclass."""
    meta = model_meta(module)
    x = torch.randn(max(batch, 1), meta["in_chans"], meta["image_size"], meta["image_size"],
                    generator=torch.Generator().manual_seed(seed))
    wrapper = ProbabilityNet(module.net, meta["task"]).eval().cpu()
    if Path(path).suffix == ".safetensors":
        from medclass.module.checkpoint import load_classifier

        reread = ProbabilityNet(load_classifier(path).net, meta["task"]).eval()
        exported: Any = lambda batch: reread(batch).numpy()  # noqa: E731
    else:
        exported = OnnxModel(path)
    with torch.inference_mode():
        expected = wrapper(x).numpy()
        got = [exported(x), exported(x[:1])]
    return float(max(np.abs(got[0] - expected).max(), np.abs(got[1] - expected[:1]).max()))


def run_metrics(checkpoint: Path) -> dict[str, Any] | None:
    """The metrics.json of the run a checkpoint came from (`<run>/checkpoints/<file>`), as plain values."""
    from medclass.utils import schema

    path = checkpoint.parent.parent / "metrics.json"
    if checkpoint.parent.name != "checkpoints" or not path.is_file():
        return None
    try:
        return schema.plain(4, 1000)(schema.read_json(path, "the run's metrics"), str(path))
    except MedclassError as err:
        log.warning("%s is left out of the export: %s", path, err)
        return None


def run_export(cfg: DictConfig) -> dict[str, Any]:
    """What export.py does: export, check the file against the checkpoint, write export.json; fails above the
    tolerance."""
    from medclass.module import operating_file
    from medclass.module.checkpoint import load_classifier

    fmt = cfg.get("format", "onnx")
    if fmt not in FORMATS:
        raise MedclassError(f"format={fmt} is not one of {', '.join(FORMATS)}")
    output = Path(cfg.output) if cfg.get("output") else Path(cfg.paths.output_dir) / f"model{FORMATS[fmt]}"
    if output.suffix != FORMATS[fmt]:
        raise MedclassError(f"output={output}: a {fmt} file ends in {FORMATS[fmt]}")
    module = load_classifier(cfg.ckpt_path)
    operating = operating_file.load(cfg.ckpt_path, default=module.model_file.operating)
    out = Path(cfg.paths.output_dir)
    if fmt == "onnx":
        path = export_onnx(module, output, opset=cfg.opset, operating=operating)
    else:
        path = export_safetensors(module, output, operating, run_metrics(Path(cfg.ckpt_path)),
                                  source=Path(cfg.ckpt_path).name)
    diff = max_abs_difference(module, path, batch=cfg.check_batch)
    label = "ONNX" if fmt == "onnx" else fmt
    message = (f"{label} check: max abs difference of probabilities {diff:.3g} (tolerance {cfg.tolerance:g}) on a "
               f"batch of {cfg.check_batch} and of 1")
    print(message)
    summary = {fmt: str(path), "checkpoint": str(cfg.ckpt_path), "format": fmt, "opset": cfg.opset,
               "max_abs_diff": diff, "tolerance": cfg.tolerance, "meta": {**model_meta(module), **operating}}
    if fmt == "safetensors":
        summary["description"] = str(path.with_suffix(".json"))
    if cfg.get("model_card", True):  # the card travels with the model, made from the checkpoint and its run
        from medclass.eval.model_card import write_model_card

        ckpt = Path(cfg.ckpt_path)
        summary["model_card"] = str(write_model_card(
            path.parent, ckpt, dict(module.hparams), None, ckpt.parent.parent if ckpt.parent.name == "checkpoints"
            else None, parameters=sum(p.numel() for p in module.parameters())))
    write_json(out / "export.json", summary)
    if not diff <= cfg.tolerance:  # NaN fails too
        raise MedclassError(f"{path} differs from the checkpoint by {diff:.3g} > tolerance={cfg.tolerance:g}; try "
                            f"another opset (now {cfg.opset}) or report the network")
    log.info("exported %s", path)
    return summary
