"""Compiled conditions. Three-valued: True, False, or None (unknown: a missing value, a division by zero).

``evaluate(ctx)`` returns a :data:`Result` ``(value, next, after, exact)``: the value at ``ctx.now``;
``next``, the earliest instant after now at which the value may change without a new event (None: never);
``after``, the value from ``next`` on when ``exact`` is true. When ``exact`` is false, ``next`` is only a
lower bound (nothing changes before it). A segment is a member only when its condition is True.
"""

from __future__ import annotations

import operator
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Protocol

from .durations import Span, format_duration, passed, shifted
from .model import EventRecord
from .values import (
    ANY_EVENT,
    Index,
    Missing,
    Selector,
    Value,
    as_datetime,
    compare,
    describe_ops,
    earliest,
    event_refs,
    exported,
    iso,
    per_group,
)

Result = tuple[bool | None, datetime | None, bool | None, bool]
SegmentResult = tuple[bool, datetime | None, bool]  # (member, next change, exact)


class Context(Protocol):
    """What conditions read while evaluating: one profile at one instant (``rules.evaluate.Context``)."""

    @property
    def ix(self) -> Index: ...

    @property
    def now(self) -> datetime: ...

    @property
    def thorough(self) -> bool: ...

    def value(self, value: Value) -> Any: ...

    def value_edge(self, value: Value) -> tuple[Any, datetime | None]: ...

    def result(self, condition: Condition) -> Result: ...

    def segment(self, name: str) -> SegmentResult: ...

    def explain(self, condition: Condition) -> dict[str, Any]: ...

    def over(self, ix: Index) -> Context:
        """The same instant and rules over another index (a ``for_some`` group's events)."""
        ...


WALK_CAP = 64


_CHECKS = {
    "eq": operator.eq,
    "ne": operator.ne,
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}


def _is_number(value: Any) -> bool:
    return type(value) in (int, float)


def _numeric_ops(ops: Sequence[tuple[str, Any]]) -> list[tuple[Any, Any]] | None:
    """Plain comparisons against numbers, as operator functions (the common case, made fast)."""
    out: list[tuple[Any, Any]] = []
    for op, arg in ops:
        if op in _CHECKS and _is_number(arg):
            out.append((_CHECKS[op], arg))
        elif op == "between" and _is_number(arg[0]) and _is_number(arg[1]):
            out.extend([(operator.ge, arg[0]), (operator.le, arg[1])])
        else:
            return None
    return out or None


def show(value: bool | None) -> str:
    return "unknown" if value is None else ("true" if value else "false")


class Condition:
    key: str = ""

    def evaluate(self, ctx: Context) -> Result:
        raise NotImplementedError

    def explain(self, ctx: Context) -> dict[str, Any]:
        raise NotImplementedError

    def children(self) -> Sequence[Condition]:
        return ()

    def _node(self, ctx: Context, text: str, **extra: Any) -> dict[str, Any]:
        value, nxt, _, exact = ctx.result(self)
        node: dict[str, Any] = {"condition": text, "result": show(value)}
        if nxt is not None:
            node["next_change"] = iso(nxt)
            node["next_change_exact"] = exact
        node.update({k: v for k, v in extra.items() if v is not None})
        return node


class Compare(Condition):
    """A value (trait, aggregate, recency, computed trait) against one or more comparisons."""

    __slots__ = ("dates", "exists", "key", "numeric", "ops", "value")

    def __init__(self, value: Value, ops: Sequence[tuple[str, Any]]) -> None:
        self.value = value
        self.exists: bool | None = None
        self.dates: list[tuple[str, Span]] = []
        plain: list[tuple[str, Any]] = []
        for op, arg in ops:
            if op == "exists":
                self.exists = bool(arg)
            elif op in ("older_than", "within"):
                self.dates.append((op, arg))
            else:
                plain.append((op, arg))
        self.ops = tuple(plain)
        self.key = repr(("cmp", value.key, sorted(map(repr, ops))))
        self.numeric = _numeric_ops(self.ops) if self.exists is None and not self.dates else None

    def truth(self, value: Any, t: datetime) -> bool | None:
        numeric = self.numeric
        if numeric is not None and type(value) in (int, float) and value == value:  # not NaN
            for check, arg in numeric:  # noqa: SIM110 (a loop is faster than all() over a generator)
                if not check(value, arg):
                    return False
            return True
        if isinstance(value, dict) and per_group(self.value):
            return self._any_group(value, t)
        if isinstance(value, Missing):
            if self.exists is not None:
                return not self.exists
            return False if value.definite else None
        if self.exists is False:
            return False
        verdict: bool | None = True
        for op, arg in self.ops:
            outcome = compare(op, value, arg)
            if outcome is False:
                return False
            if outcome is None:
                verdict = None
        if self.dates:
            return self._dated(value, t, verdict)
        return verdict

    def _any_group(self, value: dict[Any, Any], t: datetime) -> bool | None:
        """A per-group value (group_by): true when some group's value is."""
        verdicts = [self.truth(v, t) for v in value.values()]
        if any(v is True for v in verdicts):
            return True
        return None if any(v is None for v in verdicts) else False

    def _dated(self, value: Any, t: datetime, verdict: bool | None) -> bool | None:
        """``verdict`` when the instant ``value`` is old enough / recent enough at ``t``; False when it is
        not; None when ``value`` is not an instant."""
        instant = as_datetime(value)
        if instant is None:
            return None
        for op, age in self.dates:
            edge = shifted(instant, age)
            old = edge is not None and t >= edge
            if old != (op == "older_than"):
                return False
        return verdict

    def date_edge(self, value: Any, t: datetime) -> datetime | None:
        if not self.dates:
            return None
        instant = as_datetime(value)
        if instant is None:
            return None
        found: datetime | None = None
        for _, age in self.dates:
            edge = shifted(instant, age)
            if edge is not None and edge > t:
                found = earliest(found, edge)
        return found

    def evaluate(self, ctx: Context) -> Result:
        t = ctx.now
        current, edge = ctx.value_edge(self.value)
        numeric = self.numeric
        if numeric is not None and type(current) in (int, float) and current == current:  # truth(), inlined
            verdict: bool | None = True
            for check, arg in numeric:
                if not check(current, arg):
                    verdict = False
                    break
        else:
            verdict = self.truth(current, t)
        if self.dates:
            edge = earliest(edge, self.date_edge(current, t))
        if not ctx.thorough:
            return (verdict, edge, None, edge is None)
        ix = ctx.ix
        steps = 0
        while edge is not None:
            later = self.value.value_at(ix, edge)
            after = self.truth(later, edge)
            if after != verdict:
                return (verdict, edge, after, True)
            steps += 1
            if steps >= WALK_CAP:
                return (verdict, edge, None, False)
            edge = earliest(self.value.edges_after(ix, edge), self.date_edge(later, edge))
        return (verdict, None, None, True)

    def explain(self, ctx: Context) -> dict[str, Any]:
        current = ctx.value(self.value)
        described = self.value.describe(ctx.ix, ctx.now)
        ops = list(self.ops) + [(op, age) for op, age in self.dates]
        if self.exists is not None:
            ops.append(("exists", self.exists))
        threshold = describe_ops(ops)
        reason = current.reason if isinstance(current, Missing) else None
        if reason is None and self.truth(current, ctx.now) is None:
            reason = f"{exported(current)!r} cannot be compared with {threshold}"
        return self._node(
            ctx,
            f"{self.value.label()} {threshold}",
            threshold=threshold,
            reason=reason,
            **described,
        )


class Sequence_(Condition):
    """Did A, then B within T (a funnel), or did A, then not B within T (an absence)."""

    __slots__ = ("first", "first_within", "gap", "key", "last_only", "negate", "overlap", "then")

    def __init__(
        self,
        first: Selector,
        then: Selector,
        gap: Span,
        negate: bool,
        first_within: Span | None,
        last_only: bool,
    ) -> None:
        self.first = first
        self.then = then
        self.gap = gap
        self.negate = negate
        self.first_within = first_within
        self.last_only = last_only
        self.key = repr(("seq", first.key, then.key, gap, negate, first_within, last_only))
        # an A record may itself match B's selector (the same event name, other filters): B is then a
        # later record than that A, never the A itself
        self.overlap = first.key != then.key and (
            first.event == then.event or ANY_EVENT in (first.event, then.event)
        )

    def _candidates(self, ix: Index, t: datetime) -> range:
        times = (ix.cache.get(self.first.key) or ix.select(self.first))[1]
        lo = passed(times, t, self.first_within) if self.first_within is not None else 0
        if self.last_only:
            return range(max(lo, len(times) - 1), len(times))
        return range(lo, len(times))

    def _witness(self, ix: Index, t: datetime, candidates: range | None = None) -> int | None:
        """Index of the A event that makes the condition true at ``t``, if any (among ``candidates``,
        by default ``_candidates(ix, t)``)."""
        a_records, a_times = ix.cache.get(self.first.key) or ix.select(self.first)
        b_records, b_times = ix.cache.get(self.then.key) or ix.select(self.then)
        same = self.first.key == self.then.key
        if candidates is None:
            candidates = self._candidates(ix, t)
        for i in reversed(candidates):
            start = a_times[i]
            end = start + self.gap
            if same:
                followed = i + 1 < len(a_times) and a_times[i + 1] < end
            else:
                j = bisect_left(b_times, start)
                if self.overlap:
                    j = _after_record(b_records, b_times, j, a_records[i])
                followed = j < len(b_times) and b_times[j] < end
            if self.negate:
                if t >= end and not followed:
                    return i
            elif followed:
                return i
        return None

    def _edge(self, ix: Index, t: datetime) -> datetime | None:
        a_times = ix.select(self.first)[1]
        found: datetime | None = None
        for i in self._candidates(ix, t):
            if self.negate and a_times[i] + self.gap > t:
                found = earliest(found, a_times[i] + self.gap)
            if self.first_within is not None:
                found = earliest(found, a_times[i] + self.first_within)
        return found

    def quick(self, ix: Index, t: datetime) -> Result:
        """The value at ``t`` and a lower bound of its next change (``evaluate`` when not thorough):
        ``_witness`` and ``_edge`` over the candidates found once."""
        a_times = (ix.cache.get(self.first.key) or ix.select(self.first))[1]
        n = len(a_times)
        within = self.first_within
        lo = passed(a_times, t, within) if within is not None else 0
        if self.last_only and lo < n - 1:
            lo = n - 1
        if lo >= n:
            return (False, None, None, True)
        gap, negate = self.gap, self.negate
        edge: datetime | None = None
        for i in range(lo, n):
            start = a_times[i]
            if negate and start + gap > t and (edge is None or start + gap < edge):
                edge = start + gap
            if within is not None and (edge is None or start + within < edge):
                edge = start + within
        return (self._witness(ix, t, range(lo, n)) is not None, edge, None, edge is None)

    def evaluate(self, ctx: Context) -> Result:
        ix, t = ctx.ix, ctx.now
        if not ctx.thorough:
            return self.quick(ix, t)
        verdict = self._witness(ix, t) is not None
        edge = self._edge(ix, t)
        steps = 0
        while edge is not None:
            after = self._witness(ix, edge) is not None
            if after != verdict:
                return (verdict, edge, after, True)
            steps += 1
            if steps >= WALK_CAP:
                return (verdict, edge, None, False)
            edge = self._edge(ix, edge)
        return (verdict, None, None, True)

    def explain(self, ctx: Context) -> dict[str, Any]:
        ix, t = ctx.ix, ctx.now
        a_records = ix.select(self.first)[0]
        b_records, b_times = ix.select(self.then)
        witness = self._witness(ix, t)
        word = "then no" if self.negate else "then"
        text = f"{self.first.label()}, {word} {self.then.label()} within {format_duration(self.gap)}"
        if self.first_within is not None:
            text += f" (first event within {format_duration(self.first_within)})"
        candidates = self._candidates(ix, t)
        shown = witness if witness is not None else (candidates[-1] if len(candidates) else None)
        events: list[dict[str, str]] = []
        reason = None
        if shown is None:
            reason = f"no {self.first.label()}" + (
                f" within {format_duration(self.first_within)}" if self.first_within else ""
            )
        else:
            start = a_records[shown].occurred_at
            events = event_refs([a_records[shown]])
            j = bisect_left(b_times, start)
            if self.overlap or self.first.key == self.then.key:
                j = _after_record(b_records, b_times, j, a_records[shown])
            follow = [r for r in b_records[j:] if r.occurred_at < start + self.gap]
            events += event_refs(follow[:1])
            if self.negate and t < start + self.gap and not follow:
                reason = f"waiting: the window closes at {iso(start + self.gap)}"
            elif self.negate and follow:
                reason = f"{self.then.event} followed within {format_duration(self.gap)}"
            elif not self.negate and not follow:
                reason = f"no {self.then.label()} within {format_duration(self.gap)} after it"
        return self._node(ctx, text, events=events, reason=reason)


def _after_record(
    records: Sequence[EventRecord], times: Sequence[datetime], j: int, record: EventRecord
) -> int:
    """The first of ``records`` (from ``j``, the first at ``record``'s time) that comes after
    ``record`` in the history's order, when ``record`` is among them; ``j`` when it is not."""
    k = j
    while k < len(times) and times[k] == times[j]:
        if records[k] is record:
            return k + 1
        k += 1
    return j


class InSegment(Condition):
    __slots__ = ("key", "name", "negate")

    def __init__(self, name: str, negate: bool) -> None:
        self.name = name
        self.negate = negate
        self.key = repr(("seg", name, negate))

    def evaluate(self, ctx: Context) -> Result:
        member, nxt, exact = ctx.segment(self.name)
        verdict = member != self.negate
        if nxt is None:
            return (verdict, None, None, True)
        return (verdict, nxt, not verdict, exact)

    def explain(self, ctx: Context) -> dict[str, Any]:
        member = ctx.segment(self.name)[0]
        word = "not in" if self.negate else "in"
        return self._node(ctx, f"{word} segment {self.name}", value=member)


class Unmatched(Condition):
    """True while ``inner`` is not True: an earlier segment of an exclusive group did not match."""

    __slots__ = ("inner", "key", "segment")

    def __init__(self, inner: Condition, segment: str) -> None:
        self.inner = inner
        self.segment = segment
        self.key = repr(("unmatched", inner.key))

    def evaluate(self, ctx: Context) -> Result:
        return unmatched(ctx.result(self.inner))

    def explain(self, ctx: Context) -> dict[str, Any]:
        return self._node(ctx, f"not matched by earlier group segment {self.segment}")


def _combine(kind: str, results: list[Result]) -> Result:
    """all / any of child results, with the next change computed from the children's."""
    values = [r[0] for r in results]
    value = _tri(kind, values)
    decisive = (kind == "all" and value is False) or (kind == "any" and value is True)
    if decisive:
        # it holds until every decisive child has changed at least once
        deciders = [r for r in results if r[0] is (kind == "any")]
        if any(r[1] is None for r in deciders):
            return (value, None, None, True)
        bound = max(r[1] for r in deciders if r[1] is not None)
        if len(deciders) > 1:
            return (value, bound, None, False)
    nexts = [r[1] for r in results if r[1] is not None]
    if not nexts:
        return (value, None, None, True)
    first = min(nexts)
    if decisive and first < bound:
        return (value, bound, None, False)
    later = []
    for r in results:
        if r[1] == first:
            if not r[3]:
                return (value, first, None, False)
            later.append(r[2])
        else:
            later.append(r[0])
    after = _tri(kind, later)
    if after != value:
        return (value, first, after, True)
    return (value, first, None, False)


def _tri(kind: str, values: list[bool | None]) -> bool | None:
    if kind == "all":
        if any(v is False for v in values):
            return False
        return None if any(v is None for v in values) else True
    if any(v is True for v in values):
        return True
    return None if any(v is None for v in values) else False


class Junction(Condition):
    __slots__ = ("items", "key", "kind")

    def __init__(self, kind: str, items: Sequence[Condition]) -> None:
        self.kind = kind
        self.items = tuple(items)
        self.key = repr((kind, [c.key for c in self.items]))

    def children(self) -> Sequence[Condition]:
        return self.items

    def evaluate(self, ctx: Context) -> Result:
        if not ctx.thorough:
            return self._quick(ctx)
        return _combine(self.kind, [ctx.result(item) for item in self.items])

    def _quick(self, ctx: Context) -> Result:
        return _quick(self.kind, map(ctx.result, self.items))

    def explain(self, ctx: Context) -> dict[str, Any]:
        node = self._node(ctx, f"{self.kind} of")
        node["children"] = [ctx.explain(c) for c in self.items]
        return node


def _quick(kind: str, results: Iterable[Result]) -> Result:
    """all / any: the value and a lower bound of the next change only (no exactness bookkeeping)."""
    decisive = kind == "any"  # True decides an any, False decides an all
    undecided: bool | None = not decisive  # the value when nothing decides
    low: datetime | None = None  # earliest change of any child
    hold: datetime | None = None  # latest change among deciding children
    deciders = 0
    for value, nxt, _, _ in results:
        if value is decisive:
            if nxt is None:
                return (value, None, None, True)  # decided for good
            deciders += 1
            if hold is None or nxt > hold:
                hold = nxt
        elif value is None:
            undecided = None
        if nxt is not None and (low is None or nxt < low):
            low = nxt
    if deciders:
        return (decisive, hold, None, False)
    return (undecided, low, None, low is None)


class Always(Condition):
    """Holds for everyone, always: the last segment of an exclusive group ("everyone else")."""

    __slots__ = ("key",)

    def __init__(self) -> None:
        self.key = "always"

    def evaluate(self, ctx: Context) -> Result:
        return (True, None, None, True)

    def explain(self, ctx: Context) -> dict[str, Any]:
        return self._node(ctx, "always")


MAX_LISTED_GROUPS = 20


class ForSome(Condition):
    """True when, for some value of a property among the selected events, ``inner`` holds over the events
    carrying that value. Groups only appear with new events, so the next change is the groups' earliest."""

    __slots__ = ("by", "inner", "key", "sel")

    def __init__(self, sel: Selector, by: str, inner: Condition) -> None:
        self.sel = sel
        self.by = by
        self.inner = inner
        self.key = repr(("for_some", sel.key, by, inner.key))

    def children(self) -> Sequence[Condition]:
        return (self.inner,)

    def _groups(self, ctx: Context) -> list[tuple[Any, Context]]:
        split = ctx.ix.split(self.by)
        records = ctx.ix.select(self.sel)[0]
        values: dict[Any, None] = {}
        for record in records:
            group = record.properties.get(self.by)
            if group in split:
                values[group] = None
        return [(group, ctx.over(split[group])) for group in values]

    def evaluate(self, ctx: Context) -> Result:
        results = [sub.result(self.inner) for _, sub in self._groups(ctx)]
        if not results:
            return (False, None, None, True)
        if not ctx.thorough:
            return _quick("any", results)
        return _combine("any", results)

    def explain(self, ctx: Context) -> dict[str, Any]:
        groups = self._groups(ctx)
        holding = [g for g, sub in groups if sub.result(self.inner)[0] is True]
        text = f"for some {self.by} of {self.sel.label()}"
        node = self._node(ctx, text, value=[exported(g) for g in holding[:MAX_LISTED_GROUPS]] or None)
        if not groups:
            node["reason"] = f"no {self.sel.label()} with a {self.by}"
            return node
        shown = next((sub for g, sub in groups if g in holding), groups[-1][1])
        shown_group = next(g for g, sub in groups if sub is shown)
        child = shown.explain(self.inner)
        child["condition"] = f"{self.by} = {exported(shown_group)!r}: {child['condition']}"
        node["children"] = [child]
        return node


class Not(Condition):
    __slots__ = ("inner", "key")

    def __init__(self, inner: Condition) -> None:
        self.inner = inner
        self.key = repr(("not", inner.key))

    def children(self) -> Sequence[Condition]:
        return (self.inner,)

    def evaluate(self, ctx: Context) -> Result:
        value, nxt, after, exact = ctx.result(self.inner)
        return (_negate(value), nxt, _negate(after), exact)

    def explain(self, ctx: Context) -> dict[str, Any]:
        node = self._node(ctx, "not")
        node["children"] = [ctx.explain(self.inner)]
        return node


def unmatched(inner: Result) -> Result:
    """True while ``inner`` is not True (:class:`Unmatched`), with its next change."""
    value, nxt, after, exact = inner
    verdict = value is not True
    if nxt is None:
        return (verdict, None, None, True)
    if exact and (after is not True) != verdict:
        return (verdict, nxt, not verdict, True)
    return (verdict, nxt, None, False)


def membership(result: Result) -> SegmentResult:
    """A segment's membership from its condition's result: a member while True; its next change is
    exact when nothing changes or the result says the change flips it, else a lower bound."""
    value, nxt, after, exact = result
    member = value is True
    if nxt is None:
        return (member, None, True)
    return (member, nxt, exact and (after is True) != member)


def _negate(value: bool | None) -> bool | None:
    return None if value is None else not value
