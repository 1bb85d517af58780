"""Augmentation pipelines built from `conf/augment/`: per-sample Albumentations, or batched Kornia."""

from medclass.augment.albu import eval_transform, flip_defaults, train_transform
from medclass.augment.batch import BatchAugment, batch_train_transform

__all__ = ["BatchAugment", "batch_train_transform", "eval_transform", "flip_defaults", "train_transform"]
