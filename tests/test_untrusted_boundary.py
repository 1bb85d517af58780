"""The boundary's own rules (medclass.untrusted): bounded regular-file reads, console-safe text, and the seal
that decides whose data paths a model file may name."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medclass.untrusted import seal
from medclass.untrusted.files import Refused, printable, read_bytes, read_json

from .conftest import run_script

CANARY = "canary-boundary-5b1d"


# -- files ------------------------------------------------------------------------------------------
def test_only_regular_files_of_bounded_size_are_read(tmp_path: Path) -> None:
    good = tmp_path / "good.json"
    good.write_text('{"a": 1}')
    assert read_json(good, "a file") == {"a": 1}
    with pytest.raises(Refused, match="not a regular file"):
        read_bytes("/proc/self/environ", "a manifest", 2**20)  # a size-0 "file" holding the environment
    with pytest.raises(Refused, match="not a regular file"):
        read_bytes("/dev/zero", "a chunk", 2**20)
    with pytest.raises(Refused, match="more than the"):
        read_bytes(good, "a file", 4)
    link = tmp_path / "link.json"
    link.symlink_to(good)
    assert read_json(link, "a file") == {"a": 1}  # links are followed where the user points
    with pytest.raises(Refused, match="symbolic link"):
        read_json(link, "a file", follow_links=False)  # ... but not inside sweep and run folders
    with pytest.raises(Refused, match="not readable JSON") as err:
        read_json(Path("/etc/hostname") if Path("/etc/hostname").stat().st_size else good, "a file", 2**20)
    assert "\n" not in str(err.value)


def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path: Path) -> None:
    """Without O_NONBLOCK, opening a FIFO waits for a writer for ever: run it where a hang can be seen."""
    fifo = tmp_path / "chunk.bin"
    os.mkfifo(fifo)
    code = f"from medclass.untrusted.files import read_bytes\nread_bytes({str(fifo)!r}, 'a chunk', 1024)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "not a regular file" in proc.stderr


def test_printable_escapes_what_would_drive_the_terminal() -> None:
    shown = printable("model=\x1b[2J\x1b[31mred\u202eevil\x00\r\nend", limit=200)
    assert "\x1b" not in shown and "\u202e" not in shown and "\r" not in shown and "\n" not in shown
    assert "\\x1b[2J" in shown and "\\u202e" in shown
    assert printable("x" * 1000, limit=10) == "x" * 10 + "…"
    assert printable("T1/T2 Ödem = grade 2.5") == "T1/T2 Ödem = grade 2.5"  # ordinary text is untouched


# -- the seal -----------------------------------------------------------------------------------------
def test_seal_verifies_only_under_the_key_that_made_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDCLASS_HOME", str(tmp_path / "mine"))
    description = {"kind": "folder", "root": "/data/xray", "image_size": 64}
    tag = seal.seal(description)
    assert tag and seal.verify(description, tag)
    assert oct(seal.key_file().stat().st_mode & 0o777) == "0o600"
    assert not seal.verify({**description, "root": "/proc"}, tag)  # an edited description
    monkeypatch.setenv("MEDCLASS_HOME", str(tmp_path / "theirs"))
    assert not seal.verify(description, tag)  # another account's key (none made by verifying)
    assert not seal.key_file().exists()


def test_eval_reads_a_model_files_paths_only_under_its_seal(blood_run: Path, tmp_path: Path) -> None:
    """The run's own checkpoint evaluates with no data option; under another account's key the same file's
    paths are not read until the user names the data; an edited description pointing at the environment is
    refused naming the option, and prints nothing of it."""
    ckpt = next((blood_run / "checkpoints").glob("best-*.ckpt"))
    described = torch.load(ckpt, map_location="cpu", weights_only=True)["hyper_parameters"]["data_cfg"]
    other = {"MEDCLASS_HOME": str(tmp_path / "colleague")}
    proc = run_script("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={tmp_path / 'e1'}", "report=false", env=other)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "data.root=<path>" in errors[0] and "Traceback" not in proc.stderr
    proc = run_script("eval.py", f"ckpt_path={ckpt}", f"data.root={described['root']}",
                      f"hydra.run.dir={tmp_path / 'e2'}", "report=false", env=other)
    assert proc.returncode == 0, proc.stderr[-2000:]

    edited = torch.load(ckpt, map_location="cpu", weights_only=True)
    edited["hyper_parameters"]["data_cfg"] = {**described, "root": "/proc/self"}
    torch.save(edited, tmp_path / "edited.ckpt")
    proc = run_script("eval.py", f"ckpt_path={tmp_path / 'edited.ckpt'}", f"hydra.run.dir={tmp_path / 'e3'}",
                      env={"MEDCLASS_CANARY": CANARY})
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and "not written by medclass under this account" in errors[0]
    assert CANARY not in proc.stdout + proc.stderr and "Traceback" not in proc.stderr


def test_pipes_devices_and_broken_links_are_listed_as_skipped_never_silently_dropped(tmp_path: Path) -> None:
    """A FIFO or a link to /dev/zero named like an image is neither read (it would wait or never end) nor
    dropped without a word: predict's inputs and a training folder both list it with its reason."""
    from medclass.data.scan import scan_folder
    from medclass.tasks.predict import collect_inputs

    from .conftest import clean_tree

    root = clean_tree(tmp_path / "data", per_class=3)
    os.mkfifo(root / "a" / "fifo.png")
    (root / "b" / "zero.png").symlink_to("/dev/zero")
    (root / "b" / "gone.png").symlink_to(tmp_path / "nowhere.png")
    files, skipped = collect_inputs(root)
    reasons = {p.name: why for p, why in skipped}
    assert len(files) == 6 and all(reasons[n].startswith("not a regular file") for n in ("fifo.png", "zero.png",
                                                                                           "gone.png"))
    scan = scan_folder(root)
    assert len(scan.files) == 6 and {p.name for p, _ in scan.skipped} == {"fifo.png", "zero.png", "gone.png"}


def test_a_system_folder_is_no_data_root() -> None:
    """`data.root=/proc` (typed or from a file) is one line, not a walk of files that never end."""
    from medclass.data.scan import scan_folder
    from medclass.utils.errors import MedclassError

    with pytest.raises(MedclassError, match="system folder"):
        scan_folder(Path("/proc"))


def test_a_hospital_table_over_the_cell_budget_can_be_read_by_raising_it(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The manifest cell bound guards memory, not correctness: a larger legitimate table is read once the user
    raises MEDCLASS_MAX_TABLE_CELLS, and the refusal names that variable."""
    from medclass.untrusted import tables
    from medclass.utils.errors import MedclassError

    path = tmp_path / "labels.csv"
    path.write_text("path,label,site,age\n" + "".join(f"img{i}.png,a,s{i % 3},{i % 90}\n" for i in range(500)))
    monkeypatch.setenv("MEDCLASS_MAX_TABLE_CELLS", "1000")
    with pytest.raises(Refused, match="set MEDCLASS_MAX_TABLE_CELLS"):
        tables.read_table(path, "data.manifest")
    monkeypatch.setenv("MEDCLASS_MAX_TABLE_CELLS", "2004")
    assert len(tables.read_table(path, "data.manifest").rows) == 500
    monkeypatch.setenv("MEDCLASS_MAX_TABLE_CELLS", "2e6")
    with pytest.raises(MedclassError, match="MEDCLASS_MAX_TABLE_CELLS=2e6: expected a whole number"):
        tables.read_table(path, "data.manifest")
