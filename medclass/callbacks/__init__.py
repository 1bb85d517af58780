"""Callbacks of our own; the rest in `conf/callbacks/` are Lightning's."""

from medclass.callbacks.confusion_matrix import ConfusionMatrixImage
from medclass.callbacks.ema import EMA
from medclass.callbacks.epoch_summary import EpochSummary
from medclass.callbacks.random_state import RandomState
from medclass.callbacks.sample_grid import AugmentedSampleGrid
from medclass.callbacks.worst_mistakes import WorstMistakes

__all__ = ["AugmentedSampleGrid", "ConfusionMatrixImage", "EMA", "EpochSummary", "RandomState", "WorstMistakes"]
