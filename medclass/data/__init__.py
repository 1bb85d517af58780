"""Datasets and Lightning DataModules (imported on first use: `medclass.utils.lazy`)."""

from medclass.utils.lazy import exports

__all__ = ["ClassificationDataModule", "DataInfo", "FolderDataModule", "ManifestDataModule", "MedMNISTDataModule",
           "StreamDataModule"]
__getattr__ = exports(__name__, {"ClassificationDataModule": "base", "DataInfo": "base", "FolderDataModule": "folder",
                                 "ManifestDataModule": "manifest", "MedMNISTDataModule": "medmnist",
                                 "StreamDataModule": "stream"})
