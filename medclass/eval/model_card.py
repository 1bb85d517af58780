"""`model_card.md`: the sections of Mitchell et al. (2019), *Model Cards for Model Reporting*, filled with what
medclass knows about a checkpoint, and what only people can say marked "_To be written by the authors._".

The facts come from files, read as data and never run:
- the checkpoint: its name, its SHA-256 (streamed), and for a `.ckpt` the Lightning version, epoch and step
  it was saved at (`module.checkpoint.read_checkpoint`: weights only, top-level keys checked);
- the model's checked hyperparameters (`module.hparams`): architecture, classes, task, preprocessing, split key,
  training class counts, data description (`data_cfg`), optimizer, scheduler, loss;
- the training run folder (`<run>/checkpoints/<file>`): `config.yaml` (or `.hydra/config.yaml`) and
  `.hydra/overrides.yaml` / `.hydra/hydra.yaml` through `yaml.safe_load` only: no interpolation is
  resolved, no `_target_` is instantiated, they are shown as the text they are; `metrics.json` (parameters,
  epochs, seed, leakage checks, validation metrics at the chosen checkpoint); `split.csv` (images per split and
  class, patient groups);
- eval's report (`report.json`: metrics with bootstrap intervals, calibration, operating points, MedMNIST's
  official metrics) and its `metrics.json` (the split key that was scored); a report read from an eval folder is
  used only when it names this checkpoint's file;
- `<checkpoint>.operating.json` (the temperature and thresholds fitted on validation);
- `extra` sections handed in by the caller (subgroups, external validation), each a `{"markdown": ...}`;
- the versions of Python and the packages installed where the card is written.

A file that is missing, a symbolic link, too large or unreadable gives "not recorded" for its facts, never a
crash. Every file of the run folder is read through `medclass.untrusted.files`: a regular file only (no FIFO,
device or `/proc` entry), no link followed (neither the file nor `.hydra/`), and at most its bound of bytes, lines
and distinct values, so a stranger's run folder costs seconds and megabytes. Text taken from files goes into code
blocks or escaped table cells, so it shows as text.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import importlib.metadata
import io
import json
import math
import os
import platform
import re
import shlex
import stat
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from medclass.untrusted.files import MiB, Refused, open_regular, read_bytes, read_json, system_path
from medclass.utils.errors import MedclassError
from medclass.utils.io import read_cell, write_text

AUTHORS = "_To be written by the authors._"
NOT_RECORDED = "not recorded"
SECTIONS = ("Model details", "Intended use", "Factors", "Metrics", "Evaluation data", "Training data",
            "Quantitative analyses", "Ethical considerations", "Caveats and recommendations")
MAX_YAML_BYTES = 4 * 2**20  # a run's config.yaml is a few kB
# split.csv: one row per image. MIMIC-CXR's 377k images with patient groups and a few extra columns come to
# ~70 MB; the bounds leave room above that and keep a hostile file (700 MB of newlines) to a second of work
MAX_SPLIT_BYTES = 256 * MiB
MAX_SPLIT_LINE = 1 * MiB  # characters of one line (a row of 1,000 columns of 1,000 characters)
MAX_SPLIT_LINES = 4_000_000  # physical lines, blank ones included (each costs a loop even when skipped)
MAX_SPLIT_LABELS = 40_000_000  # class names counted in all (multi-label rows name several)
MAX_SPLITS = 100  # distinct values of the split column (train, val, test)
MAX_SPLIT_CLASSES = 200_000  # distinct (split, class) counts kept
MAX_NODES = 5_000  # values shown from a config: enough for any real one, bounded for a hostile one (YAML aliases)
SOFTWARE = ("torch", "lightning", "medclass", "timm", "torchvision", "numpy", "scikit-learn", "hydra-core")
# the parts of a run's config.yaml that describe how the model was trained (dotted keys, shown when present)
CONFIG_KEYS = ("seed", "model", "optimizer", "scheduler", "augment", "module.focal_gamma",
               "module.unfreeze_at_epoch", "module.backbone_lr_scale", "module.freeze_layers",
               "data.batch_size", "data.sampler", "trainer.precision", "trainer.max_epochs", "trainer.min_epochs",
               "trainer.gradient_clip_val", "trainer.accumulate_grad_batches", "callbacks.model_checkpoint.monitor",
               "callbacks.model_checkpoint.mode", "callbacks.early_stopping.monitor",
               "callbacks.early_stopping.patience", "callbacks.ema")
HEADLINE = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
            ("auc_macro_ovr", "ROC AUC (macro, one-vs-rest)"), ("f1_macro", "F1 (macro)"))


# -- reading files as data ----------------------------------------------------------------------------------------

def _plain_file(path: Path | None, max_bytes: int) -> tuple[Path | None, str]:
    """(the path, "") when it is a regular file (not a link, nor in a linked `.hydra/`) of at most `max_bytes`;
    (None, why not) else. Judged with `lstat`, nothing followed; the read itself goes through
    `medclass.untrusted.files`, which checks the same on the open file."""
    if path is None:
        return None, NOT_RECORDED
    try:
        if path.parent.name == ".hydra" and path.parent.is_symlink():
            return None, f"{NOT_RECORDED} (.hydra is a symbolic link, not read)"
        info = os.lstat(path)
    except FileNotFoundError:
        return None, NOT_RECORDED
    except OSError as err:
        return None, f"{NOT_RECORDED} ({path.name}: {type(err).__name__})"
    if stat.S_ISLNK(info.st_mode):
        return None, f"{NOT_RECORDED} ({path.name} is a symbolic link, not read)"
    if not stat.S_ISREG(info.st_mode) or system_path(path):
        return None, f"{NOT_RECORDED} ({path.name} is not a regular file)"
    if info.st_size > max_bytes:
        return None, f"{NOT_RECORDED} ({path.name} is larger than {max_bytes >> 20} MB)"
    return path, ""


def _refused(err: Refused, path: Path) -> str:
    """A reader's refusal as the card's note: the file by its name (the run folder is named in the card)."""
    return f"{NOT_RECORDED} ({str(err).replace(str(path), path.name).strip()[:200]})"


def _read_file(path: Path | None, max_bytes: int) -> tuple[bytes | None, str]:
    """(the bytes of a regular file of the run folder, "") or (None, why not); never a link, a pipe or `/proc`."""
    found, why = _plain_file(path, max_bytes)
    if found is None:
        return None, why
    try:
        return read_bytes(found, "", max_bytes, follow_links=False), ""
    except Refused as err:
        return None, _refused(err, found)


def _read_yaml(path: Path | None) -> tuple[Any, str]:
    """(the YAML file's content as plain values, "") or (None, why not): safe loading only (libyaml's when
    installed, ten times faster on a large file), so tags that would build Python objects are refused and `${...}`
    stays the text it is."""
    data, why = _read_file(path, MAX_YAML_BYTES)
    if data is None:
        return None, why
    try:
        return yaml.load(data.decode("utf-8"), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), ""
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError, ValueError) as err:
        return None, f"{NOT_RECORDED} ({path.name} is not readable YAML data: {type(err).__name__})"


def _read_json(path: Path | None) -> tuple[Any, str]:
    """(a JSON file's values, "") or (None, why not); NaN and Infinity are read, and dropped where numbers are
    shown (`_num`)."""
    from medclass.utils import schema

    found, why = _plain_file(path, schema.MAX_JSON_BYTES)
    if found is None:
        return None, why
    try:
        return read_json(found, "", schema.MAX_JSON_BYTES, follow_links=False), ""
    except Refused as err:
        return None, _refused(err, found)


def _get(tree: Any, *keys: Any) -> Any:
    """tree[k1][k2]...; None when a key is missing or a level is not a mapping (or a list, for an int key)."""
    for key in keys:
        if isinstance(tree, Mapping) and key in tree:
            tree = tree[key]
        elif isinstance(tree, list) and isinstance(key, int) and -len(tree) <= key < len(tree):
            tree = tree[key]
        else:
            return None
    return tree


def _map(value: Any) -> Mapping[str, Any]:
    return value if isinstance(value, Mapping) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _num(value: Any) -> float | None:
    """A finite number (not a bool), else None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(value: Any, limit: int = 300) -> str | None:
    if value is None:
        return None
    text = value if isinstance(value, str) else str(value) if _num(value) is not None or isinstance(value, bool) \
        else None
    if text is None:
        return None
    text = re.sub(r"[\x00-\x1f\x7f]", " ", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _bounded(value: Any, budget: list[int], depth: int = 0) -> Any:
    """A copy of plain YAML values with at most MAX_NODES nodes and 12 levels: YAML aliases cannot make what is
    shown grow past that, and nothing but str/number/bool/None/list/dict survives."""
    budget[0] -= 1
    if budget[0] < 0 or depth > 12:
        return "(more not shown)"
    if isinstance(value, Mapping):
        return {str(_text(k, 100)): _bounded(v, budget, depth + 1) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_bounded(v, budget, depth + 1) for v in value]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return _text(value, 1000) if isinstance(value, str) else _text(repr(value), 200)


def sha256(path: Path, chunk: int = 2**20) -> str:
    """The file's SHA-256, read in 1 MB pieces (a checkpoint may be gigabytes: streamed, never held). The file is
    opened as `medclass.untrusted.files.read_bytes` opens one (no link followed, no wait on a pipe) and must be a
    regular file outside `/proc`; it is read up to the size it had when opened, so a growing file is refused."""
    fd, info = open_regular(path, "checkpoint", follow_links=False)
    try:
        digest, left = hashlib.sha256(), info.st_size
        while block := os.read(fd, min(chunk, left + 1)):
            left -= len(block)
            if left < 0:
                raise Refused(f"checkpoint {path} grew while being read")
            digest.update(block)
    finally:
        os.close(fd)
    return digest.hexdigest()


# -- the facts ------------------------------------------------------------------------------------------------------

def _checkpoint_facts(checkpoint: Path) -> dict[str, Any]:
    facts: dict[str, Any] = {"file": checkpoint.name, "path": str(checkpoint), "sha256": NOT_RECORDED}
    found, why = _plain_file(checkpoint, 2**62)
    if found is None:
        facts["sha256"] = why if why != NOT_RECORDED else f"{NOT_RECORDED} (no file at {checkpoint})"
        return facts
    try:
        facts["sha256"] = sha256(found)
        facts["bytes"] = found.stat().st_size
    except (Refused, OSError) as err:
        facts["sha256"] = _refused(err, found) if isinstance(err, Refused) else f"{NOT_RECORDED} ({type(err).__name__})"
        return facts
    if found.suffix == ".ckpt":  # what Lightning saved beside the weights: read as data, weights only
        from medclass.module.checkpoint import read_checkpoint

        try:
            ckpt = read_checkpoint(found)
        except (MedclassError, OSError):
            return facts
        facts.update({k: v for k, v in (("lightning_version", _text(ckpt.get("pytorch-lightning_version"), 40)),
                                        ("epoch", _int(ckpt.get("epoch"))),
                                        ("global_step", _int(ckpt.get("global_step")))) if v is not None})
    return facts


def _config_facts(run_dir: Path | None) -> dict[str, Any]:
    """The run's config (the key parts, as text), the command and where each came from."""
    out: dict[str, Any] = {"config": None, "config_note": NOT_RECORDED, "command": None,
                           "command_note": NOT_RECORDED, "model_target": None}
    if run_dir is None:
        return out
    config, why = _read_yaml(run_dir / "config.yaml")
    source = "config.yaml"
    if not isinstance(config, Mapping):
        config, why2 = _read_yaml(run_dir / ".hydra" / "config.yaml")
        source = ".hydra/config.yaml (as composed, interpolations unresolved)"
        why = why if why != NOT_RECORDED else why2
    if isinstance(config, Mapping):
        budget = [MAX_NODES]
        parts: dict[str, Any] = {}
        for dotted in CONFIG_KEYS:
            *parent, last = dotted.split(".")
            holder = _get(config, *parent)
            if isinstance(holder, Mapping) and last in holder:
                parts[dotted] = _bounded(holder[last], budget)
        out.update(config=parts, config_note=f"from the run's {source}; shown as text, never resolved or run")
        target = _get(config, "model", "_target_")
        out["model_target"] = _text(target, 200) if isinstance(target, str) else None
    else:
        out["config_note"] = why if config is None else f"{NOT_RECORDED} (config.yaml is not a mapping)"
    overrides, why = _read_yaml(run_dir / ".hydra" / "overrides.yaml")
    if isinstance(overrides, list) and all(isinstance(o, (str, int, float, bool)) for o in overrides):
        hydra, _ = _read_yaml(run_dir / ".hydra" / "hydra.yaml")
        name = _get(hydra, "hydra", "job", "config_name")
        script = {"train": "train.py", "eval": "eval.py"}.get(name, "train.py") if isinstance(name, str) else "train.py"
        words = [_text(o, 2000) or "" for o in overrides[:500]]
        out["command"] = " ".join(["python", script, *(shlex.quote(w) for w in words)])
        cwd = _text(_get(hydra, "hydra", "runtime", "cwd"), 500)
        out["command_note"] = "from the run's .hydra/overrides.yaml" + (f", run in {cwd}" if cwd else "")
    else:
        out["command_note"] = why if overrides is None else f"{NOT_RECORDED} (.hydra/overrides.yaml is not a list)"
    return out


class _TooMuch(Exception):
    """A bound of split.csv passed: the counts are not shown (the message says which bound)."""


def _lines(text: io.TextIOBase) -> Iterator[str]:
    """split.csv's physical lines for the csv reader, each read with a size limit and all of them counted (blank
    ones too: 700 MB of newlines would otherwise be minutes of skipping)."""
    for number in range(1, MAX_SPLIT_LINES + 2):
        line = text.readline(MAX_SPLIT_LINE + 1)
        if not line:
            return
        if number > MAX_SPLIT_LINES:
            raise _TooMuch(f"more than {MAX_SPLIT_LINES:,} lines")
        if len(line) > MAX_SPLIT_LINE:
            raise _TooMuch(f"line {number} is longer than {MAX_SPLIT_LINE:,} characters")
        yield line


def _split_counts(run_dir: Path | None) -> dict[str, Any]:
    """Images per split and class (and patient groups per split) from the run's split.csv, read within bounds of
    bytes, lines, line length, class names and distinct values; past one, the counts are "not shown"."""
    data, why = _read_file(run_dir / "split.csv" if run_dir else None, MAX_SPLIT_BYTES)
    if data is None:
        return {"note": why}
    counts: dict[str, dict[str, int]] = {}
    images: dict[str, int] = {}
    groups: dict[str, set[str]] = {}
    columns: list[str] = []
    try:
        text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8-sig", newline="")  # decoded a block at a time
        reader = csv.reader(_lines(text))
        header = next(reader, [])
        columns = [read_cell(c) for c in header]
        if not {"label", "split"} <= set(columns):
            return {"note": f"{NOT_RECORDED} (split.csv has no label and split columns)"}
        at = {name: columns.index(name) for name in ("label", "split", "group") if name in columns}
        labels_seen = classes = 0
        for row in reader:
            if not row:
                continue
            cell = {name: read_cell(row[i]) if i < len(row) else "" for name, i in at.items()}
            split = cell["split"]
            if split not in images and len(images) >= MAX_SPLITS:
                raise _TooMuch(f"more than {MAX_SPLITS} distinct splits")
            images[split] = images.get(split, 0) + 1
            per = counts.setdefault(split, {})
            names = [name for name in cell["label"].split(";") if name]
            labels_seen += len(names)
            if labels_seen > MAX_SPLIT_LABELS:
                raise _TooMuch(f"more than {MAX_SPLIT_LABELS:,} class names")
            for name in names:
                if name not in per:
                    classes += 1
                    if classes > MAX_SPLIT_CLASSES:
                        raise _TooMuch(f"more than {MAX_SPLIT_CLASSES:,} distinct classes")
                per[name] = per.get(name, 0) + 1
            if "group" in at:
                groups.setdefault(split, set()).add(cell["group"])
    except _TooMuch as err:
        return {"note": f"{NOT_RECORDED} (split.csv holds {err}; counts not shown)"}
    except (csv.Error, UnicodeDecodeError, ValueError) as err:
        return {"note": f"{NOT_RECORDED} (split.csv is not readable: {type(err).__name__})"}
    extra_columns = [c for c in columns if c not in ("path", "label", "split", "group")]
    return {"note": "from the run's split.csv", "images": images, "per_class": counts,
            "groups": {s: len(g) for s, g in groups.items()} if groups else None,
            "columns": [_text(c, 100) for c in extra_columns[:50]]}


def _run_metrics(run_dir: Path | None) -> tuple[dict[str, Any], str]:
    payload, why = _read_json(run_dir / "metrics.json" if run_dir else None)
    return (payload, "") if isinstance(payload, Mapping) else ({}, why or f"{NOT_RECORDED} (not a mapping)")


def _scalars(section: Any) -> dict[str, float]:
    return {str(k): float(v) for k, v in (section or {}).items() if _num(v) is not None} \
        if isinstance(section, Mapping) else {}


def _leakage(metrics: Mapping[str, Any]) -> dict[str, Any]:
    data = _map(_get(metrics, "data"))
    duplicates = {str(k): _int(v) for k, v in _map(_get(data, "cross_split_duplicates")).items()}
    groups = {str(k): _int(v) for k, v in _map(_get(data, "groups_across_splits")).items()}
    return {"duplicates": duplicates or None, "groups_across_splits": groups or None,
            "split_key": _text(_get(data, "split_key"), 200)}


def _report_facts(report: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The report's numbers (only finite numbers and short texts pass)."""
    if not isinstance(report, Mapping):
        return None
    m, cal, ci = (_map(_get(report, k)) for k in ("metrics", "calibration", "ci"))
    headline = {}
    for key, label in HEADLINE:
        value = _num(_get(m, *{"f1_macro": ("average", "macro", "f1")}.get(key, (key,))))
        interval = _get(ci, key)
        low, high = _num(_get(interval, "low")), _num(_get(interval, "high"))
        headline[key] = {"label": label, "value": value, "low": low, "high": high}
    per_class = [{"class": _text(_get(r, "class"), 200), **{k: _num(_get(r, k)) for k in
                                                            ("precision", "recall", "f1", "auc")},
                  "support": _int(_get(r, "support"))} for r in _list(_get(m, "per_class")) if isinstance(r, Mapping)]
    points = {}
    for name, p in _map(_get(report, "operating_points")).items():
        if isinstance(p, Mapping):
            points[_text(name, 64)] = {**{k: _num(p.get(k)) for k in ("threshold", "sensitivity", "specificity", "ppv",
                                                                       "npv")},
                                       **{k: _int(p.get(k)) for k in ("tp", "fp", "fn", "tn")},
                                       "chosen_on": _text(p.get("chosen_on"), 20)}
    return {
        "split": _text(_get(report, "split"), 40), "task": _text(_get(report, "task"), 40), "n": _int(_get(m, "n")),
        "headline": headline, "f1_weighted": _num(_get(m, "average", "weighted", "f1")),
        "ordinal": {k: _num(_get(m, "ordinal", k)) for k in ("quadratic_weighted_kappa", "mae")}
        if _get(m, "ordinal") else None,
        "ci": {"level": _num(_get(ci, "level")), "resamples": _int(_get(ci, "resamples")),
               "seed": _int(_get(ci, "seed")), "method": _text(_get(ci, "method"), 40)} if ci else None,
        "calibration": {"ece": _num(_get(cal, "ece")), "bins": _int(_get(cal, "bins")),
                        "temperature": _num(_get(cal, "temperature")),
                        "ece_after_temperature": _num(_get(cal, "ece_after_temperature")),
                        "accuracy_unchanged": _get(cal, "accuracy_unchanged")},
        "operating_points": points or None,
        "medmnist_official": {k: _num(_get(report, "medmnist_official", k)) for k in ("acc", "auc")}
        if _get(report, "medmnist_official") else None,
        "per_class": per_class,
    }


def _operating(checkpoint: Path) -> dict[str, Any]:
    from medclass.module import operating_file

    try:
        values = operating_file.load(checkpoint)
    except (MedclassError, OSError) as err:
        return {"note": f"{NOT_RECORDED} ({str(err)[:200]})"}
    if not values:
        return {"note": NOT_RECORDED}
    return {"note": f"from {operating_file.path_for(checkpoint).name}", **values}


HEADING = re.compile(r" {0,3}(#{1,6})(\s|$)")
FENCE = re.compile(r" {0,3}(`{3,}|~{3,})")


def _fenced(lines: list[str]) -> list[bool]:
    """For each line, whether it is part of a fenced code block (its fences included)."""
    fence, inside = None, []
    for line in lines:
        marker = FENCE.match(line)
        if fence is None and marker:
            fence = marker.group(1)
            inside.append(True)
        elif fence is not None:
            inside.append(True)
            if marker and marker.group(1)[0] == fence[0] and len(marker.group(1)) >= len(fence):
                fence = None
        else:
            inside.append(False)
    return inside


def nest(markdown: str) -> str:
    """A report section's markdown made to sit under a `###` heading of the card: a leading heading is dropped
    (the card gives its own title) and the other headings move down to level 4 or below, outside code blocks, so
    no section is added to the card's nine or cut short."""
    lines = markdown.strip("\n").splitlines()
    if lines and HEADING.match(lines[0]):
        lines = lines[1:]
        while lines and not lines[0].strip():
            lines = lines[1:]
    code = _fenced(lines)
    levels = [len(m.group(1)) for line, c in zip(lines, code, strict=True) if not c and (m := HEADING.match(line))]
    shift = max(0, 4 - min(levels, default=4))
    return "\n".join("#" * shift + line.lstrip(" ") if not c and HEADING.match(line) else line
                     for line, c in zip(lines, code, strict=True))


EXTRA_TITLES = {"subgroups": "Subgroups", "external": "External validation",
                "selective": "Selective prediction (abstention)"}


def _extra(extra: Mapping[str, Any] | None) -> dict[str, dict[str, str]]:
    """Sections passed in by the caller (eval.py's report sections): `{name: {"markdown": str[, "title": str]}}`;
    their headings are nested under the card's (`nest`)."""
    out = {}
    for name, section in (extra or {}).items():
        if not isinstance(section, Mapping) or not isinstance(section.get("markdown"), str):
            raise ValueError(f"model card extra section {name!r} needs a 'markdown' string")
        title = section.get("title") or EXTRA_TITLES.get(str(name), str(name))
        out[str(name)] = {"markdown": nest(section["markdown"]), "title": str(title)}
    return out


def software_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in SOFTWARE:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = "not installed"
    return versions


def card_facts(checkpoint: Path, module_hparams: Mapping[str, Any], report: Mapping[str, Any] | None,
               run_dir: Path | None, extra: Mapping[str, Any] | None = None, *, parameters: int | None = None,
               eval_dir: Path | None = None) -> dict[str, Any]:
    """Everything the card states, as plain values. `module_hparams`: the loaded model's checked hyperparameters;
    `report`: eval's report dict (or None: then `eval_dir/report.json` when there is one); `run_dir`: the training
    run folder; `parameters`: the loaded model's parameter count (else the run's metrics.json); `eval_dir`: eval's
    output folder (its metrics.json names the split key that was scored)."""
    checkpoint = Path(checkpoint)
    run_dir = Path(run_dir) if run_dir is not None else None
    if run_dir is not None and not run_dir.is_dir():
        run_dir = None
    hp = dict(module_hparams)
    info = dict(_map(hp.get("data_info")))
    names = [str(n) for n in info.get("class_names") or []]
    report_note = "" if report is not None else "run medclass-eval ckpt_path=<this checkpoint>"
    eval_metrics, _ = _read_json(Path(eval_dir) / "metrics.json") if eval_dir is not None else (None, "")
    if report is None and eval_dir is not None:
        loaded, why = _read_json(Path(eval_dir) / "report.json")
        scored = _get(loaded, "checkpoint")
        if isinstance(loaded, Mapping) and isinstance(scored, str) and Path(scored).name == checkpoint.name:
            report = loaded
        else:  # another model's report must not be printed as this one's
            report_note = (f"{Path(eval_dir) / 'report.json'} scores another checkpoint" if isinstance(loaded, Mapping)
                           else why)
            eval_metrics = None
    run_metrics, run_metrics_note = _run_metrics(run_dir)
    run = _map(_get(run_metrics, "run"))
    config = _config_facts(run_dir)
    data_cfg = {str(k): _bounded(v, [200]) for k, v in _map(hp.get("data_cfg")).items()}
    best = _text(_get(run, "best_checkpoint"), 1000)
    return {
        "checkpoint": _checkpoint_facts(checkpoint),
        "written": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "architecture": {"arch": _text(_get(hp, "net", "arch"), 100), "target": config["model_target"],
                         "net": _bounded(_map(hp.get("net")), [200]),
                         "parameters": _int(parameters) if parameters is not None else _int(_get(run, "parameters")),
                         "parameters_note": "counted on the loaded model" if parameters is not None
                         else "from the run's metrics.json" if _int(_get(run, "parameters")) is not None
                         else NOT_RECORDED},
        "task": _text(info.get("task"), 40), "class_names": names,
        "input": {k: _bounded(info.get(k), [20]) for k in ("image_size", "in_chans", "mean", "std", "symmetry")},
        "training": {**{k: _bounded(hp.get(k), [200]) for k in ("optimizer", "scheduler", "loss", "label_smoothing",
                                                                 "class_weights", "freeze_backbone", "tta")},
                     **config,
                     "run_dir": str(run_dir) if run_dir else None,
                     "run": {k: _bounded(_get(run, k), [5]) for k in ("seed", "epochs", "steps", "train_seconds",
                                                                       "fold", "folds") if _get(run, k) is not None},
                     "run_note": "from the run's metrics.json" if run else run_metrics_note,
                     "best_checkpoint": Path(best).name if best else None,
                     "best_val": _scalars(_get(run_metrics, "best_val")),
                     "run_test": _scalars(_get(run_metrics, "test"))},
        "data": {"description": data_cfg, "split_key": _text(info.get("split_key"), 200),
                 "scored_split_key": _text(_get(eval_metrics, "split_key"), 200),
                 "run_split_key": _leakage(run_metrics)["split_key"],
                 "train_class_counts": [_int(c) for c in info.get("class_counts") or []],
                 "train_size": _int(info.get("train_size")),
                 "counts": _split_counts(run_dir),
                 "group_by": _text(data_cfg.get("group_by"), 200),
                 "leakage": _leakage(run_metrics), "leakage_note": "from the run's metrics.json" if run_metrics
                 else run_metrics_note},
        "report": _report_facts(report), "report_note": report_note,
        "operating": _operating(checkpoint),
        "extra": _extra(extra),
        "software": software_versions(),
    }


# -- the markdown ---------------------------------------------------------------------------------------------------

def _cell(value: Any) -> str:
    """Text for a table cell or a sentence: markdown and HTML characters escaped, one line."""
    text = _text(value, 300) if value is not None else None
    if text is None:
        return "–"
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return re.sub(r"([\\`*_{}\[\]#+!|~])", r"\\\1", text)


def _code(value: Any) -> str:
    """Inline code that shows `value` as text, whatever backticks it holds."""
    if isinstance(value, (list, tuple, Mapping)):
        value = json.dumps(_bounded(value, [50]), ensure_ascii=False)
    text = _text(value, 300) or ""
    fence = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text.replace('|', '¦')}{pad}{fence}"


def _block(text: str, lang: str = "") -> list[str]:
    """A fenced code block longer than any backtick run inside it: the text cannot close it."""
    fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    return [f"{fence}{lang}", text.rstrip("\n"), fence]


def _f(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def _with_ci(value: float | None, low: float | None, high: float | None, level: float | None) -> str:
    if value is None:
        return NOT_RECORDED
    if low is None or high is None:
        return f"{_f(value)} (no interval)"
    return f"{_f(value)} ({level or 0.95:.0%} CI {_f(low)}–{_f(high)})"


def _yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def model_card_markdown(facts: Mapping[str, Any]) -> str:
    ck, arch, train, data = facts["checkpoint"], facts["architecture"], facts["training"], facts["data"]
    rep, op, extra = facts.get("report"), facts.get("operating") or {}, facts.get("extra") or {}
    names = facts.get("class_names") or []
    lines = [f"# Model card: {_code(ck['file'])}", "",
             f"Checkpoint {_code(ck['file'])}, SHA-256 {_code(ck['sha256'])}"
             + (f", {ck['bytes']:,} bytes" if ck.get("bytes") is not None else "") + ".",
             f"Written by medclass on {facts['written']} following Mitchell et al. (2019), *Model Cards for Model "
             "Reporting*. Facts medclass knows are filled in from the files named beside them; what only people can "
             f"say is marked {AUTHORS}", ""]

    # 1. Model details
    lines += ["## Model details", "",
              f"- Developed by (person or organization), date, version, license, citation, contact: {AUTHORS}",
              f"- Task: {_cell(facts.get('task'))}, {len(names)} classes: "
              + ", ".join(_code(n) for n in names[:200]) + (" …" if len(names) > 200 else ""),
              f"- Architecture: {_code(arch['arch']) if arch['arch'] else NOT_RECORDED} (medclass network registry)"
              + (f"; run config `_target_`: {_code(arch['target'])} (as text)" if arch.get("target") else ""),
              "- Parameters: " + (f"{arch['parameters']:,} ({arch['parameters_note']})" if arch.get("parameters")
                                  is not None else NOT_RECORDED)]
    inp = facts.get("input") or {}
    lines.append(f"- Input: {_cell(inp.get('image_size'))} × {_cell(inp.get('image_size'))} px, "
                 f"{_cell(inp.get('in_chans'))} channel(s), normalized with mean {_code(inp.get('mean'))} and std "
                 f"{_code(inp.get('std'))}; orientation symmetry {_cell(inp.get('symmetry'))}")
    saved = ", ".join(f"{k.replace('_', ' ')} {_cell(ck[k])}" for k in ("lightning_version", "epoch", "global_step")
                      if ck.get(k) is not None)
    lines.append(f"- Checkpoint saved at: {saved or NOT_RECORDED}" + (" (from the checkpoint)" if saved else ""))
    lines.append("- Software where this card was written: " + ", ".join(f"{k} {_cell(v)}"
                                                                      for k, v in facts["software"].items()))
    if train.get("best_checkpoint"):
        note = "" if train["best_checkpoint"] == ck["file"] else " (not this file: the run's values below are for it)"
        lines.append(f"- The run's chosen checkpoint: {_code(train['best_checkpoint'])}{note}")
    lines += ["", "### Training configuration", ""]
    config = train.get("config") or {}
    described = {k: train[k] for k in ("optimizer", "scheduler", "loss", "label_smoothing", "class_weights",
                                       "freeze_backbone", "tta") if train.get(k) is not None and k not in config}
    if described:
        lines += ["From the checkpoint's hyperparameters:", "", *_block(_yaml(described), "yaml"), ""]
    if config:
        lines += [f"Key parts of the run's configuration, {train['config_note']}:", "",
                  *_block(_yaml(train["config"]), "yaml"), ""]
    else:
        lines += [f"Run configuration: {train['config_note']}.", ""]
    if train.get("run"):
        lines.append("Run (from the run's metrics.json): " + ", ".join(f"{k.replace('_', ' ')} {_cell(v)}"
                                                                        for k, v in train["run"].items()) + ".")
    else:
        lines.append(f"Run summary: {train['run_note']}.")
    lines += ["", f"Training command ({train['command_note']}):" if train.get("command") else
              f"Training command: {train['command_note']}.", ""]
    if train.get("command"):
        lines += [*_block(train["command"], "bash"), ""]
    lines.append(f"Training run folder: {_code(train['run_dir']) if train.get('run_dir') else NOT_RECORDED}.")

    # 2. Intended use
    lines += ["", "## Intended use", "",
              f"- Primary intended uses: {AUTHORS}",
              f"- Primary intended users: {AUTHORS}",
              f"- Out-of-scope uses: {AUTHORS}",
              f"- What the model outputs: one probability per class ({_cell(facts.get('task'))}) for a "
              f"{_cell(inp.get('image_size'))} px image with {_cell(inp.get('in_chans'))} channel(s). It was trained "
              "and evaluated only on the data described below."]

    # 3. Factors
    counts = data.get("counts") or {}
    columns = counts.get("columns") or []
    lines += ["", "## Factors", "",
              f"- Relevant factors (groups, instrumentation, environments) and why: {AUTHORS}",
              "- Per-image columns recorded with the data (split.csv): "
              + (", ".join(_code(c) for c in columns) if columns else "none beyond path, label and split"
                 if counts.get("images") else NOT_RECORDED),
              "- Evaluation factors (subgroups scored): " + ("see Subgroups under Quantitative analyses"
                                                            if "subgroups" in extra else NOT_RECORDED)]

    # 4. Metrics
    lines += ["", "## Metrics", ""]
    if rep:
        ci = rep.get("ci") or {}
        lines += ["- Performance measures: accuracy, balanced accuracy (mean recall over classes), ROC AUC (macro, "
                  "one-vs-rest), F1 (macro and weighted), per-class precision, recall, F1 and AUC.",
                  "- Variation: " + (f"{ci['level'] or 0.95:.0%} percentile intervals from {ci['resamples']} bootstrap "
                                     f"resamples of the images (seed {ci['seed']})" if ci else
                                     "no intervals (bootstrap=0)") + ".",
                  "- Calibration: expected calibration error (ECE, "
                  f"{_cell((rep['calibration'] or {}).get('bins'))} bins), before and after a temperature fitted on "
                  "the validation split."]
        if rep.get("operating_points"):
            lines.append("- Decision thresholds: 0.5, and thresholds chosen on the validation split (Youden's J, a "
                         "target sensitivity), applied unchanged to the scored split.")
    else:
        lines.append(f"- Performance measures: {NOT_RECORDED} (no evaluation report; run medclass-eval).")
    lines.append(f"- Why these measures, and which errors matter most for the intended use: {AUTHORS}")

    # 5. Evaluation data
    lines += ["", "## Evaluation data", ""]
    if rep:
        lines.append(f"- Split scored: {_code(rep['split'])}, {_cell(rep['n'])} images")
        support = [r for r in rep["per_class"] if r["support"] is not None]
        if support:
            lines.append("- Images per class: " + ", ".join(f"{_cell(r['class'])} {r['support']}"
                                                            for r in support[:200]))
    else:
        lines.append(f"- Split scored: {NOT_RECORDED}")
    lines.append(f"- Split key of the scored data: {_code(data['scored_split_key'] or data['split_key'])}"
                 if (data.get("scored_split_key") or data.get("split_key")) else f"- Split key: {NOT_RECORDED}")
    if data.get("scored_split_key") and data.get("split_key") and data["scored_split_key"] != data["split_key"]:
        lines.append(f"- **The scored split differs from the training split** (trained on {_code(data['split_key'])})")
    lines.append(f"- Same data source and preprocessing as training ({_cell((data['description'] or {}).get('kind'))}"
                 " data, see Training data); external data: "
                 + ("see External validation under Quantitative analyses" if "external" in extra else
                    NOT_RECORDED))

    # 6. Training data
    desc = data.get("description") or {}
    shown = {k: v for k, v in desc.items() if k not in ("batch_size", "eval_batch_size", "num_workers", "pin_memory",
                                                         "download")}
    lines += ["", "## Training data", "",
              f"- Split key: {_code(data['split_key']) if data.get('split_key') else NOT_RECORDED} (names the exact "
              "train/val/test partition; eval.py refuses another unless told)"]
    if data.get("run_split_key") and data.get("split_key") and data["run_split_key"] != data["split_key"]:
        lines.append(f"- **The run's metrics.json names another split key**: {_code(data['run_split_key'])}")
    if shown:
        lines += ["- Data description (from the checkpoint):", "", *_block(_yaml(shown), "yaml"), ""]
    group_note = (f"grouped by {_code(data['group_by'])}" if data.get("group_by") else
                  "grouped by the manifest's `group` column" if counts.get("groups") else
                  "no patient grouping recorded (no group_by, no group column in split.csv)")
    lines.append(f"- Patient grouping: {group_note}")
    if counts.get("images"):
        splits = [s for s in ("train", "val", "test") if s in counts["images"]] + sorted(
            s for s in counts["images"] if s not in ("train", "val", "test"))
        lines += ["", f"Images per split and class ({counts['note']}):", "",
                  "| class | " + " | ".join(_cell(s) for s in splits) + " |", "|---" * (len(splits) + 1) + "|"]
        seen = list(names) + sorted({c for s in splits for c in counts["per_class"].get(s, {})} - set(names))
        lines += [f"| {_cell(c)} | " + " | ".join(str(counts["per_class"].get(s, {}).get(c, 0)) for s in splits) + " |"
                  for c in seen[:200]]
        lines.append("| **images** | " + " | ".join(str(counts["images"][s]) for s in splits) + " |")
        if counts.get("groups"):
            lines.append("| **groups (patients)** | " + " | ".join(str(counts["groups"].get(s, 0)) for s in splits)
                         + " |")
        lines.append("")
    else:
        lines.append(f"- Images per split and class: {counts.get('note', NOT_RECORDED)}")
        if data.get("train_class_counts"):
            lines.append("- Training images per class (from the checkpoint): " + ", ".join(
                f"{_cell(n)} {c}" for n, c in zip(names, data["train_class_counts"], strict=False)) +
                f"; {data.get('train_size')} in all")
    leak = data.get("leakage") or {}
    if leak.get("duplicates"):
        lines.append("- Leakage check, exact image copies across splits: " + ", ".join(
            f"{k.replace('_', ' ')} {_cell(v)}" for k, v in leak["duplicates"].items()) + f" ({data['leakage_note']})")
    else:
        lines.append(f"- Leakage check, exact image copies across splits: {data['leakage_note']}")
    if leak.get("groups_across_splits"):
        lines.append("- Leakage check, patients (groups) with images in two splits: " + ", ".join(
            f"{k.replace('_', ' ')} {_cell(v)}" for k, v in leak["groups_across_splits"].items()))
    else:
        lines.append("- Leakage check, patients in two splits: not applicable (no groups)" if leak.get("duplicates")
                     else f"- Leakage check, patients in two splits: {NOT_RECORDED}")
    lines.append(f"- Provenance, collection, consent and labelling of the data: {AUTHORS}")

    # 7. Quantitative analyses
    lines += ["", "## Quantitative analyses", ""]
    if rep:
        level = (rep.get("ci") or {}).get("level")
        lines += [f"On split {_code(rep['split'])} ({_cell(rep['n'])} images), from the evaluation report:", "",
                  "| metric | value |", "|---|---|"]
        lines += [f"| {h['label']} | {_with_ci(h['value'], h['low'], h['high'], level)} |"
                  for h in rep["headline"].values()]
        lines.append(f"| F1 (weighted) | {_with_ci(rep['f1_weighted'], None, None, level)} |")
        if rep.get("ordinal"):
            lines.append(f"| quadratic weighted kappa / MAE (grades) | {_f(rep['ordinal']['quadratic_weighted_kappa'])}"
                         f" / {_f(rep['ordinal']['mae'])} (no interval) |")
        if rep.get("medmnist_official"):
            o = rep["medmnist_official"]
            lines.append(f"| MedMNIST official ACC / AUC | {_f(o['acc'])} / {_f(o['auc'])} (no interval) |")
        cal = rep.get("calibration") or {}
        lines.append(f"| ECE ({_cell(cal.get('bins'))} bins) | {_with_ci(cal.get('ece'), None, None, level)} |")
        if cal.get("temperature") is not None:
            lines.append(f"| ECE after temperature scaling (T = {cal['temperature']:.4f}, fitted on val) | "
                         f"{_with_ci(cal.get('ece_after_temperature'), None, None, level)} |")
        else:
            lines.append("| temperature | not fitted |")
        if rep.get("operating_points"):
            lines += ["", "Operating points (thresholds on the positive class's probability):", "",
                      "| threshold | chosen on | sensitivity | specificity | PPV | NPV | TP / FP / FN / TN |",
                      "|---|---|---|---|---|---|---|"]
            for name, p in rep["operating_points"].items():
                lines.append(f"| {_cell(name)} = {_f(p['threshold'])} | {_cell(p['chosen_on'])} | "
                             f"{_f(p['sensitivity'])} | {_f(p['specificity'])} | {_f(p['ppv'])} | {_f(p['npv'])} | "
                             f"{p['tp']} / {p['fp']} / {p['fn']} / {p['tn']} |")
            lines.append("")
            lines.append("Sensitivity, specificity, PPV and NPV: point estimates (no interval recorded).")
        if rep["per_class"]:
            lines += ["", "Per class (point estimates):", "", "| class | precision | recall | F1 | support | AUC |",
                      "|---|---|---|---|---|---|"]
            lines += [f"| {_cell(r['class'])} | {_f(r['precision'])} | {_f(r['recall'])} | {_f(r['f1'])} | "
                      f"{_cell(r['support'])} | {_f(r['auc'])} |" for r in rep["per_class"][:200]]
    else:
        lines.append(f"Evaluation report: {NOT_RECORDED} ({_cell(facts.get('report_note') or 'none given')}).")
        if train.get("run_test"):
            lines += ["", "The training run's own test pass (from its metrics.json; no intervals, no calibration):",
                      "", "| metric | value |", "|---|---|"]
            lines += [f"| {_cell(k)} | {_f(v)} |" for k, v in train["run_test"].items()]
    if train.get("best_val"):
        lines += ["", "Validation metrics of the run's chosen checkpoint (from its metrics.json; the checkpoint was "
                  "chosen on validation, so these are optimistic): "
                  + ", ".join(f"{_cell(k)} {_f(v)}" for k, v in train["best_val"].items()) + "."]
    lines.append("")
    abstain = _map(op.get("abstain"))
    if op.get("temperature") is not None or op.get("thresholds") or abstain:
        fitted = ([f"temperature {op['temperature']:.4f}"] if op.get("temperature") is not None else []) + [
            f"threshold {_cell(k)} = {v:.4f}" for k, v in (op.get("thresholds") or {}).items()]
        if _num(abstain.get("threshold")) is not None:
            kept = _num(abstain.get("val_coverage"))
            fitted.append(f"images below confidence {_f(_num(abstain['threshold']))} referred (chosen on validation "
                          f"for {_cell(abstain.get('target'))} {_f(_num(abstain.get('value')))}"
                          + (f", coverage {_f(kept)} on validation" if kept is not None else "") + ")")
        lines.append(f"Applied by predict.py and export.py ({op['note']}): {', '.join(fitted)}.")
    else:
        lines.append(f"Values applied by predict.py and export.py (operating file): {op.get('note', NOT_RECORDED)}.")
    for key in ("subgroups", "external"):
        lines += ["", f"### {EXTRA_TITLES[key]}", ""]
        lines += [extra[key]["markdown"].rstrip("\n")] if key in extra else [f"{NOT_RECORDED}."]
    for key, section in extra.items():
        if key not in ("subgroups", "external"):
            lines += ["", f"### {_cell(section['title'])}", "", section["markdown"].rstrip("\n")]

    # 8. Ethical considerations
    lines += ["", "## Ethical considerations", "",
              f"- Sensitive data, human life, mitigations, risks and harms, use cases to avoid: {AUTHORS}",
              "- Facts recorded: patient grouping — " + group_note
              + "; subgroup performance — " + ("reported above" if "subgroups" in extra else NOT_RECORDED) + "."]

    # 9. Caveats and recommendations
    caveats = []
    if rep and rep.get("split") == "val":
        caveats.append("The scored split is the validation split, on which the checkpoint was chosen: the numbers "
                       "are optimistic.")
    if leak.get("duplicates") and any(v for v in leak["duplicates"].values()):
        caveats.append("Exact copies of images exist across splits (see Training data): the test score may be "
                       "inflated.")
    if leak.get("groups_across_splits") and any(v for v in leak["groups_across_splits"].values()):
        caveats.append("Some patients have images in two splits: the test score may measure memory of a patient.")
    if "external" not in extra:
        caveats.append("No external validation recorded: performance at another site, scanner or population is "
                       "unknown.")
    if "subgroups" not in extra:
        caveats.append("No subgroup analysis recorded: performance may differ between groups of patients.")
    if rep and rep.get("n") is not None and rep["n"] < 500:
        caveats.append(f"The scored split holds {rep['n']} images: the intervals above are wide.")
    lines += ["", "## Caveats and recommendations", "", *[f"- {c}" for c in caveats],
              f"- Further caveats and recommendations: {AUTHORS}"]

    return "\n".join(lines) + "\n"


def write_model_card(out_dir: Path, checkpoint: Path, module_hparams: Mapping[str, Any],
                     report: Mapping[str, Any] | None, run_dir: Path | None, extra: Mapping[str, Any] | None = None,
                     *, parameters: int | None = None, eval_dir: Path | None = None) -> Path:
    """Write `out_dir/model_card.md` (atomically, through medclass.utils.io) and return its path."""
    facts = card_facts(checkpoint, module_hparams, report, run_dir, extra, parameters=parameters, eval_dir=eval_dir)
    return write_text(Path(out_dir) / "model_card.md", model_card_markdown(facts))
