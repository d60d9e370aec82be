"""Operating the sync: pausing and resuming a destination, replaying a dead-lettered change, and
reading what the sync holds for a contact."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis

from adapters.change import Change, OwnedState
from connector import clock
from connector.sync.keys import SEP, key, member
from connector.sync.submit import arm, enqueue_change

log = logging.getLogger(__name__)


def pause(
    conn: redis.Redis, account: str, destination: str, reason: str, status: int | None, now: datetime
) -> None:
    record = {"reason": reason, "status": status, "at": clock.isoformat(now)}
    conn.hset("sync:paused", member(account, destination), json.dumps(record))
    conn.hincrby("metrics:sync", f"paused:{account}", 1)
    log.warning(
        "destination paused", extra={"account": account, "destination": destination, "status": status}
    )


def paused(conn: redis.Redis) -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for field, raw in conn.hgetall("sync:paused").items():
        a, _, d = field.decode().partition(SEP)
        out[(a, d)] = json.loads(raw)
    return out


def is_paused(conn: redis.Redis, account: str, destination: str) -> bool:
    return bool(conn.hexists("sync:paused", member(account, destination)))


def resume(conn: redis.Redis, account: str, destination: str, now: datetime) -> bool:
    removed = bool(conn.hdel("sync:paused", member(account, destination)))
    conn.zadd("sync:due", {member(account, destination): now.timestamp()})
    arm(conn, account, destination)
    return removed


def owned_state(conn: redis.Redis, account: str, destination: str, profile_id: str) -> OwnedState | None:
    raw = conn.hget(key(account, destination, "owned"), profile_id)
    return OwnedState.from_dict(json.loads(raw)) if raw else None


def applied_version(conn: redis.Redis, account: str, destination: str, profile_id: str) -> int | None:
    raw = conn.hget(key(account, destination, "applied"), profile_id)
    return int(raw) if raw is not None else None


def pending(conn: redis.Redis, account: str, destination: str) -> dict[str, Change]:
    return {
        k.decode(): Change.from_dict(json.loads(v))
        for k, v in conn.hgetall(key(account, destination, "pending")).items()
    }


def erasures(conn: redis.Redis, limit: int = 100) -> list[dict[str, Any]]:
    return [json.loads(r) for r in conn.lrange("sync:erasures", 0, limit - 1)]


def replay(conn: redis.Redis, payload: Mapping[str, Any], now: datetime) -> str:
    """Put a dead-lettered change back in the queue: ``queued``, or ``superseded`` when a newer
    version of that contact is pending or already applied (the newer state wins)."""
    change = Change.from_dict(payload["change"])
    a, d = change.account, change.destination
    conn.hdel(key(a, d, "failing"), change.profile_id)
    if not enqueue_change(conn, change, now.timestamp()):
        return "superseded"
    return "queued"
