"""Optional extras: a missing one stops with the pip command that installs it, never with a trace or a
silently skipped file. Absence is made real by blocking the import (`sys.modules[name] = None`)."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import tomllib

from medclass.data import FolderDataModule
from medclass.tasks.export import export_onnx
from medclass.utils.cli import check_command_line
from medclass.utils.extras import CHOICES, MissingExtra

from .conftest import ROOT, clean_tree
from .test_predict import tiny_classifier


def extras() -> dict[str, list[str]]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def test_every_extra_named_in_the_code_exists_and_all_holds_them() -> None:
    named = {extra for _, extra in CHOICES.values()}
    for path in (ROOT / "medclass").rglob("*.py"):
        named |= set(re.findall(r'require\("[\w.]+", "(\w+)"', path.read_text()))
    assert named >= {"onnx", "dicom", "cam", "search", "mlflow", "wandb"}
    assert named <= set(extras())
    all_of = re.fullmatch(r"medclass\[([\w,]+)\]", extras()["all"][0])
    assert all_of and set(all_of[1].split(",")) == named  # [all] installs every extra the code asks for


def test_export_without_onnx_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnx", None)
    fix = r'ONNX export needs onnx, an optional part of medclass: pip install "medclass\[onnx\]"'
    with pytest.raises(MissingExtra, match=fix):
        export_onnx(tiny_classifier("multi-class", ["a", "b"]), tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


def test_dicom_without_pydicom_stops_instead_of_skipping_the_file(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from pydicom import examples

    root = clean_tree(tmp_path / "data", per_class=6)
    examples.ct.save_as(root / "a" / "ct.dcm")
    monkeypatch.setitem(sys.modules, "pydicom", None)
    dm = FolderDataModule(root=str(root), image_size=8, num_workers=0, split_dir=str(tmp_path / "s"), cache_dir=None)
    with pytest.raises(MissingExtra, match=r'ct.dcm needs pydicom.*pip install "medclass\[dicom\]"'):
        dm.setup()


@pytest.mark.parametrize(("arg", "blocked", "extra"), [
    ("logger=mlflow", "mlflow", "mlflow"),
    ("logger=wandb", "wandb", "wandb"),
    ("hparams_search=optuna", "hydra_plugins.hydra_optuna_sweeper", "search"),
    ("hydra/launcher=slurm", "hydra_plugins.hydra_submitit_launcher", "search"),
])
def test_a_command_line_choice_without_its_extra_is_one_error_line(
        arg: str, blocked: str, extra: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    check_command_line([arg])  # installed here: no complaint
    monkeypatch.setitem(sys.modules, blocked, None)
    with pytest.raises(SystemExit) as stop:
        check_command_line(["data=medmnist", arg])
    err = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: {arg} needs ") and err.endswith(f'pip install "medclass[{extra}]"')
