"""One LightningModule for every dataset and network.

Its hyperparameters are plain values: the network and the data as registry descriptions
(`{"arch": "cnn", ...}`, `{"kind": "folder", ...}`), the optimizer and scheduler configs, and the
data facts. So a checkpoint describes the whole model by itself, loads with `weights_only=True`, and
is rebuilt by `medclass.module.checkpoint` from its checked description, never by instantiating it.
"""

from __future__ import annotations

import inspect
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate

from medclass.data import registry as data_registry
from medclass.model import registry as model_registry
from medclass.module.finetune import freeze_named_layers, set_backbone_frozen, split_parameters
from medclass.module.hparams import to_plain
from medclass.module.losses import class_weights as weights_for
from medclass.module.losses import make_loss
from medclass.module.task_kinds import make_metrics
from medclass.module.tta import averaged_probabilities, tta_views
from medclass.utils.errors import MedclassError


class Classifier(L.LightningModule):
    def __init__(
        self,
        net: dict[str, Any],
        data_info: dict[str, Any],
        optimizer: dict[str, Any],
        scheduler: dict[str, Any] | None = None,
        label_smoothing: float = 0.0,
        channels_last: bool = False,
        tta: str = "none",
        data_cfg: dict[str, Any] | None = None,
        freeze_backbone: bool = False,
        unfreeze_at_epoch: int | None = None,
        backbone_lr_scale: float = 1.0,
        freeze_layers: list[str] | None = None,
        compile: bool | str | dict[str, Any] = False,
        loss: str = "ce",
        focal_gamma: float = 2.0,
        class_weights: str | list[float] | None = None,
    ) -> None:
        super().__init__()
        # plain containers only: a DictConfig in hparams would need pickle to load
        net, data_info, optimizer, scheduler, data_cfg, freeze_layers, compile, class_weights = map(
            to_plain, (net, data_info, optimizer, scheduler, data_cfg, freeze_layers, compile, class_weights))
        # a composed config's `_target_` becomes its registered name: what the checkpoint records
        net = model_registry.describe(net, "model")
        data_cfg = data_registry.describe(data_cfg, "data") if data_cfg else None
        self.save_hyperparameters()  # reads the arguments as they are now
        self.read_from_file = False  # set by medclass.module.checkpoint: such a module is not trained on
        self.task = data_info["task"]
        self.num_classes = len(data_info["class_names"])
        self.net = model_registry.build(net, in_chans=data_info["in_chans"], num_classes=self.num_classes)
        size = int(data_info.get("image_size") or 0)  # Lightning's model summary counts FLOPs on it
        self.example_input_array = torch.zeros(1, data_info["in_chans"], size, size) if size else None
        weight = weights_for(class_weights, data_info.get("class_counts") or [], data_info.get("train_size", 0),
                             self.task == "multi-label")
        self.loss = make_loss(self.task, label_smoothing, loss, weight, focal_gamma)
        self.train_metrics = make_metrics(self.task, self.num_classes, with_auc=False).clone(prefix="train/")
        self.val_metrics = make_metrics(self.task, self.num_classes).clone(prefix="val/")
        self.test_metrics = make_metrics(self.task, self.num_classes)
        self.eval_split = "test"  # eval.py renames the test metrics after the split it evaluates
        self.tta = tta  # eval.py may switch it
        tta_views(tta, data_info.get("symmetry", "sided"))  # fail early on a bad value
        freeze_named_layers(self.net, self.frozen_layers)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        if backbone_lr_scale <= 0 or (unfreeze_at_epoch is not None and unfreeze_at_epoch < 0):
            raise MedclassError(f"module.backbone_lr_scale={backbone_lr_scale} must be > 0 and "
                                f"module.unfreeze_at_epoch={unfreeze_at_epoch} null or >= 0")
        if self.backbone_frozen:  # from the start, so the model summary counts what really trains
            set_backbone_frozen(self.net, True)
        elif freeze_backbone or backbone_lr_scale != 1.0:
            split_parameters(self.net)  # fail early when the network has no head to tell apart

    # -- transfer learning ----------------------------------------------------------------------
    @property
    def frozen_layers(self) -> list[str]:
        return list(self.hparams.get("freeze_layers") or [])

    @property
    def backbone_frozen(self) -> bool:
        until = self.hparams.unfreeze_at_epoch
        return bool(self.hparams.freeze_backbone) and (until is None or self.current_epoch < until)

    def train(self, mode: bool = True) -> Classifier:
        super().train(mode)
        if mode and "freeze_backbone" in self.hparams and self.backbone_frozen:
            set_backbone_frozen(self.net, True)  # Lightning calls train() after every validation
        return self

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Seal the data description (`medclass.untrusted.seal`): eval.py reads paths only from files this
        account's medclass wrote."""
        from medclass.untrusted.seal import seal

        tag = seal(checkpoint.get("hyper_parameters", {}).get("data_cfg"))
        if tag:
            checkpoint["medclass_seal"] = tag

    def on_train_epoch_start(self) -> None:
        if self.hparams.freeze_backbone:
            set_backbone_frozen(self.net, self.backbone_frozen)
            freeze_named_layers(self.net, self.frozen_layers)  # unfreezing the base leaves these frozen

    def setup(self, stage: str) -> None:
        # only for fit: eval.py and predict.py load the same checkpoint without paying the compile time
        spec = self.hparams.get("compile", False)
        if stage == "fit" and spec not in (False, None):
            kwargs = {} if spec is True else {"mode": spec} if isinstance(spec, str) else dict(spec)
            self.net.compile(**kwargs)  # in place: state_dict keys unchanged

    @property
    def class_names(self) -> list[str]:
        return list(self.hparams.data_info["class_names"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _views_forward(self, x: torch.Tensor, tta: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits of the plain view, and probabilities averaged over the test-time views when `tta`."""
        return averaged_probabilities(self, x, self.tta if tta else "none",
                                      self.hparams.data_info.get("symmetry", "sided"), self.task)

    def predict_proba(self, x: torch.Tensor, tta: bool = True) -> torch.Tensor:
        return self._views_forward(x, tta)[1]

    def _step(self, batch: Any, tta: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits, probs = self._views_forward(x, tta)
        return self.loss(logits, y), probs, y

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        loss, probs, y = self._step(batch)
        if not torch.isfinite(loss):
            raise MedclassError(
                f"training loss is {loss.item()} at step {self.global_step} (epoch {self.current_epoch}, batch "
                f"{batch_idx}); lower optimizer.lr (now {self.hparams.optimizer.get('lr')}), add "
                "trainer.gradient_clip_val=1.0, or check the inputs for NaN/inf"
            )
        self.train_metrics.update(probs, y.long())
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log_dict(self.train_metrics, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        # checkpoints are chosen on plain predictions; the final validation (trainer.validate) uses TTA
        loss, probs, y = self._step(batch, tta=self.trainer.state.fn != "fit")
        self.val_metrics.update(probs, y.long())
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, batch_size=len(y), sync_dist=True)
        self.log_dict(self.val_metrics, on_epoch=True, prog_bar=True, batch_size=len(y))
        return {"probs": probs, "targets": y}  # for callbacks' on_*_batch_end: no second forward pass

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, torch.Tensor]:
        loss, probs, y = self._step(batch, tta=True)
        self.test_metrics.update(probs, y.long())
        self.log(f"{self.eval_split}/loss", loss, on_epoch=True, batch_size=len(y), sync_dist=True)
        for name, metric in self.test_metrics.items():
            self.log(f"{self.eval_split}/{name}", metric, on_epoch=True, batch_size=len(y))
        return {"probs": probs, "targets": y}

    def predict_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x = batch[0] if isinstance(batch, (tuple, list)) else batch
        return self.predict_proba(x)

    def _param_groups(self) -> list[dict[str, Any]] | Any:
        """All parameters, or (backbone, head) groups when the backbone learns at a smaller rate."""
        scale = self.hparams.backbone_lr_scale
        if scale == 1.0:
            return self.parameters()
        backbone, head = split_parameters(self.net)
        lr = self.hparams.optimizer["lr"]
        return [{"params": backbone, "lr": lr * scale}, {"params": head, "lr": lr}]

    def configure_optimizers(self) -> Any:
        """The optimizer and scheduler of the composed config (`instantiate`), never of a file: a module read
        from a checkpoint is refused here (train.py's `ckpt_path=` resumes with this machine's config)."""
        if self.read_from_file:
            raise MedclassError("a model read from a checkpoint is for evaluation and prediction; to train on, "
                                "run train.py with ckpt_path=<file> (it builds from your config)")
        try:
            optimizer = instantiate(self.hparams.optimizer)(params=self._param_groups())
        except (ValueError, TypeError) as err:  # torch's own checks: negative lr, betas out of range, …
            raise MedclassError(f"optimizer {self.hparams.optimizer['_target_']}: {err}; fix the optimizer.* "
                                "value") from err
        spec = self.hparams.scheduler
        if not spec or not spec.get("scheduler"):
            return optimizer
        build = instantiate(spec["scheduler"])
        interval = spec.get("interval", "epoch")
        length = self.trainer.estimated_stepping_batches if interval == "step" else self.trainer.max_epochs
        accepted = inspect.signature(build.func).parameters
        given = build.keywords
        auto: dict[str, Any] = {k: int(length) for k in ("total_steps", "T_max")
                                if k in accepted and given.get(k) is None}
        if "max_lr" in accepted and len(optimizer.param_groups) > 1:  # one-cycle keeps each group's ratio
            base = self.hparams.optimizer["lr"]
            auto["max_lr"] = [given.get("max_lr", base) * g["lr"] / base for g in optimizer.param_groups]
        scheduler = build(optimizer, **auto)
        config = {"scheduler": scheduler, "interval": interval}
        if spec.get("monitor"):
            config["monitor"] = spec["monitor"]
        return {"optimizer": optimizer, "lr_scheduler": config}
