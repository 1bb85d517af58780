"""Sweeps, clusters and DDP: Optuna through Hydra, the SLURM launcher config, 2-process CPU DDP."""

from __future__ import annotations

import json
import os
from pathlib import Path

import lightning as L
import pytest
import yaml
from hydra import compose, initialize_config_dir

from medclass.tasks.train import optimized_value
from medclass.utils.errors import MedclassError

from .conftest import CONF, FAST, compose_train, run_script, write_npz

METRICS = {"best_val": {"val/acc": 0.5, "val/auc": 0.75}, "test": {"test/acc": 0.25}}


@pytest.mark.parametrize(("key", "value"), [("best_val/val/auc", 0.75), ("val/acc", 0.5), ("test/acc", 0.25),
                                            ("test/test/acc", 0.25), (None, None)])
def test_optimized_value(key: str | None, value: float | None) -> None:
    assert optimized_value(METRICS, key) == value


def test_optimized_value_typo_is_one_line_error() -> None:
    with pytest.raises(MedclassError, match="optimized_metric=best_val/val/accuracy .*best_val/val/acc"):
        optimized_value(METRICS, "best_val/val/accuracy")
    assert optimized_value({"test": {"test/acc": 1.0}}, "best_val/val/acc") is None  # train=false: no best_val


def compose_hydra(overrides: list[str]):
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose(config_name="train", overrides=overrides, return_hydra_config=True)


def test_optuna_search_composes() -> None:
    cfg = compose_hydra(["hparams_search=optuna"])
    sweeper = cfg.hydra.sweeper
    assert sweeper._target_.endswith("OptunaSweeper") and sweeper.direction == "maximize"
    assert sweeper.sampler._target_ == "optuna.samplers.TPESampler" and sweeper.sampler.seed == cfg.seed
    assert set(sweeper.params) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size", "model.dropout"}
    assert cfg.optimized_metric == "best_val/val/acc"


def fake_slurm(bin_dir: Path, capture: Path) -> None:
    """`srun` and `sbatch` stand-ins: sbatch keeps the script it was given, then refuses the job."""
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 1\n")
    refuse = 'echo "sbatch: error: no cluster here" >&2\nexit 1\n'
    (bin_dir / "sbatch").write_text(f'#!/bin/sh\ncp "$1" "{capture}"\n{refuse}')
    for tool in ("srun", "sbatch"):
        (bin_dir / tool).chmod(0o755)


def test_slurm_launcher_writes_the_configured_sbatch_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """conf/hydra/launcher/slurm.yaml through the plugin's own launch(): the sbatch script it submits."""
    from hydra.utils import instantiate

    capture = tmp_path / "submitted.sh"
    fake_slurm(tmp_path / "bin", capture)
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:{os.environ['PATH']}")
    cfg = compose_hydra(["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "hydra.launcher.timeout_min=30",
                         "hydra.launcher.gpus_per_node=2", "hydra.launcher.tasks_per_node=2",
                         "hydra.launcher.setup=[module load cuda]",
                         "+hydra.launcher.additional_parameters.constraint=a100",
                         f"hydra.sweep.dir={tmp_path / 'sweep'}", "hydra.job.name=train"])
    launcher = instantiate(cfg.hydra.launcher)  # what Hydra does with hydra.launcher
    launcher.setup(hydra_context=None, task_function=None, config=cfg)
    with pytest.raises(Exception, match="no cluster here"):
        launcher.launch([[f"seed={i}"] for i in range(17)], initial_job_idx=0)  # one more than array_parallelism
    sbatch = capture.read_text()
    # the command line's choices and slurm.yaml's own defaults (the plugin's would be 256 jobs, no memory)
    for line in ("--partition=gpu", "--time=30", "--gpus-per-node=2", "--ntasks-per-node=2", "--cpus-per-task=8",
                 "--mem=32GB", "--nodes=1", "--job-name=train", "--array=0-16%16", "--constraint=a100"):
        assert f"#SBATCH {line}\n" in sbatch, sbatch
    assert "\nmodule load cuda\n" in sbatch and str(tmp_path / "sweep" / ".submitit") in sbatch
    assert not [line for line in sbatch.splitlines() if line.startswith(("#SBATCH --account", "#SBATCH --qos"))]


def tiny_root(tmp_path: Path) -> Path:
    return write_npz(tmp_path / "medmnist", "bloodmnist", channels=3, classes=8, n=(64, 32, 32)).parent


def test_optuna_sweep_runs_trials(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", "hparams_search=optuna", "hydra.sweeper.n_trials=2", *FAST,
                      f"data.root={tiny_root(tmp_path)}", f"hydra.sweep.dir={sweep}", "logger=none")
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    trials = [json.loads((sweep / str(i) / "metrics.json").read_text()) for i in range(2)]
    assert set(results["best_params"]) == {"optimizer.lr", "optimizer.weight_decay", "data.batch_size",
                                           "model.dropout"}
    assert results["best_value"] == max(t["best_val"]["val/acc"] for t in trials)
    assert not (sweep / "2").exists()


def assert_one_ddp_run(run: Path) -> None:
    """Rank 0 alone writes: one checkpoint set, one metrics.json with test metrics, no temporary files."""
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-epoch000.ckpt", "last.ckpt"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"test/acc", "test/auc", "test/loss"} <= set(metrics["test"]) and "val/acc" in metrics["best_val"]
    assert not list(run.glob("*.tmp"))


DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *FAST, "logger=csv"]


@pytest.mark.slow  # tests/test_stream.py runs 2-process DDP through train.py and eval.py in the default suite
def test_ddp_two_cpu_processes(tmp_path: Path) -> None:
    proc = run_script("train.py", *DDP, f"data.root={tiny_root(tmp_path)}", f"paths.log_dir={tmp_path / 'out'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "out" / "train" / "runs").iterdir())
    assert len(runs) == 1, runs  # rank 1 joined rank 0's folder instead of making its own
    assert_one_ddp_run(runs[0])
    assert (runs[0] / "train.log").read_text().count("metrics: ") == 1  # rank 1 logs warnings only


@pytest.mark.slow  # the two-process DDP run above covers the default suite
def test_ddp_inside_multirun(tmp_path: Path) -> None:
    """Each job of a sweep starts its own ranks in its own folder (Lightning alone would rerun the sweep)."""
    sweep = tmp_path / "sweep"
    proc = run_script("train.py", "-m", *DDP, f"data.root={tiny_root(tmp_path)}", f"hydra.sweep.dir={sweep}",
                      "seed=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["0", "1"]
    for job in ("0", "1"):
        assert_one_ddp_run(sweep / job)


class ForwardDtypeProbe(L.Callback):
    """Instantiated by train.py (`+callbacks.probe=...`): writes <run>/probe.json with what fit really ran —
    the trainer's precision, the dtype of every training forward's logits, whether the network was compiled."""

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.dtypes: list[str] = []
        self.handle = module.register_forward_hook(
            lambda mod, args, out: self.dtypes.append(str(out.dtype)) if mod.training else None)

    def on_fit_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.handle.remove()
        probe = {"precision": trainer.precision, "dtypes": self.dtypes,
                 "compiled": getattr(module.net, "_compiled_call_impl", None) is not None}
        (Path(trainer.default_root_dir) / "probe.json").write_text(json.dumps(probe))


def test_cpu_speed_options_bf16_and_compile(tmp_path: Path) -> None:
    """bf16 autocast on CPU and a compiled network train, test and save a checkpoint that loads uncompiled."""
    import torch

    out = tmp_path / "out"
    proc = run_script("train.py", *FAST, f"data.root={tiny_root(tmp_path)}", f"paths.log_dir={out}", "logger=none",
                      "trainer=cpu", "trainer.precision=bf16-mixed", "module.compile={backend:aot_eager}",
                      "+callbacks.probe={_target_:tests.test_sweeps.ForwardDtypeProbe}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = next((out / "train" / "runs").iterdir())
    probe = json.loads((run / "probe.json").read_text())
    assert probe["precision"] == "bf16-mixed" and probe["compiled"]
    assert len(probe["dtypes"]) == 2 and set(probe["dtypes"]) == {"torch.bfloat16"}  # 2 steps, logits in bf16
    assert {"test/acc", "test/loss"} <= set(json.loads((run / "metrics.json").read_text())["test"])
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["hyper_parameters"]["compile"] == {"backend": "aot_eager"}
    assert not [k for k in ckpt["state_dict"] if "_orig_mod" in k]  # compiled in place: eval.py loads it as is


def test_ema_weights_are_validated_saved_tested_and_evaluated_alike(tmp_path: Path) -> None:
    """With callbacks.ema the best checkpoint holds the average, and train.py's test and eval.py score it."""
    import torch

    from medclass.tasks.evaluate import evaluate
    from medclass.tasks.train import train

    metrics = train(compose_train([*FAST, f"data.root={tiny_root(tmp_path)}", "logger=none", "trainer.max_epochs=2",
                                   "callbacks.ema={_target_:medclass.callbacks.EMA,decay:0.5}",
                                   "trainer.precision=32-true"],  # eval.py scores in fp32: compare like with like
                                  tmp_path / "run"))
    best = metrics["run"]["best_checkpoint"]
    ckpt = torch.load(best, map_location="cpu", weights_only=True)
    raw, averaged = ckpt["current_model_state"], ckpt["state_dict"]
    assert any(not torch.equal(raw[k], averaged[k]) for k in averaged if averaged[k].is_floating_point())
    for split in ("test", "val"):
        evaluated = evaluate(compose_train([f"ckpt_path={best}", f"split={split}", "report=false", "calibrate=false",
                                            f"trainer.limit_{split}_batches=2"], tmp_path / split,
                                           config_name="eval"))[split]
        trained = metrics["test" if split == "test" else "best_val"]
        assert evaluated[f"{split}/loss"] == pytest.approx(trained[f"{split}/loss"], abs=1e-5), split
