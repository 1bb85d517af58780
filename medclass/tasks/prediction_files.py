"""What predict.py writes: predictions.csv and predictions.json, one record at a time (`PredictionWriter`), or
from records held in memory (`write_outputs`, the Python API), with skipped.csv beside them. Every file goes
through `medclass.utils.io`'s one writer (temporary file, rename; CSV cells that cannot become formulas)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medclass.module.scoring import Skipped
from medclass.utils.io import atomic_open, csv_line, write_csv


@dataclass
class Predictions:
    records: list[dict[str, Any]] = field(default_factory=list)  # one per readable image, in input order
    skipped: list[Skipped] = field(default_factory=list)  # (path, reason) for every file passed over


def _json_items(payload: dict[str, Any]) -> str:
    """`payload`'s items as the inside of a JSON object, two spaces in, without the braces."""
    return ",\n".join(f"  {json.dumps(key)}: {json.dumps(value)}" for key, value in payload.items())


def _float_texts(values: list[float]) -> list[str]:
    """`repr` of each value (what `json.dumps` and the csv module write for a float), each distinct value formatted
    once: rounded to 6 decimals, 100,000 class probabilities hold a few hundred distinct numbers."""
    if len(values) <= 256:
        return list(map(repr, values))
    distinct, where = np.unique(np.asarray(values), return_inverse=True)
    return np.array([repr(v) for v in distinct.tolist()], dtype=object)[where].tolist()


class PredictionWriter:
    """predictions.csv and predictions.json, written one record at a time through `atomic_open`: memory holds one
    record, not images x classes (a model of 100,000 classes over 200 images is 20 million probabilities), and
    each file appears whole when the run ends, or not at all. Every column is known before the first record:
    the classes, the top-k width, whether there is a decision, a Grad-CAM path, and the input CSV's columns."""

    def __init__(self, out: Path, meta: dict[str, Any], source: dict[str, Any], k: int, decided: bool = False,
                 cams: bool = False, extra: Sequence[str] = ()) -> None:
        self.names, self.multi = list(meta["class_names"]), meta["task"] == "multi-label"
        self.k, self.decided, self.cams, self.extra = k, decided, cams, list(extra)
        header = ["path", "class", "confidence", *(["decision"] if decided else []),
                  *(["labels"] if self.multi else []),
                  *(f"top{i}_{c}" for i in range(1, k + 1) for c in ("class", "probability")),
                  *(f"prob_{n}" for n in self.names), *(["cam"] if cams else [])]
        self.header, taken = header, set(header)  # a set: 100,000 class columns, up to 1,000 input columns
        for column in self.extra:  # an input column never shares a name with another column (input_, input_input_)
            while column in taken:
                column = f"input_{column}"
            self.header.append(column)
            taken.add(column)
        self.out, self.head = out, {**source, "task": meta["task"], "class_names": self.names}
        self.count = 0
        self._keys: list[str] | None = None  # each class name as a JSON key, made once

    def __enter__(self) -> PredictionWriter:
        self.out.mkdir(parents=True, exist_ok=True)
        self._stack = contextlib.ExitStack()
        try:
            self._csv = self._stack.enter_context(atomic_open(self.out / "predictions.csv", newline=""))
            self._json = self._stack.enter_context(atomic_open(self.out / "predictions.json"))
        except BaseException:
            self._stack.close()
            raise
        self._csv.write(self._cells(self.header) + "\r\n")
        self._json.write("{\n" + _json_items(self.head) + ',\n  "predictions": [')
        return self

    def _cells(self, cells: Sequence[Any]) -> str:
        """`cells` as they sit inside a CSV line (formula-safe, quoted where needed), without the line end."""
        if len(cells) == 1 and cells[0] == "":
            return ""  # the csv module writes a lone empty cell as "" (a row that is not blank)
        return csv_line(cells)

    def write(self, record: dict[str, Any]) -> None:
        """One record: a CSV row and one line of the JSON list. The per-class numbers are joined as text in one
        pass (they are floats: no quoting, no formula), so 100,000 classes cost one join, not 100,000 cell
        checks; the rest goes through the csv module and `safe_cell`, and `json.dumps` as before."""
        texts = _float_texts(list(record["probabilities"].values()))
        probs = ",".join(texts)
        top = [v for t in record["top_k"] for v in (t["class"], t["probability"])]
        columns = record.get("columns", {})
        head = [record["path"], record["class"], record["confidence"], *([record["decision"]] if self.decided else []),
                *([";".join(record["labels"])] if self.multi else []), *top, *[""] * (2 * self.k - len(top))]
        tail = [*([record.get("cam", "")] if self.cams else []), *(columns.get(c, "") for c in self.extra)]
        self._csv.write(",".join([self._cells(head), probs, *([self._cells(tail)] if tail else [])]) + "\r\n")
        if self._keys is None:
            self._keys = [json.dumps(n) + ": " for n in self.names]
        inner = ", ".join(map(str.__add__, self._keys, texts))  # json.dumps of the dict, in one join
        text = ", ".join(f"{json.dumps(key)}: " + ("{" + inner + "}" if key == "probabilities" else json.dumps(value))
                         for key, value in record.items())
        self._json.write(("\n" if self.count == 0 else ",\n") + "    {" + text + "}")
        self.count += 1

    def finish(self, skipped: Sequence[Skipped]) -> None:
        """The JSON's count and skipped files, after the list: both are known only at the end."""
        tail = {"count": self.count, "skipped": [{"path": str(p), "reason": why} for p, why in skipped]}
        self._json.write(("\n  " if self.count else "") + "],\n" + _json_items(tail) + "\n}\n")

    def __exit__(self, *exc: object) -> None:
        self._stack.__exit__(*exc)  # an error removes both temporary files: no half-written predictions


def write_outputs(out: Path, result: Predictions, meta: dict[str, Any], source: dict[str, Any]) -> None:
    """predictions.csv (one row per image), predictions.json (the same plus the model facts), skipped.csv, for
    records already in memory (the Python API); predict.py streams them through `PredictionWriter` instead."""
    k = max((len(r["top_k"]) for r in result.records), default=1)
    extra = list(dict.fromkeys(c for r in result.records for c in r.get("columns", {})))
    with PredictionWriter(out, meta, source, k, decided=any("decision" in r for r in result.records),
                          cams=any("cam" in r for r in result.records), extra=extra) as writer:
        for record in result.records:
            writer.write(record)
        writer.finish(result.skipped)
    write_csv(out / "skipped.csv", ((str(p), why) for p, why in result.skipped), ("path", "reason"))
