"""Data kinds by name: how `eval.py ckpt_path=X` rebuilds the data a checkpoint was trained on.

A checkpoint records its data as a description, `{"kind": "folder", "root": ..., "image_size": 64, ...}`:
one of the registered kinds (MedMNIST, folder, manifest, stream) and its plain options, each checked against
the kind's schema. Paths in it say where to read, never where to write: the split, cache and
augmentation settings are this machine's, so they are not part of a description at all, and the
`name` that split and cache files are named after must be a plain name. Configs keep `_target_`;
`describe` maps it onto the kind's name and refuses any other.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from medclass.data.base import SYMMETRIES, ClassificationDataModule
from medclass.data.folder import FolderDataModule
from medclass.data.manifest import ManifestDataModule
from medclass.data.medmnist import MedMNISTDataModule
from medclass.data.stream import StreamDataModule
from medclass.utils import schema as s

# decided by the machine that runs, never by a file: dropped from every description
MACHINE_KEYS = ("split_dir", "cache_dir", "augment")
# a quantified group that is itself quantified, e.g. (a+)+ or (\w*)*: exponential backtracking on a path
NESTED_QUANTIFIER = re.compile(r"\((?:[^()\\]|\\.)*[+*}?](?:[^()\\]|\\.)*\)[+*{?]")
# (a time limit on the matching itself, medclass.utils.limits, catches what this pattern misses)


def regex(value: Any, where: str) -> str:
    """A `group_by` pattern: compiled, at most 200 characters, and no nested quantifier (a file must not be
    able to hang the split with catastrophic backtracking)."""
    value = s.text(200)(value, where)
    if NESTED_QUANTIFIER.search(value):
        raise s.fail(where, value, "a regular expression without a repeated group that itself repeats, e.g. "
                     "'(P\\d+)_'")
    try:
        re.compile(value)
    except re.error as err:
        raise s.fail(where, value, f"a regular expression ({err})") from err
    return value


COMMON: dict[str, s.Check] = {
    "batch_size": s.integer(1, 65536),
    "eval_batch_size": s.optional(s.integer(1, 65536)),
    "num_workers": s.integer(0, 256),
    "image_size": s.optional(s.integer(1, 2048)),
    "in_chans": s.optional(s.integer(1, 4)),
    "mean": s.optional(s.list_of(s.number(-10, 10), 1, 4)),
    "std": s.optional(s.list_of(s.number(0, 10, low_open=True), 1, 4)),
    "pin_memory": s.boolean,
    "seed": s.integer(-2**63, 2**64),
    "sampler": s.optional(s.choice("balanced")),
}
FOLDER: dict[str, s.Check] = {
    **COMMON,
    "root": s.text(),
    "name": s.optional(s.name(128)),
    "test_root": s.optional(s.text()),
    "class_map": s.mapping(s.name(), s.name(), 10_000),
    "split_fractions": s.list_of(s.number(0, 1), 3, 3),
    "symmetry": s.choice(*SYMMETRIES),
    "split_seed": s.integer(-2**63, 2**64),
    "group_by": s.optional(regex),
    "folds": s.optional(s.integer(2, 1000)),
    "fold": s.integer(0, 999),
}


@dataclass(frozen=True)
class Kind:
    module: type[ClassificationDataModule]
    targets: tuple[str, ...]
    options: Mapping[str, s.Check]
    required: tuple[str, ...]
    folders: tuple[str, ...] = ("split_dir", "cache_dir")  # this machine's folders it writes into


KINDS: dict[str, Kind] = {
    "medmnist": Kind(MedMNISTDataModule,
                     ("medclass.data.MedMNISTDataModule", "medclass.data.medmnist.MedMNISTDataModule"),
                     {**COMMON, "name": s.name(64), "size": s.choice(28, 64, 128, 224), "root": s.optional(s.text()),
                      "download": s.boolean}, ("name",), folders=("cache_dir",)),
    "folder": Kind(FolderDataModule, ("medclass.data.FolderDataModule", "medclass.data.folder.FolderDataModule"),
                   FOLDER, ("root",)),
    "manifest": Kind(ManifestDataModule, ("medclass.data.ManifestDataModule",
                                          "medclass.data.manifest.ManifestDataModule"),
                     {**FOLDER, "manifest": s.text(), "root": s.optional(s.text()),
                      "multi_label": s.optional(s.boolean)},
                     ("manifest",)),
    # a prepared copy (medclass-prepare): read where `input_dir` says, a local folder or a bucket; its LitData
    # chunk cache (`cache_dir`) is this machine's, and the chunks are checked to unpickle nothing
    "stream": Kind(StreamDataModule, ("medclass.data.StreamDataModule", "medclass.data.stream.StreamDataModule"),
                   {**COMMON, "input_dir": s.text(), "name": s.optional(s.name(128)),
                    "symmetry": s.optional(s.choice(*SYMMETRIES)),
                    "max_cache_size": s.optional(s.text(32, r"[0-9.]+ ?[KMGT]?B?", "a size such as 50GB"))},
                   ("input_dir",), folders=("cache_dir",)),
}


def kind_for_target(target: Any, where: str) -> str:
    for kind_name, kind in KINDS.items():
        if target in kind.targets:
            return kind_name
    known = ", ".join(f"{n} ({k.targets[0]})" for n, k in KINDS.items())
    raise s.Invalid(f"{where}._target_={s._show(target)} is not one of medclass's data kinds: {known}")


def describe(cfg: Mapping[str, Any], where: str = "data_cfg") -> dict[str, Any]:
    """`{"kind": name, **options}`, checked, from a description or a config with `_target_`; this
    machine's keys (split and cache folders, augmentation) are left out."""
    if not isinstance(cfg, Mapping):
        raise s.fail(where, cfg, "a data description")
    cfg = {k: v for k, v in cfg.items() if k not in MACHINE_KEYS}
    if "kind" in cfg:
        kind_name = cfg.pop("kind")
        if kind_name not in KINDS:
            raise s.Invalid(f"{where}.kind={s._show(kind_name)} is not a data kind ({', '.join(KINDS)})")
    elif "_target_" in cfg:
        kind_name = kind_for_target(cfg.pop("_target_"), where)
    else:
        raise s.Invalid(f"{where} names no data kind (no kind or _target_)")
    kind = KINDS[kind_name]
    return {"kind": kind_name, **s.record(kind.options, kind.required)(cfg, where)}


def from_file(description: Mapping[str, Any]) -> dict[str, Any]:
    """A description read from a file, made safe to run here: no download (it would write into the folder
    the file names; `data.download=true` on the command line allows it), and no more worker processes than
    this machine has cores, nor batches above 1024 images."""
    out = dict(description)
    if "download" in out:
        out["download"] = False
    if "num_workers" in out:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        out["num_workers"] = min(int(out["num_workers"]), cores)
    for key in ("batch_size", "eval_batch_size"):
        if out.get(key):
            out[key] = min(int(out[key]), 1024)
    return out


def build(description: Mapping[str, Any], **machine: Any) -> ClassificationDataModule:
    """The DataModule of a `describe`d description; `machine` adds this machine's split_dir, cache_dir,
    augment, and the checkpoint's mean, std and channels."""
    options = dict(description)
    return KINDS[options.pop("kind")].module(**{**options, **machine})
