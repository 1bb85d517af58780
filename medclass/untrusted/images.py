"""Image and DICOM files from strangers: opened as regular files, sized from the header, decoded within a budget.

A compressed image is a promise about memory that its few bytes do not keep: a 5 KB TIFF can declare a
float32 13,300 x 13,300 image (707 MB, then gigabytes of float64 copies), a 600-byte RLE DICOM 46,000 x 46,000
pixels, a 1 MB deflated DICOM 1 GiB of pixels that must be inflated before any of its header can be read.
So every image is held to one **pixel budget**, in bytes of decoded pixels, checked from the header before a
pixel is decoded:

    width x height x frames decoded x samples per pixel x bytes per sample  <=  MEDCLASS_MAX_IMAGE_MB (256 MiB)

- Pillow formats (PNG, JPEG, BMP, TIFF, and WebP/GIF content behind those names): `Image.open` reads only the
  header; the size and mode give the bytes Pillow will hold (1 for L and 1-bit, 2 for I;16, 4 for I, F and
  every colour mode, which Pillow keeps as 4 bytes a pixel; a palette image counts as the RGB(A) it becomes).
  Only frame 0 of a multi-page TIFF is decoded, so only it counts. Pillow's own decompression-bomb limit is
  set to the same budget (a pixel is at least a byte) and raises instead of warning.
- DICOM: the header up to the pixel data (at most `header_cap` bytes, so a header of millions of empty
  sequence items cannot cost minutes) gives Rows x Columns x SamplesPerPixel x BitsAllocated/8 for the one
  frame medclass uses (the middle one of a multi-frame series, decoded alone by pydicom). A Deflated
  Explicit VR Little Endian file is inflated first, by a bounded inflater that stops at the budget plus the
  header cap: no unbounded inflation.
- The stretch to 0..255 (`to_uint8`, with the DICOM rescale and window) runs over blocks of a million pixels
  in float64, so it needs no float copy of the whole image: peak memory stays a small multiple of the budget.

A refused image raises `ImageTooLarge` (a `MedclassError`) naming the file, what it declares and the
variable that raises the budget; the folder, manifest and predict readers list it as an unreadable file,
never fatal. A wrong value of the variable itself is `BudgetSetting`, which those readers re-raise: it is
the environment's problem, not a file's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import re
import warnings
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import numpy as np
from PIL import Image, ImageMode

from medclass.untrusted.files import Refused, open_regular, printable
from medclass.utils.extras import MissingExtra, require

MiB = 2**20
BUDGET_VARIABLE = "MEDCLASS_MAX_IMAGE_MB"
DEFAULT_BUDGET_MB = 256
MAX_BUDGET_MB = 2**20  # 1 TiB: a typo such as 1e12 is an error, not "no limit"

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
DICOM_SUFFIXES = frozenset({".dcm", ".dicom"})
SUFFIXES = IMAGE_SUFFIXES | DICOM_SUFFIXES
# what Pillow may find inside those names: the formats themselves and the usual mislabels (a phone's MPO JPEG,
# a web download's WebP or GIF). Never EPS (Ghostscript), PSD, ICO and the other 40 formats Pillow would try.
PIL_FORMATS = ("PNG", "JPEG", "MPO", "BMP", "DIB", "TIFF", "WEBP", "GIF")

CHUNK = 1 << 20  # pixels per block of the float64 stretch: 8 MB of temporaries, whatever the image size
HEADER_CAP_MIN = 4 * MiB
DEFER = MiB  # DICOM element values larger than this are skipped (sought past), not read


class ImageTooLarge(Refused):
    """An image whose header declares more decoded bytes than the pixel budget; nothing was decoded."""


class BudgetSetting(MissingExtra):
    """A wrong `MEDCLASS_MAX_IMAGE_MB`. Like a missing extra, it is the environment's problem and would refuse
    every image alike, so the readers that list unreadable files re-raise it (they re-raise `MissingExtra`)."""


def budget_bytes() -> int:
    """The pixel budget per image in bytes: `MEDCLASS_MAX_IMAGE_MB` (MiB) read on every call, else 256 MiB."""
    raw = os.environ.get(BUDGET_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_BUDGET_MB * MiB
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 1 <= value <= MAX_BUDGET_MB):
        raise BudgetSetting(f"{BUDGET_VARIABLE}={printable(raw, 40)} is not a number of MiB from 1 to "
                            f"{MAX_BUDGET_MB:,}; unset it for the default of {DEFAULT_BUDGET_MB} MiB of decoded pixels "
                            f"per image, or raise it, e.g. {BUDGET_VARIABLE}=1024")
    return int(value * MiB)


def header_cap(budget: int) -> int:
    """Bytes a DICOM header (everything before the pixel data, values over 1 MiB skipped) may take to read: 1/64
    of the budget, at least 4 MiB. Real headers, per-frame functional groups of an enhanced CT included, are
    far smaller."""
    return max(HEADER_CAP_MIN, budget // 64)


def header_reads(budget: int) -> int:
    """Reads (about one per element or sequence item) a DICOM header may take: 1/2048 of the budget, 131,072 by
    default. pydicom builds a Python object per item (50-200 us each), so the bytes alone would let a 4 MiB
    header of empty items cost a minute. A CT header is a few hundred elements; per-frame functional groups
    written with undefined lengths take ~60 reads a frame, so an enhanced series of 2,000 frames fits."""
    return max(32_768, budget // 2048)


def _too_large(path: Path, declared: str, need: int, budget: int) -> ImageTooLarge:
    suggest = max(2 * budget // MiB, -(-need // (256 * MiB)) * 256)
    return ImageTooLarge(f"{path} declares {declared} = {need / MiB:,.0f} MiB of decoded pixels, more than the "
                         f"{budget / MiB:g} MiB image budget; if the file is yours, raise it with "
                         f"{BUDGET_VARIABLE}={suggest}")


def check_budget(path: Path, declared: str, need: int, budget: int) -> None:
    """Refuse before decoding when `need` bytes of pixels are over `budget`."""
    if need > budget:
        raise _too_large(path, declared, need, budget)


# -- opening ---------------------------------------------------------------------------------------------------------
def open_image_file(path: str | Path) -> IO[bytes]:
    """The file at `path` opened for reading when it is a regular file outside `/proc`, `/sys` and `/dev` (a FIFO
    would block, `/dev/zero` never ends); checked on the open descriptor, so it cannot be swapped in between."""
    fd, _ = open_regular(path, "image")
    try:
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


BOMB = re.compile(r"\((\d+) pixels\)")


@contextlib.contextmanager
def pillow_limits(path: Path, budget: int) -> Iterator[None]:
    """Pillow's decompression-bomb check at the budget (a pixel is at least one byte, so it is never looser than
    ours) and raising, not warning: for Pillow formats and for the JPEG frames pydicom hands to Pillow."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = budget
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        found = BOMB.search(str(err))
        declared = f"{int(found.group(1)):,} pixels" if found else "more pixels than that"
        raise _too_large(path, declared, int(found.group(1)) if found else budget + 1, budget) from None
    finally:
        Image.MAX_IMAGE_PIXELS = before


def pil_pixel_bytes(mode: str) -> int:
    """Bytes a pixel of `mode` takes in Pillow once decoded and converted the way `read_pil` converts it."""
    if mode == "P":
        return 4  # converted to RGB or RGBA
    try:
        desc = ImageMode.getmode(mode)
    except KeyError:
        return 4
    return 4 if len(desc.bands) > 1 else max(1, np.dtype(desc.typestr).itemsize)


# -- the stretch to 0..255 -------------------------------------------------------------------------------------------
Transform = Callable[[np.ndarray], np.ndarray]


def _blocks(flat: np.ndarray, transform: Transform | None) -> Iterator[tuple[int, np.ndarray]]:
    """(offset, float64 copy of the block through `transform`): a copy, so scaling it never writes to the input."""
    for start in range(0, flat.size, CHUNK):
        block = flat[start : start + CHUNK]
        yield start, np.array(transform(block) if transform else block, dtype=np.float64)


def to_uint8(array: np.ndarray, transform: Transform | None = None) -> np.ndarray:
    """Stretch any numeric range to 0..255 (uint8 without a transform passes through untouched).

    `transform` (elementwise: the DICOM rescale and window) is applied on the way. Both passes (finite min and
    max, then the stretch) run over blocks of `CHUNK` pixels in float64, so memory is the uint8 result plus a few
    8 MB blocks: no float copy of a whole image that may be hundreds of MB. NaN becomes 0, +inf 255 and -inf 0;
    only finite values set the range, and an image with no finite spread is all 0."""
    if array.dtype == np.uint8 and transform is None:
        return array
    flat = array.reshape(-1)
    low, high = math.inf, -math.inf
    with np.errstate(invalid="ignore", over="ignore"):
        for _, values in _blocks(flat, transform):
            finite = np.isfinite(values)
            if finite.any():
                low = min(low, float(np.min(values, where=finite, initial=math.inf)))
                high = max(high, float(np.max(values, where=finite, initial=-math.inf)))
        out = np.zeros(flat.size, np.uint8)
        if not high > low:
            return out.reshape(array.shape)
        for start, values in _blocks(flat, transform):
            values -= low
            values /= high - low
            values *= 255
            np.nan_to_num(values, copy=False, nan=0.0, posinf=255.0, neginf=0.0)
            np.clip(np.round(values, out=values), 0, 255, out=values)
            out[start : start + len(values)] = values
    return out.reshape(array.shape)


# -- Pillow ---------------------------------------------------------------------------------------------------------
def _opened(fp: IO[bytes], path: Path, formats: list[str]) -> Image.Image:
    """`Image.open` on the open file (the header only); an unknown format named by the path, as Pillow names it
    when given a path rather than a file object."""
    try:
        return Image.open(fp, formats=formats)
    except Image.UnidentifiedImageError:
        raise Image.UnidentifiedImageError(f"cannot identify image file {str(path)!r}") from None


def read_pil(path: Path) -> np.ndarray:
    """A PNG, JPEG, BMP or TIFF file (frame 0) as uint8 (H, W) or (H, W, 3), after the header is held to the budget."""
    path = Path(path)
    budget = budget_bytes()
    Image.init()
    formats = [f for f in PIL_FORMATS if f in Image.ID]
    with open_image_file(path) as fp, pillow_limits(path, budget), _opened(fp, path, formats) as img:
        width, height = img.size
        per_pixel = pil_pixel_bytes(img.mode)
        check_budget(path, f"{width} x {height} pixels of mode {img.mode} ({per_pixel} bytes each)",
                     width * height * per_pixel, budget)
        img.load()
        if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            return to_uint8(np.asarray(img))
        if img.mode == "P":
            img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        if img.mode in ("RGBA", "LA"):
            background = Image.new("RGB" if img.mode == "RGBA" else "L", img.size, 0)
            background.paste(img, mask=img.getchannel("A"))
            img = background
        if img.mode not in ("L", "RGB"):
            img = img.convert("RGB")
        return np.asarray(img)


# -- DICOM ----------------------------------------------------------------------------------------------------------
DEFLATED = "1.2.840.10008.1.2.1.99"
# the header elements decoding and the grey-level mapping use; others are sought past, not read
DICOM_TAGS = ("SpecificCharacterSet", "SamplesPerPixel", "PhotometricInterpretation", "PlanarConfiguration",
              "NumberOfFrames", "Rows", "Columns", "BitsAllocated", "BitsStored", "HighBit", "PixelRepresentation",
              "RescaleIntercept", "RescaleSlope", "RescaleType", "ModalityLUTSequence", "WindowCenter",
              "WindowWidth", "VOILUTFunction", "VOILUTSequence")


class HeaderBudget:
    """A file object for pydicom that refuses to read more than `cap` bytes in more than `max_reads` reads (seeks
    over skipped values are free). pydicom wraps errors of its reads in its own (`OSError: No tag to read`), so
    the refusal is also kept in `over` for the caller to raise instead. `cap = None` lifts both limits once the
    header has been checked."""

    def __init__(self, fp: IO[bytes], path: Path, budget: int) -> None:
        self.fp, self.path = fp, path
        self.cap: int | None = header_cap(budget)
        self.max_reads = header_reads(budget)
        self.used = self.reads = 0
        self.over: str | None = None

    def read(self, size: int | None = -1) -> bytes:
        if self.cap is not None:
            room = self.cap - self.used + 1
            size = room if size is None or size < 0 else min(size, room)
        data = self.fp.read(-1 if size is None else size)
        self.used += len(data)
        self.reads += 1
        if self.cap is not None and (self.used > self.cap or self.reads > self.max_reads):
            self.over = (f"{self.path} has a DICOM header (the elements before the pixel data) of more than "
                         f"{self.cap / MiB:g} MiB or {self.max_reads:,} elements and items; both caps grow with the "
                         f"image budget, raise it with {BUDGET_VARIABLE} if the file is yours")
            raise ImageTooLarge(self.over)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self.fp.seek(offset, whence)

    def tell(self) -> int:
        return self.fp.tell()

    @contextlib.contextmanager
    def refusal(self) -> Iterator[None]:
        """Any error of pydicom's while reading through this file, given as the cap's refusal when one was hit."""
        try:
            yield
        except Exception:
            if self.over:
                raise ImageTooLarge(self.over) from None
            raise


def _inflated(fp: HeaderBudget, path: Path, meta: Any, budget: int) -> io.BytesIO:
    """A deflated data set inflated, at most budget + header cap bytes, behind its file meta rewritten to Explicit
    VR Little Endian: the same data set as a file pydicom can read a header of without inflating anything."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    limit = budget + header_cap(budget)
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    parts: list[bytes] = []
    total = 0
    try:
        while not inflater.eof:
            data = inflater.unconsumed_tail or fp.fp.read(MiB)
            if not data:
                break
            piece = inflater.decompress(data, min(limit + 1 - total, 16 * MiB))
            parts.append(piece)
            total += len(piece)
            if total > limit:
                raise ImageTooLarge(f"{path} is a deflated DICOM whose data set inflates past {limit / MiB:g} MiB, "
                                    f"more than the {budget / MiB:g} MiB image budget (plus its header); if the file "
                                    f"is yours, raise it with {BUDGET_VARIABLE}")
    except zlib.error as err:
        raise Refused(f"{path} is a deflated DICOM whose data set does not inflate ({err})") from None
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    write_file_meta_info(head, meta, enforce_standard=False)
    whole = b"".join([b"\0" * 128, b"DICM", head.getvalue(), *parts])
    parts.clear()
    return io.BytesIO(whole)


@contextlib.contextmanager
def _pydicom_quiet() -> Iterator[None]:
    """pydicom logs a decoder's failure at ERROR with its traceback before raising; the raise is what the caller
    reports (one line in skipped.csv), so the log record would only put a traceback on the user's console."""
    logger = logging.getLogger("pydicom")  # its modules' loggers inherit this level
    before = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(before)


def _integer(ds: Any, keyword: str, path: Path, default: int | None = None) -> int:
    """A whole number of the image pixel module, at least 1 (0 rows or 0 bits is no image)."""
    value = ds.get(keyword)
    if value in (None, "") and default is not None:
        return default
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1:
        raise Refused(f"{path} has no usable DICOM {keyword} (expected a whole number of at least 1); it is not "
                      "an image medclass can decode")
    return number


def _grey_levels(ds: Any) -> Transform | None:
    """The elementwise mapping from stored values to what is shown: the modality LUT or rescale slope/intercept,
    then the window or VOI LUT (pydicom's own functions, applied a block at a time by `to_uint8`)."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    window = ("WindowCenter" in ds or "VOILUTSequence" in ds) and ds.get("PhotometricInterpretation", "") in (
        "MONOCHROME1", "MONOCHROME2")
    if not (window or "ModalityLUTSequence" in ds or ("RescaleSlope" in ds and "RescaleIntercept" in ds)):
        return None
    if window:
        return lambda block: apply_voi_lut(apply_modality_lut(block, ds), ds)
    return lambda block: apply_modality_lut(block, ds)


def read_dicom(path: Path) -> np.ndarray:
    """A DICOM file as uint8 (H, W) or (H, W, 3): the middle frame of a multi-frame series, through its rescale and
    window, MONOCHROME1 inverted; the header is held to the budget before the frame is decoded."""
    pydicom = require("pydicom", "dicom", f"reading the DICOM file {path}")
    from pydicom.filereader import _read_file_meta_info, read_preamble  # pydicom>=3.0: the meta alone, no inflating
    from pydicom.pixels import pixel_array

    path = Path(path)
    budget = budget_bytes()
    with open_image_file(path) as raw, pillow_limits(path, budget), _pydicom_quiet():
        fp = HeaderBudget(raw, path, budget)
        with fp.refusal():
            read_preamble(fp, force=False)  # type: ignore[arg-type]  # not DICOM: InvalidDicomError, unreadable
            meta = _read_file_meta_info(fp)  # type: ignore[arg-type]
        if str(meta.get("TransferSyntaxUID", "")) == DEFLATED:
            fp = HeaderBudget(_inflated(fp, path, meta, budget), path, budget)  # type: ignore[arg-type]
        fp.seek(0)
        with fp.refusal():
            ds = pydicom.dcmread(fp, stop_before_pixels=True, defer_size=DEFER, specific_tags=list(DICOM_TAGS))
        rows, columns = _integer(ds, "Rows", path), _integer(ds, "Columns", path)
        samples, bits = _integer(ds, "SamplesPerPixel", path, 1), _integer(ds, "BitsAllocated", path)
        frames = _integer(ds, "NumberOfFrames", path, 1)
        per_sample = max(1, -(-bits // 8))
        check_budget(path, f"{rows} x {columns} pixels x {samples} samples x {per_sample} bytes (one frame"
                     f"{f' of {frames}' if frames > 1 else ''})", rows * columns * samples * per_sample, budget)
        fp.cap = None  # the header is within its cap; the frame is within the budget
        fp.seek(0)
        try:
            pixels = pixel_array(fp, index=frames // 2 if frames > 1 else None)  # type: ignore[arg-type]
        except RuntimeError as err:  # "Unable to decode ... all available plugins:\n  pydicom: ...": one line
            raise RuntimeError(" ".join(str(err).split())) from None
    image = to_uint8(pixels, _grey_levels(ds) if samples == 1 else None)
    if ds.get("PhotometricInterpretation", "") == "MONOCHROME1":
        image = 255 - image
    return image


def read_image(path: Path) -> np.ndarray:
    """uint8 (H, W, 1) or (H, W, 3); raises on anything unreadable (the caller lists it), `ImageTooLarge` for an
    image over the budget."""
    path = Path(path)
    array = read_dicom(path) if path.suffix.lower() in DICOM_SUFFIXES else read_pil(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] == 3 and np.array_equal(array[..., 0], array[..., 1]) and np.array_equal(
        array[..., 1], array[..., 2]
    ):
        array = array[..., :1]  # RGB files of grey scans are grey
    return np.ascontiguousarray(array)
