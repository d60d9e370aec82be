"""Replaying and discarding dead letters in bulk: the one loop ``connector dlq replay|discard`` and
the admin API (so the console) run, and the audit entry each writes.

:func:`run` acts on dead letters one by one (a replay through
:func:`connector.sync.replay_dead_letter`, a discard by deleting it), counting each outcome, and
stops early when its ``stop`` says so: the command line gives a progress bar as the items and no
stop, the API a :func:`budget` (so many items, so many seconds) and hands the client a cursor to go
on from. What it did so far is in the :class:`Run` it fills, so a caller can record it when the loop
ends on an error (the command line records in ``finally``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import redis

from connector import clock, sync
from connector.ops import audit
from connector.sync.deadletters import DeadLetter, DeadLetters

REPLAY = "replay"
DISCARD = "discard"
ACTIONS = (REPLAY, DISCARD)
DISCARDED = "discarded"  # a discard's outcome

DestinationExists = Callable[[str, str], bool]


@dataclass
class Run:
    """What a :func:`run` did: each item with its outcome, the counts per outcome, and whether it
    stopped before its items ran out."""

    done: list[tuple[DeadLetter, str]] = field(default_factory=list)
    outcomes: dict[str, int] = field(default_factory=dict)
    stopped: bool = False

    def add(self, item: DeadLetter, outcome: str) -> None:
        self.done.append((item, outcome))
        self.outcomes[outcome] = self.outcomes.get(outcome, 0) + 1


def act(
    conn: redis.Redis,
    dead: DeadLetters,
    action: str,
    item: DeadLetter,
    now: datetime,
    exists: DestinationExists | None = None,
) -> str:
    """Replay or discard one dead letter; its outcome (``queued``, ``superseded``, ``not
    replayable``, ``no such destination``, ``discarded``)."""
    if action == REPLAY:
        return sync.replay_dead_letter(conn, dead, item, now, exists)
    if action == DISCARD:
        dead.remove(item)
        return DISCARDED
    raise ValueError(f"unknown dead-letter action {action!r}")


def run(
    conn: redis.Redis,
    dead: DeadLetters,
    action: str,
    items: Iterable[DeadLetter],
    now: datetime,
    exists: DestinationExists | None = None,
    stop: Callable[[int], bool] | None = None,
    into: Run | None = None,
) -> Run:
    """Act on ``items`` in order; after each, ``stop(items handled so far)`` may end the run (the
    next item is then not taken from ``items``). Fills and returns ``into`` (a new :class:`Run`
    without one), so what was done before an error is known to the caller."""
    result = into if into is not None else Run()
    for item in items:
        result.add(item, act(conn, dead, action, item, now, exists))
        if stop is not None and stop(len(result.done)):
            result.stopped = True
            break
    return result


def budget(most: int, seconds: float) -> Callable[[int], bool]:
    """A ``stop`` for :func:`run`: after ``most`` items, or once ``seconds`` have passed."""
    deadline = clock.monotonic() + seconds
    return lambda handled: handled >= most or clock.monotonic() >= deadline


def selection_recorded(selection: dict[str, Any]) -> dict[str, Any]:
    """A selection as the audit log keeps it: everything given but empty values, and the text
    ``filter`` (often an email) as :func:`connector.ops.audit.filter_digest` only."""
    out: dict[str, Any] = {
        k: v for k, v in selection.items() if v not in (None, "", [], False) and k != "filter"
    }
    if selection.get("filter"):
        out.update(audit.filter_digest(selection["filter"]))
    return out


def record(
    conn: redis.Redis,
    actor: str,
    action: str,
    account: str,
    selection: dict[str, Any],
    outcomes: dict[str, int],
    now: datetime,
    **after: Any,
) -> str:
    """The audit entry of one replay or discard (``deadletters.replay``, ``deadletters.discard``) of
    ``account``'s dead letters: the selection (:func:`selection_recorded`) before, the outcomes
    (and ``after``'s other fields) after."""
    return audit.record(
        conn,
        actor,
        f"deadletters.{action}",
        f"deadletters:{account}",
        [account],
        {"selection": selection_recorded(selection)},
        {"outcomes": outcomes, **after},
        now,
    )
