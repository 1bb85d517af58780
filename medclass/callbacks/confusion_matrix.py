"""Which classes the model mixes up, epoch by epoch: a confusion-matrix image in TensorBoard.

Counts come from the probabilities `validation_step`/`test_step` already return (no second forward
pass) and accumulate in a torchmetrics confusion matrix, which sums over DDP ranks. Tags:
`val/confusion_matrix` every `every_n_epochs` training epochs, and with `final` the best
checkpoint's final validation (`best_val/confusion_matrix`) and test (`test/confusion_matrix`).
Multi-label tasks (ChestMNIST) have no single predicted class and are skipped; without a
TensorBoard logger nothing is computed.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
from torchmetrics.classification import MulticlassConfusionMatrix

from medclass.callbacks.tensorboard import tensorboard_writers, to_rgb
from medclass.eval.figures import confusion_figure

log = logging.getLogger("medclass")


class ConfusionMatrixImage(L.Callback):
    def __init__(self, every_n_epochs: int = 1, final: bool = True, tag: str = "confusion_matrix") -> None:
        self.every_n_epochs, self.final, self.tag = max(1, int(every_n_epochs)), final, tag
        self.matrix: MulticlassConfusionMatrix | None = None
        self.warned = False

    def _prefix(self, trainer: L.Trainer, pl_module: L.LightningModule) -> str | None:
        """The tag prefix for the running loop, or None when this epoch draws nothing."""
        if trainer.sanity_checking or not tensorboard_writers(trainer):
            return None
        if pl_module.hparams.data_info["task"] == "multi-label":
            if not self.warned:
                log.info("confusion-matrix image skipped: multi-label task")
                self.warned = True
            return None
        fn = trainer.state.fn
        if fn == "fit":
            return "val" if (trainer.current_epoch + 1) % self.every_n_epochs == 0 else None
        if not self.final:
            return None
        return "best_val" if fn == "validate" else getattr(pl_module, "eval_split", "test")

    def _start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.matrix = None
        if self._prefix(trainer, pl_module) is not None:
            k = len(pl_module.hparams.data_info["class_names"])
            self.matrix = MulticlassConfusionMatrix(num_classes=k).to(pl_module.device)

    def _update(self, outputs: Any) -> None:
        if self.matrix is not None and isinstance(outputs, dict) and "probs" in outputs:
            self.matrix.update(outputs["probs"], outputs["targets"].long())

    def _end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        prefix = self._prefix(trainer, pl_module)
        if self.matrix is None or prefix is None:
            return
        counts = self.matrix.compute().cpu().numpy()  # every rank takes part in the sum
        self.matrix = None
        if not trainer.is_global_zero:
            return
        when = f"epoch {trainer.current_epoch + 1}" if prefix == "val" else "checkpoint"
        title = f"{prefix}, {when}: {int(counts.sum())} images"
        image = to_rgb(confusion_figure(counts, pl_module.hparams.data_info["class_names"], title))
        for writer in tensorboard_writers(trainer):
            writer.add_image(f"{prefix}/{self.tag}", image, global_step=trainer.global_step, dataformats="HWC")

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                                batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module)

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start(trainer, pl_module)

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._update(outputs)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._end(trainer, pl_module)
