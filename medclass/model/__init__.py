"""Networks: `conf/model/*.yaml` instantiates one with `in_chans` and `num_classes` from the data (imported on
first use: `medclass.utils.lazy`, so the small CNN never loads timm)."""

from medclass.utils.lazy import exports

__all__ = ["SimpleCNN", "pretrained_normalization", "timm_model"]
__getattr__ = exports(__name__, {"SimpleCNN": "cnn", "pretrained_normalization": "backbone",
                                 "timm_model": "backbone"})
