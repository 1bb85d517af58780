"""Networks by name: what a checkpoint may ask medclass to build.

A checkpoint does not carry a Hydra config to instantiate. It carries a description, `{"arch": "cnn",
"widths": [32, 64, 128], ...}`: a registered architecture's name and plain keyword arguments,
each checked against that architecture's schema. medclass then calls the registered constructor
itself. So a file can choose among medclass's own networks and their documented options, and
nothing else: no import, no callable, no interpolation (the timm / Hugging Face way: `create_model
("resnet18")` from a name, never code from the file).

Configs (`conf/model/*.yaml`) keep `_target_`, which names the same constructors; `describe` maps a
composed config, or an old checkpoint's `_target_`, onto its registered name and refuses any other
target. A new architecture is one `register(...)` call beside its code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from medclass.model.cnn import SimpleCNN
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

# modules renamed since a checkpoint may have been written: their targets are read under the new name
RENAMED = {"medclass.models.": "medclass.model."}


@dataclass(frozen=True)
class Architecture:
    """A registered network: its constructor (called with `in_chans`, `num_classes` and the options), the
    `_target_` configs name it by, the schema of its options, and the options forced when the network is
    rebuilt from a file (the file holds the trained weights: no download, no other file read)."""

    build: Callable[..., nn.Module]
    targets: tuple[str, ...]
    options: Mapping[str, s.Check]
    from_file: Mapping[str, Any] = field(default_factory=dict)


ARCHITECTURES: dict[str, Architecture] = {}


def register(name: str, build: Callable[..., nn.Module], targets: tuple[str, ...], options: Mapping[str, s.Check],
             from_file: Mapping[str, Any] | None = None) -> None:
    """Make `name` buildable from checkpoints and configs."""
    if name in ARCHITECTURES:
        raise ValueError(f"network {name!r} is registered already")
    ARCHITECTURES[name] = Architecture(build, targets, dict(options), dict(from_file or {}))


register("cnn", SimpleCNN, ("medclass.model.SimpleCNN", "medclass.model.cnn.SimpleCNN"), {
    "widths": s.list_of(s.integer(1, 4096), 1, 8),
    "convs_per_block": s.integer(1, 8),
    "block_dropout": s.number(0, 1),
    "hidden": s.integer(0, 65536),
    "dropout": s.number(0, 1),
})
def timm_network(**options: Any) -> nn.Module:
    """`medclass.model.backbone.timm_model`, importing timm (seconds) only when a timm network is built."""
    from medclass.model.backbone import timm_model

    return timm_model(**options)


register("timm", timm_network, ("medclass.model.timm_model", "medclass.model.backbone.timm_model"), {
    "name": s.text(100, r"[A-Za-z0-9_.\-]+", "a timm model name such as resnet18"),
    "pretrained": s.boolean,
    "weights": s.optional(s.text()),
    "small_input": s.boolean,
    "drop_rate": s.number(0, 1),
    "drop_path_rate": s.number(0, 1),
    "drop_block_rate": s.number(0, 1),
    "global_pool": s.choice("", "avg", "max", "avgmax", "catavgmax", "token", "map"),
}, from_file={"pretrained": False, "weights": None})


def arch_for_target(target: Any, where: str) -> str:
    """The registered name a config's (or an old checkpoint's) `_target_` stands for; any other is refused."""
    if isinstance(target, str):
        for old, new in RENAMED.items():
            if target.startswith(old):
                target = new + target[len(old):]
        for arch_name, arch in ARCHITECTURES.items():
            if target in arch.targets:
                return arch_name
    known = ", ".join(f"{n} ({a.targets[0]})" for n, a in ARCHITECTURES.items())
    raise s.Invalid(f"{where}._target_={s.show(target)} is not one of medclass's networks: {known}; a checkpoint can "
                    "only name a registered network (docs/models.md \"Adding a network\")")


def describe(cfg: Mapping[str, Any], where: str = "net") -> dict[str, Any]:
    """`{"arch": name, **options}`, checked, from a description or a config with `_target_`."""
    if not isinstance(cfg, Mapping):
        raise s.fail(where, cfg, "a network description")
    cfg = dict(cfg)
    if "arch" in cfg:
        arch_name = cfg.pop("arch")
        if not isinstance(arch_name, str):  # a dict or list is unhashable: `in` would raise TypeError
            raise s.fail(f"{where}.arch", arch_name, f"the name of a registered network ({', '.join(ARCHITECTURES)})")
        if arch_name not in ARCHITECTURES:
            raise s.Invalid(f"{where}.arch={s.show(arch_name)} is not a registered network "
                            f"({', '.join(ARCHITECTURES)})")
    elif "_target_" in cfg:
        arch_name = arch_for_target(cfg.pop("_target_"), where)
    else:
        raise s.Invalid(f"{where} names no network (no arch or _target_)")
    options = s.record(ARCHITECTURES[arch_name].options)(cfg, where)
    return {"arch": arch_name, **options}


def build(description: Mapping[str, Any], in_chans: int, num_classes: int, from_file: bool = False) -> nn.Module:
    """The network of a `describe`d description; `from_file` forces the file-safe options."""
    options = dict(description)
    arch = ARCHITECTURES[options.pop("arch")]
    if from_file:
        options.update({k: v for k, v in arch.from_file.items() if k in options})
    try:
        return arch.build(in_chans=in_chans, num_classes=num_classes, **options)
    except MedclassError:
        raise
    except Exception as err:  # timm's own checks include asserts (global_pool='token' on a ResNet)
        raise MedclassError(f"cannot build network {description.get('arch')!r} with {options} "
                            f"({type(err).__name__}: {err})") from err
