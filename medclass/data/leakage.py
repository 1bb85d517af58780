"""Exact copies of an image in two splits, found by content hash: a test image the network trained on
inflates the test score, so every run counts them (log and `metrics.json`)."""

from __future__ import annotations

import hashlib
from itertools import combinations

import numpy as np


def pixel_digests(images: np.ndarray) -> list[bytes]:
    """One hash per decoded image (uint8 pixels after resize and channel conversion)."""
    return [hashlib.blake2b(image.tobytes(), digest_size=16).digest() for image in images]


def cross_split_duplicates(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """For each later split, how many of its images are exact copies of one in an earlier split.

    `{"val_in_train": 3, "test_in_train": 5, "test_in_val": 0}` for (train, val, test).
    """
    digests = {split: pixel_digests(images) for split, images in arrays.items()}
    seen = {split: set(d) for split, d in digests.items()}  # once per split: linear in the image count
    return {f"{later}_in_{earlier}": sum(d in seen[earlier] for d in digests[later])
            for earlier, later in combinations(digests, 2)}
