"""Images for training and prediction: one file decoded, resized and given the model's channel count.

Decoding itself (PNG, JPEG, BMP and TIFF through Pillow in any mode, DICOM through pydicom with rescale
slope/intercept, window centre/width and MONOCHROME1 inverted) lives in `medclass.untrusted.images`, the
reader of image files from strangers: it holds every image to a pixel budget checked from the header before
decoding (`MEDCLASS_MAX_IMAGE_MB`, docs/data.md). Its names are re-exported here for the callers of this module.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from medclass.untrusted.images import (
    DICOM_SUFFIXES,
    IMAGE_SUFFIXES,
    SUFFIXES,
    ImageTooLarge,
    read_dicom,
    read_image,
    read_pil,
    to_uint8,
)
from medclass.utils.errors import MedclassError

__all__ = ["DICOM_SUFFIXES", "IMAGE_SUFFIXES", "SUFFIXES", "ImageTooLarge", "decode_resized", "is_image_name",
           "read_dicom", "read_image", "read_pil", "to_channels", "to_uint8"]


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def decode_resized(path: Path, size: int, chans: int) -> np.ndarray:
    """One file as uint8 (size, size, chans), before normalization.

    Training and prediction (medclass.tasks.predict) share it, so a new image is prepared like a training one.
    """
    resized = cv2.resize(read_image(path), (size, size), interpolation=cv2.INTER_AREA)
    return to_channels(resized.reshape(size, size, -1)[None], chans)[0]


def to_channels(images: np.ndarray, channels: int) -> np.ndarray:
    """(N, H, W) or (N, H, W, C) uint8 to (N, H, W, channels); grey is repeated, colour averaged."""
    if images.ndim == 3:
        images = images[..., None]
    have = images.shape[-1]
    if have == channels:
        return images
    if have == 1 and channels == 3:
        return np.repeat(images, 3, axis=-1)
    if have in (3, 4) and channels == 1:
        rgb = images[..., :3].astype(np.float32)
        return (rgb @ np.array([0.299, 0.587, 0.114], np.float32)).round().astype(np.uint8)[..., None]
    raise MedclassError(f"cannot convert {have}-channel images to {channels} channels; use 1 or 3")
