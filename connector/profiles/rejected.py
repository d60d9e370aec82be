"""Events that were not stored, kept with their reason (the latest ``KEPT`` per account)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.event import Event
from connector.profiles import keys

KEPT = 1000


@dataclass(frozen=True)
class Rejected:
    at: str
    reason: str
    event: dict[str, Any]


def record(pipe: Any, event: Event, reason: str, now: datetime) -> None:
    """Add to a pipeline: keep the event with its reason."""
    pipe.xadd(
        keys.rejected_key(event.account),
        {"at": isoformat(now), "reason": reason, "event": event.to_json()},
        maxlen=KEPT,
        approximate=True,
    )


def latest(conn: redis.Redis, account: str, count: int = 20) -> list[Rejected]:
    out = []
    for _, fields in conn.xrevrange(keys.rejected_key(account), count=count):
        out.append(Rejected(fields[b"at"].decode(), fields[b"reason"].decode(), json.loads(fields[b"event"])))
    return out


def count(conn: redis.Redis, account: str) -> int:
    return int(conn.xlen(keys.rejected_key(account)))
