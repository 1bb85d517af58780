"""The part of a Classifier that scores images, without Lightning: what predict.py and a model file's checks need.

`Network` holds the same `net` and `loss` submodules as `Classifier`, built from the same checked description by
the same registries, so it has exactly the Classifier's state_dict (names, shapes, dtypes: tests/test_model_files)
and loads the same files. Building it imports torch and the network's own code only, so checking a model file
and predicting one image do not wait for Lightning, torchmetrics and the training stack (docs/development.md
"Start-up").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from medclass.model import registry as model_registry
from medclass.module.losses import class_weights as weights_for
from medclass.module.losses import make_loss
from medclass.module.tta import averaged_probabilities, tta_views


def file_safe_net(hparams: Mapping[str, Any]) -> dict[str, Any]:
    """The described network's options with the file-safe ones forced (no download, no other weights file)."""
    arch = model_registry.ARCHITECTURES[hparams["net"]["arch"]]
    return {**hparams["net"], **{k: v for k, v in arch.from_file.items() if k in hparams["net"]}}


class Network(nn.Module):
    """`probabilities = Network(hparams).predict_proba(batch)`: a checked description's network and loss (its class
    weights are buffers of the state_dict), its test-time views (`tta`, switchable) and memory format."""

    def __init__(self, hparams: Mapping[str, Any]) -> None:
        super().__init__()
        info = hparams["data_info"]
        self.hparams = dict(hparams)
        self.task, self.num_classes = info["task"], len(info["class_names"])
        self.symmetry = info.get("symmetry", "sided")
        self.channels_last = bool(hparams.get("channels_last", False))
        self.net = model_registry.build(file_safe_net(hparams), in_chans=info["in_chans"],
                                        num_classes=self.num_classes)
        weight = weights_for(hparams.get("class_weights"), info.get("class_counts") or [], info.get("train_size", 0),
                             self.task == "multi-label")
        self.loss = make_loss(self.task, hparams.get("label_smoothing", 0.0), hparams.get("loss", "ce"), weight,
                              hparams.get("focal_gamma", 2.0))
        self.tta = hparams.get("tta", "none")
        tta_views(self.tta, self.symmetry)  # a bad value fails here, naming the choices
        if hparams.get("freeze_layers"):  # timm's freeze swaps their BatchNorm for FrozenBatchNorm2d: other buffers
            from medclass.module.finetune import freeze_named_layers

            freeze_named_layers(self.net, list(hparams["freeze_layers"]))
        if self.channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def predict_proba(self, x: torch.Tensor, tta: bool = True) -> torch.Tensor:
        return averaged_probabilities(self, x, self.tta if tta else "none", self.symmetry, self.task)[1]
