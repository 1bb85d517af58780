"""`medclass-train` / `python train.py`: seed, build from config, fit, validate, test the best checkpoint."""

from __future__ import annotations

import contextlib
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.callbacks import LearningRateMonitor, ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from medclass.data import ClassificationDataModule
from medclass.logger import log_final_hparams, log_run_files, tracked_run
from medclass.model import pretrained_normalization
from medclass.module import Classifier
from medclass.module.hparams import to_plain as plain
from medclass.tasks.build import build_trainer, instantiate_all, scalars
from medclass.tasks.resume import Resume
from medclass.utils.errors import MedclassError
from medclass.utils.io import write_json, write_text
from medclass.utils.logs import one_console

log = logging.getLogger("medclass")


def refuse_to_overwrite(cfg: DictConfig) -> None:
    """A run folder that already holds checkpoints is resumed (`ckpt_path=last`), never silently overwritten."""
    dirpath = OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath")
    if cfg.train and cfg.ckpt_path is None and dirpath and any(Path(dirpath).glob("*.ckpt")):
        raise MedclassError(
            f"{dirpath} already holds the checkpoints of an earlier run; add ckpt_path=last to resume it, "
            "or leave hydra.run.dir at its default for a new run folder"
        )


def check_resume_checkpoint(cfg: DictConfig) -> Resume | None:
    """`ckpt_path=` must name a checkpoint whose every part passes `medclass.tasks.resume.check_resume`
    (the reading eval.py does, then loops, callbacks, optimizer, scheduler and generator states as data) before
    anything is built; `train=false` needs one (it would test random weights otherwise). None: nothing to resume
    (no ckpt_path, or `last` before the run wrote one: Lightning would start afresh too)."""
    from medclass.tasks.resume import check_resume

    if not cfg.train and cfg.ckpt_path is None:
        raise MedclassError("train=false tests a trained model: add ckpt_path=<run>/checkpoints/<file>.ckpt "
                            "(without it the test would score random weights)")
    if cfg.get("init_from") and cfg.ckpt_path is not None:
        raise MedclassError("init_from= starts a new training from a model file's weights and ckpt_path= resumes "
                            "one (with its optimizer and progress); pass one of them")
    if cfg.ckpt_path is None:
        return None
    path = Path(str(cfg.ckpt_path))
    if cfg.ckpt_path == "last":
        path = Path(str(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath") or "")) / "last.ckpt"
        if not path.is_file():
            return None  # Lightning starts afresh (docs/reliability.md)
    return check_resume(path)


def init_weights(module: Classifier, path: str) -> None:
    """`init_from=<model file>`: anyone's `.ckpt` or `.safetensors`, read as eval.py reads it (names, dtypes and
    shapes from the index, finite numbers, a probe pass), its weights loaded strictly into the configured
    network. Nothing else of the file (optimizer, progress, callback state) is used."""
    from medclass.module.checkpoint import load_classifier

    source = load_classifier(path)
    theirs, ours = source.state_dict(), module.state_dict()
    for name in sorted(ours.keys() | theirs.keys()):
        if name not in theirs or name not in ours or theirs[name].shape != ours[name].shape:
            file, configured = (list(d[name].shape) if name in d else "absent" for d in (theirs, ours))
            raise MedclassError(f"init_from={path}: {name} is {file} in the file and {configured} in the "
                                "configured network; configure the model (and a data set with the same channels and "
                                "classes) the file was trained with")
    module.load_state_dict(theirs, strict=True)
    log.info("initialized the network from the weights of %s", path)


def discard(path: Path | None) -> None:
    """Remove the resume copy (`Resume.prepare`), and its folder once empty: the original stays where it was."""
    if path is None:
        return
    with contextlib.suppress(OSError):
        path.unlink()
    with contextlib.suppress(OSError):
        path.parent.rmdir()


def train(cfg: DictConfig) -> dict[str, Any]:
    """Seed, build, fit, validate and test the best checkpoint; writes config.yaml and metrics.json."""
    out = Path(cfg.paths.output_dir)
    refuse_to_overwrite(cfg)
    resume = check_resume_checkpoint(cfg)
    out.mkdir(parents=True, exist_ok=True)
    zero = rank_zero_only.rank == 0  # DDP: ranks > 0 run this too (docs/clusters.md "DDP"); only rank 0 writes and logs
    if zero:
        write_text(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    else:
        log.setLevel(logging.WARNING)
    one_console()  # before Lightning's first message (the seed)
    L.seed_everything(cfg.seed, workers=True)

    norm = pretrained_normalization(cfg.model) if cfg.data.get("mean") is None else None
    datamodule: ClassificationDataModule = instantiate(cfg.data, **({"mean": norm[0], "std": norm[1]} if norm else {}))
    datamodule.prepare_data()  # every rank: the download itself is locked, so only one process fetches
    info = datamodule.info
    if zero:
        datamodule.write_split(out / "split.csv")
    module: Classifier = instantiate(cfg.module, data_info=info.as_dict(), data_cfg=plain(cfg.data))
    if cfg.get("init_from"):
        init_weights(module, str(cfg.init_from))
    loggers = instantiate_all(cfg.get("logger"))
    callbacks = instantiate_all(cfg.get("callbacks"))
    if not loggers:  # logger=none: the learning-rate monitor has nowhere to write and would stop the run
        callbacks = [c for c in callbacks if not isinstance(c, LearningRateMonitor)]
    # no ModelCheckpoint configured (callbacks=none): none at all, not Lightning's default one
    checkpointing = {} if any(isinstance(c, ModelCheckpoint) for c in callbacks) else {"enable_checkpointing": False}
    resume_copy = None  # what Lightning reads instead of ckpt_path: the checked parts that fit this run
    if resume is not None:
        resume_copy, guard = resume.prepare(module, callbacks, out / "resume", rank_zero_only.rank, bool(cfg.train))
        callbacks.append(guard)
    try:
        return _fit_and_test(cfg, out, datamodule, module, loggers, callbacks, checkpointing, resume_copy)
    finally:
        discard(resume_copy)


def _fit_and_test(cfg: DictConfig, out: Path, datamodule: ClassificationDataModule, module: Classifier,
                  loggers: list[Any], callbacks: list[Any], checkpointing: dict[str, Any],
                  resume_copy: Path | None) -> dict[str, Any]:
    """Fit (from `resume_copy` when resuming), validate and test the best checkpoint; writes metrics.json."""
    info = datamodule.info
    trainer = build_trainer(cfg, callbacks=callbacks, logger=loggers or False, **checkpointing)
    with tracked_run(loggers, cfg):  # MLflow / W&B: the config first; W&B's run closed even on failure
        n_params = sum(p.numel() for p in module.parameters())
        log.info("data %s (%s, %d classes, %d channels) | model %s, %.2fM parameters | output %s",
                 getattr(datamodule, "name", None) or cfg.data._target_, info.task, info.num_classes, info.in_chans,
                 cfg.model._target_.rsplit(".", 1)[-1], n_params / 1e6, out)

        summary: dict[str, Any] = {"output_dir": str(out), "seed": cfg.seed, "parameters": n_params}
        if cfg.data.get("folds"):  # k-fold cross-validation: which fold this run validated on
            summary.update(fold=int(cfg.data.fold), folds=int(cfg.data.folds))
        if cfg.train:
            start = time.perf_counter()
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_copy, weights_only=True)
            summary.update(train_seconds=round(time.perf_counter() - start, 1), epochs=trainer.current_epoch,
                           steps=trainer.global_step)
        ckpt = next((c for c in trainer.checkpoint_callbacks if isinstance(c, ModelCheckpoint)), None)
        # train=false tests the (checked copy of) ckpt_path; a run without a best checkpoint scores its weights
        best = ((ckpt.best_model_path or None) if ckpt else None) or (None if cfg.train else resume_copy)
        summary["best_checkpoint"] = str(cfg.ckpt_path) if best is not None and best == resume_copy else best
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
            log_run_files(loggers, out)
            log.info("metrics: %s", out / "metrics.json")
    return metrics


def optimized_value(metrics: dict[str, Any], key: str | None) -> float | None:
    """`best_val/val/auc` (section/metric), or the short `val/acc` (best_val) and `test/acc` (test).

    None when there is no key or its section was not computed (train=false has no best_val);
    a metric missing from a computed section is a typo, reported as a MedclassError, because a
    sweeper handed None would fail every trial with a long trace.
    """
    if not key:
        return None
    section, _, name = key.partition("/")
    if section == "val" or (section == "test" and not name.startswith("test/")):  # short form: the logged name
        section, name = ("best_val" if section == "val" else "test"), key
    values = metrics.get(section)
    if not isinstance(values, dict):
        return None
    if name not in values:
        choices = ", ".join(f"{s}/{k}" for s, v in metrics.items() if s in ("best_val", "test") for k in v)
        raise MedclassError(f"optimized_metric={key} is not a metric of this run; choose one of: {choices}")
    return float(values[name])
