"""A prepared stream folder from a stranger is data (issue 35, item 5): only regular files in the folder are read,
never through a link; each chunk's name is a plain LitData name, its size on disk is the one its index gives,
which follows from its item count; nothing waits on a chunk that is missing or short; index.json holds exactly
the configuration medclass-prepare writes; each chunk's bytes are checked against the split table before LitData
parses them, also after LitData downloaded them into its cache; and every refusal is one line.

`build_attack` rebuilds each attack from a real prepared folder; the lead's table (and the measurements with
/usr/bin/time through train.py) use it too."""

from __future__ import annotations

import json
import os
import shutil
import struct
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from medclass.data import StreamDataModule
from medclass.data.chunks import META, ItemLayout
from medclass.data.stream import META_PARSE_BUDGET, parse_cost, prepare
from medclass.utils.errors import MedclassError

from .conftest import FAST, grey, run_script, save
from .test_stream import folder, patient_tree

pytest.importorskip("litdata")

SECRET = "root:"  # what /etc/shadow (or the canary file below) starts with: never in any output


# -- the attacks --------------------------------------------------------------------------------------------------
def _edit_index(copy: Path, split: str, change: Callable[[dict[str, Any]], Any]) -> None:
    path = copy / split / "index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def _first_chunk(copy: Path, split: str = "train") -> Path:
    return copy / split / json.loads((copy / split / "index.json").read_text())["chunks"][0]["filename"]


def _rewrite_chunk(path: Path, change: Callable[[bytearray], Any]) -> None:
    data = bytearray(path.read_bytes())
    change(data)
    path.write_bytes(bytes(data))


def _item(copy: Path, k: int = 0) -> int:
    """Where the k-th item of the first training chunk starts."""
    data = _first_chunk(copy).read_bytes()
    return struct.unpack_from("<I", data, 4 + 4 * k)[0]


def _config(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda index: index["config"].__setitem__(key, value)


def _chunk0(key: str, value: Any) -> Callable[[dict[str, Any]], Any]:
    return lambda index: index["chunks"][0].__setitem__(key, value)


def _huge_meta(copy: Path, size: int = 64 * 2**20) -> None:
    """A medclass.json of `size` bytes (under the byte cap) whose parse would cost about 20 bytes per byte: a
    table of empty lists (1.4 GB and half a minute to parse 64 MiB; 5.5 GB at the cap)."""
    meta = json.loads((copy / META).read_text())
    head = json.dumps({k: v for k, v in meta.items() if k != "rows"})[:-1]
    with (copy / META).open("w") as f:
        f.write(head + ', "rows": [')
        f.write("[]," * ((size - len(head) - 100) // 3))
        f.write("[]]}")


# name -> (change to the copied folder, what the one error line says); "bucket-<name>" reads it as local:<folder>
ATTACKS: dict[str, tuple[Callable[[Path], Any], str]] = {
    # the index overstates a chunk (LitData waited 2 s, or 120 s per chunk under local:, for bytes never coming)
    "overstated": (lambda c: _edit_index(c, "train", lambda i: [ch.update(chunk_bytes=ch["chunk_bytes"] + 1000)
                                                                for ch in i["chunks"]]),
                   r"chunks\[0\]\.chunk_bytes=\d+: expected \d+, the size of \d+ items"),
    # the chunk is shorter than its (consistent) index says: a copy that did not finish
    "truncated": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: d.__delitem__(slice(-10, None))),
                  r"chunk-0-0.bin is \d+ bytes but .*train/index.json gives \d+"),
    "missing": (lambda c: _first_chunk(c).unlink(), r"chunk-0-0.bin cannot be read \(No such file"),
    "fifo": (lambda c: (_first_chunk(c).unlink(), os.mkfifo(_first_chunk(c))), r"chunk-0-0.bin is not a regular file"),
    "devzero": (lambda c: (_first_chunk(c).unlink(), _first_chunk(c).symlink_to("/dev/zero")),
                r"chunk-0-0.bin is a symbolic link; links are not followed"),
    "shadow_link": (lambda c: (_first_chunk(c).unlink(), _first_chunk(c).symlink_to("/etc/shadow")),
                    r"chunk-0-0.bin is a symbolic link; links are not followed"),
    "split_link": (lambda c: (shutil.move(c / "val", c / "elsewhere"), (c / "val").symlink_to(c / "elsewhere")),
                   r"/val is not a folder \(a link, a file or missing\)"),
    "meta_link": (lambda c: (shutil.move(c / META, c / "real.json"), (c / META).symlink_to(c / "real.json")),
                  r"medclass.json is a symbolic link"),
    "meta_huge": (_huge_meta, r"medclass.json would take more than 2 GiB of memory to read"),
    # chunk names: `..`, a path, an absolute path, a name twice
    "dotdot": (lambda c: _edit_index(c, "train", _chunk0("filename", "..")),
               r"chunks\[0\]\.filename='\.\.': expected a chunk file name as LitData writes it"),
    "traversal": (lambda c: _edit_index(c, "train", _chunk0("filename", "../../../../../../../../etc/shadow")),
                  r"chunks\[0\]\.filename='\.\./\.\..*expected a chunk file name"),
    "absolute": (lambda c: _edit_index(c, "train", _chunk0("filename", "/etc/shadow")),
                 r"chunks\[0\]\.filename='/etc/shadow': expected a chunk file name"),
    "subfolder": (lambda c: _edit_index(c, "train", _chunk0("filename", "chunk-0-0.bin/..")),
                  r"chunks\[0\]\.filename=.*expected a chunk file name"),
    "twice": (lambda c: _edit_index(c, "train", lambda i: i["chunks"][1].update(filename=i["chunks"][0]["filename"])),
              r"chunks\[1\]\.filename='chunk-0-0.bin' names a chunk a second time"),
    # counts: a chunk of 10^9 items, 200,000 chunks
    "huge_count": (lambda c: _edit_index(c, "train", _chunk0("chunk_size", 10**9)),
                   r"chunks\[0\]\.chunk_size=1000000000: expected a whole number from 1 to 32"),
    "many_chunks": (lambda c: _edit_index(c, "train", lambda i: i.update(chunks=i["chunks"] * 20_000)),
                    r"train/index.json: chunks=.*expected a list of 1 to 32 items"),
    # formats and the configuration LitData acts on
    "format": (lambda c: _edit_index(c, "train", lambda i: i["config"]["data_format"].__setitem__(0, "numpy:999999")),
               r"config\.data_format\[0\]='numpy:999999': expected a pickle-free LitData format"),
    "format_dtype": (lambda c: _edit_index(c, "train", lambda i: i["config"]["data_format"].__setitem__(
        0, "no_header_numpy:999999")), r"config\.data_format\[0\]='no_header_numpy:999999'"),
    "pickle": (lambda c: _edit_index(c, "val", lambda i: i["config"]["data_format"].__setitem__(1, "pickle")),
               r"val/index.json: config\.data_format\[1\]='pickle': expected a pickle-free LitData format"),
    "compression": (lambda c: _edit_index(c, "train", _config("compression", "zstd")),
                    r"config\.compression='zstd': expected one of None"),
    "framed": (lambda c: _edit_index(c, "train", _config("compression_level", "batch")),
               r"config\.compression_level='batch': expected one of None"),
    "encryption": (lambda c: _edit_index(c, "train", _config("encryption", {"level": "chunk"})),
                   r"config\.encryption=.*expected one of None"),
    "item_loader": (lambda c: _edit_index(c, "train", _config("item_loader", "TokensLoader")),
                    r"config\.item_loader='TokensLoader': expected one of PyTreeLoader"),
    "mds": (lambda c: _edit_index(c, "train", _config("format", "mds")),
            r"config\.format is not a key medclass writes here"),
    "spec": (lambda c: _edit_index(c, "train", _config("data_spec", json.dumps(
        [1, {"type": "collections.namedtuple", "context": "[]", "children_spec": []}]))),
             r"config\.data_spec=.*expected a dict of image, label and index"),
    "column_sizes": (lambda c: _edit_index(c, "train", _chunk0("column_sizes", [1])),
                     r"chunks\[0\]\.column_sizes is not a key medclass writes here"),
}

# attacks on a chunk's bytes (size unchanged): refused when LitData first opens the chunk
CONTENT: dict[str, tuple[Callable[[Path], Any], str]] = {
    "item_count": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: d.__setitem__(slice(0, 4), b"root")),
                   r"does not start with its item count"),
    "offsets": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: struct.pack_into("<I", d, 8, 10**6)),
                r"has an offset table that does not fit"),
    "shape": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: struct.pack_into("<I", d, _item(c, 3) + 16, 999999)),
              r"holds an item whose leaf sizes, image type or image shape differ"),
    "dtype": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: struct.pack_into("<I", d, _item(c) + 12, 17)),
              r"holds an item whose leaf sizes, image type or image shape differ"),
    "label": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: struct.pack_into("<q", d, _item(c, 1) + 96, 10**9)),
              r"holds labels that differ from the split table's"),
    "row": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: struct.pack_into("<q", d, _item(c, 2) + 104, 7777)),
            r"holds images in another order than the split table's"),
    "framed_magic": (lambda c: _rewrite_chunk(_first_chunk(c), lambda d: d.__setitem__(slice(0, 8), b"LDFZ01\0\0")),
                     r"does not start with its item count"),
}


def build_attack(name: str, prepared: Path, out: Path) -> str:
    """A copy of the `prepared` folder in `out` with attack `name` (of ATTACKS or CONTENT) applied; returns the
    data.input_dir to give: the folder, or `local:<folder>` for `bucket-<name>` (LitData's object-store path)."""
    copy = Path(shutil.copytree(prepared, out))
    bucket = name.startswith("bucket-")
    change, _ = {**ATTACKS, **CONTENT}[name.removeprefix("bucket-")]
    change(copy)
    return f"local:{copy}" if bucket else str(copy)


def read_all(input_dir: str, tmp_path: Path, **kw: Any) -> int:
    """Every image of every split through the real loaders (in this process); the number read."""
    dm = StreamDataModule(input_dir=input_dir, num_workers=0, eval_batch_size=4,
                          cache_dir=str(tmp_path / "cache"), **kw)
    dm.setup()
    return sum(len(y) for split in ("train", "val", "test") for _, y in dm.split_dataloader(split))


def refused(input_dir: str, tmp_path: Path, message: str, setup_only: bool = False) -> str:
    """The one line reading `input_dir` ends in (with `setup_only`, before any loader is built), at once."""
    start = time.monotonic()
    with pytest.raises(MedclassError, match=message) as raised:
        if setup_only:
            StreamDataModule(input_dir=input_dir, cache_dir=str(tmp_path / "cache")).setup()
        else:
            read_all(input_dir, tmp_path)
    text = str(raised.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert SECRET not in text and "1953460082" not in text, text  # /etc/shadow's "root", also as a number
    assert time.monotonic() - start < 20, "refused, but only after waiting"
    return text


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """12 patients × 4 images at 8 px, split by patient (32/8/8), chunks of 8 items (1 KB)."""
    tmp = tmp_path_factory.mktemp("untrusted_stream")
    prepare(folder(patient_tree(tmp / "data"), tmp), tmp / "prepared", workers=1, chunk_bytes="1KB")
    return tmp / "prepared"


# -- what is refused, before LitData opens anything -----------------------------------------------------------------
@pytest.mark.parametrize("name", list(ATTACKS))
def test_a_hostile_folder_is_one_line_at_once(name: str, prepared: Path, tmp_path: Path) -> None:
    line = refused(build_attack(name, prepared, tmp_path / "set"), tmp_path, ATTACKS[name][1], setup_only=True)
    assert str(tmp_path / "set") in line, line  # the line names the file of the set at fault


@pytest.mark.parametrize("name", ["overstated", "truncated", "fifo", "devzero", "shadow_link", "missing", "dotdot"])
def test_a_hostile_folder_read_as_a_bucket_is_checked_before_any_download(name: str, prepared: Path,
                                                                          tmp_path: Path) -> None:
    """`local:` takes LitData's object-store path (a download into the cache per chunk, which waited 120 s on a
    short chunk and copied /dev/zero until the disk was full); the folder is on this machine, so it is checked
    as a folder first, and nothing reaches the cache."""
    refused(build_attack(f"bucket-{name}", prepared, tmp_path / "set"), tmp_path, ATTACKS[name][1], setup_only=True)
    assert not list(tmp_path.glob("cache/**/chunk-*"))


# -- what is refused when LitData first opens a chunk ----------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONTENT))
def test_a_chunk_whose_bytes_differ_from_the_table_is_one_line(name: str, prepared: Path, tmp_path: Path) -> None:
    line = refused(build_attack(name, prepared, tmp_path / "set"), tmp_path, CONTENT[name][1])
    assert str(tmp_path / "set") in line, line  # the line names the chunk at fault


def _cached(prepared: Path, tmp_path: Path) -> tuple[str, Path]:
    """A `local:` set read once (its index and chunks now in LitData's cache); the cache folder of `train`."""
    url = f"local:{prepared}"
    assert read_all(url, tmp_path) == 48
    dm = StreamDataModule(input_dir=url, cache_dir=str(tmp_path / "cache"))
    dm.setup()
    from medclass.data.litstream import index_file

    return url, index_file(dm.datasets["train"]).parent


def test_a_chunk_in_the_cache_is_checked_as_downloaded(prepared: Path, tmp_path: Path) -> None:
    """What LitData fetched (or finds) in its cache is checked as a chunk in a folder is: a link to /etc/shadow,
    a file of another size, other bytes: each one line, when LitData would read it."""
    url, cache = _cached(prepared, tmp_path)
    chunk = _first_chunk(prepared)
    cached = cache / chunk.name
    if cached.exists():
        cached.unlink()
    cached.symlink_to("/etc/shadow")
    refused(url, tmp_path, r"chunk-0-0.bin is a symbolic link; links are not followed")
    cached.unlink()
    cached.write_bytes(chunk.read_bytes()[:-1])
    refused(url, tmp_path, r"chunk-0-0.bin is \d+ bytes but local:.*train/index.json gives \d+")
    cached.write_bytes(b"root" + chunk.read_bytes()[4:])
    refused(url, tmp_path, r"chunk-0-0.bin does not start with its item count")
    cached.unlink()
    assert read_all(url, tmp_path) == 48  # fetched again from the folder, and read


def test_a_stale_index_in_the_cache_is_refused(prepared: Path, tmp_path: Path) -> None:
    """LitData reads its cached copy of index.json when there is one: it must be the index that was checked."""
    url, cache = _cached(prepared, tmp_path)
    index = json.loads((cache / "index.json").read_text())
    index["config"]["compression"] = "zstd"
    (cache / "index.json").write_text(json.dumps(index))
    line = refused(url, tmp_path, r"index.json, LitData's copy of local:.*train/index.json, differs from the index "
                                  "checked")
    assert str(cache) in line, line  # names the cached copy, where the user can delete it


# -- legitimate data is read -----------------------------------------------------------------------------------------
def test_a_prepared_set_reads_whole_with_every_chunk_checked(prepared: Path, tmp_path: Path) -> None:
    assert read_all(str(prepared), tmp_path) == 48
    assert read_all(f"local:{prepared}", tmp_path) == 48
    dm = StreamDataModule(input_dir=str(prepared))
    dm.setup()
    assert dm.layout == ItemLayout(8, 1, 2, False)
    for split, chunks in dm.chunks.items():  # each chunk's size follows from its count, as on disk
        assert [(prepared / split / c.name).stat().st_size for c in chunks] == [dm.layout.chunk_bytes(c.items)
                                                                               for c in chunks]


def test_a_multi_label_set_reads(tmp_path: Path) -> None:
    """LitData writes a multi-label row as one `json` leaf: refused before (a format outside numpy and int)."""
    root = tmp_path / "data"
    names = [f"c{k}" for k in range(16)]
    lines = ["path,label,split"]
    for i in range(40):
        save(root / f"img{i}.png", grey(40 + 4 * i, size=12, seed=i))
        label = ";".join(sorted({names[i % 16], names[(3 * i) % 16]})) if i % 5 else ""
        lines.append(f"img{i}.png,{label},{('train', 'train', 'val', 'test')[i % 4]}")
    (root / "labels.csv").write_text("\n".join(lines) + "\n")
    from medclass.data.manifest import ManifestDataModule

    data = ManifestDataModule(manifest=str(root / "labels.csv"), image_size=8, num_workers=0, multi_label=True,
                              split_dir=str(tmp_path / "splits"), cache_dir=None)
    prepare(data, tmp_path / "prepared", workers=1, chunk_bytes="2KB")
    assert json.loads((tmp_path / "prepared" / "train" / "index.json").read_text())["config"]["data_format"] == [
        "numpy", "json", "int"]
    dm = StreamDataModule(input_dir=str(tmp_path / "prepared"), num_workers=0, eval_batch_size=4)
    dm.setup()
    labels = np.concatenate([y.numpy() for _, y in dm.split_dataloader("val")])
    assert labels.shape == (10, 16) and np.array_equal(labels, dm._labels["val"])


def test_the_description_budget_takes_millions_of_rows_prepare_writes(prepared: Path) -> None:
    """The parse estimate of a real medclass.json, scaled: three million rows of this set's shape fit."""
    text = (prepared / META).read_text()
    rows = len(json.loads(text)["rows"])
    table = text[text.index('"rows"'):]
    per_row = parse_cost(table) / rows
    assert per_row * 3_000_000 < META_PARSE_BUDGET, per_row
    assert parse_cost(table) < 14 * len(table)


# -- through the command line ----------------------------------------------------------------------------------------
def test_train_on_a_hostile_bucket_is_one_line_at_once(prepared: Path, tmp_path: Path) -> None:
    """The 120-second wait of issue 35, through train.py: a `local:` set whose index overstates its chunks."""
    url = build_attack("bucket-overstated", prepared, tmp_path / "set")
    proc = run_script("train.py", "data=stream", f"data.input_dir={url}", *FAST, f"paths.log_dir={tmp_path / 'logs'}",
                      timeout=240)  # LitData waited 120 s for each of the 4 training chunks: beyond it
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "chunk_bytes" in lines[0] and "Traceback" not in proc.stderr


def test_a_bad_chunk_in_a_loader_worker_is_one_line(prepared: Path, tmp_path: Path) -> None:
    """A chunk refused inside a loader worker process reaches the command line as the worker's one line, not
    torch's 'Caught ... Original Traceback' text."""
    url = build_attack("row", prepared, tmp_path / "set")
    proc = run_script("train.py", "data=stream", f"data.input_dir={url}", *FAST, "data.num_workers=2",
                      f"paths.log_dir={tmp_path / 'logs'}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    error = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and error[0].endswith("(docs/data.md \"Streaming (data=stream)\")"), proc.stderr[-2000:]
    assert "holds images in another order than the split table's" in error[0]
    assert "Traceback" not in proc.stderr and "Caught" not in proc.stderr
