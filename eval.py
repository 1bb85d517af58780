"""Evaluate a checkpoint on a split: `python eval.py ckpt_path=<file.ckpt> split=test`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medclass.cli import report_user_errors, run


@hydra.main(version_base="1.3", config_path="conf", config_name="eval")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from medclass.runner import evaluate  # after the command-line checks: torch takes seconds to load

    evaluate(cfg)


if __name__ == "__main__":
    run(main)
