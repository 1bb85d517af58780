"""Augmentation pipelines built from `conf/augment/`: per-sample Albumentations, or batched Kornia (imported on
first use: `medclass.utils.lazy`)."""

from medclass.utils.lazy import exports

__all__ = ["BatchAugment", "batch_train_transform", "eval_transform", "flip_defaults", "train_transform"]
__getattr__ = exports(__name__, {"BatchAugment": "batch", "batch_train_transform": "batch", "eval_transform": "albu",
                                 "flip_defaults": "albu", "train_transform": "albu"})
