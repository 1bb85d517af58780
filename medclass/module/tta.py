"""Test-time augmentation: average the probabilities over the flips and turns that keep labels true."""

from __future__ import annotations

from collections.abc import Callable

import torch

from medclass.errors import MedclassError

View = Callable[[torch.Tensor], torch.Tensor]

_IDENTITY: list[View] = [lambda x: x]
_MIRROR: list[View] = _IDENTITY + [lambda x: x.flip(-1)]
_DIHEDRAL: list[View] = [
    (lambda k, f: (lambda x: torch.rot90(x.flip(-1) if f else x, k, dims=(-2, -1))))(k, f)
    for f in (False, True)
    for k in range(4)
]
VIEWS = {"invariant": _DIHEDRAL, "mirror": _MIRROR, "sided": _IDENTITY}
MODES = ("none", "auto")


def tta_views(mode: str, symmetry: str) -> list[View]:
    """`auto`: every view the dataset's symmetry allows (8 for invariant, 2 for mirror, 1 for sided)."""
    if mode not in MODES:
        raise MedclassError(f"module.tta={mode!r} is not one of {MODES}")
    return _IDENTITY if mode == "none" else VIEWS.get(symmetry, _IDENTITY)

