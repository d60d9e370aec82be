"""Helpers for profile and worker tests: events and a shortcut to apply them."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import redis

from connector.config import Accounts
from connector.event import Event
from connector.profiles.apply import Outcome
from connector.worker.pipeline import apply_batch

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 3, 1, tzinfo=UTC)


def ev(
    sid: str,
    name: str = "product_viewed",
    *,
    at: datetime | int = 0,
    account: str = "acme",
    type: str = "track",
    props: dict[str, Any] | None = None,
    traits: dict[str, Any] | None = None,
    **identities: str,
) -> Event:
    occurred = at if isinstance(at, datetime) else T0 + timedelta(minutes=at)
    return Event(
        account=account,
        source="segment",
        source_event_id=sid,
        type=type,
        name=name,
        occurred_at=occurred,
        received_at=occurred,
        identities=dict(identities),
        properties=props or {},
        traits=traits or {},
    )


def apply(conn: redis.Redis, accounts: Accounts, *events: Event, now: datetime = NOW) -> Outcome:
    outcomes = apply_batch(list(events), now, accounts, conn, conn)
    return outcomes.get(events[0].account) or Outcome()


def import_segment_lines(
    conn: redis.Redis, accounts: Accounts, folder: Path, lines: list[dict[str, Any]]
) -> None:
    """Segment JSON lines through ``connector import`` for acme (the importer's apply and counts)."""
    from connector.worker.importer import import_file

    path = folder / "people.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    account = accounts.get("acme")
    assert account is not None
    import_file(path, account, NOW, conn, conn, fmt="segment")
