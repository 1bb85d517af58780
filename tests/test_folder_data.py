"""Class-per-folder data: every format, every bad input, lasting stratified splits, class maps, DICOM."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclass.data import FolderDataModule
from medclass.data.decode import read_image
from medclass.utils.errors import MedclassError

from .conftest import clean_tree, grey, save


def messy_tree(root: Path) -> Path:
    """Every format and every bad input the README's table lists."""
    clean_tree(root, per_class=8)
    a, b = root / "a", root / "b"
    save(a / "upper.PNG", grey(40, seed=50))
    save(a / "photo.jpg", np.stack([grey(40, seed=51)] * 3, -1))
    save(a / "scan.bmp", grey(40, seed=52))
    Image.fromarray(grey(40, seed=53).astype(np.uint16) * 200).save(a / "deep.tif")  # I;16
    rgba = np.dstack([np.stack([grey(120, seed=54)] * 3, -1), np.full((20, 20), 255, np.uint8)])
    save(b / "alpha.png", rgba)
    Image.fromarray(grey(120, seed=55)).convert("P").save(b / "palette.png")
    (a / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    jpg = b / "truncated.jpg"
    save(jpg, np.stack([grey(120, seed=56)] * 3, -1), quality=95)
    jpg.write_bytes(jpg.read_bytes()[:200])
    (a / "empty.png").write_bytes(b"")
    (root / "README.txt").write_text("about this data")
    (a / "notes.txt").write_text("x")
    (a / ".DS_Store").write_bytes(b"\0")
    (b / "Thumbs.db").write_bytes(b"\0")
    save(root / ".ipynb_checkpoints" / "img.png", grey(40, seed=57))
    save(a / ".ipynb_checkpoints" / "img.png", grey(40, seed=58))
    save(b / "copy.png", grey(120, seed=100))  # the same bytes as b/img0.png
    return root


def module(root: Path, tmp: Path, **kw) -> FolderDataModule:
    kw = {"image_size": 16, "num_workers": 0, "batch_size": 4, "split_dir": str(tmp / "splits"),
          "cache_dir": str(tmp / "cache"), **kw}
    return FolderDataModule(root=str(root), **kw)


def skipped(tmp: Path, name: str) -> dict[str, str]:
    with (tmp / "splits" / f"{name}_skipped.csv").open() as f:
        return {Path(r["path"]).name: r["reason"] for r in csv.DictReader(f)}


def test_messy_folder_loads_and_reports_every_skip(tmp_path: Path) -> None:
    root = messy_tree(tmp_path / "data")
    dm = module(root, tmp_path, split_fractions=(0.6, 0.2, 0.2))
    dm.setup()
    total = sum(len(dm.datasets[s]) for s in ("train", "val", "test"))
    assert total == 8 * 2 + 6  # clean images + PNG/jpg/bmp/tif/RGBA/P
    reasons = skipped(tmp_path, "data")
    assert reasons["corrupt.png"].startswith("unreadable image")
    assert reasons["truncated.jpg"].startswith("unreadable image")
    assert reasons["empty.png"] == "empty file"
    assert reasons["README.txt"] == "not inside a class folder" and reasons["notes.txt"].startswith("not an image")
    assert reasons[".DS_Store"] == "system file" and reasons["Thumbs.db"] == "system file"
    assert reasons[".ipynb_checkpoints"] == "hidden folder" and reasons["img.png"] == "hidden file or folder"
    duplicates = [name for name, reason in reasons.items() if reason.startswith("duplicate of")]
    assert duplicates in (["copy.png"], ["img0.png"])  # b/copy.png and b/img0.png hold the same bytes
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (4, 1, 16, 16) and dm.info.class_names == ["a", "b"]


@pytest.mark.parametrize("fault", ["empty_class", "single_class", "two_classes", "missing_root"])
def test_fatal_inputs_name_the_path(tmp_path: Path, fault: str) -> None:
    root = clean_tree(tmp_path / "data")
    expected = {"empty_class": "c holds no readable images", "single_class": "at least 2",
                "two_classes": "in two classes", "missing_root": "is not a folder"}[fault]
    if fault == "empty_class":
        (root / "c").mkdir()
    elif fault == "single_class":
        root = clean_tree(tmp_path / "one", classes=("only",))
    elif fault == "two_classes":
        (root / "b" / "stolen.png").write_bytes((root / "a" / "img0.png").read_bytes())
    else:
        root = tmp_path / "nowhere"
    with pytest.raises(MedclassError, match=expected):
        module(root, tmp_path).setup()


def test_split_is_stratified_persisted_and_reused(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "data", classes=("a", "b", "c"), per_class=20)
    dm = module(root, tmp_path)
    dm.setup()
    with dm.split_file.open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 60
    for split, share in (("train", 16), ("val", 2), ("test", 2)):
        for c in "abc":
            assert sum(r["split"] == split and r["label"] == c for r in rows) == share
    assert all(not Path(r["path"]).is_absolute() and (root / r["path"]).is_file() for r in rows)
    first = dm.split_file.read_text()
    again = module(root, tmp_path, seed=7)  # the training seed does not move the split
    again.setup()
    assert again.split_file == dm.split_file and again.split_file.read_text() == first
    assert again.info.split_key == dm.info.split_key == dm.split_key
    other_seed = module(root, tmp_path, split_seed=1)
    other_seed.setup()
    assert other_seed.split_key != dm.split_key and other_seed.split_file.read_text() != first
    fractions = module(root, tmp_path, split_fractions=(0.7, 0.15, 0.15))  # never the stored split reused
    fractions.setup()
    assert fractions.split_key not in (dm.split_key, other_seed.split_key)
    assert sum(r["split"] == "test" for r in csv.DictReader(fractions.split_file.open())) == 9
    (root / "a" / "new.png").write_bytes((root / "a" / "img0.png").read_bytes()[:-1] + b"\0")
    grown = module(root, tmp_path)
    grown.setup()  # other files: another key, another split file; the first one stays as it was
    assert grown.split_key != dm.split_key and dm.split_file.read_text() == first
    grown.split_file.write_text(grown.split_file.read_text().replace(",test\n", ",train\n", 1))
    with pytest.raises(MedclassError, match="does not hold the split its key"):
        module(root, tmp_path).setup()


def test_a_moved_copy_of_the_data_keeps_its_split(tmp_path: Path) -> None:
    import shutil

    root = clean_tree(tmp_path / "site_a" / "data", classes=("a", "b", "c"), per_class=12)
    here = module(root, tmp_path / "here")
    here.setup()
    moved = shutil.copytree(root, tmp_path / "elsewhere" / "data")
    there = module(moved, tmp_path / "there")  # another machine: no stored split, the same one comes out
    there.setup()
    assert there.split_key == here.split_key
    assert there.split_file.read_text() == here.split_file.read_text()
    there.write_split(tmp_path / "split.csv")
    rows = list(csv.DictReader((tmp_path / "split.csv").open()))
    assert len(rows) == 36 and {r["path"] for r in rows} == {f"{c}/img{i}.png" for c in "abc" for i in range(12)}
    by_path = {r["path"]: r["split"] for r in csv.DictReader(here.split_file.open())}
    assert all(by_path[r["path"]] == r["split"] for r in rows)


def test_test_root_is_the_test_split(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "Training", per_class=10)
    test = tmp_path / "Testing"
    for c, name in enumerate("ab"):
        for i in range(3):
            save(test / name / f"t{i}.png", grey(40 + 80 * c, seed=500 + 10 * c + i))
    dm = module(root, tmp_path, test_root=str(test), split_fractions=(0.8, 0.2, 0.0))
    dm.setup()
    assert len(dm.datasets["test"]) == 6 and len(dm.datasets["train"]) + len(dm.datasets["val"]) == 20


def test_training_copies_of_test_images_are_dropped_or_stop_the_run(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "Training", per_class=10)
    test = clean_tree(tmp_path / "Testing", per_class=3)  # same seeds: t/a/img0..2 == Training/a/img0..2
    dm = module(root, tmp_path, test_root=str(test), split_fractions=(0.8, 0.2, 0.0))
    dm.setup()
    assert len(dm.datasets["test"]) == 6 and len(dm.datasets["train"]) + len(dm.datasets["val"]) == 20 - 6
    reasons = {p: r for p, r in dm.skipped}
    leaked = root / "a" / "img1.png"
    assert reasons[leaked] == f"test-split copy of {test / 'a' / 'img1.png'}"
    rows = dm.split_file.read_text()
    assert "a/img1.png,a,test" in rows and "a/img1.png,a,train" not in rows and "a/img3.png,a," in rows
    (test / "b" / "relabelled.png").write_bytes((root / "a" / "img9.png").read_bytes())
    with pytest.raises(MedclassError, match=r"img9.png \(class a\) and .*relabelled.png \(class b\)"):
        module(root, tmp_path / "again", test_root=str(test), split_fractions=(0.8, 0.2, 0.0)).setup()


def test_class_map_merges_folders(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "data", classes=("CTAbd", "CTHead", "CXR"), per_class=10)
    dm = module(root, tmp_path, class_map={"CTAbd": "CT", "CTHead": "CT", "CXR": "XRAY"})
    dm.setup()
    assert dm.info.class_names == ["CT", "XRAY"] and dm.info.task == "binary-class"
    labels = np.concatenate([dm.datasets[s].labels for s in ("train", "val", "test")])
    assert (labels == 0).sum() == 20 and (labels == 1).sum() == 10


def test_decoded_images_are_cached(tmp_path: Path) -> None:
    root = clean_tree(tmp_path / "data")
    module(root, tmp_path).setup()
    caches = list((tmp_path / "cache").glob("*.npy"))
    assert len(caches) == 1 and len(list((tmp_path / "cache").glob("*.meta.npz"))) == 1
    before = caches[0].stat().st_mtime_ns
    module(root, tmp_path).setup()
    assert caches[0].stat().st_mtime_ns == before
    module(root, tmp_path, image_size=8).setup()
    assert len(list((tmp_path / "cache").glob("*.npy"))) == 2


def test_dicom_rescale_and_monochrome1(tmp_path: Path) -> None:
    """Pixel values by hand: the stored values through the rescale slope and intercept (Hounsfield units),
    stretched from their lowest to their highest value onto 0..255; with a window in the file, the DICOM linear
    window (PS3.3 C.11.2.1.2) on Hounsfield units first; MONOCHROME1 inverted."""
    from pydicom import examples

    ds = examples.ct
    hu = ds.pixel_array.astype(np.float64) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert float(ds.RescaleIntercept) == -1024 and "WindowCenter" not in ds
    path = tmp_path / "ct.dcm"
    ds.save_as(path)
    plain = read_image(path)
    assert plain.dtype == np.uint8 and plain.shape == (*ds.pixel_array.shape, 1)
    by_hand = np.round((hu - hu.min()) / (hu.max() - hu.min()) * 255).astype(np.uint8)
    np.testing.assert_array_equal(plain[..., 0], by_hand)
    assert len(np.unique(plain)) > 100  # a real spread of grey levels, not a few bins

    centre, width = 40.0, 400.0  # a soft-tissue window in Hounsfield units: air goes black, bone white
    ds.WindowCenter, ds.WindowWidth = centre, width
    ds.save_as(tmp_path / "ct_window.dcm")
    windowed = read_image(tmp_path / "ct_window.dcm")[..., 0].astype(int)
    low, high = centre - 0.5 - (width - 1) / 2, centre - 0.5 + (width - 1) / 2
    assert (hu <= low).any() and (hu > high).any()  # both ends clip, so the stretch maps the window to 0..255
    expected = np.round(np.clip((hu - (centre - 0.5)) / (width - 1) + 0.5, 0, 1) * 255)
    difference = np.abs(windowed - expected)
    assert difference.max() <= 1 and (difference == 0).mean() > 0.99  # a rounding step at most, rarely
    assert (windowed[hu <= low] == 0).all() and (windowed[hu > high] == 255).all()
    assert np.abs(windowed - plain[..., 0].astype(int)).max() > 100  # the window really changed the image

    ds.PhotometricInterpretation = "MONOCHROME1"
    del ds.WindowCenter, ds.WindowWidth
    inverted_path = tmp_path / "ct_inv.DCM"
    ds.save_as(inverted_path)
    assert np.array_equal(read_image(inverted_path), 255 - plain)


def test_train_and_eval_on_a_folder_tree(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Training and evaluation end to end on folder data (in-process: the command line is tested on MedMNIST);
    class names travel with the checkpoint."""
    import torch

    from medclass.tasks.evaluate import evaluate
    from medclass.tasks.train import train

    from .conftest import FAST, compose_train

    root = messy_tree(tmp_path / "data")
    run = tmp_path / "run"  # compose_train puts the split and cache folders under it too
    trained = train(compose_train(["data=folder", f"data.root={root}", "data.image_size=16", *FAST], run))
    assert "skipped 10 files" in caplog.text
    assert len(list((run / "splits").glob("data-*.csv"))) == 1 and list((run / "cache").glob("*.npy"))
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    assert torch.load(ckpt, weights_only=True)["hyper_parameters"]["data_info"]["class_names"] == ["a", "b"]
    evaluated = evaluate(compose_train([f"ckpt_path={ckpt}", "report=false"], tmp_path / "eval", config_name="eval"))
    assert evaluated["test"]["test/acc"] == pytest.approx(trained["test"]["test/acc"], abs=1e-6)
