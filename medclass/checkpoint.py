"""Loading checkpoints safely: tensors and plain values only (`weights_only=True`)."""

from __future__ import annotations

from pathlib import Path

import torch

from medclass.errors import MedclassError
from medclass.module import Classifier


def load_classifier(path: str | Path, map_location: str = "cpu") -> Classifier:
    path = Path(path)
    if not path.is_file():
        raise MedclassError(f"checkpoint {path} does not exist; pass ckpt_path=<run>/checkpoints/<file>.ckpt")
    try:
        hparams = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("hyper_parameters", {})
        # the checkpoint holds the trained weights: building the network must not fetch pretrained ones
        net = {**hparams["net"], "pretrained": False} if "pretrained" in hparams.get("net", {}) else None
        return Classifier.load_from_checkpoint(path, map_location=map_location, weights_only=True,
                                               **({"net": net} if net else {}))
    except Exception as err:
        raise MedclassError(f"cannot load checkpoint {path} safely ({type(err).__name__}: {err})") from err
