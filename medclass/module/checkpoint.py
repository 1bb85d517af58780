"""Reading a model file as data: a Lightning checkpoint (`.ckpt`) or an export (`.safetensors` + `.json`).

A model file may come from a stranger. It is read, never run:
- tensors and plain values only (`torch.load(weights_only=True)`; safetensors holds no code at all);
- only the top-level keys Lightning and medclass write (`hparams` and `module_arguments`, which
  Lightning's own loader would merge into the constructor's arguments, are refused);
- the description (`hyper_parameters`) passes `medclass.module.hparams.validate`: known keys, plain
  values in range, no `${`; the network and the data are registry names with checked options;
- the Classifier is built from that checked description by medclass's own registries, with the
  file-safe network options (no download, no other weights file), and the weights are loaded with
  `load_state_dict(strict=True)`. Lightning's `load_from_checkpoint` is not used, and nothing read
  from the file reaches `hydra.utils.instantiate` or OmegaConf.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from medclass.model import registry as model_registry
from medclass.module import Classifier
from medclass.module.hparams import validate
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

log = logging.getLogger("medclass")

# what Lightning writes at the top of a checkpoint (loops, callbacks and optimizer states for resuming)
CKPT_KEYS = frozenset({"epoch", "global_step", "pytorch-lightning_version", "state_dict", "loops", "callbacks",
                       "optimizer_states", "lr_schedulers", "hparams_name", "hyper_parameters",
                       "random_state", "medclass_seal",  # medclass.callbacks.random_state; medclass.untrusted.seal
                       "averaging_state", "current_model_state"})  # Lightning's WeightAveraging (callbacks.ema)
PRECISION_STATE = re.compile(r"[A-Za-z]*Precision(Plugin)?")  # a precision plugin's state (AMP's grad scaler)
LEGACY_KEYS = ("hparams", "module_arguments")  # Lightning's loader merges these into the constructor's arguments
DESCRIPTION_FORMAT = "medclass-model"
SUFFIXES = (".ckpt", ".safetensors")
MAX_ACTIVATION_BYTES = 2**30  # one layer's output for one image; ResNet-50 at 224 px needs 3 MB


@dataclass
class ModelFile:
    """What a model file says, checked: its description, weights and (exports) operating values and metrics."""

    path: Path
    hparams: dict[str, Any]
    state_dict: Mapping[str, torch.Tensor]
    operating: dict[str, Any] = field(default_factory=dict)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """A `.ckpt` file's content (weights only, memory-mapped), its top-level keys checked."""
    path = Path(path)
    if not path.is_file():
        raise MedclassError(f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/<file>.ckpt")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:
        raise MedclassError(f"cannot load checkpoint {path} safely ({type(err).__name__}: "
                            f"{str(err).splitlines()[0][:300]})") from err
    if not isinstance(ckpt, dict):
        raise s.Invalid(f"checkpoint {path} holds a {type(ckpt).__name__}, not a Lightning checkpoint")
    legacy = [k for k in LEGACY_KEYS if k in ckpt]
    unknown = sorted(str(k) for k in ckpt if k not in CKPT_KEYS and k not in LEGACY_KEYS
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


def read_export(path: Path) -> ModelFile:
    """`<name>.safetensors` with `<name>.json` (written by `medclass-export format=safetensors`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    from medclass.eval import operating_file

    if not path.is_file():
        raise MedclassError(f"model file {path} does not exist; export one with medclass-export format=safetensors")
    meta_path = description_path(path)
    raw = s.read_json(meta_path, f"{path.name} needs its description {meta_path.name} beside it (written by "
                    "medclass-export format=safetensors)")
    header = s.record({"format": s.choice(DESCRIPTION_FORMAT), "version": s.choice(1),
                       "hyper_parameters": lambda v, w: v, "operating": s.optional(lambda v, w: v),
                       "metrics": s.optional(s.plain(4, 1000)), "source": s.optional(s.text())},
                      required=("format", "version", "hyper_parameters"))
    try:
        meta = header(raw, "")
    except s.Invalid as err:
        raise s.Invalid(f"{meta_path}: {str(err).lstrip('.')}; it is not a description medclass wrote") from None
    hparams = validate(meta["hyper_parameters"], str(meta_path))
    operating = operating_file.check(meta.get("operating") or {}, str(meta_path))
    try:
        state = load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as err:
        raise MedclassError(f"cannot read {path} as safetensors ({type(err).__name__}: {err})") from err
    return ModelFile(path, hparams, check_weights(state, str(path)), operating)


def read_model_file(path: str | Path) -> ModelFile:
    """A `.ckpt` or `.safetensors` model file, checked; its weights not yet loaded into anything."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return read_export(path)
    ckpt = read_checkpoint(path)
    hparams = validate(ckpt["hyper_parameters"], f"checkpoint {path}")
    return ModelFile(path, hparams, check_weights(ckpt["state_dict"], f"checkpoint {path}"))


def check_weights(state: Any, source: str) -> Mapping[str, torch.Tensor]:
    """A mapping of at most 100,000 plain-named tensors, every floating-point one finite (a NaN weight would
    make every prediction NaN, with exit code 0)."""
    if not isinstance(state, Mapping) or len(state) > 100_000:
        raise s.Invalid(f"{source}: state_dict is not a mapping of at most 100,000 tensors")
    for key, value in state.items():
        if not isinstance(key, str) or len(key) > 500 or not isinstance(value, torch.Tensor):
            raise s.Invalid(f"{source}: state_dict entry {s._show(key)} is not a named tensor")
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise s.Invalid(f"{source}: weight {key} holds NaN or infinite values")
    return state


def read_hparams(path: str | Path) -> dict[str, Any]:
    """A model file's checked description."""
    return read_model_file(path).hparams


def check_shapes(hparams: Mapping[str, Any], net: Mapping[str, Any], state: Mapping[str, torch.Tensor],
                 source: str) -> None:
    """The described network built on the meta device (no memory) must not hold more numbers than the file's
    weights, and its tensors must have the file's shapes, before it is built for real: a description cannot ask
    for more memory than the file's own weights take. (Names are `load_state_dict(strict=True)`'s business: frozen
    layers, for one, drop BatchNorm's step counters.)"""
    info = hparams["data_info"]
    with torch.device("meta"):
        skeleton = model_registry.build(net, in_chans=info["in_chans"], num_classes=len(info["class_names"]),
                                        from_file=True)
    wanted = {f"net.{k}": tuple(v.shape) for k, v in skeleton.state_dict().items()}
    given = {k: tuple(v.shape) for k, v in state.items() if k.startswith("net.")}
    other = sorted(k for k in wanted.keys() & given.keys() if wanted[k] != given[k])
    described, held = (sum(math.prod(v) for v in d.values()) for d in (wanted, given))
    if other or described > held + 1000:
        example = f"{other[0]} {list(wanted[other[0]])} described, {list(given[other[0]])} in the file" if other else ""
        raise s.Invalid(f"{source}: its weights do not fit the network it describes ({described:,} numbers described, "
                        f"{held:,} in the file{'; ' + example if example else ''})")
    largest = largest_activation(skeleton, info["in_chans"], info["image_size"])
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
    return max(sizes, default=0)


def build_classifier(hparams: Mapping[str, Any], state: Mapping[str, torch.Tensor] | None = None,
                     source: str = "model file") -> Classifier:
    """A Classifier from a checked description; the network with its file-safe options (no weights read), after
    `check_shapes` against `state` when given."""
    arch = model_registry.ARCHITECTURES[hparams["net"]["arch"]]
    net = {**hparams["net"], **{k: v for k, v in arch.from_file.items() if k in hparams["net"]}}
    if state is not None:
        check_shapes(hparams, net, state, source)
    module = Classifier(**{**hparams, "net": net, "compile": False})
    module.hparams.update(net=dict(hparams["net"]), compile=hparams.get("compile", False))  # as the file says
    module.read_from_file = True
    return module


def load_classifier(path: str | Path, map_location: str | torch.device = "cpu") -> Classifier:
    """The model a `.ckpt` or `.safetensors` file describes, with its weights; any fault is one error line."""
    model_file = read_model_file(path)
    module = build_classifier(model_file.hparams, model_file.state_dict, str(path))
    try:
        module.load_state_dict(model_file.state_dict, strict=True)
    except Exception as err:
        first = str(err).splitlines()
        raise MedclassError(f"the weights in {path} do not fit the network it describes "
                            f"({' '.join(line.strip() for line in first[:3])[:300]})") from err
    module.model_file = model_file  # its operating values, for predict.py and export.py
    return module.to(map_location)


def check_resume(path: str | Path) -> None:
    """What `train.py ckpt_path=` checks before Lightning reads the file: the same reading as `load_classifier`
    (top-level keys, description); Lightning then restores weights, optimizer and loop state from it."""
    ckpt = read_checkpoint(path)
    validate(ckpt["hyper_parameters"], f"checkpoint {path}")


def model_meta(module: Classifier) -> dict[str, Any]:
    """What preprocessing and reading the outputs need: travels inside an ONNX export too."""
    info = module.hparams.data_info
    return {"class_names": list(info["class_names"]), "task": info["task"], "image_size": int(info["image_size"]),
            "in_chans": int(info["in_chans"]), "mean": list(info["mean"]), "std": list(info["std"]),
            "symmetry": info.get("symmetry", "sided")}
