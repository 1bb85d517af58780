"""The command line: `medclass-train`, `medclass-eval`, `medclass-predict`, `medclass-export`, `medclass-gather`,
`medclass-prepare` (and the repository's `train.py`, `eval.py`, `predict.py`, `export.py`, `prepare.py`, which
call these).

Hydra reads the configs shipped inside the package (`pkg://medclass.conf`), so an installed medclass
runs from any folder; `hydra.searchpath` adds a user's own config folders (docs/configuration.md).
Each command imports its task only after the command line passed `utils.cli`'s checks.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medclass.utils.cli import report_user_errors, run

CONFIGS = "pkg://medclass.conf"


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="train")
@report_user_errors
def _train(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` (e.g. best_val/val/acc) so a sweeper such as Optuna can maximize it."""
    from medclass.tasks.train import optimized_value, train
    from medclass.utils import ddp

    ddp.install()
    with ddp.one_job():
        metrics = train(cfg)
    return optimized_value(metrics, cfg.get("optimized_metric"))


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="eval")
@report_user_errors
def _eval(cfg: DictConfig) -> None:
    from medclass.tasks.evaluate import evaluate

    evaluate(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="predict")
@report_user_errors
def _predict(cfg: DictConfig) -> None:
    from medclass.tasks.predict import run_predict

    run_predict(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="export")
@report_user_errors
def _export(cfg: DictConfig) -> None:
    from medclass.tasks.export import run_export

    run_export(cfg)


@hydra.main(version_base="1.3", config_path=CONFIGS, config_name="prepare")
@report_user_errors
def _prepare(cfg: DictConfig) -> None:
    from medclass.tasks.prepare import run_prepare

    run_prepare(cfg)


def train() -> None:
    """`medclass-train`: train, validate, test and save a classifier (`medclass-train model=cnn data=medmnist`)."""
    run(_train)


def evaluate() -> None:
    """`medclass-eval ckpt_path=<file.ckpt> [split=test]`: metrics, report, intervals, operating points."""
    run(_eval)


def predict() -> None:
    """`medclass-predict ckpt_path=<file.ckpt> inputs=<image|folder|glob|csv>`: class and confidence per image."""
    run(_predict)


def export() -> None:
    """`medclass-export ckpt_path=<file.ckpt>`: ONNX, checked against onnxruntime."""
    run(_export)


def gather() -> None:
    """`medclass-gather <multirun folder>`: one row per configuration, mean ± std over seeds or folds."""
    from medclass.tasks.gather import main

    main()


def prepare() -> None:
    """`medclass-prepare data=folder data.root=<folder> out=<new folder>`: a LitData copy for data=stream."""
    run(_prepare)
