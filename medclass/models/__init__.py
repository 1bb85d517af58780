"""Networks: `conf/model/*.yaml` instantiates one with `in_chans` and `num_classes` from the data."""

from medclass.models.backbone import pretrained_normalization, timm_model
from medclass.models.cnn import SimpleCNN

__all__ = ["SimpleCNN", "pretrained_normalization", "timm_model"]
