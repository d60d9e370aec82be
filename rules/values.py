"""Values that conditions compare and that computed traits expose.

Every value is a pure function of (profile, instant): ``value_at(ix, t)``. ``edges_after(ix, t)`` gives the
next instant after ``t`` at which its inputs change without a new event (an event leaving or entering a
window); walking those edges is how the next change of a result is found exactly.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from itertools import islice
from operator import eq, ge, gt, le, lt, ne
from typing import Any

from .durations import Span, format_duration, longest, passed
from .model import EventRecord, Profile

ANY_EVENT = "*"
MAX_LISTED_EVENTS = 20


class Missing:
    """A value that cannot be computed: a missing property or trait, no values, a division by zero."""

    __slots__ = ("definite", "reason")

    def __init__(self, reason: str, definite: bool = False) -> None:
        self.reason = reason
        self.definite = definite  # a fact ("never had order_completed"): comparisons are false, not unknown

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Missing) and other.reason == self.reason

    def __hash__(self) -> int:
        return hash(self.reason)

    def __repr__(self) -> str:
        return f"Missing({self.reason!r})"


def earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    if a is None:
        return b
    if b is None or a <= b:
        return a
    return b


# Sums and averages of amounts sent as decimals (revenue 500.64) are kept to this many places: the
# binary floats' error (500.64 + 468.93 + 30.43 = 999.9999999999999) never decides a threshold.
DECIMAL_PLACES = 9


def _decimal_places(value: float) -> float:
    return round(value, DECIMAL_PLACES)


def _total(values: Sequence[int | float]) -> int | float:
    """The sum of ``values``: exact for integers, for floats correctly rounded (``math.fsum``) and
    kept to :data:`DECIMAL_PLACES`."""
    if all(type(v) is int for v in values):
        return sum(values)
    try:
        total = math.fsum(values)
    except (OverflowError, ValueError):  # past a float's range, or infinite: a sum of floats
        return _float_sum(values)
    return _decimal_places(total)


def _float_sum(values: Sequence[int | float]) -> float:
    """The sum as floats, an integer past a float's range counted as infinite."""
    out = 0.0
    for v in values:
        try:
            out += float(v)
        except OverflowError:
            out += math.inf if v > 0 else -math.inf
    return out


def _mean(values: Sequence[int | float]) -> float:
    total = _total(values)
    try:
        mean = total / len(values)
    except OverflowError:  # an integer sum past a float's range
        return math.inf if total > 0 else -math.inf
    return _decimal_places(mean) if math.isfinite(mean) else mean


def number(value: Any) -> float | int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value if not (isinstance(value, float) and math.isnan(value)) else None
    if isinstance(value, str):
        try:
            parsed = float(value)
        except ValueError:
            return None
        return None if math.isnan(parsed) or math.isinf(parsed) else parsed
    return None


def as_datetime(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value.strip())
        except ValueError:
            return None
        return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    return None


def _ordered(a: Any, b: Any) -> tuple[Any, Any] | None:
    """Both sides in one comparable kind (numbers, texts or instants), or None."""
    na, nb = number(a), number(b)
    if na is not None and nb is not None and not (isinstance(a, str) and isinstance(b, str)):
        return na, nb
    if isinstance(a, str) and isinstance(b, str):
        return a, b
    da, db = as_datetime(a), as_datetime(b)
    if da is not None and db is not None and (isinstance(a, datetime) or isinstance(b, datetime)):
        return da, db
    return None


def _equal(a: Any, b: Any) -> bool:
    if a == b:
        return True
    pair = _ordered(a, b)  # a number and a number sent as text compare as numbers, both ways
    return pair is not None and pair[0] == pair[1]


def _distinct_key(value: Any) -> Any:
    """What ``distinct`` tells values apart by: numbers (and numbers sent as text) by their value,
    so ``1``, ``1.0`` and ``"1"`` count once, as ``eq`` and ``sum`` take them; anything else by its form."""
    n = number(value)
    return n if n is not None else repr(value)


def _not_equal(actual: Any, arg: Any) -> bool:
    return not _equal(actual, arg)


def _in(actual: Any, arg: Any) -> bool:
    return any(_equal(actual, item) for item in arg)


def _not_in(actual: Any, arg: Any) -> bool:
    return not any(_equal(actual, item) for item in arg)


def _contains(actual: Any, arg: Any) -> bool | None:
    if isinstance(actual, str):
        return isinstance(arg, str) and arg in actual
    if isinstance(actual, list | tuple | set | frozenset):
        return any(_equal(item, arg) for item in actual)
    return None


def _starts_with(actual: Any, arg: Any) -> bool | None:
    return actual.startswith(arg) if isinstance(actual, str) else None


def _between(actual: Any, arg: Any) -> bool | None:
    low, high = _ordered(actual, arg[0]), _ordered(actual, arg[1])
    if low is None or high is None:
        return None
    return bool(low[1] <= low[0] and high[0] <= high[1])


def _gt(actual: Any, arg: Any) -> bool | None:
    pair = _ordered(actual, arg)
    return None if pair is None else bool(pair[0] > pair[1])


def _gte(actual: Any, arg: Any) -> bool | None:
    pair = _ordered(actual, arg)
    return None if pair is None else bool(pair[0] >= pair[1])


def _lt(actual: Any, arg: Any) -> bool | None:
    pair = _ordered(actual, arg)
    return None if pair is None else bool(pair[0] < pair[1])


def _lte(actual: Any, arg: Any) -> bool | None:
    pair = _ordered(actual, arg)
    return None if pair is None else bool(pair[0] <= pair[1])


_COMPARISONS: dict[str, Callable[[Any, Any], bool | None]] = {
    "eq": _equal,
    "ne": _not_equal,
    "in": _in,
    "not_in": _not_in,
    "contains": _contains,
    "starts_with": _starts_with,
    "between": _between,
    "gt": _gt,
    "gte": _gte,
    "lt": _lt,
    "lte": _lte,
}


def compare(op: str, actual: Any, arg: Any) -> bool | None:
    """One comparison; None when the two sides cannot be compared (text against number ...).

    An operator the schema does not know raises KeyError.
    """
    return _COMPARISONS[op](actual, arg)


def describe_ops(ops: Iterable[tuple[str, Any]]) -> str:
    symbols = {"eq": "=", "ne": "≠", "gt": ">", "gte": "≥", "lt": "<", "lte": "≤"}
    parts = []
    for op, arg in ops:
        if isinstance(arg, Span):
            parts.append(f"{op.replace('_', ' ')} {format_duration(arg)}")
        elif op in symbols:
            parts.append(f"{symbols[op]} {arg!r}")
        elif op == "between":
            parts.append(f"between {arg[0]!r} and {arg[1]!r}")
        elif op in ("in", "not_in"):
            parts.append(f"{op.replace('_', ' ')} {list(arg)!r}")
        else:
            parts.append(f"{op.replace('_', ' ')} {arg!r}")
    return " and ".join(parts)


_FILTERS = {"eq": eq, "ne": ne, "gt": gt, "gte": ge, "lt": lt, "lte": le}
_OPS = {check: op for op, check in _FILTERS.items()}


def _numeric_filters(
    where: tuple[tuple[str, tuple[tuple[str, Any], ...]], ...],
) -> tuple[tuple[str, Callable[[Any, Any], Any], Any], ...] | None:
    """Property filters that are all plain comparisons against numbers, as operator functions."""
    out = []
    for prop, ops in where:
        for op, arg in ops:
            if op not in _FILTERS or type(arg) not in (int, float) or arg != arg:
                return None
            out.append((prop, _FILTERS[op], arg))
    return tuple(out) or None


class Selector:
    """An event name (or ``*`` for any event, ``excluded``: but events of these names) with property
    filters."""

    __slots__ = ("event", "excluded", "key", "numeric", "props", "where")

    def __init__(
        self,
        event: str,
        where: Mapping[str, tuple[tuple[str, Any], ...]] | None,
        excluded: Iterable[str] | None = None,
    ) -> None:
        self.event = event
        self.where = tuple(sorted((where or {}).items()))
        self.excluded = frozenset(excluded or ())
        but = (tuple(sorted(self.excluded)),) if self.excluded else ()
        self.key = repr((event, self.where, *but))
        self.props = frozenset(prop for prop, _ in self.where)
        self.numeric = _numeric_filters(self.where)

    def matches(self, properties: Mapping[str, Any]) -> bool:
        numeric = self.numeric
        if numeric is not None:
            # numbers against numbers: the comparison itself (compare() gives the same for them)
            for prop, check, arg in numeric:
                value = properties.get(prop)
                if type(value) is int or type(value) is float:
                    if not check(value, arg):
                        return False
                elif value is None or compare(_OPS[check], value, arg) is not True:
                    return False
            return True
        for prop, ops in self.where:
            present = prop in properties and properties[prop] is not None
            value = properties.get(prop)
            for op, arg in ops:
                if op == "exists":
                    if present != bool(arg):
                        return False
                elif not present or compare(op, value, arg) is not True:
                    return False
        return True

    def label(self) -> str:
        name = self.event
        if self.excluded:
            name = f"any event but {', '.join(sorted(self.excluded))}"
        if not self.where:
            return name
        filters = ", ".join(f"{prop} {describe_ops(ops)}" for prop, ops in self.where)
        return f"{name} where {filters}"


def _sort_key(record: EventRecord) -> tuple[datetime, str]:
    return (record.occurred_at, record.event_id)


_NOTHING: tuple[Sequence[EventRecord], list[datetime]] = ((), [])


class Index:
    """A profile's events per selector, sorted by time, built once per evaluation and shared by conditions."""

    __slots__ = ("_all", "_names", "_split", "cache", "profile")

    def __init__(self, profile: Profile) -> None:
        self.profile = profile
        self.cache: dict[str, tuple[Sequence[EventRecord], list[datetime]]] = {}
        self._names: dict[str, tuple[list[EventRecord], list[datetime]]] | None = None
        self._all: tuple[Sequence[EventRecord], list[datetime]] = _NOTHING
        self._split: dict[str, dict[Any, Index]] = {}

    def split(self, prop: str) -> dict[Any, Index]:
        """One index per value of ``prop``, over the events that carry that value (any event name)."""
        hit = self._split.get(prop)
        if hit is None:
            buckets: dict[Any, list[EventRecord]] = {}
            for record in self.profile.events:
                group = record.properties.get(prop)
                if group is None or isinstance(group, dict | list):
                    continue
                buckets.setdefault(group, []).append(record)
            hit = self._split[prop] = {
                group: Index(self.profile.replace(events=records)) for group, records in buckets.items()
            }
        return hit

    def _build(self) -> dict[str, tuple[list[EventRecord], list[datetime]]]:
        """Every event name's records and times in one pass, in (occurred_at, event_id) order."""
        events: Sequence[EventRecord] = self.profile.events
        times = [r.occurred_at for r in events]
        if any(map(ge, times, islice(times, 1, None))):  # out of order, or ties to order by id
            events = sorted(events, key=_sort_key)
            times = [r.occurred_at for r in events]
        names: dict[str, tuple[list[EventRecord], list[datetime]]] = {}
        for record, at in zip(events, times, strict=True):
            entry = names.get(record.name)
            if entry is None:
                names[record.name] = ([record], [at])
            else:
                entry[0].append(record)
                entry[1].append(at)
        self._all = (events, times)
        self._names = names
        return names

    def names(self) -> dict[str, tuple[list[EventRecord], list[datetime]]]:
        """Every event name in the profile: its records and times, in (occurred_at, event_id) order."""
        return self._names if self._names is not None else self._build()

    def select(self, sel: Selector) -> tuple[Sequence[EventRecord], list[datetime]]:
        hit = self.cache.get(sel.key)
        if hit is None:
            names = self._names if self._names is not None else self._build()
            hit = self._all if sel.event == ANY_EVENT else names.get(sel.event, _NOTHING)
            if sel.excluded:
                excluded = sel.excluded
                kept = [r for r in hit[0] if r.name not in excluded]
                hit = (kept, [r.occurred_at for r in kept])
            if sel.where:
                records = [r for r in hit[0] if sel.matches(r.properties)]
                hit = (records, [r.occurred_at for r in records])
            self.cache[sel.key] = hit
        return hit


class Window:
    """``within`` (occurred less than D ago) and/or ``older_than`` (at least D ago); neither: all time."""

    __slots__ = ("older", "within")

    def __init__(self, within: Span | None = None, older: Span | None = None) -> None:
        self.within = within
        self.older = older

    def bounds(self, times: list[datetime], t: datetime) -> tuple[int, int]:
        lo = passed(times, t, self.within) if self.within is not None else 0
        hi = passed(times, t, self.older) if self.older is not None else len(times)
        return lo, max(lo, hi)

    def edge(self, times: list[datetime], t: datetime) -> datetime | None:
        found: datetime | None = None
        if self.within is not None:
            lo = passed(times, t, self.within)
            if lo < len(times):
                found = times[lo] + self.within
        if self.older is not None:
            hi = passed(times, t, self.older)
            if hi < len(times):
                found = earliest(found, times[hi] + self.older)
        return found

    @property
    def lookback(self) -> timedelta | None:
        if self.within is None:
            return None
        return longest(self.within)

    def label(self) -> str:
        parts = []
        if self.within is not None:
            parts.append(f"within {format_duration(self.within)}")
        if self.older is not None:
            parts.append(f"older than {format_duration(self.older)}")
        return " and ".join(parts) if parts else "all time"


def event_refs(records: Iterable[EventRecord]) -> list[dict[str, str]]:
    out = []
    for record in islice(records, MAX_LISTED_EVENTS):
        out.append({"id": record.event_id, "name": record.name, "at": iso(record.occurred_at)})
    return out


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


class Value:
    """Base of computed values."""

    key: str = ""

    def value_at(self, ix: Index, t: datetime) -> Any:
        raise NotImplementedError

    def edges_after(self, ix: Index, t: datetime) -> datetime | None:
        return None

    def value_edge(self, ix: Index, t: datetime) -> tuple[Any, datetime | None]:
        """``(value_at(t), edges_after(t))`` in one pass."""
        return self.value_at(ix, t), self.edges_after(ix, t)

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        return {"value": exported(self.value_at(ix, t))}

    def label(self) -> str:
        return self.key


class Aggregate(Value):
    """count / sum / avg / min / max / distinct over the events of a selector in a window."""

    __slots__ = ("group_by", "key", "kind", "prop", "sel", "window")

    def __init__(
        self, kind: str, sel: Selector, window: Window, prop: str | None, group_by: str | None
    ) -> None:
        self.kind = kind
        self.sel = sel
        self.window = window
        self.prop = prop
        self.group_by = group_by
        self.key = repr(("agg", kind, sel.key, window.within, window.older, prop, group_by))

    def value_at(self, ix: Index, t: datetime) -> Any:
        records, times = ix.select(self.sel)
        lo, hi = self.window.bounds(times, t)
        if self.group_by is None:
            if self.kind == "count":
                return hi - lo
            return self._reduce(records[lo:hi])
        groups: dict[Any, list[EventRecord]] = {}
        for record in records[lo:hi]:
            group = record.properties.get(self.group_by)
            if group is None or isinstance(group, dict | list):
                continue
            groups.setdefault(group, []).append(record)
        if self.kind == "count":
            return {group: len(items) for group, items in groups.items()}
        return {group: self._reduce(items) for group, items in groups.items()}

    def _reduce(self, records: Sequence[EventRecord]) -> Any:
        prop = self.prop or ""
        if self.kind == "count":
            return len(records)
        if self.kind == "distinct":
            present = (r.properties[prop] for r in records if r.properties.get(prop) is not None)
            return len({_distinct_key(value) for value in present})
        values = []
        for r in records:
            v = r.properties.get(prop)
            if type(v) is not int and (type(v) is not float or v != v):  # number(), inlined for numbers
                v = number(v)
                if v is None:
                    continue
            values.append(v)
        if self.kind == "sum":
            return _total(values)
        if not values:
            return Missing(f"no {self.sel.event} with a numeric {prop} {self.window.label()}")
        if self.kind == "avg":
            return _mean(values)
        return min(values) if self.kind == "min" else max(values)

    def edges_after(self, ix: Index, t: datetime) -> datetime | None:
        if self.window.within is None and self.window.older is None:
            return None
        return self.window.edge(ix.select(self.sel)[1], t)

    def value_edge(self, ix: Index, t: datetime) -> tuple[Any, datetime | None]:
        times = (ix.cache.get(self.sel.key) or ix.select(self.sel))[1]
        n = len(times)
        if not n and self.kind == "count" and self.group_by is None:
            return 0, None  # no such event: nothing to count, nothing enters or leaves the window
        within, older = self.window.within, self.window.older
        edge: datetime | None = None
        lo = 0
        if within is not None:
            lo = bisect_right(times, t - within) if type(within) is timedelta else passed(times, t, within)
            if lo < n:
                edge = times[lo] + within
        hi = n
        if older is not None:
            hi = bisect_right(times, t - older) if type(older) is timedelta else passed(times, t, older)
            if hi < n:
                entering = times[hi] + older
                if edge is None or entering < edge:
                    edge = entering
            if hi < lo:
                hi = lo
        if self.group_by is None and self.kind == "count":
            return hi - lo, edge
        return self.value_at(ix, t), edge

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        records, times = ix.select(self.sel)
        lo, hi = self.window.bounds(times, t)
        counted = records[lo:hi]
        out: dict[str, Any] = {
            "value": exported(self.value_at(ix, t)),
            "events": event_refs(reversed(counted)),
        }
        if len(counted) > MAX_LISTED_EVENTS:
            out["events_total"] = len(counted)
        if self.prop and self.kind != "count":
            skipped = sum(1 for r in counted if number(r.properties.get(self.prop)) is None)
            if skipped and self.kind != "distinct":
                out["note"] = f"{skipped} event(s) without a numeric {self.prop} were left out"
        return out

    def label(self) -> str:
        what = self.kind if self.kind == "count" else f"{self.kind}({self.prop})"
        by = f" per {self.group_by}" if self.group_by else ""
        return f"{what} of {self.sel.label()} {self.window.label()}{by}"


class Occurrence(Value):
    """The first or last time an event (matching filters) happened."""

    __slots__ = ("key", "last", "sel")

    def __init__(self, sel: Selector, last: bool) -> None:
        self.sel = sel
        self.last = last
        self.key = repr(("occ", sel.key, last))

    def value_at(self, ix: Index, t: datetime) -> Any:
        times = ix.select(self.sel)[1]
        if not times:
            return Missing(f"never had {self.sel.label()}", definite=True)
        return times[-1] if self.last else times[0]

    def value_edge(self, ix: Index, t: datetime) -> tuple[Any, datetime | None]:
        times = (ix.cache.get(self.sel.key) or ix.select(self.sel))[1]
        if not times:
            return Missing(f"never had {self.sel.label()}", definite=True), None
        return (times[-1] if self.last else times[0]), None

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        records = ix.select(self.sel)[0]
        out: dict[str, Any] = {"value": exported(self.value_at(ix, t))}
        if records:
            out["events"] = event_refs([records[-1] if self.last else records[0]])
        return out

    def label(self) -> str:
        return f"{'last' if self.last else 'first'} {self.sel.label()}"


class ProfileTrait(Value):
    __slots__ = ("key", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = repr(("trait", name))

    def value_at(self, ix: Index, t: datetime) -> Any:
        value = ix.profile.traits.get(self.name)
        if value is None:
            return Missing(f"trait {self.name} is missing")
        return value

    def label(self) -> str:
        return f"trait {self.name}"


class Computed(Value):
    """A reference to a computed trait (resolved after all traits are compiled)."""

    __slots__ = ("expr", "key", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.key = repr(("computed", name))
        self.expr: Value | None = None

    def value_at(self, ix: Index, t: datetime) -> Any:
        assert self.expr is not None
        return self.expr.value_at(ix, t)

    def edges_after(self, ix: Index, t: datetime) -> datetime | None:
        assert self.expr is not None
        return self.expr.edges_after(ix, t)

    def value_edge(self, ix: Index, t: datetime) -> tuple[Any, datetime | None]:
        assert self.expr is not None
        return self.expr.value_edge(ix, t)

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        assert self.expr is not None
        out = self.expr.describe(ix, t)
        out["definition"] = self.expr.label()
        return out

    def label(self) -> str:
        return f"computed trait {self.name}"


class Ratio(Value):
    __slots__ = ("den", "key", "num")

    def __init__(self, num: Value, den: Value) -> None:
        self.num = num
        self.den = den
        self.key = repr(("ratio", num.key, den.key))

    def inputs(self) -> tuple[Value, ...]:
        return (self.num, self.den)

    def combine(self, results: Sequence[tuple[Any, datetime | None]]) -> tuple[Any, datetime | None]:
        """``value_edge`` from its inputs' ``value_edge`` (numerator, denominator)."""
        (num, num_edge), (den, den_edge) = results
        return self._ratio(num, den), earliest(num_edge, den_edge)

    def value_at(self, ix: Index, t: datetime) -> Any:
        return self._ratio(self.num.value_at(ix, t), self.den.value_at(ix, t))

    def _ratio(self, num: Any, den: Any) -> Any:
        if isinstance(den, Missing):
            return den
        if isinstance(num, Missing):
            return num
        n, d = number(num), number(den)
        if n is None or d is None:
            return Missing("ratio of values that are not numbers")
        if d == 0:
            return Missing(f"division by zero: {self.den.label()} is 0")
        return n / d

    def edges_after(self, ix: Index, t: datetime) -> datetime | None:
        return earliest(self.num.edges_after(ix, t), self.den.edges_after(ix, t))

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        return {
            "value": exported(self.value_at(ix, t)),
            "numerator": exported(self.num.value_at(ix, t)),
            "denominator": exported(self.den.value_at(ix, t)),
        }

    def label(self) -> str:
        return f"({self.num.label()}) / ({self.den.label()})"


class Points(Value):
    """Sum of weight x count per rule (each rule with its own event, filters and window), capped."""

    __slots__ = ("cap", "key", "rules")

    def __init__(self, rules: Sequence[tuple[Aggregate, float]], cap: float | None) -> None:
        self.rules = tuple(rules)
        self.cap = cap
        self.key = repr(("points", [(a.key, w) for a, w in self.rules], cap))

    def value_at(self, ix: Index, t: datetime) -> Any:
        total = 0.0
        for agg, weight in self.rules:
            total += weight * agg.value_at(ix, t)
        if self.cap is not None and total > self.cap:
            total = self.cap
        return int(total) if total == int(total) else round(total, 6)

    def edges_after(self, ix: Index, t: datetime) -> datetime | None:
        found: datetime | None = None
        for agg, _ in self.rules:
            found = earliest(found, agg.edges_after(ix, t))
        return found

    def inputs(self) -> tuple[Value, ...]:
        return tuple(agg for agg, _ in self.rules)

    def value_edge(self, ix: Index, t: datetime) -> tuple[Any, datetime | None]:
        return self.combine([agg.value_edge(ix, t) for agg, _ in self.rules])

    def combine(self, results: Sequence[tuple[Any, datetime | None]]) -> tuple[Any, datetime | None]:
        """``value_edge`` from its rules' counts' ``value_edge``."""
        total = 0.0
        found: datetime | None = None
        for (count, edge), (_, weight) in zip(results, self.rules, strict=True):
            total += weight * count
            if edge is not None and (found is None or edge < found):
                found = edge
        if self.cap is not None and total > self.cap:
            total = self.cap
        return (int(total) if total == int(total) else round(total, 6)), found

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        parts = [
            {"rule": agg.label(), "weight": weight, "count": agg.value_at(ix, t)}
            for agg, weight in self.rules
        ]
        return {"value": self.value_at(ix, t), "cap": self.cap, "parts": parts}

    def label(self) -> str:
        return "points"


class Composite(Value):
    """Weighted score on a 0..scale range: each part is clamped to [0, max] and divided by max."""

    __slots__ = ("key", "parts", "scale")

    def __init__(self, parts: Sequence[tuple[Value, float, float]], scale: float) -> None:
        self.parts = tuple(parts)
        self.scale = scale
        self.key = repr(("composite", [(v.key, w, m) for v, w, m in self.parts], scale))

    def value_at(self, ix: Index, t: datetime) -> Any:
        total_weight = 0.0
        score = 0.0
        for value, weight, top in self.parts:
            raw = value.value_at(ix, t)
            if isinstance(raw, Missing):
                return raw
            n = number(raw)
            if n is None:
                return Missing(f"{value.label()} is not a number")
            score += weight * min(max(n / top, 0.0), 1.0)
            total_weight += weight
        return round(self.scale * score / total_weight, 2)

    def edges_after(self, ix: Index, t: datetime) -> datetime | None:
        found: datetime | None = None
        for value, _, _ in self.parts:
            found = earliest(found, value.edges_after(ix, t))
        return found

    def inputs(self) -> tuple[Value, ...]:
        return tuple(value for value, _, _ in self.parts)

    def value_edge(self, ix: Index, t: datetime) -> tuple[Any, datetime | None]:
        return self.combine([value.value_edge(ix, t) for value, _, _ in self.parts])

    def combine(self, results: Sequence[tuple[Any, datetime | None]]) -> tuple[Any, datetime | None]:
        """``value_edge`` from its parts' ``value_edge``."""
        total_weight = 0.0
        score = 0.0
        found: datetime | None = None
        missing: Missing | None = None
        for (raw, edge), (value, weight, top) in zip(results, self.parts, strict=True):
            if edge is not None and (found is None or edge < found):
                found = edge
            if missing is not None:
                continue
            if isinstance(raw, Missing):
                missing = raw
                continue
            n = number(raw)
            if n is None:
                missing = Missing(f"{value.label()} is not a number")
                continue
            score += weight * min(max(n / top, 0.0), 1.0)
            total_weight += weight
        if missing is not None:
            return missing, found
        return round(self.scale * score / total_weight, 2), found

    def describe(self, ix: Index, t: datetime) -> dict[str, Any]:
        parts = [
            {"part": value.label(), "weight": weight, "max": top, "value": exported(value.value_at(ix, t))}
            for value, weight, top in self.parts
        ]
        return {"value": exported(self.value_at(ix, t)), "scale": self.scale, "parts": parts}

    def label(self) -> str:
        return f"composite score 0..{self.scale:g}"


def per_group(value: Value) -> bool:
    """Whether ``value`` gives one result per group (``group_by``): a map whose values are compared
    one by one. Any other map (a trait holding an object) is one value, equal only to itself."""
    if isinstance(value, Computed):
        return value.expr is not None and per_group(value.expr)
    return isinstance(value, Aggregate) and value.group_by is not None


def exported(value: Any) -> Any:
    """A JSON-friendly form: Missing → None, instants → ISO text, group maps with text keys."""
    if isinstance(value, Missing):
        return None
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value == int(value) and abs(value) < 2**53:
            return int(value)
        return value
    if isinstance(value, dict):
        return {str(k): exported(v) for k, v in value.items()}
    return value


def next_value_change(value: Value, ix: Index, t: datetime, current: Any, cap: int = 64) -> datetime | None:
    """The first instant after ``t`` at which ``value`` differs from ``current``.

    Past ``cap`` steps the instant returned is only a lower bound (an early re-evaluation, never a late one).
    """
    edge = value.edges_after(ix, t)
    steps = 0
    while edge is not None:
        if value.value_at(ix, edge) != current:
            return edge
        steps += 1
        if steps >= cap:
            return edge
        edge = value.edges_after(ix, edge)
    return None


Builder = Callable[..., Value]
