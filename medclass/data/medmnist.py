"""MedMNIST v2/v3 2D sets from the official `.npz` files (`data=medmnist`)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
from medmnist.info import DEFAULT_ROOT

from medclass.data.base import SPLITS, ClassificationDataModule, DataInfo
from medclass.data.cache import ImageCache, open_cache, read_member, temporary_stem, unpack_images
from medclass.data.decode import to_channels
from medclass.data.locate import candidate_dirs, find_or_download
from medclass.data.medmnist_info import filename, medmnist_info
from medclass.utils.errors import MedclassError


def check_npz(path: Path, images: dict[str, tuple[tuple[int, ...], np.dtype]], labels: dict[str, np.ndarray],
              task: str, num_classes: int) -> None:
    """Fail early, naming the file, on the mistakes a hand-made or truncated npz file carries.

    `images` holds each split's image shape and dtype (from the array header: the pixels are not read
    here), `labels` each split's labels."""
    first = images["train_images"][0]
    for split in SPLITS:
        (shape, dtype), y = images[f"{split}_images"], labels[split]
        if dtype != np.uint8 or len(shape) not in (3, 4) or shape[0] != len(y) or shape[0] == 0:
            raise MedclassError(
                f"{path}: {split}_images must be uint8 (N, H, W[, C]) with one label row per image; "
                f"got {dtype} {shape} images and {y.shape} labels"
            )
        if shape[1:] != first[1:]:
            raise MedclassError(f"{path}: {split}_images are {shape[1:]} but train_images are {first[1:]}; every "
                                "split needs the same image size")
        if len(shape) == 4 and shape[-1] not in (1, 3, 4):
            raise MedclassError(f"{path}: {split}_images have {shape[-1]} channels; use 1 (grey) or 3 (colour)")
        width = num_classes if task == "multi-label" else 1
        if y.reshape(len(y), -1).shape[1] != width:
            raise MedclassError(f"{path}: {split}_labels has shape {y.shape}; a {task} set needs {width} column(s)")
        high = 1 if task == "multi-label" else num_classes - 1
        if y.min() < 0 or y.max() > high:
            raise MedclassError(f"{path}: {split}_labels range {y.min()}..{y.max()} is outside 0..{high}")


class MedMNISTDataModule(ClassificationDataModule):
    """Any of the 12 2D MedMNIST sets at 28, 64, 128 or 224 px.

    The file is looked up in `root`, then `$MEDCLASS_DATA/medmnist`, then `~/.medmnist`, and
    downloaded (MD5-checked) when missing and `download` is true. Its images are unpacked once, chunk
    by chunk, into a memory-mapped cache in `cache_dir` (null: a temporary folder removed at exit), so
    a 224 px set trains in the memory of a 28 px one.
    """

    def __init__(
        self, name: str = "bloodmnist", size: int = 28, root: str | None = None, download: bool = True,
        cache_dir: str | None = None, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.meta = medmnist_info(name, size)
        self.name, self.size, self.root, self.download = name, size, root, download
        self.cache_dir = Path(cache_dir).expanduser() if cache_dir else None

    @property
    def dirs(self) -> list[Path]:
        return candidate_dirs(self.root, "medmnist", DEFAULT_ROOT)

    def path(self, download: bool = False) -> Path:
        file = filename(self.name, self.size)
        return find_or_download(file, self.dirs, self.meta.url, self.meta.md5, download=download and self.download)

    def prepare_data(self) -> None:
        self.path(download=True)

    def describe(self) -> DataInfo:
        return DataInfo(
            task=self.meta.task,
            class_names=list(self.meta.class_names),
            in_chans=self.meta.n_channels,
            image_size=self.size,
            symmetry=self.meta.symmetry,
            split_key=f"medmnist-official-{filename(self.name, self.size)}",
        )

    def load_splits(self) -> tuple[ImageCache, dict[str, tuple[np.ndarray, np.ndarray]]]:
        path = self.path(download=True)
        try:
            labels = {s: read_member(path, f"{s}_labels") for s in SPLITS}
        except MedclassError:
            raise
        except Exception as err:  # not a zip at all
            raise MedclassError(f"{path} is not a readable .npz file ({err}); delete it to download again") from err
        chans = self.in_chans or self.meta.n_channels
        stat = path.stat()
        key = hashlib.sha1(f"{path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}|{chans}".encode()).hexdigest()[:16]
        name = f"{path.stem}-{chans}ch-{key}"
        stem = self.cache_dir / name if self.cache_dir else temporary_stem(name)

        def check(images: dict[str, tuple[tuple[int, ...], np.dtype]]) -> None:
            check_npz(path, images, labels, self.meta.task, len(self.meta.class_names))

        cache = open_cache(stem) or unpack_images(path, [f"{s}_images" for s in SPLITS], stem,
                                                  lambda rows: to_channels(rows, chans), check)
        counts = [len(labels[s]) for s in SPLITS]
        if len(cache) != sum(counts):
            raise MedclassError(f"{cache.images.filename} holds {len(cache)} images, not the {sum(counts)} of {path}; "
                                "delete it to unpack again")
        starts = np.cumsum([0, *counts])
        return cache, {s: (np.arange(starts[i], starts[i + 1]), labels[s]) for i, s in enumerate(SPLITS)}
