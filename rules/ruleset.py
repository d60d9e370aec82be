"""A compiled rule set: its segments (with their conditions), computed traits and exclusive groups.

Built by :func:`rules.compile.compile_rules`, read by :func:`rules.evaluate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from .conditions import Condition
from .values import Value
from .variants import variant_index


@dataclass(frozen=True)
class Segment:
    name: str
    condition: Condition  # effective: includes "no earlier group segment matched"
    matched: Condition  # the segment's own condition
    group: str | None = None
    description: str = ""
    origin: str = ""
    position: int = 0  # place in its exclusive group
    # A/B variants (rules.variants): one condition per variant; a person is evaluated with theirs
    variants: tuple[Condition, ...] = ()

    def variant_of(self, account: str, profile_id: str) -> int:
        """The person's variant (0 without variants)."""
        return variant_index(account, self.name, profile_id, len(self.variants))

    def condition_for(self, account: str, profile_id: str) -> Condition:
        """The condition the person is evaluated with: their variant's, or the segment's."""
        if not self.variants:
            return self.condition
        return self.variants[self.variant_of(account, profile_id)]


@dataclass(frozen=True)
class RuleSet:
    """An account's compiled rules. Evaluate with :func:`rules.evaluate`."""

    segments: tuple[Segment, ...] = ()
    traits: tuple[tuple[str, Value], ...] = ()
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    raw: Mapping[str, Any] = field(default_factory=dict)
    properties: Mapping[str, frozenset[str]] = field(default_factory=dict)
    lookback: timedelta | None = None
    unbounded: bool = False
    templates: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "_by_name", {s.name: s for s in self.segments})

    @property
    def segment_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.segments)

    @property
    def trait_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.traits)

    @property
    def by_name(self) -> dict[str, Segment]:
        found: dict[str, Segment] = self.__dict__["_by_name"]
        return found

    def segment(self, name: str) -> Segment:
        return self.by_name[name]

    def referenced_properties(self) -> dict[str, frozenset[str]]:
        """Event name → the property names rules read from it (``*``: any event). Events absent: unused."""
        return dict(self.properties)

    @property
    def max_lookback(self) -> timedelta | None:
        """The longest window rules look back over; None when some rule reads all history (lifetime sums,
        last order ever ...), in which case only the account's retention bounds the history kept."""
        return None if self.unbounded else self.lookback

    @property
    def empty(self) -> bool:
        return not self.segments and not self.traits


EMPTY = RuleSet()


__all__ = ["EMPTY", "RuleSet", "Segment"]
