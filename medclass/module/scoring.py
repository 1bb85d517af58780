"""Scoring images with a model file's network, its cost bounded by construction: `TorchModel` and
`scored_batches`, used by predict.py and by eval.py's external validation (no Lightning: `Network` or a
Classifier, or any callable with a `meta` dict such as an ONNX model).

The model file may come from a stranger, and its description sets the cost of every image: the image
size, the number of classes, the test-time views. So the cost is bounded by construction:
- memory: one image's cost is measured once, on the meta device (no memory, no time): the network's
  largest activation, the prepared image and the per-class outputs. The batch shrinks to fit
  `memory_mb`; when one image does not fit, the command refuses in one line naming the option.
- time: test-time views the file asks for (`tta=null`) are used only while their work per image stays
  within `tta_gflop`; beyond it predict uses one view and says so. Views the user asks for are kept.
- output: records are written to predictions.csv/.json as they come, so memory follows the batch, not
  images x classes; probabilities that are not finite numbers in [0, 1] stop the run (exit 2).
"""

from __future__ import annotations

import copy
import itertools
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from rich.progress import track

from medclass.augment.normalize import to_input
from medclass.data.decode import decode_resized
from medclass.module.checkpoint import largest_activation, model_meta
from medclass.module.tta import tta_views
from medclass.untrusted.outputs import probability_problem
from medclass.utils.errors import MedclassError
from medclass.utils.extras import MissingExtra

if TYPE_CHECKING:
    from medclass.module import Classifier
    from medclass.module.network import Network

log = logging.getLogger("medclass")
Skipped = tuple[Path, str]  # a file passed over, and why

DEFAULT_MEMORY_MB = 1024  # activations of one batch; predict.py's `memory_mb`
FLOAT_BYTES = 4  # inference runs in float32
# measured on CPU (custom CNN, 256-1024 px, batch 1-32): a forward pass peaks at 2.2x its largest layer output
# (that output, its input, the next layer's); 3 leaves room for other backends' workspaces
ACTIVATION_COPIES = 3
CAM_COPIES = 2  # Grad-CAM keeps every layer's output for its backward pass, and their gradients
INPUT_COPIES = 3  # the decoded image, its normalized tensor and the stacked batch
CLASS_COPIES = 4  # per view and class: logits, probabilities, their stack and the mean


@dataclass(frozen=True)
class ImageCost:
    """What scoring one image costs, in float32 numbers, so the batch can be sized before anything is allocated.

    Views run one after another (`Classifier._views_forward`): they multiply the time and the per-class outputs,
    not the activations. `largest` and `total` are 0 when the network cannot be measured (an ONNX file, a network
    that fails on meta tensors): then only the input and the classes are counted.
    """

    inputs: int  # one prepared image: in_chans x image_size²
    classes: int
    views: int = 1
    largest: int = 0  # the most numbers one layer outputs (medclass.module.checkpoint.largest_activation)
    total: int = 0  # every layer's outputs together: what a backward pass (Grad-CAM) keeps
    gflop: float = 0.0  # one view's work

    def bytes(self, cam: bool = False) -> int:
        activations = CAM_COPIES * self.total if cam else ACTIVATION_COPIES * self.largest
        return FLOAT_BYTES * (activations + INPUT_COPIES * self.inputs + CLASS_COPIES * self.views * self.classes)


def _meta_copy(net: torch.nn.Module) -> torch.nn.Module:
    """`net` with every parameter and buffer on the meta device: same layers, no weights copied."""
    memo: dict[int, Any] = {}
    for tensor in itertools.chain(net.parameters(), net.buffers()):
        empty = torch.empty_like(tensor, device="meta")
        memo[id(tensor)] = (torch.nn.Parameter(empty, requires_grad=tensor.requires_grad)
                            if isinstance(tensor, torch.nn.Parameter) else empty)
    return copy.deepcopy(net, memo)


def measure_network(net: torch.nn.Module, in_chans: int, size: int) -> tuple[int, int, float]:
    """(largest layer output, all leaf layers' outputs, GFLOP) of one `size` px image, from forward passes on the
    meta device: shapes only, no memory, milliseconds. (0, 0, 0.0) when the network does not run on meta tensors."""
    from torch.utils.flop_counter import FlopCounterMode

    try:
        skeleton = _meta_copy(net).eval()
    except Exception as err:  # a network deepcopy cannot copy: measured by its weights only
        log.debug("cannot measure the network on the meta device (%s)", type(err).__name__)
        return 0, 0, 0.0
    largest = largest_activation(skeleton, in_chans, size)
    sizes: list[int] = []
    leaves = [m for m in skeleton.modules() if not any(True for _ in m.children())]
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if isinstance(out, torch.Tensor)
                                                                      else 0)) for m in leaves]
    try:
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            skeleton(torch.zeros(1, in_chans, size, size, device="meta"))
        flops = counter.get_total_flops()
    except Exception:
        return largest, 0, 0.0
    finally:
        for hook in hooks:
            hook.remove()
    return largest, max(sum(sizes), largest), flops / 1e9


def _input_cost(meta: dict[str, Any]) -> ImageCost:
    """The part of an image's cost any model has: its prepared pixels and its per-class outputs."""
    return ImageCost(inputs=int(meta["in_chans"]) * int(meta["image_size"]) ** 2, classes=len(meta["class_names"]))


class TorchModel:
    """A Classifier as `probabilities = model(batch)`; `tta` None keeps the checkpoint's setting; `operating`
    (eval.py's temperature and thresholds, `medclass.module.operating_file`) rides along in `meta`.

    `cost` is one image's, measured once here; `memory_mb` is the budget `fit_batch` sizes batches to. With `tta`
    None, the file's own test-time views are dropped to one when they would cost more than `tta_gflop` per image:
    a model file must not make each image take minutes without the user asking. `source` names the file in errors.
    """

    def __init__(self, module: Classifier | Network, tta: str | None = None, device: str = "cpu",
                 operating: dict[str, Any] | None = None, memory_mb: int = DEFAULT_MEMORY_MB,
                 tta_gflop: float | None = None, source: str | None = None) -> None:
        self.module, self.device = module.eval().to(device), torch.device(device)
        self.meta = {**model_meta(module), **(operating or {})}
        self.memory_mb, self.source = memory_mb, source or "the model"
        if tta is not None:
            tta_views(tta, self.meta["symmetry"])  # a bad value fails here, naming the choices
            module.tta = tta
        largest, total, gflop = measure_network(module.net, self.meta["in_chans"], self.meta["image_size"])
        views = len(tta_views(module.tta, self.meta["symmetry"]))
        if tta is None and tta_gflop is not None and views > 1 and views * gflop > tta_gflop:
            log.warning("tta: %s asks for %d test-time views of %.0f GFLOP each per image, more than tta_gflop=%g; "
                        "predicting with one view (pass tta=%s to use them all)", self.source, views, gflop,
                        tta_gflop, module.tta)
            module.tta, views = "none", 1
        self.cost = replace(_input_cost(self.meta), views=views, largest=largest, total=total, gflop=gflop)

    def __call__(self, x: torch.Tensor) -> np.ndarray:
        with torch.inference_mode():
            return self.module.predict_proba(x.to(self.device), tta=True).float().cpu().numpy()


def images_that_fit(cost: ImageCost, memory_mb: int, size: int, source: str, cam: bool = False) -> int:
    """How many images of `cost` fit `memory_mb`; one error line naming the option when not even one does."""
    per_image = cost.bytes(cam)
    fitting = memory_mb * 2**20 // max(per_image, 1)
    if fitting < 1:
        raise MedclassError(
            f"one {size} px image needs about {per_image / 2**20:,.0f} MB to score with {source} ({cost.largest:,} "
            f"numbers in its largest layer{', Grad-CAM on every layer' if cam else ''}, {cost.classes:,} classes"
            f"{f' x {cost.views} views' if cost.views > 1 else ''}), more than memory_mb={memory_mb}; raise "
            "memory_mb=<MB> if the machine has that memory")
    return int(fitting)


def fit_batch(model: Any, batch_size: int, cam: bool = False) -> int:
    """The largest batch, at most `batch_size`, whose images fit the model's `memory_mb` (logged once when it
    shrinks); one error line naming the option when a single image does not fit."""
    cost: ImageCost = getattr(model, "cost", None) or _input_cost(model.meta)
    memory_mb = int(getattr(model, "memory_mb", DEFAULT_MEMORY_MB))
    fitting = images_that_fit(cost, memory_mb, model.meta["image_size"], getattr(model, "source", "the model"), cam)
    if fitting < batch_size:
        log.info("batch %d -> %d to fit memory_mb=%d (%.1f MB per image)", batch_size, fitting, memory_mb,
                 cost.bytes(cam) / 2**20)
        return fitting
    return batch_size


def check_described_network(hparams: dict[str, Any], memory_mb: int, cam: bool, source: str) -> None:
    """One image of the network a model file describes (`hparams`, checked) must fit `memory_mb`, measured on the
    meta device from the description alone: before the weights are loaded and probed (a full-size forward pass),
    so a 2048 px description is refused before it allocates anything."""
    from medclass.model import registry as model_registry

    info = hparams["data_info"]
    with torch.device("meta"):
        net = model_registry.build(hparams["net"], in_chans=info["in_chans"], num_classes=len(info["class_names"]),
                                   from_file=True)
    largest, total, _ = measure_network(net, info["in_chans"], info["image_size"])
    cost = replace(_input_cost(info), largest=largest, total=total)
    images_that_fit(cost, memory_mb, info["image_size"], source, cam)


def check_probabilities(probs: Any, kept: Sequence[Path], meta: dict[str, Any], source: str) -> np.ndarray:
    """`probs` when it is one row of finite numbers in [0, 1] per image and class (rows summing to 1 unless the
    task is multi-label); else one error line naming the model file. Weights that overflow make NaN, and an
    ONNX graph can return anything: either would be written as a confident prediction with exit code 0."""
    array = np.asarray(probs)
    classes = len(meta["class_names"])
    problem = probability_problem(array, len(kept), classes, meta["task"])
    if problem:
        raise MedclassError(f"{source} gave {len(kept)} x {classes} outputs that are not probabilities ({problem}) for "
                            f"the batch starting at {kept[0]}; its weights overflow or are damaged: use another "
                            "model file, or retrain or export it again")
    return array


def scored_batches(model: TorchModel | Callable[[torch.Tensor], np.ndarray], paths: Sequence[str | Path],
                   batch_size: int, skipped: list[Skipped], progress: bool = False, cam: bool = False
                   ) -> Iterator[tuple[list[Path], torch.Tensor, np.ndarray]]:
    """(readable paths, their input batch, the model's raw probabilities) per batch of `paths`, each image decoded
    and normalized as in training (the model's `meta`); unreadable files are appended to `skipped`, never fatal.
    predict.py and eval.py's external validation both score files through here, so both get batches sized to the
    model's memory budget (`fit_batch`) and outputs checked to be probabilities (`check_probabilities`)."""
    meta = model.meta
    batch_size = fit_batch(model, batch_size, cam)
    source = getattr(model, "source", None) or "the model"
    paths = list(paths)
    chunks = [paths[i : i + batch_size] for i in range(0, len(paths), batch_size)]
    for chunk in track(chunks, description="predicting", transient=True, disable=not progress or len(chunks) < 2):
        tensors, kept = [], []
        for path in map(Path, chunk):
            try:
                image = decode_resized(path, meta["image_size"], meta["in_chans"])
            except MissingExtra:
                raise
            except Exception as err:  # corrupt, truncated, unreadable: listed, never fatal
                skipped.append((path, f"unreadable image ({type(err).__name__}: {err})"))
                continue
            tensors.append(to_input(image, meta["mean"], meta["std"]))  # decode_resized sized it
            kept.append(path)
        if kept:
            x = torch.stack(tensors)
            del tensors
            yield kept, x, check_probabilities(model(x), kept, meta, source)
