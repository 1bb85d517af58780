"""The test images the model gets most confidently wrong, in TensorBoard: where to look for label noise,
look-alike classes or a preprocessing bug.

Uses the probabilities `test_step` already returns (no second forward pass) and keeps only the `max_images`
most confident mistakes seen so far, so memory stays small on any test set. One image per test run,
tag `test/worst_mistakes`, each tile captioned "true → predicted" with the predicted class's
probability. Multi-label tasks have no single wrong class and are skipped; without a TensorBoard
logger nothing is kept. Under DDP the grid covers rank 0's share of the test set.
"""

from __future__ import annotations

import logging
from typing import Any

import lightning as L
import torch

from medclass.callbacks.tensorboard import image_grid, tensorboard_writers
from medclass.eval.figures import short

log = logging.getLogger("medclass")


class WorstMistakes(L.Callback):
    def __init__(self, max_images: int = 16, ncols: int = 4, tag: str = "worst_mistakes") -> None:
        self.max_images, self.ncols, self.tag = max(1, int(max_images)), ncols, tag
        self.active = False
        self._reset()

    def _reset(self) -> None:
        self.images = torch.empty(0)
        self.conf = torch.empty(0)
        self.true = torch.empty(0, dtype=torch.long)
        self.pred = torch.empty(0, dtype=torch.long)
        self.seen = self.wrong = 0

    def on_test_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._reset()
        multi_label = pl_module.hparams.data_info["task"] == "multi-label"
        self.active = trainer.is_global_zero and bool(tensorboard_writers(trainer)) and not multi_label
        if multi_label and trainer.is_global_zero:
            log.info("worst-mistakes image skipped: multi-label task")

    def on_test_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any,
                          batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        if not self.active or not isinstance(outputs, dict) or "probs" not in outputs:
            return
        probs, y = outputs["probs"].float(), outputs["targets"].long().view(-1)
        conf, pred = probs.max(dim=1)
        wrong = (pred != y).nonzero().view(-1)
        self.seen += len(y)
        self.wrong += len(wrong)
        if len(wrong) == 0:
            return
        top = wrong[conf[wrong].topk(min(self.max_images, len(wrong))).indices]  # at most N leave the device
        x = batch[0][top].detach().float().cpu()
        self.images = torch.cat([self.images, x]) if len(self.images) else x
        self.conf = torch.cat([self.conf, conf[top].cpu()])
        self.true = torch.cat([self.true, y[top].cpu()])
        self.pred = torch.cat([self.pred, pred[top].cpu()])
        keep = self.conf.topk(min(self.max_images, len(self.conf))).indices
        self.images, self.conf, self.true, self.pred = (t[keep] for t in (self.images, self.conf, self.true, self.pred))

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.active:
            return
        self.active = False
        info = pl_module.hparams.data_info
        names = list(info["class_names"])
        shown = self.images
        if len(shown):
            mean = torch.tensor(info["mean"], dtype=torch.float32).view(1, -1, 1, 1)
            std = torch.tensor(info["std"], dtype=torch.float32).view(1, -1, 1, 1)
            shown = (shown * std + mean).clamp(0, 1)
        titles = [f"{short(names[t])} →\n{short(names[p])} p={c:.2f}" for t, p, c in
                  zip(self.true.tolist(), self.pred.tolist(), self.conf.tolist(), strict=True)]
        split = getattr(pl_module, "eval_split", "test")
        title = (f"{split}: {self.wrong} of {self.seen} wrong; the {len(shown)} most confident mistakes\n"
                 "(true → predicted, p = predicted class probability)")
        image = image_grid(shown, titles, ncols=self.ncols, title=title)
        for writer in tensorboard_writers(trainer):
            writer.add_image(f"{split}/{self.tag}", image, global_step=trainer.global_step, dataformats="HWC")
        self._reset()
