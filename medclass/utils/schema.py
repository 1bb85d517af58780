"""Small validators for what medclass reads from files: plain values, known keys, bounded sizes.

A checkpoint's description, `<name>.json` beside a `.safetensors` file and eval's operating file are
read as data. Each value goes through a `Check`: a function `(value, where) -> value` that returns
the value (lists and dicts rebuilt as plain Python containers) or raises `Invalid` naming where it
is (`data_info.image_size`), what it was (shortened) and what was expected. Strings are refused when
they hold `${` (an OmegaConf interpolation, which nothing here would resolve, but which must not
reach anything that might) or control characters.

Hand-written rather than pydantic: the rules are few, the messages must be one line naming the key,
and nothing here should import more than the standard library.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medclass.utils.errors import MedclassError

Check = Callable[[Any, str], Any]
MAX_JSON_BYTES = 16 * 2**20
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Invalid(MedclassError):
    """A value read from a file that medclass does not write."""


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(where: str, value: Any, expected: str) -> Invalid:
    return Invalid(f"{where}={_show(value)}: expected {expected}")


def text(max_len: int = 4096, pattern: str | None = None, hint: str = "") -> Check:
    """A string without `${`, control characters (tab and newline allowed) or more than `max_len` characters;
    with `pattern`, one that matches it whole."""
    compiled = re.compile(pattern) if pattern else None

    def check(value: Any, where: str) -> str:
        if not isinstance(value, str):
            raise fail(where, value, "a string")
        if "${" in value:
            raise fail(where, value, "plain text (an interpolation '${' is never resolved from a file)")
        if len(value) > max_len or CONTROL.search(value) or (compiled and not compiled.fullmatch(value)):
            raise fail(where, value, hint or f"text of at most {max_len} characters without control characters")
        return value

    return check


def name(max_len: int = 256) -> Check:
    """A plain name that may become part of a file name: no path separator, not `.` or `..`, no control
    characters."""
    base = text(max_len)

    def check(value: Any, where: str) -> str:
        value = base(value, where)
        if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
            raise fail(where, value, "a plain name (no '/', '\\', not empty, '.' or '..')")
        return value

    return check


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, value, "true or false")
    return value


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise fail(where, value, f"a whole number from {lo} to {hi}")
        return int(value)

    return check


def number(lo: float, hi: float, low_open: bool = False) -> Check:
    """A finite number in [lo, hi] (or (lo, hi] with `low_open`)."""

    def check(value: Any, where: str) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and (lo < value if low_open else lo <= value) and value <= hi)
        if not ok:
            raise fail(where, value, f"a finite number in {'(' if low_open else '['}{lo:g}, {hi:g}]")
        return float(value)

    return check


def choice(*values: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        if isinstance(value, bool) or value not in values or isinstance(value, (list, dict)):
            raise fail(where, value, f"one of {', '.join(map(str, values))}")
        return value

    return check


def optional(inner: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)

    return check


def either(*checks: Check, expected: str) -> Check:
    """The first check that accepts the value."""

    def check(value: Any, where: str) -> Any:
        for c in checks:
            try:
                return c(value, where)
            except Invalid:
                continue
        raise fail(where, value, expected)

    return check


def list_of(item: Check, lo: int = 0, hi: int = 10_000) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)) or not lo <= len(value) <= hi:
            raise fail(where, value, f"a list of {lo} to {hi} items")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return check


def mapping(key: Check, value: Check, hi: int = 10_000) -> Check:
    def check(tree: Any, where: str) -> dict[str, Any]:
        if not isinstance(tree, Mapping) or len(tree) > hi:
            raise fail(where, tree, f"a mapping of at most {hi} entries")
        return {key(k, f"{where} key"): value(v, f"{where}.{k}") for k, v in tree.items()}

    return check


def record(fields: Mapping[str, Check], required: tuple[str, ...] = (), extra: Check | None = None) -> Check:
    """A mapping whose keys are `fields` (each checked by its own Check), `required` ones present; a key
    outside `fields` is refused unless `extra` checks it."""

    def check(tree: Any, where: str) -> dict[str, Any]:
        if not isinstance(tree, Mapping):
            raise fail(where, tree, "a mapping")
        missing = [k for k in required if k not in tree]
        if missing:
            raise Invalid(f"{where} has no {', '.join(missing)}")
        out = {}
        for k, v in tree.items():
            at = f"{where}.{k}" if where else str(k)
            if k in fields:
                out[k] = fields[k](v, at)
            elif extra is not None and isinstance(k, str):
                text(100)(k, f"{at} (key)")
                out[k] = extra(v, at)
            else:
                raise Invalid(f"{at} is not a key medclass writes here (known: {', '.join(sorted(fields))})")
        return out

    return check


def no_interpolation(tree: Any, where: str, limit: int = 1_000_000) -> None:
    """Refuse a tree holding a string with `${` anywhere, unknown keys included, whatever the key's type: an
    interpolation is never resolved from a file, and saying so is clearer than a type error. Iterative, and
    bounded to `limit` values, so no nesting or size can make it recurse or run long."""
    stack, seen = [(where, tree)], 0
    while stack:
        at, value = stack.pop()
        seen += 1
        if seen > limit:
            raise Invalid(f"{where} holds more than {limit} values; it is not a file medclass wrote")
        if isinstance(value, str) and "${" in value:
            raise fail(at, value, "plain text (an interpolation '${' is never resolved from a file)")
        if isinstance(value, Mapping):
            stack.extend((f"{at}.{k}" if at else str(k), v) for k, v in value.items())
            stack.extend((f"{at} key", k) for k in value)
        elif isinstance(value, (list, tuple)):
            stack.extend((f"{at}[{i}]", v) for i, v in enumerate(value))


def read_as_data(check: Check, value: Any, source: str, advice: str) -> Any:
    """`check` on a value read from `source` (a file), after `no_interpolation`; any fault becomes one line,
    `<source>: <key>=<value>: expected ...; <advice>`."""
    try:
        no_interpolation(value, "")
        return check(value, "")
    except Invalid as err:
        raise Invalid(f"{source}: {str(err).lstrip('.')}; {advice}") from None


def scalar(value: Any, where: str) -> Any:
    """null, a boolean, a finite number or plain text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return number(-1e12, 1e12)(value, where) if isinstance(value, float) else integer(-10**12, 10**12)(value, where)
    return text(1024)(value, where)


def plain(depth: int = 3, hi: int = 256) -> Check:
    """Scalars, and lists and string-keyed mappings of them, nested at most `depth` deep."""

    def check(value: Any, where: str) -> Any:
        if isinstance(value, (list, tuple)) and depth > 0:
            return list_of(plain(depth - 1, hi), 0, hi)(value, where)
        if isinstance(value, Mapping) and depth > 0:
            return mapping(text(100), plain(depth - 1, hi), hi)(value, where)
        if isinstance(value, (list, tuple, Mapping)):
            raise fail(where, value, f"values nested at most {depth} deep")
        return scalar(value, where)

    return check


def read_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    """A JSON file of at most `max_bytes` (16 MB unless a reader of larger files says so) as plain Python values;
    anything else is one error line."""
    if not path.is_file():
        raise MedclassError(f"{path} does not exist: {what}")
    if path.stat().st_size > max_bytes:
        raise Invalid(f"{path} is larger than {max_bytes >> 20} MB; it is not a file medclass wrote")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, RecursionError, UnicodeDecodeError) as err:
        raise Invalid(f"{path} is not readable JSON ({type(err).__name__}: {str(err)[:200]})") from err
