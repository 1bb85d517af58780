"""Train, validate, test and save a classifier: `python train.py model=cnn data=medmnist`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medclass import ddp
from medclass.cli import report_user_errors, run
from medclass.runner import train
from medclass.sweep import optimized_value


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` (e.g. best_val/val/acc) so a sweeper such as Optuna can maximize it."""
    ddp.install()
    with ddp.one_job():
        metrics = train(cfg)
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    run(main)
