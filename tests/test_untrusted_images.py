"""Image files from strangers (issue 35, item 4): a pixel budget checked from the header, before decoding.

The builders at the top make the hostile files of issue 35's "Why" table (and their kin for every format):
small on disk, gigabytes once decoded. `build_attacks` returns them all, each with what the refusal must
say; the lead's attack table and the measurements in the report use the same builders.
"""

from __future__ import annotations

import csv
import io
import json
import os
import struct
import subprocess
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from medclass.untrusted.images import (
    BUDGET_VARIABLE,
    CHUNK,
    BudgetSetting,
    ImageTooLarge,
    budget_bytes,
    read_image,
    to_uint8,
)
from medclass.utils.errors import MedclassError
from medclass.utils.extras import MissingExtra

from .conftest import run_script

ROOT = Path(__file__).resolve().parents[1]
MiB = 2**20


# -- hostile image files -------------------------------------------------------------------------------------------
@dataclass
class ImageAttack:
    name: str
    path: Path
    declared_bytes: int  # what decoding would allocate for its pixels (before any conversion)
    expect: str = "image budget"  # in the refusal


def _raw_deflate_of_zeros(header: bytes, zeros: int) -> bytes:
    """A raw deflate stream of `header` then `zeros` zero bytes, built in milliseconds: each 1 MiB block of
    zeros compresses to the same ~1 KB after a full flush, so the block is made once and repeated."""
    def block(data: bytes) -> bytes:
        co = zlib.compressobj(9, zlib.DEFLATED, -15)
        return co.compress(data) + co.flush(zlib.Z_FULL_FLUSH)
    whole, rest = divmod(zeros, MiB)
    parts = [block(header), block(bytes(MiB)) * whole, block(bytes(rest)) if rest else b""]
    return b"".join(parts) + zlib.compressobj(9, zlib.DEFLATED, -15).flush()


def float_tiff(path: Path, side: int = 13_300, rows_per_strip: int = 64) -> ImageAttack:
    """A float32 (mode F) TIFF of side x side, deflate-compressed zeros: every strip points at the same ~3 KB
    of compressed data, so 13,300^2 (707 MB of pixels, just under Pillow's own pixel limit) is a few KB."""
    strips = -(-side // rows_per_strip)
    data = zlib.compress(bytes(side * rows_per_strip * 4), 9)
    entries = [(256, 4, 1, side), (257, 4, 1, side), (258, 3, 1, 32), (259, 3, 1, 8), (262, 3, 1, 1),
               (273, 4, strips, None), (277, 3, 1, 1), (278, 4, 1, rows_per_strip), (279, 4, strips, None),
               (339, 3, 1, 3)]
    ifd_at = 8
    ifd_size = 2 + 12 * len(entries) + 4
    offsets_at = ifd_at + ifd_size
    counts_at = offsets_at + 4 * strips
    data_at = counts_at + 4 * strips
    ifd = struct.pack("<H", len(entries))
    for tag, kind, count, value in entries:
        if tag == 273:
            ifd += struct.pack("<HHII", tag, kind, count, offsets_at)
        elif tag == 279:
            ifd += struct.pack("<HHII", tag, kind, count, counts_at)
        elif kind == 3:
            ifd += struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            ifd += struct.pack("<HHII", tag, kind, count, value)
    ifd += struct.pack("<I", 0)
    path.write_bytes(b"II*\0" + struct.pack("<I", ifd_at) + ifd + struct.pack(f"<{strips}I", *[data_at] * strips)
                     + struct.pack(f"<{strips}I", *[len(data)] * strips) + data)
    return ImageAttack("float32 TIFF 13,300^2" if side == 13_300 else f"float32 TIFF {side}^2", path,
                       side * side * 4)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def huge_png(path: Path, width: int = 100_000, height: int = 100_000) -> ImageAttack:
    """A grey PNG whose header declares width x height (10^10 pixels); its data is a few zero rows."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(bytes((width + 1) * 4), 9)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat)
                     + _png_chunk(b"IEND", b""))
    return ImageAttack(f"PNG header {width}x{height}", path, width * height)


def huge_jpeg(path: Path, width: int = 65_000, height: int = 65_000) -> ImageAttack:
    """A real 16 x 16 RGB JPEG whose frame header (SOF0) is edited to declare width x height."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (120, 30, 200)).save(buffer, "JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5: sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return ImageAttack(f"JPEG header {width}x{height}", path, width * height * 4)


def _dicom_meta(transfer_syntax: str) -> object:
    from pydicom.dataset import FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"  # secondary capture
    meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    meta.TransferSyntaxUID = transfer_syntax
    return meta


def _pixel_module(ds: object, rows: int, columns: int, bits: int = 8, frames: int = 1, samples: int = 1) -> None:
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.Modality = "OT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = rows, columns, samples
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if samples > 1:
        ds.PlanarConfiguration = 0
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
    if frames > 1:
        ds.NumberOfFrames = frames


def rle_dicom(path: Path, side: int = 46_000) -> ImageAttack:
    """An RLE Lossless DICOM declaring side x side 8-bit pixels (2 GB); its one fragment is a 64-byte RLE header
    and one run: 654 bytes on disk."""
    from pydicom.dataset import Dataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    ds = Dataset()
    ds.file_meta = _dicom_meta(RLELossless)
    _pixel_module(ds, side, side)
    frame = struct.pack("<16I", 1, 64, *[0] * 14) + b"\x81\x00"  # one segment: a run of 128 zeros
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    return ImageAttack(f"RLE DICOM {side}^2", path, side * side)


def deflated_dicom(path: Path, pixel_bytes: int = 2**30, columns: int = 32_768) -> ImageAttack:
    """A Deflated Explicit VR Little Endian DICOM holding `pixel_bytes` of 8-bit pixels (1 GiB by default), all
    zeros: about 1 MB on disk. Reading any of its header means inflating the whole data set first."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    ds = Dataset()
    _pixel_module(ds, pixel_bytes // columns, columns)
    body = DicomBytesIO()
    body.is_little_endian, body.is_implicit_VR = True, False
    write_dataset(body, ds)
    header = body.getvalue() + struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OB", 0, pixel_bytes)
    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, _dicom_meta(DeflatedExplicitVRLittleEndian))
    path.write_bytes(out.getvalue() + _raw_deflate_of_zeros(header, pixel_bytes))
    return ImageAttack(f"deflated DICOM, {pixel_bytes / MiB:g} MiB of pixels", path, pixel_bytes,
                       expect="inflates past")


def build_attacks(folder: Path) -> list[ImageAttack]:
    """Every hostile image of this file: issue 35's three rows, then a PNG and a JPEG header of the same kind."""
    folder.mkdir(parents=True, exist_ok=True)
    return [float_tiff(folder / "float.tif"), deflated_dicom(folder / "deflated.dcm"), rle_dicom(folder / "rle.dcm"),
            huge_png(folder / "huge.png"), huge_jpeg(folder / "huge.jpg")]


def sequence_bomb_dicom(path: Path, items: int) -> ImageAttack:
    """A tiny 8 x 8 DICOM whose header first holds a private sequence of `items` empty items of undefined length
    (16 bytes each): pydicom builds a Python object per item, 50-200 us and ~0.6 KB apiece."""
    from pydicom.dataset import Dataset
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info
    from pydicom.uid import ExplicitVRLittleEndian

    out = DicomBytesIO()
    out.is_little_endian, out.is_implicit_VR = True, False
    out.write(b"\0" * 128 + b"DICM")
    write_file_meta_info(out, _dicom_meta(ExplicitVRLittleEndian))
    out.write(struct.pack("<HH2sHI", 0x0009, 0x1010, b"SQ", 0, 0xFFFFFFFF))
    out.write((struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF) + struct.pack("<HHI", 0xFFFE, 0xE00D, 0)) * items)
    out.write(struct.pack("<HHI", 0xFFFE, 0xE0DD, 0))
    ds = Dataset()
    _pixel_module(ds, 8, 8)
    ds.PixelData = bytes(64)
    write_dataset(out, ds)
    path.write_bytes(out.getvalue())
    return ImageAttack(f"DICOM header of {items:,} empty sequence items", path, 64, expect="DICOM header")


def native_dicom(path: Path, pixels: np.ndarray, photometric: str = "MONOCHROME2", **elements: object) -> Path:
    """An uncompressed DICOM of `pixels` ((frames,) rows, columns) with the given extra elements."""
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    ds = Dataset()
    ds.file_meta = _dicom_meta(ExplicitVRLittleEndian)
    frames = pixels.shape[0] if pixels.ndim == 3 else 1
    _pixel_module(ds, pixels.shape[-2], pixels.shape[-1], bits=pixels.dtype.itemsize * 8, frames=frames)
    ds.PhotometricInterpretation = photometric
    for key, value in elements.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


# -- measuring a read in a fresh process ---------------------------------------------------------------------------
CHILD = """
import json, resource, sys, time
limit = 3 * 2**30  # an address-space cap: a decoder that does allocate fails here instead of taking the machine
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
from pathlib import Path
from medclass.untrusted.images import read_image
start = time.perf_counter()
try:
    shape, kind, message = list(read_image(Path(sys.argv[1])).shape), "decoded", ""
except BaseException as err:
    shape, kind, message = None, type(err).__name__, str(err)
# VmHWM, not ru_maxrss: after a vfork + exec, ru_maxrss starts from the parent's peak (pytest's, here)
status = Path("/proc/self/status").read_text()
peak_kb = int(status.split("VmHWM:")[1].split()[0])
print(json.dumps({"kind": kind, "message": message, "shape": shape, "seconds": time.perf_counter() - start,
                  "peak_mb": peak_kb / 1024}))
"""


def read_in_child(path: Path, env: dict[str, str] | None = None, timeout: int = 120) -> dict:
    """`read_image(path)` in a fresh Python (only numpy, Pillow and pydicom loaded): what happened, its seconds and
    the process's peak resident memory in MB."""
    proc = subprocess.run([sys.executable, "-c", CHILD, str(path)], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=timeout)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


# -- tests -----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def attacks(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ImageAttack]:
    return {a.path.name: a for a in build_attacks(tmp_path_factory.mktemp("image_attacks"))}


@pytest.mark.parametrize("name", ["float.tif", "deflated.dcm", "rle.dcm", "huge.png", "huge.jpg"])
def test_hostile_images_are_refused_from_the_header(attacks: dict[str, ImageAttack], name: str) -> None:
    """Issue 35's rows (5 KB -> 707 MB of float32, 1 MB -> 1 GiB deflated, 590 bytes -> 2 GB of RLE) and a PNG and
    JPEG header of the same kind: one `ImageTooLarge` line naming the file and the variable, in well under a second
    of decoding and without the gigabytes (before: 2.1 to 3.2 GB peak for the read alone, 9 to 36 s)."""
    attack = attacks[name]
    assert attack.declared_bytes > budget_bytes()
    result = read_in_child(attack.path)
    assert result["kind"] == "ImageTooLarge", result
    assert attack.expect in result["message"] and str(attack.path) in result["message"]
    assert BUDGET_VARIABLE in result["message"] and "\n" not in result["message"]
    # the deflated file inflates at most budget + header cap (260 MiB) before it is refused; the others nothing
    assert result["peak_mb"] < (400 if name == "deflated.dcm" else 150), result
    assert result["seconds"] < 30, result


def test_a_header_of_endless_items_is_cut_off(tmp_path: Path) -> None:
    """A DICOM header is read through a cap on bytes and reads (both a fraction of the budget), so a file of
    empty sequence items cannot cost minutes of parsing; under a 16 MiB budget the cap is 32,768 reads."""
    bomb = sequence_bomb_dicom(tmp_path / "items.dcm", 20_000)  # 320 KB: 40,000 reads
    result = read_in_child(bomb.path, {BUDGET_VARIABLE: "16"})
    assert result["kind"] == "ImageTooLarge" and "DICOM header" in result["message"], result
    assert BUDGET_VARIABLE in result["message"]
    small = sequence_bomb_dicom(tmp_path / "few_items.dcm", 200)  # the same file, of an ordinary size, decodes
    assert read_image(small.path).shape == (8, 8, 1)


def test_ordinary_large_images_decode_within_the_budget(tmp_path: Path) -> None:
    """A 16-bit 4096 x 5120 mammogram (40 MiB), a 300-frame 512 x 512 16-bit CT series (150 MiB, only its middle
    frame is decoded) and a 3000 x 3000 RGB JPEG all decode under the default budget, in bounded memory."""
    rng = np.random.default_rng(0)
    mammo = rng.integers(0, 4096, (4096, 5120), dtype=np.uint16)
    mammo[:8] = 4095
    mammo_path = native_dicom(tmp_path / "mammo.dcm", mammo, "MONOCHROME1", RescaleSlope=1, RescaleIntercept=0)
    series = np.zeros((300, 512, 512), np.uint16)
    series[:, :, :256] = 1000
    series[150, 200:300] = 3000  # only the middle frame has this band
    ct_path = native_dicom(tmp_path / "ct.dcm", series, RescaleSlope=1, RescaleIntercept=-1024)
    rgb_path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 256, (3000, 3000, 3), dtype=np.uint8)).save(rgb_path, quality=90)

    result = read_in_child(mammo_path)
    assert result["kind"] == "decoded" and result["shape"] == [4096, 5120, 1], result
    assert result["peak_mb"] < 400, result  # 40 MiB of pixels: the stretch works in blocks, no float copy
    image = read_image(mammo_path)
    assert (image[:8] == 0).all() and image.max() == 255  # the brightest rows, MONOCHROME1: black

    result = read_in_child(ct_path)
    assert result["kind"] == "decoded" and result["shape"] == [512, 512, 1], result
    assert result["peak_mb"] < 200, result  # one 512 KB frame read, not the 150 MB series
    middle = read_image(ct_path)[..., 0]
    assert (middle[200:300] == 255).all() and (middle[:200, :256] < 255).all() and (middle[:200, 256:] == 0).all()

    result = read_in_child(rgb_path)
    assert result["kind"] == "decoded" and result["shape"] == [3000, 3000, 3], result

    with pytest.MonkeyPatch.context() as env:  # the variable moves the line: 16 MiB refuses the mammogram
        env.setenv(BUDGET_VARIABLE, "16")
        with pytest.raises(ImageTooLarge, match=r"4096 x 5120 pixels x 1 samples x 2 bytes .* 16 MiB image budget"):
            read_image(mammo_path)
        env.setenv(BUDGET_VARIABLE, "41")
        assert read_image(mammo_path).shape == (4096, 5120, 1)


def test_enhanced_multi_frame_headers_are_not_refused(tmp_path: Path) -> None:
    """Per-frame functional groups written with undefined lengths (about 60 reads a frame) fit the header cap for a
    series of hundreds of frames."""
    from pydicom import dcmread
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    path = native_dicom(tmp_path / "enhanced.dcm", np.zeros((300, 16, 16), np.uint16))
    ds = dcmread(path)
    groups = []
    for k in range(300):
        item = Dataset()
        for keyword, element, value in (("PlanePositionSequence", "ImagePositionPatient", [0, 0, k * 0.5]),
                                        ("FrameContentSequence", "InStackPositionNumber", k + 1),
                                        ("PixelValueTransformationSequence", "RescaleIntercept", -1024),
                                        ("FrameVOILUTSequence", "WindowWidth", 400)):
            inner = Dataset()
            setattr(inner, element, value)
            setattr(item, keyword, Sequence([inner]))
        groups.append(item)
    ds.PerFrameFunctionalGroupsSequence = Sequence(groups)
    ds["PerFrameFunctionalGroupsSequence"].is_undefined_length = True
    for item in groups:
        item.is_undefined_length_sequence_item = True
        for element in item:
            element.is_undefined_length = True
    ds.save_as(path)
    assert read_image(path).shape == (16, 16, 1)


def test_a_deflated_dicom_within_the_budget_is_read(tmp_path: Path) -> None:
    """Deflated Explicit VR Little Endian is inflated by the bounded inflater and read like any other DICOM."""
    from pydicom import dcmread
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    pixels = (np.arange(64 * 48, dtype=np.uint16).reshape(64, 48) * 7) % 4000
    plain = native_dicom(tmp_path / "plain.dcm", pixels, RescaleSlope=1, RescaleIntercept=-1024, WindowCenter=500,
                         WindowWidth=1000)
    ds = dcmread(plain)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.save_as(tmp_path / "deflated.dcm", enforce_file_format=True)
    assert dcmread(tmp_path / "deflated.dcm").file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    np.testing.assert_array_equal(read_image(tmp_path / "deflated.dcm"), read_image(plain))


def test_the_stretch_in_blocks_equals_the_whole_array(tmp_path: Path) -> None:
    """The rescale and window applied a block at a time give, to the bit, what pydicom's functions give on the whole
    image (several blocks here, with a window that clips at both ends, then a sigmoid one)."""
    from pydicom import dcmread
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 4096, (1100, 2000), dtype=np.uint16)
    assert pixels.size > 2 * CHUNK
    for function in ("LINEAR", "SIGMOID"):
        path = native_dicom(tmp_path / f"{function}.dcm", pixels, RescaleSlope=0.5, RescaleIntercept=-1024,
                            WindowCenter=0, WindowWidth=1200, VOILUTFunction=function)
        ds = dcmread(path)
        whole = apply_voi_lut(apply_modality_lut(ds.pixel_array, ds), ds)
        low, high = whole.min(), whole.max()
        expected = np.round((whole - low) / (high - low) * 255).astype(np.uint8)
        np.testing.assert_array_equal(read_image(path)[..., 0], expected)


def test_nan_and_infinite_pixels_have_a_defined_grey(tmp_path: Path) -> None:
    """A float image: only finite values set the range; NaN is 0, +inf 255, -inf 0; the input is not modified; an
    image with no finite spread is all 0."""
    values = np.array([[np.nan, np.inf, -np.inf, 10.0], [20.0, 30.0, np.nan, 10.0]], np.float32)
    path = tmp_path / "holes.tif"
    Image.fromarray(values, mode="F").save(path)
    np.testing.assert_array_equal(read_image(path)[..., 0], [[0, 255, 0, 0], [128, 255, 0, 0]])
    copy = values.astype(np.float64)
    to_uint8(copy)
    np.testing.assert_array_equal(copy, values.astype(np.float64))  # NaN == NaN for assert_array_equal
    assert not to_uint8(np.full((3, 3), np.nan)).any() and not to_uint8(np.full((3, 3), 5.0)).any()


def test_files_that_are_not_regular_images_are_refused_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                ) -> None:
    """A FIFO would block the reader for ever, /dev/zero never ends; both are refused from the open descriptor (in a
    child with a timeout, so a regression hangs the child, not the suite). Pillow tries only raster formats."""
    fifo = tmp_path / "scan.png"
    os.mkfifo(fifo)
    (tmp_path / "zero.dcm").symlink_to("/dev/zero")
    for path in (fifo, tmp_path / "zero.dcm"):
        result = read_in_child(path, timeout=30)
        assert result["kind"] == "Refused" and "not a regular file" in result["message"], result
    eps = tmp_path / "figure.png"  # PostScript would go to Ghostscript
    eps.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    with pytest.raises(Exception, match="cannot identify image file"):
        read_image(eps)
    gif = tmp_path / "web.png"  # a GIF behind a PNG name, as downloads often are: read
    Image.new("L", (12, 10), 77).save(gif, format="GIF")
    assert read_image(gif).shape == (10, 12, 1)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1234)  # what another user of Pillow in the process chose
    read_image(gif)
    assert Image.MAX_IMAGE_PIXELS == 1234  # the budget is Pillow's limit only while medclass decodes


@pytest.mark.parametrize("value", ["abc", "0", "-5", "nan", "inf", "1e12", "256MB"])
def test_a_wrong_budget_is_one_line_naming_the_variable(value: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong value is the environment's problem, not one file's: a `MissingExtra`, which every reader that lists
    unreadable files re-raises, so the command stops with one line instead of skipping every image."""
    monkeypatch.setenv(BUDGET_VARIABLE, value)
    with pytest.raises(BudgetSetting, match=rf"^{BUDGET_VARIABLE}=\S+ is not a number of MiB from 1 to") as err:
        budget_bytes()
    assert isinstance(err.value, MissingExtra) and isinstance(err.value, MedclassError) and "\n" not in str(err.value)
    monkeypatch.setenv(BUDGET_VARIABLE, " 1024 ")
    assert budget_bytes() == 1024 * MiB


@pytest.mark.slow  # the same refusals are checked through the readers above; this is the command line end to end
def test_predict_lists_refused_images_and_stops_on_a_wrong_budget(blood_run: Path, tmp_path: Path) -> None:
    """Through predict.py: the hostile files land in skipped.csv with the budget and the variable, the good image
    is predicted, exit 0; a wrong MEDCLASS_MAX_IMAGE_MB is one `error:` line, exit 2, no traceback."""
    ckpt = next((blood_run / "checkpoints").glob("best-*.ckpt"))
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    Image.fromarray(np.full((28, 28, 3), 120, np.uint8)).save(inputs / "good.png")
    rle_dicom(inputs / "rle.dcm")
    float_tiff(inputs / "float.tif")
    proc = run_script("predict.py", f"ckpt_path={ckpt}", f"inputs={inputs}", f"hydra.run.dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    with (tmp_path / "out" / "skipped.csv").open() as f:
        skipped = {Path(row["path"]).name: row["reason"] for row in csv.DictReader(f)}
    assert set(skipped) == {"rle.dcm", "float.tif"}, skipped
    for reason in skipped.values():
        assert reason.startswith("unreadable image (ImageTooLarge: ") and "256 MiB image budget" in reason
        assert BUDGET_VARIABLE in reason
    with (tmp_path / "out" / "predictions.csv").open() as f:
        assert [Path(row["path"]).name for row in csv.DictReader(f)] == ["good.png"]

    proc = run_script("predict.py", f"ckpt_path={ckpt}", f"inputs={inputs}", f"hydra.run.dir={tmp_path / 'bad'}",
                      env={BUDGET_VARIABLE: "lots"})
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    errors = [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and f"{BUDGET_VARIABLE}=lots is not a number of MiB" in errors[0], proc.stderr[-2000:]
