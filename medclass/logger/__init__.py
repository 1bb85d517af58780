"""Run tracking beyond Lightning's own loggers: the flat resolved config beside the final figures
(TensorBoard's HPARAMS tab, MLflow params, W&B config) and a run's files as artifacts."""

from __future__ import annotations

from typing import Any

from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig

from medclass.module.classifier import to_plain as plain


def log_final_hparams(loggers: list[Any], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab: the flat config beside the final figures."""
    final = {f"hparams/{split}/{k.split('/')[-1]}": v for split in ("best_val", "test")
             for k, v in metrics.get(split, {}).items()}
    flat = {k: v for k, v in _flatten(plain(cfg)).items() if k.split(".")[0] not in ("paths", "callbacks", "logger")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat, metrics=final)
            logger.finalize("success")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat
