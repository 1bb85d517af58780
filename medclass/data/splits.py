"""Seeded, stratified splits written to a CSV (path, label, split) and reused, so every run agrees."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from sklearn.model_selection import train_test_split

from medclass.errors import MedclassError

Row = tuple[str, str, str]  # file path relative to data.root (test rows: data.test_root), class folder, split


def stratified_splits(labels: Sequence[str], fractions: Sequence[float], seed: int) -> list[str]:
    """One split name per item: train/val/test in the given fractions, every class in every split."""
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise MedclassError(f"data.split_fractions={list(fractions)} must be three numbers ≥ 0 that sum to 1")
    index = list(range(len(labels)))
    split = ["train"] * len(labels)
    rest, rest_labels = index, list(labels)
    for name, fraction, remaining in (("test", fractions[2], 1.0), ("val", fractions[1], 1 - fractions[2])):
        share = fraction / remaining if remaining > 0 else 0
        if share <= 0:
            continue
        try:
            rest, taken = train_test_split(rest, test_size=share, random_state=seed, stratify=rest_labels)
        except ValueError as err:
            raise MedclassError(f"cannot make a stratified {name} split ({err}); add images or change "
                                "data.split_fractions") from err
        for i in taken:
            split[i] = name
        rest_labels = [labels[i] for i in rest]
    return split


def write_rows(path: Path, rows: Sequence[Row]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "label", "split"])
        writer.writerows(rows)
    tmp.replace(path)


def read_rows(path: Path) -> list[Row]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames != ["path", "label", "split"]:
            raise MedclassError(f"{path} is not a split file (header path,label,split); delete it to re-split")
        return [(r["path"], r["label"], r["split"]) for r in reader]
