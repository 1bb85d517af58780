"""Networks: `conf/model/*.yaml` instantiates one with `in_chans` and `num_classes` from the data."""

from medclass.model.backbone import pretrained_normalization, timm_model
from medclass.model.cnn import SimpleCNN

__all__ = ["SimpleCNN", "pretrained_normalization", "timm_model"]
