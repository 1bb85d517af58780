"""Reading a model file as data: a Lightning checkpoint (`.ckpt`) or an export (`.safetensors` + `.json`).

A model file may come from a stranger. It is read, never run:
- tensors and plain values only (`torch.load(weights_only=True)`; safetensors holds no code at all), through
  `medclass.untrusted.model_file`: a regular file with torch.save's layout, memory-mapped, so no tensor is read
  before it is known to be needed;
- only the top-level keys Lightning and medclass write (`hparams` and `module_arguments`, which
  Lightning's own loader would merge into the constructor's arguments, are refused);
- the description (`hyper_parameters`) passes `medclass.module.hparams.validate`: known keys, plain
  values in range, no `${`; the network and the data are registry names with checked options;
- the weights are held against the network the description builds on the meta device (no memory): the same
  names and shapes, real floating point where the network has floating point. A tensor the network does not use
  is refused unread, so the bytes read are those of the network's own weights;
- the Classifier is built from that checked description by medclass's own registries, with the
  file-safe network options (no download, no other weights file), and the weights are loaded with
  `load_state_dict(strict=True)`; then every weight must be finite in the network's own dtype, every BatchNorm
  variance non-negative, and a probe forward pass on two fixed images finite. Lightning's `load_from_checkpoint`
  is not used, and nothing read from the file reaches `hydra.utils.instantiate` or OmegaConf.

Resuming (`train.py ckpt_path=`) reads far more than weights: `medclass.tasks.resume`.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from medclass.module.hparams import validate
from medclass.module.network import Network, file_safe_net
from medclass.untrusted import model_file as mf
from medclass.untrusted.files import Refused, printable
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

if TYPE_CHECKING:
    from medclass.module import Classifier

log = logging.getLogger("medclass")

# what Lightning writes at the top of a checkpoint (loops, callbacks and optimizer states for resuming)
CKPT_KEYS = frozenset({"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                       "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters",
                       "random_state",  # medclass.callbacks.random_state
                       "medclass_seal",  # medclass.untrusted.seal: whose data paths the file may name
                       "averaging_state", "current_model_state"})  # Lightning's WeightAveraging (callbacks.ema)
PRECISION_STATE = re.compile(r"[A-Za-z]*Precision(Plugin)?")  # a precision plugin's state (AMP's grad scaler)
LEGACY_KEYS = ("hparams", "module_arguments")  # Lightning's loader merges these into the constructor's arguments
DESCRIPTION_FORMAT = "medclass-model"
SUFFIXES = (".ckpt", ".safetensors")
MAX_ACTIVATION_BYTES = 2**30  # one layer's output for one image; ResNet-50 at 224 px needs 3 MB


@dataclass
class ModelFile:
    """What a model file says, checked: its description, weights (exactly the network's tensors: names, shapes and
    dtypes checked, data not yet read for a checkpoint) and (exports) operating values; `sealed` when this account's
    medclass wrote its data description (`medclass.untrusted.seal`)."""

    path: Path
    hparams: dict[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    operating: dict[str, Any] = field(default_factory=dict)
    sealed: bool = False


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A `.ckpt` file's content (weights only, memory-mapped: no tensor read yet), its top-level keys checked."""
    path = Path(path)
    if not path.exists() and not path.is_symlink():
        raise MedclassError(f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/<file>.ckpt")
    try:
        ckpt = mf.load_checkpoint(path, "checkpoint")
    except Refused as err:
        raise MedclassError(str(err)) from None
    if not isinstance(ckpt, dict):
        raise s.Invalid(f"checkpoint {path} holds a {type(ckpt).__name__}, not a Lightning checkpoint")
    legacy = [k for k in LEGACY_KEYS if k in ckpt]
    unknown = sorted(printable(repr(k), 80) for k in ckpt if k not in CKPT_KEYS and k not in LEGACY_KEYS
                     and not (isinstance(k, str) and PRECISION_STATE.fullmatch(k)))
    if legacy or unknown:
        raise s.Invalid(f"checkpoint {path} has top-level keys medclass does not write ({', '.join(legacy + unknown)});"
                        " refusing it (Lightning's loader would pass them to the model; docs/reliability.md)")
    if "hyper_parameters" not in ckpt or "state_dict" not in ckpt:
        raise s.Invalid(f"checkpoint {path} has no hyper_parameters or state_dict; it is not a medclass checkpoint")
    return ckpt


def description_path(weights: str | Path) -> Path:
    """`model.safetensors` → `model.json`: the description an export writes beside its weights."""
    return Path(weights).with_suffix(".json")


def _sealed(hparams: Mapping[str, Any], tag: Any) -> bool:
    """Whether this account's medclass sealed the file's data description (`medclass.untrusted.seal`)."""
    from medclass.untrusted.seal import verify

    return verify(hparams.get("data_cfg"), tag)


def read_export(path: Path) -> ModelFile:
    """`<name>.safetensors` with `<name>.json` (written by `medclass-export format=safetensors`): the description,
    then the header's names, dtypes and shapes against the network it describes, then only those tensors."""
    from medclass.module import operating_file
    from medclass.untrusted.files import read_json

    if not path.exists() and not path.is_symlink():
        raise MedclassError(f"model file {path} does not exist; export one with medclass-export format=safetensors")
    meta_path = description_path(path)
    try:
        raw = read_json(meta_path, f"{path.name} needs its description (written by medclass-export "
                        "format=safetensors); the description")
    except Refused as err:
        raise MedclassError(str(err)) from None
    header = s.record({"format": s.choice(DESCRIPTION_FORMAT), "version": s.choice(1),
                       "hyper_parameters": lambda v, w: v, "operating": s.optional(lambda v, w: v),
                       "metrics": s.optional(s.plain(4, 1000)), "source": s.optional(s.text()),
                       "medclass_seal": s.optional(s.text(128))},
                      required=("format", "version", "hyper_parameters"))
    try:
        meta = header(raw, "")
    except s.Invalid as err:
        raise s.Invalid(f"{meta_path}: {str(err).lstrip('.')}; it is not a description medclass wrote") from None
    hparams = validate(meta["hyper_parameters"], str(meta_path))
    operating = operating_file.check(meta.get("operating") or {}, str(meta_path))
    source = str(path)
    try:
        index = mf.safetensors_index(path)
    except Refused as err:
        raise MedclassError(str(err)) from None
    check_index(hparams, index, source)
    try:
        state = mf.read_safetensors(path, list(index))  # exactly the network's tensors, by now
    except Refused as err:
        raise MedclassError(str(err)) from None
    return ModelFile(path, hparams, state, operating, _sealed(hparams, meta.get("medclass_seal")))


def read_model_file(path: str | Path) -> ModelFile:
    """A `.ckpt` or `.safetensors` model file, checked; its weights not yet loaded into anything."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_export(path)
    ckpt = read_checkpoint(path)
    source = f"checkpoint {path}"
    hparams = validate(ckpt["hyper_parameters"], source)
    state = check_weights(ckpt["state_dict"], source)
    check_index(hparams, mf.index_of(state, source), source)  # memory-mapped: nothing read yet
    return ModelFile(path, hparams, state, sealed=_sealed(hparams, ckpt.get("medclass_seal")))


def check_weights(state: Any, source: str) -> Mapping[str, torch.Tensor]:
    """A mapping of plain-named dense tensors (names and sizes only: nothing read)."""
    try:
        mf.index_of(state, source)
    except Refused as err:
        raise s.Invalid(str(err)) from None
    return state


def read_hparams(path: str | Path) -> dict[str, Any]:
    """A model file's checked description."""
    return read_model_file(path).hparams


def skeleton(hparams: Mapping[str, Any]) -> Network:
    """What a checked description builds, on the meta device: the Classifier's state_dict names, shapes and dtypes
    (`Network` has the same), and its layers' output sizes, without memory, time or Lightning."""
    with torch.device("meta"):
        return Network(hparams)


def check_index(hparams: Mapping[str, Any], index: Mapping[str, mf.TensorInfo], source: str) -> None:
    """The file's tensors (names, dtypes, shapes from its index) against what the described network loads, then
    the bound on its activations: a description cannot ask for more memory than the weights the file holds, nor
    for layers no image of its size fits through."""
    module = skeleton(hparams)
    try:
        mf.check_against(index, mf.expected_index(module), source)
    except Refused as err:
        raise s.Invalid(str(err)) from None
    info = hparams["data_info"]
    largest = largest_activation(module.net, info["in_chans"], info["image_size"])
    if largest * 4 > MAX_ACTIVATION_BYTES:
        raise s.Invalid(f"{source}: one {info['image_size']} px image would need a {largest * 4 / 2**30:.1f} GB "
                        f"activation in this network (at most {MAX_ACTIVATION_BYTES / 2**30:.0f} GB); it is not a "
                        "model medclass can run here")


def largest_activation(net: torch.nn.Module, in_chans: int, size: int) -> int:
    """The most numbers any layer outputs for one image, from a forward pass on the meta device (no memory, no
    time); 0 when the network cannot run on meta tensors (then only the weights bound it)."""
    sizes: list[int] = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: sizes.append(out.numel() if isinstance(out, torch.Tensor)
                                                                      else 0)) for m in net.modules()]
    was_training = net.training
    try:
        with torch.device("meta"), torch.no_grad():
            net.eval()(torch.zeros(1, in_chans, size, size))
    except MedclassError:
        raise  # the network's own refusal, e.g. an image too small for its pooling
    except Exception:
        return 0
    finally:
        for hook in hooks:
            hook.remove()
        net.train(was_training)
    return max(sizes, default=0)


def build_classifier(hparams: Mapping[str, Any]) -> Classifier:
    """A Classifier from a checked description; the network with its file-safe options (no weights read)."""
    from medclass.module import Classifier

    module = Classifier(**{**hparams, "net": file_safe_net(hparams), "compile": False})
    module.hparams.update(net=dict(hparams["net"]), compile=hparams.get("compile", False))  # as the file says
    module.read_from_file = True
    return module


def load_weights(module: Classifier | Network, state: Mapping[str, torch.Tensor], source: str) -> None:
    """`state` (names, dtypes and shapes already checked) into `module`, strictly; then the numbers: finite in the
    network's dtype, non-negative variances, and finite outputs of a probe pass on two fixed images."""
    from medclass.module.task_kinds import probabilities

    try:
        module.load_state_dict(state, strict=True)
    except Exception as err:
        first = str(err).splitlines()
        raise MedclassError(f"the weights in {source} do not fit the network it describes "
                            f"({' '.join(line.strip() for line in first[:3])[:300]})") from err
    info = module.hparams["data_info"]
    was_training = module.training
    try:
        mf.check_loaded(module, source)
        module.eval()
        mf.probe(lambda x: probabilities(module(x).float(), info["task"]), info["in_chans"], info["image_size"],
                 source)
    except Refused as err:
        raise MedclassError(str(err)) from None
    finally:
        module.train(was_training)


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The model a `.ckpt` or `.safetensors` file describes, with its weights; any fault is one error line."""
    return classifier_from(read_model_file(path)).to(map_location)


def classifier_from(model_file: ModelFile) -> Classifier:
    """The Classifier of a model file already read and checked (`read_model_file`), with its weights."""
    module = build_classifier(model_file.hparams)
    load_weights(module, model_file.state_dict, str(model_file.path))
    module.model_file = model_file  # its operating values, for predict.py and export.py
    return module


def load_network(path: str | Path, map_location: str | torch.device = "cpu") -> Network:
    """`load_classifier` without Lightning, for scoring (predict.py): the same reading, checks and weights."""
    return network_from(read_model_file(path)).to(map_location)


def network_from(model_file: ModelFile) -> Network:
    """The Network of a model file already read and checked (`read_model_file`), with its weights."""
    network = Network(model_file.hparams)
    load_weights(network, model_file.state_dict, str(model_file.path))
    network.model_file = model_file
    return network


def model_meta(module: Classifier | Network) -> dict[str, Any]:
    """What preprocessing and reading the outputs need: travels inside an ONNX export too."""
    info = module.hparams["data_info"]
    return {"class_names": list(info["class_names"]), "task": info["task"], "image_size": int(info["image_size"]),
            "in_chans": int(info["in_chans"]), "mean": list(info["mean"]), "std": list(info["std"]),
            "symmetry": info.get("symmetry", "sided")}
