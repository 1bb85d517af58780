"""Streaming (`data=stream`, issue 3): a folder prepared once into LitData chunks keeps its labels, patient
groups and split; train.py and eval.py run on it; under 2-process CPU DDP each rank reads its own images and
together they read the training split once; the prepared set is read as data; a URL offline, or a missing
extra, is one line."""

from __future__ import annotations

import csv
import functools
import json
import os
import re
import shlex
import socket
import sys
from pathlib import Path
from typing import Any

import lightning as L
import pytest
from hydra import compose, initialize_config_dir

from medclass.augment import batch_train_transform
from medclass.data import FolderDataModule, StreamDataModule
from medclass.data.stream import META, prepare
from medclass.utils import cli
from medclass.utils.errors import MedclassError
from medclass.utils.extras import MissingExtra

from .conftest import CONF, FAST, ROOT, SHARED_DATA, grey, run_script, save

pytest.importorskip("litdata")

DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, "logger=csv"]  # test_sweeps.py's
GROUP = r"(P\d+)_"


def patient_tree(root: Path, patients: int = 12, per_patient: int = 4) -> Path:
    """Two classes, several images per patient (`sick/P03_2.png`): a patient split has groups to keep."""
    for p in range(patients):
        label = "sick" if p % 2 else "well"
        for k in range(per_patient):
            save(root / label / f"P{p:02d}_{k}.png", grey(60 + 90 * (p % 2), size=12, seed=100 * p + k))
    return root


def folder(root: Path, tmp: Path, **kw: Any) -> FolderDataModule:
    return FolderDataModule(root=str(root), image_size=8, num_workers=0, group_by=GROUP, split_seed=0,
                            split_dir=str(tmp / "splits"), cache_dir=str(tmp / "cache"), **kw)


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(the folder, its prepared copy): 12 patients × 4 images at 8 px, split by patient (32/8/8 images)."""
    tmp = tmp_path_factory.mktemp("stream")
    root = patient_tree(tmp / "data")
    prepare(folder(root, tmp), tmp / "prepared", workers=2, chunk_bytes="1KB")  # several chunks per split
    return root, tmp / "prepared"


def split_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return sorted(csv.DictReader(f), key=lambda row: row["path"])


# -- prepare: the folder pipeline's split, labels and groups, its statistics ----------------------------------
def test_prepare_keeps_labels_groups_split_and_the_folder_statistics(prepared: tuple[Path, Path],
                                                                     tmp_path: Path) -> None:
    root, out = prepared
    meta = json.loads((out / META).read_text())
    reference = folder(root, tmp_path)
    reference.setup()
    reference.write_split(tmp_path / "folder_split.csv")
    stream = StreamDataModule(input_dir=str(out), num_workers=0)
    stream.setup()
    stream.write_split(tmp_path / "stream_split.csv")
    rows = split_rows(tmp_path / "stream_split.csv")
    assert rows == split_rows(tmp_path / "folder_split.csv")  # path, label, split and group, row for row
    assert {r["group"] for r in rows if r["split"] == "test"}.isdisjoint(r["group"] for r in rows
                                                                         if r["split"] == "train")
    assert stream.info.split_key == reference.info.split_key == meta["info"]["split_key"]
    assert (stream.info.mean, stream.info.std) == (reference.info.mean, reference.info.std)  # exact pixel sums
    assert stream.info.class_counts == reference.info.class_counts and stream.info.train_size == 32
    assert stream.groups_across_splits == reference.groups_across_splits == {
        "val_and_train": 0, "test_and_train": 0, "test_and_val": 0}
    assert meta["columns"] == ["index", "path", "label", "split", "group"]
    for split in ("val", "test", "train"):  # the labels in the chunks are the table's, in the table's order
        streamed = [int(y) for _, labels in stream.split_dataloader(split) for y in labels]
        assert streamed == stream._labels[split].tolist() == reference._labels[split][
            [reference.split_items(split).index(item) for item in stream.split_items(split)]].tolist()
    for split in ("train", "val", "test"):
        chunks = json.loads((out / split / "index.json").read_text())["chunks"]
        assert sum(c["chunk_size"] for c in chunks) == meta["splits"][split] and len(chunks) > 1
    assert not (out / "skipped.csv").exists()


def test_unreadable_images_are_left_out_and_listed(tmp_path: Path) -> None:
    root = patient_tree(tmp_path / "data")
    (root / "well" / "P00_1.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    prepare(folder(root, tmp_path), tmp_path / "out")
    meta = json.loads((tmp_path / "out" / META).read_text())
    assert "well/P00_1.png" not in {row[1] for row in meta["rows"]} and meta["skipped"] == 1
    assert "P00_1.png,unreadable image (" in (tmp_path / "out" / "skipped.csv").read_text()
    with pytest.raises(MedclassError, match="is not an empty folder; choose a new folder"):
        prepare(folder(root, tmp_path), tmp_path / "out")


# -- sharding: each rank its own images ---------------------------------------------------------------------
def rank_indices(out: Path, world: int, rank: int, split: str = "train", **kw: Any) -> list[int]:
    from medclass.data.litstream import ImageStream

    dataset = ImageStream(str(out / split), lambda item: int(item["index"]), shuffle=split == "train", seed=1,
                          cache_dir=None, max_cache_size=None)
    dataset.set_distributed(world, rank, 1)
    dataset.set_drop_last(split == "train" and world > 1)
    dataset.set_batch_size(kw.get("batch_size", 4))
    dataset.set_num_workers(1)
    return list(dataset)


@pytest.mark.parametrize("posix_fast", ["", "1"])  # "1": LitData's parallel-file-system mode (whole chunks)
def test_ranks_get_disjoint_equal_shards(prepared: tuple[Path, Path], posix_fast: str,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    _, out = prepared
    monkeypatch.setenv("LITDATA_POSIX_FAST", posix_fast) if posix_fast else monkeypatch.delenv("LITDATA_POSIX_FAST",
                                                                                               raising=False)
    train = {row[0] for row in json.loads((out / META).read_text())["rows"] if row[3] == "train"}
    for world in (2, 3, 5):  # 32 training images: 16 each; 10 each and 2 sit out; 6 each and 2 sit out
        shards = [rank_indices(out, world, rank) for rank in range(world)]
        seen = [i for shard in shards for i in shard]
        assert len(seen) == len(set(seen)) and set(seen) <= train  # no image twice
        assert len({len(shard) for shard in shards}) == 1  # equal steps on every rank
        assert len(train) - len(seen) == len(train) % world  # fewer than `world` sit out, not world × batch
    val = [i for rank in (0, 1) for i in rank_indices(out, 2, rank, "val")]
    assert sorted(val) == sorted(row[0] for row in json.loads((out / META).read_text())["rows"] if row[3] == "val")


class Recorder:
    """Wraps the training set's item transform: appends each item's table index to seen/rank<r>-<pid>.txt."""

    def __init__(self, inner: Any, folder: Path, rank: int) -> None:
        self.inner, self.folder, self.rank = inner, folder, rank
        self.transforms = getattr(inner, "transforms", [])

    def __call__(self, item: dict[str, Any]) -> Any:
        self.folder.mkdir(exist_ok=True)
        with (self.folder / f"rank{self.rank}-{os.getpid()}.txt").open("a") as f:
            f.write(f"{int(item['index'])}\n")
        return self.inner(item)

    def set_random_seed(self, seed: int) -> None:
        self.inner.set_random_seed(seed)


class SeenProbe(L.Callback):
    """`+callbacks.probe={_target_:tests.test_stream.SeenProbe}`: which images each rank trained on (loader
    workers included), written to <run>/seen/."""

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage == "fit":
            dataset = trainer.datamodule.datasets["train"]
            dataset.transform = Recorder(dataset.transform, Path(trainer.default_root_dir) / "seen",
                                         trainer.global_rank)


def seen_by_rank(run: Path) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for path in (run / "seen").glob("rank*-*.txt"):
        rank = int(re.match(r"rank(\d+)-", path.name)[1])
        seen.setdefault(rank, []).extend(int(line) for line in path.read_text().split())
    return seen


def test_prepare_then_two_process_ddp_then_eval_on_the_command_line(tmp_path: Path) -> None:
    """What a user types, end to end: medclass-prepare (prepare.py), train.py under 2-process CPU DDP with two
    loader workers per rank and batches of 6, eval.py on the checkpoint.

    One epoch reads every training image once over the ranks (the loader's length counts each worker's last,
    partial batch: 4 batches, where 16 images / 6 would say 3), and the run's split is the folder's own."""
    root = patient_tree(tmp_path / "data")
    out, logs = tmp_path / "prepared", tmp_path / "outputs"
    proc = run_script("prepare.py", "data=folder", f"data.root={root}", "data.image_size=8",
                      f'data.group_by="{GROUP}"', f"out={out}", "chunk_bytes=1KB", f"paths.log_dir={logs}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "train on it with: medclass-train data=stream" in proc.stderr + proc.stdout
    proc = run_script("train.py", *DDP, "data=stream", f"data.input_dir={out}", f"paths.log_dir={logs}",
                      "data.num_workers=2", "data.batch_size=6", "trainer.limit_train_batches=1.0",
                      "+callbacks.probe={_target_:tests.test_stream.SeenProbe}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((logs / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 joined rank 0's folder instead of making its own
    run = runs[0]
    assert (run / "train.log").read_text().count("metrics: ") == 1  # rank 1 logs warnings only
    assert not list(run.glob("*.tmp"))
    seen = seen_by_rank(run)
    train = [row[0] for row in json.loads((out / META).read_text())["rows"] if row[3] == "train"]
    assert sorted(seen) == [0, 1] and len(seen[0]) == len(seen[1]) == len(train) // 2
    assert set(seen[0]).isdisjoint(seen[1])
    assert sorted(seen[0] + seen[1]) == sorted(train)  # the training split, each image exactly once
    assert len(list((run / "seen").glob("rank0-*.txt"))) == 2  # read by two worker processes per rank
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["run"]["steps"] == 4  # 16 images per rank, 8 per worker: batches of 6 + 2, twice
    reference = folder(root, tmp_path)
    reference.setup()
    reference.write_split(tmp_path / "folder_split.csv")
    assert split_rows(run / "split.csv") == split_rows(tmp_path / "folder_split.csv")
    assert metrics["data"]["split_key"] == reference.info.split_key
    assert metrics["data"]["groups_across_splits"]["test_and_train"] == 0
    ckpt = metrics["run"]["best_checkpoint"]
    proc = run_script("eval.py", f"ckpt_path={ckpt}", "bootstrap=0", f"paths.log_dir={logs}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = next((logs / "eval" / "runs").iterdir())
    predictions = split_rows(report / "predictions.csv")
    assert [(r["path"], r["label"]) for r in predictions] == [
        (r["path"], r["label"]) for r in split_rows(run / "split.csv") if r["split"] == "test"]
    assert {r["group"] for r in predictions} and all(r["group"] for r in predictions)


# -- read as data ----------------------------------------------------------------------------------------------
def copy_prepared(out: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(out, tmp_path / "copy"))


@pytest.mark.parametrize(("change", "message"), [
    (lambda m: m["info"].update(class_counts=[1, 2, 3]), r"info.class_counts has 3 values for 2 classes"),
    (lambda m: m["info"].update(task="${oc.env:HOME}"), r"info.task=.*an interpolation"),
    (lambda m: m.update(extra=1), r"extra is not a key medclass writes here"),
    (lambda m: m["rows"][0].__setitem__(2, "nosuch"), r"rows\[0\]\[2\]='nosuch': expected a class name"),
    (lambda m: m["rows"][1].__setitem__(0, m["rows"][0][0]), r"rows\[1\]\[0\]=.*no other row has"),
    (lambda m: m["splits"].update(val=99), r"splits.val=99 but rows hold"),
    (lambda m: m["info"].update(train_size=35), r"do not match the train rows"),
    (lambda m: m["rows"].pop(), r"splits.test=.* but rows hold"),
])
def test_a_damaged_description_is_one_line_naming_the_file(prepared: tuple[Path, Path], tmp_path: Path,
                                                            change: Any, message: str) -> None:
    copy = copy_prepared(prepared[1], tmp_path)
    meta = json.loads((copy / META).read_text())
    change(meta)
    (copy / META).write_text(json.dumps(meta))
    with pytest.raises(MedclassError, match=message) as raised:
        StreamDataModule(input_dir=str(copy)).setup()
    text = str(raised.value)
    assert "\n" not in text and text.startswith(str(copy / META)) and "medclass-prepare" in text


def test_a_chunk_format_that_unpickles_is_refused(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    copy = copy_prepared(prepared[1], tmp_path)
    index = json.loads((copy / "val" / "index.json").read_text())
    index["config"]["data_format"][0] = "pickle"
    (copy / "val" / "index.json").write_text(json.dumps(index))
    with pytest.raises(MedclassError, match=r"val/index.json: config.data_format\[0\]='pickle': expected a "
                                            r"pickle-free LitData format"):
        StreamDataModule(input_dir=str(copy)).setup()
    (copy / META).unlink()
    with pytest.raises(MedclassError, match=r"holds no medclass.json: it is not a data set prepared by"):
        StreamDataModule(input_dir=str(copy)).setup()


def test_a_changed_chunk_count_is_refused(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    copy = copy_prepared(prepared[1], tmp_path)
    index = json.loads((copy / "test" / "index.json").read_text())
    index["chunks"].pop()
    (copy / "test" / "index.json").write_text(json.dumps(index))
    with pytest.raises(MedclassError, match=r"test/index.json holds \d+ images but .* lists \d+; the folder was "
                                            "changed after preparing"):
        StreamDataModule(input_dir=str(copy)).setup()


# -- object storage: a local folder standing in for the bucket; a real URL offline --------------------------
def test_a_folder_read_as_a_bucket_streams_through_the_cache(prepared: tuple[Path, Path], tmp_path: Path) -> None:
    """`local:/folder` takes LitData's object-storage path: index and chunks are fetched into cache_dir."""
    _, out = prepared
    before = sorted(p.relative_to(out) for p in out.rglob("*"))
    dm = StreamDataModule(input_dir=f"local:{out}", cache_dir=str(tmp_path / "cache"), num_workers=0,
                          eval_batch_size=4)
    dm.setup()
    images, labels = next(iter(dm.split_dataloader("val")))
    assert images.shape == (4, 1, 8, 8) and labels.dtype.is_floating_point is False
    assert sum(len(y) for _, y in dm.split_dataloader("test")) == len(dm.split_items("test"))
    assert list((tmp_path / "cache").rglob("chunk-*.bin"))  # read from the cache, as from a bucket
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == before  # the "bucket" is left as it was


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing leaves this machine: S3 requests (boto3, and obstore's own Rust client, which Python's socket
    module does not see) go to a closed local port; Python sockets refuse any other host; dummy credentials."""
    real = socket.socket.connect

    def connect(self: socket.socket, address: Any) -> Any:
        host = address[0] if isinstance(address, tuple) else str(address)
        if not (str(host).startswith("127.") or host in ("::1", "localhost") or self.family == socket.AF_UNIX):
            raise OSError(f"no network in this test ({host})")
        return real(self, address)

    def getaddrinfo(host: Any, *args: Any, **kw: Any) -> Any:
        raise socket.gaierror(f"no network in this test ({host})")

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    for key, value in {"AWS_ACCESS_KEY_ID": "x", "AWS_SECRET_ACCESS_KEY": "x", "AWS_EC2_METADATA_DISABLED": "true",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "1",
                       "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}.items():
        monkeypatch.setenv(key, value)


def test_a_bucket_out_of_reach_is_one_line(no_network: None) -> None:
    with pytest.raises(MedclassError) as raised:
        StreamDataModule(input_dir="s3://medclass-nowhere/chest").setup()
    text = str(raised.value)
    assert "\n" not in text and text.startswith("cannot read s3://medclass-nowhere/chest/medclass.json (")
    assert text.endswith("check the URL, the storage credentials and the network, or give a local folder")


# -- the optional extra ----------------------------------------------------------------------------------------
def test_without_litdata_data_stream_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "litdata", None)
    fix = r'needs litdata, an optional part of medclass: pip install "medclass\[stream\]"'
    with pytest.raises(MissingExtra, match=fix):
        StreamDataModule(input_dir=str(tmp_path)).setup()
    with pytest.raises(MissingExtra, match=fix):
        prepare(folder(patient_tree(tmp_path / "data", patients=4), tmp_path), tmp_path / "out")
    with pytest.raises(SystemExit):
        cli.check_command_line(["data=stream", "data.input_dir=x"])
    err = capsys.readouterr().err.strip()
    assert err == 'error: data=stream needs litdata, an optional part of medclass: pip install "medclass[stream]"'


def test_options_a_stream_cannot_honour_are_refused(prepared: tuple[Path, Path]) -> None:
    with pytest.raises(MedclassError, match="use module.class_weights=balanced with data=stream"):
        StreamDataModule(input_dir=str(prepared[1]), sampler="balanced")
    dm = StreamDataModule(input_dir=str(prepared[1]), augment=functools.partial(batch_train_transform))
    with pytest.raises(MedclassError, match="with data=stream use augment=default"):
        dm.setup()


# -- the documented commands -----------------------------------------------------------------------------------
def documented_prepare_commands() -> list[str]:
    text = (ROOT / "docs" / "data.md").read_text()
    return [line.strip() for line in re.findall(r"^.*medclass-prepare .*$", text, re.M) if "`" not in line]


def test_the_documented_prepare_commands_compose(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands = documented_prepare_commands()
    assert len(commands) >= 2
    monkeypatch.setenv("MEDCLASS_DATA", str(tmp_path))
    for text in commands:
        argv = [t for t in shlex.split(os.path.expandvars(text), comments=True)]
        argv = argv[argv.index("medclass-prepare") + 1:]
        argv = cli.expand_home(argv)
        cli.check_command_line(argv)
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            cfg = compose(config_name="prepare", overrides=argv)
        assert cfg.out and cfg.data._target_.endswith(("FolderDataModule", "ManifestDataModule")), text


# -- the real thing: Kermany chest X-rays, patient split, 2-process DDP -----------------------------------------
CHEST = SHARED_DATA / "chest_xray_kermany"
CHEST_GROUP = r"((?:NORMAL2-)?IM-\d+|person\d+)"


@pytest.mark.slow
@pytest.mark.skipif(not CHEST.is_dir(), reason="needs $MEDCLASS_DATA/chest_xray_kermany")
def test_chest_xray_prepared_and_trained_under_ddp_with_its_patient_split(tmp_path: Path) -> None:
    out, logs = tmp_path / "chest", tmp_path / "outputs"
    proc = run_script("prepare.py", "data=folder", f"data.root={CHEST}", "data.name=chest_xray_kermany",
                      "data.image_size=32", f'data.group_by="{CHEST_GROUP}"', f"out={out}", "workers=2",
                      f"paths.log_dir={logs}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run_script("train.py", *DDP, "data=stream", f"data.input_dir={out}", "data.batch_size=64",
                      "trainer.limit_train_batches=1.0", f"paths.log_dir={logs}",
                      "+callbacks.probe={_target_:tests.test_stream.SeenProbe}", timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((logs / "train" / "runs").iterdir())
    rows = split_rows(run / "split.csv")
    groups = {split: {r["group"] for r in rows if r["split"] == split} for split in ("train", "val", "test")}
    assert groups["train"].isdisjoint(groups["test"]) and groups["train"].isdisjoint(groups["val"])
    reference = FolderDataModule(root=str(CHEST), name="chest_xray_kermany", image_size=32, group_by=CHEST_GROUP,
                                 split_dir=str(tmp_path / "splits"), cache_dir=None)
    expected = sorted((r[0], r[1], r[2]) for r in reference.rows())
    assert sorted((r["path"], r["label"], r["split"]) for r in rows) == expected
    seen = seen_by_rank(run)
    train = [row[0] for row in json.loads((out / META).read_text())["rows"] if row[3] == "train"]
    assert set(seen[0]).isdisjoint(seen[1]) and len(seen[0]) == len(seen[1])
    assert len(seen[0] + seen[1]) == len(set(seen[0] + seen[1])) >= len(train) - 1
