"""Exponential moving average of the weights, for validation, checkpoints, test and eval.py.

Lightning's `EMAWeightAveraging` validates with the average and saves it as the checkpoint's
`state_dict`. Outside fit it misfires: on loading a checkpoint it puts the raw weights back, and at
every validation epoch it swaps in its own final average — so `trainer.test(ckpt_path="best")` and
`trainer.validate(ckpt_path="best")` after training would score weights other than the best
checkpoint's average. Here both happen in fit only, so train.py's best_val and test numbers and
eval.py's all score the same, averaged weights.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import EMAWeightAveraging
from lightning.pytorch.trainer.states import TrainerFn


class EMA(EMAWeightAveraging):
    """`decay` per optimizer step; `update_starting_at_epoch` skips the noisy first epochs."""

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        if trainer.state.fn == TrainerFn.FITTING:  # resuming: the raw weights and the average both come back
            super().on_load_checkpoint(trainer, pl_module, checkpoint)

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_start(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.state.fn == TrainerFn.FITTING:
            super().on_validation_epoch_end(trainer, pl_module)
