"""The memory-mapped image cache: memory that does not grow with the data set, exact statistics, safe reads.

Memory is measured with tracemalloc, which sees every NumPy allocation but not the pages of a memory
map (page cache the kernel can take back): a setup that copied the data set, even once, would show
it here. benchmarks/memory.py measures the whole process at 2.5k to 50k images.
"""

from __future__ import annotations

import pickle
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from medclass.data import FolderDataModule, MedMNISTDataModule
from medclass.data import cache as cache_module
from medclass.data.base import ArrayDataset
from medclass.data.cache import image_digests, mean_std, open_cache, write_cache
from medclass.utils.errors import MedclassError

from .conftest import save, write_npz


def peak_bytes(work) -> int:
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def first_batches(dm, splits=("train", "val", "test")) -> None:
    dm.setup()
    for split in splits:
        next(iter(dm.split_dataloader(split)))
    next(iter(dm.train_dataloader()))


def test_medmnist_setup_never_holds_the_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Unpacking reads the official zip chunk by chunk; statistics and copy checks read no pixels."""
    write_npz(tmp_path / "m", "bloodmnist", size=64, channels=3, classes=8, n=(1500, 200, 200))
    data_bytes = 1900 * 64 * 64 * 3  # 23 MB
    monkeypatch.setattr(cache_module, "CHUNK_BYTES", 2**20)
    for augment in (None, "batch"):
        kw = {}
        if augment:
            from medclass.augment import batch_train_transform  # the fast path gathers batches from the map
            kw["augment"] = lambda **k: batch_train_transform(k["image_size"], k["mean"], k["std"], k["symmetry"])
        dm = MedMNISTDataModule(name="bloodmnist", size=64, root=str(tmp_path / "m"), download=False, num_workers=0,
                                batch_size=64, cache_dir=str(tmp_path / f"cache{augment}"), **kw)
        peak = peak_bytes(lambda dm=dm: first_batches(dm))
        assert peak < data_bytes / 4, f"setup allocated {peak / 2**20:.1f} MiB for {data_bytes / 2**20:.1f} MiB"
        assert isinstance(dm.datasets["train"].images, np.memmap)
        assert dm.datasets["train"].images is dm.datasets["test"].images  # one map, splits are index arrays


def test_folder_decode_writes_image_by_image(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for i in range(240):
        save(tmp_path / "data" / f"c{i % 2}" / f"{i}.png", rng.integers(0, 255, (48, 48, 3), np.uint8))
    data_bytes = 240 * 96 * 96 * 3  # decoded at image_size=96: 6.6 MB

    def setup() -> FolderDataModule:
        dm = FolderDataModule(root=str(tmp_path / "data"), image_size=96, in_chans=3, num_workers=0, batch_size=8,
                              split_dir=str(tmp_path / "splits"), cache_dir=str(tmp_path / "cache"))
        first_batches(dm)
        return dm

    first = peak_bytes(setup)  # decodes into the map
    later = peak_bytes(setup)  # opens the map
    assert first < data_bytes / 3 and later < data_bytes / 3, (first, later, data_bytes)


def test_statistics_and_copies_from_the_cache_equal_the_whole_array(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (30, 7, 5, 3), np.uint8)
    images[:, :, :, 2] = 200  # a constant channel: std floored at 1e-3
    images[29] = images[3]
    with write_cache(tmp_path / "c", images.shape) as writer:
        writer.put(0, images[:10])
        writer.put(10, images[10:])
        writer.drop(7)
    cache = open_cache(tmp_path / "c")
    assert cache is not None and isinstance(cache.images, np.memmap) and np.array_equal(cache.images, images)
    assert cache.keep.tolist() == [i != 7 for i in range(30)]
    index = np.array([0, 3, 4, 9, 20, 28])
    flat = images[index].reshape(-1, 3).astype(np.float64) / 255
    assert cache.mean_std(index) == (flat.mean(0).round(4).tolist(), np.maximum(flat.std(0), 1e-3).round(4).tolist())
    assert cache.digests_of(np.array([3]))[0] == cache.digests_of(np.array([29]))[0] != cache.digests_of(index[:1])[0]
    assert np.array_equal(cache.digests, image_digests(images))
    white = np.array([[[255 * 10**12, 255**2 * 10**12]]], np.int64)  # 10^12 white pixels: no overflow
    assert mean_std(white, 10**12) == ([1.0], [0.001])


def test_a_cache_never_finished_is_never_read(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="crash"), write_cache(tmp_path / "c", (4, 2, 2, 1)) as writer:
        writer.put(0, np.ones((2, 2, 2, 1), np.uint8))
        raise RuntimeError("crash")
    assert not list(tmp_path.iterdir())  # no partial file, no temporary left behind
    assert open_cache(tmp_path / "c") is None


def test_a_cache_that_does_not_agree_is_one_clear_error(tmp_path: Path) -> None:
    with write_cache(tmp_path / "c", (4, 2, 2, 1)) as writer:
        writer.put(0, np.ones((4, 2, 2, 1), np.uint8))
    np.savez(tmp_path / "c.meta.npz", keep=np.ones(5, bool), digests=np.zeros((5, 16), np.uint8),
             sums=np.zeros((5, 1, 2), np.int64))
    with pytest.raises(MedclassError, match=r"c\.npy and c\.meta\.npz do not agree .* delete both"):
        open_cache(tmp_path / "c")
    np.save(tmp_path / "c.npy", np.array([{"x": 1}], dtype=object), allow_pickle=True)  # never unpickled
    with pytest.raises(MedclassError, match=r"c\.npy is not a readable image cache"):
        open_cache(tmp_path / "c")


def test_a_worker_receives_the_file_name_not_the_pixels(tmp_path: Path) -> None:
    """DataLoader workers started by spawn or forkserver unpickle the dataset: a map travels as its path."""
    with write_cache(tmp_path / "c", (500, 32, 32, 3)) as writer:
        writer.put(0, np.random.default_rng(0).integers(0, 255, (500, 32, 32, 3), np.uint8))
    cache = open_cache(tmp_path / "c")
    dataset = ArrayDataset(cache.images, np.zeros(100, np.int64), as_is, np.arange(100, 200))
    sent = pickle.dumps(dataset)
    assert len(sent) < 10_000  # the images are 1.5 MB
    received = pickle.loads(sent)
    assert isinstance(received.images, np.memmap) and np.array_equal(received[5][0], cache.images[105])


def as_is(image: np.ndarray) -> dict[str, np.ndarray]:
    return {"image": image}


def rewrite_member(path: Path, key: str, payload: bytes) -> None:
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    members[f"{key}.npy"] = payload
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)


@pytest.mark.parametrize("fault", ["truncated", "object", "fortran", "channels", "huge"])
def test_a_bad_image_member_is_named_and_nothing_is_cached(tmp_path: Path, fault: str) -> None:
    path = write_npz(tmp_path / "m", "breastmnist")
    with zipfile.ZipFile(path) as z:
        good = z.read("train_images.npy")
    payload = {"truncated": lambda: good[:-100],
               "object": lambda: _npy(np.array([None] * 48, dtype=object), allow_pickle=True),
               "fortran": lambda: _npy(np.asfortranarray(np.zeros((48, 28, 28), np.uint8))),
               "channels": lambda: _npy(np.zeros((48, 28, 28, 2), np.uint8)),
               "huge": lambda: _huge_header((10**12, 28, 28))}[fault]()
    rewrite_member(path, "train_images", payload)
    dm = MedMNISTDataModule(name="breastmnist", root=str(path.parent), download=False, num_workers=0,
                            cache_dir=str(tmp_path / "cache"))
    expected = {"truncated": r"train_images declares a \(48, 28, 28\) uint8 array .* cannot hold",
                "object": "an object array", "fortran": "Fortran-ordered", "channels": "2 channels",
                "huge": r"train_images declares a \(1000000000000, 28, 28\) uint8 array"}[fault]
    with pytest.raises(MedclassError, match=expected):
        dm.setup()
    assert not list((tmp_path / "cache").glob("*")) if (tmp_path / "cache").exists() else True


def _huge_header(shape: tuple[int, ...]) -> bytes:
    """A .npy header declaring `shape` followed by a few bytes: a stranger's zip-bomb-sized claim."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "|u1", "fortran_order": False, "shape": shape})
    return buffer.getvalue() + bytes(100)


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()
