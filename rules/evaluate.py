"""Evaluation: a pure function of (profile, rule set, now) → :class:`~rules.model.Evaluation`."""

from __future__ import annotations

import heapq
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .conditions import Condition, Result, SegmentResult, membership, show
from .dependencies import dependencies
from .explain import reasons
from .model import Evaluation, Explanation, Profile
from .plan import evaluate as plan_evaluate
from .plan import plan_of
from .ruleset import RuleSet
from .values import Index, Value, earliest, exported, iso, next_value_change
from .variants import NAMES

REFINE_CAP = 32
NEXT_DUE_CAP = 256


class Prior:
    """A profile's previous result, for incremental evaluation: ``members`` (its segments) held
    until ``due`` at least; ``own``, the segments whose own condition may have changed since."""

    __slots__ = ("due", "members", "own")

    def __init__(self, members: frozenset[str], due: datetime | None, own: frozenset[str]) -> None:
        self.members = members
        self.due = due
        self.own = own

    def winner(self, group: tuple[str, ...]) -> int | None:
        """The position of the group's previous winner (None: nobody was in the group)."""
        for i, name in enumerate(group):
            if name in self.members:
                return i
        return None

    def own_result(self, i: int, winner: int | None, held: int | None) -> Result | None:
        """The own condition of the group's member at ``i``, unchanged since the previous result, as far
        as the group needs it: true for the previous winner, not true before it; after this group's
        winner only a bound matters (true gives the right one); None when it must be evaluated."""
        if winner is not None or i == held:
            return (True, self.due, None, False)
        if held is None or i < held:
            return (False, self.due, None, False)
        return None


class Context:
    """One profile at one instant: memoizes values, condition results and segment memberships.

    ``thorough``: conditions walk their window edges and segments are refined until each result's next
    change is exact (what explanations show). Otherwise results carry only a lower bound of their next
    change, and :func:`_next_due` finds the exact earliest change of all results together — much less work.
    """

    __slots__ = (
        "_by_name",
        "_groups",
        "_prior",
        "_results",
        "_segments",
        "_values",
        "ix",
        "now",
        "rules",
        "thorough",
    )

    def __init__(
        self,
        ix: Index,
        now: datetime,
        rules: RuleSet,
        *,
        thorough: bool,
        known: dict[str, SegmentResult] | None = None,
        prior: Prior | None = None,
    ) -> None:
        self.ix = ix
        self.now = now
        self.rules = rules
        self.thorough = thorough
        self._values: dict[str, tuple[Any, datetime | None]] = {}
        self._results: dict[int, Result] = {}
        # segments whose result is known without evaluating them (incremental evaluation)
        self._segments: dict[str, SegmentResult] = known if known is not None else {}
        self._prior = prior
        self._by_name = rules.by_name
        self._groups: dict[str, tuple[int | None, list[Result], list[datetime | None]]] = {}

    @property
    def explaining(self) -> bool:
        return self.thorough

    def value(self, value: Value) -> Any:
        return self.value_edge(value)[0]

    def value_edge(self, value: Value) -> tuple[Any, datetime | None]:
        """The value at now and the next instant its inputs change (memoized: values are shared)."""
        key = value.key
        found = self._values.get(key)
        if found is None:  # a miss is common (each value is computed once): no exception for it
            found = self._values[key] = value.value_edge(self.ix, self.now)
        return found

    def result(self, condition: Condition) -> Result:
        key = id(condition)
        hit = self._results.get(key)
        if hit is None:
            hit = self._results[key] = condition.evaluate(self)
        return hit

    def explain(self, condition: Condition) -> dict[str, Any]:
        return condition.explain(self)

    def over(self, ix: Index) -> Context:
        return Context(ix, self.now, self.rules, thorough=self.thorough)

    def at(self, instant: datetime) -> Context:
        return Context(self.ix, instant, self.rules, thorough=False)

    def segment(self, name: str) -> SegmentResult:
        hit = self._segments.get(name)
        if hit is not None:
            return hit
        segment = self._by_name[name]
        if segment.group is not None and not self.thorough:
            grouped = self._segments[name] = self._group_member(segment.group, segment.position)
            return grouped
        if segment.variants:
            profile = self.ix.profile
            condition = segment.condition_for(profile.account, profile.profile_id)
        else:
            condition = segment.condition
        out = membership(self.result(condition))
        if self.thorough and not out[2]:
            assert out[1] is not None  # an inexact change is a bound
            out = self._refine(condition, out[0], out[1])
        self._segments[name] = out
        return out

    def _group(self, group: str) -> tuple[int | None, list[Result], list[datetime | None]]:
        """The winner of an exclusive group (first member whose condition is True), each member's own
        result, and the running minimum of their next changes."""
        hit = self._groups.get(group)
        if hit is None:
            results = []
            prefix: list[datetime | None] = []
            winner: int | None = None
            low: datetime | None = None
            names = self.rules.groups[group]
            prior = self._prior
            held = prior.winner(names) if prior is not None else None
            for i, member in enumerate(names):
                r = None
                if prior is not None and member not in prior.own:
                    r = prior.own_result(i, winner, held)
                if r is None:
                    r = self.result(self._by_name[member].matched)
                results.append(r)
                if r[1] is not None and (low is None or r[1] < low):
                    low = r[1]
                prefix.append(low)
                if winner is None and r[0] is True:
                    winner = i
            hit = self._groups[group] = (winner, results, prefix)
        return hit

    def _group_member(self, group: str, position: int) -> SegmentResult:
        """Membership of the group's member at ``position`` and a lower bound of its next change."""
        winner, results, prefix = self._group(group)
        own = results[position]
        if winner is not None and winner < position:
            # out while the winner stays in; and, when its own condition is not true, until that changes too
            held = results[winner][1]
            if own[0] is True or held is None:
                return (False, held, False)
            if own[1] is None:
                return (False, None, True)
            return (False, max(held, own[1]), False)
        if own[0] is True:
            return (True, prefix[position], False)
        return (False, own[1], own[1] is None)

    def _refine(self, condition: Condition, member: bool, start: datetime) -> SegmentResult:
        instant = start
        for _ in range(REFINE_CAP):
            value, nxt, after, exact = self.at(instant).result(condition)
            if (value is True) != member:
                return (member, instant, True)
            if nxt is None:
                return (member, None, True)
            if exact and (after is True) != member:
                return (member, nxt, True)
            instant = nxt
        return (member, instant, False)


def _next_due(
    ctx: Context,
    traits: list[tuple[str, Value, Any, datetime | None]],
    segments: list[tuple[str, bool, datetime | None]],
) -> datetime | None:
    """The earliest instant after now at which any trait value or membership changes.

    Every result carries a lower bound of its next change. Take the earliest bound, look at the results
    bounded there at that instant: if one changed, that is the answer (nothing changed before it); if not,
    their new bounds go back in the queue.
    """
    heap: list[tuple[datetime, int, int]] = []
    for i, trait in enumerate(traits):
        if trait[3] is not None:
            heap.append((trait[3], 0, i))
    for i, seg in enumerate(segments):
        if seg[2] is not None:
            heap.append((seg[2], 1, i))
    heapq.heapify(heap)
    ix = ctx.ix
    for _ in range(NEXT_DUE_CAP):
        if not heap:
            return None
        instant = heap[0][0]
        later = ctx.at(instant)
        while heap and heap[0][0] == instant:
            _, kind, i = heapq.heappop(heap)
            bound: datetime | None
            if kind == 0:
                _, expr, current, _ = traits[i]
                if later.value(expr) != current:
                    return instant
                bound = expr.edges_after(ix, instant)
            else:
                name, member, _ = segments[i]
                member_then, bound, _ = later.segment(name)
                if member_then != member:
                    return instant
            if bound is not None:
                heapq.heappush(heap, (bound, kind, i))
    return heap[0][0] if heap else None


def variant_name(index: int) -> str:
    return NAMES[index]


def evaluate_changed(
    profile: Profile,
    rules: RuleSet,
    now: datetime,
    *,
    members: frozenset[str],
    due: datetime | None,
    names: Iterable[str],
) -> Evaluation:
    """:func:`evaluate` (``explain=False``) of a profile whose events changed only by new events
    of ``names``, given its previous result: ``members``, its segments when evaluated earlier with
    the same rules, and ``due``, that evaluation's ``next_due`` (nothing changes before it; None:
    nothing changes with time), later than ``now``. Only the segments those events can affect are
    evaluated (:mod:`rules.dependencies`); the others keep their membership, with ``due`` as the
    lower bound of their next change, which :func:`_next_due` checks like any other: the result
    equals :func:`evaluate`'s.

    The caller guarantees the preconditions: no event removed, no profile trait changed, the same
    rules, ``now < due``."""
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    known, prior = changed_inputs(rules, members, due, names)
    return _evaluate(profile, rules, now, known, prior)


def changed_inputs(
    rules: RuleSet, members: frozenset[str], due: datetime | None, names: Iterable[str]
) -> tuple[dict[str, SegmentResult], Prior]:
    """What :func:`evaluate_changed` starts from: the segments new events of ``names`` cannot change,
    with their previous membership held until ``due``, and the previous result."""
    affected = dependencies(rules).affected(rules, names)
    known: dict[str, SegmentResult] = {name: (name in members, due, False) for name in affected.unchanged}
    return known, Prior(members, due, affected.own)


def evaluate(profile: Profile, rules: RuleSet, now: datetime, *, explain: bool = True) -> Evaluation:
    """Memberships, computed traits, next_due and (when ``explain``) an explanation per segment.

    Deterministic: depends only on the profile's events and traits, the rules and ``now`` — not on the order
    in which events arrived. Missing values and divisions by zero make a condition unknown (not a member).
    ``explain=False`` (the worker's path) gives the same segments, traits and next_due, faster.
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    if not explain:
        return _evaluate(profile, rules, now, None)
    ctx = Context(Index(profile), now, rules, thorough=True)
    traits: dict[str, Any] = {}
    trait_state: list[tuple[str, Value, Any, datetime | None]] = []
    for name, expr in rules.traits:
        current = ctx.value(expr)
        traits[name] = exported(current)
        change = next_value_change(expr, ctx.ix, now, current)
        trait_state.append((name, expr, current, change))
    members = []
    results: dict[str, SegmentResult] = {}
    for segment in rules.segments:
        result = results[segment.name] = ctx.segment(segment.name)
        if result[0]:
            members.append(segment.name)
    explanations: dict[str, Explanation] = {}
    next_due: datetime | None = None
    for _, _, _, change in trait_state:
        next_due = earliest(next_due, change)
    for segment in rules.segments:
        member, nxt, exact = results[segment.name]
        next_due = earliest(next_due, nxt)
        tree = ctx.explain(segment.condition_for(profile.account, profile.profile_id))
        detail: dict[str, Any] = {"condition": tree, "next_change_exact": exact}
        if segment.variants:
            detail["variant"] = variant_name(segment.variant_of(profile.account, profile.profile_id))
        if segment.group:
            detail["group"] = segment.group
        if segment.description:
            detail["description"] = segment.description
        explanations[segment.name] = Explanation(
            segment=segment.name,
            member=member,
            reasons=tuple(reasons(tree)),
            next_change=nxt,
            detail=detail,
        )
    return Evaluation(
        segments=frozenset(members), traits=traits, next_due=next_due, explanations=explanations
    )


def _evaluate(
    profile: Profile,
    rules: RuleSet,
    now: datetime,
    known: dict[str, SegmentResult] | None,
    prior: Prior | None = None,
) -> Evaluation:
    """The worker's path: memberships, computed traits and the exact next_due, no explanations.

    Computes what a :class:`Context` with ``thorough=False`` computes, on the rule set's prepared
    :class:`~rules.plan.Plan`."""
    members, traits, next_due = plan_evaluate(plan_of(rules), profile, now, known, prior)
    return Evaluation(segments=frozenset(members), traits=traits, next_due=next_due, explanations={})


def walk_evaluate(
    profile: Profile,
    rules: RuleSet,
    now: datetime,
    known: dict[str, SegmentResult] | None = None,
    prior: Prior | None = None,
) -> Evaluation:
    """:func:`_evaluate` by the generic walk of the condition trees (a :class:`Context` with
    ``thorough=False``): the definition the prepared plan is checked against."""
    ctx = Context(Index(profile), now, rules, thorough=False, known=known, prior=prior)
    traits: dict[str, Any] = {}
    trait_state: list[tuple[str, Value, Any, datetime | None]] = []
    for name, expr in rules.traits:
        current, edge = ctx.value_edge(expr)
        traits[name] = exported(current)
        trait_state.append((name, expr, current, edge))
    seg_state = []
    members = []
    for segment in rules.segments:
        member, nxt, _ = ctx.segment(segment.name)
        seg_state.append((segment.name, member, nxt))
        if member:
            members.append(segment.name)
    next_due = _next_due(ctx, trait_state, seg_state)
    return Evaluation(segments=frozenset(members), traits=traits, next_due=next_due, explanations={})


@dataclass(frozen=True)
class EvaluationDiff:
    """What changed between two evaluations of one profile."""

    entered: frozenset[str] = frozenset()
    exited: frozenset[str] = frozenset()
    changed_traits: dict[str, tuple[Any, Any]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.entered or self.exited or self.changed_traits)


def diff(before: Evaluation | None, after: Evaluation) -> EvaluationDiff:
    """Segments entered and exited, and traits whose value changed (old, new); ``before`` None: all new."""
    old_segments = before.segments if before is not None else frozenset()
    old_traits = before.traits if before is not None else {}
    changed = {
        name: (old_traits.get(name), value)
        for name, value in after.traits.items()
        if name not in old_traits or old_traits[name] != value
    }
    for name in old_traits:
        if name not in after.traits:
            changed[name] = (old_traits[name], None)
    return EvaluationDiff(
        entered=frozenset(after.segments - old_segments),
        exited=frozenset(old_segments - after.segments),
        changed_traits=changed,
    )


__all__ = ["Context", "EvaluationDiff", "diff", "evaluate", "evaluate_changed", "iso", "show"]
