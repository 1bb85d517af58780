"""Shared fixtures: tiny synthetic MedMNIST files, Hydra compose, and the CLI as a subprocess."""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, open_dict
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
# runs that keep the default paths.log_dir (subprocesses inherit it) write caches and splits here, not in the repo.
# pytest-xdist's workers inherit the folder from the main process: only the process that made it removes it, at
# its exit, after every worker has ended (a worker removing it would pull it from under the other's runs).
if "MEDCLASS_OUTPUTS" not in os.environ:
    os.environ["MEDCLASS_OUTPUTS"] = tempfile.mkdtemp(prefix="medclass-test-outputs-")
    atexit.register(shutil.rmtree, os.environ["MEDCLASS_OUTPUTS"], True)
CONF = ROOT / "conf"
SHARED_DATA = Path(os.environ.get("MEDCLASS_DATA") or ROOT.parent / "shared" / "data")


def write_npz(folder: Path, name: str, size: int = 28, channels: int = 1, classes: int = 2,
              task: str = "multi-class", n: tuple[int, int, int] = (48, 16, 16), seed: int = 0) -> Path:
    """An official-layout npz whose classes differ in brightness, so a few steps can learn them."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, count in zip(("train", "val", "test"), n, strict=True):
        if task == "multi-label":
            labels = rng.integers(0, 2, (count, classes)).astype(np.uint8)
            level = labels[:, :1].astype(np.float32)
        else:
            labels = (np.arange(count) % classes).astype(np.uint8)[:, None]
            level = labels.astype(np.float32) / max(classes - 1, 1)
        shape = (count, size, size) + ((channels,) if channels > 1 else ())
        noise = rng.normal(0, 20, shape)
        images = np.clip(60 + 120 * level.reshape((count,) + (1,) * (len(shape) - 1)) + noise, 0, 255)
        arrays[f"{split}_images"] = images.astype(np.uint8)
        arrays[f"{split}_labels"] = labels
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / (f"{name}.npz" if size == 28 else f"{name}_{size}.npz")
    np.savez(path, **arrays)
    return path


def save(path: Path, array: np.ndarray, mode: str | None = None, **kw) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path, **kw) if mode else Image.fromarray(array).save(path, **kw)


def grey(level: int, size: int = 20, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(level + rng.normal(0, 10, (size, size)), 0, 255).astype(np.uint8)


def clean_tree(root: Path, classes: tuple[str, ...] = ("a", "b"), per_class: int = 10) -> Path:
    for c, name in enumerate(classes):
        for i in range(per_class):
            save(root / name / f"img{i}.png", grey(40 + 80 * c, seed=100 * c + i))
    return root


@pytest.fixture
def blood_root(tmp_path: Path) -> Path:
    """A synthetic bloodmnist.npz (3 channels, 8 classes) in its own folder."""
    write_npz(tmp_path / "medmnist", "bloodmnist", channels=3, classes=8, n=(64, 32, 32))
    return tmp_path / "medmnist"


def compose_train(overrides: list[str], output_dir: Path, config_name: str = "train") -> DictConfig:
    """The real config tree, composed as train.py would, with paths set for a test."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(output_dir)
        cfg.paths.log_dir = str(output_dir)  # split files and caches too: nothing lands in the repo
    return cfg


def run_script(script: str, *args: str, cwd: Path = ROOT, env: dict[str, str] | None = None,
               timeout: int = 300) -> subprocess.CompletedProcess:
    """Run train.py or eval.py exactly as a user would."""
    full_env = {**os.environ, "MEDCLASS_DATA": "", **(env or {})}
    return subprocess.run([sys.executable, str(ROOT / script), *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


FAST = ["debug=fast"]


@pytest.fixture(scope="session")
def blood_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real 2-epoch train.py run on synthetic 8-class BloodMNIST, shared by the CLI, report and TensorBoard tests."""
    tmp = tmp_path_factory.mktemp("blood_run")
    root = write_npz(tmp / "medmnist", "bloodmnist", channels=3, classes=8, n=(64, 48, 48)).parent
    out = tmp / "run"
    proc = run_script("train.py", f"data.root={root}", f"hydra.run.dir={out}", *FAST, "trainer.max_epochs=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (tmp / "console.txt").write_text(proc.stdout + proc.stderr)  # what the user saw (test_train_cli)
    return out
