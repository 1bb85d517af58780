"""The bytes of a prepared data set's splits (`data=stream`), read as data: a split's LitData `index.json` and
its chunk files, checked before LitData acts on them.

`stream` (the description, `medclass.json`, and the DataModule) and `litstream` (LitData's loader with each
chunk checked whole before it is read) both build on this module and import no LitData from it, so neither
imports the other's module to reach the format.
"""

from __future__ import annotations

import json
import mmap
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medclass.untrusted import files
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

META = "medclass.json"  # a prepared set's description, beside its split folders
ADVICE = "prepare the data set again with medclass-prepare (docs/data.md \"Streaming (data=stream)\")"
# the one file name LitData gives a chunk (`chunk-<worker>-<n>.bin`): a plain name, never a path, `.` or `..`
CHUNK_NAME = r"chunk-\d{1,9}-\d{1,9}\.bin"
MAX_CHUNK_BYTES = 2**32 - 1  # LitData's offset table holds uint32 byte positions
# LitData 0.2's encodings, which the byte layout below spells out (a test prepares a set and reads it back):
UINT8_CODE = 4  # numpy leaf: the index of uint8 in litdata.constants._NUMPY_DTYPES_MAPPING
I64S_TAG = 2  # json leaf: the tag of a list of int64 in litdata.streaming.serializers (_NEST_I64S)


# -- a split's index.json -----------------------------------------------------
class ChunkRefused(MedclassError):
    """A chunk that is not what its split's index.json and medclass.json describe, in one line naming the file.

    Raised where LitData reads, which may be a loader worker: torch re-raises a worker's exception in the main
    process as `ChunkRefused("Caught ChunkRefused in DataLoader worker process 0.\\nOriginal Traceback ...")`, and
    the constructor keeps the one line from the end of that text."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught ") and "\nOriginal Traceback" in message:
            message = message.rstrip().rsplit("\n", 1)[-1].split(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message)


@dataclass(frozen=True)
class ItemLayout:
    """The bytes of one item as medclass-prepare writes it, fixed by the description of the data set.

    An item is three uint32 leaf sizes, then the image (the uint8 code, rank 3, its shape, size × size × chans
    pixels), the label (a class index as int64; multi-label: the tag and length of an int64 list, then a 0 or 1
    per class) and the image's row in the split table (int64). So every item of a set has the same length, a
    chunk's size follows from its item count, and every byte but the pixels, labels and rows is known in advance:
    a chunk is checked whole, cheaply, before LitData parses any of it."""

    size: int
    chans: int
    classes: int
    multi: bool

    @property
    def formats(self) -> list[str]:
        """LitData's serializer names for image, label and row (`data_format` in index.json)."""
        return ["numpy", "json" if self.multi else "int", "int"]

    @property
    def leaves(self) -> tuple[int, int, int]:
        return 20 + self.size * self.size * self.chans, (5 + 8 * self.classes if self.multi else 8), 8

    @property
    def item_bytes(self) -> int:
        return 12 + sum(self.leaves)

    @property
    def label_at(self) -> int:
        """Where an item's label values start."""
        return 12 + self.leaves[0] + (5 if self.multi else 0)

    def chunk_bytes(self, items: int) -> int:
        """The size of a chunk of `items` items: their count, items + 1 offsets, the items."""
        return 4 * (items + 2) + items * self.item_bytes

    def header(self) -> bytes:
        """The bytes every item starts with: its leaf sizes, the image's dtype code, rank and shape."""
        return struct.pack("<8I", *self.leaves, UINT8_CODE, 3, self.size, self.size, self.chans)

    def label_prefix(self) -> bytes:
        """The bytes before a multi-label item's values: the int64-list tag and the class count."""
        return struct.pack("<BI", I64S_TAG, self.classes) if self.multi else b""


@dataclass(frozen=True)
class Chunk:
    """A chunk as its index.json describes it, checked: a plain file name, its item count, its size in bytes and
    the position of its first item in the split."""

    name: str
    items: int
    nbytes: int
    first: int


ITEM_KEYS = ["image", "label", "index"]
LEAF_SPEC = {"type": None, "context": None, "children_spec": []}


def _item_spec(value: Any, where: str) -> Any:
    """LitData's tree of an item (`data_spec`: JSON in a string), as prepare writes it: a dict of image, label and
    index, one leaf each. LitData would rebuild any registered tree type from it, recursively."""
    text = s.text(2000)(value, where)
    try:
        protocol, tree = json.loads(text)
        ok = (protocol == 1 and set(tree) == {"type", "context", "children_spec"} and tree["type"] == "builtins.dict"
              and json.loads(tree["context"]) == ITEM_KEYS and tree["children_spec"] == [LEAF_SPEC] * 3)
    except (ValueError, TypeError, AttributeError, RecursionError):
        ok = False
    if not ok:
        raise s.fail(where, value, "a dict of image, label and index, one value each, as medclass-prepare writes")
    return value


def _index_check(layout: ItemLayout, count: int) -> s.Check:
    """index.json as LitData 0.2 writes it for prepare's items: every key LitData would act on has the one value
    prepare gives it (no compression, encryption, other loader, MDS or serializer), and no key is unknown."""
    formats = layout.formats
    format_hint = f"a pickle-free LitData format as medclass-prepare writes them ({', '.join(formats)})"

    def data_format(value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or len(value) != len(formats):
            raise s.fail(where, value, f"{len(formats)} LitData formats ({', '.join(formats)})")
        for i, (name, expected) in enumerate(zip(value, formats, strict=True)):
            if name != expected:
                raise s.fail(f"{where}[{i}]", name, format_hint)
        return value

    def whole(value: Any, where: str) -> int | None:
        return None if value is None else s.integer(1, 2**40)(value, where)

    none = s.choice(None)
    config = s.record({
        "data_format": data_format, "data_spec": _item_spec, "item_loader": s.choice("PyTreeLoader"),
        "compression": none, "encryption": none, "compression_level": none, "compression_batch_size": none,
        "ipc_compression": none, "chunk_bytes": whole, "chunk_size": whole, "types": s.plain(2, 16),
    }, required=("data_format", "data_spec", "item_loader", "compression"))
    chunk = s.record({
        "chunk_bytes": s.integer(1, MAX_CHUNK_BYTES), "chunk_size": s.integer(1, count), "dim": none,
        "filename": s.text(40, CHUNK_NAME, "a chunk file name as LitData writes it (chunk-<worker>-<n>.bin)"),
    }, required=("chunk_bytes", "chunk_size", "filename"))
    return s.record({"chunks": s.list_of(chunk, 1, count), "config": config, "updated_at": s.text(40)},
                    required=("chunks", "config"))


def check_index(payload: Any, source: str, layout: ItemLayout, count: int) -> list[Chunk]:
    """A split's LitData `index.json`, checked before LitData reads it: exactly the configuration prepare writes
    (LitData acts on compression, encryption, the loader and the serializers, and a serializer that unpickles
    would run a stranger's code), chunks with plain file names, each once, whose sizes follow from their item
    counts (`layout`), and `count` items in all (the description's count for the split)."""
    index = s.read_as_data(_index_check(layout, count), payload, source, ADVICE)
    chunks: list[Chunk] = []
    seen: set[str] = set()
    first = 0
    for i, entry in enumerate(index["chunks"]):
        name, items, nbytes = entry["filename"], entry["chunk_size"], entry["chunk_bytes"]
        if name in seen:
            raise s.Invalid(f"{source}: chunks[{i}].filename={name!r} names a chunk a second time; {ADVICE}")
        if nbytes != layout.chunk_bytes(items):
            raise s.Invalid(f"{source}: chunks[{i}].chunk_bytes={nbytes}: expected {layout.chunk_bytes(items)}, the "
                            f"size of {items} items of {layout.size} px and {layout.chans} channel(s); {ADVICE}")
        seen.add(name)
        chunks.append(Chunk(name, items, nbytes, first))
        first += items
    if first != count:
        raise s.Invalid(f"{source} holds {first} images but {META} lists {count}; the folder was changed after "
                        "preparing: " + ADVICE)
    return chunks


def check_chunk_files(folder: Path, chunks: list[Chunk], where: str) -> None:
    """The chunks of a split folder on this machine, before LitData opens any: each a regular file in the folder
    itself (no link, device, pipe or folder) of the size index.json gives. LitData would otherwise wait for a
    chunk shorter than its index says, block on a pipe, copy a device until the disk is full, or read a linked
    file as a chunk; it now fails at once, naming the chunk."""
    for chunk in chunks:
        path = folder / chunk.name
        info = files.check_regular(path, "a chunk of a prepared data set", follow_links=False)
        if info.st_size != chunk.nbytes:
            raise ChunkRefused(f"{path} is {info.st_size} bytes but {where} gives {chunk.nbytes}; the folder was "
                               f"changed after preparing, or copying it did not finish: {ADVICE}")


BLOCK = 1 << 16  # items checked at a time: the comparisons' memory does not grow with the chunk


def _chunk_problem(view: mmap.mmap, chunk: Chunk, layout: ItemLayout, rows: np.ndarray, labels: np.ndarray) -> str:
    """What is wrong with a chunk's bytes (`view`, of the size its index gives), or "": its item count, its offset
    table, each item's fixed bytes, labels and table rows as the split table has them (`rows`, `labels`: this
    chunk's share). Nothing here quotes the chunk's bytes."""
    n, size = chunk.items, layout.item_bytes
    data = np.frombuffer(view, np.uint8)
    start = 4 * (n + 2)
    if int(data[:4].view("<u4")[0]) != n:
        return "does not start with its item count"
    head = np.frombuffer(layout.header(), np.uint8)
    prefix = np.frombuffer(layout.label_prefix(), np.uint8)
    width = 8 * layout.classes if layout.multi else 8
    at = layout.label_at
    for lo in range(0, n + 1, BLOCK):
        hi = min(n + 1, lo + BLOCK)
        offsets = data[4 + 4 * lo:4 + 4 * hi].view("<u4").astype(np.int64)
        if not np.array_equal(offsets, start + size * np.arange(lo, hi, dtype=np.int64)):
            return f"has an offset table that does not fit {n} items of {size} bytes"
    for lo in range(0, n, BLOCK):
        hi = min(n, lo + BLOCK)
        items = data[start + lo * size:start + hi * size].reshape(hi - lo, size)
        if not (items[:, :head.size] == head).all():
            return "holds an item whose leaf sizes, image type or image shape differ"
        if prefix.size and not (items[:, at - prefix.size:at] == prefix).all():
            return "holds an item whose label is not one 0 or 1 per class"
        values = np.ascontiguousarray(items[:, at:at + width]).view("<i8")
        if not np.array_equal(values, labels[lo:hi].reshape(hi - lo, -1)):
            return "holds labels that differ from the split table's"
        if not np.array_equal(np.ascontiguousarray(items[:, -8:]).view("<i8")[:, 0], rows[lo:hi]):
            return "holds images in another order than the split table's"
    return ""


def check_chunk(path: str, chunk: Chunk, layout: ItemLayout, rows: np.ndarray, labels: np.ndarray,
                where: str) -> tuple[int, ...]:
    """A chunk file, checked whole before LitData reads an item of it (after a download, where LitData fetched
    it): a regular file, not a link, of its declared size, holding exactly the items its index and the split
    table describe (`rows`, `labels`: the whole split's). LitData would otherwise take its offsets, array shapes,
    compression frames and trailing Arrow tables from the bytes. Returns the file's identity, which a later
    `os.lstat` compares to know the file has not been replaced since."""
    try:
        info = files.check_regular(path, "a chunk of a prepared data set", follow_links=False)
    except files.Refused as err:  # as ChunkRefused, which keeps its one line when raised in a loader worker
        raise ChunkRefused(str(err)) from None
    if info.st_size != chunk.nbytes:
        raise ChunkRefused(f"{path} is {info.st_size} bytes but {where} gives {chunk.nbytes}; {ADVICE}")
    try:
        fd, opened = files.open_regular(path, "a chunk of a prepared data set", follow_links=False)
    except files.Refused as err:
        raise ChunkRefused(str(err)) from None
    try:
        if ((opened.st_dev, opened.st_ino) != (info.st_dev, info.st_ino)
                or opened.st_size != chunk.nbytes):
            raise ChunkRefused(f"{path} was replaced while being checked")
        with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as view:
            span = slice(chunk.first, chunk.first + chunk.items)
            problem = _chunk_problem(view, chunk, layout, rows[span], labels[span])
    finally:
        os.close(fd)
    if problem:
        raise ChunkRefused(f"{path} {problem}: it is not what {where} and {META} describe; {ADVICE}")
    return identity(opened)


def identity(info: os.stat_result) -> tuple[int, ...]:
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
