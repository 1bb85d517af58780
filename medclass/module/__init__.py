"""The LightningModule and what it needs to know about tasks."""

from medclass.module.classifier import Classifier

__all__ = ["Classifier"]
