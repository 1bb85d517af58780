"""Images listed in a CSV (`data=manifest`): `path,label[,group][,split]`, as hospital exports come.

A label is a class name, or for multi-label data several names joined with `;` (`effusion;nodule`);
with `multi_label=true` an empty label means "none of them". Multi-label splits are stratified by
each image's rarest finding, so rare findings reach every split.

Everything after reading the list is the folder pipeline's (decode once, cache, bad files reported,
augmentation, keyed splits): a manifest is a file list with labels, optionally with a patient or
study id per image (`group`: splits never divide a group) and a fixed split per image (`split`:
train, val or test, kept as given; empty cells are drawn). Other columns (age, site, view, ...) are
carried into the run's split.csv beside each image.

The CSV is read through `medclass.untrusted.tables.read_table` (bounded bytes, columns, lines and cells), and
an error names the file, the line and the column, never what a cell holds. A label is any text
(`T1/T2`, `grade 2.5`, `N/A`, `=cmd`, `Ödem`): the set every reader of the trained model accepts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medclass.data.base import DataInfo
from medclass.data.folder import FolderDataModule
from medclass.data.scan import Scan, admit
from medclass.data.splits import SPLIT_NAMES, multilabel_strata
from medclass.untrusted.tables import CLASS_NAME, MAX_CLASS_NAME, read_table
from medclass.utils.errors import MedclassError
from medclass.utils.schema import Invalid

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

    def _label(self, raw: str, line: int) -> str:
        """A row's label, multi-label names deduplicated and sorted (`b;a` and `a;b` are one label). Errors name
        the line, never the cell: the manifest may have been named by another file."""
        names = sorted({name.strip() for name in raw.split(";") if name.strip()})
        if len(names) > 1 and self.multi_label is False:
            raise MedclassError(f"{self.manifest} line {line}: the label names several classes (joined with ';') "
                                "but data.multi_label=false; give one class per row or set data.multi_label=true")
        if not names and not self.multi_label:
            raise MedclassError(f"{self.manifest} line {line}: no label (for multi-label data with images showing "
                                "none of the classes, set data.multi_label=true)")
        return ";".join(names)

    def collect(self) -> dict[str, Scan]:
        if not self.manifest.is_file():
            raise MedclassError(f"data.manifest={self.manifest} is not a file; give a CSV with columns path,label "
                                "(and optionally group, split)")
        table = read_table(self.manifest, "data.manifest", REQUIRED,
                           hint="a manifest needs path,label and may add group and split")
        columns = [c for c in dict.fromkeys(table.columns) if c]
        group_column = self.group_by if self.group_by in columns else ("group" if "group" in columns and
                                                                        not self.group_by else None)
        if self.group_by and group_column is None and self.group_by.isidentifier():  # else: a regex on the path
            raise MedclassError(f"data.group_by={self.group_by!r} is not a column of {self.manifest} ({len(columns)} "
                                "named columns in its header) nor a regex with a special character")
        extra_columns = [c for c in columns if c not in (*REQUIRED, "split", group_column)]
        scan, seen = Scan(), {}
        first_line: dict[str, int] = {}  # each class name once, with the line it first appears on
        for row in table.rows:
            record = table.record(row)
            label = self._label(record["label"], row.line)
            for name in label.split(";"):
                first_line.setdefault(name, row.line)
            path = self.root / record["path"].strip()
            digest, reason = admit(path, self.root, label, seen) if path.is_file() else ("", "missing file")
            if reason:
                scan.skipped.append((path, reason))
                continue
            scan.files.append(path)
            scan.labels.append(label)
            scan.digests.append(digest)
            if group_column:
                group = record[group_column].strip()
                if not group:
                    raise MedclassError(f"{self.manifest} line {row.line}: empty {group_column!r}; every row needs "
                                        "its group (patient or study id)")
                scan.groups.append(group)
            if "split" in columns:
                given = record["split"].strip().lower()
                if given not in ("", *SPLIT_NAMES):
                    raise MedclassError(f"{self.manifest} line {row.line}: the split column holds neither "
                                        f"{', '.join(SPLIT_NAMES)} nor nothing (empty: drawn by medclass)")
                scan.given.append(given)
            if extra_columns:
                scan.extra.append({c: record[c] for c in extra_columns})
        for name, line in first_line.items():  # any text is a class name, as every reader of the model accepts
            if name:
                try:
                    CLASS_NAME(name, "label")
                except Invalid:
                    raise MedclassError(f"{self.manifest} line {line}: the label is not a class name (any text of "
                                        f"at most {MAX_CLASS_NAME} characters, not blank, without control characters "
                                        "or '${'); fix that cell") from None
        if self.multi_label is None:
            self.multi_label = any(";" in label for label in scan.labels)
        classes = {name for label in scan.labels for name in label.split(";") if name}
        if len(classes) < 2:
            raise MedclassError(f"{self.manifest} lists {len(classes)} class(es) among its readable "
                                "images; a classifier needs at least 2")
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
