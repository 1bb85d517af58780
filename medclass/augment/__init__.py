"""Augmentation pipelines built from `conf/augment/`."""

from medclass.augment.albu import eval_transform, flip_defaults, train_transform

__all__ = ["eval_transform", "flip_defaults", "train_transform"]
