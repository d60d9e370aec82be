"""What each segment of a rule set reads: event names, profile traits, other segments.

Incremental evaluation (:func:`rules.evaluate_changed`) re-evaluates only the segments that new
events can affect; this module says which those are. A segment is affected by an event name when
one of its conditions selects events of that name, or any event (``*``, and ``for_some``, whose
groups span every event name). Segments that read a profile trait (stored or predicted) are always
re-evaluated: traits change outside the event history. An exclusive group is re-evaluated whole
when one of its members is affected, and a segment that refers to an affected segment is affected.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
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
    for klass in cls.__mro__:
        yield from getattr(klass, "__slots__", ())


def reads(node: Condition | Value) -> Reads:
    events: set[str] = set()
    segments: set[str] = set()
    traits = _walk(node, events, segments, set())
    return Reads(frozenset(events), traits, frozenset(segments))


@dataclass(frozen=True)
class Dependencies:
    """Per segment: what it reads (its own condition, every variant, its group's earlier members)."""

    by_segment: dict[str, Reads]
    always: frozenset[str]  # segments that read a profile trait

    def affected(self, rules: RuleSet, names: Iterable[str]) -> frozenset[str]:
        """The segments events of ``names`` can change, closed over references and groups."""
        names = set(names)
        out = set(self.always)
        if names:
            for segment, read in self.by_segment.items():
                if ANY_EVENT in read.events or not read.events.isdisjoint(names):
                    out.add(segment)
        grew = True
        while grew:
            grew = False
            for segment, read in self.by_segment.items():
                if segment not in out and not read.segments.isdisjoint(out):
                    out.add(segment)
                    grew = True
            for members in rules.groups.values():
                if not out.isdisjoint(members) and not out.issuperset(members):
                    out.update(members)
                    grew = True
        return frozenset(out)


def dependencies(rules: RuleSet) -> Dependencies:
    """The rule set's dependencies (computed once per rule set)."""
    cached: Dependencies | None = rules.__dict__.get("_dependencies")
    if cached is not None:
        return cached
    by_segment: dict[str, Reads] = {}
    for segment in rules.segments:
        parts = [reads(segment.condition), reads(segment.matched), *(reads(v) for v in segment.variants)]
        by_segment[segment.name] = Reads(
            frozenset().union(*(p.events for p in parts)),
            any(p.traits for p in parts),
            frozenset().union(*(p.segments for p in parts)),
        )
    found = Dependencies(by_segment, frozenset(name for name, r in by_segment.items() if r.traits))
    object.__setattr__(rules, "_dependencies", found)
    return found


__all__ = ["Dependencies", "Reads", "dependencies", "reads"]
