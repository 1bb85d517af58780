"""Callbacks of our own; the rest in `conf/callbacks/` are Lightning's."""

from medclass.callbacks.epoch_summary import EpochSummary
from medclass.callbacks.random_state import RandomState
from medclass.callbacks.sample_grid import AugmentedSampleGrid

__all__ = ["AugmentedSampleGrid", "EpochSummary", "RandomState"]
