"""Reliability: kill-and-resume, identical reruns, safe checkpoints, a non-finite loss, the bad-input matrix."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from medclass.module.checkpoint import load_classifier
from medclass.utils.errors import MedclassError

from .conftest import FAST, ROOT, compose_train, run_script, write_npz

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]


def deterministic_run(root: Path) -> list[str]:
    """Three short epochs on CPU with everything that draws random numbers in the main process."""
    return [f"data.root={root}", "data.num_workers=0", "data.batch_size=16", "trainer.max_epochs=3",
            "trainer.deterministic=true", "seed=7", "logger=csv", *QUIET]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two uninterrupted runs with the same seed, and one SIGKILLed mid-epoch then rerun with ckpt_path=last."""
    tmp = tmp_path_factory.mktemp("reliability")
    write_npz(tmp / "data", "bloodmnist", channels=3, classes=8, n=(384, 32, 32))
    args = deterministic_run(tmp / "data")
    for name in ("a", "b"):
        proc = run_script("train.py", *args, f"hydra.run.dir={tmp / name}")
        assert proc.returncode == 0, proc.stderr[-3000:]
    killed = [*args, f"hydra.run.dir={tmp / 'k'}", "ckpt_path=last"]
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *killed], cwd=ROOT,
                            env={**os.environ, "MEDCLASS_DATA": ""}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    log, deadline = tmp / "k" / "train.log", time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # kill halfway through the second epoch
        found = re.search(r"epoch 1/3 \((\d+)s\)", log.read_text() if log.is_file() else "")
        if found and (tmp / "k" / "checkpoints" / "last.ckpt").is_file():
            time.sleep(max(int(found[1]), 1) / 2)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    assert proc.wait() == -signal.SIGKILL, "the run ended before it could be killed"
    interrupted = torch.load(tmp / "k" / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert interrupted["epoch"] < 2  # killed before the last epoch ended
    resumed = run_script("train.py", *killed)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Restoring states from the checkpoint path" in resumed.stderr + resumed.stdout
    return {"a": tmp / "a", "b": tmp / "b", "k": tmp / "k"}


def final(run: Path) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    metrics = json.loads((run / "metrics.json").read_text())
    state = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    return {**metrics["test"], **metrics["best_val"]}, state


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_same_seed_gives_identical_metrics_and_weights(runs: dict[str, Path]) -> None:
    (metrics_a, weights_a), (metrics_b, weights_b) = final(runs["a"]), final(runs["b"])
    assert metrics_a == metrics_b
    assert same_weights(weights_a, weights_b)


def test_killed_run_resumes_from_last_checkpoint_and_finishes(runs: dict[str, Path]) -> None:
    metrics = json.loads((runs["k"] / "metrics.json").read_text())
    assert metrics["run"]["epochs"] == 3 and metrics["run"]["steps"] == final_steps(runs["a"])
    assert {"test/acc", "test/auc"} <= set(metrics["test"])


def final_steps(run: Path) -> int:
    return json.loads((run / "metrics.json").read_text())["run"]["steps"]


def test_killed_and_resumed_run_ends_where_the_uninterrupted_one_does(runs: dict[str, Path]) -> None:
    (metrics_a, weights_a), (metrics_k, weights_k) = final(runs["a"]), final(runs["k"])
    assert metrics_k == metrics_a  # exact: weights, optimizer, scheduler and random generators resume
    assert same_weights(weights_a, weights_k)


def test_a_folder_with_checkpoints_is_not_overwritten(runs: dict[str, Path]) -> None:
    from medclass.tasks.train import train

    before = {p: p.read_bytes() for p in runs["a"].rglob("*") if p.is_file() and p.suffix in (".ckpt", ".json")}
    with pytest.raises(MedclassError, match="already holds the checkpoints of an earlier run; add ckpt_path=last"):
        train(compose_train(deterministic_run(runs["a"].parent / "data"), runs["a"]))
    assert {p: p.read_bytes() for p in before} == before


def test_metrics_count_exact_copies_across_splits(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import numpy as np

    from medclass.tasks.train import train

    path = write_npz(tmp_path, "breastmnist", n=(40, 10, 10))
    arrays = dict(np.load(path))
    arrays["test_images"][:3] = arrays["train_images"][:3]  # three leaked test images
    np.savez(path, **arrays)
    train(compose_train(["data.name=breastmnist", f"data.root={tmp_path}", *FAST], tmp_path / "r"))
    counts = json.loads((tmp_path / "r" / "metrics.json").read_text())["data"]["cross_split_duplicates"]
    assert counts == {"val_in_train": 0, "test_in_train": 3, "test_in_val": 0}
    assert "3 test in train" in caplog.text


def test_malicious_checkpoint_is_refused_without_running_it(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "hyper_parameters": {}, "payload": Payload()}, tmp_path / "evil.ckpt")
    with pytest.raises(MedclassError, match="cannot load checkpoint .*evil.ckpt safely"):
        load_classifier(tmp_path / "evil.ckpt")
    assert not marker.exists()
    torch.load(tmp_path / "evil.ckpt", weights_only=False)  # the payload is live: a full unpickle does run it
    assert marker.exists()


def evil_checkpoint(path: Path, marker: Path) -> Path:
    """A checkpoint whose unpickling would run `touch marker`."""

    class Payload:
        def __reduce__(self) -> tuple:
            return os.system, (f"touch {marker}",)

    torch.save({"state_dict": {}, "hyper_parameters": {}, "epoch": 0, "global_step": 0,
                "pytorch-lightning_version": "2.4.0", "payload": Payload()}, path)
    return path


def test_resuming_from_a_malicious_checkpoint_never_runs_it(blood: Path, tmp_path: Path) -> None:
    """train.py ckpt_path=<file> hands a user's file to the trainer: it must stop without unpickling objects."""
    marker = tmp_path / "pwned"
    evil = evil_checkpoint(tmp_path / "evil.ckpt", marker)
    proc = run_script("train.py", f"data.root={blood}", f"hydra.run.dir={tmp_path / 'run'}", *FAST, "logger=none",
                      f"ckpt_path={evil}")
    assert proc.returncode == 2 and not marker.exists(), proc.stderr[-2000:]
    assert "error: cannot load checkpoint" in proc.stderr and "safely" in proc.stderr  # the safe load stopped it
    assert not (tmp_path / "run" / "metrics.json").exists()
    torch.load(evil, weights_only=False)  # the payload is live: a full unpickle does run it
    assert marker.exists()


@pytest.fixture(scope="module")
def blood(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("matrix")
    write_npz(root, "bloodmnist", channels=3, classes=8, n=(64, 32, 32))
    return root


MATRIX = {
    "unknown model": (["model=nosuch"], "model=nosuch is not an option; model options: cnn, efficientnet_lite0"),
    "unknown data": (["data=nosuch"], "data=nosuch is not an option; data options: brain_tumor_mri"),
    "unknown augment": (["augment=nosuch,default"], "augment=nosuch is not an option; augment options: batch, default"),
    "negative learning rate": (["optimizer.lr=-0.1", "scheduler=none"],
                               "Invalid learning rate: -0.1; fix the optimizer"),
}
# the same errors raised deeper in a run: in-process (the command line's handling is tested above)
IN_PROCESS = {
    "batch size 0": (["data.batch_size=0"], "data.batch_size=0 must be at least 1"),
    "image too small for the network": (["data.image_size=4"], "too small for 3 pooling blocks; use at least 8 px"),
    "non-finite loss": (["optimizer.lr=1e30", "scheduler=none"], r"training loss is (nan|inf) at step \d+ \(epoch 0"),
}


@pytest.mark.parametrize("case", list(MATRIX))
def test_bad_input_is_one_error_line(case: str, blood: Path, tmp_path: Path) -> None:
    overrides, expected = MATRIX[case]
    proc = run_script("train.py", f"data.root={blood}", f"hydra.run.dir={tmp_path / 'run'}", *FAST, *overrides)
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and re.search(expected, errors[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize("case", list(IN_PROCESS))
def test_bad_value_is_a_user_error_naming_it(case: str, blood: Path, tmp_path: Path) -> None:
    from medclass.tasks.train import train
    from medclass.utils.cli import find_user_error

    overrides, expected = IN_PROCESS[case]
    with pytest.raises(Exception) as raised:
        train(compose_train([f"data.root={blood}", *FAST, *overrides], tmp_path / "run"))
    assert re.search(expected, str(find_user_error(raised.value))), raised.value


def test_unwritable_run_folder_is_one_error_line(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("in the way")
    proc = run_script("train.py", f"hydra.run.dir={tmp_path / 'a_file' / 'run'}", *FAST)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert f"error: cannot create the run folder {tmp_path / 'a_file' / 'run'}" in proc.stderr
