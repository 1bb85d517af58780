"""Loading checkpoints safely: tensors and plain values only, and only medclass's own building blocks.

`torch.load(weights_only=True)` stops pickled code, but a checkpoint's hyperparameters are Hydra
configs (`net`, `optimizer`, `scheduler`, `data_cfg`), and Hydra builds whatever `_target_` names,
nested ones included. So before anything is built from a checkpoint, every `_target_` in it must be
a class (or a known model factory) of the families medclass builds from config; anything else, e.g.
`pathlib.Path.unlink` tucked into `net`, stops the load with one error and nothing runs.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from medclass.module import Classifier
from medclass.utils.errors import MedclassError

# where a checkpoint's `_target_` may point: checked on the string before anything is imported, and
# again on the object it resolves to (`medclass.data.splits.Path.unlink` is pathlib's, not ours)
FAMILIES = ("medclass.", "timm.", "torchvision.models.", "torch.optim.", "albumentations.", "kornia.augmentation.")
# functions (not classes) that build a network or a pipeline; every other function is refused
FACTORIES = frozenset({
    "medclass.model.backbone.timm_model",
    "medclass.augment.albu.train_transform",
    "medclass.augment.batch.batch_train_transform",
    "timm.models._factory.create_model",
})


def targets(tree: Any, key: str = "") -> Iterator[tuple[str, Any]]:
    """(dotted key, value) of every `_target_` in nested dicts and lists."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            where = f"{key}.{k}" if key else str(k)
            if k == "_target_":
                yield where, v
            else:
                yield from targets(v, where)
    elif isinstance(tree, (list, tuple)):
        for i, v in enumerate(tree):
            yield from targets(v, f"{key}[{i}]")


# modules renamed since a checkpoint may have been written: its targets are read under the new name
RENAMED = {"medclass.models.": "medclass.model."}


def renamed(tree: Any) -> Any:
    """`tree` with every `_target_` under a renamed module spelled the current way (plain data in, plain out)."""
    if isinstance(tree, dict):
        out = {k: renamed(v) for k, v in tree.items()}
        target = out.get("_target_")
        if isinstance(target, str):
            for old, new in RENAMED.items():
                if target.startswith(old):
                    out["_target_"] = new + target[len(old):]
        return out
    if isinstance(tree, (list, tuple)):
        return type(tree)(renamed(v) for v in tree)
    return tree


def _canonical(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _torchvision_builder(obj: Any) -> bool:
    import torchvision.models as tvm

    return any(obj is tvm.get_model_builder(name) for name in tvm.list_models())


def is_allowed(target: Any) -> bool:
    """A class, or a listed factory, of the families medclass builds from config."""
    if not isinstance(target, str) or not target.startswith(FAMILIES):
        return False  # refused before importing anything
    from hydra.utils import get_object

    try:
        obj = get_object(target)
    except Exception:
        return False
    if not _canonical(obj).startswith(FAMILIES):
        return False
    if inspect.isclass(obj):
        return True
    return _canonical(obj) in FACTORIES or (_canonical(obj).startswith("torchvision.models.")
                                            and _torchvision_builder(obj))


def check_targets(tree: Any, source: str) -> None:
    """Refuse a tree holding any `_target_` that medclass would not build; names the key and the target."""
    for key, target in targets(tree):
        if not is_allowed(target):
            raise MedclassError(
                f"{source} asks to build {target!r} (at {key}), which is not a medclass, timm, torchvision "
                f"model, torch.optim, albumentations or kornia.augmentation class; refusing to load it "
                "(a checkpoint must not decide which code runs)"
            )


def read_hparams(path: str | Path) -> dict[str, Any]:
    """A checkpoint's hyperparameters, checked: tensors and plain values only, allowed targets only."""
    path = Path(path)
    if not path.is_file():
        raise MedclassError(f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/<file>.ckpt")
    try:
        hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
    except Exception as err:
        raise MedclassError(f"cannot load checkpoint {path} safely ({type(err).__name__}: {err})") from err
    hparams = renamed(hparams)
    check_targets(hparams, f"checkpoint {path}")
    return hparams


def load_classifier(path: str | Path, map_location: str = "cpu") -> Classifier:
    """The checkpoint's Classifier, built only after `read_hparams` accepted everything it names."""
    hparams = read_hparams(path)
    net = dict(hparams.get("net") or {})
    # the checkpoint holds the trained weights: building the network must not fetch or read other ones
    net.update({k: v for k, v in (("pretrained", False), ("weights", None)) if k in net})
    try:
        # built from exactly the hyperparameters that were checked (and renamed), not the file's again
        return Classifier.load_from_checkpoint(path, map_location=map_location, weights_only=True,
                                               **{**hparams, "net": net})
    except Exception as err:
        raise MedclassError(f"cannot load checkpoint {path} safely ({type(err).__name__}: {err})") from err


def model_meta(module: Classifier) -> dict[str, Any]:
    """What preprocessing and reading the outputs need: travels inside an ONNX export too."""
    info = module.hparams.data_info
    return {"class_names": list(info["class_names"]), "task": info["task"], "image_size": int(info["image_size"]),
            "in_chans": int(info["in_chans"]), "mean": list(info["mean"]), "std": list(info["std"]),
            "symmetry": info.get("symmetry", "sided")}
