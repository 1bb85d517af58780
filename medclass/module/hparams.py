"""The schema of a Classifier's hyperparameters, as medclass writes them into every checkpoint.

`validate` is what a checkpoint's (or an exported model's `<name>.json`) description must pass
before anything is built from it: known keys only, plain values of the right type and range, the
network and the data through their registries (`medclass.model.registry`, `medclass.data.registry`),
and no `${` anywhere. The optimizer and scheduler are kept as plain values for the record; nothing
read from a file ever builds them (a model read from a file is not trained on, see
`Classifier.configure_optimizers`). A class name is any text (`medclass.untrusted.tables.CLASS_NAME`):
what train.py accepts from a manifest or a class folder, every reader accepts.
"""

from __future__ import annotations

from typing import Any

from omegaconf import OmegaConf

from medclass.data import registry as data_registry
from medclass.model import registry as model_registry
from medclass.module.losses import LOSSES
from medclass.module.task_kinds import TASKS
from medclass.module.tta import MODES
from medclass.untrusted.tables import CLASS_NAME
from medclass.utils import schema as s


def to_plain(value: Any) -> Any:
    """A composed config (DictConfig, ListConfig) as plain dicts and lists, interpolations resolved; anything else
    as it is. What a checkpoint records and what eval's options hold: no OmegaConf object, so no pickle."""
    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value

MAX_IMAGE_SIZE = 2048  # 2048² × 4 channels × 4 bytes = 64 MB a float image: bounded memory per image
MAX_CLASSES = 100_000


def _data_info(value: Any, where: str) -> dict[str, Any]:
    info = s.record({
        "task": s.choice(*TASKS),
        "class_names": s.list_of(CLASS_NAME, 1, MAX_CLASSES),  # any text: the set train.py accepts
        "in_chans": s.integer(1, 4),
        "image_size": s.integer(1, MAX_IMAGE_SIZE),
        "mean": s.list_of(s.number(-10, 10), 1, 4),
        "std": s.list_of(s.number(0, 10, low_open=True), 1, 4),
        "symmetry": s.choice(*data_registry.SYMMETRIES),
        "split_key": s.text(200),
        "class_counts": s.list_of(s.integer(0, 10**12), 0, MAX_CLASSES),
        "train_size": s.integer(0, 10**12),
    }, required=("task", "class_names", "in_chans", "image_size", "mean", "std"))(value, where)
    chans = info["in_chans"]
    if len(info["mean"]) != chans or len(info["std"]) != chans:
        raise s.Invalid(f"{where}: mean and std need one value per channel (in_chans={chans})")
    if len(set(info["class_names"])) != len(info["class_names"]):
        raise s.Invalid(f"{where}.class_names repeats a name")
    if info["task"] == "binary-class" and len(info["class_names"]) != 2:
        raise s.Invalid(f"{where}: a binary-class task has two class names, not {len(info['class_names'])}")
    return info


def check_data_info(value: Any, source: str) -> dict[str, Any]:
    """Class names and preprocessing read from a file (an ONNX export's metadata): one line naming `source`."""
    return s.read_as_data(_data_info, value, source, "it is not an export medclass wrote")


def check_training_info(value: Any, where: str = "the training data") -> dict[str, Any]:
    """The data facts train.py is about to write into a checkpoint, held to the same schema every reader applies,
    so a run never writes a checkpoint its own eval.py, predict.py or export.py would refuse."""
    try:
        return _data_info(value, "data_info")
    except s.Invalid as err:
        raise s.Invalid(f"{where}: {err}; the checkpoint could not be read back, so training stops here") from None


def _optimizer(value: Any, where: str) -> dict[str, Any]:
    return s.record({"_target_": s.text(200), "_partial_": s.boolean}, ("_target_",), extra=s.plain(1, 64))(value,
                                                                                                           where)


COMPILE_OPTIONS = s.record({"mode": s.optional(s.text(40)), "backend": s.text(40), "fullgraph": s.boolean,
                            "dynamic": s.optional(s.boolean)})
FIELDS: dict[str, s.Check] = {
    "net": model_registry.describe,
    "data_info": _data_info,
    "optimizer": _optimizer,
    "scheduler": s.optional(s.plain(3, 64)),
    "label_smoothing": s.number(0, 1),
    "channels_last": s.boolean,
    "tta": s.choice(*MODES),
    "data_cfg": s.optional(data_registry.describe_file),
    "freeze_backbone": s.boolean,
    "unfreeze_at_epoch": s.optional(s.integer(0, 10**6)),
    "backbone_lr_scale": s.number(0, 1000, low_open=True),
    "freeze_layers": s.optional(s.list_of(s.text(200, r"[A-Za-z0-9_.]+", "a module name such as layer3"), 0, 1000)),
    "compile": s.either(s.boolean, s.text(40), COMPILE_OPTIONS, expected="false, true, a mode or compile options"),
    "loss": s.choice(*LOSSES),
    "focal_gamma": s.number(0, 100),
    "class_weights": s.optional(s.either(s.choice("balanced"), s.list_of(s.number(0, 1e6), 1, MAX_CLASSES),
                                         expected="balanced, null or a list of numbers")),
}


def _hparams(value: Any, where: str) -> dict[str, Any]:
    checked = s.record(FIELDS, required=("net", "data_info", "optimizer"))(value, where)
    weights = checked.get("class_weights")
    if isinstance(weights, list) and len(weights) != len(checked["data_info"]["class_names"]):
        raise s.Invalid(f"class_weights has {len(weights)} values for {len(checked['data_info']['class_names'])} "
                        "classes")
    return checked


def validate(hparams: Any, source: str) -> dict[str, Any]:
    """The checked hyperparameters; any fault is one `Invalid` line starting with `source`."""
    return s.read_as_data(_hparams, hparams, source, "it is not a checkpoint medclass wrote, or it was edited (a "
                          "checkpoint is read as data, docs/reliability.md)")
