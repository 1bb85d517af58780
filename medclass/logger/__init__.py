"""Run tracking around Lightning's loggers (`conf/logger/`): what Lightning does not log by itself.

- `tracked_run`: each MLflow / W&B run named after what it is (`run_name`: `bloodmnist-cnn-seed42`, and in
  a sweep the job's overrides that vary), the flat resolved config (`model._target_`, `data.batch_size`,
  ...) as MLflow params and W&B config when the run starts, so a crashed run still says what it was, and
  each W&B run closed when the job ends (failed or not), so the next job of a sweep starts its own.
- `log_run_files`: `metrics.json`, `config.yaml` and `split.csv` as MLflow artifacts and W&B run files
  (MLflow's `log_model` adds the checkpoints).
- `log_final_hparams`: TensorBoard's HPARAMS tab, the flat config beside the final figures.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from lightning.pytorch.loggers import Logger, MLFlowLogger, TensorBoardLogger, WandbLogger
from omegaconf import DictConfig, OmegaConf

from medclass.module.hparams import to_plain as plain

RUN_FILES = ("metrics.json", "config.yaml", "split.csv")


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested config to `{"data.batch_size": 128, ...}`; lists and other values as text."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def flat_config(cfg: DictConfig, leave_out: tuple[str, ...] = ("paths", "hydra")) -> dict[str, Any]:
    return {k: v for k, v in flatten(plain(cfg)).items() if k.split(".")[0] not in leave_out}


# overrides whose value the name already shows (data, model, seed): left out of a sweep job's name
SHOWN = ("seed", "data", "data.name", "model", "model.name")


def data_name(data: DictConfig) -> str:
    """The data's name as its DataModule takes it: `data.name`, else the manifest's file name, else the root
    folder's name (folder data)."""
    if data.get("name"):
        return str(data.name)
    if data.get("manifest"):
        return Path(str(data.manifest)).expanduser().stem
    return Path(str(data.get("root") or "data")).expanduser().name or "data"


def model_name(model: DictConfig) -> str:
    """`cnn`, or a timm model's timm name (`resnet18`, `convnext_atto`)."""
    from medclass.model.registry import arch_for_target
    from medclass.utils.schema import Invalid

    target = str(model.get("_target_", "model"))
    try:
        arch = arch_for_target(target, "model")
    except Invalid:
        return target.rsplit(".", 1)[-1]
    return str(model.get("name") or arch) if arch == "timm" else arch


def swept_keys(argv: Iterable[str], sweeper_params: Iterable[str]) -> set[str]:
    """The keys a sweep varies: `key=a,b` / `range(..)` / `choice(..)` on the command line, and the
    sweeper's own `params` (Optuna's search space)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser, keys = OverridesParser.create(), set(sweeper_params)
    for arg in argv:
        if arg.startswith("-") or "=" not in arg:
            continue
        try:
            override = parser.parse_override(arg)
        except Exception:  # not a Hydra override (a launcher's own arguments): nothing to learn from it
            continue
        if override.is_sweep_override():
            keys.add(override.key_or_group)
    return keys


def job_suffix(task: list[str], swept: set[str], num: int, shown: tuple[str, ...] = SHOWN) -> str:
    """What tells a sweep job from the others: its overrides of the swept keys the name does not already
    show (`optimizer.lr=0.01`), none when it shows them all (`seed=1,2,3`), or `job<num>` when which keys
    vary is not known (a job started in another process, such as a SLURM job)."""
    if not swept:
        return f"-job{num}"
    varying = [o for o in task if o.split("=", 1)[0].lstrip("+~") in swept - set(shown)]
    return "".join(f"-{o}" for o in varying)


def run_name(cfg: DictConfig) -> str:
    """The run's name in MLflow and W&B: `<data>-<model>-seed<seed>`, e.g. `bloodmnist-cnn-seed42`, or
    `xray-resnet18-seed1` for data=folder data.root=~/xray model=resnet18 seed=1; a multirun job adds its
    overrides that vary (`job_suffix`)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    name = f"{data_name(cfg.data)}-{model_name(cfg.model)}-seed{cfg.seed}"
    if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
        hydra_cfg = HydraConfig.get()
        shown = SHOWN if cfg.data.get("name") else (*SHOWN, "data.root", "data.manifest")
        params = OmegaConf.select(hydra_cfg, "sweeper.params") or {}
        name += job_suffix(list(hydra_cfg.overrides.task), swept_keys(sys.argv[1:], params),
                           hydra_cfg.job.num, shown)
    return name[:250]  # MLflow's SQL store keeps run names up to 250 characters


def name_runs(loggers: list[Logger], cfg: DictConfig) -> None:
    """MLflow's `run_name` and W&B's `name`, where the config leaves them null, set to `run_name(cfg)`
    before the run is created (Lightning creates it on first use); a run resumed by id keeps its name."""
    name = run_name(cfg)
    for logger in loggers:
        if isinstance(logger, MLFlowLogger):
            from mlflow.utils.mlflow_tags import MLFLOW_RUN_NAME

            named = logger._run_name is not None or MLFLOW_RUN_NAME in (logger.tags or {})
            if not named and logger._run_id is None:
                logger._run_name = name
        elif isinstance(logger, WandbLogger):
            if logger._wandb_init.get("name") is None and logger._experiment is None:
                logger._wandb_init["name"] = logger._name = name


def trackers(loggers: list[Logger]) -> list[MLFlowLogger | WandbLogger]:
    return [lg for lg in loggers if isinstance(lg, (MLFlowLogger, WandbLogger))]


@contextmanager
def tracked_run(loggers: list[Logger], cfg: DictConfig) -> Iterator[None]:
    """A job's span in MLflow / W&B: the run named after what it is (`name_runs`), the whole resolved config
    under dotted names as it starts (so a crashed run still says what it was), and each W&B run finished as
    it ends, also on failure, so the next job of a sweep starts its own run instead of logging into this one."""
    flat = flat_config(cfg)
    name_runs(trackers(loggers), cfg)
    for logger in trackers(loggers):
        logger.log_hyperparams(flat)
    try:
        yield
    finally:
        for logger in loggers:
            if isinstance(logger, WandbLogger):
                logger.experiment.finish()


def log_run_files(loggers: list[Logger], out: Path) -> None:
    """The run's result files into MLflow (artifacts) and W&B (run files, synced with the run)."""
    files = [out / name for name in RUN_FILES if (out / name).is_file()]
    for logger in trackers(loggers):
        if isinstance(logger, MLFlowLogger):
            for path in files:
                logger.experiment.log_artifact(logger.run_id, str(path))
        else:
            for path in files:
                logger.experiment.save(str(path), base_path=str(out), policy="now")


def log_final_hparams(loggers: list[Logger], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab: the flat config beside the final figures."""
    final = {f"hparams/{split}/{k.split('/')[-1]}": v for split in ("best_val", "test")
             for k, v in metrics.get(split, {}).items()}
    flat = flat_config(cfg, leave_out=("paths", "hydra", "callbacks", "logger"))
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat, metrics=final)
            logger.finalize("success")
