"""Streaming data sets (`data=stream`): a folder or manifest prepared once into LitData chunks, then read
from a local folder or object storage, shard by shard, under DDP across nodes.

`prepare` (the `medclass-prepare` command) runs the folder or manifest pipeline's own scanning and
splitting (patient groups, split key, `split.csv` rows), decodes every image once at the configured size
and channel count into one LitData folder per split, reads them back to check that every image arrived
and to sum pixels for the training split's mean and std (exact integer sums, as the in-memory cache
does), and writes `medclass.json`: what a model needs to know (`DataInfo`), the split table and the
leakage counts. `StreamDataModule` reads that file as data (a schema, one error line) and streams the
chunks; nothing is decoded at training time. Why LitData, and what DDP does: docs/data.md "Streaming".

A prepared folder may come from someone else, so everything in it is data, checked before LitData acts on it:
medclass.json and each index.json are regular files (never read through a link) of bounded size; an index holds
exactly the configuration prepare writes, and chunk names that are plain LitData file names; a chunk's size
follows from its item count (every item of a set has the same byte layout, `ItemLayout`), and on this machine
each chunk is a regular file of that size before anything is opened, so nothing waits on a missing or short
chunk, blocks on a pipe or copies a device. When LitData first opens a chunk (from object storage: once it has
downloaded it), `litstream.ChunkGuard` checks its bytes against the split table (`chunks.check_chunk`). Every fault is
one line naming the file.
"""

from __future__ import annotations

import atexit
import functools
import json
import logging
import os
import shutil
import stat
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from medclass.augment import BatchAugment
from medclass.data.base import (
    SPLITS,
    ClassificationDataModule,
    DataInfo,
    encode_labels,
    init_worker,
    label_text,
    report_duplicates,
    report_skipped,
)
from medclass.data.cache import image_digests, image_sums, mean_std
from medclass.data.chunks import ADVICE, META, Chunk, ItemLayout, check_chunk_files, check_index
from medclass.data.decode import DICOM_SUFFIXES, decode_resized
from medclass.data.folder import FolderDataModule
from medclass.data.leakage import split_copies
from medclass.data.registry import SYMMETRIES
from medclass.untrusted import files
from medclass.untrusted.tables import CLASS_NAME
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError
from medclass.utils.extras import require
from medclass.utils.io import write_text

log = logging.getLogger("medclass")

FORMAT, VERSION = "medclass-stream", 1
URL_PREFIXES = ("s3://", "gs://", "azure://", "r2://", "local:")  # LitData's object stores; local: a folder as one
TASKS = ("binary-class", "multi-class", "multi-label")  # what a folder or manifest can be
MAX_META_BYTES = 256 * 2**20  # the split table: about 3 million rows
# what parsing medclass.json may cost in memory, estimated from its bytes before parsing (`_parse_budget`): a
# table prepare wrote costs 7 to 10 bytes per byte of file, a file of empty lists or short strings twice that
META_PARSE_BUDGET = 2 * 2**30
MAX_INDEX_BYTES = 16 * 2**20  # a split's index.json: about 180,000 chunks
MAX_ROWS = 10**8
MAX_LABEL_CELLS = 2**26  # multi-label rows × classes held as float32 (256 MiB): 1M images × 64 classes
BASE_COLUMNS = ("index", "path", "label", "split")


def litdata_module(what: str) -> Any:
    """`medclass.data.litstream` (which imports LitData), or one line naming the extra to install."""
    require("litdata", "stream", what)
    from medclass.data import litstream

    return litstream


def is_url(path: str) -> bool:
    return path.startswith(URL_PREFIXES)


# -- preparing ----------------------------------------------------------------------------------------------
def prepare(data: FolderDataModule, out: str | Path, workers: int = 2, chunk_bytes: str = "64MB",
            source: dict[str, Any] | None = None) -> dict[str, Any]:
    """Write `data` (a folder or manifest DataModule, not set up) as a streaming data set in the new folder `out`.

    Returns the summary also logged. The split is the folder pipeline's own (`rows()`: split key, groups,
    given splits); images that do not decode are left out and listed in `<out>/skipped.csv`, as the folder
    pipeline lists them."""
    if not isinstance(data, FolderDataModule):
        raise MedclassError(f"medclass-prepare takes folder or manifest data (data=folder, data=manifest or their "
                            f"presets), not {type(data).__name__}")
    lit = litdata_module("medclass-prepare")
    out = Path(str(out)).expanduser()
    if is_url(str(out)):
        raise MedclassError(f"out={out} must be a local folder; copy it to the bucket afterwards (docs/data.md "
                            "\"Streaming (data=stream)\")")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise MedclassError(f"out={out} already exists and is not an empty folder; choose a new folder (prepare "
                            "never overwrites one)")
    rows = data.rows()  # scan, group, split and key: the folder pipeline's own, split file included
    info = data.describe()
    size, chans = data.image_size or 64, data.in_chans or 1
    files = [str(data.file_of(row)) for row in rows]
    if any(Path(f).suffix.lower() in DICOM_SUFFIXES for f in files):
        require("pydicom", "dicom", "preparing DICOM files")  # here, not as a failure per file in the workers
    targets = data.targets([row[1] for row in rows])
    multi = info.task == "multi-label"
    labels = [[int(v) for v in t] if multi else int(t[0]) for t in targets]
    jobs = {split: [(i, files[i], labels[i]) for i, row in enumerate(rows) if row[2] == split] for split in SPLITS}
    for split, todo in jobs.items():
        if not todo:
            raise MedclassError(f"the {split} split of {data.root} is empty; add images or change "
                                "data.split_fractions")
    order: dict[str, list[int]] = {}
    digests: dict[str, list[bytes]] = {}
    sums = []
    for split in SPLITS:
        log.info("writing %s: %d images at %d px, %d channel(s)", split, len(jobs[split]), size, chans)
        lit.write_split(jobs[split], out / split, size, chans, workers, chunk_bytes)
        order[split], digests[split] = [], []
        if (out / split / "index.json").is_file():
            for images, index in lit.read_back(out / split):
                order[split] += index.tolist()
                digests[split] += [row.tobytes() for row in image_digests(images)]
                if split == "train":
                    sums.append(image_sums(images))
    skipped = [(str(p), why) for p, why in getattr(data, "skipped", [])]
    for split in SPLITS:
        written = set(order[split])
        if len(written) != len(order[split]) or not written <= {job[0] for job in jobs[split]}:
            raise MedclassError(f"{out / split} holds images prepare did not write there; delete {out} and prepare "
                                "again")
        for index, path, _ in jobs[split]:
            if index not in written:
                skipped.append((path, f"unreadable image ({_why_unreadable(path, size, chans)})"))
        if not written:
            raise MedclassError(f"no image of the {split} split of {data.root} could be read (list: "
                                f"{out / 'skipped.csv'}); check the files")
    report_skipped(skipped, out / "skipped.csv")
    image_mean, image_std = mean_std(np.concatenate(sums), size * size)
    train = order["train"]
    if multi:
        class_counts = np.asarray([labels[i] for i in train], np.int64).sum(0).tolist()
    else:
        class_counts = np.bincount([labels[i] for i in train], minlength=len(info.class_names)).tolist()
    extra = list(dict.fromkeys(k for row in rows for k in data.item_columns(row[0])))
    columns = [*BASE_COLUMNS, *extra]
    table = [[i, rows[i][0], label_text(labels[i], info.class_names, multi), split,
              *(data.item_columns(rows[i][0]).get(k, "") for k in extra)]
             for split in SPLITS for i in order[split]]
    duplicates = split_copies(digests)
    report_duplicates(duplicates)
    meta = {
        "format": FORMAT, "version": VERSION, "name": data.name,
        "info": {"task": info.task, "class_names": list(info.class_names), "in_chans": chans, "image_size": size,
                 "mean": image_mean, "std": image_std, "symmetry": info.symmetry, "split_key": data.split_key,
                 "class_counts": class_counts, "train_size": len(train)},
        "splits": {split: len(order[split]) for split in SPLITS},
        "columns": columns, "rows": table,
        "duplicates": duplicates, "groups_across_splits": dict(data.groups_across_splits),
        "skipped": len(skipped), "source": source or {},
    }
    check_meta(meta, "the prepared data set")  # never write what StreamDataModule would refuse
    text = _meta_text(meta)
    if len(text.encode()) > MAX_META_BYTES or parse_cost(text) > META_PARSE_BUDGET:
        raise MedclassError(f"the split table of {len(table)} images is larger than a prepared data set's "
                            f"{META} may be ({MAX_META_BYTES >> 20} MiB, {META_PARSE_BUDGET >> 30} GiB to read); "
                            "prepare it in parts (one manifest per part)")
    write_text(out / META, text)  # last: a folder without it is no finished data set
    summary = {"out": str(out), "split_key": data.split_key, **meta["splits"], "skipped": len(skipped)}
    log.info("prepared %s: %d train / %d val / %d test images, split key %s; train on it with: medclass-train "
             "data=stream data.input_dir=%s", out, *meta["splits"].values(), data.split_key, out)
    return summary


def _meta_text(meta: dict[str, Any]) -> str:
    """`medclass.json` as indented JSON with one split-table row per line (indenting every cell would make the
    file of a large set several times longer, and no easier to read)."""
    head = json.dumps({k: v for k, v in meta.items() if k != "rows"}, indent=2)
    rows = ",\n".join(f"    {json.dumps(row)}" for row in meta["rows"])
    return f'{head[:-2]},\n  "rows": [\n{rows}\n  ]\n}}\n'


def _why_unreadable(path: str, size: int, chans: int) -> str:
    try:
        decode_resized(Path(path), size, chans)
    except Exception as err:
        return f"{type(err).__name__}: {err}"
    return "not written by its worker"


# -- the metadata file, read as data --------------------------------------------------------------------------
def _info(value: Any, where: str) -> dict[str, Any]:
    info = s.record({
        "task": s.choice(*TASKS),
        "class_names": s.list_of(CLASS_NAME, 2, 100_000),
        "in_chans": s.integer(1, 4),
        "image_size": s.integer(1, 2048),
        "mean": s.list_of(s.number(0, 1), 1, 4),
        "std": s.list_of(s.number(0, 1, low_open=True), 1, 4),
        "symmetry": s.choice(*SYMMETRIES),
        "split_key": s.text(200),
        "class_counts": s.list_of(s.integer(0, 10**12), 2, 100_000),
        "train_size": s.integer(1, 10**12),
    }, required=("task", "class_names", "in_chans", "image_size", "mean", "std", "symmetry", "split_key",
                 "class_counts", "train_size"))(value, where)
    names = info["class_names"]
    if len(set(names)) != len(names):
        raise s.Invalid(f"{where}.class_names repeats a name")
    if info["task"] == "binary-class" and len(names) != 2:
        raise s.Invalid(f"{where}: a binary-class task has two class names, not {len(names)}")
    if len(info["mean"]) != info["in_chans"] or len(info["std"]) != info["in_chans"]:
        raise s.Invalid(f"{where}: mean and std need one value per channel (in_chans={info['in_chans']})")
    if len(info["class_counts"]) != len(names):
        raise s.Invalid(f"{where}.class_counts has {len(info['class_counts'])} values for {len(names)} classes")
    return info


COUNTS = s.mapping(s.text(40, r"[a-z_]+", "a name such as test_in_train"), s.integer(0, 10**12), 3)
META_FIELDS: dict[str, s.Check] = {
    "format": s.choice(FORMAT), "version": s.choice(VERSION), "name": s.name(128), "info": _info,
    "splits": s.record({split: s.integer(1, MAX_ROWS) for split in SPLITS}, SPLITS),
    "columns": s.list_of(s.text(100, r"[A-Za-z0-9_. -]+", "a plain column name"), len(BASE_COLUMNS), 64),
    "rows": lambda value, where: value,  # checked row by row in `_rows`, with the class names at hand
    "duplicates": COUNTS, "groups_across_splits": COUNTS, "skipped": s.integer(0, 10**12),
    "source": s.plain(3, 100_000),
}


def _rows(meta: dict[str, Any]) -> None:
    """Every row of the split table: its index once, a known split and label, the counts the file states."""
    columns, rows, info = meta["columns"], meta["rows"], meta["info"]
    if list(columns[:len(BASE_COLUMNS)]) != list(BASE_COLUMNS) or len(set(columns)) != len(columns):
        raise s.Invalid(f"columns={s.show(columns)}: expected {', '.join(BASE_COLUMNS)} first, each name once")
    if not isinstance(rows, list) or len(rows) > MAX_ROWS:
        raise s.fail("rows", rows, f"a list of at most {MAX_ROWS} rows")
    names = info["class_names"]
    index_of = {name: i for i, name in enumerate(names)}
    multi = info["task"] == "multi-label"
    if multi and len(rows) * len(names) > MAX_LABEL_CELLS:  # held as one float32 per image and class
        raise s.Invalid(f"rows: {len(rows)} multi-label images × {len(names)} classes are more than the "
                        f"{MAX_LABEL_CELLS:,} labels medclass holds in memory")
    path_text, cell_text = s.text(4096), s.text(1024)
    seen: set[int] = set()
    per_split: Counter[str] = Counter()
    counts = [0] * len(names)
    for n, row in enumerate(rows):
        where = f"rows[{n}]"
        if not isinstance(row, list) or len(row) != len(columns):
            raise s.fail(where, row, f"a list of {len(columns)} cells ({', '.join(columns)})")
        index, path, label, split, *extra = row
        if isinstance(index, bool) or not isinstance(index, int) or index < 0 or index in seen:
            raise s.fail(f"{where}[0]", index, "an image index (a whole number ≥ 0) that no other row has")
        seen.add(index)
        path_text(path, f"{where}[1]")
        if split not in SPLITS:
            raise s.fail(f"{where}[3]", split, f"one of {', '.join(SPLITS)}")
        parts = (label.split(";") if label else []) if multi and isinstance(label, str) else [label]
        if not all(isinstance(p, str) and p in index_of for p in parts) or (not multi and len(parts) != 1):
            raise s.fail(f"{where}[2]", label, "a class name of info.class_names" + (" (or several, joined with "
                                                                                        "';')" if multi else ""))
        for i, value in enumerate(extra):
            cell_text(value, f"{where}[{len(BASE_COLUMNS) + i}]")
        per_split[split] += 1
        if split == "train":
            for p in parts:
                counts[index_of[p]] += 1
    for split in SPLITS:
        if per_split[split] != meta["splits"][split]:
            raise s.Invalid(f"splits.{split}={meta['splits'][split]} but rows hold {per_split[split]} {split} images")
    if info["train_size"] != per_split["train"] or info["class_counts"] != counts:
        raise s.Invalid(f"info.train_size and info.class_counts ({info['train_size']}, {info['class_counts']}) do not "
                        f"match the train rows ({per_split['train']}, {counts})")


def _meta(value: Any, where: str) -> dict[str, Any]:
    meta = s.record(META_FIELDS, required=tuple(META_FIELDS))(value, where)
    _rows(meta)
    return meta


def check_meta(payload: Any, source: str) -> dict[str, Any]:
    """A `medclass.json` read as data: known keys, plain values of the right type, the split table consistent
    with the counts and classes it states; any fault is one `Invalid` line starting with `source`."""
    return s.read_as_data(_meta, payload, source, ADVICE)


# -- medclass.json: bounded before it is parsed -----------------------------------------------------------------
def parse_cost(text: str) -> int:
    """What parsing `text` as JSON may cost in memory, estimated before parsing: Python holds each list or object
    in about 120 bytes, each string in about 60, each value in a list 8 more (numbers up to 32), beside the text.
    A table prepare wrote is estimated at 10 to 13 bytes per byte of file, which it about costs; a file of empty
    lists, short strings or numbers at more than it costs."""
    return (120 * (text.count("[") + text.count("{")) + 30 * text.count('"') + 32 * text.count(",")
            + 3 * len(text))


def read_description(path: Path, shown: str) -> dict[str, Any]:
    """`medclass.json`, a regular file (not a link) of at most MAX_META_BYTES whose parse fits META_PARSE_BUDGET,
    read as data (`check_meta`)."""
    text = files.read_text(path, "the description of a prepared data set", MAX_META_BYTES, follow_links=False)
    if parse_cost(text) > META_PARSE_BUDGET:
        raise s.Invalid(f"{shown} would take more than {META_PARSE_BUDGET >> 30} GiB of memory to read (it holds "
                        f"more lists, strings and values than a table of its size prepare writes); {ADVICE}")
    try:
        payload = json.loads(text)
    except RecursionError:
        raise s.Invalid(f"{shown} nests its values too deep to be a file medclass wrote; {ADVICE}") from None
    except ValueError as err:
        line = getattr(err, "lineno", None)
        raise s.Invalid(f"{shown} is not readable JSON ({getattr(err, 'msg', 'not JSON')}"
                        f"{f' at line {line}' if line else ''}); {ADVICE}") from None
    del text
    return check_meta(payload, shown)


# -- training -----------------------------------------------------------------------------------------------
class StreamDataModule(ClassificationDataModule):
    """A data set written by `prepare`, streamed with LitData from `input_dir`: a local folder, or its copy in
    object storage (`s3://bucket/set`, `gs://`, `azure://`, `r2://`; `local:/folder` reads a folder as if it
    were a bucket, chunks cached in `cache_dir`). Images arrive decoded at the prepared size and channels."""

    def __init__(self, input_dir: str, name: str | None = None, cache_dir: str | None = None,
                 max_cache_size: str | None = None, symmetry: str | None = None, image_size: int | None = None,
                 in_chans: int | None = None, **kwargs: Any) -> None:
        super().__init__(image_size=image_size, in_chans=in_chans, **kwargs)
        if self.sampler == "balanced":
            raise MedclassError("data.sampler=balanced draws images at random, which a stream cannot; use "
                                "module.class_weights=balanced with data=stream")
        input_dir = str(input_dir)
        self.input_dir = input_dir.rstrip("/") if is_url(input_dir) else str(Path(input_dir).expanduser().absolute())
        self.name, self.symmetry = name, symmetry
        self.cache_dir = str(Path(cache_dir).expanduser()) if cache_dir else None
        self.max_cache_size = max_cache_size
        self.meta: dict[str, Any] = {}
        self.layout: ItemLayout | None = None
        self.chunks: dict[str, list[Chunk]] = {}  # each split's, as its checked index.json gives them
        self._index: dict[str, Any] = {}  # each split's index.json as checked, to compare LitData's copy with
        self._items: dict[str, list[str]] = {}
        self._columns: dict[str, dict[str, str]] = {}

    # -- the prepared folder ------------------------------------------------------------------------------
    def _folder(self) -> Path | None:
        """The prepared folder when it is on this machine (a path, or `local:` a folder read as if it were a
        bucket); None for object storage."""
        if not is_url(self.input_dir):
            return Path(self.input_dir)
        if self.input_dir.startswith("local:"):
            return Path(self.input_dir[len("local:"):]).expanduser().absolute()
        return None

    def _fetch(self, name: str) -> Path:
        """A file of the prepared data set in object storage, fetched into a new temporary folder."""
        lit = litdata_module("data=stream")
        folder = Path(tempfile.mkdtemp(prefix="medclass-stream-"))
        atexit.register(shutil.rmtree, folder, True)
        try:
            return lit.fetch(self.input_dir, name, folder)
        except Exception as err:  # no network, no credentials, no such bucket or key, no client library
            detail = " ".join(str(err).split()).split(" Debug source")[0][:300]  # obstore appends a Rust dump
            raise MedclassError(f"cannot read {self.input_dir}/{name} ({type(err).__name__}: "
                                f"{files.printable(detail)}); check the URL, the storage credentials and the network, "
                                "or give a local folder") from None

    def read_meta(self) -> dict[str, Any]:
        """`medclass.json`, checked; then each split's `index.json`, checked and counted against it, and on this
        machine (a folder, or `local:` one) each chunk's kind and size, before LitData opens anything. Only
        regular files are read, never through a link: a stranger's prepared folder needs none."""
        folder = self._folder()
        if folder is not None:
            path = folder / META
            if not os.path.lexists(path):
                raise MedclassError(f"data.input_dir={self.input_dir} holds no {META}: it is not a data set prepared "
                                    "by medclass-prepare (or preparing it did not finish); " + ADVICE)
        else:
            path = self._fetch(META)
        source = f"{self.input_dir}/{META}" if is_url(self.input_dir) else str(path)
        meta = read_description(path, source)
        info = meta["info"]
        self.layout = ItemLayout(info["image_size"], info["in_chans"], len(info["class_names"]),
                                 info["task"] == "multi-label")
        for split in SPLITS:
            where = f"{self.input_dir}/{split}/index.json"
            if folder is not None:
                split_folder = folder / split
                try:
                    kind = os.lstat(split_folder).st_mode
                except OSError:
                    kind = 0
                if not stat.S_ISDIR(kind):
                    raise MedclassError(f"{split_folder} is not a folder (a link, a file or missing); the prepared "
                                        "data set is incomplete: " + ADVICE)
                index_path = split_folder / "index.json"
                if not os.path.lexists(index_path):
                    raise MedclassError(f"{where} does not exist; the prepared data set is incomplete: " + ADVICE)
            else:
                index_path = self._fetch(f"{split}/index.json")
            payload = files.read_json(index_path, "a LitData index", MAX_INDEX_BYTES, follow_links=False)
            self.chunks[split] = check_index(payload, where, self.layout, meta["splits"][split])
            self._index[split] = payload
            if folder is not None:
                check_chunk_files(folder / split, self.chunks[split], where)
        return meta

    # -- what the base class provides for in-memory data, here from the file ----------------------------------
    def describe(self) -> DataInfo:
        info = self.meta["info"]
        return DataInfo(task=info["task"], class_names=list(info["class_names"]), in_chans=info["in_chans"],
                        image_size=info["image_size"], mean=list(info["mean"]), std=list(info["std"]),
                        symmetry=self.symmetry or info["symmetry"], split_key=info["split_key"],
                        class_counts=list(info["class_counts"]), train_size=info["train_size"])

    def split_items(self, split: str) -> list[str]:
        return self._items[split]

    def item_columns(self, item: str) -> dict[str, str]:
        return self._columns.get(item, {})

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        lit = litdata_module("data=stream")
        self.meta = self.read_meta()
        self.name = self.name or self.meta["name"]
        info = self.describe()
        stored_chans, stored_size = info.in_chans, info.image_size
        chans = self.in_chans or stored_chans
        mean, std = (info.mean, info.std) if self.mean is None else (list(self.mean), list(self.std or []))
        if stored_chans != chans and self.mean is None:  # statistics of the converted images: grey <-> colour
            mean, std = ([round(sum(mean) / len(mean), 4)] * chans, [round(sum(std) / len(std), 4)] * chans)
        plain, train_tf = self.transforms(info, mean, std, chans, stored_size)
        if isinstance(train_tf, BatchAugment):
            raise MedclassError("augment=batch gathers training images from memory on the device; with data=stream "
                                "use augment=default (or another per-image pipeline)")
        columns, multi = self.meta["columns"], info.task == "multi-label"
        names = {name: i for i, name in enumerate(info.class_names)}
        expected: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # each split's table rows and labels, in stored order
        for split in SPLITS:
            rows = [row for row in self.meta["rows"] if row[3] == split]
            self._items[split] = [row[1] for row in rows]
            if multi:  # 0/1 per class (rows × classes bounded by the description's check)
                labels = np.zeros((len(rows), len(names)), np.uint8)
                for r, row in enumerate(rows):
                    labels[r, [names[p] for p in row[2].split(";") if p]] = 1
            else:
                labels = np.asarray([names[row[2]] for row in rows], np.int64)
            self._labels[split] = encode_labels(labels if multi else labels[:, None], info.task)
            expected[split] = (np.asarray([row[0] for row in rows], np.int64), labels)
            for row in rows:
                extra = {c: v for c, v in zip(columns[len(BASE_COLUMNS):], row[len(BASE_COLUMNS):], strict=True)}
                if extra:
                    self._columns[row[1]] = extra
        self.duplicates = dict(self.meta["duplicates"])
        self.groups_across_splits = dict(self.meta["groups_across_splits"])
        report_duplicates(self.duplicates)  # counted by medclass-prepare

        def stream(split: str, transform: Any, shuffle: bool) -> Any:
            where = f"{self.input_dir}/{split}/index.json"
            guard = lit.ChunkGuard(where, self.chunks[split], self.layout, *expected[split],
                                   remote=is_url(self.input_dir))
            dataset = lit.ImageStream(f"{self.input_dir}/{split}", lit.ToSample(transform, chans, multi),
                                      shuffle=shuffle, seed=self.seed, cache_dir=self.cache_dir,
                                      max_cache_size=self.max_cache_size, guard=guard)
            copy = lit.index_file(dataset)  # what LitData reads: the folder's own, or its copy in the cache
            if files.read_json(copy, "a LitData index", MAX_INDEX_BYTES, follow_links=False) != self._index[split]:
                raise MedclassError(f"{copy}, LitData's copy of {where}, differs from the index checked; delete "
                                    f"{copy.parent} (a stale cache: data.cache_dir) and run again")
            return dataset

        try:
            for split in SPLITS:
                self.datasets[split] = stream(split, train_tf if split == "train" else plain, split == "train")
            self.datasets["train_eval"] = stream("train", plain, False)
        except MedclassError:
            self.datasets = {}
            raise
        except Exception as err:  # what LitData says about a folder or bucket it cannot read
            self.datasets = {}
            detail = " ".join(str(err).split())[:300]
            raise MedclassError(f"LitData cannot open {self.input_dir} ({type(err).__name__}: {detail})") from None
        log.info("streaming %s from %s: %d train / %d val / %d test images, %d px, %d channel(s)", self.name,
                 self.input_dir, *self.meta["splits"].values(), info.image_size, chans)
        self._info = info

    def _loader(self, split: str, train: bool = False) -> Any:
        """A LitData loader over this rank's share of `split`. Training: shuffled, each rank its own images,
        the same number on every rank (DDP needs equal steps), so under DDP up to ranks - 1 images sit out an
        epoch. Evaluation: in stored order, every image once over all ranks, in this process (the order
        `split_items` and eval.py's predictions.csv follow)."""
        self.setup()
        lit = litdata_module("data=stream")
        dataset = self.datasets[split]
        trainer = self.trainer
        world, rank, nodes = ((trainer.world_size, trainer.global_rank, trainer.num_nodes) if trainer is not None
                              else lit.detect_distributed())
        dataset.set_distributed(world, rank, nodes)
        dataset.set_drop_last(train and world > 1)
        workers = self.num_workers if train else 0
        return lit.StreamLoader(dataset, batch_size=self.batch_size if train else self.eval_batch_size,
                                num_workers=workers, pin_memory=self.pin_memory,
                                worker_init_fn=functools.partial(init_worker, rank=rank))
