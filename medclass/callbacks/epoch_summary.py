"""One log line per epoch, so log files (SLURM, nohup) show progress without a progress bar."""

from __future__ import annotations

import logging
import time

import lightning as L

log = logging.getLogger("medclass")


class EpochSummary(L.Callback):
    def __init__(self, keys: tuple[str, ...] = ("train/loss_epoch", "train/acc", "val/loss", "val/acc", "val/auc")):
        self.keys, self.start = keys, 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        parts = [f"{k} {float(m[k]):.4f}" for k in self.keys if k in m]
        log.info("epoch %d/%d (%.0fs) %s", trainer.current_epoch + 1, trainer.max_epochs,
                 time.perf_counter() - self.start, " | ".join(parts))
