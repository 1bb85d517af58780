"""Every stranger's-input attack of issue 35 through the command line, with its time and peak memory.

    python tools/stranger_check.py [--keep DIR] [--only SUBSTRING ...]

Trains one short run on a synthetic class-per-folder set, builds each hostile input from it (model
files, ONNX graphs, images, manifests, prepared streams, sweep and run folders) in a fresh folder,
runs the command a user would type, and prints one row per attack: exit code, `error:` lines,
whether a traceback appeared, whether the victims survived and no secret reached the output or
the run folder, seconds, and the peak resident memory of the command's process tree
(`os.wait4`). A row is clean when the command ends by itself within 60 s and 3 GiB with exit 2 and
one `error:` line (or exit 0 where the input is only reported, as gather's failed jobs), nothing
leaked, and every victim intact. Exit code 1 when any row is not clean. A check for people, not a
test: the suite runs the same classes of input in-process and on the command line
(tests/test_untrusted_*.py, tests/test_fuzz_schemas.py).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.conftest import clean_tree  # noqa: E402

LIMIT_S, LIMIT_MB = 60, 3 * 1024
CANARY = "MEDCLASS_CANARY"
CANARY_VALUE = "canary-7f3e9a1c-do-not-print"


@dataclass
class Case:
    """One attack as typed: the script and its arguments, what must survive and what must not show."""

    name: str
    script: str
    args: list[str]
    victims: list[Path] = field(default_factory=list)  # each holds "precious" and must keep it
    secrets: list[str] = field(default_factory=list)  # must appear in no output and no file of `out`
    ok_exit: tuple[int, ...] = (2,)
    out: Path | None = None  # the command's run folder (searched for secrets)
    raw_escape: bool = False  # the output must hold no raw ESC character


@dataclass
class Ctx:
    work: Path
    root: Path  # the tiny class-per-folder data set
    ckpt: Path  # the base checkpoint
    base: dict[str, Any]  # its content
    run: Path  # the base run folder
    n: int = 0

    def folder(self, name: str) -> Path:
        self.n += 1
        path = self.work / f"{self.n:02d}-{name}"
        path.mkdir(parents=True)
        return path


def victim(folder: Path, name: str = "victim.txt") -> Path:
    path = folder / name
    path.write_text("precious")
    return path


def shadow_line() -> str:
    try:
        return Path("/etc/shadow").read_text().splitlines()[0][:24]
    except (OSError, IndexError):
        return ""


def edited(ctx: Ctx, folder: Path, edit: Callable[[dict[str, Any]], None], name: str = "model.ckpt") -> Path:
    ckpt = copy.deepcopy(ctx.base)
    edit(ckpt)
    path = folder / name
    torch.save(ckpt, path)
    return path


def head_key(state: dict[str, torch.Tensor]) -> str:
    return [k for k, v in state.items() if k.startswith("net.") and v.ndim == 2][-1]


# -- model files ----------------------------------------------------------------------------------
def manifest_at(target: str) -> Callable[[dict[str, Any]], None]:
    def edit(ckpt: dict[str, Any]) -> None:
        cfg = ckpt["hyper_parameters"]["data_cfg"]
        cfg.update(kind="manifest", manifest=target, root=None, test_root=None)
    return edit


def a_manifest_environ(ctx: Ctx) -> Case:
    f = ctx.folder("manifest-environ")
    return Case("model file names manifest=/proc/self/environ", "eval.py",
                [f"ckpt_path={edited(ctx, f, manifest_at('/proc/self/environ'))}"], secrets=[CANARY_VALUE],
                out=f / "out")


def a_manifest_shadow(ctx: Ctx) -> Case:
    f = ctx.folder("manifest-shadow")
    return Case("model file names manifest=/etc/shadow", "eval.py",
                [f"ckpt_path={edited(ctx, f, manifest_at('/etc/shadow'))}"], secrets=[s for s in [shadow_line()] if s],
                out=f / "out")


def a_safetensors_environ(ctx: Ctx) -> Case:
    f = ctx.folder("safetensors-environ")
    proc = subprocess.run([sys.executable, str(ROOT / "export.py"), f"ckpt_path={ctx.ckpt}", "format=safetensors",
                           f"output={f / 'model.safetensors'}", f"hydra.run.dir={f / 'export'}"], cwd=ROOT,
                          capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    meta_path = f / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["hyper_parameters"]["data_cfg"].update(kind="manifest", manifest="/proc/self/environ", root=None,
                                                test_root=None)
    meta_path.write_text(json.dumps(meta))
    return Case("safetensors sidecar names manifest=/proc/self/environ", "eval.py",
                [f"ckpt_path={f / 'model.safetensors'}"], secrets=[CANARY_VALUE], out=f / "out")


def a_root_proc_file(ctx: Ctx) -> Case:
    f = ctx.folder("root-proc")
    ckpt = edited(ctx, f, lambda c: c["hyper_parameters"]["data_cfg"].update(root="/proc"))
    return Case("model file names data root=/proc", "eval.py", [f"ckpt_path={ckpt}"], secrets=[CANARY_VALUE],
                out=f / "out")


def a_root_proc_typed(ctx: Ctx) -> Case:
    f = ctx.folder("root-proc-typed")
    return Case("eval data.root=/proc typed", "eval.py", [f"ckpt_path={ctx.ckpt}", "data.root=/proc"],
                secrets=[CANARY_VALUE], out=f / "out")


def a_resume_delete(ctx: Ctx) -> Case:
    f = ctx.folder("resume-delete")
    precious_dir = f / "precious_dir"
    precious_dir.mkdir()
    inside = victim(precious_dir)
    lone = victim(f, "lone.txt")

    def edit(ckpt: dict[str, Any]) -> None:
        for key, state in ckpt["callbacks"].items():
            if key.startswith("ModelCheckpoint"):
                state.update(dirpath=None, last_model_path=f"local://{precious_dir}",
                             best_model_path=f"local://{lone}", kth_best_model_path=f"local://{lone}",
                             best_k_models={f"local://{lone}": torch.tensor(-1.0),
                                            f"local://{precious_dir}": torch.tensor(-2.0)})
    ckpt = edited(ctx, f, edit)
    return Case("resume: callback state names files to delete", "train.py",
                ["data=folder", f"data.root={ctx.root}", "data.image_size=16", "debug=fast", "trainer.max_epochs=3",
                 f"ckpt_path={ckpt}"], victims=[inside, lone], ok_exit=(0, 2), out=f / "out")


def weights(name: str, edit: Callable[[dict[str, torch.Tensor]], None], script: str = "predict.py"
            ) -> Callable[[Ctx], Case]:
    def build(ctx: Ctx) -> Case:
        f = ctx.folder("".join(c if c.isalnum() else "-" for c in name))
        ckpt = edited(ctx, f, lambda c: edit(c["state_dict"]))
        extra = [f"inputs={ctx.root}"] if script == "predict.py" else []
        return Case(name, script, [f"ckpt_path={ckpt}", *extra], out=f / "out")
    return build


def _head(value: float, dtype: torch.dtype = torch.float32) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = head_key(state)
        state[key] = torch.full_like(state[key], value, dtype=torch.float32).to(dtype)
    return edit


def _all(dtype: torch.dtype, value: float | None = None) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        for k, v in list(state.items()):
            if v.is_floating_point():
                state[k] = (v.double() if value is None else torch.full_like(v, value, dtype=torch.float64)).to(dtype)
    return edit


def _bn_negative(state: dict[str, torch.Tensor]) -> None:
    key = next(k for k in state if k.endswith("running_var"))
    state[key] = -torch.ones_like(state[key])


def _first_conv(value: float) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(state: dict[str, torch.Tensor]) -> None:
        key = next(k for k, v in state.items() if v.ndim == 4)
        state[key] = torch.full_like(state[key], value)
    return edit


def a_arch_dict(ctx: Ctx) -> Case:
    f = ctx.folder("arch-dict")
    ckpt = edited(ctx, f, lambda c: c["hyper_parameters"]["net"].update(arch={"x": 1}))
    return Case("a dict where the arch name belongs", "predict.py", [f"ckpt_path={ckpt}", f"inputs={ctx.root}"],
                out=f / "out")


def a_many_classes(ctx: Ctx) -> Case:
    f = ctx.folder("many-classes")
    images = f / "images"
    for i in range(200):
        (images).mkdir(exist_ok=True)
        shutil.copy(next(ctx.root.rglob("*.png")), images / f"img{i}.png")

    def edit(ckpt: dict[str, Any]) -> None:
        n = 100_000
        ckpt["hyper_parameters"]["data_info"]["class_names"] = [f"class{i:06d}" for i in range(n)]
        ckpt["hyper_parameters"]["data_info"].pop("class_counts", None)
        state = ckpt["state_dict"]
        key = head_key(state)
        state[key] = torch.zeros(n, state[key].shape[1])
        state[key.replace("weight", "bias")] = torch.zeros(n)
    ckpt = edited(ctx, f, edit)
    return Case("checkpoint with 100,000 classes, 200 images", "predict.py", [f"ckpt_path={ckpt}", f"inputs={images}"],
                ok_exit=(0, 2), out=f / "out")


def a_image_size(ctx: Ctx, tta: bool = False) -> Case:
    f = ctx.folder("image-size-2048" + ("-tta" if tta else ""))
    images = f / "images"
    images.mkdir()
    for i, p in enumerate(sorted(ctx.root.rglob("*.png"))[:3]):
        shutil.copy(p, images / f"img{i}.png")

    def edit(ckpt: dict[str, Any]) -> None:
        ckpt["hyper_parameters"]["data_info"]["image_size"] = 2048
        if tta:
            ckpt["hyper_parameters"]["data_info"]["symmetry"] = "invariant"
            ckpt["hyper_parameters"]["tta"] = "auto"
    ckpt = edited(ctx, f, edit)
    return Case(f"image_size=2048, 3 images, batch 32{' , symmetry=invariant TTA' if tta else ''}", "predict.py",
                [f"ckpt_path={ckpt}", f"inputs={images}", "batch_size=32"], ok_exit=(0, 2), out=f / "out")


def a_extra_tensor(ctx: Ctx) -> Case:
    f = ctx.folder("extra-tensor")
    path = f / "model.ckpt"
    ckpt = dict(ctx.base, state_dict={**ctx.base["state_dict"], "net.extra": torch.zeros(600_000_000)})
    torch.save(ckpt, path)
    del ckpt
    subprocess.run(["fallocate", "--dig-holes", str(path)], check=False)
    return Case("checkpoint with an extra 2.4 GB tensor (sparse)", "predict.py",
                [f"ckpt_path={path}", f"inputs={ctx.root}"], out=f / "out")


# -- ONNX -----------------------------------------------------------------------------------------
def exported_onnx(ctx: Ctx) -> Path:
    target = ctx.work / "base.onnx"
    if not target.exists():
        proc = subprocess.run([sys.executable, str(ROOT / "export.py"), f"ckpt_path={ctx.ckpt}", f"output={target}",
                               f"hydra.run.dir={ctx.work / 'export-onnx'}"], cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
    return target


def onnx_attack(name: str, graft: Callable[[Any, Any, str], str]) -> Callable[[Ctx], Case]:
    """`graft(model, helper, output_name)` adds nodes to the exported graph and returns the new output's name."""

    def build(ctx: Ctx) -> Case:
        import onnx
        from onnx import helper

        f = ctx.folder(name.split(" ")[0])
        model = onnx.load(str(exported_onnx(ctx)))
        graph = model.graph
        out = graph.output[0]
        new = graft(model, helper, out.name)
        out.name = new
        path = f / "model.onnx"
        onnx.save(model, str(path))
        return Case(name, "predict.py", [f"onnx_path={path}", f"inputs={ctx.root}"], out=f / "out")
    return build


def _constant_outputs(model: Any, helper: Any, out: str) -> str:
    import onnx

    graph = model.graph
    graph.initializer.extend([helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0]),
                              helper.make_tensor("fake", onnx.TensorProto.FLOAT, [2], [7.5, -3.0])])
    graph.node.extend([helper.make_node("Mul", [out, "zero"], ["zeroed"]),
                       helper.make_node("Add", ["zeroed", "fake"], ["faked"])])
    return "faked"


def _loop(model: Any, helper: Any, out: str) -> str:
    import onnx

    graph = model.graph
    body = helper.make_graph([helper.make_node("Identity", ["cond_in"], ["cond_out"]),
                              helper.make_node("Identity", ["v_in"], ["v_out"])], "body",
                             [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                              helper.make_tensor_value_info("cond_in", onnx.TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_in", onnx.TensorProto.FLOAT, [])],
                             [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
                              helper.make_tensor_value_info("v_out", onnx.TensorProto.FLOAT, [])])
    graph.initializer.extend([helper.make_tensor("trips", onnx.TensorProto.INT64, [], [10**12]),
                              helper.make_tensor("yes", onnx.TensorProto.BOOL, [], [True]),
                              helper.make_tensor("zero", onnx.TensorProto.FLOAT, [], [0.0])])
    graph.node.extend([helper.make_node("Loop", ["trips", "yes", "zero"], ["looped"], body=body),
                       helper.make_node("Add", [out, "looped"], ["after_loop"])])
    return "after_loop"


def _constant_of_shape(model: Any, helper: Any, out: str) -> str:
    import onnx

    graph = model.graph
    graph.initializer.extend([helper.make_tensor("big_shape", onnx.TensorProto.INT64, [2], [40000, 40000])])
    graph.node.extend([helper.make_node("ConstantOfShape", ["big_shape"], ["big"],
                                        value=helper.make_tensor("v", onnx.TensorProto.FLOAT, [1], [0.0])),
                       helper.make_node("ReduceSum", ["big"], ["big_sum"], keepdims=0),
                       helper.make_node("Add", [out, "big_sum"], ["after_big"])])
    return "after_big"


# -- images ---------------------------------------------------------------------------------------
def a_float_tiff(ctx: Ctx) -> Case:
    from PIL import Image

    f = ctx.folder("float-tiff")
    image = Image.fromarray(np.zeros((13_300, 13_300), np.float32), mode="F")
    image.save(f / "big.tif", compression="tiff_adobe_deflate")
    return Case("float32 TIFF of 13,300² (1 MB)", "predict.py", [f"ckpt_path={ctx.ckpt}", f"inputs={f / 'big.tif'}"],
                out=f / "out")


def _dicom(path: Path, rows: int, cols: int, syntax: str, pixels: bytes) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.7"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax or ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns, ds.SamplesPerPixel, ds.PhotometricInterpretation = rows, cols, 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.PixelData = pixels
    ds.save_as(path, enforce_file_format=True)


def a_deflate_dicom(ctx: Ctx) -> Case:
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    f = ctx.folder("deflate-dicom")
    _dicom(f / "big.dcm", 16_384, 32_768, DeflatedExplicitVRLittleEndian, bytes(16_384 * 32_768 * 2))
    return Case("deflated DICOM with 1 GiB of pixels (1 MB)", "predict.py",
                [f"ckpt_path={ctx.ckpt}", f"inputs={f / 'big.dcm'}"], out=f / "out")


def a_rle_dicom(ctx: Ctx) -> Case:
    from pydicom.encaps import encapsulate
    from pydicom.uid import RLELossless

    f = ctx.folder("rle-dicom")
    _dicom(f / "big.dcm", 46_000, 46_000, RLELossless, encapsulate([bytes(64)]))
    return Case("RLE DICOM declaring 46,000² (under 1 KB)", "predict.py",
                [f"ckpt_path={ctx.ckpt}", f"inputs={f / 'big.dcm'}"], out=f / "out")


# -- manifests ------------------------------------------------------------------------------------
def a_wide_manifest(ctx: Ctx, command: str) -> Case:
    f = ctx.folder(f"wide-manifest-{command}")
    images = sorted(ctx.root.rglob("*.png"))
    with (f / "labels.csv").open("w") as out:
        out.write("path,label," + ",".join(f"c{i}" for i in range(1_000_000)) + "\n")
        for p in images:
            out.write(f"{p},{p.parent.name}" + "," * 1_000_000 + "\n")
    args = ([f"ckpt_path={ctx.ckpt}", f"inputs={f / 'labels.csv'}"] if command == "predict" else
            ["data=manifest", f"data.manifest={f / 'labels.csv'}", "data.image_size=16", "debug=fast"])
    return Case(f"manifest with 1,000,000 header columns ({command})", f"{command}.py", args, out=f / "out")


def a_long_field(ctx: Ctx) -> Case:
    f = ctx.folder("long-field")
    images = sorted(ctx.root.rglob("*.png"))
    with (f / "labels.csv").open("w") as out:
        out.write("path,label,note\n")
        for i, p in enumerate(images):
            out.write(f"{p},{p.parent.name},{'x' * 20_000_000 if i == 0 else 'ok'}\n")
    return Case("manifest with a 20 MB field", "train.py",
                ["data=manifest", f"data.manifest={f / 'labels.csv'}", "data.image_size=16", "debug=fast"],
                out=f / "out")


# -- run and sweep folders --------------------------------------------------------------------------
def a_split_newlines(ctx: Ctx) -> Case:
    f = ctx.folder("split-newlines")
    run = f / "run"
    shutil.copytree(ctx.run, run, ignore=shutil.ignore_patterns("cache"))
    with (run / "split.csv").open("wb") as out:
        block = b"\n" * (1 << 20)
        for _ in range(700):
            out.write(block)
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    return Case("run folder's split.csv of 700 MB of newlines (model card)", "eval.py",
                [f"ckpt_path={ckpt}", f"data.root={ctx.root}"], ok_exit=(0, 2), out=f / "out")


def sweep(ctx: Ctx, name: str, jobs: dict[str, Callable[[Path], None]]) -> Path:
    f = ctx.folder(name)
    for job, make in jobs.items():
        (f / job / ".hydra").mkdir(parents=True)
        (f / job / ".hydra" / "overrides.yaml").write_text(f"- seed={job[-1]}\n")
        make(f / job)
    return f


def _metrics(value: str) -> Callable[[Path], None]:
    return lambda d: (d / "metrics.json").write_text(f'{{"test": {{"acc": {value}, "auc": 0.9}}}}')


def a_gather_link(ctx: Ctx, target: str, secret: list[str]) -> Case:
    f = sweep(ctx, "gather-link", {"job1": _metrics("0.9"),
                                   "job2": lambda d: (d / "error.txt").symlink_to(target)})
    return Case(f"gather: error.txt links to {target}", "medclass-gather", [str(f)], secrets=secret, ok_exit=(0, 2))


def a_gather_nan(ctx: Ctx, runs: int) -> Case:
    jobs = {f"job{i}": _metrics("NaN" if i < runs else "0.9") for i in range(runs + 1)}
    f = sweep(ctx, f"gather-nan{runs}", jobs)
    return Case(f"gather: {runs} run(s) with NaN metrics", "medclass-gather", [str(f)], ok_exit=(0, 2))


def a_gather_escape(ctx: Ctx) -> Case:
    def job(d: Path) -> None:
        (d / ".hydra" / "overrides.yaml").write_text('- "model=\\e[2J\\e[31mcleared"\n- seed=1\n')
        _metrics("0.9")(d)
    f = sweep(ctx, "gather-escape", {"job1": job})
    return Case("gather: escape sequences in overrides.yaml", "medclass-gather", [str(f)], ok_exit=(0,),
                raw_escape=True)


# -- streams --------------------------------------------------------------------------------------
def prepared(ctx: Ctx) -> Path:
    out = ctx.work / "prepared"
    if not out.exists():
        proc = subprocess.run([sys.executable, str(ROOT / "prepare.py"), "data=folder", f"data.root={ctx.root}",
                               "data.image_size=8", f"out={out}", "chunk_bytes=1KB",
                               f"hydra.run.dir={ctx.work / 'prepare-run'}"],
                              cwd=ROOT, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(proc.stderr[-2000:])
    return out


def stream_attack(name: str, edit: Callable[[Path], None]) -> Callable[[Ctx], Case]:
    def build(ctx: Ctx) -> Case:
        f = ctx.folder("stream-" + name.split(" ")[0])
        copy_dir = f / "prepared"
        shutil.copytree(prepared(ctx), copy_dir)
        edit(copy_dir / "train")
        return Case(f"stream: {name}", "train.py", ["data=stream", f"data.input_dir={copy_dir}", "debug=fast",
                                                    f"paths.log_dir={f / 'logs'}"],
                    secrets=[s for s in [shadow_line()] if s], out=f / "out")
    return build


def _index(split: Path, change: Callable[[dict[str, Any]], None]) -> None:
    path = split / "index.json"
    index = json.loads(path.read_text())
    change(index)
    path.write_text(json.dumps(index))


def _first_chunk(split: Path) -> Path:
    return split / json.loads((split / "index.json").read_text())["chunks"][0]["filename"]


def _overstate(split: Path) -> None:
    _index(split, lambda i: i["chunks"][0].update(chunk_bytes=i["chunks"][0]["chunk_bytes"] + 4096))


def _fifo(split: Path) -> None:
    chunk = _first_chunk(split)
    chunk.unlink()
    os.mkfifo(chunk)


def _link(target: str) -> Callable[[Path], None]:
    def edit(split: Path) -> None:
        chunk = _first_chunk(split)
        chunk.unlink()
        chunk.symlink_to(target)
    return edit


def _format(split: Path) -> None:
    _index(split, lambda i: i["config"].update(data_format=["numpy:999999" for _ in i["config"]["data_format"]]))


def _dotdot(split: Path) -> None:
    _index(split, lambda i: i["chunks"][0].update(filename=".."))


ATTACKS: dict[str, Callable[[Ctx], Case]] = {
    "manifest-environ": a_manifest_environ,
    "manifest-shadow": a_manifest_shadow,
    "safetensors-environ": a_safetensors_environ,
    "root-proc-file": a_root_proc_file,
    "root-proc-typed": a_root_proc_typed,
    "resume-delete": a_resume_delete,
    "gather-environ": lambda c: a_gather_link(c, "/proc/self/environ", [CANARY_VALUE]),
    "gather-shadow": lambda c: a_gather_link(c, "/etc/shadow", [s for s in [shadow_line()] if s]),
    "gather-nan1": lambda c: a_gather_nan(c, 1),
    "gather-nan2": lambda c: a_gather_nan(c, 2),
    "gather-escape": a_gather_escape,
    "head-3e38": weights("finite head weights of 3e38", _head(3e38)),
    "float64-1e300": weights("float64 weights of 1e300", _all(torch.float64, 1e300)),
    "complex": weights("complex weights", _all(torch.complex64)),
    "int64": weights("int64 weights", _all(torch.int64)),
    "bn-negative": weights("negative BatchNorm running variance", _bn_negative),
    "float8": weights("float8 weights", _all(torch.float8_e4m3fn)),
    "nan-eval": weights("weights that produce NaN (eval)", _first_conv(3e38), script="eval.py"),
    "arch-dict": a_arch_dict,
    "onnx-outputs": onnx_attack("onnx-outputs: ONNX outputs [7.5, -3.0]", _constant_outputs),
    "onnx-loop": onnx_attack("onnx-loop: ONNX Loop of 10^12 iterations", _loop),
    "onnx-constant": onnx_attack("onnx-constant: ONNX ConstantOfShape [40000, 40000]", _constant_of_shape),
    "float-tiff": a_float_tiff,
    "deflate-dicom": a_deflate_dicom,
    "rle-dicom": a_rle_dicom,
    "wide-manifest-predict": lambda c: a_wide_manifest(c, "predict"),
    "wide-manifest-train": lambda c: a_wide_manifest(c, "train"),
    "long-field": a_long_field,
    "many-classes": a_many_classes,
    "image-size": a_image_size,
    "image-size-tta": lambda c: a_image_size(c, tta=True),
    "extra-tensor": a_extra_tensor,
    "split-newlines": a_split_newlines,
    "stream-overstated": stream_attack("overstated chunk size in index.json", _overstate),
    "stream-fifo": stream_attack("fifo chunk", _fifo),
    "stream-devzero": stream_attack("devzero chunk linked to /dev/zero", _link("/dev/zero")),
    "stream-shadow": stream_attack("shadow chunk linked to /etc/shadow", _link("/etc/shadow")),
    "stream-format": stream_attack("format numpy:999999", _format),
    "stream-dotdot": stream_attack("dotdot chunk named ..", _dotdot),
}


def measure(case: Case, env: dict[str, str]) -> tuple[int | None, float, float, str]:
    """(exit code or None when killed at the limit, seconds, peak MiB of the process tree, output)."""
    command = ([shutil.which(case.script) or case.script] if case.script.startswith("medclass-")
               else [sys.executable, str(ROOT / case.script)])
    args = list(case.args) + ([f"hydra.run.dir={case.out}"] if case.out and case.script.endswith(".py") else [])
    log = tempfile.TemporaryFile()
    start = time.perf_counter()
    proc = subprocess.Popen([*command, *args], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    code: int | None = None
    peak = 0.0
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            code = os.waitstatus_to_exitcode(status)
            peak = usage.ru_maxrss / 1024
            break
        if time.perf_counter() - start > 2 * LIMIT_S:
            os.killpg(proc.pid, signal.SIGKILL)
            _, status, usage = os.wait4(proc.pid, 0)
            peak = usage.ru_maxrss / 1024
            break
        time.sleep(0.05)
    with __import__("contextlib").suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # leftover workers
    proc.returncode = code if code is not None else -9
    seconds = time.perf_counter() - start
    log.seek(0)
    return code, seconds, peak, log.read().decode("utf-8", "replace")


def leaked(case: Case, output: str) -> bool:
    if any(secret and secret in output for secret in case.secrets):
        return True
    if case.raw_escape and "\x1b" in output:
        return True
    if case.out and case.out.exists() and case.secrets:
        for path in case.out.rglob("*"):
            if path.is_file() and not path.is_symlink() and path.stat().st_size < 50 * 2**20:
                data = path.read_bytes()
                if any(secret.encode() in data for secret in case.secrets if secret):
                    return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--only", nargs="*", default=[], help="run only the attacks whose key holds one of these")
    args = parser.parse_args()
    work = args.keep or Path(tempfile.mkdtemp(prefix="medclass-stranger-"))
    work.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "MEDCLASS_DATA": "", CANARY: CANARY_VALUE, "PYTHONUNBUFFERED": "1"}
    root = clean_tree(work / "data", classes=("a", "b"), per_class=12)
    run = work / "run"
    proc = subprocess.run([sys.executable, str(ROOT / "train.py"), "data=folder", f"data.root={root}",
                           "data.image_size=16", "debug=fast", f"hydra.run.dir={run}"], cwd=ROOT, capture_output=True,
                          text=True, env=env)
    if proc.returncode:
        print(proc.stderr[-3000:])
        return 1
    ckpt = next((run / "checkpoints").glob("best-*.ckpt"))
    ctx = Ctx(work, root, ckpt, torch.load(ckpt, map_location="cpu", weights_only=True), run)
    print("| attack | command | exit | error lines | traceback | leaked / victim harmed | seconds | peak MiB | "
          "error line |")
    print("|---|---|---|---|---|---|---|---|---|")
    clean = True
    for key, build in ATTACKS.items():
        if args.only and not any(o in key for o in args.only):
            continue
        case = build(ctx)
        code, seconds, peak, output = measure(case, env)
        errors = [line for line in output.splitlines() if line.startswith("error:")]
        trace = "Traceback" in output
        harmed = leaked(case, output) or not all(v.exists() and v.read_text() == "precious" for v in case.victims)
        ok = (code in case.ok_exit and (len(errors) == 1 if code == 2 else len(errors) == 0) and not trace
              and not harmed and seconds <= LIMIT_S and peak <= LIMIT_MB)
        clean &= ok
        line = (errors[0] if errors else output.strip().splitlines()[-1] if output.strip() else "")
        line = line.encode("unicode_escape").decode().replace("|", "\\|")
        print(f"| {case.name} | {case.script.removesuffix('.py')} | {'killed' if code is None else code} | "
              f"{len(errors)} | {'YES' if trace else 'no'} | {'YES' if harmed else 'no'} | {seconds:.1f} | "
              f"{peak:.0f} | {line[:160]}{'…' if len(line) > 160 else ''} |{'' if ok else ' **NOT CLEAN**'}",
              flush=True)
        for big in list(case.out.parent.glob("*.ckpt")) + list(case.out.parent.glob("*/split.csv")) if case.out else []:
            if big.stat().st_size > 100 * 2**20:
                big.unlink()
    verdict = "every attack ended cleanly" if clean else "SOME ATTACKS DID NOT END CLEANLY"
    print(f"\n{verdict} (limits {LIMIT_S} s, {LIMIT_MB} MiB; work folder {work})")
    return 0 if clean else 1


if __name__ == "__main__":
    raise SystemExit(main())
