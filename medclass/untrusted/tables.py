"""Reading a CSV medclass did not write (a manifest, a CSV of inputs) or its own split files: bounded, or one line.

A CSV is small on disk and large in memory: one header line of a million names makes every row a
million-entry record, and one 20 MB cell is a `csv.Error` deep inside the reader. So `read_table`
bounds, before anything grows with the input:

- the bytes, through `medclass.untrusted.files.read_bytes` (a regular file, no device or `/proc` entry);
- each physical line (`max_line` bytes, read with that limit, so a longer line is never held whole);
- the header (`max_columns` names) and each row (no more non-empty cells than the header has names);
- each cell (`max_field` characters, the csv module's own default limit) and all cells together
  (`max_cells`: the count that sets the memory of the parsed rows).

Ordinary exports pass with room: CheXpert's train.csv (223k rows, 19 columns), MIMIC-CXR's metadata
(377k rows, about 26 columns once labels are joined: 9.8 million cells) and the NIH table (112k rows, 12
columns) are each below 256 MiB, 1,000 columns and 12 million cells. At the bound (12 million two-character
cells in 36 MB), a manifest costs train.py about 2.4 GB in all.

Every failure is one `Refused` line naming the file, the line and the column by number. A cell's
content is never quoted: the file may have been named by another file (a checkpoint's description),
and what it holds (`/proc/self/environ`, a key file) must not reach a console or a log.
"""

from __future__ import annotations

import codecs
import csv
import functools
import io
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medclass.untrusted.files import MiB, Refused, printable, read_bytes
from medclass.utils import schema as s
from medclass.utils.errors import MedclassError

MAX_BYTES = 256 * MiB
MAX_COLUMNS = 1_000
MAX_LINE = 1 * MiB  # bytes of one physical line: 1,000 columns of 1,000 characters each still fit
MAX_FIELD = 131_072  # characters of one cell: the csv module's default limit, which this reader does not change
MAX_CELLS = 12_000_000  # cells of all rows together: about 0.9 GB of parsed strings at worst (2-character cells)

# A class name is any text a label cell or a class folder holds (`T1/T2`, `grade 2.5`, `N/A`, `..`, `=cmd`,
# `Ödem`): train and every reader of a model file accept this same set. A place that makes a file name of
# one must make it safe there; a spreadsheet formula is made text by `write_csv`. Refused: blank names,
# control characters (tab and newline included: they would break a table row or a console line) and `${`
# (never resolved from a file, so refused in every model file already).
MAX_CLASS_NAME = 1_000
CLASS_NAME = s.text(MAX_CLASS_NAME, r"(?=.*\S)[^\t\n]+",
                    f"a class name: any text of at most {MAX_CLASS_NAME} characters, not blank, without control "
                    "characters or '${'")


@dataclass(frozen=True, slots=True)
class Row:
    """One record: the line it starts on (1 = the header) and its cells, at most one per column."""

    line: int
    cells: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A checked CSV: its file, its column names in order and its non-blank rows."""

    path: Path
    columns: tuple[str, ...]
    rows: tuple[Row, ...]

    def index(self, column: str) -> int | None:
        """The position of `column` (the first, if a name repeats), or None."""
        try:
            return self.columns.index(column)
        except ValueError:
            return None

    def cell(self, row: Row, column: str) -> str:
        """`row`'s cell under `column`; "" when the row is shorter or the table has no such column."""
        at = self.index(column)
        return row.cells[at] if at is not None and at < len(row.cells) else ""

    def record(self, row: Row) -> dict[str, str]:
        """`row` as {column: cell}, every named column present ("" where the row is short)."""
        out: dict[str, str] = {}
        for at, name in enumerate(self.columns):
            if name and name not in out:
                out[name] = row.cells[at] if at < len(row.cells) else ""
        return out


class _LongLine(Exception):
    """A line past the bound; `read_table` knows its number and says it."""


def _lines(data: bytes, max_line: int) -> Iterator[str]:
    """The physical lines of `data`, each read with a size limit (so a longer one is cut and refused, never held
    whole) and decoded on its own, so the file's text is never held whole and an encoding error names its line."""
    if b"\r" in data and b"\n" not in data:  # a spreadsheet's "CSV (Macintosh)": lines end with a lone CR
        data = data.replace(b"\r", b"\n")

    def decode(line: bytes) -> str:
        if len(line) > max_line and len(line.rstrip(b"\r\n")) > max_line:
            raise _LongLine
        return line.decode("utf-8")

    return map(decode, iter(functools.partial(io.BytesIO(data).readline, max_line + 2), b""))


CELLS_VARIABLE = "MEDCLASS_MAX_TABLE_CELLS"


def cell_budget() -> int:
    """The cells a table may hold: MAX_CELLS, or `MEDCLASS_MAX_TABLE_CELLS` for a hospital table that is larger
    (a whole number; anything else is one line naming the variable)."""
    raw = os.environ.get(CELLS_VARIABLE)
    if raw is None or not raw.strip():
        return MAX_CELLS
    if not raw.strip().isascii() or not raw.strip().isdigit() or not 1 <= int(raw) <= 10**10:
        raise MedclassError(f"{CELLS_VARIABLE}={printable(raw, 40)}: expected a whole number of cells from 1 to "
                            f"10,000,000,000 (default {MAX_CELLS:,})")
    return int(raw)


def read_table(path: str | Path, what: str, required: Sequence[str] = (), *, max_bytes: int = MAX_BYTES,
               max_columns: int = MAX_COLUMNS, max_line: int = MAX_LINE, max_field: int = MAX_FIELD,
               max_cells: int | None = None, follow_links: bool = True, hint: str = "") -> Table:
    """The header and rows of a UTF-8 CSV (a BOM is dropped, blank rows are skipped), each bound checked as it is
    met; `required` columns must be in the header. `what` names the file in every error line ("data.manifest");
    `hint` ends the missing-column line (what the file should hold)."""
    path = Path(path)
    max_cells = cell_budget() if max_cells is None else max_cells
    data = read_bytes(path, what, max_bytes, follow_links)
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    reader = csv.reader(_lines(data, max_line), strict=False)
    cap = min(max_field, csv.field_size_limit())  # the csv module stops a longer cell first, with its own words
    header: list[str] | None = None
    rows: list[Row] = []
    cells = 0
    start = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as err:  # the csv module's words name its limit or the dialect, never the content
            raise Refused(f"{what} {path} line {reader.line_num} is not readable as CSV ({err}); check the "
                          "quoting of that line") from None
        except UnicodeDecodeError:
            raise Refused(f"{what} {path} line {reader.line_num + 1} is not UTF-8 text; save the table as CSV "
                          "(UTF-8)") from None
        except _LongLine:
            raise Refused(f"{what} {path} line {reader.line_num + 1} is longer than {max_line:,} bytes; a table "
                          "line holds at most that (one image per row)") from None
        line, start = start, reader.line_num + 1
        if not any(fields) or "".join(fields).isspace():  # a blank line, or a row of empty cells
            continue
        if max(map(len, fields)) > cap:
            at = next(i for i, field in enumerate(fields, start=1) if len(field) > cap)
            raise Refused(f"{what} {path} line {line} column {at} holds more than {cap:,} characters; a table "
                          "cell holds at most that")
        if header is None:
            if len(fields) > max_columns:
                raise Refused(f"{what} {path} has {len(fields):,} columns in its header (line {line}), more than "
                              f"the {max_columns:,} a table may have")
            header = fields
            missing = [name for name in required if name not in header]
            if missing:
                raise Refused(f"{what} {path} has no column {', '.join(missing)} in its header (line {line}, "
                              f"{len(header)} columns){'; ' + hint if hint else ''}")
            continue
        if len(fields) > len(header):
            if any(f.strip() for f in fields[len(header):]):
                raise Refused(f"{what} {path} line {line} has {len(fields)} cells but the header names "
                              f"{len(header)} columns (a comma inside a cell needs quotes)")
            fields = fields[:len(header)]
        cells += len(fields)
        if cells > max_cells:
            raise Refused(f"{what} {path} holds more than {max_cells:,} cells (at line {line}); split the table, or "
                          f"on a machine with the memory (about 80 bytes a cell) set {CELLS_VARIABLE}")
        rows.append(Row(line, tuple(fields)))
    if header is None:
        raise Refused(f"{what} {path} is empty: no header line{'; ' + hint if hint else ''}")
    return Table(path, tuple(header), tuple(rows))
