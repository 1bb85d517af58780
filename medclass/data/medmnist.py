"""MedMNIST v2/v3 2D sets from the official `.npz` files (`data=medmnist`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from medmnist.info import DEFAULT_ROOT

from medclass.data.base import SPLITS, ClassificationDataModule, DataInfo
from medclass.data.locate import candidate_dirs, find_or_download
from medclass.data.medmnist_info import filename, medmnist_info
from medclass.utils.errors import MedclassError


def check_npz(path: Path, arrays: dict[str, np.ndarray], task: str, num_classes: int) -> None:
    """Fail early, naming the file, on the mistakes a hand-made or truncated npz file carries."""
    for split in SPLITS:
        x, y = arrays.get(f"{split}_images"), arrays.get(f"{split}_labels")
        if x is None or y is None:
            raise MedclassError(
                f"{path} lacks {split}_images/{split}_labels (has {sorted(arrays)}); "
                "MedMNIST files hold train_, val_ and test_ images and labels"
            )
        if x.dtype != np.uint8 or x.ndim not in (3, 4) or len(x) != len(y) or len(x) == 0:
            raise MedclassError(
                f"{path}: {split}_images must be uint8 (N, H, W[, C]) with one label row per image; "
                f"got {x.dtype} {x.shape} images and {y.shape} labels"
            )
        if x.shape[1:] != arrays["train_images"].shape[1:]:
            raise MedclassError(f"{path}: {split}_images are {x.shape[1:]} but train_images are "
                                f"{arrays['train_images'].shape[1:]}; every split needs the same image size")
        width = num_classes if task == "multi-label" else 1
        if y.reshape(len(y), -1).shape[1] != width:
            raise MedclassError(f"{path}: {split}_labels has shape {y.shape}; a {task} set needs {width} column(s)")
        high = 1 if task == "multi-label" else num_classes - 1
        if y.min() < 0 or y.max() > high:
            raise MedclassError(f"{path}: {split}_labels range {y.min()}..{y.max()} is outside 0..{high}")


class MedMNISTDataModule(ClassificationDataModule):
    """Any of the 12 2D MedMNIST sets at 28, 64, 128 or 224 px.

    The file is looked up in `root`, then `$MEDCLASS_DATA/medmnist`, then `~/.medmnist`, and
    downloaded (MD5-checked) when missing and `download` is true.
    """

    def __init__(
        self, name: str = "bloodmnist", size: int = 28, root: str | None = None, download: bool = True, **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.meta = medmnist_info(name, size)
        self.name, self.size, self.root, self.download = name, size, root, download

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

    def load_splits(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        path = self.path(download=True)
        try:
            with np.load(path) as npz:
                arrays = {key: npz[key] for key in npz.files}
        except Exception as err:
            raise MedclassError(f"{path} is not a readable .npz file ({err}); delete it to download again") from err
        check_npz(path, arrays, self.meta.task, len(self.meta.class_names))
        return {s: (arrays[f"{s}_images"], arrays[f"{s}_labels"]) for s in SPLITS}
