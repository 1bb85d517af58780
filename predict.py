"""Classify images with a checkpoint or an ONNX export: `python predict.py ckpt_path=<file.ckpt> inputs=<path>`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medclass.cli import report_user_errors, run


@hydra.main(version_base="1.3", config_path="conf", config_name="predict")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from medclass.predict import run_predict  # after the command-line checks: torch takes seconds to load

    run_predict(cfg)


if __name__ == "__main__":
    run(main)
