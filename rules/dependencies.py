"""What each segment of a rule set reads: event names, profile traits, other segments.

Incremental evaluation (:func:`rules.evaluate_changed`) re-evaluates only the segments that new
events can affect; this module says which those are. A segment is affected by an event name when
one of its conditions selects events of that name, or any event (``*``, and ``for_some``, whose
groups span every event name). Segments that read a profile trait (stored or predicted) are always
re-evaluated: traits change outside the event history. An exclusive group is re-evaluated whole
when one of its members is affected, and a segment that refers to an affected segment is affected.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from .conditions import Condition, ForSome, InSegment
from .ruleset import RuleSet
from .values import ANY_EVENT, Computed, ProfileTrait, Selector, Value


@dataclass(frozen=True)
class Reads:
    """What one condition (or value) reads."""

    events: frozenset[str] = frozenset()
    traits: bool = False
    segments: frozenset[str] = frozenset()


def _walk(node: Any, events: set[str], segments: set[str], seen: set[int]) -> bool:
    """Collect the event names and segment names ``node`` reads; whether it reads a profile trait."""
    if id(node) in seen:
        return False
    seen.add(id(node))
    if isinstance(node, Selector):
        events.add(node.event)
        return False
    if isinstance(node, ProfileTrait):
        return True
    if isinstance(node, InSegment):
        segments.add(node.name)
        return False
    if isinstance(node, ForSome):
        events.add(ANY_EVENT)
    traits = False
    for child in _children(node):
        traits |= _walk(child, events, segments, seen)
    return traits


def _children(node: Any) -> Iterable[Any]:
    if isinstance(node, Computed):
        return (node.expr,)
    if isinstance(node, Condition | Value):
        return [getattr(node, name, None) for name in _slots(type(node))]
    if isinstance(node, list | tuple | frozenset | set):
        return node
    if isinstance(node, dict):
        return node.values()
    return ()


def _slots(cls: type) -> Iterable[str]:
    """A node's attributes: its classes' ``__slots__``, or, compiled (``connector compile``), the
    attribute list mypyc gives a native class."""
    for klass in cls.__mro__:
        yield from getattr(klass, "__slots__", ()) or getattr(klass, "__mypyc_attrs__", ())


def reads(node: Condition | Value) -> Reads:
    events: set[str] = set()
    segments: set[str] = set()
    traits = _walk(node, events, segments, set())
    return Reads(frozenset(events), traits, frozenset(segments))


def traits_read(node: Condition | Value) -> frozenset[str]:
    """The names of the profile traits ``node`` reads."""
    found: set[str] = set()
    seen: set[int] = set()
    stack: list[Any] = [node]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, ProfileTrait):
            found.add(item.name)
        else:
            stack.extend(_children(item))
    return frozenset(found)


@dataclass(frozen=True)
class Affected:
    """What new events of some names can change.

    ``own``: segments whose own condition reads those events, a profile trait, or a segment that can
    change (these are evaluated). ``changed``: those and every member of an exclusive group with one
    of them (a group's other members keep their own condition's truth, but may win or lose the group).
    Segments outside ``changed`` keep their membership."""

    own: frozenset[str]
    changed: frozenset[str]
    unchanged: tuple[str, ...] = ()  # the rule set's other segments, in order


@dataclass(frozen=True)
class Dependencies:
    """Per segment: what its own condition reads (every variant included; for a member of an
    exclusive group, its own condition without the group's order)."""

    by_segment: dict[str, Reads]
    always: frozenset[str]  # segments that read a profile trait
    read: frozenset[str] = frozenset()  # every event name some segment reads
    _memo: dict[frozenset[str], Affected] = field(default_factory=dict)

    def affected(self, rules: RuleSet, names: Iterable[str]) -> Affected:
        """The segments events of ``names`` can change (memoized per set of the names rules read,
        and whether there were others: senders' free-form names never grow the memo)."""
        given = set(names)
        key = frozenset(given & self.read) | (frozenset([ANY_EVENT]) if given - self.read else frozenset())
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._affected(rules, key)
        return hit

    def _affected(self, rules: RuleSet, names: frozenset[str]) -> Affected:
        own = set(self.always)
        if names:
            for segment, read in self.by_segment.items():
                if ANY_EVENT in read.events or not read.events.isdisjoint(names):
                    own.add(segment)
        while True:
            changed = set(own)
            for members in rules.groups.values():
                if not own.isdisjoint(members):
                    changed.update(members)
            more = {
                s
                for s, read in self.by_segment.items()
                if s not in own and not read.segments.isdisjoint(changed)
            }
            if not more:
                kept = tuple(s.name for s in rules.segments if s.name not in changed)
                return Affected(frozenset(own), frozenset(changed), kept)
            own |= more


# Bumped whenever a release changes what evaluation computes for the same rules: results recorded by
# the earlier code are then not reused.
EVALUATION_VERSION = 2  # 2: a sequence's A is never its own B; sums of decimals rounded


def fingerprint(rules: RuleSet) -> str:
    """A short digest of what the rules compute (every segment's conditions, variants and group, every
    computed trait's definition): equal fingerprints, equal results. A result recorded under another
    fingerprint is not reused by incremental evaluation."""
    cached: str | None = rules.__dict__.get("_fingerprint")
    if cached is None:
        parts = [
            f"{s.name}|{s.group}|{s.condition.key}|{s.matched.key}|{'|'.join(v.key for v in s.variants)}"
            for s in rules.segments
        ]
        parts.extend(f"{name}={_definition(value)}" for name, value in rules.traits)
        parts.append(f"evaluation {EVALUATION_VERSION}")
        cached = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]
        object.__setattr__(rules, "_fingerprint", cached)
    return cached


def _definition(value: Value) -> str:
    """A computed trait's own definition (a reference's key is only its name)."""
    if isinstance(value, Computed) and value.expr is not None:
        return value.expr.key
    return value.key


def dependencies(rules: RuleSet) -> Dependencies:
    """The rule set's dependencies (computed once per rule set)."""
    cached: Dependencies | None = rules.__dict__.get("_dependencies")
    if cached is not None:
        return cached
    by_segment: dict[str, Reads] = {}
    for segment in rules.segments:
        # a group member's effective condition holds the group's earlier members: its own is `matched`
        parts = [
            reads(segment.matched if segment.group else segment.condition),
            *(reads(v) for v in segment.variants),
        ]
        by_segment[segment.name] = Reads(
            frozenset().union(*(p.events for p in parts)),
            any(p.traits for p in parts),
            frozenset().union(*(p.segments for p in parts)),
        )
    found = Dependencies(
        by_segment,
        frozenset(name for name, r in by_segment.items() if r.traits),
        frozenset().union(*(r.events for r in by_segment.values())) - {ANY_EVENT},
    )
    object.__setattr__(rules, "_dependencies", found)
    return found


__all__ = ["Affected", "Dependencies", "Reads", "dependencies", "fingerprint", "reads", "traits_read"]
