"""Seeded splits: stratified by label, disjoint by group (patient, study), optionally k-fold, written
to a CSV (path, label, split) and reused, so every run agrees.

sklearn does the partitioning: `train_test_split` (stratified) without groups, `StratifiedGroupKFold`
with them (every group lands in one split), `StratifiedKFold` / `StratifiedGroupKFold` for k-fold
cross-validation. With groups, a fraction is met as closely as whole groups allow: m of K stratified
group folds (K ≤ 20), m/K nearest the fraction (`fold_count`).
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

from medclass.untrusted.tables import read_table
from medclass.utils.errors import MedclassError
from medclass.utils.io import read_cell, write_csv

Row = tuple[str, str, str]  # file path relative to data.root (test rows: data.test_root), class folder, split
SPLIT_NAMES = ("train", "val", "test")


def check_fractions(fractions: Sequence[float]) -> None:
    if len(fractions) != 3 or min(fractions) < 0 or abs(sum(fractions) - 1) > 1e-6:
        raise MedclassError(f"data.split_fractions={list(fractions)} must be three numbers ≥ 0 that sum to 1")


def fold_count(share: float, n_groups: int, most: int = 20) -> tuple[int, int]:
    """(m, K): m of K folds make up `share` most closely, K from 2 to min(most, n_groups)."""
    options = [(abs(m / k - share), k, m) for k in range(2, max(2, min(most, n_groups)) + 1) for m in range(1, k)]
    _, k, m = min(options)
    return m, k


def _take(index: list[int], share: float, labels: Sequence[str], groups: Sequence[str] | None, seed: int,
          name: str) -> tuple[list[int], list[int]]:
    """(rest, taken): about `share` of `index`, stratified by label and, with groups, whole groups only."""
    y = [labels[i] for i in index]
    try:
        if groups is None:
            rest, taken = train_test_split(index, test_size=share, random_state=seed, stratify=y)
            return list(rest), list(taken)
        # m of K stratified group folds, m/K as close to the share as whole groups allow (K ≤ 20 and at most
        # the number of groups; the smaller K on a tie, so 0.1 is one fold of 10, as it always was)
        members = [groups[i] for i in index]
        m, k = fold_count(share, len(set(members)))
        folds = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
        first_m = itertools.islice(folds.split(index, y, members), m)
        taken_at = sorted(j for _, held_out in first_m for j in held_out)
        chosen = set(taken_at)
        rest_at = [j for j in range(len(index)) if j not in chosen]
    except ValueError as err:
        raise MedclassError(f"cannot make a stratified {name} split ({err}); add images or change "
                            "data.split_fractions" + (" (or check data.group_by)" if groups else "")) from err
    return [index[i] for i in rest_at], [index[i] for i in taken_at]


def assign_splits(
    labels: Sequence[str],
    fractions: Sequence[float],
    seed: int,
    groups: Sequence[str] | None = None,
    given: Sequence[str] | None = None,
    folds: int | None = None,
    fold: int = 0,
) -> list[str]:
    """One split name per item.

    - `given`: a split per item ("train", "val", "test", or "" to be drawn); given splits are kept.
      With `folds`, given train/val items are pooled and re-partitioned; given test items stay test.
    - Without `folds`: test, then val, are drawn from the undecided items in the given fractions.
    - With `folds=K`: the test set is drawn once (same `seed`, so identical for every fold), and the
      rest is cut into K stratified (and group-disjoint) folds: fold `fold` is val, the others train.
    """
    check_fractions(fractions)
    n = len(labels)
    split = list(given) if given is not None else [""] * n
    if folds:
        if folds < 2 or not 0 <= fold < folds:
            raise MedclassError(f"data.folds={folds} data.fold={fold}: need folds ≥ 2 and 0 ≤ fold < folds")
        split = ["test" if s == "test" else "" for s in split]
    bad = next((i for i, s in enumerate(split) if s not in ("", *SPLIT_NAMES)), None)
    if bad is not None:  # the item, not the value: a given split comes from a file
        raise MedclassError(f"the given split of item {bad} is not one of {', '.join(SPLIT_NAMES)} (or empty: drawn "
                            "by medclass)")
    undecided = [i for i in range(n) if not split[i]]
    if not undecided:
        return split
    test_given = "test" in split
    if not test_given and fractions[2] > 0:
        undecided, taken = _take(undecided, fractions[2], labels, groups, seed, "test")
        for i in taken:
            split[i] = "test"
    if folds:
        y = [labels[i] for i in undecided]
        splitter = (StratifiedGroupKFold(folds, shuffle=True, random_state=seed) if groups is not None
                    else StratifiedKFold(folds, shuffle=True, random_state=seed))
        try:
            parts = list(splitter.split(undecided, y, None if groups is None else [groups[i] for i in undecided]))
        except ValueError as err:
            raise MedclassError(f"cannot cut {len(undecided)} images into data.folds={folds} stratified folds "
                                f"({err}); use fewer folds or add images") from err
        val_at = set(parts[fold][1].tolist())
        for j, i in enumerate(undecided):
            split[i] = "val" if j in val_at else "train"
        return split
    kept = fractions[0] + fractions[1]  # the undecided items are now train + val
    share = fractions[1] / kept if kept > 0 else 0.0
    if share > 0 and "val" not in split:
        undecided, taken = _take(undecided, share, labels, groups, seed, "val")
        for i in taken:
            split[i] = "val"
    for i in undecided:
        split[i] = "train"
    return split


def multilabel_strata(labels: Sequence[str], min_count: int = 2) -> list[str]:
    """A stratum per multi-label item (`"a;b"`, or `""` for none), for sklearn's single-label stratifiers:
    the item's rarest label, so rare findings spread over every split; strata smaller than `min_count`
    are pooled into the largest one (sklearn cannot stratify a stratum of one)."""
    sets = [[name for name in label.split(";") if name] for label in labels]
    counts = Counter(name for names in sets for name in names)
    strata = [min(names, key=lambda name: (counts[name], name)) if names else "" for names in sets]
    sizes = Counter(strata)
    largest = sizes.most_common(1)[0][0]
    return [s if sizes[s] >= min_count else largest for s in strata]


def groups_across_splits(groups: Sequence[str], splits: Sequence[str]) -> dict[str, int]:
    """How many groups (patients) have images in two splits: `{"val_and_train": 0, ...}`; leakage by patient."""
    seen: dict[str, set[str]] = {}
    for group, split in zip(groups, splits, strict=True):
        seen.setdefault(group, set()).add(split)
    pairs = (("val", "train"), ("test", "train"), ("test", "val"))
    return {f"{a}_and_{b}": sum(a in s and b in s for s in seen.values()) for a, b in pairs}


def write_rows(path: Path, rows: Sequence[Row]) -> None:
    write_csv(path, rows, ["path", "label", "split"])


def read_rows(path: Path) -> list[Row]:
    """A split file back (`write_rows`), through the bounded table reader: a file at the split's name is read as
    data, whoever put it there."""
    table = read_table(path, "split file", hint="delete it to re-split")
    if table.columns != ("path", "label", "split"):
        raise MedclassError(f"{path} is not a split file (header path,label,split); delete it to re-split")
    return [(read_cell(r.cells[0]), read_cell(r.cells[1]) if len(r.cells) > 1 else "",
             r.cells[2] if len(r.cells) > 2 else "") for r in table.rows]
