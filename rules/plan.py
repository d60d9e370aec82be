"""The worker's evaluation (``explain=False``) of a rule set, prepared once per rule set.

:class:`~rules.evaluate.Context` walks condition trees generically: every condition result and value
goes through a memo keyed by the object, every node dispatches on its class. Here each condition is
turned once into a Python closure that calls its children's closures directly, values and shared
conditions are memoized in lists by position, and segments are addressed by position. It computes
exactly what ``Context`` computes with ``thorough=False`` (the same results, the same lower bounds of
next changes), so :func:`rules.evaluate._next_due`'s search and its answer are the same.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from datetime import datetime
from typing import Any

from .conditions import (
    Always,
    Compare,
    Condition,
    ForSome,
    InSegment,
    Junction,
    Not,
    Result,
    SegmentResult,
    Sequence_,
    Unmatched,
    _negate,
    _quick,
    membership,
    unmatched,
)
from .dependencies import dependencies, reads, traits_read
from .durations import shifted
from .model import Profile
from .ruleset import RuleSet
from .values import ANY_EVENT, Composite, Computed, Index, Points, Ratio, Value, earliest, exported

NEXT_DUE_CAP = 256
# sets of present event names and traits whose known results a plan keeps (each a few hundred bytes;
# a rule set reading many event names could otherwise see very many combinations)
CONSTANTS_CAP = 4096

Fn = Callable[["Quick"], Result]

_NEVER: Result = (True, None, None, True)

TRAIT = "\0trait "  # a profile trait among the names a result reads (no event is named so)

VFn = Callable[["Quick"], tuple[Any, datetime | None]]


class Group:
    """An exclusive group: its members' positions among the segments and their own conditions."""

    __slots__ = ("matched", "members", "names")

    def __init__(self, names: tuple[str, ...], members: tuple[int, ...], matched: tuple[Fn, ...]) -> None:
        self.names = names
        self.members = members
        self.matched = matched


class Plan:
    """A rule set's segments, traits and groups as closures over positions (built by :func:`plan_of`)."""

    def __init__(self, rules: RuleSet) -> None:
        self.rules = rules
        self.values: list[Value] = []
        # per value slot: value_edge(ix, t) itself, or a function of the evaluation reading the memo
        self.value_edges: list[Callable[[Index, datetime], tuple[Any, datetime | None]] | None] = []
        self.value_fns: list[VFn | None] = []
        self._value_slots: dict[str, int] = {}
        self._refs: dict[int, int] = {}
        self._fns: dict[int, Fn] = {}
        self.shared = 0  # memo slots for conditions read from more than one place
        self.position = {s.name: i for i, s in enumerate(rules.segments)}
        self.names = tuple(s.name for s in rules.segments)
        for segment in rules.segments:
            self._count(segment.matched if segment.group is not None else segment.condition)
            for variant in segment.variants:
                self._count(variant)
        self.groups: list[Group] = []
        group_slots: dict[str, int] = {}
        for name, members in rules.groups.items():
            group_slots[name] = len(self.groups)
            self.groups.append(
                Group(
                    tuple(members),
                    tuple(self.position[m] for m in members),
                    tuple(self.fn(rules.by_name[m].matched) for m in members),
                )
            )
        # per segment: its group's slot for a group member, else its condition(s)
        self.grouped: list[int | None] = []
        self.plain: list[Fn | None] = []
        self.variants: list[tuple[Fn, ...]] = []
        for segment in rules.segments:
            if segment.group is not None:
                self.grouped.append(group_slots[segment.group])
            else:
                self.grouped.append(None)
            self.plain.append(None if segment.variants else self.fn(segment.condition))
            self.variants.append(tuple(self.fn(v) for v in segment.variants))
        self.traits = [(name, self.value_slot(expr), expr) for name, expr in rules.traits]
        self._reads(rules)
        self._constants: dict[tuple[frozenset[str], bool, tuple[str, ...]], Constants] = {}

    def _reads(self, rules: RuleSet) -> None:
        """What each value, plain segment and group member's own condition reads: event names
        (``*``: any) and profile traits (``TRAIT`` + name); None for those that read another segment
        or have variants."""
        deps = dependencies(rules)
        read = set(deps.read)
        traits: set[str] = set()
        self.value_reads: list[frozenset[str] | None] = []
        for value in self.values:
            found = reads(value)
            read.update(found.events)
            names = traits_read(value)
            traits |= names
            self.value_reads.append(found.events | {TRAIT + name for name in names})
        read.discard(ANY_EVENT)
        self.read = frozenset(read)  # every event name segments or computed traits read
        self.segment_reads: list[frozenset[str] | None] = []
        for segment in rules.segments:
            found = deps.by_segment[segment.name]
            names = traits_read(segment.condition)
            traits |= names
            plain = segment.group is None and not segment.variants and not found.segments
            self.segment_reads.append(found.events | {TRAIT + n for n in names} if plain else None)
        self.own_reads: list[tuple[frozenset[str] | None, ...]] = []
        for group in self.groups:
            owns: list[frozenset[str] | None] = []
            for name in group.names:
                found = deps.by_segment[name]
                names = traits_read(rules.by_name[name].matched)
                traits |= names
                owns.append(None if found.segments else found.events | {TRAIT + n for n in names})
            self.own_reads.append(tuple(owns))
        self.traits_read = tuple(sorted(traits))  # every profile trait rules read
        self.no_owns: tuple[tuple[Result | None, ...], ...] = tuple(
            (None,) * len(group.names) for group in self.groups
        )
        self.blank = Constants([None] * len(self.values), [None] * len(self.names), self.no_owns)

    def constants(self, ix: Index, now: datetime) -> Constants:
        """The results that the profile's events and traits cannot change: those of the values,
        segments and group members' own conditions that read none of the event names it has and
        none of the profile traits it has (memoized per set of the names rules read that it has)."""
        names = ix.names()
        traits = ix.profile.traits
        key = (
            frozenset(names.keys() & self.read),
            bool(names),
            tuple(name for name in self.traits_read if traits.get(name) is not None),
        )
        found = self._constants.get(key)
        if found is None:
            if len(self._constants) >= CONSTANTS_CAP:
                return self.blank  # nothing known beforehand: everything is evaluated
            present = key[0] | {TRAIT + name for name in key[2]}
            found = self._constants[key] = self._absent(present | {ANY_EVENT} if key[1] else present, now)
        return found

    def _absent(self, present: frozenset[str], now: datetime) -> Constants:
        """Results over events none of which is present: those of an empty history, which never
        change (kept only when they say so: no next change)."""
        empty = Quick(self, Index(Profile("", "")), now)
        vals: list[tuple[Any, datetime | None] | None] = [None] * len(self.values)
        for slot, read in enumerate(self.value_reads):
            if read is not None and read.isdisjoint(present):
                found = empty.ix_value(slot)
                if found[1] is None:
                    vals[slot] = found
        segs: list[SegmentResult | None] = [None] * len(self.names)
        for i, read in enumerate(self.segment_reads):
            if read is not None and read.isdisjoint(present):
                out = empty.segment(i)
                if out[1] is None:
                    segs[i] = out
        owns = []
        for group, own_reads in zip(self.groups, self.own_reads, strict=True):
            row: list[Result | None] = []
            for fn, read in zip(group.matched, own_reads, strict=True):
                result = fn(empty) if read is not None and read.isdisjoint(present) else None
                row.append(result if result is not None and result[1] is None else None)
            owns.append(tuple(row))
        return Constants(vals, segs, tuple(owns))

    def _count(self, condition: Condition) -> None:
        """How many places read each condition (those read more than once get a memo slot)."""
        key = id(condition)
        self._refs[key] = self._refs.get(key, 0) + 1
        if self._refs[key] > 1:
            return
        for child in _inner(condition):
            self._count(child)

    def value_slot(self, value: Value) -> int:
        """The value's memo slot (a computed trait shares its definition's)."""
        slot = self._value_slots.get(value.key)
        if slot is None:
            if isinstance(value, Computed) and value.expr is not None:
                slot = self._value_slots[value.key] = self.value_slot(value.expr)
                return slot
            slot = self._value_slots[value.key] = len(self.values)
            self.values.append(value)
            self.value_fns.append(None)
            self.value_edges.append(None)
            if isinstance(value, Points | Composite | Ratio):
                self.value_fns[slot] = self._combined(value)
            else:
                self.value_edges[slot] = value.value_edge
        return slot

    def _combined(self, value: Points | Composite | Ratio) -> VFn:
        """``value_edge`` at the evaluation's instant from its inputs' in the memo (a computed trait
        used by another is computed once)."""
        slots = tuple(self.value_slot(v) for v in value.inputs())
        combine = value.combine

        def combined(q: Quick) -> tuple[Any, datetime | None]:
            vals = q.vals
            return combine([vals[s] or q.ix_value(s) for s in slots])

        return combined

    def fn(self, condition: Condition) -> Fn:
        """The condition's closure (one per condition; memoized per evaluation when read twice)."""
        key = id(condition)
        found = self._fns.get(key)
        if found is None:
            found = self._build(condition)
            if self._refs.get(key, 0) > 1:
                found = self._memo(found)
            self._fns[key] = found
        return found

    def _memo(self, inner: Fn) -> Fn:
        slot = self.shared
        self.shared += 1

        def memo(q: Quick) -> Result:
            hit = q.conds[slot]
            if hit is None:
                hit = q.conds[slot] = inner(q)
            return hit

        return memo

    def _build(self, c: Condition) -> Fn:
        if isinstance(c, Compare):
            return _compare(c, self.value_slot(c.value))
        if isinstance(c, Junction):
            return _junction(c.kind, tuple(self.fn(item) for item in c.items))
        if isinstance(c, Not):
            return _not(self.fn(c.inner))
        if isinstance(c, Unmatched):
            return _unmatched(self.fn(c.inner))
        if isinstance(c, InSegment):
            return _in_segment(self.position[c.name], c.negate)
        if isinstance(c, Sequence_):
            quick = c.quick
            return lambda q: quick(q.ix, q.now)
        if isinstance(c, Always):
            return lambda q: _NEVER
        if isinstance(c, ForSome):
            return _for_some(c, self.fn(c.inner))
        raise TypeError(f"no plan for {type(c).__name__}")


def _inner(c: Condition) -> tuple[Condition, ...]:
    if isinstance(c, Junction):
        return c.items
    if isinstance(c, Not | Unmatched | ForSome):
        return (c.inner,)
    return ()


def _compare(c: Compare, slot: int) -> Fn:
    """A comparison: the value's memo slot, then the checks (one plain numeric check inlined)."""
    numeric = c.numeric
    truth = c.truth
    dated = c.date_edge if c.dates else None
    if numeric is not None and len(numeric) == 1 and dated is None:
        check, arg = numeric[0]

        def one(q: Quick) -> Result:
            found = q.vals[slot]
            if found is None:
                found = q.ix_value(slot)
            current, edge = found
            if type(current) in (int, float) and current == current:
                return (check(current, arg), edge, None, edge is None)
            return (truth(current, q.now), edge, None, edge is None)

        return one

    if c.dates and not c.ops and c.exists is not False:
        return _dated(c, slot)

    def general(q: Quick) -> Result:
        found = q.vals[slot]
        if found is None:
            found = q.ix_value(slot)
        current, edge = found
        t = q.now
        verdict: bool | None
        if numeric is not None and type(current) in (int, float) and current == current:
            verdict = True
            for check, arg in numeric:
                if not check(current, arg):
                    verdict = False
                    break
        else:
            verdict = truth(current, t)
        if dated is not None:
            edge = earliest(edge, dated(current, t))
        return (verdict, edge, None, edge is None)

    return general


def _dated(c: Compare, slot: int) -> Fn:
    """An instant old enough and/or recent enough (``older_than``, ``within``), the rest general."""
    truth = c.truth
    dated = c.date_edge
    spans = tuple((op == "older_than", age) for op, age in c.dates)

    def instant(q: Quick) -> Result:
        found = q.vals[slot]
        if found is None:
            found = q.ix_value(slot)
        current, edge = found
        t = q.now
        if type(current) is datetime and current.tzinfo is not None:
            verdict = True
            for older, age in spans:
                at = shifted(current, age)
                if (at is not None and t >= at) != older:
                    verdict = False
                if at is not None and at > t and (edge is None or at < edge):
                    edge = at
            return (verdict, edge, None, edge is None)
        edge = earliest(edge, dated(current, t))
        return (truth(current, t), edge, None, edge is None)

    return instant


def _junction(kind: str, items: tuple[Fn, ...]) -> Fn:
    if len(items) == 2:
        first, second = items
        return lambda q: _quick(kind, (first(q), second(q)))
    return lambda q: _quick(kind, [item(q) for item in items])


def _not(inner: Fn) -> Fn:
    def negated(q: Quick) -> Result:
        value, nxt, after, exact = inner(q)
        return (_negate(value), nxt, _negate(after), exact)

    return negated


def _unmatched(inner: Fn) -> Fn:
    def not_matched(q: Quick) -> Result:
        return unmatched(inner(q))

    return not_matched


def _in_segment(position: int, negate: bool) -> Fn:
    def in_segment(q: Quick) -> Result:
        member, nxt, exact = q.segment(position)
        verdict = member != negate
        if nxt is None:
            return (verdict, None, None, True)
        return (verdict, nxt, not verdict, exact)

    return in_segment


def _for_some(c: ForSome, inner: Fn) -> Fn:
    sel, by = c.sel, c.by

    def for_some(q: Quick) -> Result:
        split = q.ix.split(by)
        values: dict[Any, None] = {}
        for record in q.ix.select(sel)[0]:
            group = record.properties.get(by)
            if group in split:
                values[group] = None
        if not values:
            return (False, None, None, True)
        return _quick("any", [inner(Quick(q.plan, split[group], q.now)) for group in values])

    return for_some


class Constants:
    """Results known before evaluating a profile (per value slot, segment, group member; None: not
    known), the starting point of its memo lists."""

    __slots__ = ("owns", "segs", "vals")

    def __init__(
        self,
        vals: list[tuple[Any, datetime | None] | None],
        segs: list[SegmentResult | None],
        owns: tuple[tuple[Result | None, ...], ...],
    ) -> None:
        self.vals = vals
        self.segs = segs
        self.owns = owns


class Quick:
    """One profile at one instant, on a :class:`Plan`: memo lists for values, shared conditions,
    segments and groups, starting from ``constants`` (by default nothing known).
    ``prior``: as for :class:`rules.evaluate.Context`."""

    __slots__ = ("conds", "constants", "ix", "now", "owns", "plan", "prior", "segs", "vals")

    def __init__(
        self, plan: Plan, ix: Index, now: datetime, prior: Any = None, constants: Constants | None = None
    ) -> None:
        self.plan = plan
        self.ix = ix
        self.now = now
        if constants is None:
            self.vals: list[tuple[Any, datetime | None] | None] = [None] * len(plan.values)
            self.segs: list[SegmentResult | None] = [None] * len(plan.names)
            self.owns = plan.no_owns
        else:
            self.vals = constants.vals.copy()
            self.segs = constants.segs.copy()
            self.owns = constants.owns
        self.constants = constants
        self.conds: list[Result | None] = [None] * plan.shared
        self.prior = prior

    def ix_value(self, slot: int) -> tuple[Any, datetime | None]:
        plan = self.plan
        direct = plan.value_edges[slot]
        if direct is not None:
            found = direct(self.ix, self.now)
        else:
            combined = plan.value_fns[slot]
            assert combined is not None
            found = combined(self)
        self.vals[slot] = found
        return found

    def value(self, slot: int) -> Any:
        found = self.vals[slot]
        if found is None:
            found = self.ix_value(slot)
        return found[0]

    def segment(self, i: int) -> SegmentResult:
        hit = self.segs[i]
        if hit is not None:
            return hit
        plan = self.plan
        grouped = plan.grouped[i]
        if grouped is not None:
            self._group(grouped)
            found = self.segs[i]
            assert found is not None
            return found
        fn = plan.plain[i]
        if fn is None:
            profile = self.ix.profile
            segment = plan.rules.segments[i]
            fn = plan.variants[i][segment.variant_of(profile.account, profile.profile_id)]
        out = self.segs[i] = membership(fn(self))
        return out

    def _group(self, g: int) -> None:
        """An exclusive group's members' memberships, all at once: the winner is the first member
        whose own condition is True; each member's own result and the running minimum of their next
        changes give the bounds (members already known keep theirs)."""
        group = self.plan.groups[g]
        results: list[Result] = []
        prefix: list[datetime | None] = []
        winner: int | None = None
        low: datetime | None = None
        prior = self.prior
        held = prior.winner(group.names) if prior is not None else None
        owns = self.owns[g]
        for i, fn in enumerate(group.matched):
            r = None
            if prior is not None and group.names[i] not in prior.own:
                r = prior.own_result(i, winner, held)
            r = r or owns[i] or fn(self)
            results.append(r)
            nxt = r[1]
            if nxt is not None and (low is None or nxt < low):
                low = nxt
            prefix.append(low)
            if winner is None and r[0] is True:
                winner = i
        _settle(self.segs, group.members, winner, results, prefix)


def _settle(
    segs: list[SegmentResult | None],
    members: tuple[int, ...],
    winner: int | None,
    results: list[Result],
    prefix: list[datetime | None],
) -> None:
    """Each group member's membership and a lower bound of its next change (those already known
    keep theirs)."""
    for position, i in enumerate(members):
        if segs[i] is not None:
            continue
        own, nxt = results[position][0], results[position][1]
        if winner is not None and winner < position:
            # out while the winner stays in; and, when its own condition is not true, until that changes too
            held = results[winner][1]
            if own is True or held is None:
                segs[i] = (False, held, False)
            elif nxt is None:
                segs[i] = (False, None, True)
            else:
                segs[i] = (False, max(held, nxt), False)
        elif own is True:
            segs[i] = (True, prefix[position], False)
        else:
            segs[i] = (False, nxt, nxt is None)


def plan_of(rules: RuleSet) -> Plan:
    """The rule set's plan (built once per rule set)."""
    cached: Plan | None = rules.__dict__.get("_plan")
    if cached is None:
        cached = Plan(rules)
        object.__setattr__(rules, "_plan", cached)
    return cached


def evaluate(
    plan: Plan, profile: Profile, now: datetime, known: dict[str, SegmentResult] | None, prior: Any
) -> tuple[list[str], dict[str, Any], datetime | None]:
    """A profile's memberships, computed traits and next_due at ``now`` (``known``: segments whose
    result is given; ``prior``: the previous result, as for :class:`rules.evaluate.Context`)."""
    ix = Index(profile)
    q = Quick(plan, ix, now, prior, plan.constants(ix, now))
    segs = q.segs
    if known:
        position = plan.position
        for name, result in known.items():
            segs[position[name]] = result
    # every result's lower bound of its next change: (bound, 0, trait) and (bound, 1, segment)
    heap: list[tuple[datetime, int, int]] = []
    traits: dict[str, Any] = {}
    current: list[Any] = []
    vals = q.vals
    for k, (name, slot, _) in enumerate(plan.traits):
        value, edge = vals[slot] or q.ix_value(slot)
        traits[name] = value if type(value) is int else exported(value)
        current.append(value)
        if edge is not None:
            heap.append((edge, 0, k))
    members = []
    segment = q.segment
    for i, name in enumerate(plan.names):
        member, nxt, _ = segs[i] or segment(i)
        if member:
            members.append(name)
        if nxt is not None:
            heap.append((nxt, 1, i))
    return members, traits, next_due(q, heap, current) if heap else None


def next_due(q: Quick, heap: list[tuple[datetime, int, int]], current: list[Any]) -> datetime | None:
    """:func:`rules.evaluate._next_due` on a plan: the earliest instant after now at which a computed
    trait's value (``current``, by trait) or a membership (``q``'s) changes, from ``heap``, each
    result's lower bound of its next change."""
    heapq.heapify(heap)
    plan, ix, segs = q.plan, q.ix, q.segs
    traits, values = plan.traits, plan.values
    for _ in range(NEXT_DUE_CAP):
        if not heap:
            return None
        instant = heap[0][0]
        later = Quick(plan, ix, instant, None, q.constants)
        while heap and heap[0][0] == instant:
            _, kind, i = heapq.heappop(heap)
            bound: datetime | None
            if kind == 0:
                slot = traits[i][1]
                if later.value(slot) != current[i]:
                    return instant
                bound = values[slot].edges_after(ix, instant)
            else:
                member_then, bound, _ = later.segment(i)
                if member_then != segs[i][0]:  # type: ignore[index]
                    return instant
            if bound is not None:
                heapq.heappush(heap, (bound, kind, i))
    return heap[0][0] if heap else None


__all__ = ["Plan", "Quick", "evaluate", "next_due", "plan_of"]
