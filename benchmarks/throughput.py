"""Training throughput of medclass against a plain PyTorch loop, and against the machine's own peak.

    MEDCLASS_DATA=../shared/data python benchmarks/throughput.py [--steps 100] [--warmup 10] [--repeats 3]
        [--variants a,b,c,a_bf16,b_bf16,c_bf16,b_load,c_load]

The same network (`model=cnn` at its default config, with the module's memory format) trains on
BloodMNIST 28 px at batch 128 for `--steps` timed steps after `--warmup` untimed ones, as

  (a) a hand-written loop: normalized float tensors in memory, `torch.randperm` batches, Adam,
      cross-entropy, no augmentation;
  (b) medclass's default path: the Lightning Trainer, `Classifier` and the `ClassificationDataModule`
      of `augment=default` (per-sample Albumentations in `data.num_workers` worker processes);
  (c) medclass's fast path: the same with `augment=batch` (indices from the loader, images gathered
      and augmented by `BatchAugment` in `on_after_batch_transfer`);

each in fp32 and in bf16 (`trainer.precision=bf16-mixed`: Lightning's autocast to bfloat16 around the
forward pass; the plain loop opens the same `torch.autocast`). `VARIANTS` lists them as (key, label,
kind, Hydra overrides); a preset such as `experiment=bloodmnist_speed` is one more line there, and
`--variants` picks a subset.

(b) and (c) are built from `conf/train.yaml` by Hydra compose and `hydra.utils.instantiate`, as
train.py builds them, with logging, checkpointing, progress bars and validation off, on the CPU
(`trainer.accelerator=cpu`: the roofline below is the CPU's). A callback times the steady state, from
`on_train_batch_start` of step `warmup` to that of step `warmup + steps`, so every timed interval holds
one batch fetch and transfer and one optimizer step. The `loader` rows iterate the training DataLoader
alone (for (c) plus the batch-transfer hook), no model.

The roofline. Every repeat also measures what this CPU can reach, in fp32 and in bf16:

  - GEMM: a 2048 x 2048 matrix product (best of `--gemm-repeats`), fp32, bf16 tensors, and fp32 tensors
    under bf16 autocast (which adds the casts). The hardware's dense-arithmetic ceiling.
  - the model's own convolutions: every `Conv2d` of the network alone, forward and backward (input and
    weight gradients, as in training) on the input training gives it (batch 128: the shape, memory format
    and dtype a forward hook records at 28 px; under autocast every layer after the first gets bf16),
    fp32 and under bf16 autocast; best of `--conv-repeats` per layer. The conv peak is their
    FLOP-weighted rate, total FLOPs / total time: what the network's own layers reach on this CPU with
    nothing else running. That is the realistic ceiling for this small network, whose few channels and
    small maps (28, 14, 7 px) make far smaller matrix products than the 2048 x 2048 GEMM.

FLOPs come from `torch.utils.flop_counter.FlopCounterMode`, never by hand: one forward and backward of
the network at the training batch, divided by the batch. It counts the matrix products and
convolutions (2 per multiply-add); BatchNorm, ReLU, pooling, the loss and the optimizer are memory-bound
and count zero, so 100 % of a peak of the row's own precision is out of reach. Each training row gives
its images/s, its GFLOP/s (= training FLOPs per image x images/s) and that as a fraction of the fp32
GEMM peak, the bf16 GEMM peak and the conv peak of its own precision, each fraction taken within a
repeat (same load) and then the median.

Variants run interleaved in one process (peaks, then each variant, per repeat) under one
`torch.set_num_threads`. The table gives each variant's median rate over `--repeats` and the median
of its per-repeat ratio to (a); absolute rates drift with the machine's load, the ratios are what to
read. On a shared machine whose load comes in bursts, prefer more repeats of fewer steps.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import lightning as L
import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict
from torch.nn import functional as F
from torch.utils.flop_counter import FlopCounterMode

from medclass.data.base import ClassificationDataModule
from medclass.module import Classifier
from medclass.tasks.build import auto_precision
from medclass.utils.hardware import cpu_bf16_flags, cpu_capability, cpu_name, has_fast_bf16, torch_bf16_flags

CONF = Path(__file__).resolve().parents[1] / "conf"
BF16 = "trainer.precision=bf16-mixed"
FP32 = "trainer.precision=32-true"  # the default is `auto`, which is bf16 on CPUs with bf16 units
COMPILE = "module.compile=true"


class Variant(NamedTuple):
    key: str
    label: str
    kind: str  # plain: the hand-written loop; fit: medclass's trainer.fit; loader: the DataLoader alone
    overrides: tuple[str, ...]
    default: bool = True  # run without --variants


VARIANTS: list[Variant] = [
    Variant("a", "(a) plain PyTorch loop, no augmentation", "plain", (FP32,)),
    Variant("b", "(b) medclass, augment=default (Albumentations, workers)", "fit", ("augment=default", FP32)),
    Variant("c", "(c) medclass, augment=batch (fast path)", "fit", ("augment=batch", FP32)),
    Variant("a_bf16", "(a) plain loop, bf16 autocast", "plain", (BF16,)),
    Variant("b_bf16", "(b) default path, bf16-mixed", "fit", ("augment=default", BF16)),
    Variant("c_bf16", "(c) fast path, bf16-mixed", "fit", ("augment=batch", BF16)),
    Variant("speed", "speed preset, experiment=bloodmnist_speed (trainer.precision=auto)", "fit",
            ("experiment=bloodmnist_speed",)),
    Variant("b_load", "(b) data loading only", "loader", ("augment=default", FP32)),
    Variant("c_load", "(c) data loading only (+ batch transfer hook)", "loader", ("augment=batch", FP32)),
    # torch.compile (inductor, C++ on the CPU): steady-state speed; the compile itself is not timed
    Variant("c_compile", "(c) fast path, torch.compile", "fit", ("augment=batch", FP32, COMPILE), False),
    Variant("c_compile_bf16", "(c) fast path, torch.compile, bf16-mixed", "fit", ("augment=batch", BF16, COMPILE),
            False),
    # memory format: module.channels_last is true by default; these show what it buys (not run by default)
    Variant("a_nchw", "(a) plain loop, NCHW (module.channels_last=false)", "plain",
            ("module.channels_last=false", FP32), False),
    Variant("c_nchw", "(c) fast path, NCHW (module.channels_last=false)", "fit",
            ("augment=batch", "module.channels_last=false", FP32), False),
    Variant("c_nchw_bf16", "(c) fast path, NCHW, bf16-mixed", "fit",
            ("augment=batch", "module.channels_last=false", BF16), False),
    Variant("a_nchw_bf16", "(a) plain loop, NCHW, bf16 autocast", "plain", ("module.channels_last=false", BF16),
            False),
]


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


def compose_config(variant: Variant, args: argparse.Namespace, output_dir: Path) -> DictConfig:
    """conf/train.yaml as train.py composes it, with the variant's overrides and this benchmark's options."""
    overrides = [*variant.overrides, "trainer.accelerator=cpu", f"seed={args.seed}"]
    if args.batch_size is not None:
        overrides.append(f"data.batch_size={args.batch_size}")
    if args.data_root:
        overrides.append(f"data.root={args.data_root}")
    if args.num_workers is not None:
        overrides.append(f"data.num_workers={args.num_workers}")
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="train", overrides=overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = cfg.paths.log_dir = str(output_dir)
        if str(cfg.trainer.precision) == "auto":  # what train.py's build_trainer would choose here
            cfg.trainer.precision = auto_precision("cpu")[0]
    return cfg


def precision_of(cfg: DictConfig) -> str:
    """"fp32" or "bf16", from trainer.precision; the plain loop knows no other."""
    precision = str(cfg.trainer.precision)
    if precision in ("32-true", "32"):
        return "fp32"
    if precision == "bf16-mixed":
        return "bf16"
    raise SystemExit(f"trainer.precision={precision}: this benchmark runs 32-true and bf16-mixed")


def autocast(precision: str) -> contextlib.AbstractContextManager[Any]:
    """Lightning's bf16-mixed context on the CPU (cache off, as its MixedPrecision plugin has it)."""
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False)
    return contextlib.nullcontext()


def build_datamodule(cfg: DictConfig) -> ClassificationDataModule:
    datamodule: ClassificationDataModule = instantiate(cfg.data)
    datamodule.prepare_data()
    datamodule.setup()
    return datamodule


def build_net(cfg: DictConfig, datamodule: ClassificationDataModule) -> torch.nn.Module:
    """The network as the module builds it for training: the config's model, in the module's memory format."""
    info = datamodule.info
    net: torch.nn.Module = instantiate(cfg.model, in_chans=info.in_chans, num_classes=info.num_classes)
    if cfg.module.get("channels_last", False):
        net = net.to(memory_format=torch.channels_last)
    return net.train()


def example_batch(cfg: DictConfig, datamodule: ClassificationDataModule) -> tuple[torch.Tensor, torch.Tensor]:
    info = datamodule.info
    x = torch.randn(datamodule.batch_size, info.in_chans, info.image_size, info.image_size)
    if cfg.module.get("channels_last", False):
        x = x.contiguous(memory_format=torch.channels_last)
    return x, torch.randint(0, info.num_classes, (datamodule.batch_size,))


# -- the roofline ---------------------------------------------------------------------------------

def count_flops(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


class ConvCall(NamedTuple):
    """One convolution as training calls it: the layer, its input's shape, layout and dtype per precision."""

    layer: torch.nn.Conv2d
    shape: torch.Size
    needs_grad: bool  # False for the first layer: the images need no gradient
    channels_last: bool
    dtypes: dict[str, torch.dtype]  # precision -> input dtype (under bf16 autocast: bf16 after the first layer)


class NetInfo(NamedTuple):
    """One network's FLOPs and its convolutions' training inputs, from a forward and backward at the batch."""

    train_flops_per_image: float  # forward + backward
    forward_flops_per_image: float
    convs: list[ConvCall]


def inspect_net(cfg: DictConfig, datamodule: ClassificationDataModule) -> NetInfo:
    net = build_net(cfg, datamodule)
    x, y = example_batch(cfg, datamodule)
    seen: dict[str, list[tuple[torch.nn.Conv2d, torch.Tensor]]] = {"fp32": [], "bf16": []}
    precision = "fp32"

    def record(layer: torch.nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        seen[precision].append((layer, inputs[0]))

    hooks = [m.register_forward_hook(record) for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    forward = count_flops(lambda: net(x))
    precision = "bf16"
    with torch.no_grad(), autocast("bf16"):
        net(x)
    for hook in hooks:
        hook.remove()
    train = count_flops(lambda: F.cross_entropy(net(x), y).backward())
    convs = [ConvCall(layer, t.shape, t.requires_grad, t.is_contiguous(memory_format=torch.channels_last),
                      {"fp32": t.dtype, "bf16": t16.dtype})
             for (layer, t), (_, t16) in zip(seen["fp32"], seen["bf16"], strict=True)]
    return NetInfo(train / len(x), forward / len(x), convs)


def best_seconds(step: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        step()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return best


def gemm_peaks(n: int, repeats: int) -> dict[str, float]:
    """GFLOP/s of an n x n matrix product: fp32, bf16 tensors, fp32 tensors under bf16 autocast."""
    a32, b32 = torch.randn(n, n), torch.randn(n, n)
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    flops = count_flops(lambda: a32 @ b32)

    def autocast_mm() -> torch.Tensor:
        with autocast("bf16"):
            return a32 @ b32

    cases = {"gemm_fp32": lambda: a32 @ b32, "gemm_bf16": lambda: a16 @ b16, "gemm_autocast": autocast_mm}
    return {name: flops / best_seconds(fn, repeats) / 1e9 for name, fn in cases.items()}


def conv_rates(net_info: NetInfo, precision: str, repeats: int) -> list[tuple[int, float]]:
    """(FLOPs, best seconds) of each convolution alone, forward and backward, at its training input."""
    results = []
    for call in net_info.convs:
        conv = copy.deepcopy(call.layer)  # fp32 weights, as autocast trains them
        memory_format = torch.channels_last if call.channels_last else torch.contiguous_format
        x = torch.randn(call.shape, dtype=call.dtypes[precision]).contiguous(memory_format=memory_format)
        x.requires_grad_(call.needs_grad)
        with torch.no_grad(), autocast(precision):
            out = conv(x)
        grad = torch.randn(out.shape, dtype=out.dtype).contiguous(memory_format=memory_format)

        def step(conv: torch.nn.Conv2d = conv, x: torch.Tensor = x, grad: torch.Tensor = grad) -> None:
            conv.weight.grad = x.grad = None
            with autocast(precision):
                y = conv(x)
            y.backward(grad)

        results.append((count_flops(step), best_seconds(step, repeats)))
    return results


def conv_peak(rates: list[tuple[int, float]]) -> float:
    """GFLOP/s of the convolutions run one after another: FLOP-weighted, total FLOPs over total time."""
    return sum(f for f, _ in rates) / sum(s for _, s in rates) / 1e9


# -- the training paths ---------------------------------------------------------------------------

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
    net = build_net(cfg, datamodule)
    channels_last = bool(cfg.module.get("channels_last", False))
    precision = precision_of(cfg)
    optimizer = instantiate(cfg.optimizer)(params=net.parameters())  # Adam, as the module builds it
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
        with autocast(precision):
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


# -- the run --------------------------------------------------------------------------------------

def choose_variants(spec: str | None) -> list[Variant]:
    if not spec:
        return [v for v in VARIANTS if v.default]
    by_key = {v.key: v for v in VARIANTS}
    keys = [k.strip() for k in spec.split(",") if k.strip()]
    unknown = [k for k in keys if k not in by_key]
    if unknown:
        raise SystemExit(f"--variants: unknown {', '.join(unknown)}; choose from {', '.join(by_key)}")
    return [by_key[k] for k in keys]


def yaml_key(node: Any) -> str:
    return OmegaConf.to_yaml(node, resolve=True)


def short_peak(key: str, net_names: dict[str, str]) -> str:
    """gemm_fp32 -> gemm_fp32; conv_bf16_<network yaml> -> conv_bf16 (or conv_bf16_net2 with several networks)."""
    if not key.startswith("conv_"):
        return key
    _, precision, net = key.split("_", 2)
    return f"conv_{precision}" + (f"_{net_names[net]}" if len(net_names) > 1 else "")


def fmt(value: float | None, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    env_root = os.environ.get("MEDCLASS_DATA")
    parser.add_argument("--data-root", default=str(Path(env_root) / "medmnist") if env_root else None,
                        help="folder holding bloodmnist.npz (default $MEDCLASS_DATA/medmnist)")
    parser.add_argument("--steps", type=int, default=100, help="timed training steps per run")
    parser.add_argument("--warmup", type=int, default=10, help="untimed steps before them")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds; the table shows medians")
    parser.add_argument("--variants", default=None,
                        help="comma-separated keys of VARIANTS (default: " +
                             ",".join(v.key for v in VARIANTS if v.default) + "; also " +
                             ",".join(v.key for v in VARIANTS if not v.default) + ")")
    parser.add_argument("--batch-size", type=int, default=None, help="data.batch_size (default: the config's, 128)")
    parser.add_argument("--num-workers", type=int, default=None, help="data.num_workers (default: the config's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch.set_num_threads")
    parser.add_argument("--gemm-size", type=int, default=2048, help="n of the n x n GEMM peak")
    parser.add_argument("--gemm-repeats", type=int, default=5, help="GEMM timings per repeat; the best counts")
    parser.add_argument("--conv-repeats", type=int, default=5, help="timings of each convolution; the best counts")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "throughput.md",
                        help="where the table is written (default benchmarks/results/throughput.md)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    variants = choose_variants(args.variants)

    flags = cpu_bf16_flags()
    cpu = (f"{cpu_name()} ({platform.machine()}, {os.cpu_count()} cores, torch CPU capability "
           f"{cpu_capability() or '?'})")
    seen_by_torch = ", ".join(sorted(torch_bf16_flags())) or "none (or no probe in this torch)"
    bf16_line = (f"bf16 CPU flags (/proc/cpuinfo): {', '.join(sorted(flags)) or 'none'}; torch's own probe: "
                 f"{seen_by_torch}; native bf16: {'yes' if has_fast_bf16('cpu') else 'no'}; oneDNN bf16 kernels: "
                 f"{'yes' if torch.ops.mkldnn._is_mkldnn_bf16_supported() else 'no'} (yes wherever oneDNN can "
                 "emulate bf16, so not a speed claim)")
    print(f"CPU: {cpu}\n{bf16_line}\ntorch {torch.__version__}, {torch.get_num_threads()} threads\n", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        cfgs = {v.key: compose_config(v, args, Path(tmp)) for v in variants}
        dms: dict[str, ClassificationDataModule] = {}  # one DataModule per distinct data config
        by_data: dict[str, ClassificationDataModule] = {}
        for v in variants:
            key = yaml_key(cfgs[v.key].data)
            if key not in by_data:
                by_data[key] = build_datamodule(cfgs[v.key])
            dms[v.key] = by_data[key]
        # one roofline entry per distinct network (model, memory format, batch, image size)
        nets: dict[str, NetInfo] = {}
        net_of: dict[str, str] = {}
        for v in variants:
            if v.kind == "loader":
                continue
            cfg, dm = cfgs[v.key], dms[v.key]
            key = yaml_key(OmegaConf.create({"model": cfg.model, "cl": cfg.module.get("channels_last", False),
                                             "batch": dm.batch_size, "size": dm.info.image_size}))
            if key not in nets:
                nets[key] = inspect_net(cfg, dm)
            net_of[v.key] = key
        net_names = {key: f"net{i + 1}" if len(nets) > 1 else "net" for i, key in enumerate(nets)}
        first = dms[variants[0].key]
        print(f"bloodmnist {first.info.image_size} px, {len(first.datasets['train'])} training images, batch "
              f"{first.batch_size}, {args.steps} timed + {args.warmup} warm-up steps, {args.repeats} repeats, "
              f"data.num_workers={first.num_workers}", flush=True)
        for key, info in nets.items():
            print(f"{net_names[key]}: {info.train_flops_per_image / 1e6:.1f} MFLOP per training image "
                  f"(forward {info.forward_flops_per_image / 1e6:.1f}), {len(info.convs)} convolutions", flush=True)

        rates: dict[str, list[float]] = {v.key: [] for v in variants}
        peaks: dict[str, list[float]] = {}
        conv_layers: dict[tuple[str, str], list[list[tuple[int, float]]]] = {}
        for repeat in range(args.repeats):
            for name, value in gemm_peaks(args.gemm_size, args.gemm_repeats).items():
                peaks.setdefault(name, []).append(value)
            for key, info in nets.items():
                for precision in ("fp32", "bf16"):
                    layers = conv_rates(info, precision, args.conv_repeats)
                    conv_layers.setdefault((key, precision), []).append(layers)
                    peaks.setdefault(f"conv_{precision}_{key}", []).append(conv_peak(layers))
            for v in variants:
                cfg, dm = cfgs[v.key], dms[v.key]
                if v.kind == "plain":
                    rates[v.key].append(plain_rate(cfg, dm, args.steps, args.warmup))
                elif v.kind == "fit":
                    rates[v.key].append(lightning_rate(cfg, dm, args.steps, args.warmup))
                else:
                    rates[v.key].append(loader_rate(dm, args.steps, args.warmup))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {r[-1]:.0f}" for k, r in rates.items())
                  + " img/s; peak GFLOP/s " + ", ".join(f"{short_peak(k, net_names)} {p[-1]:.0f}"
                                                        for k, p in peaks.items()), flush=True)

    median = {k: statistics.median(r) for k, r in rates.items()}
    has_a = "a" in rates

    def per_repeat_median(key: str, value: Callable[[int], float]) -> float:
        return statistics.median(value(i) for i in range(len(rates[key])))

    rows = []
    for v in variants:
        key = v.key
        ratio = per_repeat_median(key, lambda i, key=key: rates[key][i] / rates["a"][i]) if has_a else None
        gflops = pct32 = pct16 = pct_conv = None
        precision = "–"
        if v.kind != "loader":
            precision = precision_of(cfgs[key])
            flops = nets[net_of[key]].train_flops_per_image
            work = [r * flops / 1e9 for r in rates[key]]  # GFLOP/s per repeat
            gflops = statistics.median(work)
            conv = peaks[f"conv_{precision}_{net_of[key]}"]
            pct32 = statistics.median(100 * w / p for w, p in zip(work, peaks["gemm_fp32"], strict=True))
            pct16 = statistics.median(100 * w / p for w, p in zip(work, peaks["gemm_bf16"], strict=True))
            pct_conv = statistics.median(100 * w / p for w, p in zip(work, conv, strict=True))
        net_tag = f" [{net_names[net_of[key]]}]" if len(nets) > 1 and key in net_of else ""
        rows.append(f"| {v.label}{net_tag} | {precision} | {median[key]:.0f} | {fmt(ratio, '.2f')} | "
                    f"{fmt(gflops, '.1f')} | {fmt(pct32, '.1f')} | {fmt(pct16, '.1f')} | {fmt(pct_conv, '.1f')} |")
    table = ["| variant | precision | images/s (median) | ratio to (a) (median of per-repeat ratios) | GFLOP/s "
             "| % of fp32 GEMM peak | % of bf16 GEMM peak | % of conv peak (own precision) |",
             "|---|---|---|---|---|---|---|---|", *rows]

    n = args.gemm_size
    peak_rows = [
        f"| GEMM {n}² fp32 | {statistics.median(peaks['gemm_fp32']):.1f} | {max(peaks['gemm_fp32']):.1f} |",
        f"| GEMM {n}² bf16 tensors | {statistics.median(peaks['gemm_bf16']):.1f} | {max(peaks['gemm_bf16']):.1f} |",
        f"| GEMM {n}² fp32 tensors under bf16 autocast | {statistics.median(peaks['gemm_autocast']):.1f} | "
        f"{max(peaks['gemm_autocast']):.1f} |",
    ]
    layer_rows = []
    for key, info in nets.items():
        tag = f"{net_names[key]}: " if len(nets) > 1 else ""
        for precision in ("fp32", "bf16"):
            values = peaks[f"conv_{precision}_{key}"]
            label = "fp32" if precision == "fp32" else "bf16 autocast"
            peak_rows.append(f"| {tag}model convolutions, fwd+bwd, {label} | {statistics.median(values):.1f} | "
                             f"{max(values):.1f} |")
        for i, call in enumerate(info.convs):
            per_precision = []
            for precision in ("fp32", "bf16"):
                runs = conv_layers[(key, precision)]
                per_precision.append(statistics.median(r[i][0] / r[i][1] / 1e9 for r in runs))
            flops = conv_layers[(key, "fp32")][0][i][0]
            layer = call.layer
            layer_rows.append(f"| {tag}{layer.in_channels}→{layer.out_channels}, {layer.kernel_size[0]}×"
                              f"{layer.kernel_size[1]} | {'×'.join(map(str, call.shape))} | {flops / 1e9:.2f} | "
                              f"{per_precision[0]:.1f} | {per_precision[1]:.1f} |")
    peak_table = ["| peak (this run) | GFLOP/s (median of repeats) | best |", "|---|---|---|", *peak_rows]
    layer_table = ["| convolution | input (N×C×H×W) | GFLOP fwd+bwd | fp32 GFLOP/s | bf16 autocast GFLOP/s |",
                   "|---|---|---|---|---|", *layer_rows]
    flop_lines = [f"{net_names[k] if len(nets) > 1 else 'The network'}: {i.train_flops_per_image / 1e6:.1f} MFLOP "
                  f"per training image (forward {i.forward_flops_per_image / 1e6:.1f}), counted by "
                  "`torch.utils.flop_counter` over one forward and backward at the training batch."
                  for k, i in nets.items()] + [""]
    print("\n" + "\n".join([*peak_table, "", *layer_table, "", *table]))

    ratios = ""
    if has_a and "c" in rates:
        ratios = " Per repeat, c/a was " + ", ".join(
            f"{x / a:.2f}" for x, a in zip(rates["c"], rates["a"], strict=True)) + "."
    command = f"MEDCLASS_DATA=../shared/data python benchmarks/throughput.py {' '.join(sys.argv[1:])}".rstrip()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join([
        "# Training throughput: plain PyTorch against medclass's paths, and against this machine's peak", "",
        f"Made by `{command}` ({time.strftime('%Y-%m-%d %H:%M')}): BloodMNIST {first.info.image_size} px, the "
        f"default CNN, batch {first.batch_size}, {args.repeats} interleaved repeats of {args.steps} timed steps "
        f"after {args.warmup} warm-up ones, everything on the CPU.{ratios}", "",
        f"- CPU: {cpu}",
        f"- {bf16_line}",
        f"- torch {torch.__version__}, {torch.get_num_threads()} threads", "",
        "## Peaks", "",
        "Measured in the same run, every repeat: the GEMM is the hardware's dense ceiling; the model's "
        "convolutions, each alone at its training shape, are the realistic one (the conv peak is total FLOPs "
        "over total time).", "",
        *peak_table, "", *layer_table, "",
        "## Training paths", "",
        *flop_lines,
        "GFLOP/s = FLOPs per image × images/s; each % is taken within a repeat against that repeat's peak, then "
        "the median. BatchNorm, ReLU, pooling, the loss and the optimizer count no FLOPs but take time, so a row "
        "stays below the peaks of its own precision; a bf16 row can pass the fp32 GEMM peak.", "",
        *table, ""]))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
