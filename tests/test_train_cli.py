"""train.py and eval.py end to end, as a user runs them: checkpoint, metrics.json, TensorBoard, eval parity."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from .conftest import FAST, SHARED_DATA, compose_train, run_script


def simple_cnn_parameters(in_chans: int, classes: int, widths: list[int], convs: int, hidden: int) -> int:
    """Counted by hand: 3x3 convolutions without bias, BatchNorm's weight and bias per channel, dense layers with
    bias (BloodMNIST: 3 channels in, 8 classes out)."""
    total, c = 0, in_chans
    for w in widths:
        total += 9 * c * w + 9 * w * w * (convs - 1) + 2 * w * convs
        c = w
    if hidden:
        total += c * hidden + hidden
        c = hidden
    return total + c * classes + classes


def test_the_parameter_count_by_hand_is_the_default_network_s() -> None:
    """The formula above on the default network (widths 32, 64, 128; two convolutions each; 256 hidden), checked
    once against arithmetic written out in full."""
    convs = 3 * 32 * 9 + 32 * 32 * 9 + 32 * 64 * 9 + 64 * 64 * 9 + 64 * 128 * 9 + 128 * 128 * 9
    batchnorm = 2 * 2 * (32 + 64 + 128)
    dense = 128 * 256 + 256 + 256 * 8 + 8
    assert simple_cnn_parameters(3, 8, [32, 64, 128], 2, 256) == convs + batchnorm + dense == 322_536


@pytest.fixture(scope="module")
def trained_run(blood_run: Path) -> Path:
    return blood_run


def test_run_folder_has_checkpoint_metrics_and_config(trained_run: Path) -> None:
    ckpts = sorted(p.name for p in (trained_run / "checkpoints").glob("*.ckpt"))
    assert "last.ckpt" in ckpts and any(n.startswith("best-") for n in ckpts)
    metrics = json.loads((trained_run / "metrics.json").read_text())
    assert {"test/acc", "test/auc", "test/f1", "test/loss"} <= set(metrics["test"])
    assert {"val/acc", "val/auc"} <= set(metrics["best_val"])
    assert metrics["run"]["epochs"] == 2
    model = yaml.safe_load((trained_run / "config.yaml").read_text())["model"]
    assert model["_target_"] == "medclass.model.SimpleCNN"
    assert metrics["run"]["parameters"] == simple_cnn_parameters(3, 8, model["widths"], model["convs_per_block"],
                                                                 model["hidden"])
    assert "root:" in (trained_run / "config.yaml").read_text()  # resolved config beside the results
    assert (trained_run / ".hydra" / "overrides.yaml").is_file()


def test_checkpoint_holds_only_plain_values(trained_run: Path) -> None:
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    hp = state["hyper_parameters"]
    assert hp["data_info"]["class_names"][0] == "basophil" and hp["net"]["arch"] == "cnn"


def test_tensorboard_events_read_back(trained_run: Path) -> None:
    events = EventAccumulator(str(trained_run / "tensorboard"), size_guidance={"images": 0})
    events.Reload()
    tags = events.Tags()
    assert {"train/loss_step", "val/acc", "val/auc", "test/acc"} <= set(tags["scalars"])
    assert "train/augmented_samples" in tags["images"]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")
    assert {"hparams/test/acc", "hparams/best_val/acc"} <= set(tags["scalars"])


def test_eval_reproduces_test_accuracy(trained_run: Path, tmp_path: Path) -> None:
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    out = tmp_path / "eval"
    proc = run_script("eval.py", f"ckpt_path={ckpt}", f"hydra.run.dir={out}", "trainer.enable_progress_bar=false",
                      "trainer.limit_test_batches=2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    evaluated = json.loads((out / "metrics.json").read_text())["test"]
    trained = json.loads((trained_run / "metrics.json").read_text())["test"]
    assert evaluated["test/acc"] == pytest.approx(trained["test/acc"], abs=1e-6)
    assert evaluated["test/auc"] == pytest.approx(trained["test/auc"], abs=1e-6)


def test_eval_other_split_and_missing_checkpoint(trained_run: Path, tmp_path: Path) -> None:
    ckpt = next((trained_run / "checkpoints").glob("best-*.ckpt"))
    from medclass.tasks.evaluate import evaluate
    from medclass.utils.errors import MedclassError

    from .conftest import compose_train

    evaluate(compose_train([f"ckpt_path={ckpt}", "split=val", "report=false"], tmp_path / "v", config_name="eval"))
    assert "val/acc" in json.loads((tmp_path / "v" / "metrics.json").read_text())["val"]
    with pytest.raises(MedclassError, match="nope.ckpt does not exist"):
        evaluate(compose_train([f"ckpt_path={tmp_path / 'nope.ckpt'}"], tmp_path / "n", config_name="eval"))


def test_unknown_medmnist_set_is_a_user_error_naming_it(tmp_path: Path) -> None:
    """In-process: the command line's one-line handling of user errors is tested in test_reliability."""
    from medclass.tasks.train import train
    from medclass.utils.cli import find_user_error

    from .conftest import compose_train

    with pytest.raises(Exception) as raised:
        train(compose_train(["data.name=bloodmnst", *FAST], tmp_path))
    assert "unknown MedMNIST set data.name='bloodmnst'" in str(find_user_error(raised.value))


def test_missing_data_offline_exits_with_the_message(tmp_path: Path) -> None:
    proc = run_script("train.py", f"data.root={tmp_path / 'empty'}", "data.download=false",
                      f"hydra.run.dir={tmp_path / 'run'}", *FAST, env={"HOME": str(tmp_path)})
    assert proc.returncode == 2 and "bloodmnist.npz not found in" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.slow
@pytest.mark.skipif(not (SHARED_DATA / "medmnist" / "breastmnist.npz").is_file(), reason="no shared BreastMNIST")
def test_real_breastmnist_learns(tmp_path: Path) -> None:
    """A few real epochs on BreastMNIST: the whole stack must beat chance on real ultrasound images."""
    proc = run_script("train.py", "data.name=breastmnist", f"data.root={SHARED_DATA / 'medmnist'}",
                      "data.num_workers=0", "data.batch_size=32", "trainer.max_epochs=20",
                      "callbacks.progress_bar=null", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    test = json.loads((tmp_path / "metrics.json").read_text())["test"]
    assert test["test/auc"] > 0.7, test


def test_multirun_writes_one_folder_per_job_and_gathers(tmp_path: Path) -> None:
    from medclass.tasks.gather import load_runs, summarize

    from .conftest import write_npz

    root = write_npz(tmp_path / "medmnist", "breastmnist").parent
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", "seed=1,2", f"data.root={root}", "data.name=breastmnist",
                      f"hydra.sweep.dir={sweep}", "logger=none", *FAST)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.parent.name for p in sweep.glob("*/metrics.json")) == ["0", "1"]
    rows = summarize(load_runs(sweep))
    accs = [json.loads((sweep / job / "metrics.json").read_text())["test"]["test/acc"] for job in ("0", "1")]
    assert len(rows) == 1 and rows[0]["runs"] == 2 and rows[0]["test/acc"] == pytest.approx(sum(accs) / 2)


@pytest.mark.parametrize(("config", "key", "hint"), [("eval", "ckpt_path", "<run>/checkpoints/<file>.ckpt"),
                                                      ("predict", "inputs", "<image, folder, 'glob' or CSV>")])
def test_a_required_option_left_out_is_one_error_line(config: str, key: str, hint: str, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture) -> None:
    from medclass.utils.cli import report_user_errors

    cfg = compose_train([] if config == "eval" else ["ckpt_path=x.ckpt"], tmp_path, config_name=config)
    with pytest.raises(SystemExit) as stop:
        report_user_errors(lambda c: c[key])(cfg)  # what a command does first: read its required option
    assert stop.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {key} is required: add {key}={hint} to the command"


def test_the_console_says_each_thing_once(blood_run: Path) -> None:
    """Lightning's messages once (they were printed by its own handler and again through Hydra's), without the
    advertisement, the FLOPs column of zeros, or the deprecation warning Lightning's internals trigger."""
    console = (blood_run.parent / "console.txt").read_text()
    messages = [re.sub(r"^\[[^]]*\]\[[^]]*\]\[\w+\] - |^\w+: ", "", line) for line in console.splitlines()]
    logged = [m for m, line in zip(messages, console.splitlines(), strict=True) if m != line or line.startswith("INFO")]
    repeated = {m for m in logged if logged.count(m) > 1 and "checkpoint" not in m}  # best ckpt: validate, then test
    assert not repeated, repeated
    assert "Tip" not in console and "LeafSpec" not in console and "Total FLOPs: 0 " not in console
    assert re.search(r"Total FLOPs: [\d.]+ M", console)  # computed for real, on one example image
    assert "data bloodmnist (multi-class, 8 classes, 3 channels) | model SimpleCNN" in console


def test_medclass_reads_the_command_line_with_hydras_own_flags() -> None:
    """utils/cli.py splits a command line into Hydra's flags and overrides without Hydra's private parser; this
    holds its flag table to that parser (the one place medclass looks at hydra._internal), so a Hydra release
    that adds or changes a flag fails here."""
    from hydra._internal.utils import get_args_parser

    from medclass.utils import cli

    actions = [a for a in get_args_parser()._actions if a.option_strings]
    takes = {flag for a in actions if a.nargs is None for flag in a.option_strings}
    optional = {flag for a in actions if a.nargs == "?" for flag in a.option_strings}
    switches = {flag for a in actions if a.nargs == 0 for flag in a.option_strings}
    assert (takes, optional, switches) == (cli.HYDRA_VALUE_FLAGS, cli.HYDRA_OPTIONAL_VALUE_FLAGS, cli.HYDRA_SWITCHES)
    for argv in (["-m", "model=cnn,resnet18", "seed=1"], ["--cfg", "job", "data=folder"], ["-cn", "eval", "split=val"],
                 ["-i", "defaults", "x=1"], ["--info", "-m", "a=1"], ["a=1", "--resolve"]):
        args = get_args_parser().parse_args(argv)
        assert cli.hydra_overrides(argv) == (args.overrides, bool(args.multirun)), argv
    assert cli.hydra_overrides(["--no-such-flag", "a=1"]) is None


@pytest.mark.parametrize("script", ["train.py", "eval.py", "predict.py", "export.py", "prepare.py"])
def test_help_names_the_command_and_where_its_options_are_documented(script: str) -> None:
    proc = run_script(script, "--help")
    command = "medclass-" + {"eval.py": "eval"}.get(script, script.removesuffix(".py"))
    assert proc.returncode == 0 and proc.stdout.startswith(f"{command} (python {script})"), proc.stdout[:300]
    assert "docs/configuration.md" in proc.stdout and "powered by Hydra" not in proc.stdout
