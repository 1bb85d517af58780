"""Exact copies of an image in two splits, found by content hash: a test image the network trained on
inflates the test score, so every run counts them (log and `metrics.json`)."""

from __future__ import annotations

from itertools import combinations

import numpy as np

from medclass.data.cache import image_digests


def cross_split_duplicates(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    """For each later split, how many of its images are exact copies of one in an earlier split.

    `{"val_in_train": 3, "test_in_train": 5, "test_in_val": 0}` for (train, val, test).
    """
    return split_copies({split: [row.tobytes() for row in image_digests(images)] for split, images in arrays.items()})


def split_copies(digests: dict[str, list[bytes]]) -> dict[str, int]:
    """`cross_split_duplicates` from one pixel hash per image (the image cache keeps them)."""
    seen = {split: set(d) for split, d in digests.items()}  # once per split: linear in the image count
    return {f"{later}_in_{earlier}": sum(d in seen[earlier] for d in digests[later])
            for earlier, later in combinations(digests, 2)}
