"""Run tracking around Lightning's loggers (`conf/logger/`): what Lightning does not log by itself.

- `tracked_run`: the flat resolved config (`model._target_`, `data.batch_size`, ...) as MLflow params and
  W&B config when the run starts, so a crashed run still says what it was, and each W&B run closed when
  the job ends (failed or not), so the next job of a sweep starts its own.
- `log_run_files`: `metrics.json`, `config.yaml` and `split.csv` as MLflow artifacts and W&B run files
  (MLflow's `log_model` adds the checkpoints).
- `log_final_hparams`: TensorBoard's HPARAMS tab, the flat config beside the final figures.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig

from medclass.module.classifier import to_plain as plain

RUN_FILES = ("metrics.json", "config.yaml", "split.csv")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config to `{"data.batch_size": 128, ...}`; lists and other values as text."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def flat_config(cfg: DictConfig, leave_out: tuple[str, ...] = ("paths", "hydra")) -> dict[str, Any]:
    return {k: v for k, v in flatten(plain(cfg)).items() if k.split(".")[0] not in leave_out}


def trackers(loggers: list[Logger]) -> list[MLFlowLogger | WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, (MLFlowLogger, WandbLogger))]


@contextmanager
def tracked_run(loggers: list[Logger], cfg: DictConfig) -> Iterator[None]:
    """A job's span in MLflow / W&B: the whole resolved config under dotted names as it starts (so a crashed
    run still says what it was), and each W&B run finished as it ends, also on failure, so the next job of
    a sweep starts its own run instead of logging into this one."""
    flat = flat_config(cfg)
    for logger in trackers(loggers):
        logger.log_hyperparams(flat)
    try:
        yield
    finally:
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()


def log_run_files(loggers: list[Logger], out: Path) -> None:
    """The run's result files into MLflow (artifacts) and W&B (run files, synced with the run)."""
    files = [out / name for name in RUN_FILES if (out / name).is_file()]
    for logger in trackers(loggers):
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
        else:
            for path in files:
                logger.experiment.save(str(path), base_path=str(out), policy="now")


def log_final_hparams(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab: the flat config beside the final figures."""
    final = {f"hparams/{split}/{k.split('/')[-1]}": v for split in ("best_val", "test")
             for k, v in metrics.get(split, {}).items()}
    flat = flat_config(cfg, leave_out=("paths", "hydra", "callbacks", "logger"))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat, metrics=final)
            logger.finalize("success")
