"""What train.py and eval.py do, as functions: build from config, fit, test, write results."""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from medclass.data import ClassificationDataModule
from medclass.errors import MedclassError
from medclass.models import pretrained_normalization
from medclass.module import Classifier
from medclass.module.classifier import to_plain as plain

log = logging.getLogger("medclass")


def instantiate_all(group: DictConfig | None) -> list[Any]:
    """Every `_target_` entry of a callbacks/ or logger/ group, in order; empty or null entries skipped."""
    return [instantiate(c) for c in (group or {}).values() if c and "_target_" in c]


def write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True))
    tmp.replace(path)


def scalars(results: list[dict[str, Any]]) -> dict[str, float]:
    return {k: round(float(v), 6) for r in results for k, v in r.items()}


def build_trainer(cfg: DictConfig, **overrides: Any) -> L.Trainer:
    """The configured Trainer; SyncBatchNorm is dropped on CPU, where torch refuses it (trainer=ddp on CPU)."""
    if cfg.trainer.get("sync_batchnorm") and not _uses_gpu(cfg.trainer.get("accelerator", "auto")):
        log.info("sync_batchnorm off: SyncBatchNorm needs GPUs (accelerator=%s)", cfg.trainer.accelerator)
        overrides.setdefault("sync_batchnorm", False)
    return instantiate(cfg.trainer, **overrides)


def _uses_gpu(accelerator: Any) -> bool:
    if str(accelerator) == "auto":
        return torch.cuda.is_available()
    return str(accelerator) in ("gpu", "cuda")


def refuse_to_overwrite(cfg: DictConfig) -> None:
    """A run folder that already holds checkpoints is resumed (`ckpt_path=last`), never silently overwritten."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    if cfg.train and cfg.ckpt_path is None and dirpath and any(Path(dirpath).glob("*.ckpt")):
        raise MedclassError(
            f"{dirpath} already holds the checkpoints of an earlier run; add ckpt_path=last to resume it, "
            "or leave hydra.run.dir at its default for a new run folder"
        )


def check_resume_checkpoint(cfg: DictConfig) -> None:
    """`ckpt_path=` must name a checkpoint whose hyperparameters build only medclass's own objects;
    `train=false` needs one (it would test random weights otherwise)."""
    from medclass.checkpoint import read_hparams

    if not cfg.train and cfg.ckpt_path is None:
        raise MedclassError("train=false tests a trained model: add ckpt_path=<run>/checkpoints/<file>.ckpt "
                            "(without it the test would score random weights)")
    if cfg.ckpt_path is None:
        return
    path = Path(str(cfg.ckpt_path))
    if cfg.ckpt_path == "last":
        path = Path(str(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or "")) / "last.ckpt"
        if not path.is_file():
            return  # Lightning starts afresh (docs/reliability.md)
    read_hparams(path)


def train(cfg: DictConfig) -> dict[str, Any]:
    """Seed, build, fit, validate and test the best checkpoint; writes config.yaml and metrics.json."""
    out = Path(cfg.paths.output_dir)
    refuse_to_overwrite(cfg)
    check_resume_checkpoint(cfg)
    out.mkdir(parents=True, exist_ok=True)
    zero = rank_zero_only.rank == 0  # DDP: ranks > 0 run this too (docs/sweeps.md "DDP"); only rank 0 writes and logs
    if zero:
        OmegaConf.save(cfg, out / "config.yaml", resolve=True)
    else:
        log.setLevel(logging.WARNING)
    L.seed_everything(cfg.seed, workers=True)

    norm = pretrained_normalization(cfg.model) if cfg.data.get("mean") is None else None
    datamodule: ClassificationDataModule = instantiate(cfg.data, **({"mean": norm[0], "std": norm[1]} if norm else {}))
    datamodule.prepare_data()  # every rank: the download itself is locked, so only one process fetches
    info = datamodule.info
    if zero:
        datamodule.write_split(out / "split.csv")
    module: Classifier = instantiate(cfg.module, data_info=info.as_dict(), data_cfg=plain(cfg.data))
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # logger=none: the learning-rate monitor has nowhere to write and would stop the run
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # no ModelCheckpoint configured (callbacks=none): none at all, not Lightning's default one
    checkpointing = {} if any(isinstance(c, ModelCheckpoint) for c in callbacks) else {"enable_checkpointing": False}
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False, **checkpointing)
    n_params = sum(p.numel() for p in module.parameters())
    log.info("data %s (%s, %d classes, %d channels) | model %s, %.2fM parameters | output %s",
             cfg.data.get("name", cfg.data._target_), info.task, info.num_classes, info.in_chans,
             cfg.model._target_.rsplit(".", 1)[-1], n_params / 1e6, out)

    summary: dict[str, Any] = {"output_dir": str(out), "seed": cfg.seed, "parameters": n_params}
    if cfg.data.get("folds"):  # k-fold cross-validation: which fold this run validated on
        summary.update(fold=int(cfg.data.fold), folds=int(cfg.data.folds))
    if cfg.train:
        start = time.perf_counter()
        trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.ckpt_path, weights_only=True)
        summary.update(train_seconds=round(time.perf_counter() - start, 1), epochs=trainer.current_epoch,
                       steps=trainer.global_step)
    ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
    best = ((ckpt.best_model_path or None) if ckpt else None) or cfg.ckpt_path  # train=false tests ckpt_path
    summary["best_checkpoint"] = best
    metrics: dict[str, Any] = {"run": summary, "data": {"cross_split_duplicates": datamodule.duplicates,
                                                        "groups_across_splits": datamodule.groups_across_splits,
                                                        "split_key": info.split_key}}
    if cfg.train:
        metrics["best_val"] = scalars(trainer.validate(module, datamodule=datamodule, ckpt_path=best,
                                                       verbose=False, weights_only=True))
    if cfg.test:
        metrics["test"] = scalars(trainer.test(module, datamodule=datamodule, ckpt_path=best, weights_only=True))
    if trainer.is_global_zero:  # metrics are already reduced over ranks (torchmetrics, sync_dist)
        write_json(out / "metrics.json", metrics)
        log_final_hparams(loggers, cfg, metrics)
        log.info("metrics: %s", out / "metrics.json")
    return metrics


def log_final_hparams(loggers: list[Any], cfg: DictConfig, metrics: dict[str, Any]) -> None:
    """TensorBoard's HPARAMS tab: the flat config beside the final figures."""
    final = {f"hparams/{split}/{k.split('/')[-1]}": v for split in ("best_val", "test")
             for k, v in metrics.get(split, {}).items()}
    flat = {k: v for k, v in _flatten(plain(cfg)).items() if k.split(".")[0] not in ("paths", "callbacks", "logger")}
    for logger in loggers:
        if isinstance(logger, TensorBoardLogger):
            logger.log_hyperparams(flat, metrics=final)
            logger.finalize("success")


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(_flatten(v, key + "."))
        else:
            flat[key] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on one split with the data config it was trained with (plus overrides)."""
    from medclass.checkpoint import load_classifier

    module = load_classifier(cfg.ckpt_path)
    info = module.hparams.data_info
    overrides = {k: v for k, v in plain(cfg.get("data") or {}).items() if v is not None}
    data_cfg = OmegaConf.merge(module.hparams.data_cfg, overrides)
    data_cfg.augment = None
    for key, folder in (("split_dir", "splits"), ("cache_dir", "cache")):  # this machine's, not the trainer's
        if key in data_cfg and key not in overrides:
            data_cfg[key] = str(Path(cfg.paths.log_dir) / folder)
    datamodule = instantiate(data_cfg, mean=info["mean"], std=info["std"], in_chans=info["in_chans"])
    datamodule.prepare_data()
    check_same_split(info.get("split_key"), datamodule.info.split_key, cfg)
    module.eval_split = cfg.split
    if cfg.get("tta"):
        module.tta = cfg.tta
    from medclass.eval.report import KeepTestOutputs

    kept = KeepTestOutputs()
    trainer = build_trainer(cfg, logger=False, callbacks=[kept])
    results = scalars(trainer.test(module, dataloaders=datamodule.split_dataloader(cfg.split)))
    out = Path(cfg.paths.output_dir)
    payload = {cfg.split: results, "checkpoint": str(cfg.ckpt_path), "split_key": datamodule.info.split_key}
    write_json(out / "metrics.json", payload)
    log.info("metrics: %s", out / "metrics.json")
    if cfg.get("report", True):
        make_report(cfg, module, datamodule, out, trainer.strategy.root_device, *kept.arrays())
    return payload


def check_same_split(trained: str | None, now: str, cfg: DictConfig) -> None:
    """The split being scored must be the one the model was trained with: new files under the data root
    would otherwise move training images into the test split without a word."""
    if not trained or trained == now:
        return
    message = (f"the data now give split key {now}, but {cfg.ckpt_path} was trained on split {trained} (files "
               "added, removed or renamed, or other split settings); point data.root at the training data")
    if cfg.get("split_check", True):
        raise MedclassError(message + ", or pass split_check=false to score the new split anyway")
    log.warning("%s; scoring the new split (split_check=false)", message)


def make_report(cfg: DictConfig, module: Classifier, datamodule: ClassificationDataModule, out: Path,
                device: torch.device, probs: np.ndarray, labels: np.ndarray) -> None:
    """report.json, per_class.csv, figures and report.md from the test pass's probabilities; the
    temperature is fitted on validation only (one more pass, over val)."""
    from medclass.eval.report import collect, write_predictions, write_report

    module.to(device)
    calibrate = cfg.get("calibrate", True)
    binary = module.hparams.data_info["task"] == "binary-class"  # operating points are chosen on val
    # fitting a temperature or a threshold on the split it scores would flatter it: never on val itself
    needs_val = cfg.split != "val" and (calibrate or binary)
    val = collect(module, datamodule.split_dataloader("val"), "val") if needs_val else None
    ckpt = Path(cfg.ckpt_path)
    report = write_report(
        out, split=cfg.split, probs=probs, labels=labels, data_info=module.hparams.data_info, checkpoint=str(ckpt),
        medmnist=module.hparams.data_cfg["_target_"].endswith("MedMNISTDataModule"), val=val,
        n_bins=cfg.get("ece_bins", 15), calibrate=calibrate,
        run_dir=ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None,
        bootstrap=cfg.get("bootstrap", 1000), bootstrap_seed=cfg.get("bootstrap_seed", 0),
        target_sensitivity=OmegaConf.select(cfg, "operating_point.sensitivity", default=0.95))
    write_predictions(out / "predictions.csv", datamodule.split_items(cfg.split), datamodule.item_columns, probs,
                      labels, module.hparams.data_info)
    if val is not None:  # fitted on validation: what predict.py and export.py apply to new images
        from medclass.eval import operating_file

        thresholds = {name: p["threshold"] for name, p in report.get("operating_points", {}).items()
                      if p["chosen_on"] == "val"}
        operating_file.save(ckpt, report["calibration"].get("temperature"), thresholds,
                            module.hparams.data_info.get("split_key", ""))

