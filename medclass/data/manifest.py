"""Images listed in a CSV (`data=manifest`): `path,label[,group][,split]`, as hospital exports come.

A label is a class name, or for multi-label data several names joined with `;` (`effusion;nodule`);
with `multi_label=true` an empty label means "none of them". Multi-label splits are stratified by
each image's rarest finding, so rare findings reach every split.

Everything after reading the list is the folder pipeline's (decode once, cache, bad files reported,
augmentation, keyed splits): a manifest is a file list with labels, optionally with a patient or
study id per image (`group`: splits never divide a group) and a fixed split per image (`split`:
train, val or test, kept as given; empty cells are drawn). Other columns (age, site, view, ...) are
carried into the run's split.csv beside each image.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from medclass.data.base import DataInfo
from medclass.data.folder import FolderDataModule
from medclass.data.scan import Scan, admit
from medclass.data.splits import multilabel_strata
from medclass.utils.errors import MedclassError

REQUIRED = ("path", "label")


class ManifestDataModule(FolderDataModule):
    """`manifest`: a CSV whose relative paths start at the CSV's folder; `group_by` names a column
    (default `group` when the CSV has one) or is a regex on the path."""

    def __init__(self, manifest: str, name: str | None = None, root: str | None = None, test_root: str | None = None,
                 multi_label: bool | None = None, **kwargs: Any) -> None:
        if root or test_root:
            raise MedclassError("data=manifest takes its images from data.manifest (paths relative to the CSV's "
                                "folder); leave data.root and data.test_root null, or give a `split` column")
        self.manifest = Path(manifest).expanduser()
        self.multi_label = multi_label  # None: multi-label when some row names several classes
        super().__init__(root=str(self.manifest.parent), name=name or self.manifest.stem, **kwargs)

    def _label(self, raw: str, line: int, path: str) -> str:
        """A row's label, multi-label names deduplicated and sorted (`b;a` and `a;b` are one label)."""
        names = sorted({name.strip() for name in raw.split(";") if name.strip()})
        if len(names) > 1 and self.multi_label is False:
            raise MedclassError(f"{self.manifest} line {line}: {raw!r} names several classes but "
                                "data.multi_label=false; give one class per row or set data.multi_label=true")
        if not names and not self.multi_label:
            raise MedclassError(f"{self.manifest} line {line}: no label for {path!r} (for multi-label data with "
                                "images showing none of the classes, set data.multi_label=true)")
        return ";".join(names)

    def collect(self) -> dict[str, Scan]:
        if not self.manifest.is_file():
            raise MedclassError(f"data.manifest={self.manifest} is not a file; give a CSV with columns path,label "
                                "(and optionally group, split)")
        with self.manifest.open(newline="") as f:
            reader = csv.DictReader(f)
            columns = reader.fieldnames or []
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise MedclassError(f"{self.manifest} has no column {', '.join(missing)} (has {', '.join(columns)}); "
                                    "a manifest needs path,label and may add group and split")
            records = list(reader)
        group_column = self.group_by if self.group_by in columns else ("group" if "group" in columns and
                                                                        not self.group_by else None)
        scan, seen = Scan(), {}
        for line, record in enumerate(records, start=2):
            label = self._label(record.get("label") or "", line, record.get("path") or "")
            path = self.root / (record.get("path") or "").strip()
            digest, reason = admit(path, self.root, label, seen) if path.is_file() else ("", "missing file")
            if reason:
                scan.skipped.append((path, reason))
                continue
            scan.files.append(path)
            scan.labels.append(label)
            scan.digests.append(digest)
            if group_column:
                group = (record.get(group_column) or "").strip()
                if not group:
                    raise MedclassError(f"{self.manifest} line {line}: empty {group_column!r} for {record['path']!r};"
                                        " every row needs its group (patient or study id)")
                scan.groups.append(group)
            if "split" in columns:
                scan.given.append((record.get("split") or "").strip().lower())
            extra = {c: record.get(c) or "" for c in columns if c not in (*REQUIRED, "split", group_column)}
            if extra:
                scan.extra.append(extra)
        if self.multi_label is None:
            self.multi_label = any(";" in label for label in scan.labels)
        classes = {name for label in scan.labels for name in label.split(";") if name}
        if len(classes) < 2:
            raise MedclassError(f"{self.manifest} lists {len(classes)} class(es) among its readable "
                                "images; a classifier needs at least 2")
        if self.group_by and group_column is None and self.group_by.isidentifier():  # else: a regex on the path
            raise MedclassError(f"data.group_by={self.group_by!r} is not a column of {self.manifest} "
                                f"(columns: {', '.join(columns)}) nor a regex with a special character")
        return {"train": scan}

    # -- multi-label: a label is a set of class names --------------------------------------------
    def _names(self, label: str) -> list[str]:
        return [self._class(name) for name in label.split(";") if name]

    def strata(self, labels: list[str]) -> list[str]:
        if not self.multi_label:
            return super().strata(labels)
        return multilabel_strata([";".join(self._names(label)) for label in labels])

    def targets(self, labels: list[str]) -> np.ndarray:
        if not self.multi_label:
            return super().targets(labels)
        index = {name: i for i, name in enumerate(self.class_names())}
        hot = np.zeros((len(labels), len(index)), np.int64)
        for row, label in enumerate(labels):
            hot[row, [index[name] for name in self._names(label)]] = 1
        return hot

    def class_names(self) -> list[str]:
        rows = self.rows()  # reads the CSV, which decides multi_label when it is None
        if not self.multi_label:
            return super().class_names()
        return sorted({name for row in rows for name in self._names(row[1])})

    def describe(self) -> DataInfo:
        info = super().describe()
        if self.multi_label:
            info.task = "multi-label"
        return info
