"""Class-per-folder image datasets (`data=folder` and its presets): decode once, split once.

Images are decoded, converted to the channel count and resized to `image_size` a single time, one
at a time, into a memory-mapped `.npy` cache (`medclass.data.cache`, keyed by the file list, size and
channels): every epoch after the first read costs what MedMNIST costs, and memory does not grow with
the number of images.

The split depends only on the data and `split_seed`, never on the training `seed`, so `seed=1,2,3`
varies training alone. Its file in `split_dir` is named by a key over everything that decides it
(the file list, fractions, split seed, class map, test root): change any and the key changes, so a
stored split is never reused for other data. Paths are stored relative to their root, so a moved or
shared copy of the data keeps its split.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from rich.progress import track

from medclass.data.base import SPLITS, ClassificationDataModule, DataInfo, report_skipped
from medclass.data.cache import ImageCache, open_cache, temporary_stem, write_cache
from medclass.data.decode import decode_resized
from medclass.data.scan import Scan, scan_folder
from medclass.data.splits import Row, assign_splits, groups_across_splits, read_rows, write_rows
from medclass.utils.errors import MedclassError
from medclass.utils.extras import MissingExtra
from medclass.utils.limits import time_limit

log = logging.getLogger("medclass")
GROUP_BY_SECONDS = 30  # a regex over every path of a 100k-image set takes well under a second


class FolderDataModule(ClassificationDataModule):
    """`root/<class>/<images>`; an optional `test_root` of the same layout is the test split."""

    def __init__(
        self,
        root: str,
        name: str | None = None,
        test_root: str | None = None,
        image_size: int = 64,
        in_chans: int | None = 1,
        class_map: dict[str, str] | None = None,
        split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
        split_dir: str = "outputs/splits",
        cache_dir: str | None = "outputs/cache",
        symmetry: str = "sided",
        split_seed: int = 0,
        group_by: str | None = None,
        folds: int | None = None,
        fold: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(image_size=image_size, in_chans=in_chans, **kwargs)
        self.root = Path(root).expanduser()
        self.test_root = Path(test_root).expanduser() if test_root else None
        self.name = name or self.root.name
        self.class_map, self.split_fractions = dict(class_map or {}), tuple(split_fractions)
        self.split_dir, self.cache_dir = Path(split_dir), Path(cache_dir) if cache_dir else None
        self.symmetry, self.split_seed = symmetry, split_seed
        self.group_by, self.folds, self.fold = group_by, folds, fold
        self.split_key = ""
        self.groups_across_splits: dict[str, int] = {}  # patients (groups) with images in two splits
        self._rows: list[Row] | None = None
        self.skipped: list[tuple[Path, str]] = []
        self._items: dict[str, list[str]] = {}
        self._columns: dict[str, dict[str, str]] = {}  # per relative path: group and a manifest's extra columns

    # -- files, classes and splits ----------------------------------------------------------
    @property
    def split_file(self) -> Path:
        return self.split_dir / f"{self.name}-{self.split_key}.csv"

    def file_of(self, row: Row) -> Path:
        """A row's file: test rows live under test_root when there is one, every other row under root."""
        return (self.test_root if self.test_root and row[2] == "test" else self.root) / row[0]

    def _key(self, scans: dict[str, Scan], groups: dict[str, list[str] | None]) -> str:
        """Everything that decides the split, hashed: the files with their labels, groups and given splits,
        fractions, seeds, folds, class map."""
        spec: dict[str, Any] = {
            "files": {name: [[_relative(p, self.root if name == "train" else self.test_root), label]
                             for p, label in zip(scan.files, scan.labels, strict=True)]
                      for name, scan in scans.items()},
            "fractions": [float(f) for f in self.split_fractions], "split_seed": int(self.split_seed),
            "class_map": dict(sorted(self.class_map.items())), "test_root": self.test_root is not None,
        }
        if groups:  # absent: keys of earlier runs hold
            spec["groups"] = groups
        if any(scan.given for scan in scans.values()):
            spec["given"] = {name: scan.given for name, scan in scans.items()}
        if self.folds:
            spec["folds"] = [int(self.folds), int(self.fold)]
        return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]

    def _groups(self, scan: Scan, name: str = "train") -> list[str] | None:
        """The group (patient, study) of each file: the manifest's column, or `group_by` as a regex on the
        file's path below its root (its first capture group, or the whole match)."""
        if scan.groups:
            return scan.groups
        if not self.group_by:
            return None
        try:
            pattern = re.compile(self.group_by)
        except re.error as err:
            raise MedclassError(f"data.group_by={self.group_by!r} is not a regular expression ({err})") from err
        root = self.root if name == "train" else self.test_root
        groups = []
        limit = time_limit(GROUP_BY_SECONDS, f"data.group_by={self.group_by!r} took more than {GROUP_BY_SECONDS} s "
                           f"over {len(scan.files)} paths (a pattern that backtracks); write a simpler one, e.g. "
                           "'(P\\d+)_'")
        with limit:
            found_all = [pattern.search(_relative(path, root)) for path in scan.files]
        for path, found in zip(scan.files, found_all, strict=True):
            rel = _relative(path, root)
            if not found:
                raise MedclassError(f"data.group_by={self.group_by!r} finds no group in {rel}; write the regex so "
                                    "every path matches, e.g. '(P\\d+)_' for glioma/P0012_scan3.png")
            groups.append(found.group(1) if pattern.groups else found.group(0))
        return groups

    def collect(self) -> dict[str, Scan]:
        """The usable files by source ("train": the root's, "test": test_root's), with what was skipped."""
        scans = {"train": scan_folder(self.root)}
        if self.test_root:
            scans["test"] = scan_folder(self.test_root, what="data.test_root")
            self._drop_test_copies(scans["train"], scans["test"])
        return scans

    def _class(self, folder: str) -> str:
        return self.class_map.get(folder, folder)

    def strata(self, labels: list[str]) -> list[str]:
        """What the split is stratified by, per file: its class."""
        return [self._class(label) for label in labels]

    def targets(self, labels: list[str]) -> np.ndarray:
        """The label array of a split: one class index per file."""
        index = {name: i for i, name in enumerate(self.class_names())}
        return np.array([[index[self._class(label)]] for label in labels], np.int64).reshape(-1, 1)

    def rows(self) -> list[Row]:
        """(path, folder label, split) for every usable file; made once, then read from split_file."""
        if self._rows is not None:
            return self._rows
        scans = self.collect()
        groups = {name: self._groups(scan, name) for name, scan in scans.items()}  # once: a regex over every path
        groups = groups if any(g is not None for g in groups.values()) else {}
        self.split_key = self._key(scans, groups)
        rows = self._make_rows(scans, groups)
        if self.split_file.is_file():
            saved = read_rows(self.split_file)
            if sorted(saved) != sorted(rows):
                raise MedclassError(
                    f"{self.split_file} does not hold the split its key {self.split_key} stands for (edited by "
                    "hand?); delete it to split again"
                )
            log.info("split %s (key %s)", self.split_file, self.split_key)
        else:
            others = sorted(p.name for p in self.split_dir.glob(f"{self.name}-*.csv"))
            write_rows(self.split_file, rows)
            log.info("wrote split %s (key %s)", self.split_file, self.split_key)
            if others:
                log.warning("%s: new split key %s (the files, data.split_fractions, data.split_seed or "
                            "data.class_map changed); earlier splits in %s: %s — results are comparable only "
                            "within one key", self.name, self.split_key, self.split_dir, ", ".join(others))
        self.skipped = [s for scan in scans.values() for s in scan.skipped]
        self._rows = rows
        return rows

    def _drop_test_copies(self, train: Scan, test: Scan) -> None:
        """A training image that is also a test image would leak: the training copy is skipped and reported.

        A copy filed under another class is a labelling error in one of the two folders: it stops the run.
        """
        in_test = dict(zip(test.digests, zip(test.files, test.labels, strict=True), strict=True))
        keep = []
        for i, digest in enumerate(train.digests):
            if digest not in in_test:
                keep.append(i)
                continue
            test_path, test_label = in_test[digest]
            if self._class(test_label) != self._class(train.labels[i]):
                raise MedclassError(
                    f"the same image is {train.files[i]} (class {train.labels[i]}) and {test_path} "
                    f"(class {test_label}); delete the wrong copy"
                )
            train.skipped.append((train.files[i], f"test-split copy of {test_path}"))
        train.keep(keep)

    def _make_rows(self, scans: dict[str, Scan], all_groups: dict[str, list[str] | None]) -> list[Row]:
        train = scans["train"]
        labels = self.strata(train.labels)
        if self.test_root:
            a, b = self.split_fractions[:2]
            fractions = (a / (a + b), b / (a + b), 0.0)
        else:
            fractions = self.split_fractions
        groups = all_groups.get("train")
        for i, path in enumerate(train.files):
            extra = train.extra[i] if train.extra else {}
            # the group the split used wins over a manifest column of the same name (group_by a regex)
            columns = {**({"group": groups[i]} if groups else {}),
                       **{k: v for k, v in extra.items() if not (groups and k == "group")}}
            if columns:
                self._columns[_relative(path, self.root)] = columns
        splits = assign_splits(labels, fractions, self.split_seed, groups=groups, given=train.given or None,
                               folds=self.folds, fold=self.fold)
        rows = [(_relative(p, self.root), lbl, s) for p, lbl, s in zip(train.files, train.labels, splits, strict=True)]
        if "test" in scans:
            assert self.test_root is not None
            rows += [(_relative(p, self.test_root), lbl, "test")
                     for p, lbl in zip(scans["test"].files, scans["test"].labels, strict=True)]
            if groups is not None:
                groups = groups + (all_groups.get("test") or [])
        if groups is not None:
            self._check_groups(groups, [r[2] for r in rows])
        return rows

    def _check_groups(self, groups: list[str], splits: list[str]) -> None:
        """Patient-level leakage: groups with images in two splits (drawn splits never have any; given ones may)."""
        self.groups_across_splits = groups_across_splits(groups, splits)
        found = {k: n for k, n in self.groups_across_splits.items() if n}
        if found:
            log.warning("groups (patients) in two splits: %s; the test score may measure memory of a patient",
                        ", ".join(f"{n} {k.replace('_', ' ')}" for k, n in found.items()))
        else:
            log.info("%d groups, none in two splits", len(set(groups)))

    def _report_skipped(self) -> None:
        report_skipped(self.skipped, self.split_dir / f"{self.name}_skipped.csv")

    # -- what the base class needs ------------------------------------------------------------
    def class_names(self) -> list[str]:
        return sorted({self._class(r[1]) for r in self.rows()})

    def describe(self) -> DataInfo:
        names = self.class_names()
        return DataInfo(task="binary-class" if len(names) == 2 else "multi-class", class_names=names,
                        in_chans=self.in_chans or 1, image_size=self.image_size or 64, symmetry=self.symmetry,
                        split_key=self.split_key)

    def split_items(self, split: str) -> list[str]:
        return self._items[split]

    def item_columns(self, item: str) -> dict[str, str]:
        return self._columns.get(item, {})

    def load_splits(self) -> tuple[ImageCache, dict[str, tuple[np.ndarray, np.ndarray]]]:
        rows = self.rows()
        paths = [self.file_of(r) for r in rows]
        cache = self._decode_all(paths)
        keep = cache.keep
        reported = {p for p, _ in self.skipped}
        self.skipped += [(p, "unreadable image (see the first run's log)") for p, k in zip(paths, keep, strict=True)
                         if not k and p not in reported]
        self._report_skipped()
        out = {}
        for split in SPLITS:
            sel = [i for i, r in enumerate(rows) if r[2] == split and keep[i]]
            if not sel:
                raise MedclassError(
                    f"the {split} split of {self.root} is empty; add images or change data.split_fractions"
                )
            out[split] = (np.asarray(sel, np.int64), self.targets([rows[i][1] for i in sel]))
            self._items[split] = [rows[i][0] for i in sel]
        return cache, out

    def _decode_all(self, paths: list[Path]) -> ImageCache:
        """All images at image_size with the channel count, decoded one at a time into a memory-mapped
        cache (`medclass.data.cache`), or the cache of an earlier run when the files are the same."""
        size, chans = self.image_size or 64, self.in_chans or 1
        key = hashlib.sha1(
            "\n".join(f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths).encode()
            + f"|{size}|{chans}".encode()
        ).hexdigest()[:16]
        name = f"{self.name}-{size}px-{chans}ch-{key}"
        stem = self.cache_dir / name if self.cache_dir else temporary_stem(name)
        cache = open_cache(stem)
        if cache is not None:
            return cache
        with write_cache(stem, (len(paths), size, size, chans)) as writer:
            for i, path in enumerate(track(paths, description=f"decoding {self.name}", transient=True)):
                try:
                    writer.put(i, decode_resized(path, size, chans)[None])
                except MissingExtra:
                    raise
                except Exception as err:  # corrupt, truncated, unreadable: reported, never silent
                    writer.drop(i)
                    self.skipped.append((path, f"unreadable image ({type(err).__name__}: {err})"))
        cache = open_cache(stem)
        assert cache is not None
        return cache


def _relative(path: Path, root: Path | None) -> str:
    """`path` below `root`, with forward slashes on every system: how split files name images (a manifest's
    absolute path outside its folder stays absolute)."""
    assert root is not None
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.absolute().as_posix()
