"""Test-time augmentation: average the probabilities over the flips and turns that keep labels true."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch.nn import functional as F

from medclass.module.task_kinds import probabilities
from medclass.utils.errors import MedclassError

View = Callable[[torch.Tensor], torch.Tensor]



def _turn(x: torch.Tensor, quarter_turns: int = 0, mirror: bool = False) -> torch.Tensor:
    return torch.rot90(x.flip(-1) if mirror else x, quarter_turns, dims=(-2, -1))


def _shift(x: torch.Tensor, dy: int = 0, dx: int = 0) -> torch.Tensor:
    """Move the image by one pixel per unit of 28 px, repeating the border (no wrap-around)."""
    step = max(1, round(x.shape[-1] / 28))
    padded = F.pad(x, (step, step, step, step), mode="replicate")
    top, left = step + dy * step, step + dx * step
    return padded[..., top : top + x.shape[-2], left : left + x.shape[-1]]


_IDENTITY: list[View] = [_turn]
_MIRROR: list[View] = [_turn, partial(_turn, mirror=True)]
_DIHEDRAL: list[View] = [partial(_turn, quarter_turns=k, mirror=m) for m in (False, True) for k in range(4)]
_SHIFTS: list[View] = [partial(_shift, dy=dy, dx=dx) for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1))]
VIEWS = {"invariant": _DIHEDRAL, "mirror": _MIRROR, "sided": _IDENTITY}
MODES = ("none", "auto", "shift")


def tta_views(mode: str, symmetry: str) -> list[View]:
    """`auto`: every view the dataset's symmetry allows (8 for invariant, 2 for mirror, 1 for sided);
    `shift`: those plus four one-pixel shifts, which keep any label, sided anatomy included."""
    if mode not in MODES:
        raise MedclassError(f"module.tta={mode!r} is not one of {MODES}")
    if mode == "none":
        return _IDENTITY
    return VIEWS.get(symmetry, _IDENTITY) + (_SHIFTS if mode == "shift" else [])



def averaged_probabilities(forward: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, mode: str,
                           symmetry: str, task: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of the plain view, and the probabilities averaged over the test-time views of `mode`: how the
    Classifier (training, eval) and the Lightning-free `Network` (predict) both score a batch."""
    logits = [forward(view(x)) for view in tta_views(mode, symmetry)]  # views[0] is the identity
    probs = torch.stack([probabilities(z.detach().float(), task) for z in logits]).mean(0)
    return logits[0], probs
