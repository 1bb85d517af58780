"""Objects every task builds from config the same way: the Trainer, callback and logger lists."""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from medclass.utils.hardware import FAST_CPU_BF16, cpu_bf16_flags, has_fast_bf16
from medclass.utils.logs import one_console

log = logging.getLogger("medclass")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every `_target_` entry of a callbacks/ or logger/ group, in order; empty or null entries skipped."""
    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(float(v), 6) for r in results for k, v in r.items()}


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The configured Trainer; SyncBatchNorm is dropped on CPU, where torch refuses it (trainer=ddp on CPU), and
    `precision: auto` becomes the machine's fastest precision that keeps accuracy (`auto_precision`)."""
    one_console()  # Lightning speaks through the run's own log handlers, once
    accelerator = cfg.trainer.get("accelerator", "auto")
    if cfg.trainer.get("sync_batchnorm") and not _uses_gpu(accelerator):
        log.info("sync_batchnorm off: SyncBatchNorm needs GPUs (accelerator=%s)", accelerator)
        overrides.setdefault("sync_batchnorm", False)
    if str(cfg.trainer.get("precision")) == "auto" and "precision" not in overrides:
        overrides["precision"], why = auto_precision(accelerator)
        log.info("precision %s (%s); trainer.precision=32-true or bf16-mixed chooses", overrides["precision"], why)
    return instantiate(cfg.trainer, **overrides)


def auto_precision(accelerator: Any, cpuinfo: str | None = None) -> tuple[str, str]:
    """`trainer.precision=auto` resolved for this machine, with the reason, for one log line.

    bf16 autocast where the device multiplies bf16 natively: on CPUs with avx512_bf16 or AMX it trained
    BloodMNIST 1.7x faster at the same accuracy (docs/results.md "Speed"). Elsewhere it would be emulated,
    slower than fp32, so fp32 stays; GPUs without bf16 take fp16 autocast.
    """
    kind = str(accelerator)
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind in ("gpu", "cuda"):
        return ("bf16-mixed", "the GPU has bf16") if has_fast_bf16("cuda") else ("16-mixed", "the GPU lacks bf16")
    if kind == "cpu":
        flags = sorted(cpu_bf16_flags(cpuinfo) & FAST_CPU_BF16)
        if flags:
            return "bf16-mixed", f"CPU flags {', '.join(flags)}"
        return "32-true", "the CPU has no avx512_bf16 or amx_bf16, so bf16 would be emulated"
    return "32-true", f"accelerator {kind}"


def _uses_gpu(accelerator: Any) -> bool:
    if str(accelerator) == "auto":
        return torch.cuda.is_available()
    return str(accelerator) in ("gpu", "cuda")
