"""Events that were not stored, kept with their reason (the latest ``KEPT`` per account; what the
cap drops is counted as ``rejected`` in ``metrics:dropped``)."""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.event import Event
from connector.profiles import keys
from connector.profiles.bounds import count_dropped

KEPT = 1000


@dataclass(frozen=True)
class Rejected:
    at: str
    reason: str
    event: dict[str, Any]


def record(pipe: Any, event: Event, reason: str, now: datetime) -> None:
    """Add to a pipeline: keep the event with its reason. Call :func:`trim` after it ran."""
    pipe.xadd(
        keys.rejected_key(event.account),
        {"at": isoformat(now), "reason": reason, "event": event.to_json()},
    )


def trim(conn: redis.Redis, queue_conn: redis.Redis, account: str) -> int:
    """Keep the latest ``KEPT`` (approximately); what is dropped is counted (``rejected``)."""
    dropped = int(conn.xtrim(keys.rejected_key(account), maxlen=KEPT, approximate=True))
    count_dropped(queue_conn, "rejected", dropped)
    return dropped


def purge(conn: redis.Redis, account: str, needles: Collection[str]) -> int:
    """Remove the rejected events that name any of ``needles`` (erasure); returns how many."""
    doomed = [
        entry_id
        for entry_id, fields in conn.xrange(keys.rejected_key(account))
        if mentions(fields.get(b"event", b""), needles)
    ]
    if doomed:
        conn.xdel(keys.rejected_key(account), *doomed)
    return len(doomed)


def mentions(document: Any, needles: Collection[str]) -> bool:
    """Whether a JSON document (or text) holds one of ``needles`` as a value, a key or a part of
    one (compared without case). Text that is not JSON is searched as it is."""
    if not needles:
        return False
    if isinstance(document, bytes):
        document = document.decode("utf-8", errors="replace")
    if isinstance(document, str):
        try:
            document = json.loads(document)
        except ValueError:
            low = document.lower()
            return any(needle in low for needle in needles)
    return _walk(document, needles)


def _walk(value: Any, needles: Collection[str]) -> bool:
    if isinstance(value, dict):
        return any(_walk(k, needles) or _walk(v, needles) for k, v in value.items())
    if isinstance(value, list | tuple):
        return any(_walk(v, needles) for v in value)
    if isinstance(value, str):
        low = value.lower()
        return low in needles or any(needle in low for needle in needles if len(needle) >= 6)
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value) in needles
    return False


def latest(conn: redis.Redis, account: str, count: int = 20) -> list[Rejected]:
    out = []
    for _, fields in conn.xrevrange(keys.rejected_key(account), count=count):
        out.append(Rejected(fields[b"at"].decode(), fields[b"reason"].decode(), json.loads(fields[b"event"])))
    return out


def count(conn: redis.Redis, account: str) -> int:
    return int(conn.xlen(keys.rejected_key(account)))
