"""The LightningModule and what it needs to know about tasks (imported on first use: `medclass.utils.lazy`)."""

from medclass.utils.lazy import exports

__all__ = ["Classifier"]
__getattr__ = exports(__name__, {"Classifier": "classifier"})
