"""`medclass-prepare` / `python prepare.py`: a folder or manifest written once as a streaming data set (LitData)."""

from __future__ import annotations

import logging
from typing import Any

from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from medclass.data.folder import FolderDataModule
from medclass.data.stream import prepare
from medclass.utils.errors import MedclassError

log = logging.getLogger("medclass")


def run_prepare(cfg: DictConfig) -> dict[str, Any]:
    """Scan and split `cfg.data` as train.py would (split file included), then write `cfg.out` for data=stream.

    The data config is recorded in the prepared set's `medclass.json` (`source`) for the reader; nothing is
    ever built from that record."""
    target = str(cfg.data.get("_target_", ""))
    if not target.endswith(("FolderDataModule", "ManifestDataModule")):
        raise MedclassError(f"medclass-prepare takes data=folder, data=manifest or their presets (mednist, "
                            f"brain_tumor_mri, ...), not {target or 'this data config'}")
    if int(cfg.workers) < 1:
        raise MedclassError(f"workers={cfg.workers} must be at least 1")
    data: FolderDataModule = instantiate(cfg.data, augment=None)
    source = {k: v for k, v in OmegaConf.to_container(cfg.data, resolve=True).items()
              if k not in ("_target_", "augment", "split_dir", "cache_dir", "batch_size", "eval_batch_size",
                           "num_workers", "pin_memory", "sampler", "seed", "mean", "std")}
    return prepare(data, cfg.out, workers=int(cfg.workers), chunk_bytes=str(cfg.chunk_bytes),
                   source={"kind": target.rsplit(".", 1)[-1], **source})
