"""The MedMNIST DataModule on tiny synthetic files of every task type, and on a real one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from medmnist import INFO

from medclass.data import MedMNISTDataModule
from medclass.data.locate import DATA_ENV, find_or_download
from medclass.data.medmnist_info import NAMES, medmnist_info
from medclass.utils.errors import MedclassError

from .conftest import SHARED_DATA, write_npz

CASES = [  # name, size, channels, classes, task
    ("bloodmnist", 28, 3, 8, "multi-class"),
    ("breastmnist", 28, 1, 2, "binary-class"),
    ("chestmnist", 28, 1, 14, "multi-label"),
    ("retinamnist", 28, 3, 5, "ordinal-regression"),
    ("organamnist", 64, 1, 11, "multi-class"),
]


def test_symmetry_table_covers_exactly_the_2d_sets() -> None:
    two_d = [name for name in INFO if not name.endswith("3d")]
    assert sorted(NAMES) == sorted(two_d)
    for name in two_d:
        info = medmnist_info(name)
        assert info.n_channels == INFO[name]["n_channels"] and len(info.class_names) == len(INFO[name]["label"])


@pytest.mark.parametrize(("name", "size", "channels", "classes", "task"), CASES)
def test_loader_shapes_and_labels(tmp_path: Path, name: str, size: int, channels: int, classes: int, task: str) -> None:
    write_npz(tmp_path, name, size=size, channels=channels, classes=classes, task=task)
    dm = MedMNISTDataModule(name=name, size=size, root=str(tmp_path), batch_size=8, num_workers=0, download=False)
    assert dm.info.task == task and dm.info.num_classes == classes and dm.info.in_chans == channels
    for loader in (dm.train_dataloader(), dm.val_dataloader(), dm.test_dataloader()):
        x, y = next(iter(loader))
        assert x.shape == (8, channels, size, size) and x.dtype == torch.float32
        if task == "multi-label":
            assert y.shape == (8, classes) and y.dtype == torch.float32
        else:
            assert y.shape == (8,) and y.dtype == torch.int64 and int(y.max()) < classes


def test_grey_to_three_channels_and_resize(tmp_path: Path) -> None:
    write_npz(tmp_path, "breastmnist", channels=1)
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path), in_chans=3, image_size=32, num_workers=0,
                            batch_size=4, download=False)
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 32, 32) and torch.equal(x[:, 0], x[:, 1])


def test_normalization_uses_training_statistics(tmp_path: Path) -> None:
    """Mean and std are the training split's, computed here from its pixels, although validation and test are
    much brighter and flatter (statistics over them, or over all splits, would differ); every split is then
    normalized with them."""
    path = write_npz(tmp_path, "breastmnist")
    arrays = dict(np.load(path))
    rng = np.random.default_rng(1)
    for split in ("val", "test"):
        arrays[f"{split}_images"] = rng.integers(200, 240, arrays[f"{split}_images"].shape).astype(np.uint8)
    np.savez(path, **arrays)
    train = arrays["train_images"].astype(np.float64) / 255
    everything = np.concatenate([arrays[f"{s}_images"].ravel() for s in ("train", "val", "test")]) / 255
    assert abs(everything.mean() - train.mean()) > 0.1 and abs(everything.std() - train.std()) > 0.02
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path), batch_size=1000, num_workers=0, download=False)
    dm.setup()
    assert dm.info.mean == [round(train.mean(), 4)] and dm.info.std == [round(train.std(), 4)]
    x = torch.cat([b[0] for b in dm.split_dataloader("train")])
    assert abs(float(x.mean())) < 1e-3 and abs(float(x.std()) - 1) < 1e-3
    for split in ("train", "val", "test"):
        x = torch.cat([b[0] for b in dm.split_dataloader(split)])
        by_hand = (arrays[f"{split}_images"][:, None] / 255 - dm.info.mean[0]) / dm.info.std[0]
        np.testing.assert_allclose(x.numpy(), by_hand, atol=1e-5, rtol=0)


def test_lookup_order_root_then_env_then_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_root = tmp_path / "env"
    write_npz(env_root / "medmnist", "breastmnist")
    monkeypatch.setenv(DATA_ENV, str(env_root))
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path / "nowhere"), download=False)
    assert dm.path() == env_root / "medmnist" / "breastmnist.npz"
    write_npz(tmp_path / "explicit", "breastmnist")
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path / "explicit"), download=False)
    assert dm.path() == tmp_path / "explicit" / "breastmnist.npz"


def test_missing_file_offline_names_file_places_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    # a real download attempt against a closed local port fails the way an offline machine does
    with pytest.raises(MedclassError) as err:
        find_or_download("pathmnist_64.npz", [tmp_path / "a", tmp_path / "b"], url="http://127.0.0.1:9/p.npz", md5="0")
    message = str(err.value)
    assert "pathmnist_64.npz" in message and str(tmp_path / "a") in message and str(tmp_path / "b") in message
    assert "data.root" in message and DATA_ENV in message and "failed" in message
    assert not (tmp_path / "a" / "pathmnist_64.npz").exists()


def test_missing_file_without_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_ENV, raising=False)
    dm = MedMNISTDataModule(name="dermamnist", size=128, root=str(tmp_path), download=False)
    with pytest.raises(MedclassError, match="dermamnist_128.npz not found in: " + str(tmp_path)):
        dm.setup()


def test_unknown_name_and_size_list_the_valid_ones() -> None:
    with pytest.raises(MedclassError, match="bloodmnist"):
        MedMNISTDataModule(name="bloodmnst")
    with pytest.raises(MedclassError, match="28, 64, 128, 224"):
        MedMNISTDataModule(name="bloodmnist", size=32)


@pytest.mark.parametrize("fault", ["missing_key", "label_range", "dtype", "label_count", "flat_images", "image_size"])
def test_bad_npz_is_named(tmp_path: Path, fault: str) -> None:
    path = write_npz(tmp_path, "breastmnist")
    arrays = dict(np.load(path))
    if fault == "missing_key":
        del arrays["val_labels"]
    elif fault == "label_range":
        arrays["test_labels"][0] = 7
    elif fault == "dtype":
        arrays["train_images"] = arrays["train_images"].astype(np.float32)
    elif fault == "label_count":
        arrays["train_labels"] = arrays["train_labels"][:-1]
    elif fault == "flat_images":
        arrays["val_images"] = arrays["val_images"].reshape(len(arrays["val_images"]), -1)
    else:
        arrays["test_images"] = arrays["test_images"][:, :20, :20]
    np.savez(path, **arrays)
    dm = MedMNISTDataModule(name="breastmnist", root=str(tmp_path), download=False)
    with pytest.raises(MedclassError, match=str(path)):
        dm.setup()


@pytest.mark.skipif(not (SHARED_DATA / "medmnist" / "breastmnist.npz").is_file(), reason="no shared BreastMNIST")
def test_real_breastmnist_file() -> None:
    dm = MedMNISTDataModule(name="breastmnist", root=str(SHARED_DATA / "medmnist"), num_workers=0, download=False)
    dm.setup()
    assert {s: len(dm.datasets[s]) for s in ("train", "val", "test")} == {"train": 546, "val": 78, "test": 156}
    assert dm.info.class_names == ["malignant", "normal, benign"] and dm.info.in_chans == 1
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape[1:] == (1, 28, 28) and set(y.tolist()) <= {0, 1}
