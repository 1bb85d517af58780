"""Small validators for what medclass reads from files: plain values, known keys, bounded sizes.

A checkpoint's description, `<name>.json` beside a `.safetensors` file and eval's operating file are
read as data. Each value goes through a `Check`: a function `(value, where) -> value` that returns
the value (lists and dicts rebuilt as plain Python containers) or raises `Invalid` naming where it
is (`data_info.image_size`), what it was (shortened) and what was expected. Strings are refused when
they hold `${` (an OmegaConf interpolation, which nothing here would resolve, but which must not
reach anything that might) or control characters.

Hand-written rather than pydantic: the rules are few, the messages must be one line naming the key,
and nothing here should import more than the standard library.

Every Check built here carries a `Spec` (`spec_of(check)`): its kind, bounds and fields, as data. Nothing
validates through it; it is there so that a test can walk a format's schema and generate hostile values for
every field from the schema itself (tests/fuzz.py), and so stays true when a schema changes. Checks written by
hand (a function that builds a `record` when called, a cross-field rule) carry no Spec; `trace()` records the
described Checks such a function calls, so a walker can still see the record inside it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from medclass.utils.errors import MedclassError

Check = Callable[[Any, str], Any]
MAX_JSON_BYTES = 16 * 2**20
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


class Invalid(MedclassError):
    """A value read from a file that medclass does not write."""


@dataclass(frozen=True)
class Spec:
    """What a described Check accepts, as data for a reader (a fuzzer), never used to validate.

    `kind` is the constructor's name: text, name, boolean, integer, number, choice, optional, either, list,
    mapping, record, scalar or plain. The other attributes are that constructor's arguments: bounds (`lo`, `hi`,
    `low_open`; for lists and mappings the number of items), `max_len` and `pattern` of text, `values` of a
    choice, `fields`/`required`/`extra` of a record, `item` (a list's items, a mapping's values, an optional's
    inner Check), `key` (a mapping's keys), `options` (an either's alternatives) and `depth` (plain nesting)."""

    kind: str
    lo: Any = None
    hi: Any = None
    low_open: bool = False
    max_len: int | None = None
    pattern: str | None = None
    values: tuple[Any, ...] = ()
    fields: Mapping[str, Check] = field(default_factory=lambda: MappingProxyType({}))
    required: tuple[str, ...] = ()
    extra: Check | None = None
    item: Check | None = None
    key: Check | None = None
    options: tuple[Check, ...] = ()
    depth: int = 0
    expected: str = ""


@dataclass
class Call:
    """One described Check called while `trace()` was on: where, with what value, and the described Checks it
    called in turn."""

    where: str
    spec: Spec
    value: Any
    calls: list[Call] = field(default_factory=list)


_TRACE: ContextVar[list[list[Call]] | None] = ContextVar("medclass_schema_trace", default=None)


def spec_of(check: Any) -> Spec | None:
    """The Spec of a Check built here; None for a Check written by hand (see `trace`)."""
    spec = getattr(check, "spec", None)
    return spec if isinstance(spec, Spec) else None


@contextmanager
def trace() -> Iterator[list[Call]]:
    """Record the described Checks called inside the block, as a tree: the list yielded fills with the outermost
    calls, each holding the calls made inside it. For tests: it shows the records a hand-written Check (one that
    builds its record when called) uses, and which value reached which Check."""
    roots: list[Call] = []
    token = _TRACE.set([roots])
    try:
        yield roots
    finally:
        _TRACE.reset(token)


def _described(spec: Spec, check: Callable[[Any, str], Any]) -> Check:
    """`check` with its Spec attached, and reporting itself to `trace()` when one is on (a ContextVar look-up
    otherwise)."""

    def described(value: Any, where: str) -> Any:
        stack = _TRACE.get()
        if stack is None:
            return check(value, where)
        call = Call(where, spec, value)
        stack[-1].append(call)
        stack.append(call.calls)
        try:
            return check(value, where)
        finally:
            stack.pop()

    described.spec = spec  # type: ignore[attr-defined]
    described.__doc__ = check.__doc__
    return described


def show(value: Any) -> str:
    """A value as an error line may quote it: its repr, at most 60 characters (the readers' one-line errors)."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def fail(where: str, value: Any, expected: str) -> Invalid:
    """`data_info.image_size=5000: expected ...`; the whole document (`where` empty) is shown without the `=`."""
    return Invalid(f"{where}={show(value)}: expected {expected}" if where else f"{show(value)}: expected {expected}")


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

    return _described(Spec("text", max_len=max_len, pattern=pattern, expected=hint), check)


def name(max_len: int = 256) -> Check:
    """A plain name that may become part of a file name: no path separator, not `.` or `..`, no control
    characters."""
    base = text(max_len)

    def check(value: Any, where: str) -> str:
        value = base(value, where)
        if not value.strip() or "/" in value or "\\" in value or value in (".", ".."):
            raise fail(where, value, "a plain name (no '/', '\\', not empty, '.' or '..')")
        return value

    return _described(Spec("name", max_len=max_len), check)


def _boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise fail(where, value, "true or false")
    return value


boolean: Check = _described(Spec("boolean"), _boolean)


def integer(lo: int, hi: int) -> Check:
    def check(value: Any, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
            raise fail(where, value, f"a whole number from {lo} to {hi}")
        return int(value)

    return _described(Spec("integer", lo=lo, hi=hi), check)


def number(lo: float, hi: float, low_open: bool = False) -> Check:
    """A finite number in [lo, hi] (or (lo, hi] with `low_open`)."""

    def check(value: Any, where: str) -> float:
        ok = (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
              and (lo < value if low_open else lo <= value) and value <= hi)
        if not ok:
            raise fail(where, value, f"a finite number in {'(' if low_open else '['}{lo:g}, {hi:g}]")
        return float(value)

    return _described(Spec("number", lo=lo, hi=hi, low_open=low_open), check)


def choice(*values: Any) -> Check:
    """One of `values`, of its type: `28.0` is not the size 28, nor `true` the version 1 (a float would reach a
    file name or a comparison as a float)."""

    def check(value: Any, where: str) -> Any:
        if isinstance(value, (bool, list, dict)) or not any(isinstance(value, type(v)) and value == v
                                                             for v in values):
            raise fail(where, value, f"one of {', '.join(map(str, values))}")
        return value

    return _described(Spec("choice", values=values), check)


def optional(inner: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        return None if value is None else inner(value, where)

    return _described(Spec("optional", item=inner), check)


def either(*checks: Check, expected: str) -> Check:
    """The first check that accepts the value."""

    def check(value: Any, where: str) -> Any:
        for c in checks:
            try:
                return c(value, where)
            except Invalid:
                continue
        raise fail(where, value, expected)

    return _described(Spec("either", options=checks, expected=expected), check)


def list_of(item: Check, lo: int = 0, hi: int = 10_000) -> Check:
    def check(value: Any, where: str) -> list[Any]:
        if not isinstance(value, (list, tuple)) or not lo <= len(value) <= hi:
            raise fail(where, value, f"a list of {lo} to {hi} items")
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return _described(Spec("list", lo=lo, hi=hi, item=item), check)


def mapping(key: Check, value: Check, hi: int = 10_000) -> Check:
    def check(tree: Any, where: str) -> dict[str, Any]:
        if not isinstance(tree, Mapping) or len(tree) > hi:
            raise fail(where, tree, f"a mapping of at most {hi} entries")
        return {key(k, f"{where} key"): value(v, f"{where}.{k}") for k, v in tree.items()}

    return _described(Spec("mapping", hi=hi, key=key, item=value), check)


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

    return _described(Spec("record", fields=MappingProxyType(dict(fields)), required=tuple(required), extra=extra),
                      check)


_ATOMS = frozenset({int, float, bool, type(None)})  # what a walk for `${` skips at once
_CONTAINERS = (dict, list, tuple, Mapping)  # concrete types first: an ABC check costs three times more
_INTERPOLATION = "plain text (an interpolation '${' is never resolved from a file)"


def no_interpolation(tree: Any, where: str, limit: int = 50_000_000) -> None:
    """Refuse a tree holding a string with `${` anywhere, unknown keys included, whatever the key's type: an
    interpolation is never resolved from a file, and saying so is clearer than a type error.

    Also refuse a tree a check would walk more than `limit` values of (a prepared stream's table of three million
    images holds about fifteen million), or that contains itself, so no check after this one can be made to run
    long. Iterative, so no nesting makes it recurse. Each container is read once however often it is referenced:
    a pickled checkpoint can hold one list a million times over, which JSON cannot, so only when a container is
    shared does a second pass count the values a check would walk (shared ones each time they appear), from the
    sizes of the shared containers alone. Only containers are stacked, so a list of ten million numbers costs no
    memory beyond itself, and a value's place (`data_info.class_names[3]`) is spelled out only when refused."""
    # a place is (the parent's place, a key, how it is written) and becomes text only when a value is refused
    stack: list[tuple[Any, Any]] = []
    walked: set[int] = set()  # ids stay valid while the walk runs: the tree holds every container
    shared: set[int] = set()
    _look(tree, (None, where, ""), stack, walked, shared)
    count = 0
    too_many = f"{where or 'it'} holds more than {limit:,} values; it is not a file medclass wrote"
    while stack:
        at, node = stack.pop()
        count += len(node) * (2 if isinstance(node, Mapping) else 1)
        if count > limit:
            raise Invalid(too_many)
        if isinstance(node, Mapping):
            for k, v in node.items():
                if k.__class__ not in _ATOMS:
                    _look(k, (at, None, " key"), stack, walked, shared)
                if v.__class__ not in _ATOMS:
                    _look(v, (at, k, "."), stack, walked, shared)
        else:
            for i, v in enumerate(node):
                if v.__class__ not in _ATOMS:
                    _look(v, (at, i, "["), stack, walked, shared)
    if shared and _tree_size(tree, shared, limit, where) > limit:
        raise Invalid(too_many)


def _children(node: Any) -> Iterator[Any]:
    """The containers directly inside `node` (a mapping's keys and values, a list's items)."""
    values = (x for kv in node.items() for x in kv) if isinstance(node, Mapping) else iter(node)
    return (v for v in values if v.__class__ not in _ATOMS and isinstance(v, _CONTAINERS))


def _tree_size(tree: Any, shared: set[int], limit: int, where: str) -> int:
    """How many values a walk of `tree` visits, a shared container each time it appears: a depth-first pass that
    remembers the size of each shared container, so it reads each container once. Stops past `limit`; a
    container inside itself is refused."""
    sizes: dict[int, int] = {}
    open_: set[int] = {id(tree)}
    frames: list[list[Any]] = [[tree, _children(tree), len(tree) * (2 if isinstance(tree, Mapping) else 1)]]
    total = frames[0][2]
    while frames:
        frame = frames[-1]
        child = next(frame[1], None)
        if child is None:
            frames.pop()
            open_.discard(id(frame[0]))
            if id(frame[0]) in shared:
                sizes[id(frame[0])] = frame[2]
            if not frames:
                return frame[2]
            frames[-1][2] += frame[2]
            continue
        if id(child) in sizes:
            frame[2] += sizes[id(child)]
            total += sizes[id(child)]
        elif id(child) in open_:
            raise Invalid(f"{where or 'it'} holds a value that contains itself; it is not a file medclass wrote")
        else:
            width = len(child) * (2 if isinstance(child, Mapping) else 1)
            total += width
            open_.add(id(child))
            frames.append([child, _children(child), width])
        if total > limit:
            return total
    return total


def _place(at: tuple[Any, Any, str]) -> str:
    """`data_info.class_names[3]` from `no_interpolation`'s chain of (parent, key, how it is written)."""
    parts = []
    while at[0] is not None:
        parent, key, how = at
        parts.append(" key" if how == " key" else f"[{key}]" if how == "[" else f".{key}")
        at = parent
    text_ = at[1] + "".join(reversed(parts))
    return text_[1:] if not at[1] and text_.startswith(".") else text_


def _look(value: Any, at: tuple[Any, Any, str], stack: list[tuple[Any, Any]], walked: set[int],
          shared: set[int]) -> None:
    """One value of `no_interpolation`'s walk: a string is checked, a container not seen before is stacked, one
    seen before is noted as shared."""
    if isinstance(value, str):
        if "${" in value:
            raise fail(_place(at), value, _INTERPOLATION)
    elif isinstance(value, _CONTAINERS):
        if id(value) in walked:
            shared.add(id(value))
        else:
            walked.add(id(value))
            stack.append((at, value))


def read_as_data(check: Check, value: Any, source: str, advice: str) -> Any:
    """`check` on a value read from `source` (a file), after `no_interpolation`; any fault becomes one line,
    `<source>: <key>=<value>: expected ...; <advice>`."""
    try:
        no_interpolation(value, "")
        return check(value, "")
    except Invalid as err:
        raise Invalid(f"{source}: {str(err).lstrip('.')}; {advice}") from None


def _scalar(value: Any, where: str) -> Any:
    """null, a boolean, a finite number or plain text."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return number(-1e12, 1e12)(value, where) if isinstance(value, float) else integer(-10**12, 10**12)(value, where)
    return text(1024)(value, where)


scalar: Check = _described(Spec("scalar"), _scalar)


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

    return _described(Spec("plain", depth=depth, hi=hi), check)


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
