"""The evaluation transform's last two steps (Albumentations' `Normalize` with `max_pixel_value=255`, then
`ToTensorV2`) without importing Albumentations: predict.py scores images with torch alone.

It calls the same `albucore.normalize` Albumentations does, with the same float32 mean and reciprocal, so the
tensors are bit-identical to `eval_transform(None, mean, std)`'s (tests/test_predict.py holds them equal).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from albucore import normalize


def to_input(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """A decoded, sized uint8 image (H, W) or (H, W, C) → the network's normalized (C, H, W) float32 tensor."""
    if image.ndim == 2:
        image = image[:, :, None]
    scaled_mean = np.array(mean, dtype=np.float32) * 255.0
    denominator = np.reciprocal(np.array(std, dtype=np.float32) * 255.0)
    return torch.from_numpy(np.ascontiguousarray(normalize(image, scaled_mean, denominator).transpose(2, 0, 1)))
