"""Weights from a stranger: every tensor named, typed and sized from the file's index before any data is touched.

A model file is a `.ckpt` (torch's zip archive: a pickle of plain values that points at one record per
storage) or a `.safetensors` file (a JSON header, then raw bytes). Both carry an index that says what
each tensor is without reading it: the zip's central directory and the pickle (read with
`torch.load(weights_only=True, mmap=True)`, which maps the records but reads none of them), or the
safetensors header. The readers here take that index, and `check_against` holds it against what the
described network needs (the module built on the meta device: names, shapes, dtypes). A tensor the
network does not use is refused unread, so a 2.4 GB extra tensor costs nothing; the bytes read are
those of the network's own weights.

Numbers are then checked where they are used: after loading, every floating-point parameter and
buffer must be finite *in the network's own dtype* (float64 1e300 becomes inf in float32), BatchNorm
variances must be non-negative, and a probe forward pass on two fixed images must give finite outputs
(3e38 in the head is finite and still overflows every logit).

Everything fails as one `Refused` line that names the file and the tensor, never quoting a value.
Nothing here imports Lightning.
"""

from __future__ import annotations

import math
import os
import re
import struct
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from medclass.untrusted.files import MiB, Refused, check_regular, open_regular, printable

MAX_PICKLE_BYTES = 32 * MiB  # a checkpoint's pickle (description, names, optimizer layout): ~1 MB for a ViT-L
MAX_RECORDS = 200_000  # zip entries: one per storage
MAX_HEADER_BYTES = 32 * MiB  # a safetensors header: ~100 bytes a tensor
MAX_TENSORS = 100_000
MAX_NAME = 500
FLOATS = ("float32", "float16", "bfloat16", "float64")  # what a float slot of a network may be loaded from
# torch.save's records inside the archive's one top folder
RECORD = re.compile(r"[^/]+/(data\.pkl|byteorder|version|\.format_version|\.storage_alignment|data/\d+|"
                    r"\.data/[A-Za-z_]+)")
SAFETENSORS_DTYPES = {"F64": "float64", "F32": "float32", "F16": "float16", "BF16": "bfloat16", "I64": "int64",
                      "I32": "int32", "I16": "int16", "I8": "int8", "U8": "uint8", "U16": "uint16", "U32": "uint32",
                      "U64": "uint64", "BOOL": "bool", "F8_E4M3": "float8_e4m3fn", "F8_E5M2": "float8_e5m2",
                      "C64": "complex64"}  # torch's names; any other is shown as the header spells it


@dataclass(frozen=True)
class TensorInfo:
    """What the index says about one tensor: its dtype's name (`float32`; anything torch or safetensors names)
    and its shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def numel(self) -> int:
        count = 1
        for n in self.shape:
            count *= n
        return count

    @property
    def floating(self) -> bool:
        return self.dtype in FLOATS


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def info_of(tensor: torch.Tensor) -> TensorInfo:
    """A tensor's dtype and shape: metadata only, no data read (the tensor may map a file)."""
    return TensorInfo(dtype_name(tensor.dtype), tuple(int(n) for n in tensor.shape))


# -- the archive -------------------------------------------------------------------------------------
def check_archive(path: Path, what: str) -> None:
    """torch.save's zip layout, from the central directory: at most MAX_RECORDS stored (uncompressed) records of
    the names torch writes, a pickle of at most MAX_PICKLE_BYTES. Read before torch parses anything, so a zip bomb,
    a huge pickle or a foreign archive is refused in milliseconds."""
    try:
        with open(path, "rb") as f:
            end = zipfile._EndRecData(f)  # type: ignore[attr-defined]  # the end record only: count and size
            if not end:
                raise zipfile.BadZipFile
            if end[zipfile._ECD_ENTRIES_TOTAL] > MAX_RECORDS or end[zipfile._ECD_SIZE] > MAX_RECORDS * 600:
                raise Refused(f"{what} {path} lists {end[zipfile._ECD_ENTRIES_TOTAL]:,} records; a checkpoint "
                              f"medclass reads has at most {MAX_RECORDS:,}")
            infos = zipfile.ZipFile(f).infolist()
    except (zipfile.BadZipFile, OSError, ValueError, struct.error, EOFError):
        raise Refused(f"{what} {path} is not a PyTorch checkpoint archive (torch.save's zip format)") from None
    for info in infos:
        if not RECORD.fullmatch(info.filename) or info.filename.split("/")[0] != infos[0].filename.split("/")[0]:
            raise Refused(f"{what} {path} holds a record torch.save does not write ({printable(info.filename, 80)})")
        if info.compress_type != zipfile.ZIP_STORED:
            raise Refused(f"{what} {path}: record {printable(info.filename, 80)} is compressed; torch.save stores "
                          "records as they are")
        if info.filename.endswith("/data.pkl") and info.file_size > MAX_PICKLE_BYTES:
            raise Refused(f"{what} {path}: its pickle is {info.file_size / MiB:.0f} MiB, more than the "
                          f"{MAX_PICKLE_BYTES / MiB:.0f} MiB a checkpoint's description and layout take")


def load_checkpoint(path: str | Path, what: str = "checkpoint") -> Any:
    """A `.ckpt` file's content: plain values and tensors that map the file (no tensor data read yet). The file
    must be a regular file outside /proc, /sys and /dev with torch.save's layout (`check_archive`)."""
    path = Path(path)
    check_regular(path, what)
    check_archive(path, what)
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # the weights-only unpickler's refusals, a truncated record
        raise Refused(f"cannot load {what} {path} safely ({type(err).__name__}; torch.load with weights_only=True "
                      "takes plain values and tensors only)") from None


def index_of(state: Any, source: str) -> dict[str, TensorInfo]:
    """Names, dtypes and shapes of a loaded (memory-mapped) state_dict; nothing read. Plain strided tensors under
    plain names only."""
    if not isinstance(state, Mapping) or len(state) > MAX_TENSORS:
        raise Refused(f"{source}: state_dict is not a mapping of at most {MAX_TENSORS:,} tensors")
    index = {}
    for key, value in state.items():
        if not isinstance(key, str) or len(key) > MAX_NAME or not isinstance(value, torch.Tensor):
            raise Refused(f"{source}: state_dict entry {printable(repr(key), 80)} is not a named tensor")
        if value.layout != torch.strided or value.is_quantized or value.device.type != "cpu":
            raise Refused(f"{source}: {printable(key, 120)} is a {value.layout} tensor; expected a plain dense one")
        index[key] = info_of(value)
    return index


# -- safetensors ---------------------------------------------------------------------------------------
def safetensors_index(path: str | Path, what: str = "model file") -> dict[str, TensorInfo]:
    """Names, dtypes and shapes from a `.safetensors` header (at most MAX_HEADER_BYTES), no tensor read."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    fd, _ = open_regular(path, what)
    try:
        head = os.read(fd, 8)
    finally:
        os.close(fd)
    if len(head) < 8 or struct.unpack("<Q", head)[0] > MAX_HEADER_BYTES:
        raise Refused(f"{what} {path} does not start with a safetensors header of at most "
                      f"{MAX_HEADER_BYTES / MiB:.0f} MiB")
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            names = list(f.keys())
            if len(names) > MAX_TENSORS:
                raise Refused(f"{what} {path} holds {len(names):,} tensors, more than {MAX_TENSORS:,}")
            index = {}
            for name in names:
                part = f.get_slice(name)
                raw = part.get_dtype()
                index[name] = TensorInfo(SAFETENSORS_DTYPES.get(raw, raw), tuple(int(n) for n in part.get_shape()))
    except (SafetensorError, OSError, ValueError) as err:
        raise Refused(f"cannot read {what} {path} as safetensors ({type(err).__name__})") from None
    for name in index:
        if len(name) > MAX_NAME:
            raise Refused(f"{what} {path} names a tensor with more than {MAX_NAME} characters")
    return index


def read_safetensors(path: str | Path, names: list[str], what: str = "model file") -> dict[str, torch.Tensor]:
    """The named tensors of a `.safetensors` file whose index was checked: only these are read."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            return {name: f.get_tensor(name) for name in names}
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise Refused(f"cannot read {what} {path} as safetensors ({type(err).__name__})") from None


# -- what the network needs ------------------------------------------------------------------------------
def expected_index(module: torch.nn.Module) -> dict[str, TensorInfo]:
    """The state_dict a module (built on the meta device: no memory) loads: names, dtypes, shapes."""
    return {k: info_of(v) for k, v in module.state_dict().items()}


def check_against(index: Mapping[str, TensorInfo], expected: Mapping[str, TensorInfo], source: str) -> None:
    """The file's tensors must be exactly those the network loads: the same names and shapes, real floating point
    (float32, float16, bfloat16 or float64) where the network has floating point, the network's own dtype
    elsewhere (BatchNorm's step counters). A name the network does not have is refused before any data is read."""
    extra = sorted(set(index) - set(expected))
    if extra:
        more = f" and {len(extra) - 1:,} more" if len(extra) > 1 else ""
        raise Refused(f"{source} holds a tensor the network it describes does not use ({printable(extra[0], 120)}"
                      f"{more}); refusing it unread")
    missing = sorted(set(expected) - set(index))
    if missing:
        more = f" and {len(missing) - 1:,} more" if len(missing) > 1 else ""
        raise Refused(f"{source}: its weights do not fit the network it describes ({printable(missing[0], 120)}"
                      f"{more} missing)")
    for name, want in expected.items():
        got = index[name]
        if want.floating and not got.floating:
            raise Refused(f"{source}: {printable(name, 120)} is {printable(got.dtype, 40)}; expected real floating "
                          f"point ({', '.join(FLOATS)})")
        if not want.floating and got.dtype != want.dtype:
            raise Refused(f"{source}: {printable(name, 120)} is {printable(got.dtype, 40)}; expected {want.dtype}")
        if got.shape != want.shape:
            raise Refused(f"{source}: its weights do not fit the network it describes ({printable(name, 120)} is "
                          f"{list(got.shape)} in the file, {list(want.shape)} in the network)")


# -- numbers, once loaded ----------------------------------------------------------------------------------
def check_loaded(module: torch.nn.Module, source: str) -> None:
    """Every floating-point parameter and buffer finite in the module's own dtype; every running variance
    (BatchNorm and its frozen and fused kinds) non-negative."""
    for name, tensor in _tensors(module):
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise Refused(f"{source}: weight {name} holds NaN or infinite values (or values that are not finite in "
                          f"the network's {dtype_name(tensor.dtype)})")
        if name.endswith("running_var") and bool((tensor < 0).any()):
            raise Refused(f"{source}: {name} holds a negative BatchNorm variance; a variance is never negative")


def _tensors(module: torch.nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    yield from module.named_parameters()
    yield from module.named_buffers()


def probe_inputs(in_chans: int, size: int) -> list[torch.Tensor]:
    """Two fixed images of the model's size, one at a time: zeros, and a seeded pattern of normalized-image
    scale (the mean and a few standard deviations either side)."""
    pattern = torch.randn(1, in_chans, size, size, generator=torch.Generator().manual_seed(35))
    return [torch.zeros(1, in_chans, size, size), pattern]


def probe(forward: Callable[[torch.Tensor], torch.Tensor], in_chans: int, size: int, source: str) -> None:
    """`forward` (the network and its link function, in eval mode) on the probe images must give finite outputs."""
    with torch.inference_mode():
        for x in probe_inputs(in_chans, size):
            out = forward(x)
            if not bool(torch.isfinite(out).all()):
                raise Refused(f"the weights in {source} give non-finite outputs on a probe image (NaN or infinite "
                              "probabilities for every input); refusing them")


# -- training state: plain trees -------------------------------------------------------------------------
MAX_TREE_VALUES = 2_000_000  # every value visited, shared ones each time: a file's DAG cannot multiply the work
MAX_TREE_DEPTH = 32
MAX_TEXT = 4096  # a path in ModelCheckpoint state
STATE_DTYPES = (*FLOATS, "int64", "int32", "int16", "int8", "uint8", "bool")


def check_plain_tree(value: Any, where: str, max_values: int = MAX_TREE_VALUES) -> int:
    """`value` is a tree of None, booleans, integers (at most 2**130 in size: a generator's 128-bit state), floats
    that are not NaN, text of at most MAX_TEXT printable characters, lists, tuples and dicts (keys: text or
    integers), and dense CPU tensors of real or integer dtypes; at most `max_values` values in all, counted per
    visit, and MAX_TREE_DEPTH levels. Returns the bytes its tensors hold, from their metadata: nothing is read."""
    stack: list[tuple[str, Any, int]] = [(where, value, 0)]
    seen, nbytes = 0, 0
    while stack:
        at, node, depth = stack.pop()
        seen += 1
        if seen > max_values:
            raise Refused(f"{where} holds more than {max_values:,} values; it is not training state Lightning wrote")
        if node is None or isinstance(node, bool):
            continue
        if isinstance(node, int):
            if abs(node) > 2**130:
                raise Refused(f"{at}: an integer of {node.bit_length()} bits; expected at most 130")
        elif isinstance(node, float):
            if math.isnan(node):
                raise Refused(f"{at}: NaN; expected a number")
        elif isinstance(node, str):
            if len(node) > MAX_TEXT or not node.isprintable():
                raise Refused(f"{at}: text of {len(node):,} characters or with control characters; expected at most "
                              f"{MAX_TEXT} printable ones")
        elif isinstance(node, torch.Tensor):
            if node.layout != torch.strided or node.is_quantized or node.device.type != "cpu":
                raise Refused(f"{at}: a {node.layout} tensor; expected a plain dense one")
            if dtype_name(node.dtype) not in STATE_DTYPES:
                raise Refused(f"{at}: a {dtype_name(node.dtype)} tensor; expected real or integer numbers")
            nbytes += node.numel() * node.element_size()
        elif isinstance(node, (list, tuple, dict)):
            if depth >= MAX_TREE_DEPTH:
                raise Refused(f"{at}: nested deeper than {MAX_TREE_DEPTH} levels")
            if len(node) > max_values - seen:
                raise Refused(f"{where} holds more than {max_values:,} values; it is not training state Lightning "
                              "wrote")
            if isinstance(node, dict):
                for k, v in node.items():
                    if not (isinstance(k, int) and not isinstance(k, bool) and abs(k) < 2**63) and not (
                            isinstance(k, str) and len(k) <= MAX_TEXT and k.isprintable()):
                        raise Refused(f"{at}: a key of type {type(k).__name__} (or too long); expected text or an "
                                      "integer")
                    stack.append((f"{at}[{printable(repr(k), 80)}]", v, depth + 1))
            else:
                stack.extend((f"{at}[{i}]", v, depth + 1) for i, v in enumerate(node))
        else:
            raise Refused(f"{at}: a {type(node).__name__}; expected plain numbers, text, lists, dicts or tensors")
    return nbytes


def compact(tree: Any) -> Any:
    """`tree` (checked by `check_plain_tree`) with every tensor that views a larger storage replaced by a copy of
    its own numbers: torch.save writes whole storages, so an 8-number view of a 2.4 GB (sparse) storage would
    otherwise write, and read, 2.4 GB."""
    if isinstance(tree, torch.Tensor):
        own = tree.numel() * tree.element_size()
        return tree.clone() if tree.untyped_storage().nbytes() > own else tree
    if isinstance(tree, dict):
        return {k: compact(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        items = [compact(v) for v in tree]
        return items if isinstance(tree, list) else tuple(items)
    return tree
