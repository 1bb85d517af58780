"""Figures as matplotlib Figures, for eval.py's report (PNG and TensorBoard) and the training callbacks."""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure  # not pyplot: no global figure registry, no display backend
from sklearn.metrics import roc_curve

from medclass.untrusted.files import Refused, read_bytes

CURVES = {"loss": ("train/loss_epoch", "val/loss"), "accuracy": ("train/acc", "val/acc")}
# a run's csv/metrics.csv (Lightning's CSVLogger: a row per logging step, ~100 bytes): far above a long training,
# far below what would cost eval minutes (a run folder may be someone else's)
MAX_LOG_BYTES = 128 * 2**20
MAX_LOG_LINE = 1 * 2**20
MAX_LOG_LINES = 2_000_000


def confusion_figure(counts: Sequence[Sequence[int]] | np.ndarray, class_names: Sequence[str],
                     title: str = "") -> Figure:
    """Colour by row-normalized rate (recall), annotated with counts, so rare classes stay visible."""
    counts_a = np.asarray(counts)
    rate = counts_a / np.maximum(counts_a.sum(1, keepdims=True), 1)
    k = len(class_names)
    names = [short(n) for n in class_names]
    label = 0.07 * max(len(n) for n in names)  # inches the tick labels take, so they are never cut off
    fig = Figure(figsize=(2.2 + 0.6 * k + label, 1.6 + 0.55 * k + label), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    if k <= 30:  # beyond that the numbers no longer fit their cells
        for i in range(k):
            for j in range(k):
                ax.text(j, i, f"{counts_a[i, j]}\n{rate[i, j]:.2f}", ha="center", va="center", fontsize=7,
                        color="white" if rate[i, j] > 0.5 else "black")
    ax.set_xticks(range(k), names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), names, fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_title("\n".join(filter(None, [title, "rows: true class"])), fontsize=9)  # a y-label hides behind long names
    fig.colorbar(im, ax=ax, fraction=0.046, label="fraction of the true class")
    return fig


def short(name: str, width: int = 20) -> str:
    """Long class names cut to fit a tick label or a caption."""
    return name if len(name) <= width else name[: width - 1] + "…"


def roc_figure(probs: np.ndarray, labels: np.ndarray, class_names: list[str], task: str,
               aucs: list[float | None]) -> Figure:
    """One-vs-rest ROC per class (per label for multi-label; the positive class for binary)."""
    k = len(class_names)
    onehot = labels.reshape(len(labels), -1) if task == "multi-label" else np.eye(k, dtype=int)[labels.reshape(-1)]
    fig = Figure(figsize=(5.5, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    for i in range(1, 2) if task == "binary-class" else range(k):
        if aucs[i] is None:
            continue
        fpr, tpr, _ = roc_curve(onehot[:, i], probs[:, i])
        ax.plot(fpr, tpr, lw=1.2, label=f"{short(class_names[i])} (AUC {aucs[i]:.3f})")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8)
    ax.set(xlabel="false positive rate", ylabel="true positive rate", xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(fontsize=7, loc="lower right")
    return fig


def reliability_figure(bins: dict[str, list[float]], ece: float, ece_after: float | None = None) -> Figure:
    edges = np.asarray(bins["edges"])
    centers, width = (edges[:-1] + edges[1:]) / 2, np.diff(edges)
    fig = Figure(figsize=(5, 5), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.bar(centers, np.nan_to_num(bins["accuracy"]), width=width, edgecolor="k", alpha=0.7, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=0.8, label="perfect calibration")
    for x, acc, n in zip(centers, bins["accuracy"], bins["count"], strict=True):
        if n:  # how many predictions each bar stands on
            ax.text(x, min(np.nan_to_num(acc), 0.93) + 0.02, str(n), ha="center", fontsize=6, rotation=90)
    title = f"ECE {ece:.4f}" + (f" (after temperature scaling {ece_after:.4f})" if ece_after is not None else "")
    ax.set(xlabel="confidence", ylabel="accuracy", xlim=(0, 1), ylim=(0, 1), title=title)
    ax.legend(fontsize=8, loc="upper left")
    return fig


def read_history(run_dir: Path) -> dict[str, tuple[list[int], list[float]]]:
    """Per-epoch scalars of a training run from its TensorBoard events, else its CSV log; {} if neither."""
    history: dict[str, tuple[list[int], list[float]]] = {}
    tags = [t for pair in CURVES.values() for t in pair]
    events = sorted((run_dir / "tensorboard").glob("events.out.tfevents.*"))
    if events:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        for path in events:
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})
            acc.Reload()
            for tag in set(tags) & set(acc.Tags()["scalars"]):
                steps, values = history.setdefault(tag, ([], []))
                for event in acc.Scalars(tag):
                    steps.append(event.step)
                    values.append(event.value)
    elif os.path.lexists(run_dir / "csv" / "metrics.csv"):
        history = read_csv_log(run_dir / "csv" / "metrics.csv", tags)
    return history


def _log_lines(text: io.TextIOBase) -> Iterator[str]:
    """The log's physical lines, each read with a size limit, all of them (blank ones too) counted."""
    for number in range(1, MAX_LOG_LINES + 2):
        line = text.readline(MAX_LOG_LINE + 1)
        if not line:
            return
        if number > MAX_LOG_LINES or len(line) > MAX_LOG_LINE:
            raise Refused(f"more than {MAX_LOG_LINES:,} lines or a line over {MAX_LOG_LINE:,} characters")
        yield line


def read_csv_log(path: Path, tags: Sequence[str]) -> dict[str, tuple[list[int], list[float]]]:
    """`tags` per step from a CSVLogger file, read as data (`medclass.untrusted.files`: a regular file, no link
    followed, neither the file nor its `csv/` folder, bounded bytes and lines). A cell that is not a finite number
    is skipped; a file past a bound gives no curves (a warning says why), never a traceback."""
    history: dict[str, tuple[list[int], list[float]]] = {}
    try:
        if stat.S_ISLNK(os.lstat(path.parent).st_mode):
            raise Refused(f"{path.parent.name}/ is a symbolic link; links are not followed here")
        data = read_bytes(path, "training log", MAX_LOG_BYTES, follow_links=False)
        reader = csv.reader(_log_lines(io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", newline="")))
        header = next(reader, [])
        columns = {tag: header.index(tag) for tag in tags if tag in header}
        step_at = header.index("step") if "step" in header else None
        for row in reader:
            try:
                step = int(row[step_at]) if step_at is not None and step_at < len(row) else None
            except ValueError:
                continue
            for tag, at in columns.items():
                if step is None or at >= len(row) or not row[at]:
                    continue
                try:
                    value = float(row[at])
                except ValueError:
                    continue
                if math.isfinite(value):
                    steps, values = history.setdefault(tag, ([], []))
                    steps.append(step)
                    values.append(value)
    except (Refused, OSError, csv.Error, UnicodeDecodeError) as err:
        message = str(err).replace(str(path), path.name) if isinstance(err, Refused) else type(err).__name__
        logging.getLogger("medclass").warning("no training curves: %s is not read (%s)", path.name, message[:300])
        return {}
    return history


def curves_figure(history: dict[str, tuple[list[int], list[float]]]) -> Figure:
    fig = Figure(figsize=(10, 4), dpi=100, layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, (name, pair) in zip(axes, CURVES.items(), strict=True):
        for tag in pair:
            if tag in history:
                ax.plot(*history[tag], marker="o", ms=3, label=tag)
        ax.set(xlabel="step", ylabel=name)
        ax.legend(fontsize=8)
    return fig
