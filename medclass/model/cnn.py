"""The custom CNN of the source projects, grown up: Conv → BatchNorm → ReLU blocks, pooling, a dense head."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from medclass.utils.errors import MedclassError


def conv_block(c_in: int, c_out: int, convs: int, dropout: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(c_in if i == 0 else c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
    layers.append(nn.MaxPool2d(2))
    if dropout > 0:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class SimpleCNN(nn.Module):
    """`len(widths)` blocks, each halving the resolution; global pooling makes any input size work."""

    def __init__(
        self,
        in_chans: int = 3,
        num_classes: int = 2,
        widths: Sequence[int] = (32, 64, 128),
        convs_per_block: int = 2,
        block_dropout: float = 0.0,
        hidden: int = 256,
        dropout: float = 0.3,
    ) -> None:
        super().__init__()
        if not widths or min(widths) < 1 or convs_per_block < 1:
            raise MedclassError(
                f"model.widths={list(widths)} and model.convs_per_block={convs_per_block} must be positive"
            )
        self.min_size = 2 ** len(widths)
        blocks, c = [], in_chans
        for w in widths:
            blocks.append(conv_block(c, w, convs_per_block, block_dropout))
            c = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        head: list[nn.Module] = [nn.Flatten()]
        if hidden:
            head += [nn.Linear(c, hidden), nn.ReLU(inplace=True), nn.Dropout(dropout)]
            c = hidden
        elif dropout:
            head.append(nn.Dropout(dropout))
        head.append(nn.Linear(c, num_classes))
        self.head = nn.Sequential(*head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_size:
            raise MedclassError(
                f"input of {tuple(x.shape[-2:])} px is too small for {len(self.features)} pooling blocks; "
                f"use at least {self.min_size} px or fewer model.widths"
            )
        return self.head(self.pool(self.features(x)))
