"""A picture of what the network really sees: the first augmented training batch, in TensorBoard."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torchvision.utils import make_grid


class AugmentedSampleGrid(L.Callback):
    def __init__(self, max_images: int = 64, tag: str = "train/augmented_samples") -> None:
        self.max_images, self.tag, self.done = max_images, tag, False

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.done or not trainer.is_global_zero:
            return
        self.done = True
        loggers = [lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)]
        if not loggers:
            return
        images = batch[0][: self.max_images].detach().float().cpu()
        info = pl_module.hparams.data_info
        mean = torch.tensor(info["mean"]).view(1, -1, 1, 1)
        std = torch.tensor(info["std"]).view(1, -1, 1, 1)
        grid = make_grid((images * std + mean).clamp(0, 1), nrow=8, padding=1)
        for logger in loggers:
            logger.experiment.add_image(self.tag, grid, global_step=trainer.global_step)
