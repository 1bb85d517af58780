"""Export a checkpoint to ONNX and check it against onnxruntime: `python export.py ckpt_path=<file.ckpt>`."""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from medclass.cli import report_user_errors, run


@hydra.main(version_base="1.3", config_path="conf", config_name="export")
@report_user_errors
def main(cfg: DictConfig) -> None:
    from medclass.export import run_export  # after the command-line checks: torch takes seconds to load

    run_export(cfg)


if __name__ == "__main__":
    run(main)
