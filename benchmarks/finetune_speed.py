"""Training images per second of a timm backbone on this machine: memory layout and frozen early layers.

    python benchmarks/finetune_speed.py [--model tf_efficientnet_lite0] [--sizes 128 160] [--steps 15]

Each row times full training steps (forward, backward, Adam) on random grey images at batch 32, after
two warm-up steps, in one process, so the rows compare with each other; absolute figures drift
with the machine's load. `frozen` is what `module.freeze_layers` freezes.
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.nn import functional as F

from medclass.model import timm_model
from medclass.module.finetune import freeze_named_layers

EARLY = {"stem": ["conv_stem", "bn1"], "stem+2 blocks": ["conv_stem", "bn1", "blocks.0", "blocks.1"],
         "stem+3 blocks": ["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2"]}


def images_per_second(model: str, size: int, channels_last: bool, frozen: list[str], steps: int, batch: int) -> float:
    torch.manual_seed(0)
    net = timm_model(model, in_chans=1, num_classes=4)
    freeze_named_layers(net, frozen)
    x, y = torch.randn(batch, 1, size, size), torch.randint(0, 4, (batch,))
    if channels_last:
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], 1e-3)
    net.train()
    for step in range(steps + 2):
        if step == 2:
            start = time.perf_counter()
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160])
    parser.add_argument("--steps", type=int, default=15)
    parser.add_argument("--batch", type=int, default=32)
    args = parser.parse_args()
    print(f"{args.model}, batch {args.batch}, {torch.get_num_threads()} threads\n")
    print("| px | layout | frozen | images/s | × first row |\n|---|---|---|---|---|")
    base = None
    for size in args.sizes:
        for layout, frozen in [("NCHW", "none"), ("channels_last", "none"), *[("channels_last", k) for k in EARLY]]:
            rate = images_per_second(args.model, size, layout != "NCHW", EARLY.get(frozen, []), args.steps, args.batch)
            base = base or rate
            print(f"| {size} | {layout} | {frozen} | {rate:.1f} | {rate / base:.2f} |", flush=True)


if __name__ == "__main__":
    main()
