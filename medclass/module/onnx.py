"""An exported ONNX file as a model: `probabilities = OnnxModel(path)(batch)`, with the `meta` (class names,
preprocessing, eval's operating values) the file carries under the metadata key `medclass`.

predict.py scores it like a checkpoint's network (`medclass.module.scoring`); export.py reads its own file back
through it. The file is a stranger's data, checked by `medclass.untrusted.onnx_model` before onnxruntime opens it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medclass.untrusted.onnx_model import META_KEY
from medclass.utils.errors import MedclassError

__all__ = ["META_KEY", "OnnxModel", "read_meta"]


def read_meta(text: str, source: str) -> dict[str, Any]:
    """The metadata an ONNX file carries, read as data: preprocessing through the checkpoint's data_info schema,
    temperature, thresholds and abstention threshold through the operating file's. `text` is already bounded
    (`medclass.untrusted.onnx_model.MAX_META_BYTES`); errors name `source` and the field, never the text."""
    from medclass.module import operating_file
    from medclass.module.hparams import check_data_info

    try:
        raw = json.loads(text)
    except (ValueError, RecursionError) as err:
        raise MedclassError(f"{source} is not readable JSON ({type(err).__name__}); export the model again") from None
    if not isinstance(raw, dict):
        raise MedclassError(f"{source} is not a mapping; export the model again")
    operating = {k: raw.pop(k) for k in ("temperature", "thresholds", "abstain") if k in raw}
    return {**check_data_info(raw, source), **operating_file.check(operating, source)}


class OnnxModel:
    """An exported file as `probabilities = model(batch)`, with the `meta` predict.py needs.

    The file is a stranger's data (`medclass.untrusted.onnx_model`): read once and checked (operators, tensors,
    no external data, static shapes within a memory and work budget) before onnxruntime gets the checked bytes;
    a probe batch must give probabilities when it is opened, and so must every batch after. A batch whose plan
    does not fit `memory_budget` (default: `MEDCLASS_ONNX_MEMORY_MB`, else 2 GiB) runs in smaller pieces."""

    def __init__(self, path: str | Path, memory_budget: int | None = None) -> None:
        from medclass.untrusted import onnx_model

        path = Path(path)
        if not path.exists():
            raise MedclassError(f"onnx_path={path} does not exist; export one with python export.py ckpt_path=<ckpt>")
        self.source = f"onnx_path={path}"
        self.budget = memory_budget or onnx_model.budget_bytes()
        self.graph = onnx_model.read_graph(path, "onnx_path=")
        self.meta: dict[str, Any] = read_meta(self.graph.metadata, f"{self.source} (metadata {META_KEY!r})")
        self.shape = (self.meta["in_chans"], self.meta["image_size"], self.meta["image_size"])
        probe = onnx_model.probe_batch(self.meta["in_chans"], self.meta["image_size"])
        plan = self.graph.plan(1, *self.shape[:2])  # static shapes and work, before any session exists
        if plan.output_shape != (1, len(self.meta["class_names"])) or plan.output_type != "FLOAT":
            raise MedclassError(f"{self.source} has an output of {plan.output_type} {plan.output_shape} for one image, "
                                f"not float32 probabilities of shape (1, {len(self.meta['class_names'])}) as its "
                                "metadata's class names say; export the model again with export.py")
        onnx_model.fit(self.graph, 1, *self.shape[:2], memory_budget=self.budget)
        self.session = onnx_model.open_session(self.graph)
        self.graph.data = b""  # onnxruntime holds its own copy
        self.input = self.graph.input_name
        self(probe, what="a probe batch (zeros and a fixed pattern) when opened")

    def __call__(self, x: torch.Tensor | np.ndarray, what: str = "") -> np.ndarray:
        array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else x
        array = np.ascontiguousarray(array, np.float32)
        if array.ndim != 4 or array.shape[1:] != self.shape:
            raise MedclassError(f"{self.source} takes images of {self.shape}, not {array.shape[1:]}")
        if not len(array):
            return np.zeros((0, len(self.meta["class_names"])), np.float32)
        return self._run(array, f"{self.source} on {what}" if what else self.source)

    def _run(self, array: np.ndarray, where: str) -> np.ndarray:
        """Run `array` when the plan of its batch size fits the budget, else in halves (each planned again)."""
        from medclass.untrusted import onnx_model

        step = onnx_model.fit(self.graph, len(array), *self.shape[:2], memory_budget=self.budget)
        if step < len(array):
            return np.concatenate([self._run(array[i : i + step], where) for i in range(0, len(array), step)])
        try:
            out = self.session.run(None, {self.input: array})[0]
        except Exception as err:  # onnxruntime's own failures; its message can quote node names
            raise MedclassError(f"{self.source} failed to run ({type(err).__name__} in onnxruntime); export the "
                                "model again with export.py") from None
        return onnx_model.check_probabilities(out, len(array), len(self.meta["class_names"]), self.meta["task"], where)
