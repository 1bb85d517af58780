"""Reading a file medclass did not write: a regular file of bounded size, or one error line.

`read_bytes` is the one primitive. It opens the path without blocking (a FIFO would otherwise wait
for a writer for ever) and, where links are not expected (`follow_links=False`: files inside a
sweep or run folder), without following a symbolic link. It then checks, on the open descriptor,
that it is a regular file outside `/proc`, `/sys` and `/dev` (whose "files" report a size of 0 and
hold the environment, or never end) and no larger than the caller's budget, and reads at most that
many bytes. A file that grew while being read is refused rather than truncated.

Error lines name the file and what was expected; they never quote what the file holds.
"""

from __future__ import annotations

import errno
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from medclass.utils.errors import MedclassError
from medclass.utils.text import markdown_text, printable

__all__ = ["MiB", "Refused", "check_regular", "iter_lines", "markdown_text", "open_regular", "printable", "read_bytes",
           "read_json", "read_text", "system_path"]

SYSTEM_ROOTS = ("/proc", "/sys", "/dev")
MiB = 2**20


class Refused(MedclassError):
    """A file that is not what its reader accepts (kind, place or size); the message names the file."""


def system_path(path: str | Path) -> bool:
    """Whether `path`, links resolved, lies in a kernel or device filesystem (`/proc`, `/sys`, `/dev`)."""
    real = os.path.realpath(path)
    return any(real == root or real.startswith(root + "/") for root in SYSTEM_ROOTS)


def check_regular(path: str | Path, what: str, follow_links: bool = True) -> os.stat_result:
    """The `stat` of `path` when it is a regular file outside the system folders; else `Refused` naming `what`."""
    try:
        info = os.stat(path) if follow_links else os.lstat(path)
    except OSError as err:
        raise Refused(f"{what} {path} cannot be read ({err.strerror or type(err).__name__})") from None
    if stat.S_ISLNK(info.st_mode):
        raise Refused(f"{what} {path} is a symbolic link; links are not followed here (copy the file instead)")
    if not stat.S_ISREG(info.st_mode) or system_path(path):
        raise Refused(f"{what} {path} is not a regular file (a device, pipe, folder or system file)")
    return info


def open_regular(path: str | Path, what: str, follow_links: bool = True) -> tuple[int, os.stat_result]:
    """An open descriptor on `path` and its `fstat`, when it is a regular file outside the system folders; else
    `Refused` naming `what`. Opened without blocking (a FIFO would wait for a writer for ever) and, with
    `follow_links=False`, without following a link; the kind is checked on the descriptor, so the file cannot be
    swapped between check and read. The caller closes the descriptor."""
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    if not follow_links:
        flags |= getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(path, flags)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise Refused(f"{what} {path} is a symbolic link; links are not followed here (copy the file "
                          "instead)") from None
        raise Refused(f"{what} {path} cannot be read ({err.strerror or type(err).__name__})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or system_path(path):
            raise Refused(f"{what} {path} is not a regular file (a device, pipe, folder or system file)")
    except BaseException:
        os.close(fd)
        raise
    return fd, info


def read_bytes(path: str | Path, what: str, max_bytes: int, follow_links: bool = True) -> bytes:
    """The bytes of a regular file of at most `max_bytes`; anything else is one `Refused` line naming `what`.
    The file is read in one call sized from its `fstat` (one copy in memory, not chunks and their join), with
    one byte more to see a file that grew while being read, which is refused rather than truncated."""
    fd, info = open_regular(path, what, follow_links)
    try:
        if info.st_size > max_bytes:
            raise Refused(f"{what} {path} is {info.st_size / MiB:.1f} MiB, more than the {max_bytes / MiB:g} MiB "
                          "this reader takes")
        chunks = [os.read(fd, info.st_size + 1)]
        held = len(chunks[0])
        while held <= info.st_size and (more := os.read(fd, info.st_size + 1 - held)):
            chunks.append(more)  # a short read (Linux reads at most 2 GiB a call), or a file that grew
            held += len(more)
        if held > info.st_size:
            raise Refused(f"{what} {path} grew while being read")
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)
    finally:
        os.close(fd)


def read_text(path: str | Path, what: str, max_bytes: int, follow_links: bool = True) -> str:
    """A UTF-8 text file (a BOM is dropped) through `read_bytes`."""
    data = read_bytes(path, what, max_bytes, follow_links)
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise Refused(f"{what} {path} is not UTF-8 text (byte {err.start})") from None


def read_json(path: str | Path, what: str, max_bytes: int = 16 * MiB, follow_links: bool = True) -> Any:
    """A JSON file through `read_bytes`, as plain Python values; `NaN` and `Infinity` are read as floats
    (callers that need finite numbers check them); nesting deeper than Python can parse is one line."""
    text = read_text(path, what, max_bytes, follow_links)
    try:
        return json.loads(text)
    except RecursionError:
        raise Refused(f"{what} {path} nests its values too deep to be a file medclass wrote") from None
    except ValueError as err:
        message = getattr(err, "msg", "not JSON")  # json's own words (position only), never the content
        line = getattr(err, "lineno", None)
        raise Refused(f"{what} {path} is not readable JSON ({message}{f' at line {line}' if line else ''})") from None


def iter_lines(path: str | Path, what: str, max_bytes: int, max_line: int, follow_links: bool = True
               ) -> Iterator[str]:
    """The lines of a bounded text file, each at most `max_line` characters (a longer one is refused)."""
    text = read_text(path, what, max_bytes, follow_links)
    for number, line in enumerate(text.splitlines(keepends=True), start=1):
        if len(line) > max_line:
            raise Refused(f"{what} {path} line {number} is longer than {max_line:,} characters")
        yield line


