"""Datasets and Lightning DataModules."""

from medclass.data.base import ClassificationDataModule, DataInfo
from medclass.data.folder import FolderDataModule
from medclass.data.medmnist import MedMNISTDataModule

__all__ = ["ClassificationDataModule", "DataInfo", "FolderDataModule", "MedMNISTDataModule"]
