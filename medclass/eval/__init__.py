"""What `eval.py` learns from a checkpoint: metrics, calibration, figures and the report folder (imported on first
use: `medclass.utils.lazy`)."""

from medclass.utils.lazy import exports

__all__ = ["write_report"]
__getattr__ = exports(__name__, {"write_report": "report"})
