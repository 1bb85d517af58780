"""What `eval.py` learns from a checkpoint: metrics, calibration, figures and the report folder."""

from medclass.eval.report import write_report

__all__ = ["write_report"]
