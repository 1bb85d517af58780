"""A model file is data (issue 25): every attack of tests/attacks.py, through eval, predict and export.

Each attack is refused with one line naming the key, its victims survive, and the same payload is
shown to be live when something does resolve or trust it. The command line is run once per command
(with a different attack each); the full matrix runs in-process, which takes the same path after
Hydra's compose. `python tools/attack_check.py` runs the whole matrix on the command line.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from medclass.tasks.evaluate import evaluate
from medclass.tasks.export import run_export
from medclass.tasks.predict import run_predict
from medclass.tasks.train import train
from medclass.utils.errors import MedclassError

from .attacks import ATTACKS, Attack
from .conftest import FAST, clean_tree, compose_train, run_script

QUIET = ["callbacks.progress_bar=null", "trainer.enable_progress_bar=false"]
COMMANDS = {"eval": evaluate, "predict": run_predict, "export": run_export}


@pytest.fixture(scope="module")
def folder_ckpt(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path]:
    """A real checkpoint of a short run on a class-per-folder set (its data description has a name and a root)."""
    tmp = tmp_path_factory.mktemp("attacks")
    root = clean_tree(tmp / "data", classes=("a", "b"), per_class=12)
    train(compose_train(["data=folder", f"data.root={root}", "data.image_size=16", *FAST, *QUIET], tmp / "run"))
    ckpt = next((tmp / "run" / "checkpoints").glob("best-*.ckpt"))
    return torch.load(ckpt, map_location="cpu", weights_only=True), root


def command_args(command: str, attack: Attack, root: Path) -> list[str]:
    return [f"ckpt_path={attack.ckpt}", *([f"inputs={root}"] if command == "predict" else [])]


def check_survivors(attack: Attack, output: str) -> None:
    for victim in attack.victims:
        assert victim.read_text() == "precious", f"{attack.name}: {victim} was changed"
    for path in attack.forbidden:
        assert not path.exists(), f"{attack.name}: {path} was written"
    if attack.secret:
        assert attack.secret not in output


@pytest.mark.parametrize("command", list(COMMANDS))
@pytest.mark.parametrize("name", list(ATTACKS))
def test_an_attack_is_refused_with_one_line_and_harms_nothing(folder_ckpt: tuple[dict, Path], tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch, name: str,
                                                              command: str) -> None:
    base, root = folder_ckpt
    folder = tmp_path / "shared"
    folder.mkdir()
    attack = ATTACKS[name](base, folder)
    for key, value in attack.env.items():
        monkeypatch.setenv(key, value)
    cfg = compose_train(command_args(command, attack, root), folder / "run", config_name=command)
    if command not in attack.refused_by:  # the command never reads what was attacked: it just works, harmlessly
        COMMANDS[command](cfg)
        check_survivors(attack, "")
        return
    with pytest.raises(MedclassError) as raised:
        COMMANDS[command](cfg)
    message = str(raised.value)
    assert re.search(attack.expect, message) and "\n" not in message, message
    check_survivors(attack, message)
    assert not (folder / "run" / "metrics.json").exists() and not (folder / "run" / "splits").exists()


@pytest.mark.parametrize("name", list(ATTACKS))
def test_the_payload_is_live_when_trusted(folder_ckpt: tuple[dict, Path], tmp_path: Path, name: str) -> None:
    """Each refusal guards something real: the same payload, resolved or trusted directly, does harm."""
    assert ATTACKS[name](folder_ckpt[0], tmp_path).live()


@pytest.mark.parametrize(("command", "name"), [("eval", "interpolation_in_data"), ("predict", "environment_secret"),
                                               ("export", "symlinked_operating_file")])
def test_the_command_line_ends_with_one_error_line(folder_ckpt: tuple[dict, Path], tmp_path: Path, command: str,
                                                   name: str) -> None:
    base, root = folder_ckpt
    attack = ATTACKS[name](base, tmp_path)
    proc = run_script(f"{command}.py", *command_args(command, attack, root), f"hydra.run.dir={tmp_path / 'run'}",
                      env=attack.env)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert proc.returncode == 2 and len(errors) == 1 and re.search(attack.expect, errors[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    check_survivors(attack, proc.stdout + proc.stderr)


def test_resuming_refuses_the_same_files(folder_ckpt: tuple[dict, Path], tmp_path: Path) -> None:
    """train.py ckpt_path= reads a file as eval.py does before Lightning touches it."""
    base, root = folder_ckpt
    for name in ("legacy_keys", "interpolation_in_net"):
        folder = tmp_path / name
        folder.mkdir()
        attack = ATTACKS[name](base, folder)
        cfg = compose_train(["data=folder", f"data.root={root}", "data.image_size=16", f"ckpt_path={attack.ckpt}",
                             *FAST, *QUIET], folder / "run")
        with pytest.raises(MedclassError, match=attack.expect):
            train(cfg)
        check_survivors(attack, "")
        assert not (folder / "run" / "checkpoints").exists()


def test_split_and_cache_folders_named_in_a_file_are_not_written(folder_ckpt: tuple[dict, Path],
                                                                 tmp_path: Path) -> None:
    """Earlier mains recorded split_dir and cache_dir in the checkpoint; a file may say where to read, never where
    to write: eval writes its split and cache files under this machine's paths.log_dir."""
    import copy

    base, root = folder_ckpt
    ckpt = copy.deepcopy(base)
    elsewhere = tmp_path / "elsewhere"
    ckpt["hyper_parameters"]["data_cfg"].update(split_dir=str(elsewhere / "splits"), cache_dir=str(elsewhere / "c"))
    torch.save(ckpt, tmp_path / "model.ckpt")
    # an edited file's paths are not read (no valid seal): the user names the data, as they would
    evaluate(compose_train([f"ckpt_path={tmp_path / 'model.ckpt'}", f"data.root={root}", "bootstrap=0",
                            "report=false"], tmp_path / "run", config_name="eval"))
    assert not elsewhere.exists() and any((tmp_path / "run" / "splits").glob("*.csv"))
