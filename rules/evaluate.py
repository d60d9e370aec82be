"""Evaluation: a pure function of (profile, rule set, now) → :class:`~rules.model.Evaluation`."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .conditions import Condition, Result, show
from .explain import reasons
from .model import Evaluation, Explanation, Profile
from .values import Index, Value, earliest, exported, iso, next_value_change

if TYPE_CHECKING:
    from .compile import RuleSet

REFINE_CAP = 32
SegmentResult = tuple[bool, datetime | None, bool]


class Context:
    """One profile at one instant: memoizes values, condition results and segment memberships."""

    __slots__ = ("_results", "_segments", "_values", "best", "explaining", "ix", "now", "refine", "rules")

    def __init__(self, ix: Index, now: datetime, rules: RuleSet, *, refine: bool, explaining: bool) -> None:
        self.ix = ix
        self.now = now
        self.rules = rules
        self.refine = refine
        self.explaining = explaining
        self.best: datetime | None = None
        self._values: dict[str, Any] = {}
        self._results: dict[int, Result] = {}
        self._segments: dict[str, SegmentResult] = {}

    def value(self, value: Value) -> Any:
        key = value.key
        try:
            return self._values[key]
        except KeyError:
            found = self._values[key] = value.value_at(self.ix, self.now)
            return found

    def result(self, condition: Condition) -> Result:
        key = id(condition)
        hit = self._results.get(key)
        if hit is None:
            hit = self._results[key] = condition.evaluate(self)
        return hit

    def explain(self, condition: Condition) -> dict[str, Any]:
        return condition.explain(self)

    def at(self, instant: datetime) -> Context:
        return Context(self.ix, instant, self.rules, refine=False, explaining=False)

    def segment(self, name: str) -> SegmentResult:
        hit = self._segments.get(name)
        if hit is not None:
            return hit
        condition = self.rules.segment(name).condition
        value, nxt, after, exact = self.result(condition)
        member = value is True
        out: SegmentResult
        if nxt is None:
            out = (member, None, True)
        elif exact and (after is True) != member:
            out = (member, nxt, True)
        elif not self.refine or self._beyond(nxt):
            out = (member, nxt, False)
        else:
            out = self._refine(condition, member, nxt)
        if self.refine and out[1] is not None and out[2]:
            self.best = earliest(self.best, out[1])
        self._segments[name] = out
        return out

    def _beyond(self, instant: datetime) -> bool:
        """A change at or after the earliest known one does not matter for next_due (unless explaining)."""
        return not self.explaining and self.best is not None and instant >= self.best

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
            if self._beyond(nxt):
                return (member, nxt, False)
            instant = nxt
        return (member, instant, False)


def evaluate(profile: Profile, rules: RuleSet, now: datetime, *, explain: bool = True) -> Evaluation:
    """Memberships, computed traits, next_due and (when ``explain``) an explanation per segment.

    Deterministic: depends only on the profile's events and traits, the rules and ``now`` — not on the order
    in which events arrived. Missing values and divisions by zero make a condition unknown (not a member).
    """
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    ctx = Context(Index(profile), now, rules, refine=True, explaining=explain)
    traits: dict[str, Any] = {}
    trait_next: dict[str, datetime | None] = {}
    for name, expr in rules.traits:
        current = ctx.value(expr)
        traits[name] = exported(current)
        change = next_value_change(expr, ctx.ix, now, current)
        trait_next[name] = change
        ctx.best = earliest(ctx.best, change)
    members = []
    next_due = ctx.best
    results: dict[str, SegmentResult] = {}
    for segment in rules.segments:
        result = results[segment.name] = ctx.segment(segment.name)
        if result[0]:
            members.append(segment.name)
        next_due = earliest(next_due, result[1])
    explanations: dict[str, Explanation] = {}
    if explain:
        for segment in rules.segments:
            member, nxt, exact = results[segment.name]
            tree = ctx.explain(segment.condition)
            detail: dict[str, Any] = {"condition": tree, "next_change_exact": exact}
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


__all__ = ["Context", "EvaluationDiff", "diff", "evaluate", "iso", "show"]
