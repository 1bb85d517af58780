"""Hostile variants of a document, generated from its schema (issue 35, item 9): a fuzzer, not a list.

`variants(base, reader, root)` walks the schema a reader applies to a valid document, through the `Spec` that
every Check of `medclass.utils.schema` carries, and for every field it reaches yields the document with that
field replaced by a hostile value: every wrong type (mapping, list, null, booleans, 10**30, NaN, infinities, a
100,000-character string, control characters, an interpolation, a path), the values just outside the field's
own bounds (bound ± 1, one character or item too many, a name with '/', a choice that is not one), an unknown
key in every record, each required key removed. `accepts(check, value)` says, from the Spec alone and not by
calling the Check, whether the value must be accepted, refused, or cannot be told (a hand-written check): a
variant the Spec refuses must be refused by the reader, naming its field, and every refusal must be one line.

The walk follows the schema as it is today, whoever changes it:
- a Check with a Spec is read directly (records, lists, mappings, optional, either, the leaves);
- a Check written by hand (a function that builds its record when called, as `hparams._data_info` or the
  registries' `describe` do) is called on the valid value under `schema.trace()`, and the first described
  Check it applies at the same place is the schema there;
- a value a reader checks in a separate call (an export's `hyper_parameters`, its `operating` values) is
  matched to that call in a trace of the reader on the valid document, by equal value;
- a mapping whose keys several calls share out (an ONNX file's metadata: data_info and operating values) is
  the union of those calls' records;
- anything still unseen is walked blind: hostile values with no expectation but a clean refusal.
  `unseen_places` lists those places, for the report.
`valid(check)` makes the plainest value a Spec accepts, a base for what no real document holds (a data kind the
test run did not use).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from medclass.utils import schema as s

LONG = "x" * 100_000
CONTROL = "a\x00b\x1b[2J\x07c\x7f"
GENERIC: tuple[tuple[str, Any], ...] = (
    ("a mapping", {"k": 1}), ("a list", [1]), ("null", None), ("true", True), ("false", False),
    ("10**30", 10**30), ("-10**30", -(10**30)), ("NaN", math.nan), ("inf", math.inf), ("-inf", -math.inf),
    ("100k characters", LONG), ("control characters", CONTROL), ("an interpolation", "${oc.env:HOME}"),
    ("/etc/shadow", "/etc/shadow"), ("'..'", ".."), ("an empty list", []), ("an empty string", ""),
    ("an empty mapping", {}), ("0.5", 0.5), ("7", 7), ("'7'", "7"),
)
UNKNOWN_KEY = "zz_not_a_field"
MAX_LONG_LIST = 200_001  # the longest over-long list built: a chunk list's bound (10**7) is left to its own test


@dataclass
class Variant:
    """One hostile document: where the change is (as the reader's messages spell it), what it is, and whether
    the schema's Spec says the reader must refuse it."""

    where: str
    label: str
    document: Any
    must_refuse: bool
    path: str = ""  # as the document spells it (an export's `hyper_parameters.net.widths`)


@dataclass
class Walk:
    """The state of one walk: the reader's trace on the valid document and the places walked blind."""

    roots: list[s.Call]
    unseen: set[str] = field(default_factory=set)
    shallow: frozenset[str] = frozenset()


# -- what a Spec accepts, read from the Spec alone -------------------------------------------------------------
def accepts(check: Any, value: Any) -> bool | None:
    """True when the Spec says `value` is valid, False when it says it is not, None when no Spec says."""
    spec = check if isinstance(check, s.Spec) else s.spec_of(check)
    if spec is None:
        return None
    kind = spec.kind
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":
        return not isinstance(value, bool) and isinstance(value, int) and spec.lo <= value <= spec.hi
    if kind == "number":
        return (not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
                and (spec.lo < value if spec.low_open else spec.lo <= value) and value <= spec.hi)
    if kind in ("text", "name"):
        if (not isinstance(value, str) or "${" in value or len(value) > spec.max_len or s.CONTROL.search(value)
                or (spec.pattern and not re.fullmatch(spec.pattern, value))):
            return False
        return kind == "text" or bool(value.strip() and "/" not in value and "\\" not in value
                                      and value not in (".", ".."))
    if kind == "choice":  # the same value of the same type: 28.0 is not the size 28, true is not 1
        return any(type(v) is type(value) and v == value for v in spec.values)
    if kind == "optional":
        return True if value is None else accepts(spec.item, value)
    if kind == "either":
        return _any(accepts(option, value) for option in spec.options)
    if kind == "list":
        if not isinstance(value, (list, tuple)) or not spec.lo <= len(value) <= spec.hi:
            return False
        return _all(accepts(spec.item, v) for v in value)
    if kind == "mapping":
        if not isinstance(value, Mapping) or len(value) > spec.hi:
            return False
        return _all(x for k, v in value.items() for x in (accepts(spec.key, k), accepts(spec.item, v)))
    if kind == "record":
        if not isinstance(value, Mapping) or any(k not in value for k in spec.required):
            return False
        return _all(_field_accepts(spec, k, v) for k, v in value.items())
    if kind == "scalar":
        if value is None or isinstance(value, bool):
            return True
        if isinstance(value, float):
            return accepts(s.Spec("number", lo=-1e12, hi=1e12), value)
        if isinstance(value, int):
            return accepts(s.Spec("integer", lo=-(10**12), hi=10**12), value)
        return accepts(s.Spec("text", max_len=1024), value)
    if kind == "plain":
        inner = s.Spec("plain", depth=spec.depth - 1, hi=spec.hi)
        if isinstance(value, (list, tuple, Mapping)):
            if spec.depth <= 0:
                return False
            if isinstance(value, Mapping):
                return accepts(s.Spec("mapping", hi=spec.hi, key=s.text(100), item=inner), value)
            return accepts(s.Spec("list", lo=0, hi=spec.hi, item=inner), value)
        return accepts(s.Spec("scalar"), value)
    return None


def _field_accepts(spec: s.Spec, key: Any, value: Any) -> bool | None:
    if key in spec.fields:
        return accepts(spec.fields[key], value)
    if spec.extra is None or not isinstance(key, str):
        return False
    return _all((accepts(s.Spec("text", max_len=100), key), accepts(spec.extra, value)))


def _decide(answers: Any, decisive: bool) -> bool | None:
    """Three-valued and/or: `decisive` as soon as one answer is it, None when any answer is unknown, else the
    other value (`_decide(a, False)` is all, `_decide(a, True)` any)."""
    unknown = False
    for answer in answers:
        if answer is decisive:
            return decisive
        unknown |= answer is None
    return None if unknown else not decisive


def _all(answers: Any) -> bool | None:
    return _decide(answers, False)


def _any(answers: Any) -> bool | None:
    return _decide(answers, True)


# -- a valid value for a Spec ----------------------------------------------------------------------------------
TEXT_CANDIDATES = ("x", "a", "1", "layer3", "50GB", "youden", "chunk-0-0.bin", "numpy")


def valid(check: Any) -> Any:
    """The plainest value a Spec accepts (a record's required fields only): a valid base for a walk when no real
    document holds one, e.g. a data kind the test run did not use."""
    spec = check if isinstance(check, s.Spec) else s.spec_of(check)
    if spec is None:
        raise ValueError(f"no Spec to make a valid value from: {check!r}")
    kind = spec.kind
    if kind == "boolean":
        return False
    if kind == "integer":
        return max(spec.lo, min(spec.hi, 1))
    if kind == "number":
        return spec.hi if spec.low_open else max(spec.lo, min(spec.hi, 0))
    if kind in ("text", "name"):
        return next(c for c in TEXT_CANDIDATES if accepts(spec, c))
    if kind == "choice":
        return spec.values[0]
    if kind in ("optional", "scalar", "plain"):
        return None
    if kind == "either":
        return valid(spec.options[0])
    if kind == "list":
        return [valid(spec.item)] * spec.lo
    if kind == "mapping":
        return {}
    if kind == "record":
        return {key: valid(spec.fields[key]) for key in spec.required}
    raise ValueError(f"no valid value for a Spec of kind {kind}")


# -- hostile values for a Spec ---------------------------------------------------------------------------------
def hostile(check: Any, sample: Any = None) -> Iterator[tuple[str, Any]]:
    """The generic hostile values, then those just outside the bounds of every Spec reachable from `check`
    (through optional and either); `sample` is a valid value to repeat in an over-long list or mapping."""
    yield from GENERIC
    for spec in _leaves(check):
        yield from _outside(spec, sample)


def _leaves(check: Any) -> Iterator[s.Spec]:
    spec = check if isinstance(check, s.Spec) else s.spec_of(check)
    if spec is None:
        return
    if spec.kind == "optional":
        yield from _leaves(spec.item)
    elif spec.kind == "either":
        for option in spec.options:
            yield from _leaves(option)
    else:
        yield spec


def _outside(spec: s.Spec, sample: Any) -> Iterator[tuple[str, Any]]:
    kind = spec.kind
    if kind == "integer":
        yield f"{spec.lo} - 1", spec.lo - 1
        yield f"{spec.hi} + 1", spec.hi + 1
        yield f"{spec.lo} + 0.5", spec.lo + 0.5
        yield f"{float(spec.lo)} (a float)", float(spec.lo)
        yield f"'{spec.lo}' (a string)", str(spec.lo)
    elif kind == "number":
        yield f"{spec.lo:g} - 1", spec.lo - 1
        if spec.low_open:
            yield f"{spec.lo:g} (an open bound)", spec.lo
        yield f"{spec.hi:g} + 1", spec.hi + 1
        yield f"'{spec.hi:g}' (a string)", str(spec.hi)
    elif kind in ("text", "name"):
        yield f"{spec.max_len + 1} characters", "a" * (spec.max_len + 1)
        if spec.pattern:
            for candidate in ("a b!", "-", "é", "a/b", "a;b", " "):
                if accepts(spec, candidate) is False:
                    yield f"{candidate!r} (outside {spec.pattern})", candidate
        if kind == "name":
            for candidate in ("a/b", "a\\b", ".", " ", "../x"):
                yield f"{candidate!r} (not a plain name)", candidate
    elif kind == "choice":
        yield "not one of the choices", "not-a-choice"
        for value in spec.values:
            if isinstance(value, int) and not isinstance(value, bool):
                yield f"{value} + 1", value + 1
                yield f"{float(value)} (a float)", float(value)
                yield f"'{value}' (a string)", str(value)
    elif kind == "list":
        item = sample[0] if isinstance(sample, (list, tuple)) and sample else 0
        if spec.lo > 0:
            yield f"{spec.lo - 1} items", _items(item, spec.lo - 1)
        if spec.hi + 1 <= MAX_LONG_LIST:
            yield f"{spec.hi + 1} items", _items(item, spec.hi + 1)
    elif kind == "mapping":
        value = next(iter(sample.values())) if isinstance(sample, Mapping) and sample else 0
        yield f"{spec.hi + 1} entries", {f"k{i}": value for i in range(spec.hi + 1)}
        for label, key in (("an interpolation", "${oc.env:HOME}"), ("control characters", CONTROL),
                           ("100k characters", LONG), ("'/etc/shadow'", "/etc/shadow"), ("'..'", ".."),
                           ("an empty string", "")):
            yield f"a key of {label}", {key: value}
    elif kind == "record":
        yield "a list of the fields", list(sample) if isinstance(sample, Mapping) else []
    elif kind == "scalar":
        yield "1e13 (a float)", 1e13
        yield "10**12 + 1", 10**12 + 1
        yield "1025 characters", "a" * 1025
    elif kind == "plain":
        nested: Any = 1
        for _ in range(spec.depth + 1):
            nested = [nested]
        yield f"nested {spec.depth + 1} deep", nested
        if spec.depth > 0 and spec.hi + 1 <= MAX_LONG_LIST:
            yield f"{spec.hi + 1} items", [0] * (spec.hi + 1)
            yield f"{spec.hi + 1} entries", {f"k{i}": 0 for i in range(spec.hi + 1)}
        yield "1e13 (a float)", 1e13
        yield "1025 characters", "a" * 1025


def _items(item: Any, n: int) -> list[Any]:
    """`n` items like `item`: distinct names (so only the count is wrong, not a repeated class name), else copies."""
    return [f"{item}{i}" for i in range(n)] if isinstance(item, str) else [item] * n


# -- the walk ----------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Place:
    """Where a value is: as the reader's messages spell it (`where`, which restarts at a value checked in a call
    of its own) and as the document spells it (`path`)."""

    where: str
    path: str

    def key(self, key: Any) -> Place:
        return Place(f"{self.where}.{key}" if self.where else str(key), f"{self.path}.{key}" if self.path else str(key))

    def index(self, i: int) -> Place:
        return Place(f"{self.where}[{i}]", f"{self.path}[{i}]")


Step = tuple[Place, str, Any, bool]  # where, what, the new value of the node walked, must it be refused


def variants(base: Any, reader: Callable[[Any], Any], root: Any = None,
             shallow: frozenset[str] = frozenset()) -> Iterator[Variant]:
    """Every hostile variant of the valid document `base` that `reader` checks; `root` is the Check applied to
    the whole document (a hand-written one is fine), or None to take it from a trace of `reader`. Below a place
    in `shallow` (as the document spells it: `hyper_parameters`), only that place itself is varied."""
    with s.trace() as roots:
        reader(base)
    walk = Walk(roots, shallow=shallow)
    for place, label, document, refuse in _walk(walk, root, base, Place("", "")):
        yield Variant(place.where.lstrip("."), label, document, refuse, place.path)


def unseen_places(base: Any, reader: Callable[[Any], Any], root: Any = None) -> set[str]:
    """The places of `base` (as the document spells them) no Spec describes: walked blind, with a clean refusal
    all that is asserted there."""
    with s.trace() as roots:
        reader(base)
    walk = Walk(roots)
    for _ in _walk(walk, root, base, Place("", "")):
        pass
    return walk.unseen


def _resolve(walk: Walk, check: Any, value: Any, at: Place) -> tuple[s.Spec | None, Place]:
    """The Spec that applies to `value` at `at`, and the place as its messages name it; (None, at) if unseen."""
    spec = s.spec_of(check)
    if spec is not None:
        return spec, at
    if callable(check):  # a hand-written check: the first described Check it applies here
        with s.trace() as roots:
            try:
                check(value, at.where)
            except s.Invalid:
                pass
        for call in roots:
            if call.where == at.where:
                return call.spec, at
    for call in calls(walk.roots):  # checked in a call of its own, or deeper inside a hand-written check
        if _same(call.value, value) and (call.where == at.where or call in walk.roots):
            return call.spec, Place(call.where, at.path)
    if isinstance(value, Mapping):  # shared out between several records
        parts = [c for c in walk.roots if c.spec.kind == "record" and isinstance(c.value, Mapping) and c.value
                 and all(k in value and _same(value[k], v) for k, v in c.value.items())]
        if parts and set().union(*(c.value for c in parts)) == set(value):
            fields = {k: v for c in parts for k, v in c.spec.fields.items()}
            required = tuple(k for c in parts for k in c.spec.required)
            return s.Spec("record", fields=MappingProxyType(fields), required=required), Place(parts[0].where, at.path)
    return None, at


def calls(calls: list[s.Call]) -> Iterator[s.Call]:
    stack = list(reversed(calls))
    while stack:
        call = stack.pop()
        yield call
        stack.extend(reversed(call.calls))


def _same(a: Any, b: Any) -> bool:
    try:
        return type(a) is type(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - values that cannot be compared are not the same
        return False


def _unwrap(spec: s.Spec, value: Any) -> tuple[Any, list[s.Spec]]:
    """The Check (or Spec) whose structure `value` has, through optional and either, and the eithers passed on
    the way; the inner Check may be hand-written (an optional export's `operating`), so it is resolved again."""
    inner: Any = spec
    eithers: list[s.Spec] = []
    while isinstance(inner, s.Spec) and inner.kind in ("optional", "either"):
        if inner.kind == "optional":
            inner = s.spec_of(inner.item) or inner.item
        else:
            eithers.append(inner)
            matching = [o for o in inner.options if accepts(o, value)]
            inner = (s.spec_of(matching[0]) or matching[0]) if matching else None
    return inner, eithers


def _reaches(check: Any, value: Any, where: str, kind: str) -> bool:
    """Whether the hand-written `check`, given `value`, applies its described Check of `kind` to it (a wrapper may
    take some values itself: `None if value is None else integer(...)`)."""
    with s.trace() as roots:
        try:
            check(value, where)
        except Exception:  # noqa: BLE001 - the reader's run judges the exception; here only the trace counts
            pass
    return any(call.where == where and call.spec.kind == kind for call in roots)


def _walk(walk: Walk, check: Any, value: Any, at: Place) -> Iterator[Step]:
    """Hostile values of this node, then of everything below it."""
    spec, at = _resolve(walk, check, value, at)
    if spec is None:
        walk.unseen.add(at.path or "(the whole document)")
    hand_written = spec is not None and s.spec_of(check) is None and callable(check)
    for label, bad in hostile(spec if spec is not None else check, value):
        refuse = accepts(spec, bad) is False
        if refuse and hand_written:
            refuse = _reaches(check, bad, at.where, spec.kind)
        yield at, label, bad, refuse
    if at.path in walk.shallow:
        return
    if spec is None:
        yield from _blind(walk, value, at)
        return
    inner, eithers = _unwrap(spec, value)
    if inner is not None and not isinstance(inner, s.Spec):
        inner, at = _resolve(walk, inner, value, at)
    for place, label, new, refuse in _children(walk, inner, value, at):
        if refuse and eithers:  # another alternative may take the changed value
            refuse = all(accepts(e, new) is False for e in eithers)
        yield place, label, new, refuse


def _children(walk: Walk, spec: s.Spec | None, value: Any, at: Place) -> Iterator[Step]:
    if spec is None:
        return
    if spec.kind == "record" and isinstance(value, Mapping):
        yield from _record(walk, spec, value, at)
    elif spec.kind in ("list", "plain") and isinstance(value, (list, tuple)) and value:
        item = spec.item if spec.kind == "list" else s.Spec("plain", depth=spec.depth - 1, hi=spec.hi)
        if spec.kind == "list" or spec.depth > 0:
            for place, label, new, refuse in _walk(walk, item, value[0], at.index(0)):
                yield place, label, [new, *value[1:]], refuse
    elif spec.kind in ("mapping", "plain") and isinstance(value, Mapping) and value:
        item = spec.item if spec.kind == "mapping" else s.Spec("plain", depth=spec.depth - 1, hi=spec.hi)
        if spec.kind == "mapping" or spec.depth > 0:
            key = next(iter(value))
            for place, label, new, refuse in _walk(walk, item, value[key], at.key(key)):
                yield place, label, {**value, key: new}, refuse


def _record(walk: Walk, spec: s.Spec, value: Mapping[str, Any], at: Place) -> Iterator[Step]:
    """Each field present, walked; each field absent, added with hostile values; each required one removed; an
    unknown key added; a key no Spec names (a registry's `arch`, `kind`), walked blind."""
    extra_ok = accepts(spec, {**value, UNKNOWN_KEY: 1})
    yield at.key(UNKNOWN_KEY), "an unknown key", {**value, UNKNOWN_KEY: 1}, extra_ok is False
    for key in value:
        rest = {k: v for k, v in value.items() if k != key}
        yield at.key(key), "removed", rest, key in spec.required
    for key, item in value.items():
        for place, label, new, refuse in _walk(walk, spec.fields.get(key, spec.extra), item, at.key(key)):
            yield place, label, {**value, key: new}, refuse
    for key, check in spec.fields.items():
        if key not in value:
            for label, bad in hostile(check):
                yield at.key(key), f"{label} (added)", {**value, key: bad}, accepts(check, bad) is False


def _blind(walk: Walk, value: Any, at: Place) -> Iterator[Step]:
    """Below a place no Spec describes: the first item of a list and every key of a mapping, each resolved again
    (a described check may apply deeper, as to a stream table's cells)."""
    if isinstance(value, Mapping):
        for key, item in value.items():
            for place, label, new, refuse in _walk(walk, None, item, at.key(key)):
                yield place, label, {**value, key: new}, refuse
    elif isinstance(value, (list, tuple)) and value:
        for place, label, new, refuse in _walk(walk, None, value[0], at.index(0)):
            yield place, label, [new, *value[1:]], refuse
