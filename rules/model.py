"""The shapes rules see and return (DESIGN.md §3): Profile in, Evaluation out.

``connector/`` builds a :class:`Profile` from its store; ``rules/`` never reads Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final


class EventRecord:
    """One event in a profile's history: what windowed questions need. Read-only (``Final``).

    A plain class rather than a frozen dataclass: compiled, its constructor is native, where a
    dataclass's generated ``__init__`` runs as Python and sets each field through
    ``object.__setattr__`` (a profile load builds one per event of the history)."""

    __slots__ = ("event_id", "name", "occurred_at", "properties")

    def __init__(
        self,
        name: str,
        occurred_at: datetime,
        properties: Mapping[str, Any] | None = None,
        event_id: str = "",
    ) -> None:
        self.name: Final = name
        self.occurred_at: Final = occurred_at  # aware UTC, the sender's time
        self.properties: Final[Mapping[str, Any]] = {} if properties is None else properties
        self.event_id: Final = event_id

    def _fields(self) -> tuple[str, datetime, Mapping[str, Any], str]:
        return (self.name, self.occurred_at, self.properties, self.event_id)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, EventRecord):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]  # equal by value, and its properties are a dict

    def __repr__(self) -> str:
        return (
            f"EventRecord(name={self.name!r}, occurred_at={self.occurred_at!r}, "
            f"properties={self.properties!r}, event_id={self.event_id!r})"
        )


@dataclass(frozen=True)
class Profile:
    """A person as rules see them, as of the evaluation's ``now``.

    ``events`` is sorted by (occurred_at, event_id), so evaluation never depends on arrival order.
    """

    account: str
    profile_id: str
    identities: Mapping[str, Sequence[str]] = field(default_factory=dict)
    traits: Mapping[str, Any] = field(default_factory=dict)
    events: Sequence[EventRecord] = ()
    revision: int = 0  # the store's write counter for this profile (orders results in the ledger)
    # the events by name, built on first use
    _by_name: dict[str, list[EventRecord]] | None = field(default=None, init=False, repr=False, compare=False)

    def events_named(self, name: str) -> list[EventRecord]:
        index = getattr(self, "_by_name", None)  # compiled, a copy by dataclasses.replace lacks it
        if index is None:
            built: dict[str, list[EventRecord]] = {}
            for record in self.events:
                built.setdefault(record.name, []).append(record)
            object.__setattr__(self, "_by_name", built)
            index = built
        return index.get(name, [])


@dataclass(frozen=True)
class Explanation:
    """Why a segment holds or not: one line per condition, plus when it next changes."""

    segment: str
    member: bool
    reasons: Sequence[str] = ()
    next_change: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Evaluation:
    """What evaluating one profile at ``now`` gives."""

    segments: frozenset[str]
    traits: Mapping[str, Any]
    next_due: datetime | None  # earliest future instant at which any result could change without a new event
    explanations: Mapping[str, Explanation] = field(default_factory=dict)
