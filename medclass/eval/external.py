"""External validation: every image of a data set from another site, scored as one test set.

The external set's labels may be coarser or named differently from the checkpoint's classes:
`external.class_map` maps each checkpoint class onto one external label (several classes may share
one, e.g. glioma, meningioma and pituitary onto "tumour"), and the probabilities of the classes that
share a label are summed. Images go through the training machine's preprocessing from the checkpoint
(`medclass.module.scoring.scored_batches`: size, channels, mean and std, test-time views as trained).
The external folder or CSV is data: scanned for files and labels, never executed; the class map comes
from the command line and is checked against the checkpoint's classes and the external labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from medclass.data.scan import Scan, scan_folder
from medclass.eval.bootstrap import bootstrap_ci
from medclass.eval.metrics import classification_metrics
from medclass.utils.errors import MedclassError


def parse_class_map(class_map: Mapping[str, Any] | None, class_names: list[str]) -> dict[str, str]:
    """{checkpoint class: external label} for every checkpoint class; None keeps the checkpoint's names."""
    if not class_map:
        return {name: name for name in class_names}
    if not isinstance(class_map, Mapping):
        raise MedclassError(f"external.class_map={class_map!r} is not a mapping; give "
                            "'external.class_map={glioma:tumour,notumor:none}'")
    unknown = [str(k) for k in class_map if str(k) not in class_names]
    if unknown:
        raise MedclassError(f"external.class_map names {', '.join(unknown)}, not classes of this checkpoint "
                            f"({', '.join(class_names)}); map the checkpoint's classes onto the external labels")
    missing = [name for name in class_names if name not in {str(k) for k in class_map}]
    if missing:
        raise MedclassError(f"external.class_map does not map {', '.join(missing)}; map every class of the "
                            "checkpoint (several may share one external label)")
    mapping = {str(k): str(v).strip() for k, v in class_map.items()}
    empty = [k for k, v in mapping.items() if not v or v == "None"]
    if empty:
        raise MedclassError(f"external.class_map gives {', '.join(empty)} no external label; name one")
    return mapping


def external_classes(mapping: dict[str, str]) -> list[str]:
    """The external labels in sorted order (for two labels, the second is the positive class)."""
    return sorted(set(mapping.values()))


def map_probabilities(probs: np.ndarray, class_names: list[str], mapping: dict[str, str]) -> np.ndarray:
    """Probabilities over the external labels: each one the sum over the checkpoint classes mapped onto it."""
    targets = external_classes(mapping)
    matrix = np.zeros((len(class_names), len(targets)), dtype=np.float64)
    for i, name in enumerate(class_names):
        matrix[i, targets.index(mapping[name])] = 1.0
    return np.asarray(probs, dtype=np.float64) @ matrix


def map_labels(labels: np.ndarray, class_names: list[str], mapping: dict[str, str]) -> np.ndarray:
    """Checkpoint class indices as indices into the external labels (the internal test split, mapped)."""
    targets = external_classes(mapping)
    lookup = np.array([targets.index(mapping[name]) for name in class_names], dtype=np.int64)
    return lookup[np.asarray(labels, dtype=np.int64).reshape(-1)]


def scan_external(root: str | Path) -> Scan:
    """The external set's files and labels: a class-per-folder root or a manifest CSV (`path,label`, paths
    relative to the CSV's folder); one label per image."""
    path = Path(root).expanduser()
    if path.is_file() and path.suffix.lower() == ".csv":
        from medclass.data.manifest import ManifestDataModule

        scan = ManifestDataModule(manifest=str(path), name="external", multi_label=False).collect()["train"]
    elif path.is_dir():
        scan = scan_folder(path, "external.root")
    else:
        raise MedclassError(f"external.root={root} is neither a folder of class folders nor a CSV manifest")
    return scan


def encode_labels(labels: list[str], targets: list[str], root: str | Path) -> np.ndarray:
    """Label indices into `targets`; a label no checkpoint class maps onto is one error line."""
    unmapped = Counter(label for label in labels if label not in targets)
    if unmapped:
        found = ", ".join(f"{label!r} ({n} images)" for label, n in sorted(unmapped.items()))
        raise MedclassError(f"external.root={root}: {found} is not an external label this checkpoint's classes map "
                            f"onto ({', '.join(targets)}); map a class onto it in external.class_map or remove "
                            "those images")
    index = {name: i for i, name in enumerate(targets)}
    return np.array([index[label] for label in labels], dtype=np.int64)


def score_mapped(probs: np.ndarray, labels: np.ndarray, targets: list[str], n_resamples: int,
                 seed: int) -> dict[str, Any]:
    """Metrics over the external labels, with bootstrap intervals."""
    task = "binary-class" if len(targets) == 2 else "multi-class"
    out: dict[str, Any] = {"task": task, "images": int(len(labels)),
                           "metrics": classification_metrics(probs, labels, targets, task)}
    if n_resamples:
        out["ci"] = bootstrap_ci(probs, labels, task, n_resamples, seed)
    return out


def evaluate_external(model: Any, root: str | Path, class_map: Mapping[str, Any] | None, internal: tuple[
        np.ndarray, np.ndarray] | None = None, batch_size: int = 64, n_resamples: int = 1000, seed: int = 0,
                      progress: bool = False) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Score `root` with `model` (a `medclass.module.scoring.TorchModel`), mapped through `class_map`.

    `internal`: the internal test split's (probabilities, labels) in the checkpoint's classes, mapped the same
    way so the report sets the two side by side on the same labels. Returns the summary and one row per image
    (path, label, prediction, mapped probabilities) for `external_predictions.csv`.
    """
    from medclass.module.scoring import scored_batches

    meta = model.meta
    if meta["task"] == "multi-label":
        raise MedclassError("external validation covers binary and multi-class models; this one is multi-label")
    names = list(meta["class_names"])
    mapping = parse_class_map(class_map, names)
    targets = external_classes(mapping)
    scan = scan_external(root)
    labels = encode_labels(scan.labels, targets, root)  # before scoring: a bad map fails in a second
    label_of = dict(zip(scan.files, labels, strict=True))
    skipped = list(scan.skipped)
    paths, chunks = [], []
    for kept, _, raw in scored_batches(model, scan.files, batch_size, skipped, progress):
        paths += kept
        chunks.append(np.asarray(raw, dtype=np.float64))
    if not paths:
        raise MedclassError(f"external.root={root} holds no readable image ({len(skipped)} files skipped)")
    probs = map_probabilities(np.concatenate(chunks), names, mapping)
    y = np.array([label_of[p] for p in paths])
    summary: dict[str, Any] = {"root": str(root), "class_map": mapping, "classes": targets,
                               "skipped": len(skipped), "class_counts": {t: int((y == i).sum())
                                                                          for i, t in enumerate(targets)},
                               "external": score_mapped(probs, y, targets, n_resamples, seed)}
    if internal is not None:
        summary["internal_test"] = score_mapped(map_probabilities(internal[0], names, mapping),
                                                map_labels(internal[1], names, mapping), targets, n_resamples, seed)
    rows = [{"path": str(p), "label": targets[t], "prediction": targets[int(row.argmax())],
             **{f"prob_{name}": round(float(v), 6) for name, v in zip(targets, row, strict=True)}}
            for p, t, row in zip(paths, y, probs, strict=True)]
    return summary, rows


def _cell(part: dict[str, Any] | None, metric: str, ci_key: str) -> str:
    if not part:
        return "–"
    value = part["metrics"].get(metric)
    if value is None:
        return "–"
    ci = (part.get("ci") or {}).get(ci_key)
    return f"{value:.4f}" + (f" [{ci['low']:.4f}, {ci['high']:.4f}]" if ci and np.isfinite(ci["low"]) else "")


def external_markdown(summary: dict[str, Any]) -> str:
    """The report section: internal test and external set side by side, on the external labels."""
    mapping = summary["class_map"]
    merged = {t: [c for c, v in mapping.items() if v == t] for t in summary["classes"]}
    internal, external = summary.get("internal_test"), summary["external"]
    counts = ", ".join(f"{t} {n}" for t, n in summary["class_counts"].items())
    lines = ["## External validation", "",
             f"`{summary['root']}`: {external['images']} images ({counts}), {summary['skipped']} files skipped; "
             "scored with the checkpoint's preprocessing, probabilities summed over the classes mapped onto each "
             "external label:", ""]
    lines += [f"- **{t}** ← {', '.join(cs)}" for t, cs in merged.items()]
    inside = f" ({internal['images']})" if internal else ""
    lines += ["", f"| metric (95 % bootstrap interval) | internal test{inside} | external ({external['images']}) |",
              "|---|---|---|"]
    for label, metric, ci_key in (("accuracy", "accuracy", "accuracy"),
                                  ("balanced accuracy", "balanced_accuracy", "balanced_accuracy"),
                                  ("macro AUC (one-vs-rest)", "auc_macro_ovr", "auc_macro_ovr")):
        lines.append(f"| {label} | {_cell(internal, metric, ci_key)} | {_cell(external, metric, ci_key)} |")
    return "\n".join(lines) + "\n"
