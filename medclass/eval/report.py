"""The report folder of `eval.py`: report.json, per_class.csv, figures/*.png, report.md, TensorBoard.

Everything is computed once from the split's probabilities (with the checkpoint's test-time views),
so the JSON, the CSV, the figures and the markdown always agree with each other.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import move_data_to_device
from matplotlib.figure import Figure
from torch.utils.data import DataLoader
from torch.utils.tensorboard import SummaryWriter
from tqdm.auto import tqdm

from medclass.eval import figures
from medclass.eval.bootstrap import bootstrap_ci
from medclass.eval.calibration import apply_temperature, calibration_summary, fit_temperature, reliability_bins
from medclass.eval.metrics import classification_metrics, official
from medclass.eval.operating_points import operating_points
from medclass.untrusted.files import markdown_text
from medclass.utils.io import save_figure, write_csv, write_json, write_text

log = logging.getLogger("medclass")


class KeepTestOutputs(L.Callback):
    """The test pass's probabilities and labels, so the report needs no second pass over the split."""

    def __init__(self) -> None:
        self.probs: list[torch.Tensor] = []
        self.labels: list[torch.Tensor] = []

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any,
                          batch_idx: int, dataloader_idx: int = 0) -> None:
        self.probs.append(outputs["probs"].float().cpu())
        self.labels.append(outputs["targets"].cpu())

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return torch.cat(self.probs).numpy(), torch.cat(self.labels).numpy()


@torch.inference_mode()
def collect(module: torch.nn.Module, loader: DataLoader, what: str = "") -> tuple[np.ndarray, np.ndarray]:
    """Probabilities (test-time views as configured) and labels of every batch of a loader."""
    module.eval()
    device = next(module.parameters()).device
    probs, labels = [], []
    for x, y in tqdm(loader, desc=f"predict {what}", leave=False, disable=len(loader) < 10):
        probs.append(module.predict_proba(move_data_to_device(x, device)).float().cpu())
        labels.append(y)
    return torch.cat(probs).numpy(), torch.cat(labels).numpy()


def write_report(out: Path, *, split: str, probs: np.ndarray, labels: np.ndarray, data_info: dict[str, Any],
                 checkpoint: str, medmnist: bool, val: tuple[np.ndarray, np.ndarray] | None = None,
                 n_bins: int = 15, run_dir: Path | None = None, calibrate: bool = True, bootstrap: int = 1000,
                 bootstrap_seed: int = 0, target_sensitivity: float = 0.95) -> dict[str, Any]:
    """Write the report folder; `val` (probabilities, labels) fits a temperature for calibration and chooses
    the binary operating points; `bootstrap` resamples give the confidence intervals (0: none)."""
    task, names = data_info["task"], list(data_info["class_names"])
    metrics = classification_metrics(probs, labels, names, task)
    temperature = fit_temperature(*val, task) if val is not None and calibrate else None
    report: dict[str, Any] = {
        "split": split, "checkpoint": checkpoint, "task": task, "metrics": metrics,
        "calibration": calibration_summary(probs, labels, task, n_bins, temperature),
    }
    if bootstrap:
        report["ci"] = bootstrap_ci(probs, labels, task, bootstrap, bootstrap_seed)
    if task == "binary-class":
        report["operating_points"] = operating_points(probs, labels, val, target_sensitivity)
    if medmnist:
        report["medmnist_official"] = official(probs, labels, task)
    figs = {"roc": figures.roc_figure(probs, labels, names, task, [c["auc"] for c in metrics["per_class"]]),
            "reliability": figures.reliability_figure(reliability_bins(probs, labels, task, n_bins),
                                                      report["calibration"]["ece"],
                                                      report["calibration"].get("ece_after_temperature"))}
    if "counts" in metrics["confusion"]:
        figs = {"confusion": figures.confusion_figure(metrics["confusion"]["counts"], names), **figs}
    history = figures.read_history(run_dir) if run_dir else {}
    if history:
        figs["training_curves"] = figures.curves_figure(history)
    report["figures"] = [f"figures/{name}.png" for name in figs]
    if temperature is not None:
        calibrated = apply_temperature(probs, task, temperature)
        report["calibration"]["accuracy_unchanged"] = bool(
            (calibrated.argmax(1) == probs.argmax(1)).all() if task != "multi-label" else True)
    _save_figures(out, figs, split)
    _write_per_class(out / "per_class.csv", metrics["per_class"])
    write_json(out / "report.json", report, sort_keys=False)
    write_text(out / "report.md", markdown(report, data_info))
    log.info("report: %s (%s)", out / "report.md", ", ".join(["report.json", "per_class.csv", *report["figures"]]))
    return report


def _save_figures(out: Path, figs: dict[str, Figure], split: str) -> None:
    (out / "figures").mkdir(parents=True, exist_ok=True)
    with SummaryWriter(str(out / "tensorboard")) as writer:
        for name, fig in figs.items():
            save_figure(fig, out / "figures" / f"{name}.png", bbox_inches="tight", pad_inches=0.1)
            writer.add_figure(f"{split}/{name}", fig, close=False)


def _write_per_class(path: Path, rows: list[dict[str, Any]]) -> None:
    write_csv(path, rows)


def write_predictions(path: Path, items: list[str], columns_of: Callable[[str], dict[str, str]], probs: np.ndarray,
                      labels: np.ndarray, data_info: dict[str, Any]) -> None:
    """One row per scored image: its path, true and predicted label, probabilities, and the data's own
    columns (a manifest's group, site, age, ...), for error analysis by subgroup."""
    names, multi = list(data_info["class_names"]), data_info["task"] == "multi-label"
    rows = []
    for item, p, y in zip(items, probs, labels, strict=True):
        if multi:
            true = ";".join(n for n, v in zip(names, y, strict=True) if v)
            row = {"path": item, "label": true,
                   "predicted": ";".join(n for n, q in zip(names, p, strict=True) if q > 0.5)}
        else:
            row = {"path": item, "label": names[int(y)], "predicted": names[int(p.argmax())],
                   "confidence": round(float(p.max()), 6)}
        row["correct"] = int(row["predicted"] == row["label"])
        rows.append({**row, **{f"prob_{n}": round(float(q), 6) for n, q in zip(names, p, strict=True)},
                     **columns_of(item)})
    write_csv(path, rows)


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def markdown(report: dict[str, Any], data_info: dict[str, Any]) -> str:
    m, cal = report["metrics"], report["calibration"]
    lines = [f"# Evaluation on `{report['split']}`", "",
             f"Checkpoint `{report['checkpoint']}`; task {report['task']}, {m['n']} images, "
             f"{len(data_info['class_names'])} classes.", "",
             "| metric | value |", "|---|---|",
             f"| accuracy | {_fmt(m['accuracy'])} |", f"| balanced accuracy | {_fmt(m['balanced_accuracy'])} |",
             f"| ROC AUC (macro, one-vs-rest) | {_fmt(m['auc_macro_ovr'])} |",
             f"| F1 (macro / weighted) | {_fmt(m['average']['macro']['f1'])} / "
             f"{_fmt(m['average']['weighted']['f1'])} |",
             f"| ECE ({cal['bins']} bins) | {_fmt(cal['ece'])} |"]
    if "temperature" in cal:
        lines.append(f"| ECE after temperature scaling (T = {cal['temperature']:.3f}, fitted on val) | "
                     f"{_fmt(cal['ece_after_temperature'])} |")
    if "medmnist_official" in report:
        o = report["medmnist_official"]
        lines.append(f"| MedMNIST official ACC / AUC | {_fmt(o['acc'])} / {_fmt(o['auc'])} |")
    if "ordinal" in m:
        lines.append(f"| quadratic weighted kappa / MAE (grades) | {_fmt(m['ordinal']['quadratic_weighted_kappa'])} / "
                     f"{_fmt(m['ordinal']['mae'])} |")
    if "ci" in report:
        ci = report["ci"]
        lines += ["", f"## Confidence intervals ({ci['level']:.0%}, {ci['resamples']} bootstrap resamples of the "
                  f"images, seed {ci['seed']}, percentile)", "", "| metric | estimate | interval |", "|---|---|---|"]
        lines += [f"| {name.replace('_', ' ')} | {_fmt(ci[name]['estimate'])} | {_fmt(ci[name]['low'])} – "
                  f"{_fmt(ci[name]['high'])} |" for name in ("accuracy", "balanced_accuracy", "auc_macro_ovr",
                                                             "f1_macro")]
    if "operating_points" in report:
        lines += ["", f"## Operating points (positive class: {markdown_text(data_info['class_names'][1])})", "",
                  "Thresholds chosen on validation are applied unchanged to this split.", "",
                  "| threshold | chosen on | sensitivity | specificity | PPV | NPV | TP / FP / FN / TN |",
                  "|---|---|---|---|---|---|---|"]
        for name, p in report["operating_points"].items():
            lines.append(f"| {name} = {p['threshold']:.4f} | {p['chosen_on']} | {_fmt(p['sensitivity'])} | "
                         f"{_fmt(p['specificity'])} | {_fmt(p['ppv'])} | {_fmt(p['npv'])} | "
                         f"{p['tp']} / {p['fp']} / {p['fn']} / {p['tn']} |")
    fitted = [f"temperature {cal['temperature']:.3f}"] if "temperature" in cal else []
    fitted += [f"threshold {name} = {p['threshold']:.4f}" for name, p in report.get("operating_points", {}).items()
               if p["chosen_on"] == "val"]
    if fitted:
        lines += ["", f"Fitted on validation and saved beside the checkpoint (`<checkpoint>.operating.json`), which "
                  f"predict.py and export.py apply to new images: {', '.join(fitted)}."]
    lines += ["", "## Per class", "", "| class | precision | recall | F1 | support | AUC |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {markdown_text(r['class'])} | {_fmt(r['precision'])} | {_fmt(r['recall'])} | {_fmt(r['f1'])} | "
              f"{r['support']} | {_fmt(r['auc'])} |" for r in m["per_class"]]
    lines += ["", "## Figures", ""]
    lines += [f"### {Path(f).stem.replace('_', ' ')}\n\n![{Path(f).stem}]({f})\n" for f in report["figures"]]
    return "\n".join(lines) + "\n"
