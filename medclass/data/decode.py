"""Read one image file of any common medical format into a uint8 (H, W, C) array.

PNG, JPEG, BMP and TIFF through Pillow (any mode: L, RGB, RGBA, P, I;16, I, F), DICOM through
pydicom (rescale slope/intercept, window centre/width when present, MONOCHROME1 inverted).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from medclass.utils.errors import MedclassError
from medclass.utils.extras import require

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES


def is_image_name(path: Path) -> bool:
    return path.suffix.lower() in SUFFIXES


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Stretch any numeric range to 0..255 (uint8 passes through untouched)."""
    if array.dtype == np.uint8:
        return array
    array = array.astype(np.float64)
    low, high = float(np.nanmin(array)), float(np.nanmax(array))
    if high <= low:
        return np.zeros(array.shape, np.uint8)
    return np.round((array - low) / (high - low) * 255).astype(np.uint8)


def read_dicom(path: Path) -> np.ndarray:
    pydicom = require("pydicom", "dicom", f"reading the DICOM file {path}")
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    ds = pydicom.dcmread(path)
    pixels = apply_modality_lut(ds.pixel_array, ds)  # rescale slope / intercept
    if "WindowCenter" in ds or "VOILUTSequence" in ds:
        pixels = apply_voi_lut(pixels, ds)
    if pixels.ndim == 3 and getattr(ds, "SamplesPerPixel", 1) == 1:
        pixels = pixels[len(pixels) // 2]  # a multi-frame series: its middle frame
    image = to_uint8(np.asarray(pixels))
    if getattr(ds, "PhotometricInterpretation", "") == "MONOCHROME1":
        image = 255 - image
    return image


def read_pil(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_uint8(np.asarray(img))
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("RGBA", "LA"):
            background = Image.new("RGB" if img.mode == "RGBA" else "L", img.size, 0)
            background.paste(img, mask=img.getchannel("A"))
            img = background
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        return np.asarray(img)


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 1) or (H, W, 3); raises on anything unreadable (the caller reports it)."""
    array = read_dicom(path) if path.suffix.lower() in DICOM_SUFFIXES else read_pil(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 3 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
        array[..., 1], array[..., 2]
    ):
        array = array[..., :1]  # RGB files of grey scans are grey
    return np.ascontiguousarray(array)


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
