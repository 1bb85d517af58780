"""Performance per subgroup (site, scanner, sex, age band, …) with bootstrap intervals, and the largest gap.

A reviewer's first question after the headline numbers is whether the model works for everyone. For
each column of the manifest and each of its values this module reports the image count, the number of
patients, the prevalence and the task's metrics (accuracy, balanced accuracy, ROC AUC, and for binary
tasks sensitivity and specificity at the saved operating point), each with a percentile interval.

All intervals come from ONE set of resamples of the whole scored set: every resample is a vector of
image multiplicities (`patient_weights`), and each subgroup is scored with its own images' weights.
So a subgroup's interval, the overall interval and the interval of the gap between two subgroups are
read off the same draws, and the gap's interval accounts for the two subgroups being estimated
together. When patient ids are known, patients are drawn, not images: images of one patient are
correlated, and resampling them one by one would give intervals that are too narrow. The metrics
themselves are bootstrap.py's weighted scorer, whose values equal scikit-learn's on the resampled
arrays. Subgroups below `min_count` images are listed as too small rather than given a noisy number.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure  # not pyplot, as figures.py: no global registry, Agg canvas on save

from medclass.eval.bootstrap import Scorer
from medclass.eval.figures import short
from medclass.eval.operating_points import rates
from medclass.untrusted.files import markdown_text
from medclass.utils.errors import MedclassError

MISSING = "missing"
MISSING_CELLS = frozenset({"", "na", "n/a", "nan", "none", "null"})  # what spreadsheets and R write for no value
SCORER_NAMES = {"accuracy": "accuracy", "balanced_accuracy": "balanced_accuracy", "auc": "auc_macro_ovr"}
LABELS = {"accuracy": "accuracy", "balanced_accuracy": "balanced acc", "auc": "AUC", "sensitivity": "sens",
          "specificity": "spec"}
TITLES = {"accuracy": "accuracy", "balanced_accuracy": "balanced accuracy", "auc": "ROC AUC",
          "sensitivity": "sensitivity", "specificity": "specificity"}
SINGLE_LABEL = ("binary-class", "multi-class", "ordinal-regression")
OVERALL = (None, "all")  # the subsets' key of the overall row; columns are strings, so it cannot collide
BIN_LABEL = re.compile(r"\[(?P<low>[^,]+), ")


# ---------------------------------------------------------------------------------------------- binning

def _is_missing(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.strip().lower() in MISSING_CELLS


def _edge(value: float) -> str:
    return f"{value:g}"


def _check_edges(edges: Sequence[float], column: str) -> np.ndarray:
    """Edges as floats; at least two, finite and strictly increasing, or one error naming the setting."""
    try:
        e = np.asarray([float(x) for x in edges], dtype=float)
    except (TypeError, ValueError):
        raise MedclassError(f"subgroup_bins.{column}={list(edges)} must be numbers, e.g. "
                            f"subgroup_bins.{column}=[0,40,65,120]") from None
    if len(e) < 2 or not np.isfinite(e).all() or not (np.diff(e) > 0).all():
        raise MedclassError(f"subgroup_bins.{column}={list(edges)} must be at least two finite, strictly increasing "
                            f"edges, e.g. subgroup_bins.{column}=[0,40,65,120]")
    return e


def bin_values(values: Sequence[str], edges: Sequence[float], column: str) -> list[str]:
    """A numeric column as bin labels "[0, 40)", "[40, 65)", "[65, 120]" (the last bin closed, so the top edge
    counts); empty cells (and NA, NaN, None, null) become "missing". A value that is not a number or lies
    outside the edges is an error rather than a silently dropped image: it would change who is counted."""
    e = _check_edges(edges, column)
    labels = [f"[{_edge(lo)}, {_edge(hi)})" for lo, hi in zip(e[:-1], e[1:], strict=True)]
    labels[-1] = labels[-1][:-1] + "]"
    out = []
    for value in values:
        if _is_missing(value):
            out.append(MISSING)
            continue
        try:
            x = float(value)
        except (TypeError, ValueError):
            raise MedclassError(f"subgroup column '{column}': value {value!r} is not a number; fix the cell, leave it "
                                f"empty for missing, or leave '{column}' out of subgroups and "
                                f"subgroup_bins.{column}") from None
        if not e[0] <= x <= e[-1]:  # NaN fails this too, but NaN was taken as missing above
            raise MedclassError(f"subgroup column '{column}': value {value!r} is outside subgroup_bins.{column}="
                                f"[{', '.join(_edge(v) for v in e)}]; widen the first or last edge to cover it")
        out.append(labels[min(int(np.searchsorted(e, x, side="right")) - 1, len(labels) - 1)])
    return out


def _order(value: str) -> tuple[int, float, str]:
    """Bins by their lower edge and numbers by value (so "[100, 200]" follows "[20, 100)"), then text,
    then "missing" last."""
    if value == MISSING:
        return (2, 0.0, value)
    match = BIN_LABEL.match(value)
    try:
        return (0, float(match["low"] if match else value), value)
    except ValueError:
        return (1, 0.0, value)


# ------------------------------------------------------------------------------------------- resampling

def patient_weights(rng: np.random.Generator, groups: np.ndarray | None, n: int) -> np.ndarray:
    """One bootstrap resample as image multiplicities. With `groups` (a patient id per image) patients are
    drawn with replacement and every image of a patient gets that patient's draw count, so a patient's
    images stay together; the total is n only on average. Without groups, n images are drawn, exactly as
    bootstrap.py does (the same seed gives the same draws)."""
    if groups is None:
        return np.bincount(rng.integers(0, n, n), minlength=n).astype(float)
    _, patient = np.unique(np.asarray(groups), return_inverse=True)
    m = int(patient.max()) + 1 if len(patient) else 0
    return np.bincount(rng.integers(0, m, m), minlength=m).astype(float)[patient.reshape(-1)]


# -------------------------------------------------------------------------------------------- scoring

class _Subset:
    """One set of images (a subgroup, or all): the weighted scorer and the operating-point cells, prepared once."""

    def __init__(self, probs: np.ndarray, labels: np.ndarray, task: str, threshold: float | None) -> None:
        self.scorer = Scorer(probs, labels, task)
        self.threshold = threshold
        if threshold is not None:
            called, positive = probs[:, 1] >= threshold, labels == 1
            self.cells = {"tp": called & positive, "fp": called & ~positive, "fn": ~called & positive,
                          "tn": ~called & ~positive}

    def values(self, weights: np.ndarray) -> dict[str, float]:
        """The metrics with each image counted `weights[i]` times; NaN where undefined (no weight, one class)."""
        names = list(SCORER_NAMES) + (["sensitivity", "specificity"] if self.threshold is not None else [])
        if weights.sum() == 0:  # the subgroup was not drawn in this resample
            return dict.fromkeys(names, math.nan)
        scored = self.scorer.values(weights)
        out = {name: scored[key] for name, key in SCORER_NAMES.items()}
        if self.threshold is not None:
            r = rates({cell: float(weights[mask].sum()) for cell, mask in self.cells.items()})
            out |= {m: math.nan if r[m] is None else r[m] for m in ("sensitivity", "specificity")}
        return out


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _interval(estimate: float, draws: np.ndarray, level: float) -> dict[str, float | None]:
    """Point estimate and percentile interval; resamples where the value is undefined (NaN) are left out."""
    tail = (1 - level) / 2 * 100
    low, high = np.nanpercentile(draws, [tail, 100 - tail]) if np.isfinite(draws).any() else (math.nan,) * 2
    return {"estimate": _num(estimate), "low": _num(low), "high": _num(high)}


def _prevalence(labels: np.ndarray, task: str, class_names: Sequence[str]) -> float | dict[str, float]:
    """Binary: the share of positives (label 1). Multi-class: the share of each class."""
    if task == "binary-class":
        return float((labels == 1).mean())
    shares = np.bincount(labels, minlength=len(class_names)) / len(labels)
    return {name: float(s) for name, s in zip(class_names, shares, strict=True)}


def _check_inputs(probs: np.ndarray, labels: np.ndarray, task: str, columns: dict[str, list[str]],
                  groups: list[str] | None, min_count: int, n_resamples: int, level: float) -> None:
    if task == "multi-label":
        raise MedclassError("subgroup reports cover binary and multi-class tasks, not multi-label; "
                            "drop `subgroups` for this data set")
    if task not in SINGLE_LABEL:
        raise MedclassError(f"subgroup report: unknown task {task!r}; expected one of {', '.join(SINGLE_LABEL)}")
    n = len(labels)
    if len(probs) != n:
        raise MedclassError(f"subgroup report: {len(probs)} probability rows for {n} labels; score the same images")
    for name, values in columns.items():
        if len(values) != n:
            raise MedclassError(f"subgroup column '{name}' has {len(values)} values for {n} scored images; take the "
                                f"column from the same split as the predictions")
    if groups is not None and len(groups) != n:
        raise MedclassError(f"subgroup report: {len(groups)} patient ids for {n} scored images; take the groups "
                            f"from the same split as the predictions")
    if min_count < 1 or n_resamples < 0 or not 0 < level < 1:
        raise MedclassError(f"subgroup report: min_count={min_count} must be at least 1, n_resamples={n_resamples} "
                            f"at least 0 (0: no intervals) and level={level} between 0 and 1")


def _row(value: str, index: np.ndarray, labels: np.ndarray, task: str, groups: np.ndarray | None,
         class_names: Sequence[str]) -> dict[str, Any]:
    """The counts of one subgroup, before any scoring."""
    return {"value": value, "n": int(len(index)),
            "n_groups": None if groups is None else int(len(np.unique(groups[index]))),
            "prevalence": _prevalence(labels[index], task, class_names)}


def _gap(rows: list[dict[str, Any]], draws: dict[str, dict[str, np.ndarray]], metric: str,
         level: float) -> dict[str, Any] | None:
    """The largest gap in `metric`: the best and worst subgroups by point estimate (fixed once), their difference,
    and the interval of that same pair's difference over the resamples. None with fewer than two scored."""
    scored = [r for r in rows if not r["too_small"] and r["metrics"][metric]["estimate"] is not None]
    if len(scored) < 2:
        return None
    best = max(scored, key=lambda r: r["metrics"][metric]["estimate"])
    worst = min(scored, key=lambda r: r["metrics"][metric]["estimate"])
    estimate = best["metrics"][metric]["estimate"] - worst["metrics"][metric]["estimate"]
    difference = draws[best["value"]][metric] - draws[worst["value"]][metric]
    return {"best": best["value"], "worst": worst["value"], **_interval(estimate, difference, level)}


Key = tuple[str | None, str]  # (column, value) of a scored subgroup; OVERALL for all images
Subsets = dict[Key, tuple[np.ndarray, _Subset]]


def _split(columns: dict[str, list[str]], probs: np.ndarray, labels: np.ndarray, task: str,
           patients: np.ndarray | None, class_names: list[str], threshold: float | None,
           min_count: int) -> tuple[dict[str, list[dict[str, Any]]], Subsets]:
    """Each column's rows (values sorted, counts, prevalence, too small or not) and the subsets to score."""
    n = len(labels)
    subsets: Subsets = {OVERALL: (np.arange(n), _Subset(probs, labels, task, threshold))}
    rows: dict[str, list[dict[str, Any]]] = {}
    for column, cells in columns.items():
        values = np.asarray([MISSING if _is_missing(c) else str(c) for c in cells], dtype=object)
        rows[column] = []
        for value in sorted(set(values), key=_order):
            index = np.flatnonzero(values == value)
            row = _row(value, index, labels, task, patients, class_names) | {"too_small": len(index) < min_count}
            if not row["too_small"]:
                subsets[(column, value)] = (index, _Subset(probs[index], labels[index], task, threshold))
            rows[column].append(row)
    return rows, subsets


def _resample(subsets: Subsets, metrics: list[str], patients: np.ndarray | None, n: int, n_resamples: int,
              seed: int) -> dict[Key, dict[str, np.ndarray]]:
    """Every subset's metrics on the same resamples: one weight vector per resample, sliced per subset."""
    draws = {key: {m: np.empty(n_resamples) for m in metrics} for key in subsets}
    rng = np.random.default_rng(seed)
    for b in range(n_resamples):
        weights = patient_weights(rng, patients, n)
        for key, (index, subset) in subsets.items():
            for m, v in subset.values(weights[index]).items():
                draws[key][m][b] = v
    return draws


def subgroup_report(probs: np.ndarray, labels: np.ndarray, task: str, columns: dict[str, list[str]],
                    groups: list[str] | None = None, threshold: float | None = None, min_count: int = 30,
                    n_resamples: int = 1000, seed: int = 0, level: float = 0.95,
                    class_names: Sequence[str] | None = None) -> dict[str, Any]:
    """Per column, per value: counts, prevalence and metrics with percentile intervals, plus the largest gap
    per metric and the overall row, all from the same `n_resamples` resamples (of patients when `groups`
    gives a patient id per image). `threshold` is the saved operating point on the positive-class
    probability (binary tasks; ignored otherwise): it adds sensitivity and specificity. Plain JSON-able
    values, None for undefined. `class_names` name the multi-class prevalence shares (default "0", "1", …)."""
    probs, labels = np.asarray(probs, dtype=float), np.asarray(labels).reshape(-1).astype(int)
    _check_inputs(probs, labels, task, columns, groups, min_count, n_resamples, level)
    n, k = probs.shape
    class_names = list(class_names) if class_names is not None else [str(i) for i in range(k)]
    if len(class_names) != k:
        raise MedclassError(f"subgroup report: {len(class_names)} class names for {k} probability columns")
    threshold = threshold if task == "binary-class" else None  # an operating point exists for binary tasks only
    patients = None if groups is None else np.unique(np.asarray(groups, dtype=str), return_inverse=True)[1].reshape(-1)
    metrics = list(SCORER_NAMES) + (["sensitivity", "specificity"] if threshold is not None else [])

    rows, subsets = _split(columns, probs, labels, task, patients, class_names, threshold, min_count)
    draws = _resample(subsets, metrics, patients, n, n_resamples, seed)

    def scored(key: Key) -> dict[str, Any]:
        index, subset = subsets[key]
        estimate = subset.values(np.ones(len(index)))
        return {m: _interval(estimate[m], draws[key][m], level) for m in metrics}

    overall = _row("all", np.arange(n), labels, task, patients, class_names) | {"too_small": False,
                                                                                 "metrics": scored(OVERALL)}
    out_columns = {}
    for column, column_rows in rows.items():
        for row in column_rows:
            if not row["too_small"]:
                row["metrics"] = scored((column, row["value"]))
        by_value = {value: d for (c, value), d in draws.items() if c == column}
        out_columns[column] = {"subgroups": column_rows,
                               "gaps": {m: _gap(column_rows, by_value, m, level) for m in metrics}}
    return {"task": task, "metrics": metrics, "threshold": threshold, "min_count": min_count,
            "resampled": "images" if groups is None else "patients", "resamples": n_resamples, "seed": seed,
            "level": level, "method": "percentile", "overall": overall, "columns": out_columns}


# ------------------------------------------------------------------------------------------- markdown

def _f(value: float | None) -> str:
    text = "–" if value is None else f"{value:.3f}"
    return "0.000" if text == "-0.000" else text  # a gap's bound a hair below zero is not a sign to show


def _ci(cell: dict[str, float | None]) -> str:
    if cell["estimate"] is None:
        return "–"
    if cell["low"] is None and cell["high"] is None:  # bootstrap=0: no intervals
        return _f(cell["estimate"])
    return f"{_f(cell['estimate'])} [{_f(cell['low'])}, {_f(cell['high'])}]"


def _text(value: str) -> str:
    """A manifest value as a table cell or heading: escaped, so it can neither split the row nor hold HTML."""
    return markdown_text(value, 200)


def _prevalence_cell(prevalence: float | dict[str, float]) -> str:
    if isinstance(prevalence, dict):
        return ", ".join(f"{_text(short(name, 12))} {share:.2f}" for name, share in prevalence.items())
    return _f(prevalence)


def _table_row(row: dict[str, Any], report: dict[str, Any], patients: bool, label: str) -> str:
    cells = [label, str(row["n"])] + ([str(row["n_groups"])] if patients else [])
    cells.append(_prevalence_cell(row["prevalence"]))
    if row["too_small"]:
        cells += [f"too small (n < {report['min_count']})"] + [""] * (len(report["metrics"]) - 1)
    else:
        cells += [_ci(row["metrics"][m]) for m in report["metrics"]]
    return "| " + " | ".join(cells) + " |"


def _gap_line(metric: str, gap: dict[str, Any] | None, rows: list[dict[str, Any]]) -> str:
    if gap is None:
        return f"- largest gap in {LABELS[metric]}: fewer than two subgroups scored"
    estimate = {r["value"]: r["metrics"][metric]["estimate"] for r in rows if not r["too_small"]}
    return (f"- largest gap in {LABELS[metric]}: {_ci(gap)} ({_text(gap['best'])} {_f(estimate[gap['best']])} vs "
            f"{_text(gap['worst'])} {_f(estimate[gap['worst']])})")


def subgroup_markdown(report: dict[str, Any]) -> str:
    """A table per column (the overall row first; too-small subgroups listed, not scored) and the largest gap
    per metric, for report.md."""
    patients = report["resampled"] == "patients"
    unit = "patients" if patients else "images (patients unknown)"
    header = ["subgroup", "images"] + (["patients"] if patients else []) + ["prevalence"]
    intervals = report["resamples"] > 0
    header += [f"{LABELS[m]}{' [CI]' if intervals else ''}" for m in report["metrics"]]
    method = (f"{report['level']:.0%} percentile intervals from {report['resamples']} bootstrap resamples of the "
              f"{unit}, seed {report['seed']}, shared by every subgroup and gap" if intervals else
              "Point estimates only (bootstrap=0: no intervals)")
    lines = ["## Subgroups", "",
             f"{method}; subgroups under "
             f"{report['min_count']} images are not scored."
             + (f" Sensitivity and specificity at the saved operating point {report['threshold']:g}."
                if report["threshold"] is not None else "")]
    for column, part in report["columns"].items():
        lines += ["", f"### {_text(column)}", "", "| " + " | ".join(header) + " |",
                  "|" + "---|" * len(header), _table_row(report["overall"], report, patients, "**all**")]
        lines += [_table_row(row, report, patients, _text(row["value"])) for row in part["subgroups"]]
        lines += [""] + [_gap_line(m, part["gaps"][m], part["subgroups"]) for m in report["metrics"]]
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------------- figures

def forest_figure(report: dict[str, Any], column: str, metric: str = "accuracy") -> Figure:
    """One row per subgroup (top to bottom in the table's order): the estimate and its interval, with the
    overall estimate as a vertical line; too-small subgroups keep their row as a label without a point."""
    if column not in report["columns"]:
        raise MedclassError(f"forest figure: no subgroup column '{column}' in the report; "
                            f"choose one of {', '.join(report['columns']) or '(none)'}")
    if metric not in report["metrics"]:
        raise MedclassError(f"forest figure: metric '{metric}' is not in the report; choose one of "
                            f"{', '.join(report['metrics'])}")
    rows = report["columns"][column]["subgroups"]
    fig = Figure(figsize=(6, 1.2 + 0.35 * max(len(rows), 1)), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    names = []
    for y, row in enumerate(rows):
        cell = None if row["too_small"] else row["metrics"][metric]
        note = ", too small" if row["too_small"] else (", undefined" if cell["estimate"] is None else "")
        names.append(f"{short(row['value'])} (n={row['n']}{note})")
        if cell is not None and cell["estimate"] is not None:
            est, low, high = cell["estimate"], cell["low"], cell["high"]
            err = [[est - low], [high - est]] if low is not None and high is not None else None
            ax.errorbar(est, y, xerr=err, fmt="o", color="C0", ms=4, capsize=3, lw=1.2)
    overall = report["overall"]["metrics"][metric]["estimate"]
    if overall is not None:
        ax.axvline(overall, color="k", ls="--", lw=0.8, label=f"overall {overall:.3f}")
        ax.legend(fontsize=7, loc="lower right")
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)  # first subgroup on top, as in the table
    ax.set_xlabel(f"{TITLES[metric]} ({report['level']:.0%} interval)")
    ax.set_title(f"{TITLES[metric]} by {short(column)}", fontsize=9)
    return fig
