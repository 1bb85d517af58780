"""Train, validate, test and save a classifier: `python train.py model=cnn data=medmnist`."""

from __future__ import annotations

import sys

import hydra
from omegaconf import DictConfig

from medclass.cli import check_command_line, report_user_errors
from medclass.runner import train


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
@report_user_errors
def main(cfg: DictConfig) -> float | None:
    metrics = train(cfg)
    key = cfg.get("optimized_metric")  # e.g. val/acc, read from best_val; test/acc from test
    if not key:
        return None
    section = "best_val" if key.startswith("val/") else key.split("/")[0]
    return metrics.get(section, {}).get(key)


if __name__ == "__main__":
    check_command_line(sys.argv[1:])
    main()
