"""The cross-split duplicate count (medclass.data.leakage) on TissueMNIST-sized synthetic splits.

    python benchmarks/leakage_speed.py                 # 165,466 / 23,640 / 47,280 images at 28 px
    python benchmarks/leakage_speed.py --scale 0.1     # a tenth, with the old quadratic count beside it

Every training and evaluation run pays this count once, so it has to stay a small part of set-up.
Prints one table: images per split, copies planted and found, seconds for hashing and counting.
The quadratic variant (a set rebuilt for every image, as before issue 19) runs only with --scale
<= 0.1, where it still ends.
"""

from __future__ import annotations

import argparse
import time
from itertools import combinations

import numpy as np

from medclass.data.leakage import cross_split_duplicates, pixel_digests

SIZES = {"train": 165_466, "val": 23_640, "test": 47_280}  # TissueMNIST v2
PLANTED = {"val_in_train": 11, "test_in_train": 7, "test_in_val": 3}


def synthetic(scale: float, seed: int = 0) -> dict[str, np.ndarray]:
    """Random 28x28 grey images with exact copies planted across splits (PLANTED says how many)."""
    rng = np.random.default_rng(seed)
    arrays = {s: rng.integers(0, 256, (max(int(n * scale), 100), 28, 28), np.uint8) for s, n in SIZES.items()}
    train, val, test = arrays["train"], arrays["val"], arrays["test"]
    val[:11] = train[:11]
    test[:7] = train[50:57]
    test[20:23] = val[60:63]
    return arrays


def quadratic(arrays: dict[str, np.ndarray]) -> dict[str, int]:
    digests = {split: pixel_digests(images) for split, images in arrays.items()}
    return {f"{later}_in_{earlier}": sum(d in set(digests[earlier]) for d in digests[later])
            for earlier, later in combinations(digests, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of TissueMNIST's split sizes")
    args = parser.parse_args()
    arrays = synthetic(args.scale)
    total = sum(len(a) for a in arrays.values())
    start = time.perf_counter()
    found = cross_split_duplicates(arrays)
    linear = time.perf_counter() - start
    rows = [("linear (medclass)", linear, found)]
    if args.scale <= 0.1:
        start = time.perf_counter()
        result = quadratic(arrays)
        rows.append(("quadratic (before)", time.perf_counter() - start, result))
    print(f"{total:,} images ({', '.join(f'{s} {len(a):,}' for s, a in arrays.items())}); planted {PLANTED}\n")
    print("| count | seconds | found |\n|---|---|---|")
    for name, seconds, result in rows:
        print(f"| {name} | {seconds:.2f} | {result} |")


if __name__ == "__main__":
    main()
