"""The report's clinical sections (issue 29), computed from the scored split's outputs and added to the
report eval.py has just written: subgroups, selective prediction, external validation, and the model card.

Each section is one entry of `report.json`, one part of `report.md` and its figures. The columns that
define subgroups come from the data's own item columns (a manifest's extra columns, as in split.csv),
never from a path or a name a file chose; thresholds are chosen on validation only.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medclass.eval.options import EvalOptions
from medclass.module.hparams import to_plain
from medclass.utils.errors import MedclassError
from medclass.utils.io import save_figure, write_csv, write_json, write_text

log = logging.getLogger("medclass")


# -- subgroups ----------------------------------------------------------------------------------------------
def subgroup_columns(wanted: Sequence[str], bins: Mapping[str, Any], rows: list[dict[str, str]]
                     ) -> tuple[dict[str, list[str]], list[str] | None]:
    """({column: value per image}, patient per image or None) from the scored images' item columns."""
    available = sorted({k for row in rows for k in row})
    stray = [c for c in bins if c not in wanted]
    if stray:
        raise MedclassError(f"subgroup_bins names {', '.join(map(str, stray))}, which is not in subgroups="
                            f"[{','.join(wanted)}]; add it there or drop its bins")
    columns: dict[str, list[str]] = {}
    for column in wanted:
        if column not in available:
            raise MedclassError(f"subgroups=[{column}]: the scored images have no column {column!r} (they have: "
                                f"{', '.join(available) or 'none'}); subgroups come from a manifest's extra columns, "
                                "as in split.csv (docs/evaluation.md \"Subgroups\")")
        values = [row.get(column, "") or "" for row in rows]
        if column in bins:
            from medclass.eval.subgroups import bin_values

            values = bin_values(values, list(to_plain(bins[column])), column)
        elif len(set(values)) > 20 and all(_numeric(v) for v in values if v):
            raise MedclassError(f"subgroups=[{column}]: {len(set(values))} distinct numbers; bin them, e.g. "
                                f"'subgroup_bins.{column}=[0,40,65,120]'")
        columns[column] = values
    has_group = bool(rows) and all(row.get("group") for row in rows)
    return columns, ([row["group"] for row in rows] if has_group else None)


def _numeric(value: str) -> bool:
    try:
        float(value)
    except ValueError:
        return False
    return True


def saved_threshold(report: Mapping[str, Any]) -> float | None:
    """The binary operating point predict.py deploys by default (Youden's J chosen on validation), else 0.5."""
    points = report.get("operating_points") or {}
    if not points:
        return None
    youden = points.get("youden")
    return float(youden["threshold"]) if youden and youden.get("chosen_on") == "val" else 0.5


def subgroup_section(opts: EvalOptions, report: dict[str, Any], data_info: Mapping[str, Any], probs: np.ndarray,
                     labels: np.ndarray, rows: list[dict[str, str]]) -> tuple[dict[str, Any], str, dict[str, Any]]:
    from medclass.eval.subgroups import forest_figure, subgroup_markdown, subgroup_report

    columns, groups = subgroup_columns(list(opts.subgroups), opts.subgroup_bins, rows)
    result = subgroup_report(probs, labels, data_info["task"], columns, groups, saved_threshold(report),
                             opts.subgroup_min_count, opts.bootstrap, opts.bootstrap_seed,
                             class_names=list(data_info["class_names"]))
    figures = {f"forest_{column}": forest_figure(result, column) for column in columns}
    return result, subgroup_markdown(result), figures


# -- selective prediction -----------------------------------------------------------------------------------
def selective_section(opts: EvalOptions, task: str, probs: np.ndarray, labels: np.ndarray,
                      val: tuple[np.ndarray, np.ndarray] | None
                      ) -> tuple[dict[str, Any], str, dict[str, Any], dict[str, Any] | None]:
    """(report entry, markdown, figures, the `abstain` record for operating.json or None)."""
    from medclass.eval.selective import risk_coverage_figure, selective_markdown, selective_prediction

    accuracy, coverage = opts.abstain_targets
    result = selective_prediction(probs, labels, task, val=val, accuracy=accuracy, coverage=coverage)
    curve, chosen, applied = result["curve"], result["chosen"], result["applied"]
    point = {**applied, "threshold": chosen["threshold"]} if chosen and applied else None
    figures = {"risk_coverage": risk_coverage_figure(curve, point)}
    entry = {"aurc": curve["aurc"], "aurc_optimal": curve["aurc_optimal"], "eaurc": curve["eaurc"],
             "n": curve["n"], "errors": curve["errors"], "table": curve["table"], "chosen": chosen, "applied": applied}
    record = None
    if chosen is not None:
        kind, value = next(iter(chosen["target"].items()))
        record = {"threshold": float(chosen["threshold"]), "target": kind, "value": float(value),
                  "val_coverage": float(chosen["val_coverage"]), "reached": bool(chosen["reached"]),
                  "val_accuracy": None if chosen["val_accuracy"] is None else float(chosen["val_accuracy"])}
    return entry, selective_markdown(curve, chosen, applied, opts.split), figures, record


# -- external validation ------------------------------------------------------------------------------------
def external_section(opts: EvalOptions, module: Any, device: Any, internal: tuple[np.ndarray, np.ndarray] | None,
                     out: Path) -> tuple[dict[str, Any], str]:
    """Score `external.root` with the checkpoint (its preprocessing, its test-time views) and write
    `external_predictions.csv`; the internal test split, mapped the same way, stands beside it."""
    from medclass.eval.external import evaluate_external, external_markdown
    from medclass.module.scoring import TorchModel

    model = TorchModel(module, device=str(device))
    summary, rows = evaluate_external(model, opts.external_root, opts.external_class_map, internal,
                                      n_resamples=opts.bootstrap, seed=opts.bootstrap_seed, progress=True)
    write_csv(out / "external_predictions.csv", rows)
    log.info("external validation: %d images of %s, accuracy %.4f", summary["external"]["images"],
             opts.external_root, summary["external"]["metrics"]["accuracy"])
    return summary, external_markdown(summary)


# -- writing ------------------------------------------------------------------------------------------------
def file_part(text: str, limit: int = 80) -> str:
    """`text` (a manifest column such as `T1/T2 site`, a class name) as part of a file name in a folder medclass
    writes: ASCII letters, digits, `.`, `_` and `-` kept, anything else `_`, no leading dot, at most `limit`
    characters, and a short hash of the text whenever it was changed, so two texts never share a file."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", text).lstrip(".")[:limit]
    if safe == text and text:
        return text
    return f"{safe}-{hashlib.sha1(text.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}"



Section = tuple[str, Any, str, dict[str, Any]]  # (report.json key, entry, report.md text, {figure name: Figure})


def add_sections(out: Path, report: dict[str, Any], data_info: Mapping[str, Any], sections: list[Section]) -> None:
    """Merge the sections into report.json and append them, each with its figures, to report.md."""
    from medclass.eval.report import markdown

    parts = [markdown(report, data_info).rstrip("\n")]
    (out / "figures").mkdir(parents=True, exist_ok=True)
    for key, entry, text, figures in sections:
        report[key] = entry
        parts += ["", text.rstrip("\n")]
        for name, fig in figures.items():
            file = f"figures/{file_part(name)}.png"  # a figure may be named after a manifest column: any text
            save_figure(fig, out / file, bbox_inches="tight", pad_inches=0.1)
            report["figures"] = [*report.get("figures", []), file]
            alt = re.sub(r"[\[\]\s]+", " ", name.replace("_", " "))
            parts += ["", f"![{alt}]({file})"]
    write_json(out / "report.json", report, sort_keys=False)
    write_text(out / "report.md", "\n".join(parts) + "\n")
