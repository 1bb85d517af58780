"""The one way medclass writes a file: whole or not at all, never through a planted link, no formula cells.

Every result file (metrics, reports, split and prediction tables, caches, figures, exports, the
operating file beside a checkpoint) is written to a fresh temporary file in the target's folder and
then renamed over the target. So a reader sees the old file or the new one, never half; a crash
leaves no partial file; and a symbolic link planted at the target's name (`model.operating.json ->
~/.bashrc` in a shared folder) is replaced by the new file instead of being followed. The temporary
name is random and opened with O_EXCL, so it cannot be a planted link either.

CSV text cells that a spreadsheet would run as a formula (OWASP's CSV injection: a leading `=`, `+`,
`-`, `@`, tab or carriage return) are written with a leading `'`, which spreadsheets show as text.
Numbers, and strings that are plain decimal numbers such as `-1.5`, stay numbers. medclass reads its
own split files back through `read_cell`, which undoes exactly that.
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
DECIMAL = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d+)?")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


MODE = 0o666 & ~_umask()  # what open() would have given the file (mkstemp makes it 0600)


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """A file object whose content replaces `path` when the block ends without an error.

    `mode` is "w" (text; `newline`, `encoding` pass through), "wb", or "w+b" (bytes, readable too: a
    memory map over the new file, as the image cache fills one). On an error the temporary file is
    removed and `path` is left as it was.
    """
    if mode not in ("w", "wb", "w+b"):
        raise ValueError(f"atomic_open writes whole files: mode 'w', 'wb' or 'w+b', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} | kwargs if mode == "w" else kwargs)) as f:
            yield f
        os.chmod(tmp, MODE)
        os.replace(tmp, path)  # replaces a symlink at `path` itself, never the file it points to
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_open(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text(path: str | Path, text: str) -> Path:
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json(path: str | Path, payload: Any, sort_keys: bool = True) -> Path:
    return write_text(path, json.dumps(payload, indent=2, sort_keys=sort_keys))


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows rather than runs: text starting with = + - @ tab or CR gets a leading
    `'`; numbers and plain decimal strings are kept. Text that starts with `'` itself gets one more, so
    `read_cell` gives back exactly what was written."""
    if isinstance(value, str) and value.startswith((*FORMULA_START, "'")) and not DECIMAL.fullmatch(value):
        return "'" + value
    return value


def read_cell(value: str) -> str:
    """The text `safe_cell` was given, from a cell of a CSV medclass wrote (split files read back)."""
    return value[1:] if value.startswith("'") else value


def csv_line(cells: Sequence[Any]) -> str:
    """One CSV row as text, without its line end, every cell through `safe_cell`: for writers that stream rows
    into an `atomic_open` file themselves (predict.py writes one row per image)."""
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="").writerow([safe_cell(c) for c in cells])
    return buffer.getvalue()


def create_new(path: str | Path, data: bytes, mode: int = 0o600) -> bool:
    """Write `path` whole with `mode` only if nothing is there yet (a link included): the file is made under a
    temporary name and hard-linked into place, which fails rather than replace. True when this call made it,
    False when another process was first (its file is kept). For a key that must never be replaced."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, mode)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def write_csv(path: str | Path, rows: Iterable[dict[str, Any]] | Iterable[Sequence[Any]],
              header: Sequence[str] | None = None) -> Path:
    """A CSV of dict rows (columns: `header`, or every key in first-seen order; missing cells empty) or of
    sequence rows (after `header`, when given). Every cell, header included, goes through `safe_cell`."""
    rows = list(rows)
    with atomic_open(path, newline="") as f:
        writer = csv.writer(f)
        if rows and isinstance(rows[0], dict):
            columns = list(header or dict.fromkeys(k for row in rows for k in row))
            writer.writerow([safe_cell(c) for c in columns])
            writer.writerows([safe_cell(row.get(c, "")) for c in columns] for row in rows)
        else:
            if header is not None:
                writer.writerow([safe_cell(c) for c in header])
            writer.writerows([safe_cell(v) for v in row] for row in rows)
    return Path(path)


def save_figure(fig: Any, path: str | Path, **kwargs: Any) -> Path:
    """A matplotlib figure as PNG through the same writer."""
    with atomic_open(path, "wb") as f:
        fig.savefig(f, format="png", **kwargs)
    return Path(path)
