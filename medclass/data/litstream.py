"""The LitData side of `data=stream`: writing chunks, reading them back, and sharding them over DDP ranks.

Imported only once `litdata` is known to be installed (`medclass.data.stream` asks first, so a missing
extra is one line). Everything here leans on a few LitData facts (litdata 0.2.76, read in its source):

- `StreamingDataset` is an `IterableDataset`. Lightning injects no `DistributedSampler` into a loader over
  an iterable data set (`_requires_distributed_sampler` checks `has_iterable_dataset`), so nothing is
  sharded twice; LitData itself gives each rank and each loader worker its own slice of the chunks.
- The rank it shards for is read once, when the data set is built (`_DistributedEnv.detect()`), which for
  medclass is before `trainer.fit` has started the process group: `StreamDataModule` sets it again from the
  trainer when it builds each loader.
- LitData shards by batch: each rank gets whole batches and, under DDP, the rest of the epoch (up to ranks ×
  batch size - 1 images) is dropped. `ImageStream` shards by image instead (an assignment "batch" of one),
  so under DDP at most ranks - 1 images sit out an epoch, a different one each epoch when shuffled.
- On a parallel file system (NFS, Lustre, GPFS, Vast) LitData reads chunks in place and hands out whole
  chunks (`WindowShuffle`), which can leave a rank with none when a split has fewer chunks than ranks;
  `ImageStream` keeps the in-place reads but the image-level assignment of a local disk.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import stat
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import redirect_stdout
from io import StringIO
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from litdata import StreamingDataLoader, StreamingDataset, optimize
from litdata.streaming.downloader import get_downloader
from litdata.streaming.item_loader import PyTreeLoader
from litdata.utilities.env import _DistributedEnv

from medclass.data.chunks import Chunk, ChunkRefused, ItemLayout, check_chunk, identity
from medclass.data.decode import decode_resized, to_channels
from medclass.untrusted.files import printable
from medclass.utils.errors import MedclassError

# LitData logs its cache budget and read mode at INFO for every data set it opens: medclass logs one line instead
logging.getLogger("litdata").setLevel(logging.WARNING)


# -- writing ------------------------------------------------------------------------------------------------
def encode_item(size: int, chans: int, job: tuple[int, str, Any]) -> Iterator[dict[str, Any]]:
    """One LitData item per readable image: uint8 (size, size, chans) pixels, the label (a class index, or a
    0/1 row for multi-label data) and the image's row in the split table. An unreadable image yields
    nothing: the read-back after writing notices the gap and reports the file with its reason."""
    index, path, label = job
    cv2.setNumThreads(0)  # a forked worker: OpenCV's thread pool, if the parent had one, did not come along
    try:
        image = decode_resized(Path(path), size, chans)
    except Exception:  # corrupt, truncated: reported by `prepare`, which decodes the few missing ones again
        return
    yield {"image": np.ascontiguousarray(image), "label": label, "index": int(index)}


def write_split(jobs: Sequence[tuple[int, str, Any]], out: Path, size: int, chans: int, workers: int,
                chunk_bytes: str) -> None:
    """LitData chunks of one split in `out`. Workers decode in parallel; each takes a fixed slice in order
    (`keep_data_ordered`), so the same inputs give the same chunks. Forked, not spawned, on Linux: a
    spawned worker imports torch again (seconds each), and this process has started no threads yet."""
    import functools

    with redirect_stdout(StringIO()):  # LitData prints a line per worker; the command logs a summary
        optimize(fn=functools.partial(encode_item, size, chans), inputs=list(jobs), output_dir=str(out),
                 chunk_bytes=chunk_bytes, num_workers=max(1, min(workers, len(jobs))), verbose=False,
                 keep_data_ordered=True, reorder_files=False,
                 start_method="fork" if sys.platform == "linux" else None)


def read_back(folder: Path, batch: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """(images (n, H, W, C) uint8, their table indices) of a written split, in its stored order, a few
    hundred images at a time: the check that every image was written, and the pass that sums pixels."""
    dataset = StreamingDataset(str(folder))
    images: list[np.ndarray] = []
    index: list[int] = []
    for item in dataset:
        images.append(item["image"])
        index.append(int(item["index"]))
        if len(images) == batch:
            yield np.stack(images), np.asarray(index, np.int64)
            images, index = [], []
    if images:
        yield np.stack(images), np.asarray(index, np.int64)


# -- reading ------------------------------------------------------------------------------------------------
def fetch(url: str, name: str, into: Path) -> Path:
    """`<url>/<name>` (object storage, or `local:` a folder read as if it were a bucket) as a local file."""
    into.mkdir(parents=True, exist_ok=True)
    local = into / name.replace("/", "-")
    get_downloader(url, str(into), []).download_file(f"{url.rstrip('/')}/{name}", str(local))
    return local


class ToSample:
    """A LitData item as the `(image, label)` pair every medclass loader gives: channels converted when the
    run asks for another count, then the Albumentations pipeline (resize, augmentation, normalization).

    The pipeline is also listed as `transforms`, which is where `medclass.callbacks.random_state` looks for
    generators to save in a checkpoint."""

    def __init__(self, transform: Callable[..., dict], chans: int, multi_label: bool) -> None:
        self.transform, self.chans, self.multi_label = transform, chans, multi_label
        self.transforms = [transform]

    def __call__(self, item: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        image = item["image"]
        if image.shape[-1] != self.chans:
            image = to_channels(image[None], self.chans)[0]
        label = torch.as_tensor(np.asarray(item["label"]), dtype=torch.float32 if self.multi_label else torch.long)
        return self.transform(image=image)["image"], label

    def set_random_seed(self, seed: int) -> None:
        if hasattr(self.transform, "set_random_seed"):
            self.transform.set_random_seed(seed)


class ChunkGuard(PyTreeLoader):
    """LitData's item loader, with each chunk checked whole (`chunks.check_chunk`) before LitData reads from it.

    LitData opens a chunk file when it reads the chunk's first item, and again after closing it; each time, the
    file is checked first (or, when its identity is unchanged since the last check, only `lstat`-ed). From object
    storage (and `local:`), that is after LitData downloaded it into the cache: a download is published whole
    (an atomic rename), so the guard waits only for the file to appear, then checks it, and never waits for bytes
    beyond what the file holds. `where` names the split's index.json in errors; `rows` and `labels` are the split
    table's, in stored order."""

    def __init__(self, where: str, chunks: Sequence[Chunk], layout: ItemLayout, rows: np.ndarray,
                 labels: np.ndarray, remote: bool) -> None:
        super().__init__()
        self.where, self.chunks, self.layout, self.remote = where, list(chunks), layout, remote
        self.rows, self.labels = rows, labels
        self.checked: dict[int, tuple[int, ...]] = {}

    def load_item_from_chunk(self, index: int, chunk_index: int, chunk_filepath: str, begin: int,
                             filesize_bytes: int, encryption: Any = None) -> Any:
        if chunk_filepath != self._chunk_filepath:  # LitData (re)opens the file for this item
            self.check(chunk_index, chunk_filepath)
        return super().load_item_from_chunk(index, chunk_index, chunk_filepath, begin, filesize_bytes, encryption)

    def warm_posix_chunk(self, chunk_index: int, chunk_filepath: str) -> None:
        """LitData maps a local chunk ahead of reading it (and parses its header then): checked first."""
        self.check(chunk_index, chunk_filepath)
        super().warm_posix_chunk(chunk_index, chunk_filepath)

    def pre_load_chunk(self, chunk_index: int, chunk_filepath: str) -> None:
        """A page-cache hint from LitData's download thread, which opens the file: given for a regular file only
        (never a pipe), and never an error there; the chunk is checked when it is read."""
        try:
            regular = stat.S_ISREG(os.lstat(chunk_filepath).st_mode)
        except OSError:
            regular = False
        if regular:
            super().pre_load_chunk(chunk_index, chunk_filepath)

    def check(self, chunk_index: int, path: str) -> None:
        """The chunk at `path`, as its index and the split table describe it, or one `ChunkRefused` line."""
        chunk = self.chunks[chunk_index]
        if os.path.basename(path) != chunk.name:  # LitData reads the file its (checked) index names
            raise ChunkRefused(f"{self.where}: LitData asked for {path} as chunk {chunk.name}")
        if self.remote:
            try:
                self._wait_until_chunk_ready(chunk_index, path, 0)  # there, and whole, once it exists
            except MedclassError:
                raise
            except Exception as err:  # the download failed or never came
                detail = printable(" ".join(str(err).split()), 200)
                raise ChunkRefused(f"{self.where}: chunk {chunk.name} did not arrive ({type(err).__name__}: "
                                   f"{detail}); check the URL, the storage credentials and the network") from None
        try:
            now = identity(os.lstat(path))
        except OSError:
            now = None
        if now is None or self.checked.get(chunk_index) != now:
            self.checked[chunk_index] = check_chunk(path, chunk, self.layout, self.rows, self.labels, self.where)

    def state_dict(self) -> Any:
        """None, as LitData records its own default loader: a loader state saved in a checkpoint matches."""
        return None


ChunkGuard.__name__ = PyTreeLoader.__name__  # LitData compares index.json's item_loader with the class name


def index_file(dataset: StreamingDataset) -> Path:
    """The index.json LitData reads for `dataset`: the folder's own, or its copy in the cache."""
    return Path(dataset.input_dir.path) / "index.json"


class ImageStream(StreamingDataset):
    """A split of a prepared data set: LitData's `StreamingDataset`, sharded image by image (module docstring),
    each chunk checked by `guard` before LitData reads from it."""

    def __init__(self, input_dir: str, transform: ToSample, shuffle: bool, seed: int, cache_dir: str | None,
                 max_cache_size: str | None, guard: ChunkGuard | None = None) -> None:
        super().__init__(input_dir, cache_dir=cache_dir, shuffle=shuffle, seed=seed, max_cache_size=max_cache_size,
                         item_loader=guard)
        self.transform = transform  # LitData applies it to each item (a callable, not a list: see ToSample)
        if self.posix_fast is not None and self.posix_fast.window_shuffle:
            # in-place reads as LitData chose, but image-level assignment: whole chunks per worker could leave a
            # rank with no images when a split has fewer chunks than ranks (a small set on NFS)
            self.posix_fast = dataclasses.replace(self.posix_fast, kind="posix")

    def set_batch_size(self, batch_size: int) -> None:
        """Assign images to ranks and workers one by one, not in whole batches (the loader still batches)."""
        super().set_batch_size(1)

    def set_distributed(self, world_size: int, global_rank: int, num_nodes: int) -> None:
        """The ranks to shard over, from the trainer (LitData read them when the data set was built)."""
        env = _DistributedEnv(world_size=world_size, global_rank=global_rank, num_nodes=num_nodes)
        if env != self.distributed_env:
            self.distributed_env, self.shuffler = env, None

    def worker_sizes(self, num_workers: int) -> list[int]:
        """How many images each loader worker of this rank reads in the coming epoch."""
        workers = max(num_workers, 1)
        self.get_len(num_workers, 1)  # builds the shuffler
        assert self.shuffler is not None
        _, intervals = self.shuffler.get_chunks_and_intervals_per_workers(self.distributed_env, workers, 1,
                                                                          self.current_epoch)
        start = self.distributed_env.global_rank * workers
        return [sum(iv[2] - iv[1] for iv in ivs) for ivs in intervals[start:start + workers]]


def detect_distributed() -> tuple[int, int, int]:
    """(world size, rank, nodes) as LitData sees them without a trainer (eval.py: one process)."""
    env = _DistributedEnv.detect()
    return env.world_size, env.global_rank, env.num_nodes


class StreamLoader(StreamingDataLoader):
    """LitData's loader (epochs reshuffle, a mid-epoch state for resuming) with the true batch count: each
    worker batches its own images, so with several workers each may end on a partial batch."""

    def __len__(self) -> int:
        dataset = self.dataset
        if self.num_workers <= 1 or not isinstance(dataset, ImageStream):
            return super().__len__()
        return sum(math.ceil(n / self.batch_size) for n in dataset.worker_sizes(self.num_workers) if n)
