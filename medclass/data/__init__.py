"""Datasets and Lightning DataModules."""

from medclass.data.base import ClassificationDataModule, DataInfo
from medclass.data.medmnist import MedMNISTDataModule

__all__ = ["ClassificationDataModule", "DataInfo", "MedMNISTDataModule"]
