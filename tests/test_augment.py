"""Augmentation keeps shape, dtype and labels, is reproducible under a seed, and flips only when safe."""

from __future__ import annotations

import albumentations as A
import numpy as np
import pytest

from medclass.augment import eval_transform, train_transform
from medclass.data.base import ArrayDataset

MEAN, STD = [0.5, 0.5, 0.5], [0.25, 0.25, 0.25]


def image(channels: int = 3, size: int = 28) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (size, size, channels), dtype=np.uint8)


@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_and_labels_kept(channels: int) -> None:
    tf = train_transform(None, MEAN[:channels], STD[:channels], symmetry="invariant", seed=1)
    labels = np.arange(4)
    ds = ArrayDataset(np.stack([image(channels)] * 4), labels, tf)
    for i in range(4):
        x, y = ds[i]
        assert x.shape == (channels, 28, 28) and str(x.dtype) == "torch.float32" and int(y) == labels[i]


def test_reproducible_under_a_seed_and_random_without() -> None:
    img = image()
    first = [train_transform(None, MEAN, STD, symmetry="invariant", seed=7)(image=img)["image"] for _ in range(2)]
    assert (first[0] == first[1]).all()
    tf = train_transform(None, MEAN, STD, symmetry="invariant", seed=7)
    assert not (tf(image=img)["image"] == tf(image=img)["image"]).all()


def names(tf: A.Compose) -> set[str]:
    return {type(t).__name__ for t in tf.transforms}


def test_flip_defaults_follow_symmetry() -> None:
    assert {"HorizontalFlip", "VerticalFlip", "RandomRotate90"} <= names(train_transform(None, MEAN, STD, "invariant"))
    assert "HorizontalFlip" in names(train_transform(None, MEAN, STD, "mirror"))
    assert not {"HorizontalFlip", "VerticalFlip", "RandomRotate90"} & names(train_transform(None, MEAN, STD, "sided"))
    assert "HorizontalFlip" in names(train_transform(None, MEAN, STD, "sided", hflip=0.5))  # explicit wins


def test_eval_transform_is_deterministic_resize_and_normalize() -> None:
    tf = eval_transform(64, MEAN, STD)
    a, b = tf(image=image())["image"], tf(image=image())["image"]
    assert a.shape == (3, 64, 64) and (a == b).all()
    assert names(tf) == {"Resize", "Normalize", "ToTensorV2"}
