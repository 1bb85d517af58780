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

from medclass.errors import MedclassError
from medclass.module import Classifier

# where a checkpoint's `_target_` may point: checked on the string before anything is imported, and
# again on the object it resolves to (`medclass.data.splits.Path.unlink` is pathlib's, not ours)
FAMILIES = ("medclass.", "timm.", "torchvision.models.", "torch.optim.", "albumentations.", "kornia.augmentation.")
# functions (not classes) that build a network or a pipeline; every other function is refused
FACTORIES = frozenset({
    "medclass.models.backbone.timm_model",
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
    check_targets(hparams, f"checkpoint {path}")
    return hparams


def load_classifier(path: str | Path, map_location: str = "cpu") -> Classifier:
    """The checkpoint's Classifier, built only after `read_hparams` accepted everything it names."""
    hparams = read_hparams(path)
    net = dict(hparams.get("net") or {})
    # the checkpoint holds the trained weights: building the network must not fetch or read other ones
    net.update({k: v for k, v in (("pretrained", False), ("weights", None)) if k in net})
    try:
        return Classifier.load_from_checkpoint(path, map_location=map_location, weights_only=True, net=net)
    except Exception as err:
        raise MedclassError(f"cannot load checkpoint {path} safely ({type(err).__name__}: {err})") from err
