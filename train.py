"""Train, validate, test and save a classifier: `python train.py model=cnn data=medmnist`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medclass.cli import report_user_errors, run


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    """Returns `optimized_metric` (e.g. best_val/val/acc) so a sweeper such as Optuna can maximize it."""
    from medclass import ddp  # here, not above: a mistyped option is reported before torch loads (8 s)
    from medclass.runner import train
    from medclass.sweep import optimized_value

    ddp.install()
    with ddp.one_job():
        metrics = train(cfg)
    return optimized_value(metrics, cfg.get("optimized_metric"))


if __name__ == "__main__":
    run(main)
