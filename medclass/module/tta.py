"""Test-time augmentation: average the probabilities over the flips and turns that keep labels true."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch

from medclass.errors import MedclassError

View = Callable[[torch.Tensor], torch.Tensor]



def _turn(x: torch.Tensor, quarter_turns: int = 0, mirror: bool = False) -> torch.Tensor:
    return torch.rot90(x.flip(-1) if mirror else x, quarter_turns, dims=(-2, -1))


_IDENTITY: list[View] = [_turn]
_MIRROR: list[View] = [_turn, partial(_turn, mirror=True)]
_DIHEDRAL: list[View] = [partial(_turn, quarter_turns=k, mirror=m) for m in (False, True) for k in range(4)]
VIEWS = {"invariant": _DIHEDRAL, "mirror": _MIRROR, "sided": _IDENTITY}
MODES = ("none", "auto")


def tta_views(mode: str, symmetry: str) -> list[View]:
    """`auto`: every view the dataset's symmetry allows (8 for invariant, 2 for mirror, 1 for sided)."""
    if mode not in MODES:
        raise MedclassError(f"module.tta={mode!r} is not one of {MODES}")
    return _IDENTITY if mode == "none" else VIEWS.get(symmetry, _IDENTITY)

