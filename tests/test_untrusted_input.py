"""Legitimate input is never refused, and a manifest costs bounded memory (issue 35, items 8 and 4).

- The patient regex the docs give for the chest X-rays, `((?:NORMAL2-)?IM-\\d+|person\\d+)`, is the user's own:
  the nested-repeat heuristic reads `(?:`, `(?P<...>`, lookarounds and escapes as what they are, and it is applied
  to a model file's pattern only (the time limit on matching guards both).
- Any text is a class name: a label set with `/`, `.`, `..`, spaces, a leading `=` and non-ASCII goes through
  train, eval, predict, both exports and predict on each export.
- A manifest is read through one bounded CSV reader (`medclass.untrusted.tables`): bytes, columns, line length,
  cell size and cell count, each a one-line error naming the file, line and column, never what a cell holds.

The attack builders are plain functions (`ATTACKS`), so the issue's table can rebuild and measure them.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from medclass.data import ManifestDataModule
from medclass.data import registry as data_registry
from medclass.module import hparams
from medclass.untrusted import tables
from medclass.untrusted.files import Refused
from medclass.utils.errors import MedclassError
from medclass.utils.io import read_cell

from .conftest import compose_train, grey, run_script, save

CANARY = "MEDCLASS_CANARY"
CANARY_VALUE = "canary-input-7c41e2"  # in a manifest's header or cells: must never be printed
ODD_LABELS = ("T1/T2", "grade 2.5", "N/A", "..", "=cmd", "Ödem", "L\\R")
CHEST_REGEX = r"((?:NORMAL2-)?IM-\d+|person\d+)"


# -- builders: data a user legitimately has, and manifests a stranger hands over -----------------------------
def kermany_folder(root: Path, size: int = 16) -> Path:
    """A tiny chest X-ray folder named as Kermany et al.'s (NORMAL/IM-0011-0001.jpeg, NORMAL2-IM-0246-0001.jpeg,
    PNEUMONIA/person101_bacteria_483.jpeg): several images per patient, as the patient regex expects."""
    normal = [f"IM-{11 + p:04d}-{k + 1:04d}.jpeg" for p in range(6) for k in range(1 + p % 2)]
    normal += [f"NORMAL2-IM-{246 + p:04d}-0001.jpeg" for p in range(4)]
    pneumonia = [f"person{101 + p}_{'bacteria' if p % 2 else 'virus'}_{480 + 3 * p + k}.jpeg"
                 for p in range(9) for k in range(1 + p % 2)]
    for c, (name, files) in enumerate((("NORMAL", normal), ("PNEUMONIA", pneumonia))):
        for i, file in enumerate(files):
            save(root / name / file, grey(60 + 100 * c, size=size, seed=100 * c + i), quality=95)
    return root


def labelled_images(root: Path, labels: tuple[str, ...], per_class: int = 10, size: int = 16) -> list[tuple[str, str]]:
    """Images under root/img, each class a brightness; (relative path, label) per image."""
    rows = []
    for c, label in enumerate(labels):
        for i in range(per_class):
            rel = f"img/c{c}_{i}.png"
            save(root / rel, grey(20 + 200 * c // max(len(labels) - 1, 1), size=size, seed=100 * c + i))
            rows.append((rel, label))
    return rows


def write_rows(path: Path, header: list[str], rows: list[list[str]] | list[tuple[str, ...]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def odd_label_manifest(root: Path, labels: tuple[str, ...] = ODD_LABELS, per_class: int = 10) -> Path:
    """Legitimate: a manifest whose labels hold `/`, `.`, `..`, spaces, a leading `=`, non-ASCII, a backslash, with
    a column named `scanner/site` (a subgroup column whose forest plot becomes a file)."""
    rows = [(p, label, f"S{i % 2}/{i % 3}") for i, (p, label) in enumerate(labelled_images(root, labels, per_class))]
    return write_rows(root / "manifest.csv", ["path", "label", "scanner/site"], rows)


def wide_header_manifest(root: Path, columns: int = 1_000_000) -> Path:
    """Attack: a manifest of ordinary rows whose header names `columns` columns (7.9 MB for a million): every
    row becomes a record of that many cells, and every prediction carries them."""
    rows = labelled_images(root, ("a", "b"), per_class=10)
    path = root / "manifest.csv"
    with path.open("w", encoding="utf-8") as f:
        f.write("path,label," + ",".join(f"c{i}" for i in range(columns - 2)) + "\n")
        f.writelines(f"{p},{label}\n" for p, label in rows)
    return path


def huge_field_manifest(root: Path, megabytes: int = 20, quoted_lines: bool = False) -> Path:
    """Attack: one cell of `megabytes` MB (the csv module's own limit is 128 KiB, and raises a traceback); with
    `quoted_lines` the cell is quoted and spread over many short lines, so no single line is long."""
    rows = labelled_images(root, ("a", "b"), per_class=10)
    path = root / "manifest.csv"
    body = ("x" * 1000 + "\n") * (megabytes * 1000) if quoted_lines else "x" * (megabytes * 2**20)
    with path.open("w", encoding="utf-8") as f:
        f.write("path,label,note\n")
        f.writelines(f"{p},{label},\n" for p, label in rows)
        f.write(f'{rows[0][0]},{rows[0][1]},"{body}"\n')
    return path


def secret_header_manifest(root: Path) -> Path:
    """Attack: a "manifest" that is someone's environment file (no path or label column); the old error line
    listed the header's columns, so it printed the secret."""
    path = root / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"{CANARY}={CANARY_VALUE},SHELL=/bin/bash,HOME=/root\n")
    return path


def secret_cells_manifest(root: Path, fault: str) -> Path:
    """Attack: a manifest whose faulty cell holds the secret (a label naming several classes with
    multi_label=false, an empty group beside a secret path, a secret split, a label with a control character):
    each old error line quoted the cell."""
    rows = [list(r) + ["P1", ""] for r in labelled_images(root, ("a", "b"), per_class=4)]
    if fault == "several":
        rows[3][1] = f"a;{CANARY_VALUE}"
    elif fault == "group":  # an image whose file name is the secret, so the row is read up to its group
        save(root / "img" / f"{CANARY_VALUE}.png", grey(90, size=16))
        rows[3][0], rows[3][2] = f"img/{CANARY_VALUE}.png", ""
    elif fault == "split":
        rows[3][3] = CANARY_VALUE
    elif fault == "control":
        rows[3][1] = f"{CANARY_VALUE}\x1b[2J"
    return write_rows(root / "manifest.csv", ["path", "label", "group", "split"], rows)


def long_line_manifest(root: Path) -> Path:
    """Attack: 2 MB of one unquoted line (no newline), the shape of a binary file handed over as a CSV."""
    path = root / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("path,label\n" + "a" * (2 * 2**20))
    return path


def many_cells_manifest(root: Path, rows: int = 40_000, width: int = 500) -> Path:
    """Attack: 20 million one-character cells in 40 MB (an allowed header width, rows of ordinary length)."""
    path = root / "manifest.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    line = ",".join("x" * (width)) + "\n"
    with path.open("w") as f:
        f.write("path,label," + ",".join(f"c{i}" for i in range(width - 2)) + "\n")
        for _ in range(rows):
            f.write(line)
    return path


def misaligned_manifest(root: Path) -> Path:
    """A legitimate-looking mistake: `grade 2,5` unquoted gives a row more cells than the header names."""
    rows = [list(r) for r in labelled_images(root, ("a", "b"), per_class=4)]
    rows[2] = [rows[2][0], "grade 2", "5"]
    return write_rows(root / "manifest.csv", ["path", "label"], rows)


def latin1_manifest(root: Path) -> Path:
    """A manifest saved as Latin-1 (`Ödem`): refused as not UTF-8, with the line and the fix."""
    rows = labelled_images(root, ("a", "b"), per_class=4)
    path = root / "manifest.csv"
    path.write_bytes(("path,label\n" + "".join(f"{p},{'Ödem' if i else 'a'}\n" for i, (p, _) in enumerate(rows)))
                     .encode("latin-1"))
    return path


# name -> (builder(folder) -> manifest, what the one error line says)
ATTACKS: dict[str, tuple[Callable[[Path], Path], str]] = {
    "1,000,000 header columns": (wide_header_manifest, r"line 1 is longer than 1,048,576 bytes"),
    "2,000 header columns (short names)": (lambda root: wide_header_manifest(root, 2_000),
                                           r"has 2,000 columns in its header \(line 1\), more than the 1,000"),
    "20 MB field": (huge_field_manifest, r"line 22 is longer than 1,048,576 bytes"),
    "20 MB quoted field over short lines": (lambda root: huge_field_manifest(root, 20, quoted_lines=True),
                                            r"line \d+ is not readable as CSV \(field larger than field limit"),
    "2 MB line": (long_line_manifest, r"line 2 is longer than 1,048,576 bytes"),
    "20 million cells": (many_cells_manifest, r"holds more than 12,000,000 cells"),
    "environment file as manifest": (secret_header_manifest, r"has no column path, label in its header \(line 1, 3 "
                                                             r"columns\)"),
    "secret in a multi-class label": (lambda root: secret_cells_manifest(root, "several"),
                                      r"line 5: the label names several classes"),
    "secret beside an empty group": (lambda root: secret_cells_manifest(root, "group"), r"line 5: empty 'group'"),
    "secret as a split": (lambda root: secret_cells_manifest(root, "split"), r"line 5: the split column holds"),
    "secret with a control character": (lambda root: secret_cells_manifest(root, "control"),
                                        r"line 5: the label is not a class name"),
    "unquoted comma": (misaligned_manifest, r"line 4 has 3 cells but the header names 2 columns"),
    "Latin-1 text": (latin1_manifest, r"line 3 is not UTF-8 text"),
}


def manifest_module(manifest: Path, tmp: Path, **kw: object) -> ManifestDataModule:
    return ManifestDataModule(manifest=str(manifest), image_size=16, num_workers=0, split_dir=str(tmp / "splits"),
                              cache_dir=None, **kw)


# -- the regex check ---------------------------------------------------------------------------------------------
NOT_NESTED = [CHEST_REGEX, r"(P\d+)_", r"(?P<patient>P\d+)_", r"(?<=_)\d+", r"(?<!x)(\d+)", r"(?=P)(\w+)",
              r"(?!tmp)(\w+)_", r"(?:_(\d+))?$", r"(\d+)?", r"\((\d+)\)+", r"[(+*]+(\d)", r"(?i:p\d+)",
              r"(?#the patient)(P\d+)", r"(?P<id>P\d+)(?P=id)+", r"^(?:[A-Z]{2}\d{3})", r"(a{2})+", r"(\?)+",
              r"(?i)(p\d+)", r"(x)?(?(1)a|b)+", r"[\]+]+(x)", r"(\d{4}-\d{2})+"]
NESTED = [r"(a+)+", r"(\w*)*", r"(.?){999}#", r"(?:a|b+){2,}", r"((a)+)*", r"(?P<x>\d+)+", r"(?:\d+)*$",
          r"(?=(a+))+", r"(?>(a*))+", r"((?:x)?)+", r"(a{1,3}){2}", r"((a{2})?)+"]


@pytest.mark.parametrize("pattern", NOT_NESTED)
def test_group_openers_escapes_and_classes_are_not_quantifiers(pattern: str) -> None:
    assert not data_registry.nested_repeat(pattern), pattern
    re.compile(pattern)


@pytest.mark.parametrize("pattern", NESTED)
def test_a_repeated_group_holding_a_repeat_is_nested(pattern: str) -> None:
    assert data_registry.nested_repeat(pattern), pattern


def test_the_users_config_is_not_held_to_a_files_heuristic() -> None:
    """describe (train's composed config, eval's command line on top of a checked file) takes a nested pattern:
    the time limit guards it. describe_file (a model file's description) refuses it; the documented chest
    X-ray regex passes both."""
    config = {"_target_": "medclass.data.FolderDataModule", "root": "/data/xray", "group_by": r"(\w+_)+"}
    assert data_registry.describe(config, "data")["group_by"] == r"(\w+_)+"
    with pytest.raises(MedclassError, match=r"data_cfg\.group_by=.*without a repeated group .*pass data.group_by="):
        data_registry.describe_file({**config})
    documented = {**config, "group_by": CHEST_REGEX}
    assert data_registry.describe_file(documented)["group_by"] == CHEST_REGEX
    with pytest.raises(MedclassError, match=r"group_by=.*expected a regular expression \(missing \), unterminated"):
        data_registry.describe({**config, "group_by": "(P"}, "data")


# -- class names: any text ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", [*ODD_LABELS, " leading space", "a;b", "🫁 lung", "x" * 1000, "\u202eevil"])
def test_any_text_is_a_class_name_for_every_reader(name: str) -> None:
    assert tables.CLASS_NAME(name, "label") == name


@pytest.mark.parametrize("name", ["", "   ", "tab\there", "new\nline", "esc\x1b[2J", "${oc.env:HOME}", "x" * 1001])
def test_blank_control_and_interpolation_are_not_class_names(name: str) -> None:
    with pytest.raises(MedclassError):
        tables.CLASS_NAME(name, "label")


def test_train_refuses_the_names_readers_refuse_naming_the_line(tmp_path: Path) -> None:
    """The same set at both ends: a label a reader would refuse stops the manifest at train time, with its line."""
    manifest = secret_cells_manifest(tmp_path, "control")
    with pytest.raises(MedclassError, match=r"manifest.csv line 5: the label is not a class name") as raised:
        manifest_module(manifest, tmp_path).setup()
    assert CANARY_VALUE not in str(raised.value)
    info = {"task": "multi-class", "class_names": list(ODD_LABELS), "in_chans": 1, "image_size": 16, "mean": [0.5],
            "std": [0.25]}
    assert hparams.check_training_info(info)["class_names"] == list(ODD_LABELS)
    assert hparams.check_data_info(info, "model.onnx")["class_names"] == list(ODD_LABELS)
    with pytest.raises(MedclassError, match=r"the training data: data_info\.class_names\[1\]"):
        hparams.check_training_info({**info, "class_names": ["a", "b\x1b"]})


@pytest.mark.parametrize("text", ["forest_T1/T2 site", "forest_../../escape", "forest_Ödem", ".hidden", "",
                                  "a" * 300, "forest_T1_T2_site"])
def test_a_text_that_becomes_a_file_name_stays_one_plain_name(text: str) -> None:
    """Where a manifest column or a class name becomes part of a file name (eval's forest plots), it is made one
    plain ASCII name there, and two texts never share one."""
    from medclass.eval.sections import file_part

    part = file_part(text)
    assert re.fullmatch(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,99}", part), part
    assert part == text or part.endswith("-" + hashlib.sha1(text.encode()).hexdigest()[:8])
    assert file_part("forest_T1/T2 site") != file_part("forest_T1_T2 site") != file_part("forest_T1_T2_site")


# -- the bounded table reader -------------------------------------------------------------------------------------
SLOW_ATTACKS = {"20 million cells"}  # 40 MB written and 12 million cells parsed: seconds; the bound is tested below


@pytest.mark.parametrize("name", [pytest.param(n, marks=[pytest.mark.slow] if n in SLOW_ATTACKS else [])
                                  for n in ATTACKS])
def test_a_hostile_manifest_is_one_line_naming_the_line_never_the_content(name: str, tmp_path: Path) -> None:
    builder, message = ATTACKS[name]
    manifest = builder(tmp_path / "study")
    with pytest.raises(MedclassError) as raised:
        manifest_module(manifest, tmp_path, multi_label=False).setup()
    text = str(raised.value)
    assert re.search(message, text), text
    assert "\n" not in text and CANARY_VALUE not in text and CANARY not in text and "xxxxxxxx" not in text
    assert str(manifest) in text or "data.manifest" in text


def test_the_cell_count_is_bounded_as_rows_arrive(tmp_path: Path) -> None:
    path = many_cells_manifest(tmp_path, rows=300, width=40)  # 12,000 cells
    assert len(tables.read_table(path, "data.manifest", max_cells=12_000).rows) == 300
    with pytest.raises(Refused, match=r"manifest.csv holds more than 11,999 cells \(at line 301\); split the table"):
        tables.read_table(path, "data.manifest", max_cells=11_999)


def test_ordinary_tables_pass_with_room(tmp_path: Path) -> None:
    """100k rows of a 20-column hospital export (quoted cells, a BOM, CRLF, blank and short rows, a free-text
    report of 5,000 characters with commas and newlines) are read whole; a short row's missing cells are empty."""
    path = tmp_path / "export.csv"
    header = ["path", "label", *(f"col{i}" for i in range(18))]
    report = ('"' + ("Findings: no effusion, no nodule.\n" * 150)[:5000] + '"')
    with path.open("w", encoding="utf-8-sig", newline="") as f:
        f.write(",".join(header) + "\r\n")
        for i in range(100_000):
            f.write(",".join([f"img/{i}.png", "T1/T2" if i % 2 else "grade 2.5", *(str(i * k) for k in range(18))])
                    + "\r\n")
        f.write("\r\n,,,\r\nshort.png,N/A\r\n")
        f.write(f"last.png,=cmd,{report}\r\n")
    table = tables.read_table(path, "data.manifest", ("path", "label"))
    assert table.columns == tuple(header) and len(table.rows) == 100_002
    assert table.record(table.rows[-2]) == {"path": "short.png", "label": "N/A", **{f"col{i}": "" for i in range(18)}}
    last = table.record(table.rows[-1])
    assert last["label"] == "=cmd" and last["col0"].startswith("Findings: no effusion, no nodule.\nFindings")
    assert table.rows[0].line == 2 and table.rows[-1].line == 100_005  # blank lines counted, CRLF is one line


def test_a_split_file_is_read_through_the_bounded_reader(tmp_path: Path) -> None:
    from medclass.data.splits import read_rows, write_rows

    path = tmp_path / "split.csv"
    rows = [(f"img/{i}.png", label, "train") for i, label in enumerate(ODD_LABELS)]
    write_rows(path, rows)
    assert read_rows(path) == rows  # `=cmd` was written as text and comes back as itself
    path.write_text("path,label,split\n" + "a" * (2 * 2**20))
    with pytest.raises(Refused, match=r"split file .*split.csv line 2 is longer than 1,048,576 bytes"):
        read_rows(path)
    path.unlink()
    path.symlink_to("/proc/self/environ")
    with pytest.raises(Refused, match=r"is not a regular file"):
        read_rows(path)


# -- through the command line ----------------------------------------------------------------------------------
def one_error_line(proc: object) -> str:
    out = proc.stdout + proc.stderr  # type: ignore[attr-defined]
    errors = [line for line in out.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "Traceback" not in out, out[-3000:]  # type: ignore
    assert CANARY_VALUE not in out
    return errors[0]


def test_an_environment_file_as_manifest_stops_train_with_one_line_and_no_secret(tmp_path: Path) -> None:
    """The issue's attack on the command line: the error line once listed the header's "columns", printing the
    secret (the million-column header is the same reader's line bound, tested above and measured in the table)."""
    secret = secret_header_manifest(tmp_path / "env")
    line = one_error_line(run_script("train.py", "data=manifest", f"data.manifest={secret}", "debug=fast",
                                     f"hydra.run.dir={tmp_path / 'run'}", f"paths.log_dir={tmp_path / 'logs'}",
                                     env={CANARY: CANARY_VALUE}))
    assert "has no column path, label in its header (line 1, 3 columns)" in line and "SHELL" not in line


@pytest.mark.slow  # train.py on the command line, then eval, predict, two exports and two predicts: about a minute
def test_odd_labels_go_through_train_eval_predict_and_both_exports(tmp_path: Path) -> None:
    """`T1/T2`, `grade 2.5`, `N/A`, `..`, `=cmd`, `Ödem`, `L\\R`: train.py (command line) writes a checkpoint
    its own eval, predict and export read; predict reads both exports; every CSV keeps `=cmd` as text; no file
    or folder is named after a class."""
    from medclass.eval import sections
    from medclass.module.onnx import OnnxModel
    from medclass.tasks.evaluate import evaluate
    from medclass.tasks.export import run_export
    from medclass.tasks.predict import run_predict

    manifest = odd_label_manifest(tmp_path / "study")
    run = tmp_path / "run"
    proc = run_script("train.py", "data=manifest", f"data.manifest={manifest}", "data.image_size=16", "debug=fast",
                      f"hydra.run.dir={run}", f"paths.log_dir={tmp_path / 'logs'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    ckpt = run / "checkpoints" / "last.ckpt"
    names = sorted(ODD_LABELS)
    evaluate(compose_train([f"ckpt_path={ckpt}", f"data.manifest={manifest}", "bootstrap=0",
                            "subgroups=[scanner/site]", "subgroup_min_count=1"], tmp_path / "eval", config_name="eval"))
    report = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert [c["class"] for c in report["metrics"]["per_class"]] == names
    forest = sections.file_part("forest_scanner/site")
    assert f"figures/{forest}.png" in report["figures"] and (tmp_path / "eval" / "figures" / f"{forest}.png").is_file()
    outputs = {"ckpt": run_predict(compose_train([f"ckpt_path={ckpt}", f"inputs={manifest}"], tmp_path / "p_ckpt",
                                                 config_name="predict"))}
    for fmt, suffix in (("onnx", ".onnx"), ("safetensors", ".safetensors")):
        exported = tmp_path / "export" / f"model{suffix}"
        run_export(compose_train([f"ckpt_path={ckpt}", f"format={fmt}", f"output={exported}", "model_card=false"],
                                 tmp_path / "export", config_name="export"))
        key = "onnx_path" if fmt == "onnx" else "ckpt_path"
        outputs[fmt] = run_predict(compose_train([f"{key}={exported}", f"inputs={manifest}"], tmp_path / f"p_{fmt}",
                                                 config_name="predict"))
    assert OnnxModel(tmp_path / "export" / "model.onnx").meta["class_names"] == names
    for fmt in outputs:
        with (tmp_path / f"p_{fmt}" / "predictions.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == len(ODD_LABELS) * 10 and {read_cell(r["class"]) for r in rows} <= set(names), fmt
        assert [c for c in rows[0] if c.startswith("prob_")] == [f"prob_{n}" for n in names]
        assert {read_cell(r["label"]) for r in rows} == set(names)  # the manifest's own column, carried over
    for table in [*(p for p in tmp_path.glob("*/*.csv") if p.parent.name != "study"), run / "split.csv"]:
        with table.open(newline="") as f:
            cells = [cell for row in csv.reader(f) for cell in row]
        assert not any(cell.startswith("=") for cell in cells), table  # a formula never reaches a spreadsheet
    made = {p.name for p in tmp_path.rglob("*") if not p.is_relative_to(tmp_path / "study")}
    assert not made & {"T1", "T2", "N", "A", "R", "grade 2.5", "=cmd", "Ödem", "forest_scanner", "site.png"}, made
