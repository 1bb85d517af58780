"""A fuzzer, not a list (issue 35, item 9): hostile variants generated from the schemas themselves.

For every file format medclass reads as data (a checkpoint's description, a safetensors export's JSON, the
operating file, an ONNX file's metadata, a prepared stream's medclass.json and index.json), tests/fuzz.py
walks the schema the reader applies to a valid document (built from a real checkpoint of a short run) and
replaces every field with every hostile value of its kind. In-process, every variant must end in one
`MedclassError` line (never a TypeError or a traceback) that quotes no control character and not the long
string, and a variant the field's Spec refuses must be refused naming the field. Through the command line, a
sample of variants written as real files must end eval.py / predict.py with exit code 2, one `error:` line
and no traceback.

Run with `-s` to see the number of variants per format (the lead's table); `VARIANTS` holds them too.
"""

from __future__ import annotations

import copy
import json
import math
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from medclass.data import registry as data_registry
from medclass.data import stream
from medclass.data.folder import FolderDataModule
from medclass.model import registry as model_registry
from medclass.module import operating_file
from medclass.module.checkpoint import load_classifier, model_meta, read_export
from medclass.module.hparams import FIELDS, validate
from medclass.module.onnx import read_meta
from medclass.tasks.export import export_safetensors
from medclass.tasks.train import train
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

from . import fuzz
from .conftest import FAST, clean_tree, compose_train, run_script

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
VARIANTS: dict[str, int] = {}  # format -> number of hostile variants run in-process (filled as the tests run)
MIN_VARIANTS = 150  # a walker that stopped seeing a schema would generate far fewer
OPERATING = {"checkpoint": "best.ckpt", "fitted_on": "val", "split_key": "0123456789ab", "temperature": 1.5,
             "thresholds": {"youden": 0.4, "sensitivity_0.9": 0.2},
             "abstain": {"threshold": 0.7, "target": "accuracy", "value": 0.9, "val_coverage": 0.8,
                         "val_accuracy": 0.92, "reached": True}}


@dataclass
class Base:
    """The valid documents of one real short run, and the files the readers need beside them."""

    ckpt: dict[str, Any]
    ckpt_path: Path
    images: Path
    export: Path  # model.safetensors, with model.json beside it
    onnx_meta: dict[str, Any]
    prepared: Path  # the same images prepared as a stream (medclass-prepare)


@pytest.fixture(scope="module", autouse=True)
def one_thread() -> Iterator[None]:
    """Thousands of small tensor checks: torch's thread pool only waits for a busy second core between them."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    tmp = tmp_path_factory.mktemp("fuzz")
    root = clean_tree(tmp / "data", classes=("a", "b"), per_class=12)
    train(compose_train(["data=folder", f"data.root={root}", "data.image_size=16", "data.group_by='(img[0-9])'",
                         "model.widths=[4,8]", "model.hidden=8", *FAST, *QUIET], tmp / "run"))  # a 5 KB model
    ckpt_path = next((tmp / "run" / "checkpoints").glob("best-*.ckpt"))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    module = load_classifier(ckpt_path)
    export = export_safetensors(module, tmp / "export" / "model.safetensors", operating_file.check(OPERATING, "x"),
                                {"test/acc": 0.75, "test/auc": 0.8}, str(ckpt_path))
    onnx_meta = {**model_meta(module), **operating_file.check(OPERATING, "base")}
    data = FolderDataModule(root=str(root), image_size=16, num_workers=0, split_seed=0,
                            split_dir=str(tmp / "splits"), cache_dir=str(tmp / "cache"))
    stream.prepare(data, tmp / "prepared", workers=1, chunk_bytes="1KB")  # several chunks per split
    return Base(ckpt, ckpt_path, root, export, onnx_meta, tmp / "prepared")


# -- the formats: a valid document and the reader a stranger's file goes through --------------------------------
def write_json(path: Path, document: Any) -> None:
    """A variant as a file, as a stranger would write it (NaN and Infinity as Python's json writes them)."""
    path.write_text(json.dumps(document), encoding="utf-8")


def formats(base: Base, tmp: Path) -> dict[str, tuple[Any, Callable[[Any], Any]]]:
    """Each format: its valid document and its reader (a function of the document that raises or returns)."""
    built: set[str] = set()

    def checkpoint(doc: Any) -> Any:
        """The description; then, once per distinct network and data_info it accepts, the whole file as eval.py
        reads it (weights checked against the network, built, loaded, probed). The other fields build nothing."""
        hparams = validate(doc, "checkpoint fuzz.ckpt")
        key = repr((hparams["net"], hparams["data_info"]))
        if key not in built:
            built.add(key)
            torch.save({**base.ckpt, "hyper_parameters": doc}, tmp / "fuzz.ckpt")
            load_classifier(tmp / "fuzz.ckpt")
        return hparams

    export_dir = tmp / "export"
    shutil.copytree(base.export.parent, export_dir)
    weights = export_dir / base.export.name

    def export(doc: Any) -> Any:
        write_json(export_dir / "model.json", doc)
        return read_export(weights)

    operating_ckpt = tmp / "operating" / "best.ckpt"
    operating_ckpt.parent.mkdir()

    def operating(doc: Any) -> Any:
        write_json(operating_file.path_for(operating_ckpt), doc)
        return operating_file.load(operating_ckpt)

    prepared = {name: tmp / name for name in ("stream_meta", "stream_index")}
    for folder in prepared.values():
        shutil.copytree(base.prepared, folder)

    def prepared_reader(folder: Path, name: str) -> Callable[[Any], Any]:
        def read(doc: Any) -> Any:  # the variant written in place of one file of the prepared folder
            write_json(folder / name, doc)
            return stream.StreamDataModule(input_dir=str(folder)).read_meta()

        return read

    return {
        "checkpoint": (base.ckpt["hyper_parameters"], checkpoint),
        "export": (json.loads((export_dir / "model.json").read_text()), export),
        "operating": (OPERATING, operating),
        "onnx_meta": (base.onnx_meta, lambda doc: read_meta(json.dumps(doc), "onnx_path=m.onnx (metadata)")),
        "stream_meta": (json.loads((base.prepared / stream.META).read_text()),
                        prepared_reader(prepared["stream_meta"], stream.META)),
        "stream_index": (json.loads((base.prepared / "train" / "index.json").read_text()),
                         prepared_reader(prepared["stream_index"], "train/index.json")),
    }


# -- what every refusal must look like ---------------------------------------------------------------------------
def fault(variant: fuzz.Variant, err: BaseException | None) -> str | None:
    """Why the reader's answer to `variant` is wrong, or None."""
    if err is None:
        return "accepted, but its Spec refuses it" if variant.must_refuse else None
    if not isinstance(err, MedclassError):
        return f"{type(err).__name__} instead of one error line: {str(err)[:200]!r}"
    message = str(err)
    if "\n" in message or "\r" in message or s.CONTROL.search(message):
        return f"a message of several lines or with control characters: {message[:300]!r}"
    if fuzz.LONG[:200] in message or len(message) > 2000:
        return f"a message of {len(message)} characters (the value is not shortened)"
    expected = variant.where.rsplit(".", 1)[-1] if variant.label == "removed" else variant.where
    if variant.must_refuse and expected not in message:
        return f"refused without naming {expected!r}: {message[:300]!r}"
    return None


def run_variants(document: Any, reader: Callable[[Any], Any], shallow: frozenset[str] = frozenset()
                 ) -> tuple[int, list[str]]:
    """Every hostile variant of `document` through `reader`: (how many, what went wrong)."""
    count, faults = 0, []
    for variant in fuzz.variants(document, reader, shallow=shallow):
        count += 1
        try:
            reader(variant.document)
            err = None
        except Exception as caught:  # noqa: BLE001 - any exception that is not one error line is the finding
            err = caught
        problem = fault(variant, err)
        if problem:
            faults.append(f"{variant.path or '(top)'} = {variant.label}: {problem}")
    return count, faults


def other_descriptions(hparams: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The run's description with each other registered network (`{"arch": name}`) and each other data kind (its
    required fields, made from the record its registry applies): so every network's and every data kind's options
    are walked, not only those of the run's own."""
    out = {}
    for field, registry, key in (("net", model_registry.ARCHITECTURES, "arch"), ("data_cfg", data_registry.KINDS,
                                                                                "kind")):
        for name in registry:
            if name == hparams[field][key]:
                continue
            with s.trace() as roots:
                try:
                    FIELDS[field]({key: name}, field)
                except s.Invalid:
                    pass
            record = next(c.spec for c in fuzz.calls(roots) if c.where == field and c.spec.kind == "record")
            out[f"{field}={name}"] = {**hparams, field: {key: name, **fuzz.valid(record)}}
    return out


def test_every_network_and_data_kind_is_walked(base: Base) -> None:
    """The other networks and data kinds than the run's: each description validates, then every hostile variant of
    it is one error line (the description only: nothing is built from these)."""
    total, faults = 0, []
    for label, hparams in other_descriptions(base.ckpt["hyper_parameters"]).items():
        validate(hparams, label)
        others = frozenset(key for key in hparams if key != label.split("=")[0])  # walked in full by `checkpoint`
        count, found = run_variants(hparams, lambda doc, label=label: validate(doc, f"checkpoint {label}"), others)
        total += count
        faults += [f"{label}: {fault}" for fault in found]
    VARIANTS["checkpoint (other networks and data kinds)"] = total
    print(f"\nfuzz other networks and data kinds: {total} hostile variants, {len(faults)} faults")
    assert not faults, f"{len(faults)} of {total} variants misbehave:\n" + "\n".join(faults[:40])


FORMATS = ["checkpoint", "export", "operating", "onnx_meta", "stream_meta", "stream_index"]
# an export's description is a checkpoint's (the same `validate`, walked in full above): by default only the header
# and `hyper_parameters` itself are varied there (each accepted variant costs a network built on the meta device)
SHALLOW = {"export": frozenset({"hyper_parameters"})}


@pytest.mark.parametrize("name", [*FORMATS, pytest.param("export_deep", marks=pytest.mark.slow)])
def test_every_hostile_variant_of_every_field_is_one_error_line(base: Base, tmp_path: Path, name: str) -> None:
    document, reader = formats(base, tmp_path)[name.removesuffix("_deep")]
    reader(copy.deepcopy(document))  # the base is valid: every refusal below is the variant's doing
    start = time.perf_counter()
    count, faults = run_variants(document, reader, SHALLOW.get(name, frozenset()))
    VARIANTS[name] = count
    print(f"\nfuzz {name}: {count} hostile variants, {len(faults)} faults, {time.perf_counter() - start:.1f} s")
    assert count >= MIN_VARIANTS, f"{name}: only {count} variants; the walker no longer sees the schema"
    assert not faults, f"{name}: {len(faults)} of {count} variants misbehave:\n" + "\n".join(faults[:40])


def test_the_walker_sees_every_field_a_schema_names(base: Base, tmp_path: Path) -> None:
    """The places walked blind are only those a hand-written check guards (listed, for the report); every field
    of every record reached is walked with its own Spec."""
    unseen = {}
    for name in FORMATS:
        (tmp_path / name).mkdir()
        unseen[name] = fuzz.unseen_places(*formats(base, tmp_path / name)[name])
    print("\nunseen by any Spec:", json.dumps({k: sorted(v) for k, v in unseen.items()}, indent=1))
    registries = {"net.arch", "data_cfg.kind"}  # read by `describe` before its record
    assert unseen["checkpoint"] == registries
    assert unseen["export"] == {f"hyper_parameters.{p}" for p in registries}
    assert unseen["operating"] == set() and unseen["onnx_meta"] == set()
    assert "rows" in unseen["stream_meta"] and not any(p.startswith("info") for p in unseen["stream_meta"])
    assert not any(p.startswith("chunks") for p in unseen["stream_index"])


def test_a_large_prepared_table_is_not_refused_for_its_size() -> None:
    """A prepared stream of 250,000 images holds 1.25 million values in its medclass.json: the walk for `${` takes
    them (it refused more than a million before). A pickled tree that shares one list along 64 levels (2**64
    values to a check that walks it) or contains itself is refused at once, and a list shared twice (mean and std
    saved once, referenced twice) is fine."""
    rows = [[i, f"images/{i}.png", "a", "train"] for i in range(250_000)]
    s.no_interpolation({"rows": rows}, "")
    with pytest.raises(s.Invalid, match=r"^rows\[3\]\[1\]='\$\{oc.env:HOME\}'"):
        s.no_interpolation({"rows": [*rows[:3], [3, "${oc.env:HOME}", "a", "train"]]}, "")
    shared: list[Any] = [1]
    for _ in range(64):
        shared = [shared, shared]
    with pytest.raises(s.Invalid, match="holds more than 50,000,000 values"):
        s.no_interpolation({"scheduler": shared}, "")
    loop: list[Any] = []
    loop.append(loop)
    with pytest.raises(s.Invalid, match="contains itself"):
        s.no_interpolation({"scheduler": loop}, "")
    mean = [0.5]
    s.no_interpolation({"data_info": {"mean": mean}, "data_cfg": {"mean": mean}}, "")


# -- the command line, for a sample --------------------------------------------------------------------------------
def _set(document: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A deep copy of `document` with the field at `path` (dots and [i]) set to `value`."""
    out = copy.deepcopy(document)
    keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
    node = out
    for key in keys[:-1]:
        node = node[key]
    node[keys[-1]] = value
    return out


# (file kind, field, hostile value, command); the first (a checkpoint, eval) and the sixth (an operating file,
# predict) run by default, the rest with -m slow: every variant already goes through the readers above
CLI_SAMPLE = [
    ("ckpt", "net.arch", {"name": "cnn"}, "eval"),
    ("ckpt", "data_info.image_size", 10**30, "predict"),
    ("ckpt", "data_info.class_names[0]", fuzz.CONTROL, "eval"),
    ("safetensors", "hyper_parameters.data_info.mean[0]", math.nan, "predict"),
    ("safetensors", "metrics.test/acc", fuzz.LONG, "eval"),
    ("operating", "temperature", math.inf, "predict"),
    ("ckpt", "data_cfg.kind", ["folder"], "eval"),
    ("ckpt", "compile", {"mode": fuzz.CONTROL}, "eval"),
    ("safetensors", "hyper_parameters.net.widths", [], "predict"),
    ("operating", "thresholds", {"${oc.env:HOME}": 0.5}, "eval"),
    ("operating", "abstain.threshold", True, "predict"),
]


def write_variant(base: Base, tmp: Path, kind: str, path: str, value: Any) -> Path:
    """The model file to pass as ckpt_path=, with the hostile field written into the file of `kind`."""
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "ckpt":
        ckpt = {**base.ckpt, "hyper_parameters": _set(base.ckpt["hyper_parameters"], path, value)}
        torch.save(ckpt, tmp / "fuzz.ckpt")
        return tmp / "fuzz.ckpt"
    if kind == "safetensors":
        shutil.copy(base.export, tmp / "model.safetensors")
        export = json.loads(base.export.with_suffix(".json").read_text())
        write_json(tmp / "model.json", _set(export, path, value))
        return tmp / "model.safetensors"
    shutil.copy(base.ckpt_path, tmp / "best.ckpt")
    write_json(operating_file.path_for(tmp / "best.ckpt"), _set(OPERATING, path, value))
    return tmp / "best.ckpt"


@pytest.mark.parametrize(("kind", "path", "value", "command"), [
    pytest.param(*case, id=f"{case[0]}-{case[1]}-{case[3]}", marks=[] if i in (0, 5) else [pytest.mark.slow])
    for i, case in enumerate(CLI_SAMPLE)])
def test_a_hostile_field_ends_the_command_with_one_error_line(base: Base, tmp_path: Path, kind: str, path: str,
                                                              value: Any, command: str) -> None:
    model = write_variant(base, tmp_path / "model", kind, path, value)
    inputs = [f"inputs={base.images}"] if command == "predict" else []
    proc = run_script(f"{command}.py", f"ckpt_path={model}", *inputs, f"hydra.run.dir={tmp_path / 'run'}")
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr + proc.stdout and fuzz.LONG[:200] not in proc.stderr
    assert not s.CONTROL.search(errors[0]) and path.rsplit(".", 1)[-1] in errors[0], errors[0]
