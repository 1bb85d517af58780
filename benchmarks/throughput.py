"""Training throughput of medclass against a plain PyTorch loop: what the data path and Lightning cost.

    MEDCLASS_DATA=../shared/data python benchmarks/throughput.py [--steps 100] [--warmup 10] [--repeats 3]

The same network (`model=cnn` at its default config, with the module's memory format) trains on
BloodMNIST 28 px at batch 128 for `--steps` timed steps after `--warmup` untimed ones, as

  (a) a hand-written loop: normalized float tensors in memory, `torch.randperm` batches, Adam,
      cross-entropy, no augmentation;
  (b) medclass's default path: the Lightning Trainer, `Classifier` and the `ClassificationDataModule`
      of `augment=default` (per-sample Albumentations in `data.num_workers` worker processes);
  (c) medclass's fast path: the same with `augment=batch` (indices from the loader, images gathered
      and augmented by `BatchAugment` in `on_after_batch_transfer`).

(b) and (c) are built from `conf/train.yaml` by Hydra compose and `hydra.utils.instantiate`, as
train.py builds them, with logging, checkpointing, progress bars and validation off. A callback times
the steady state, from `on_train_batch_start` of step `warmup` to that of step `warmup + steps`,
so every timed interval holds one batch fetch and transfer and one optimizer step. The `loader`
rows iterate the training DataLoader alone (for (c) plus the batch-transfer hook), no model.

Variants run interleaved in one process (a, b, c, loaders, per repeat) under one
`torch.set_num_threads`. The table gives each variant's median rate over `--repeats` and the median
of its per-repeat ratio to (a); absolute rates drift with the machine's load, the ratios are what to
read. On a shared machine whose load comes in bursts, prefer more repeats of fewer steps.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, open_dict
from torch.nn import functional as F

from medclass.data.base import ClassificationDataModule
from medclass.module import Classifier

CONF = Path(__file__).resolve().parents[1] / "conf"
PATHS = {"b": "default", "c": "batch"}  # variant -> augment= option


class StepTimer(L.Callback):
    """Wall time from the start of step `first` to the start of step `last` (global steps)."""

    def __init__(self, first: int, last: int) -> None:
        self.first, self.last = first, last
        self.start: float | None = None
        self.seconds: float | None = None

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if trainer.global_step == self.first:
            self.start = time.perf_counter()
        elif trainer.global_step == self.last and self.start is not None:
            self.seconds = time.perf_counter() - self.start


def compose_config(augment: str, args: argparse.Namespace, output_dir: Path) -> DictConfig:
    """conf/train.yaml as train.py composes it, with this benchmark's data options."""
    overrides = [f"augment={augment}", f"data.batch_size={args.batch_size}", f"seed={args.seed}"]
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(output_dir)
    return cfg


def build_datamodule(cfg: DictConfig) -> ClassificationDataModule:
    datamodule: ClassificationDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def lightning_rate(cfg: DictConfig, datamodule: ClassificationDataModule, steps: int, warmup: int) -> float:
    """Images/s of `trainer.fit` in its steady state, on the shipped Trainer, Classifier and DataModule."""
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module: Classifier = instantiate(cfg.module, data_info=datamodule.info.as_dict(), data_cfg=None)
    timer = StepTimer(warmup, warmup + steps)
    trainer: L.Trainer = instantiate(
        cfg.trainer, callbacks=[timer], logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, limit_val_batches=0, num_sanity_val_steps=0, max_epochs=-1,
        max_steps=warmup + steps + 1,
    )
    trainer.fit(module, datamodule=datamodule)
    assert timer.seconds is not None, "the timed steps did not run"
    return datamodule.batch_size * steps / timer.seconds


def shuffled_batches(n: int, batch: int) -> Iterator[torch.Tensor]:
    """Index batches of a new `torch.randperm` every epoch; the last partial batch is dropped."""
    while True:
        order = torch.randperm(n)
        for i in range(0, n - batch + 1, batch):
            yield order[i:i + batch]


def plain_rate(cfg: DictConfig, datamodule: ClassificationDataModule, steps: int, warmup: int) -> float:
    """Images/s of a hand-written loop on the same network: no augmentation, no Lightning."""
    torch.manual_seed(cfg.seed)
    info = datamodule.info
    train = datamodule.datasets["train_eval"]
    images = np.ascontiguousarray(train.images[train.index])  # uint8 (N, H, W, C), the same split, in memory
    labels = torch.as_tensor(datamodule.datasets["train_eval"].labels)
    mean = torch.tensor(info.mean).view(1, -1, 1, 1)
    std = torch.tensor(info.std).view(1, -1, 1, 1)
    x_all = (torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255.0 - mean) / std
    net: torch.nn.Module = instantiate(cfg.model, in_chans=info.in_chans, num_classes=info.num_classes)
    channels_last = bool(cfg.module.get("channels_last", False))
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())  # Adam, as the module builds it
    net.train()
    batch = datamodule.batch_size
    batches = shuffled_batches(len(labels), batch)
    start = time.perf_counter()
    for step in range(warmup + steps):
        if step == warmup:
            start = time.perf_counter()
        index = next(batches)
        x, y = x_all[index], labels[index]
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def loader_rate(datamodule: ClassificationDataModule, steps: int, warmup: int) -> float:
    """Images/s of the training DataLoader alone (fast path: plus `on_after_batch_transfer`), no model."""
    L.seed_everything(datamodule.seed, workers=True, verbose=False)
    loader = datamodule.train_dataloader()
    done, start = 0, time.perf_counter()
    while done < warmup + steps:
        for batch in loader:
            if done == warmup:
                start = time.perf_counter()
            if done == warmup + steps:
                break
            datamodule.on_after_batch_transfer(batch, 0)
            done += 1
    seconds = time.perf_counter() - start
    del loader  # shuts its (persistent) workers down
    return datamodule.batch_size * steps / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env_root = os.environ.get("MEDCLASS_DATA")
    parser.add_argument("--data-root", default=str(Path(env_root) / "medmnist") if env_root else None,
                        help="folder holding bloodmnist.npz (default $MEDCLASS_DATA/medmnist)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--num-workers", type=int, default=None, help="data.num_workers (default: the config's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.md",
                        help="where the table is written (default benchmarks/results/throughput.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {v: compose_config(aug, args, Path(tmp) / v) for v, aug in PATHS.items()}
        dms = {v: build_datamodule(cfg) for v, cfg in cfgs.items()}
        print(f"bloodmnist 28 px, {len(dms['b'].datasets['train'])} training images, batch {args.batch_size}, "
              f"{args.steps} timed + {args.warmup} warm-up steps, {args.repeats} repeats, "
              f"{torch.get_num_threads()} torch threads, data.num_workers={dms['b'].num_workers} (b), "
              f"channels_last={cfgs['b'].module.channels_last}\n", flush=True)
        rates: dict[str, list[float]] = {k: [] for k in ("a", "b", "c", "b_load", "c_load")}
        for repeat in range(args.repeats):
            rates["a"].append(plain_rate(cfgs["b"], dms["b"], args.steps, args.warmup))
            for v in PATHS:
                rates[v].append(lightning_rate(cfgs[v], dms[v], args.steps, args.warmup))
            for v in PATHS:
                rates[f"{v}_load"].append(loader_rate(dms[v], args.steps, args.warmup))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {r[-1]:.0f}" for k, r in rates.items()), flush=True)

    median = {k: statistics.median(r) for k, r in rates.items()}
    # ratios within a repeat (same load), then their median: steadier than a ratio of medians
    ratio = {k: statistics.median(x / a for x, a in zip(r, rates["a"], strict=True)) for k, r in rates.items()}
    names = {
        "a": "(a) plain PyTorch loop, no augmentation",
        "b": "(b) medclass, augment=default (Albumentations, workers)",
        "c": "(c) medclass, augment=batch (fast path)",
        "b_load": "(b) data loading only",
        "c_load": "(c) data loading only (+ batch transfer hook)",
    }
    lines = ["| variant | images/s (median) | ratio to (a) (median of per-repeat ratios) |", "|---|---|---|",
             *(f"| {name} | {median[key]:.0f} | {ratio[key]:.2f} |" for key, name in names.items())]
    print("\n" + "\n".join(lines))
    machine = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU, {os.cpu_count()} cores"
    per_repeat = ", ".join(f"{x / a:.2f}" for x, a in zip(rates["c"], rates["a"], strict=True))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([
        "# Training throughput: plain PyTorch against medclass's two augmentation paths", "",
        f"Made by `MEDCLASS_DATA=../shared/data python benchmarks/throughput.py {' '.join(sys.argv[1:])}".rstrip()
        + f"` ({time.strftime('%Y-%m-%d %H:%M')}, {machine}, torch {torch.__version__}): BloodMNIST 28 px, the "
        f"default CNN, batch {args.batch_size}, {args.repeats} interleaved repeats of {args.steps} timed steps "
        f"after {args.warmup} warm-up ones. Per repeat, c/a was {per_repeat}.", "", *lines, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
