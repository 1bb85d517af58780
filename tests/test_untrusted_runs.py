"""Folders medclass reads back (issue 35, items 4 and 7): a sweep folder read by medclass-gather and a run folder
read by the model card are data from whoever made them. Links are not followed, every file is bounded, NaN metrics
mark a failed run, and text from a file reaches the console with its control characters escaped.

The attack builders below are plain functions so the issue's attack table can rebuild them.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from medclass.eval import figures
from medclass.eval.model_card import MAX_SPLIT_BYTES, card_facts, model_card_markdown, sha256
from medclass.tasks import gather
from medclass.untrusted.files import Refused
from medclass.utils.cli import report_user_errors
from medclass.utils.errors import MedclassError

from .conftest import FAST, run_script

CANARY = "MEDCLASS_CANARY"
CANARY_VALUE = "canary-5d1e9c"  # put in the environment of the victim command; must never be printed
SECRET = "outside-secret-41b7"  # held by a file outside the sweep folder
CLEAR_SCREEN = "\x1b[2J\x1b[H"


def _job(folder: Path, overrides: list[str], metrics: str | None = None, error: str | None = None) -> Path:
    """One sweep job folder as train.py -m leaves it: .hydra/overrides.yaml, then metrics.json or error.txt."""
    (folder / ".hydra").mkdir(parents=True, exist_ok=True)
    (folder / ".hydra" / "overrides.yaml").write_text("".join(f"- {json.dumps(o)}\n" for o in overrides))
    if metrics is not None:
        (folder / "metrics.json").write_text(metrics)
    if error is not None:
        (folder / "error.txt").write_text(error)
    return folder


def good_metrics(acc: float = 0.8, val: float = 0.7) -> str:
    return json.dumps({"test": {"test/acc": acc}, "best_val": {"val/acc": val}, "run": {"train_seconds": 3.0}})


def sweep_linking_secrets(sweep: Path) -> Path:
    """Attack: failed jobs whose error.txt links to /proc/self/environ and to a secret file outside the sweep
    folder (also a linked metrics.json, a linked overrides.yaml and a linked job folder). One honest job."""
    outside = sweep.parent / f"{sweep.name}-outside"
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "secret.txt").write_text(f"error: {SECRET}\n")
    (outside / "metrics.json").write_text(good_metrics(0.99, 0.99))
    (outside / "overrides.yaml").write_text(f"- {SECRET}=1\n")
    linked_job = outside / "job"
    _job(linked_job, [f"{SECRET}=2"], metrics=good_metrics(0.98, 0.98))
    _job(sweep / "0", ["optimizer.lr=0.1", "seed=1"], metrics=good_metrics())
    _job(sweep / "1", ["optimizer.lr=0.2", "seed=1"])
    (sweep / "1" / "error.txt").symlink_to("/proc/self/environ")
    _job(sweep / "2", ["optimizer.lr=0.3", "seed=1"])
    (sweep / "2" / "error.txt").symlink_to(outside / "secret.txt")
    _job(sweep / "3", ["optimizer.lr=0.4", "seed=1"])
    (sweep / "3" / "metrics.json").symlink_to(outside / "metrics.json")
    _job(sweep / "4", ["optimizer.lr=0.5", "seed=1"], metrics=good_metrics())
    (sweep / "4" / ".hydra" / "overrides.yaml").unlink()
    (sweep / "4" / ".hydra" / "overrides.yaml").symlink_to(outside / "overrides.yaml")
    (sweep / "5").symlink_to(linked_job, target_is_directory=True)
    return sweep


def sweep_with_nan_metrics(sweep: Path, runs: int = 2) -> Path:
    """Attack: `runs` jobs of one configuration whose metrics.json holds NaN / Infinity (json.dumps writes them)."""
    values = [float("nan"), float("inf"), float("-inf")]
    for i in range(runs):
        metrics = {"test": {"test/acc": values[i % 3]}, "best_val": {"val/acc": 0.5}}
        _job(sweep / str(i), ["optimizer.lr=0.1", f"seed={i}"], metrics=json.dumps(metrics))
    _job(sweep / "ok", ["optimizer.lr=0.2", "seed=0"], metrics=good_metrics())
    return sweep


def sweep_with_escapes(sweep: Path) -> Path:
    """Attack: terminal escape sequences (clear screen, a bidirectional override) in overrides.yaml, in a failed
    job's error.txt and in a job folder's name."""
    _job(sweep / "0", [f"optimizer.lr=0.1{CLEAR_SCREEN}", "seed=1"], metrics=good_metrics())
    _job(sweep / "1", [f"model=cnn{CLEAR_SCREEN}\u202e", "seed=1"], error=f"error: boom{CLEAR_SCREEN}\nmore\n")
    _job(sweep / f"2{CLEAR_SCREEN}", ["model=x", "seed=1"], error="error: failed\n")
    return sweep


def newline_split_csv(run_dir: Path, megabytes: int) -> Path:
    """Attack: a run folder's split.csv of a header and `megabytes` MB of newlines (no rows, minutes of parsing)."""
    path = run_dir / "split.csv"
    block = b"\n" * 2**20
    with open(path, "wb") as f:
        f.write(b"path,label,split\n")
        for _ in range(megabytes):
            f.write(block)
    return path


def victim_env() -> dict[str, str]:
    """The environment of a victim command: the canary is what /proc/self/environ would give away."""
    return {**os.environ, CANARY: CANARY_VALUE, "MEDCLASS_DATA": ""}


def hostile_run_folder(run_dir: Path, lines: int = 4_000_001) -> Path:
    """Attack on the model card: a run folder whose config.yaml links to a secret, whose metrics.json is a FIFO,
    whose .hydra/ links to a folder outside, whose split.csv holds `lines` newlines after its header (past the
    card's line bound when 4,000,001) and whose csv/metrics.csv links to a training log outside."""
    outside = run_dir.parent / f"{run_dir.name}-outside"
    (outside / "hydra").mkdir(parents=True, exist_ok=True)
    (outside / "secret.yaml").write_text(f"seed: {SECRET}\n")
    (outside / "hydra" / "overrides.yaml").write_text(f"- {SECRET}=1\n")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").symlink_to(outside / "secret.yaml")
    os.mkfifo(run_dir / "metrics.json")
    (run_dir / ".hydra").symlink_to(outside / "hydra", target_is_directory=True)
    with open(run_dir / "split.csv", "wb") as f:
        f.write(b"path,label,split\n" + b"\n" * lines)
    (outside / "metrics.csv").write_text("epoch,step,val/loss,val/acc\n0,9,0.5,0.75\n")
    (run_dir / "csv").mkdir()
    (run_dir / "csv" / "metrics.csv").symlink_to(outside / "metrics.csv")
    return run_dir


# -- tests ------------------------------------------------------------------------------------------------------------

GATHER = [sys.executable, "-m", "medclass.tasks.gather"]


def run_gather(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """medclass-gather as a user runs it, with the canary in its environment."""
    return subprocess.run([*GATHER, str(folder), *args], capture_output=True, text=True, env=victim_env(), timeout=120)


def test_gather_follows_no_link_and_shows_no_secret(tmp_path: Path) -> None:
    """error.txt linked to /proc/self/environ and to a secret, a linked metrics.json, overrides.yaml and job folder:
    each is listed with the reason, none is read; the honest run is the only one averaged."""
    sweep = sweep_linking_secrets(tmp_path / "sweep")
    done = run_gather(sweep, "--out", str(tmp_path / "table"))
    assert done.returncode == 0, done.stderr
    written = (tmp_path / "table.md").read_text() + (tmp_path / "table.csv").read_text()
    for text in (done.stdout, done.stderr, written):
        assert CANARY_VALUE not in text and SECRET not in text and "Traceback" not in text
    assert "| optimizer.lr=0.1 | 1 | 0 | 0.8000 | 0.7000 | 3.0 |" in done.stdout
    for job, name in (("1", "error.txt"), ("2", "error.txt"), ("3", "metrics.json"), ("4", ".hydra/overrides.yaml")):
        assert f"the run's {name} is a symbolic link; links are not followed here" in done.stdout, name
        assert f"({sweep / job})" in done.stdout
    assert f"- {sweep / '5'}: a symbolic link to a folder, not followed" in done.stdout
    rows = list(csv.DictReader((tmp_path / "table.csv").open()))
    assert [(r["config"], r["runs"], r["failed"]) for r in rows if r["runs"] != "0"] == [("optimizer.lr=0.1", "1", "0")]


def test_gather_reads_no_fifo_no_device_and_bounded_files(tmp_path: Path) -> None:
    """A FIFO error.txt (would wait for a writer for ever), a sparse 2 MiB metrics.json and overrides.yaml, a 2 MiB
    error.txt: each a failed run with its reason, within seconds."""
    sweep = tmp_path / "sweep"
    _job(sweep / "fifo", ["model=a"])
    os.mkfifo(sweep / "fifo" / "error.txt")
    _job(sweep / "big", ["model=b"])
    with open(sweep / "big" / "metrics.json", "wb") as f:
        f.truncate(2 * 2**20)
    _job(sweep / "bigover", [], metrics=good_metrics())
    with open(sweep / "bigover" / ".hydra" / "overrides.yaml", "wb") as f:
        f.truncate(2 * 2**20)
    _job(sweep / "bigerror", ["model=c"], error="error: " + "x" * 2**21)
    done = run_gather(sweep)
    assert done.returncode == 0, done.stderr
    assert "the run's error.txt is not a regular file" in done.stdout
    assert "the run's metrics.json is 2.0 MiB, more than the 1 MiB this reader takes" in done.stdout
    assert "the run's .hydra/overrides.yaml is 2.0 MiB, more than the 1 MiB" in done.stdout
    assert "the run's error.txt is 2.0 MiB, more than the 1 MiB" in done.stdout


@pytest.mark.parametrize("runs", [1, 2])
def test_nan_or_infinite_metrics_make_a_failed_run_with_the_reason(tmp_path: Path, runs: int) -> None:
    """One or two runs of one configuration with NaN / Infinity: failed, never averaged, never a traceback."""
    done = run_gather(sweep_with_nan_metrics(tmp_path / "sweep", runs))
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    assert f"| optimizer.lr=0.1 | 0 | {runs} |" in done.stdout and "| nan" not in done.stdout
    assert "metrics.json holds NaN for test/acc" in done.stdout
    assert ("metrics.json holds Infinity for test/acc" in done.stdout) == (runs == 2)


@pytest.mark.parametrize(("value", "reason"), [
    ("1e999", "Infinity"), ("-1e999", "-Infinity"), ("1" + "0" * 400, "a number beyond ±1e+100"),
    ('"0.9"', "a string for test/acc, not a number"), ("true", "a boolean for test/acc, not a number"),
    ("[0.9]", "a list for test/acc, not a number"), ('{"a": 1}', "an object for test/acc, not a number")])
def test_a_metric_that_is_not_a_finite_number_fails_its_run(tmp_path: Path, value: str, reason: str) -> None:
    _job(tmp_path / "0", ["model=a"], metrics='{"test": {"test/acc": ' + value + ', "test/auc": 0.5}}')
    _job(tmp_path / "1", ["model=b"], metrics=good_metrics())
    sweep = gather.scan(tmp_path)
    assert [o for o, _ in sweep.runs] == [["model=b"]]
    assert sweep.failures == [(["model=a"], f"metrics.json holds {reason}" + ("" if "not" in reason else
                                                                                " for test/acc"), tmp_path / "0")]
    gather.to_markdown(gather.summarize(sweep.runs, failures=sweep.failures))  # and the table is made


def test_escape_sequences_from_the_folder_are_shown_escaped(tmp_path: Path) -> None:
    """Clear-screen sequences and a bidirectional override in overrides.yaml, error.txt and a folder name reach
    neither the console nor the .md table raw; the CSV keeps the text (made safe by write_csv)."""
    sweep = sweep_with_escapes(tmp_path / "sweep")
    done = run_gather(sweep, "--out", str(tmp_path / "table"))
    assert done.returncode == 0, done.stderr
    md = (tmp_path / "table.md").read_text()
    for text in (done.stdout, done.stderr, md):
        assert ("\\x1b[2J\\x1b[H" in text and "\\u202e" in text) or text == done.stderr
        assert not any(ord(c) < 32 and c != "\n" or 0x7f <= ord(c) < 0xa0 or c == "\u202e" for c in text)
    assert "boom\\x1b[2J\\x1b[H (" in done.stdout and f"({sweep}/2\\x1b[2J\\x1b[H)" in done.stdout
    assert "| optimizer.lr=0.1\\x1b[2J\\x1b[H | 1 |" in done.stdout


@pytest.mark.parametrize(("text", "reason"), [
    ("seed: 1\n", "is not a list of strings"), ("- [a, b]\n", "is not a list of strings"),
    ("- !!python/object/apply:os.system [echo]\n", "is not readable YAML"), ("- a\n- [\n", "is not readable YAML"),
    ("- &a " + "x" * 200_000 + "\n" + "- *a\n" * 10, "holds more than 10,000 overrides or 1 MiB of text"),
    ("[" * 20_000, "is not readable YAML")])
def test_overrides_must_be_a_list_of_strings(tmp_path: Path, text: str, reason: str) -> None:
    _job(tmp_path / "0", [], metrics=good_metrics())
    (tmp_path / "0" / ".hydra" / "overrides.yaml").write_text(text)
    sweep = gather.scan(tmp_path)
    assert not sweep.runs and sweep.failures == [([gather.NOT_READ], f".hydra/overrides.yaml {reason}"
                                                  + (" (as Hydra writes it)" if "list" in reason else ""),
                                                  tmp_path / "0")]


def test_the_walk_is_bounded_in_depth_runs_and_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    deep = tmp_path / "sweep"
    for _ in range(gather.MAX_DEPTH + 2):
        deep = deep / "d"
    _job(deep, ["model=deep"], metrics=good_metrics())
    _job(tmp_path / "sweep" / "0", ["model=a"], metrics=good_metrics())
    sweep = gather.scan(tmp_path / "sweep")
    assert [o for o, _ in sweep.runs] == [["model=a"]]
    assert [reason for _, reason in sweep.skipped] == [f"more than {gather.MAX_DEPTH} folders deep, not read"]
    for i in range(1, 4):
        _job(tmp_path / "sweep" / str(i), ["model=a"], metrics=good_metrics())
    monkeypatch.setattr(gather, "MAX_RUNS", 3)
    with pytest.raises(MedclassError, match="holds more than 3 runs; pass one sweep folder"):
        gather.scan(tmp_path / "sweep")
    monkeypatch.setattr(gather, "MAX_RUNS", 100)
    monkeypatch.setattr(gather, "MAX_TOTAL_BYTES", 300)
    with pytest.raises(MedclassError, match="holds more run files than gather reads"):
        gather.scan(tmp_path / "sweep")


def test_what_a_run_holds_beyond_the_table_is_not_kept(tmp_path: Path) -> None:
    """50,000 extra numbers in a metrics.json, a 100,000-character error line and 150 linked folders: each run
    keeps only the summarized metrics, the error line is cut, and the unread folders are counted, 100 named."""
    extra = {f"m{i}": i for i in range(50_000)}
    _job(tmp_path / "0", ["model=a"], metrics=json.dumps({**json.loads(good_metrics()), "extra": extra}))
    _job(tmp_path / "1", ["model=b"], error="error: " + "y" * 100_000)
    for i in range(150):
        (tmp_path / f"link{i:03d}").symlink_to(tmp_path / "0", target_is_directory=True)
    sweep = gather.scan(tmp_path)
    assert sweep.runs == [(["model=a"], {"test/acc": 0.8, "best_val/val/acc": 0.7, "run/train_seconds": 3.0})]
    assert len(sweep.failures[0][1]) == gather.MAX_ERROR_LINE - len("error: ")
    assert len(sweep.skipped) == gather.SHOWN_SKIPPED and sweep.not_entered == 150
    lines = gather.skipped_lines(sweep.skipped, sweep.not_entered)
    assert "Not read (150):" in lines and lines.endswith("- and 50 more")


def test_a_bound_passed_is_one_error_line_and_exit_2(tmp_path: Path) -> None:
    (tmp_path / "sweep").mkdir()
    done = run_gather(tmp_path / "sweep")
    assert done.returncode == 2 and done.stderr.startswith("error: no metrics.json under") and \
        len(done.stderr.splitlines()) == 1, done.stderr


def test_the_model_card_reads_a_hostile_run_folder_in_bounds(tmp_path: Path) -> None:
    """A linked config.yaml and .hydra/, a FIFO metrics.json, 4,000,001 newlines of split.csv and a linked training
    log: the card is written in seconds, says why each fact is not recorded, and holds no secret."""
    run = hostile_run_folder(tmp_path / "run")
    checkpoint = run / "checkpoints" / "model.pt"
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(b"weights")
    facts = card_facts(checkpoint, {}, None, run)
    card = model_card_markdown(facts)
    assert SECRET not in card and CANARY_VALUE not in card
    assert "Run configuration: not recorded (config.yaml is a symbolic link, not read)" in card
    assert "Training command: not recorded (.hydra is a symbolic link, not read)" in card
    assert "Run summary: not recorded (metrics.json is not a regular file)" in card
    assert "Images per split and class: not recorded (split.csv holds more than 4,000,000 lines; counts not shown)" \
        in card
    assert facts["checkpoint"]["sha256"] == sha256(checkpoint) != "not recorded"
    assert figures.read_history(run) == {}


def test_split_csv_past_its_byte_bound_is_not_read(tmp_path: Path) -> None:
    """A sparse split.csv one byte past the bound (costs no disk): refused from its size, nothing read."""
    (tmp_path / "run").mkdir()
    with open(tmp_path / "run" / "split.csv", "wb") as f:
        f.truncate(MAX_SPLIT_BYTES + 1)
    card = model_card_markdown(card_facts(tmp_path / "none.pt", {}, None, tmp_path / "run"))
    assert "Images per split and class: not recorded (split.csv is larger than 256 MB)" in card


def test_split_csv_of_ordinary_size_is_counted(tmp_path: Path) -> None:
    """100,000 rows with patient groups and extra columns (an ordinary hospital export) are all counted."""
    (tmp_path / "run").mkdir()
    rows = "".join(f"img{i}.png,{'a' if i % 3 else 'b'},{('train', 'val', 'test')[i % 5 % 3]},p{i // 4},{i % 90}\n"
                   for i in range(100_000))
    (tmp_path / "run" / "split.csv").write_text("path,label,split,group,age\n" + rows)
    counts = card_facts(tmp_path / "none.pt", {}, None, tmp_path / "run")["data"]["counts"]
    assert sum(counts["images"].values()) == 100_000 and counts["columns"] == ["age"]
    assert sum(counts["per_class"]["train"].values()) == counts["images"]["train"]


def test_the_checkpoint_hash_does_not_wait_on_a_fifo_or_follow_a_link(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "model.pt")
    done: list[dict] = []
    worker = threading.Thread(target=lambda: done.append(card_facts(tmp_path / "model.pt", {}, None, None)),
                              daemon=True)
    worker.start()
    worker.join(20)
    assert done and done[0]["checkpoint"]["sha256"] == "not recorded (model.pt is not a regular file)"
    refused: list[str] = []

    def hash_fifo() -> None:  # the hash's own guard, below the card's check
        try:
            sha256(tmp_path / "model.pt")
        except Refused as err:
            refused.append(str(err))

    worker = threading.Thread(target=hash_fifo, daemon=True)
    worker.start()
    worker.join(20)
    assert refused == [f"checkpoint {tmp_path / 'model.pt'} is not a regular file (a device, pipe, folder or system "
                       "file)"]
    (tmp_path / "link.pt").symlink_to("/proc/self/environ")
    facts = card_facts(tmp_path / "link.pt", {}, None, None)
    assert facts["checkpoint"]["sha256"] == "not recorded (link.pt is a symbolic link, not read)"


def test_the_training_log_keeps_finite_numbers_only(tmp_path: Path) -> None:
    """Lightning's CSV log with a NaN, a word and a bad step among real rows: the real rows make the curves."""
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text(
        "epoch,step,train/loss_epoch,val/loss,val/acc\n0,9,0.9,0.8,0.5\n1,19,nan,0.7,x\n3,z,0.5,,0.6\n"
        "2,29,0.4,\x1b[2J,0.7\n")
    assert figures.read_history(tmp_path) == {"train/loss_epoch": ([9, 29], [0.9, 0.4]),
                                              "val/loss": ([9, 19], [0.8, 0.7]), "val/acc": ([9, 29], [0.5, 0.7])}
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "csv").symlink_to(tmp_path / "csv", target_is_directory=True)  # a linked log folder
    assert figures.read_history(tmp_path / "run") == {}


def test_an_error_line_is_one_escaped_line(capsys: pytest.CaptureFixture) -> None:
    """A MedclassError whose message carries what a file held (an escape sequence, a newline) is printed as one
    `error:` line with both escaped."""
    @report_user_errors
    def fails() -> None:
        raise MedclassError(f"data.root=/x/a{CLEAR_SCREEN}b has 0 class folders\nsecond line")

    with pytest.raises(SystemExit) as exit_code:
        fails()
    err = capsys.readouterr().err
    assert exit_code.value.code == 2
    assert err == "error: data.root=/x/a\\x1b[2J\\x1b[Hb has 0 class folders\\x0asecond line\n"


def test_the_sweep_summary_is_escaped(tmp_path: Path) -> None:
    """A failed sweep job whose error names a folder holding an escape sequence: the closing summary and the log
    line show it escaped, on one line."""
    root = tmp_path / f"no{CLEAR_SCREEN}pe"
    done = run_script("train.py", "-m", f'data.root="{root}"', "data=folder", *FAST, "logger=none",
                      f"hydra.sweep.dir={tmp_path / 'sweep'}", timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    summary = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(summary) == 1 and "\\x1b[2J\\x1b[H" in summary[0] and "\x1b" not in done.stderr
    assert "job failed, the sweep goes on: data.root=" in done.stdout + done.stderr
