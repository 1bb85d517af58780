"""`medclass-eval` / `python eval.py`: score a checkpoint on one split with the data config it was trained with.

The model file is read and checked before Lightning and the report's libraries are imported, so a bad file is
refused in seconds (docs/development.md "Start-up").
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from omegaconf import DictConfig

from medclass.data import registry as data_registry
from medclass.eval.options import EvalOptions
from medclass.module.hparams import to_plain
from medclass.utils.errors import MedclassError
from medclass.utils.io import write_json

if TYPE_CHECKING:
    from medclass.data import ClassificationDataModule
    from medclass.module import Classifier

log = logging.getLogger("medclass")


def evaluate(cfg: DictConfig) -> dict[str, Any]:
    """Evaluate a checkpoint on one split with the data config it was trained with (plus overrides)."""
    from medclass.module import operating_file
    from medclass.module.checkpoint import classifier_from, read_model_file

    # the file, the operating file beside it and the data it names are checked before Lightning is imported
    opts = EvalOptions.from_config(cfg)  # every option checked before anything is read
    model_file = read_model_file(cfg.ckpt_path)
    operating_file.check_existing(cfg.ckpt_path)
    description, machine = data_description(model_file.hparams, model_file.sealed, cfg)
    module = classifier_from(model_file)
    from medclass.tasks.build import build_trainer, scalars

    datamodule = data_registry.build(description, **machine)
    datamodule.prepare_data()
    check_same_split(module.hparams.data_info.get("split_key"), datamodule.info.split_key, cfg.ckpt_path,
                     opts.split_check)
    module.eval_split = opts.split
    if opts.tta:
        module.tta = opts.tta
    from medclass.eval.report import KeepTestOutputs

    kept = KeepTestOutputs()
    trainer = build_trainer(cfg, logger=False, callbacks=[kept])
    results = scalars(trainer.test(module, dataloaders=datamodule.split_dataloader(opts.split)))
    out = Path(cfg.paths.output_dir)
    payload = {opts.split: results, "checkpoint": str(cfg.ckpt_path), "split_key": datamodule.info.split_key}
    write_json(out / "metrics.json", payload)
    log.info("metrics: %s", out / "metrics.json")
    if opts.report:
        make_report(cfg, opts, module, datamodule, out, trainer.strategy.root_device, *kept.arrays())
    return payload


def data_description(hparams: dict[str, Any], sealed: bool, cfg: DictConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """(the data description to build, this machine's options for it): the model file's description (checked,
    never instantiated; its paths only when `sealed`) with the command line's `data.*` on top; split and cache
    files go to this machine's folders, never to a place the file names."""
    described = hparams.get("data_cfg")
    if not described:
        raise MedclassError(f"{cfg.ckpt_path} records no data to evaluate on (it was trained outside train.py); "
                            "score it from Python with Trainer.test, or retrain with train.py")
    given = to_plain(cfg.data) if cfg.get("data") else {}
    overrides = {k: v for k, v in given.items() if v is not None}
    machine = {k: overrides.pop(k) for k in data_registry.MACHINE_KEYS if k in overrides}
    check_named_paths(described, overrides, sealed, cfg)
    description = data_registry.describe({**data_registry.from_file(described), **overrides}, "data")
    info = hparams["data_info"]
    machine.update(augment=None, mean=info["mean"], std=info["std"], in_chans=info["in_chans"])
    for key in data_registry.KINDS[description["kind"]].folders:  # this machine's, not the trainer's
        machine.setdefault(key, str(Path(cfg.paths.log_dir) / {"split_dir": "splits", "cache_dir": "cache"}[key]))
    return description, machine


def check_named_paths(described: dict[str, Any], overrides: dict[str, Any], sealed: bool, cfg: DictConfig) -> None:
    """A model file's data paths are read only when this account's medclass sealed them
    (`medclass.untrusted.seal`); for any other file the user names the data, so a stranger's checkpoint
    cannot make eval read `/proc/self/environ` or list a private folder."""
    from medclass.untrusted.files import printable
    from medclass.untrusted.seal import key_file, named_paths

    if sealed:
        return
    unconfirmed = {k: v for k, v in named_paths(described).items() if k not in overrides}
    if unconfirmed:
        named = ", ".join(f"{k}={printable(v, 120)}" for k, v in unconfirmed.items())
        options = " ".join(f"data.{k}=<path>" for k in unconfirmed)
        raise MedclassError(f"{cfg.ckpt_path} names its data on disk ({named}) but was not written by medclass under "
                            f"this account (no valid seal: a colleague's or an edited file, or a new {key_file()}), "
                            f"so its paths are not read; name the data yourself with {options} "
                            "(docs/reliability.md#whose-paths-a-model-file-may-name)")


def check_same_split(trained: str | None, now: str, checkpoint: str, refuse: bool) -> None:
    """The split being scored must be the one the model was trained with: new files under the data root
    would otherwise move training images into the test split without a word."""
    if not trained or trained == now:
        return
    message = (f"the data now give split key {now}, but {checkpoint} was trained on split {trained} (files "
               "added, removed or renamed, or other split settings); point data.root at the training data")
    if refuse:
        raise MedclassError(message + ", or pass split_check=false to score the new split anyway")
    log.warning("%s; scoring the new split (split_check=false)", message)


def make_report(cfg: DictConfig, opts: EvalOptions, module: Classifier, datamodule: ClassificationDataModule,
                out: Path, device: torch.device, probs: np.ndarray, labels: np.ndarray) -> None:
    """report.json, per_class.csv, figures and report.md from the test pass's probabilities; the
    temperature is fitted on validation only (one more pass, over val)."""
    from medclass.eval import sections
    from medclass.eval.report import collect, write_predictions, write_report

    module.to(device)
    calibrate = opts.calibrate
    binary = module.hparams.data_info["task"] == "binary-class"  # operating points are chosen on val
    # fitting a temperature or a threshold on the split it scores would flatter it: never on val itself
    needs_val = opts.split != "val" and (calibrate or binary or any(t is not None for t in opts.abstain_targets))
    val = collect(module, datamodule.split_dataloader("val"), "val") if needs_val else None
    ckpt = Path(cfg.ckpt_path)
    info = module.hparams.data_info
    run_dir = ckpt.parent.parent if ckpt.parent.name == "checkpoints" else None
    report = write_report(
        out, split=opts.split, probs=probs, labels=labels, data_info=module.hparams.data_info, checkpoint=str(ckpt),
        medmnist=module.hparams.data_cfg["kind"] == "medmnist", val=val,
        n_bins=opts.ece_bins, calibrate=calibrate, run_dir=run_dir, bootstrap=opts.bootstrap,
        bootstrap_seed=opts.bootstrap_seed, target_sensitivity=opts.sensitivity)
    items = datamodule.split_items(opts.split)
    write_predictions(out / "predictions.csv", items, datamodule.item_columns, probs, labels, info)
    parts: list[sections.Section] = []
    if opts.subgroups:
        entry, text, figures = sections.subgroup_section(opts, report, info, probs, labels,
                                                         [datamodule.item_columns(i) for i in items])
        parts.append(("subgroups", entry, text, figures))
    abstain_record = None
    if info["task"] != "multi-label":
        entry, text, figures, abstain_record = sections.selective_section(opts, info["task"], probs, labels, val)
        parts.append(("selective", entry, text, figures))
    if opts.external_root:
        entry, text = sections.external_section(opts, module, device,
                                                (probs, labels) if opts.split == "test" else None, out)
        parts.append(("external", entry, text, {}))
    sections.add_sections(out, report, info, parts)
    if val is not None:  # fitted on validation: what predict.py and export.py apply to new images
        from medclass.module import operating_file

        thresholds = {name: p["threshold"] for name, p in report.get("operating_points", {}).items()
                      if p["chosen_on"] == "val"}
        operating_file.save(ckpt, report["calibration"].get("temperature"), thresholds, info.get("split_key", ""),
                            abstain_record)
    if opts.model_card:
        from medclass.eval.model_card import write_model_card

        card = write_model_card(out, ckpt, dict(module.hparams), report, run_dir,
                                {key: {"markdown": text} for key, _, text, _ in parts},
                                parameters=sum(p.numel() for p in module.parameters()), eval_dir=out)
        log.info("model card: %s", card)
