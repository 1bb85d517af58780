"""Data kinds by name: how `eval.py ckpt_path=X` rebuilds the data a checkpoint was trained on.

A checkpoint records its data as a description, `{"kind": "folder", "root": ..., "image_size": 64, ...}`:
one of the registered kinds (MedMNIST, folder, manifest, stream) and its plain options, each checked against
the kind's schema. Paths in it say where to read, never where to write: the split, cache and
augmentation settings are this machine's, so they are not part of a description at all, and the
`name` that split and cache files are named after must be a plain name. Configs keep `_target_`;
`describe` maps it onto the kind's name and refuses any other.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import import_module
from typing import TYPE_CHECKING, Any

from medclass.untrusted.tables import CLASS_NAME
from medclass.utils import schema as s

if TYPE_CHECKING:
    from medclass.data.base import ClassificationDataModule

SYMMETRIES = ("invariant", "mirror", "sided")  # flip defaults and TTA (docs/configuration.md "Augmentation")
# decided by the machine that runs, never by a file: dropped from every description
MACHINE_KEYS = ("split_dir", "cache_dir", "augment")
GROUP_BY_CHARS = 200


def _quantifier(pattern: str, i: int) -> tuple[float, float, int] | None:
    """(the least and the most times it repeats, the index after it) for a quantifier starting at `pattern[i]`
    (`*`, `+`, `?`, `{m}`, `{m,}`, `{,n}`, `{m,n}`, each maybe lazy `?` or possessive `+`); None when none starts
    there (a `{` that is not a quantifier is a literal, as `re` reads it)."""
    if i >= len(pattern):
        return None
    char = pattern[i]
    if char in "*+?":
        least, most, end = (1.0 if char == "+" else 0.0), (1.0 if char == "?" else math.inf), i + 1
    elif char == "{":
        found = re.match(r"\{(\d*)(,?)(\d*)\}", pattern[i:])
        if not found or (not found.group(1) and not found.group(3)):
            return None
        low, comma, high = found.groups()
        least = float(low or 0)
        most = float(high) if high else (math.inf if comma else least)
        end = i + found.end()
    else:
        return None
    return least, most, end + (end < len(pattern) and pattern[end] in "?+")


def _group_opener(pattern: str, i: int) -> tuple[str, int]:
    """What the `(` at `pattern[i]` opens and the index where its body starts: "group" (capturing, `(?:`,
    `(?P<name>`, lookarounds `(?=` `(?!` `(?<=` `(?<!`, atomic `(?>`, flags `(?i:`, a conditional `(?(1)`),
    "atom" (a comment `(?#...)` or a back-reference `(?P=name)`, which hold no pattern) or "flags" (`(?i)`)."""
    j = i + 1
    if not pattern.startswith("?", j):
        return "group", j
    j += 1
    if pattern.startswith(("#", "P="), j):
        close = pattern.find(")", j)
        return "atom", len(pattern) if close < 0 else close + 1
    if pattern.startswith("P<", j):
        close = pattern.find(">", j)
        return "group", len(pattern) if close < 0 else close + 1
    if pattern.startswith(("<=", "<!"), j):
        return "group", j + 2
    if pattern.startswith("(", j):  # a conditional: (?(id)yes|no); its condition is a name or number
        close = pattern.find(")", j)
        return "group", len(pattern) if close < 0 else close + 1
    if j < len(pattern) and pattern[j] in ":=!>":
        return "group", j + 1
    flags = re.match(r"[aiLmsux-]*", pattern[j:])
    end = j + (flags.end() if flags else 0)
    if pattern.startswith(":", end):
        return "group", end + 1
    return "flags", end + 1  # (?i): global flags, no group


def nested_repeat(pattern: str) -> bool:
    """Whether a group that may repeat more than once holds a quantifier of varying count itself: `(a+)+`,
    `(\\w*)*`, `(.?){999}`, the shapes that backtrack exponentially (`(\\d{4}-\\d{2})+` repeats a fixed count and is
    not one). Read token by token, so the `?` of `(?:`, `(?P<name>`, `(?=`, `(?!`,
    `(?<=`, `(?<!`, escaped characters (`\\(`, `\\?`) and character classes (`[(+]`) are not quantifiers; an optional
    group holding one (`(?:NORMAL2-)?IM-\\d+`, `(_\\d+)?`) repeats at most once and is not nested. A heuristic:
    the time limit on matching (medclass.utils.limits) is the guard, this only refuses a model file's pattern
    that is built to reach it."""
    held = [False]  # per open group: whether it holds a quantifier of varying count (`?`, `*`, `{1,3}`; not `{2}`)
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if char == "[":  # a character class: to its closing `]` (a `]` first, after an optional `^`, is literal)
            j = i + 1 + pattern.startswith("^", i + 1)
            j += pattern.startswith("]", j)
            while j < len(pattern) and pattern[j] != "]":
                j += 2 if pattern[j] == "\\" else 1
            i = j + 1
            continue
        if char == "(":
            kind, i = _group_opener(pattern, i)
            if kind == "group":
                held.append(False)
            continue
        if char == ")":
            inner = held.pop() if len(held) > 1 else False
            i += 1
            after = _quantifier(pattern, i)
            if after is not None:
                least, most, i = after
                if inner and most > 1:
                    return True
                inner = inner or least != most
            held[-1] = held[-1] or inner
            continue
        after = _quantifier(pattern, i)
        if after is not None:
            least, most, i = after
            held[-1] = held[-1] or least != most
            continue
        i += 1
    return False


def regex(value: Any, where: str) -> str:
    """A `group_by` pattern: text of at most 200 characters that compiles. What it costs to run is bounded by
    the time limit on matching (medclass.utils.limits), for the command line and for files alike."""
    value = s.text(GROUP_BY_CHARS)(value, where)
    try:
        re.compile(value)
    except (re.error, RecursionError, OverflowError) as err:
        message = getattr(err, "msg", type(err).__name__)  # re's own words and position, never the pattern
        raise s.fail(where, value, f"a regular expression ({message})") from None
    return value


def _file_regex(description: dict[str, Any], where: str) -> None:
    """A model file's `group_by` is also held to the nested-repeat heuristic: a file is data, and a pattern
    built to backtrack should not reach the time limit at all (which does nothing outside the main thread or on
    systems without `setitimer`). The user's own command line and configs are not held to it."""
    pattern = description.get("group_by")
    if isinstance(pattern, str) and nested_repeat(pattern):
        raise s.fail(f"{where}.group_by", pattern, "a regular expression without a repeated group that itself "
                     "repeats, e.g. '(P\\d+)_' (a model file's pattern is held to this; pass data.group_by= on "
                     "the command line to use your own)")


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
    "class_map": s.mapping(CLASS_NAME, CLASS_NAME, 10_000),  # folder name or label -> class name: any text
    "split_fractions": s.list_of(s.number(0, 1), 3, 3),
    "symmetry": s.choice(*SYMMETRIES),
    "split_seed": s.integer(-2**63, 2**64),
    "group_by": s.optional(regex),
    "folds": s.optional(s.integer(2, 1000)),
    "fold": s.integer(0, 999),
}


@dataclass(frozen=True)
class Kind:
    """A data kind: the `_target_`s a config may use for it (the last is its DataModule's full name, imported only
    to build one: reading a description loads no Lightning), its options' checks."""

    targets: tuple[str, ...]
    options: Mapping[str, s.Check]
    required: tuple[str, ...]
    folders: tuple[str, ...] = ("split_dir", "cache_dir")  # this machine's folders it writes into


KINDS: dict[str, Kind] = {
    "medmnist": Kind(("medclass.data.MedMNISTDataModule", "medclass.data.medmnist.MedMNISTDataModule"),
                     {**COMMON, "name": s.name(64), "size": s.choice(28, 64, 128, 224), "root": s.optional(s.text()),
                      "download": s.boolean}, ("name",), folders=("cache_dir",)),
    "folder": Kind(("medclass.data.FolderDataModule", "medclass.data.folder.FolderDataModule"),
                   FOLDER, ("root",)),
    "manifest": Kind(("medclass.data.ManifestDataModule", "medclass.data.manifest.ManifestDataModule"),
                     {**FOLDER, "manifest": s.text(), "root": s.optional(s.text()),
                      "multi_label": s.optional(s.boolean)},
                     ("manifest",)),
    # a prepared copy (medclass-prepare): read where `input_dir` says, a local folder or a bucket; its LitData
    # chunk cache (`cache_dir`) is this machine's, and the chunks are checked to unpickle nothing
    "stream": Kind(("medclass.data.StreamDataModule", "medclass.data.stream.StreamDataModule"),
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
    raise s.Invalid(f"{where}._target_={s.show(target)} is not one of medclass's data kinds: {known}")


def describe(cfg: Mapping[str, Any], where: str = "data_cfg", from_file: bool = False) -> dict[str, Any]:
    """`{"kind": name, **options}`, checked, from a description or a config with `_target_`; this
    machine's keys (split and cache folders, augmentation) are left out.

    `from_file`: the description was read from a model file (`describe_file`, through
    `medclass.module.hparams`), so heuristics for data apply too. The composed config of train.py and the
    command line's `data.*` on top of a checked file description (eval.py) are the user's own: not held to them."""
    if not isinstance(cfg, Mapping):
        raise s.fail(where, cfg, "a data description")
    cfg = {k: v for k, v in cfg.items() if k not in MACHINE_KEYS}
    if "kind" in cfg:
        kind_name = cfg.pop("kind")
        if not isinstance(kind_name, str) or kind_name not in KINDS:
            raise s.Invalid(f"{where}.kind={s.show(kind_name)} is not a data kind ({', '.join(KINDS)})")
    elif "_target_" in cfg:
        kind_name = kind_for_target(cfg.pop("_target_"), where)
    else:
        raise s.Invalid(f"{where} names no data kind (no kind or _target_)")
    kind = KINDS[kind_name]
    checked = {"kind": kind_name, **s.record(kind.options, kind.required)(cfg, where)}
    if from_file:
        _file_regex(checked, where)
    return checked


def describe_file(cfg: Any, where: str = "data_cfg") -> dict[str, Any]:
    """`describe` for a description read from a model file (a checkpoint, a safetensors sidecar)."""
    return describe(cfg, where, from_file=True)


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
    module, _, name = KINDS[options.pop("kind")].targets[-1].rpartition(".")
    return getattr(import_module(module), name)(**{**options, **machine})
