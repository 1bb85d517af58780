"""Objects every task builds from config the same way: the Trainer, callback and logger lists."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

log = logging.getLogger("medclass")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every `_target_` entry of a callbacks/ or logger/ group, in order; empty or null entries skipped."""
    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(float(v), 6) for r in results for k, v in r.items()}


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The configured Trainer; SyncBatchNorm is dropped on CPU, where torch refuses it (trainer=ddp on CPU)."""
    if cfg.trainer.get("sync_batchnorm") and not _uses_gpu(cfg.trainer.get("accelerator", "auto")):
        log.info("sync_batchnorm off: SyncBatchNorm needs GPUs (accelerator=%s)", cfg.trainer.accelerator)
        overrides.setdefault("sync_batchnorm", False)
    return instantiate(cfg.trainer, **overrides)


def _uses_gpu(accelerator: Any) -> bool:
    if str(accelerator) == "auto":
        return torch.cuda.is_available()
    return str(accelerator) in ("gpu", "cuda")
