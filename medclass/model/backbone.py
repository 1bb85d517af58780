"""Pretrained backbones through timm: any of its models, ImageNet weights from the hub or a local file.

timm does the fiddly parts itself: `in_chans=1` folds an RGB stem's weights into one channel,
a different `num_classes` gets a fresh head, and a local file loads with `weights_only=True`
(`.pth` state dict or `.safetensors`). What this module adds is the offline story: weights come
from `model.weights`, else from a file named after the model in `$MEDCLASS_WEIGHTS`, else from the
hub, and a requested pretrained model never falls back to random weights silently.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from medclass.utils.errors import MedclassError

WEIGHTS_ENV = "MEDCLASS_WEIGHTS"
SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def _check_name(name: str) -> None:
    import timm  # here, not at the top: training the small CNN or predicting never loads timm (about 1 s)

    if not timm.is_model(name):
        close = timm.list_models(f"*{name.split('_')[0]}*")[:12]
        raise MedclassError(f"model.name={name!r} is not a timm model; similar names: {', '.join(close) or 'none'}")


def timm_model(
    name: str,
    in_chans: int = 3,
    num_classes: int = 2,
    pretrained: bool = False,
    weights: str | None = None,
    small_input: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """`timm.create_model` with weights from `weights` (a local file) or, if `pretrained`, a file in
    `$MEDCLASS_WEIGHTS` whose name starts with the model's, or the hub.

    `small_input` keeps the stem at full resolution for 28–64 px images (`full_resolution_stem`).
    Extra keyword arguments (drop_rate, drop_path_rate, …) go to timm unchanged.
    """
    _check_name(name)
    options: dict[str, Any] = {"num_classes": num_classes, "in_chans": in_chans, **kwargs}
    weights = weights or (local_weights(name) if pretrained else None)
    if weights:
        path = Path(weights).expanduser()
        if not path.is_file():
            raise MedclassError(f"model.weights={weights} is not a file; give the path of a .pth or .safetensors "
                                "state dict, or model.weights=null")
        options.update(pretrained=True, pretrained_cfg_overlay={"file": str(path)})
    elif pretrained:
        options["pretrained"] = True
    import timm

    try:
        model = timm.create_model(name, **options)
    except Exception as err:  # never fall back to random weights when weights were asked for
        if weights:
            raise MedclassError(f"model.weights={weights} does not fit timm model {name!r}: {err}") from err
        if pretrained:
            raise MedclassError(
                f"could not get pretrained weights for {name!r} ({type(err).__name__}: {err}); offline, copy a "
                f"weights file here and set model.weights=<path> (or put {name}.pth in ${WEIGHTS_ENV}), or train "
                "from scratch with model.pretrained=false"
            ) from err
        raise
    if weights:
        _check_file_covers(model, str(path), name)
    if small_input:
        full_resolution_stem(model, name)
    return model


def full_resolution_stem(model: nn.Module, name: str) -> None:
    """First convolution at stride 1 and no stem max-pool, as CIFAR-style ResNets (MedMNIST's ResNet-18 (28)).

    A 28 px image then reaches the last stage at 4 px instead of 1; the weights keep their shapes, so
    pretrained ones still load. docs/models.md compares it with resizing the input.
    """
    conv = next((m for m in model.modules() if isinstance(m, nn.Conv2d)), None)
    changed = conv is not None and conv.stride != (1, 1)
    if changed:
        conv.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool, changed = nn.Identity(), True
    if not changed:
        raise MedclassError(
            f"model.small_input=true: {name!r} has no strided first convolution or stem max-pool to remove; "
            "set model.small_input=false and resize small images with data.image_size"
        )


def local_weights(name: str) -> str | None:
    """The first `<name>*.safetensors|.pth|…` in `$MEDCLASS_WEIGHTS`, the offline stand-in for the hub."""
    folder = Path(os.environ.get(WEIGHTS_ENV) or "").expanduser()
    if folder == Path() or not folder.is_dir():  # unset: not the current folder
        return None
    found = sorted(p for p in folder.glob(f"{name}*") if p.suffix in SUFFIXES and p.is_file())
    return str(found[0]) if found else None


def _check_file_covers(model: nn.Module, path: str, name: str) -> None:
    """timm loads with strict=False once the head is replaced, which would leave unmatched layers random."""
    import timm

    state = timm.models.load_state_dict(path, weights_only=True)
    heads = model.pretrained_cfg.get("classifier") or ()
    heads = (heads,) if isinstance(heads, str) else tuple(heads)

    def body(keys: Any) -> set[str]:
        return {k for k in keys if not k.startswith(tuple(f"{h}." for h in heads))}

    missing = sorted(body(model.state_dict()) - set(state))
    unexpected = sorted(body(state) - set(model.state_dict()))
    if missing or unexpected:
        raise MedclassError(
            f"model.weights={path} does not fit timm model {name!r}: {len(missing)} of its layers are not in the "
            f"file (e.g. {', '.join(missing[:3]) or '-'}) and {len(unexpected)} file entries are not in the model "
            f"(e.g. {', '.join(unexpected[:3]) or '-'}); use the weights of the same architecture"
        )


def pretrained_normalization(model_cfg: Any) -> tuple[list[float], list[float]] | None:
    """The mean/std a pretrained timm backbone was trained with; None for scratch models (data statistics win)."""
    target = str(model_cfg.get("_target_", ""))
    if not target.endswith("timm_model") or not (model_cfg.get("pretrained") or model_cfg.get("weights")):
        return None
    _check_name(model_cfg["name"])
    import timm

    cfg = timm.get_pretrained_cfg(model_cfg["name"])
    if cfg is None:
        return None
    return list(cfg.mean), list(cfg.std)
