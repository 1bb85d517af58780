"""Datasets and Lightning DataModules."""

from medclass.data.base import ClassificationDataModule, DataInfo
from medclass.data.folder import FolderDataModule
from medclass.data.manifest import ManifestDataModule
from medclass.data.medmnist import MedMNISTDataModule
from medclass.data.stream import StreamDataModule

__all__ = ["ClassificationDataModule", "DataInfo", "FolderDataModule", "ManifestDataModule", "MedMNISTDataModule",
           "StreamDataModule"]
