"""Decode once vs decode every epoch, for a class-per-folder dataset: prints a table.

    MEDCLASS_DATA=../shared/data python benchmarks/folder_cache.py --preset mednist
    MEDCLASS_DATA=../shared/data python benchmarks/folder_cache.py --preset brain_tumor_mri --epochs 2

Rows: (1) a torchvision ImageFolder that opens, decodes and resizes every file every epoch, as
Keras' flow_from_directory does, then applies the same Albumentations pipeline; (2) medclass's
first run, which decodes every file once and writes the cache; (3) a later run, which reads the
cache; then one augmented training epoch over the in-memory arrays. Data loading only (no
network), one process, so the numbers compare the pipelines and not the machine's spare cores.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from PIL import Image
from torchvision.datasets import ImageFolder

CONF = Path(__file__).resolve().parents[1] / "conf"


def timed(fn) -> tuple[float, object]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def drain(loader) -> int:
    return sum(len(batch[1]) for batch in loader)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--preset", default="mednist", help="a conf/data/ folder preset")
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp())
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("train", overrides=[f"data={args.preset}", "data.num_workers=0",
                                          f"data.cache_dir={tmp / 'cache'}", f"data.split_dir={tmp / 'splits'}"])
    size = cfg.data.image_size
    rows: list[tuple[str, float, int]] = []

    # (1) decode every epoch: the files through PIL + resize, then the same augmentation
    dm = instantiate(cfg.data)
    dm.setup()
    augment = dm.datasets["train"].transform

    def per_file(path: str) -> np.ndarray:
        with Image.open(path) as img:
            return np.asarray(img.convert("L").resize((size, size), Image.BILINEAR))[..., None]

    folder = ImageFolder(cfg.data.root, loader=per_file, transform=lambda a: augment(image=a)["image"])
    per_epoch = torch.utils.data.DataLoader(folder, batch_size=cfg.data.batch_size, shuffle=True)
    for epoch in range(args.epochs):
        seconds, n = timed(lambda: drain(per_epoch))
        rows.append((f"ImageFolder, decode every epoch (epoch {epoch + 1})", seconds, n))

    # (2) and (3): medclass decodes once, then reads its cache
    shutil.rmtree(tmp / "cache", ignore_errors=True)
    seconds, fresh = timed(lambda: (instantiate(cfg.data), None)[0])
    seconds, _ = timed(lambda: fresh.setup())
    rows.append(("medclass setup, first run: decode all + write cache", seconds, len(fresh.datasets["train_eval"])))
    again = instantiate(cfg.data)
    seconds, _ = timed(lambda: again.setup())
    rows.append(("medclass setup, later run: read cache", seconds, len(again.datasets["train_eval"])))
    loader = again.train_dataloader()
    for epoch in range(args.epochs):
        seconds, n = timed(lambda: drain(loader))
        rows.append((f"medclass augmented epoch from memory (epoch {epoch + 1})", seconds, n))

    print(f"\n{args.preset}: {size} px, batch {cfg.data.batch_size}, 1 process\n")
    print(f"| {'pipeline':<58} | seconds | images | images/s |")
    print(f"|{'-' * 60}|--------:|-------:|---------:|")
    for name, seconds, n in rows:
        print(f"| {name:<58} | {seconds:7.2f} | {n:6d} | {n / seconds:8.0f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
