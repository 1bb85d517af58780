"""Albumentations pipelines: random affine + flips for training, resize + normalize for evaluation.

`conf/augment/*.yaml` holds `train_transform` as a `_partial_`; the DataModule supplies the
image size, normalization and the dataset's symmetry, which decides the flip defaults.
"""

from __future__ import annotations

from collections.abc import Sequence

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from medclass.utils.errors import MedclassError

BORDERS = {"reflect": cv2.BORDER_REFLECT_101, "constant": cv2.BORDER_CONSTANT, "replicate": cv2.BORDER_REPLICATE}

# Probabilities of (horizontal flip, vertical flip, 90° turn) that keep labels true, by symmetry.
_FLIPS = {"invariant": (0.5, 0.5, 0.5), "mirror": (0.5, 0.0, 0.0), "sided": (0.0, 0.0, 0.0)}


def flip_defaults(symmetry: str) -> tuple[float, float, float]:
    if symmetry not in _FLIPS:
        raise MedclassError(f"unknown symmetry {symmetry!r}; choose one of {sorted(_FLIPS)}")
    return _FLIPS[symmetry]


def flip_options(
    symmetry: str, hflip: float | None, vflip: float | None, rot90: float | None
) -> tuple[float, float, float]:
    """The configured flip probabilities, with each `None` replaced by the symmetry's default."""
    auto = flip_defaults(symmetry)
    return tuple(a if p is None else p for a, p in zip(auto, (hflip, vflip, rot90), strict=True))  # type: ignore[return-value]


def _head(image_size: int | None) -> list[A.BasicTransform]:
    return [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)] if image_size else []


def _tail(mean: Sequence[float], std: Sequence[float]) -> list[A.BasicTransform]:
    return [A.Normalize(mean=tuple(mean), std=tuple(std), max_pixel_value=255.0), ToTensorV2()]


def eval_transform(image_size: int | None, mean: Sequence[float], std: Sequence[float]) -> A.Compose:
    """Validation, test and prediction: resize and normalize only."""
    return A.Compose(_head(image_size) + _tail(mean, std))


def train_transform(
    image_size: int | None,
    mean: Sequence[float],
    std: Sequence[float],
    symmetry: str = "sided",
    rotate: float = 15.0,
    shift: float = 0.1,
    scale: Sequence[float] = (0.9, 1.1),
    shear: float = 5.0,
    p_affine: float = 0.8,
    hflip: float | None = None,
    vflip: float | None = None,
    rot90: float | None = None,
    border: str = "reflect",
    extra: Sequence[A.BasicTransform] = (),
    seed: int | None = None,
) -> A.Compose:
    """Random rotation, shift, zoom, shear and flips; `None` flips follow the dataset's symmetry.

    `extra` appends any Albumentations transforms (instantiated from config) before normalization.
    """
    if border not in BORDERS:
        raise MedclassError(f"augment.border={border!r} is not one of {sorted(BORDERS)}")
    hflip, vflip, rot90 = flip_options(symmetry, hflip, vflip, rot90)
    ops: list[A.BasicTransform] = _head(image_size)
    if p_affine > 0:
        ops.append(
            A.Affine(
                scale=tuple(scale),
                translate_percent=(-shift, shift),
                rotate=(-rotate, rotate),
                shear=(-shear, shear),
                interpolation=cv2.INTER_LINEAR,
                border_mode=BORDERS[border],
                p=p_affine,
            )
        )
    if hflip > 0:
        ops.append(A.HorizontalFlip(p=hflip))
    if vflip > 0:
        ops.append(A.VerticalFlip(p=vflip))
    if rot90 > 0:
        ops.append(A.RandomRotate90(p=rot90))
    ops.extend(extra)
    return A.Compose(ops + _tail(mean, std), seed=seed)
