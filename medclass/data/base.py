"""The DataModule every dataset shares: splits in, augmented DataLoaders out.

A subclass only says how to load its splits (`load_splits`: one memory-mapped image cache, see
`medclass.data.cache`, and each split's row indices into it) and what they are (`describe`);
duplicate checks, normalization statistics, transforms and loaders live here once. No split is ever
copied out of the cache, so memory does not grow with the data set.
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cv2
import lightning as L
import numpy as np
import torch
from lightning.fabric.utilities.seed import pl_worker_init_function
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler, get_worker_info

from medclass.augment import BatchAugment, eval_transform
from medclass.data.cache import ImageCache
from medclass.data.leakage import split_copies
from medclass.utils.errors import MedclassError
from medclass.utils.io import write_csv

SPLITS = ("train", "val", "test")
log = logging.getLogger("medclass")


@dataclass
class DataInfo:
    """What a model and a checkpoint need to know about the data; plain values only."""

    task: str
    class_names: list[str]
    in_chans: int
    image_size: int
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    symmetry: str = "sided"
    split_key: str = ""  # names the exact train/val/test partition (metrics.json, split.csv, eval's check)
    class_counts: list[int] = field(default_factory=list)  # training images per class (positives per label)
    train_size: int = 0

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _portable(images: np.ndarray) -> Any:
    """What a worker process started by spawn or forkserver receives: a memory map travels as its file's
    name and reopens there (pickling the map itself would copy every image into every worker)."""
    if isinstance(images, np.memmap) and isinstance(images.filename, (str, Path)):
        return ("memmap", str(images.filename), images.offset, images.shape)
    return images


def _reopen(images: Any) -> np.ndarray:
    if isinstance(images, tuple) and images[0] == "memmap":
        _, filename, offset, shape = images
        return np.memmap(filename, np.uint8, "r", offset=offset, shape=shape)
    return images


class ArrayDataset(Dataset):
    """uint8 images (N, H, W[, C]) with labels; the transform turns one image into a tensor.

    `index` picks a split's rows out of one shared array (a memory-mapped cache): a view, never a copy.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform: Callable[..., dict],
                 index: np.ndarray | None = None) -> None:
        self.images, self.labels, self.transform = images, labels, transform
        self.index = np.arange(len(labels)) if index is None else np.asarray(index, np.int64)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.transform(image=np.asarray(self.images[self.index[index]]))["image"],
                torch.as_tensor(self.labels[index]))

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "images": _portable(self.images)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, images=_reopen(state["images"]))


class BatchDataset(ArrayDataset):
    """The fast path's training set: a batch of indices gathers its uint8 images from the map in one read;
    augmentation and normalization wait for the device (`ClassificationDataModule.on_after_batch_transfer`)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray | None = None) -> None:
        super().__init__(images, labels, lambda **kw: kw, index)
        self.labels = torch.as_tensor(labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        images, labels = self.__getitems__([index])
        return images[0], labels[0]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self.index[np.asarray(indices, np.int64)]
        return torch.from_numpy(np.ascontiguousarray(self.images[rows])), self.labels[torch.as_tensor(indices)]


def as_batch(batch: Any) -> Any:
    """Collation for BatchDataset, whose `__getitems__` already returns a whole batch."""
    return batch


def init_worker(worker_id: int, rank: int = 0) -> None:
    """One OpenCV thread per worker, and a distinct augmentation stream per worker, epoch and DDP rank.

    Lightning's own worker seeding (random, numpy, torch from the base seed, worker id and rank) runs
    first; the Albumentations pipeline, which keeps its own generator, is then seeded from the result.
    """
    cv2.setNumThreads(0)
    pl_worker_init_function(worker_id, rank)
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info else None
    if hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


def report_skipped(skipped: list[tuple[Any, str]], report: Path) -> None:
    """One warning line with counts by reason, and every path with its reason in the CSV `report`."""
    if not skipped:
        return
    write_csv(report, ((str(p), why) for p, why in skipped), ("path", "reason"))
    reasons = Counter(r.split(" (")[0].split(" of ")[0] for _, r in skipped)
    log.warning("skipped %d files (%s); list: %s", len(skipped),
                ", ".join(f"{n} {k}" for k, n in sorted(reasons.items())), report)


def label_text(label: Any, names: list[str], multi_label: bool) -> str:
    """A label as split.csv writes it: the class name, or for multi-label data the names joined with `;`."""
    return ";".join(n for n, v in zip(names, label, strict=True) if v) if multi_label else names[int(label)]


def report_duplicates(duplicates: dict[str, int]) -> None:
    found = {k: n for k, n in duplicates.items() if n}
    if found:
        log.warning("exact copies across splits (pixel hash; reported, not removed): %s",
                    ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in found.items()))
    else:
        log.info("no exact copies across train/val/test (pixel hash)")


def encode_labels(labels: np.ndarray, task: str) -> np.ndarray:
    """Integer class indices for single-label tasks, float 0/1 rows for multi-label."""
    if task == "multi-label":
        return labels.astype(np.float32)
    return labels.reshape(len(labels), -1)[:, 0].astype(np.int64)


class ClassificationDataModule(L.LightningDataModule):
    """Shared loaders; `augment` is the partial from `conf/augment/` (None: no augmentation)."""

    def __init__(
        self,
        batch_size: int = 128,
        eval_batch_size: int | None = None,
        num_workers: int = 2,
        augment: Callable[..., Any] | None = None,
        image_size: int | None = None,
        in_chans: int | None = None,
        mean: list[float] | None = None,
        std: list[float] | None = None,
        pin_memory: bool = False,
        seed: int = 0,
        sampler: str | None = None,
    ) -> None:
        super().__init__()
        if sampler not in (None, "balanced"):
            raise MedclassError(f"data.sampler={sampler!r}: use balanced or null")
        self.sampler = sampler
        if batch_size < 1:
            raise MedclassError(f"data.batch_size={batch_size} must be at least 1")
        if num_workers < 0:
            raise MedclassError(f"data.num_workers={num_workers} must be 0 or more")
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size or batch_size
        self.num_workers, self.pin_memory, self.seed = num_workers, pin_memory, seed
        self.augment, self.image_size, self.in_chans = augment, image_size, in_chans
        self.mean, self.std = mean, std
        self.datasets: dict[str, Dataset] = {}
        self._info: DataInfo | None = None
        self.batch_augment: BatchAugment | None = None  # augment=batch: the fast path
        self.duplicates: dict[str, int] = {}  # exact copies across splits, e.g. {"test_in_train": 3}
        self._labels: dict[str, np.ndarray] = {}
        self.groups_across_splits: dict[str, int] = {}  # patients with images in two splits (grouped data)

    # -- what a subclass provides -------------------------------------------------------------
    def describe(self) -> DataInfo:
        """Task, class names, native channels and size (mean/std are filled in here)."""
        raise NotImplementedError

    def load_splits(self) -> tuple[ImageCache, dict[str, tuple[np.ndarray, np.ndarray]]]:
        """The decoded images (one memory-mapped cache, at the channel count asked for) and, for each split
        in SPLITS, the indices of its rows in that cache with their raw labels."""
        raise NotImplementedError

    def split_items(self, split: str) -> list[str]:
        """What identifies each image of `split` in split.csv; arrays: `<split>/<index>`."""
        return [f"{split}/{i}" for i in range(len(self._labels[split]))]

    def item_columns(self, item: str) -> dict[str, str]:
        """More columns for one split.csv row (a manifest's group and extra columns); none here."""
        return {}

    def write_split(self, path: Path) -> None:
        """The exact partition this run used: `path,label,split`, one row per image (multi-label: names
        joined with `;`), plus `item_columns`; folder data give paths relative to their root."""
        info = self.info
        names = info.class_names
        rows = []
        for split in SPLITS:
            for item, y in zip(self.split_items(split), self._labels[split], strict=True):
                rows.append({"path": item, "label": label_text(y, names, info.task == "multi-label"), "split": split,
                             **self.item_columns(item)})
        write_csv(path, rows)

    # -- shared machinery ---------------------------------------------------------------------
    @property
    def info(self) -> DataInfo:
        """Data facts for the model; calls setup() first if needed (normalization needs train)."""
        if self._info is None:
            self.setup()
        assert self._info is not None
        return self._info

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        info = self.describe()
        cache, splits = self.load_splits()
        chans = self.in_chans or info.in_chans
        if cache.images.shape[-1] != chans:  # a subclass converts channels while it fills the cache
            raise MedclassError(f"{type(self).__name__}: cached images have {cache.images.shape[-1]} channels, "
                                f"not {chans}")
        index = {s: np.asarray(i, np.int64) for s, (i, _) in splits.items()}
        self.duplicates = split_copies({s: cache.digests_of(index[s]) for s in SPLITS})
        report_duplicates(self.duplicates)
        labels = {s: encode_labels(y, info.task) for s, (_, y) in splits.items()}
        self._labels = labels
        train_labels = labels["train"]
        info.class_counts = (train_labels.sum(0).astype(int).tolist() if info.task == "multi-label" else
                             np.bincount(train_labels, minlength=info.num_classes).tolist())
        info.train_size = len(train_labels)
        mean, std = cache.mean_std(index["train"]) if self.mean is None else (list(self.mean), list(self.std))
        plain, train_tf = self.transforms(info, mean, std, chans, cache.images.shape[1])
        images = cache.images
        for split in SPLITS:
            self.datasets[split] = ArrayDataset(images, labels[split], train_tf if split == "train" else plain,
                                                index[split])
        self.datasets["train_eval"] = ArrayDataset(images, labels["train"], plain, index["train"])
        if isinstance(train_tf, BatchAugment):
            self.batch_augment = train_tf
            self.datasets["train"] = BatchDataset(images, labels["train"], index["train"])
        self._info = info

    def transforms(self, info: DataInfo, mean: list[float], std: list[float], chans: int,
                   stored_size: int) -> tuple[Callable[..., Any], Callable[..., Any]]:
        """(evaluation, training) transforms; fills in `info`'s channels, normalization and size.

        `stored_size` is the side of the images as read; `data.image_size` other than it resizes on the fly."""
        if chans == 1 and len(mean) == 3 == len(std):  # RGB statistics (a pretrained backbone's) for grey input
            mean, std = [round(sum(mean) / 3, 4)], [round(sum(std) / 3, 4)]
        if len(mean) != chans or len(std) != chans:
            raise MedclassError(f"data.mean/data.std need {chans} values each, got {mean} and {std}")
        info.in_chans, info.mean, info.std = chans, list(mean), list(std)
        info.image_size = self.image_size or stored_size
        size = self.image_size if self.image_size and self.image_size != stored_size else None
        plain = eval_transform(size, info.mean, info.std)
        train_tf = (
            self.augment(image_size=size, mean=info.mean, std=info.std, symmetry=info.symmetry, seed=self.seed)
            if self.augment  # None, or an empty config from augment=none
            else plain
        )
        return plain, train_tf

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Fast path: the batch's uint8 images, gathered from the map, are augmented and normalized on the device."""
        if self.batch_augment is None or not isinstance(batch, (tuple, list)):  # a lone tensor: the model
            return batch  # summary's example input
        images, labels = batch
        if images.dtype != torch.uint8:  # an evaluation batch: already normalized images
            return batch
        return self.batch_augment(images), labels

    def _loader(self, split: str, train: bool = False) -> DataLoader:
        self.setup()
        dataset = self.datasets[split]
        batched = isinstance(dataset, BatchDataset)  # one read per batch: nothing for a worker process to do
        workers = 0 if batched else self.num_workers
        sampler = self.balanced_sampler() if train and self.sampler == "balanced" else None
        return DataLoader(
            dataset,
            batch_size=self.batch_size if train else self.eval_batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > self.batch_size,
            num_workers=workers,
            persistent_workers=workers > 0,
            pin_memory=self.pin_memory,
            worker_init_fn=functools.partial(init_worker, rank=self.global_rank),
            collate_fn=as_batch if batched else None,
        )

    def balanced_sampler(self) -> WeightedRandomSampler:
        """Draws every class equally often (with replacement), one epoch = the training split's size.

        Multi-label rows weigh by their rarest positive label (rows with none by the negatives' share).
        """
        labels, info = self._labels["train"], self.info
        counts = np.maximum(np.asarray(info.class_counts, np.float64), 1)
        if info.task == "multi-label":
            inverse = np.where(labels > 0, 1 / counts, 0).max(1)
            weights = np.where(inverse > 0, inverse, 1 / max(len(labels) - int((labels.sum(1) > 0).sum()), 1))
        else:
            weights = 1 / counts[labels]
        # no generator of its own: it draws from torch's, which seed_everything seeds and a resume restores
        return WeightedRandomSampler(torch.as_tensor(weights, dtype=torch.double), num_samples=len(labels),
                                     replacement=True)

    @property
    def global_rank(self) -> int:
        return self.trainer.global_rank if self.trainer is not None else 0

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def split_dataloader(self, split: str) -> DataLoader:
        """Un-augmented loader for any split, for evaluation (`train` gives plain train images)."""
        if split not in SPLITS:
            raise MedclassError(f"split={split!r} is not one of {SPLITS}")
        return self._loader("train_eval" if split == "train" else split)
