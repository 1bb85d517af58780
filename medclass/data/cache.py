"""Decoded images on disk, read through a memory map: RAM that does not grow with the data set.

Every data kind ends here. A folder or manifest is decoded once, image by image, straight into a
`.npy` file; an official MedMNIST `.npz` (a zip, which cannot be mapped) is unpacked once, chunk by
chunk, into one. Training then reads the file with `mmap_mode="r"`: its pages are page cache, which
the kernel shares between DataLoader workers and DDP ranks and takes back under pressure, so private
memory stays the same at a thousand images and at a hundred thousand.

Beside the images, a small `.meta.npz` keeps what setup needs about every image without reading
the pixels again: whether it decoded (`keep`), a 16-byte content hash (`digests`, for copies across
splits), and per channel the integer sum of its pixels and of their squares (`sums`, from which the
training split's mean and std follow exactly, for any split, in microseconds).

Both files are written through a temporary file renamed into place (`medclass.utils.io`), images
first, so a crash never leaves a cache that looks whole. They are read as data: shapes and types are
checked, nothing is unpickled.
"""

from __future__ import annotations

import atexit
import hashlib
import shutil
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from medclass.utils.errors import MedclassError
from medclass.utils.io import atomic_open

CHUNK_BYTES = 32 * 2**20  # pixels handled at once while unpacking, hashing or summing
SQUARES = (np.arange(256, dtype=np.uint32) ** 2).astype(np.uint16)  # 255² = 65025 fits uint16
DIGEST = 16
MAX_DEFLATE_RATIO = 1100  # deflate expands at most about 1032:1


def image_sums(images: np.ndarray) -> np.ndarray:
    """(n, C, 2) int64: per image and channel, the sum of the pixels and of their squares (exact)."""
    n, chans = len(images), images.shape[-1]
    flat = images.reshape(n, -1, chans)
    return np.stack([flat.sum(1, dtype=np.int64), SQUARES[flat].sum(1, dtype=np.int64)], axis=-1)


def image_digests(images: np.ndarray) -> np.ndarray:
    """(n, 16) uint8: a BLAKE2b hash of each image's pixels."""
    return np.frombuffer(b"".join(hashlib.blake2b(np.ascontiguousarray(image).tobytes(), digest_size=DIGEST).digest()
                                  for image in images), np.uint8).reshape(len(images), DIGEST)


def mean_std(sums: np.ndarray, pixels_per_image: int) -> tuple[list[float], list[float]]:
    """Per-channel mean and std (population, 0..1 units, std at least 1e-3) from `image_sums` rows.

    Python integers make the variance exact before the one division: no float copy of any image.
    """
    count = len(sums) * pixels_per_image
    total = sums.sum(0, dtype=np.int64)  # (C, 2); 2^63 > 65025 × 10^13 pixels
    mean, std = [], []
    for s1, s2 in ((int(a), int(b)) for a, b in total):
        mean.append(s1 / count / 255)
        std.append(max(((s2 * count - s1 * s1) / count**2) ** 0.5 / 255, 1e-3))
    return [round(m, 4) for m in mean], [round(s, 4) for s in std]


@dataclass
class ImageCache:
    """One decoded set: `images` (N, H, W, C) uint8, a read-only memory map, and its per-image facts."""

    images: np.ndarray
    keep: np.ndarray  # (N,) bool: False for a file that did not decode (its row is zeros)
    digests: np.ndarray  # (N, 16) uint8
    sums: np.ndarray  # (N, C, 2) int64

    def __len__(self) -> int:
        return len(self.images)

    def mean_std(self, index: np.ndarray) -> tuple[list[float], list[float]]:
        return mean_std(self.sums[index], int(np.prod(self.images.shape[1:3])))

    def digests_of(self, index: np.ndarray) -> list[bytes]:
        return [row.tobytes() for row in self.digests[index]]


def paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".npy"), stem.with_name(stem.name + ".meta.npz")


def open_cache(stem: Path) -> ImageCache | None:
    """The cache at `stem` when both its files are there and agree; None when it was never finished."""
    image_file, meta_file = paths(stem)
    if not (image_file.is_file() and meta_file.is_file()):
        return None
    try:
        images = np.load(image_file, mmap_mode="r", allow_pickle=False)
        with np.load(meta_file, allow_pickle=False) as meta:
            keep, digests, sums = meta["keep"], meta["digests"], meta["sums"]
    except Exception as err:  # truncated, or not ours
        raise MedclassError(f"{image_file} is not a readable image cache ({type(err).__name__}: {err}); delete "
                            f"{image_file.name} and {meta_file.name} to decode again") from err
    n = len(images)
    if not (images.dtype == np.uint8 and images.ndim == 4 and keep.shape == (n,) and keep.dtype == bool
            and digests.shape == (n, DIGEST) and sums.shape == (n, images.shape[-1], 2) and sums.dtype == np.int64):
        raise MedclassError(f"{image_file} and {meta_file.name} do not agree ({images.dtype} {images.shape} images, "
                            f"{keep.shape} keep, {digests.shape} digests, {sums.shape} sums); delete both to decode "
                            "again")
    return ImageCache(images, keep, digests, sums)


class CacheWriter:
    """Fills a `.npy` memory map row by row (or chunk by chunk) and notes each row's facts."""

    def __init__(self, images: np.ndarray) -> None:
        n, chans = len(images), images.shape[-1]
        self.images = images
        self.keep = np.ones(n, bool)
        self.digests = np.zeros((n, DIGEST), np.uint8)
        self.sums = np.zeros((n, chans, 2), np.int64)

    def put(self, start: int, rows: np.ndarray) -> None:
        """Rows `start ... start + len(rows) - 1`, uint8 (n, H, W, C)."""
        stop = start + len(rows)
        self.images[start:stop] = rows
        self.digests[start:stop] = image_digests(rows)
        self.sums[start:stop] = image_sums(rows)

    def drop(self, row: int) -> None:
        self.keep[row] = False


def _header(f: IO[bytes], shape: tuple[int, ...]) -> int:
    np.lib.format.write_array_header_2_0(f, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return f.tell()


@contextmanager
def write_cache(stem: Path, shape: tuple[int, ...]) -> Iterator[CacheWriter]:
    """A writer over a new uint8 `.npy` of `shape`; both files appear only when the block ends cleanly."""
    image_file, meta_file = paths(stem)
    with atomic_open(image_file, "w+b") as f:
        offset = _header(f, shape)
        f.truncate(offset + int(np.prod(shape)))
        f.flush()
        images = np.memmap(f, np.uint8, "r+", offset=offset, shape=shape)
        writer = CacheWriter(images)
        yield writer
        images.flush()
        del images, writer.images
    with atomic_open(meta_file, "wb") as f:
        np.savez(f, keep=writer.keep, digests=writer.digests, sums=writer.sums)


def temporary_stem(name: str) -> Path:
    """Where a cache goes with `cache_dir=null`: a folder of its own under the system's temporary
    directory, removed when this process exits (workers and other processes never remove it)."""
    folder = Path(tempfile.mkdtemp(prefix="medclass-cache-"))
    atexit.register(shutil.rmtree, folder, True)
    return folder / name


# -- official .npz files: unpacked once, never read whole ------------------------------------------------
def npz_member(archive: zipfile.ZipFile, key: str, where: Path) -> tuple[IO[bytes], tuple[int, ...], np.dtype]:
    """An open stream positioned at the data of `key.npy`, with its shape and dtype (header read as data).

    The header's size must be what the zip's directory says the member holds, and no more than deflate
    can expand to: a stranger's file cannot declare a terabyte array it does not contain."""
    try:
        info = archive.getinfo(f"{key}.npy")
        stream = archive.open(info)
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        else:
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
    except KeyError as err:
        raise MedclassError(f"{where} lacks {key}; MedMNIST files hold train_, val_ and test_ images and "
                            "labels") from err
    except Exception as err:
        raise MedclassError(f"{where}: {key} is not a readable array ({err}); delete the file to download "
                            "again") from err
    if fortran or dtype.hasobject:
        raise MedclassError(f"{where}: {key} is {'Fortran-ordered' if fortran else 'an object array'}; MedMNIST files "
                            "hold plain C-ordered arrays (rewrite it with numpy.savez)")
    nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
    packed = info.compress_size if info.compress_type != zipfile.ZIP_STORED else info.file_size
    if info.file_size != stream.tell() + nbytes or info.file_size > MAX_DEFLATE_RATIO * packed + 2**20:
        raise MedclassError(f"{where}: {key} declares a {shape} {dtype} array ({nbytes} bytes) that its "
                            f"{packed}-byte zip entry cannot hold; the file is damaged or not a MedMNIST file "
                            "(delete it to download again)")
    return stream, tuple(int(n) for n in shape), dtype


def read_member(path: Path, key: str) -> np.ndarray:
    """A whole (small) array of a `.npz`, such as the labels, read in chunks: never larger than its data."""
    with zipfile.ZipFile(path) as archive:
        stream, shape, dtype = npz_member(archive, key, path)
        with stream:
            parts = list(read_chunks(stream, shape, dtype, f"{path} ({key})"))
    return np.concatenate(parts) if parts else np.zeros(shape, dtype)


def read_chunks(stream: IO[bytes], shape: tuple[int, ...], dtype: np.dtype, where: str) -> Iterator[np.ndarray]:
    """The rows of an array from its `.npy` data stream, about CHUNK_BYTES at a time."""
    row_bytes = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
    per_chunk = max(1, CHUNK_BYTES // max(row_bytes, 1))
    for start in range(0, shape[0], per_chunk):
        rows = min(per_chunk, shape[0] - start)
        data = stream.read(rows * row_bytes)
        if len(data) != rows * row_bytes:
            raise MedclassError(f"{where} ends after {start + len(data) // max(row_bytes, 1)} of its {shape[0]} rows "
                                "(a truncated file); delete it to download again")
        yield np.frombuffer(data, dtype).reshape(rows, *shape[1:])


def unpack_images(path: Path, keys: list[str], stem: Path, convert: Callable[[np.ndarray], np.ndarray],
                  check: Callable[[dict[str, tuple[tuple[int, ...], np.dtype]]], None]) -> ImageCache:
    """The `keys` image arrays of the `.npz` at `path`, one after another in one cache at `stem`,
    each chunk passed through `convert` (channel conversion); `check` sees every shape and dtype first."""
    with zipfile.ZipFile(path) as archive:
        members = {}
        for key in keys:
            stream, shape, dtype = npz_member(archive, key, path)
            stream.close()
            members[key] = (shape, dtype)
        check(members)
        total = sum(shape[0] for shape, _ in members.values())
        first = convert(np.zeros((1, *members[keys[0]][0][1:]), np.uint8))
        need = total * first[0].nbytes
        stem.parent.mkdir(parents=True, exist_ok=True)
        free = shutil.disk_usage(stem.parent).free
        if need > free:
            raise MedclassError(f"unpacking {path} needs {need / 2**30:.1f} GiB in {stem.parent}, which has "
                                f"{free / 2**30:.1f} GiB free; free space there or set data.cache_dir to a larger disk")
        with write_cache(stem, (total, *first.shape[1:])) as writer:
            start = 0
            for key in keys:
                stream, shape, dtype = npz_member(archive, key, path)
                with stream:
                    for rows in read_chunks(stream, shape, dtype, f"{path} ({key})"):
                        writer.put(start, convert(rows.reshape(len(rows), *shape[1:])))
                        start += len(rows)
    cache = open_cache(stem)
    assert cache is not None
    return cache
