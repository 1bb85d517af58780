"""Text safe to show: any text (a file's content, a class name, an error) escaped for the console, a log or a
markdown document, so what a file holds cannot drive the terminal or add a table column. Below every package
that prints: `utils.cli` writes error lines with it, `medclass.untrusted` its refusals.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Any

# C0/C1 controls, DEL, and format characters (bidirectional overrides, zero-width joiners): shown escaped
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: Any, limit: int = 300, keep_newlines: bool = False) -> str:
    """`text` made safe to print: control and format characters (escape sequences, bidirectional overrides)
    written as `\\x1b` / `\\u202e`, and at most `limit` characters (`…` marks a cut)."""
    text = str(text)
    out = []
    for char in text[: limit + 1]:
        if (char == "\n" and keep_newlines) or not (UNSAFE.match(char) or unicodedata.category(char) in ("Cf", "Cs")
                                                     or char in "\n\t"):
            out.append(char)
        else:
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    shown = "".join(out)
    return shown if len(text) <= limit else shown[:limit] + "…"


MARKDOWN_SPECIAL = re.compile(r"([\\`*_{}\[\]#+!|~])")


def markdown_text(text: Any, limit: int = 300) -> str:
    """`text` from a file (a class name, a manifest value) made safe for a markdown document: one line,
    control characters escaped, HTML's `& < >` as entities and markdown's specials backslashed, so a name
    such as `<img onerror=...>` or `a | b` shows as itself and cannot add a table column."""
    shown = printable(text, limit).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return MARKDOWN_SPECIAL.sub(r"\\\1", shown)
