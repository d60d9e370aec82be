"""The shapes rules see and return (DESIGN.md §3): Profile in, Evaluation out.

``connector/`` builds a :class:`Profile` from its store; ``rules/`` never reads Redis.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Final


class Record:
    """A record built once and then only read: equal to another of its class whose fields
    (``_shown``, in order) are equal, shown with them, and not hashable (fields may hold dicts).
    Its fields are ``Final``: mypy refuses an assignment, and compiled, so does the run time
    (plain Python does not check)."""

    __slots__ = ()
    _shown: ClassVar[tuple[str, ...]] = ()

    def _fields(self) -> tuple[Any, ...]:
        return tuple(getattr(self, name) for name in self._shown)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record) or type(other) is not type(self):
            return NotImplemented
        return self._fields() == other._fields()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        shown = ", ".join(
            f"{name}={value!r}" for name, value in zip(self._shown, self._fields(), strict=True)
        )
        return f"{type(self).__name__}({shown})"


class EventRecord(Record):
    """One event in a profile's history: what windowed questions need. Read-only (``Final``).

    A plain class rather than a frozen dataclass: compiled, its constructor is native, where a
    dataclass's generated ``__init__`` runs as Python and sets each field through
    ``object.__setattr__`` (a profile load builds one per event of the history)."""

    __slots__ = ("event_id", "name", "occurred_at", "properties")
    _shown = ("name", "occurred_at", "properties", "event_id")

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


class Profile(Record):
    """A person as rules see them, as of the evaluation's ``now``.

    ``events`` is sorted by (occurred_at, event_id), so evaluation never depends on arrival order.
    """

    _shown = ("account", "profile_id", "identities", "traits", "events", "revision")

    def __init__(
        self,
        account: str,
        profile_id: str,
        identities: Mapping[str, Sequence[str]] | None = None,
        traits: Mapping[str, Any] | None = None,
        events: Sequence[EventRecord] = (),
        revision: int = 0,  # the store's write counter for this profile (orders results in the ledger)
    ) -> None:
        self.account: Final = account
        self.profile_id: Final = profile_id
        self.identities: Final[Mapping[str, Sequence[str]]] = {} if identities is None else identities
        self.traits: Final[Mapping[str, Any]] = {} if traits is None else traits
        self.events: Final = events
        self.revision: Final = revision
        self._by_name: dict[str, list[EventRecord]] | None = None  # the events by name, on first use

    def replace(
        self, *, traits: Mapping[str, Any] | None = None, events: Sequence[EventRecord] | None = None
    ) -> Profile:
        """A copy with other traits or events (and its own index of events by name)."""
        return Profile(
            self.account,
            self.profile_id,
            self.identities,
            self.traits if traits is None else traits,
            self.events if events is None else events,
            self.revision,
        )

    def events_named(self, name: str) -> list[EventRecord]:
        index = self._by_name
        if index is None:
            index = {}
            for record in self.events:
                index.setdefault(record.name, []).append(record)
            self._by_name = index
        return index.get(name, [])


@dataclass(frozen=True)
class Explanation:
    """Why a segment holds or not: one line per condition, plus when it next changes."""

    segment: str
    member: bool
    reasons: Sequence[str] = ()
    next_change: datetime | None = None
    detail: Mapping[str, Any] = field(default_factory=dict)


class Evaluation(Record):
    """What evaluating one profile at ``now`` gives (read-only)."""

    _shown = ("segments", "traits", "next_due", "explanations")

    def __init__(
        self,
        segments: frozenset[str],
        traits: Mapping[str, Any],
        next_due: datetime | None,  # the earliest instant a result could change without a new event
        explanations: Mapping[str, Explanation] | None = None,
    ) -> None:
        self.segments: Final = segments
        self.traits: Final = traits
        self.next_due: Final = next_due
        self.explanations: Final[Mapping[str, Explanation]] = {} if explanations is None else explanations
