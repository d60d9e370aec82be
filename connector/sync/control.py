"""Operating the sync: pausing and resuming a destination, replaying a dead-lettered change, and
reading what the sync holds for a contact."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

import redis

from adapters.change import Change, OwnedState
from connector import clock
from connector.sync import applied
from connector.sync.deadletters import DeadLetter, DeadLetters
from connector.sync.keys import SEP, Applied, decode_applied, key, legacy_applied, member, sync_names
from connector.sync.submit import arm, enqueue_change

log = logging.getLogger(__name__)

NO_SUCH_DESTINATION = "no such destination"  # a replay outcome: the dead letter stays
NOT_REPLAYABLE = "not replayable"  # a replay outcome: the dead letter stays


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


def applied_states(
    conn: redis.Redis, account: str, destination: str, profile_ids: Sequence[str]
) -> dict[str, Applied]:
    """The applied state of these contacts (absent ones have none), in one or two round trips."""
    if not profile_ids:
        return {}
    scope = f"{account}:{destination}"
    pipe = conn.pipeline(transaction=False)
    applied.read(pipe, key(account, destination, "applied"), profile_ids)
    pipe.hget(key(account, destination, "names"), "#gen")
    raw, generation = pipe.execute()
    names = sync_names(conn)
    names.check(scope, generation)
    out: dict[str, Applied] = {}
    legacy: list[str] = []
    for pid, value in zip(profile_ids, raw, strict=True):
        if value is None or value.isdigit():
            legacy.append(pid)  # nothing or the version alone: maybe stored before the compact form
        if value is not None:
            out[pid] = decode_applied(value, lambda code: names.name(scope, code))
    if legacy:
        pipe = conn.pipeline(transaction=False)
        pipe.hmget(key(account, destination, "owned"), legacy)
        pipe.hmget(key(account, destination, "digest"), legacy)
        owned, digests = pipe.execute()
        for pid, own, digest in zip(legacy, owned, digests, strict=True):
            if own is not None or digest is not None:
                version = out[pid].version if pid in out else None
                out[pid] = legacy_applied(str(version).encode() if version is not None else None, own, digest)
    return out


def owned_state(conn: redis.Redis, account: str, destination: str, profile_id: str) -> OwnedState | None:
    found = applied_states(conn, account, destination, [profile_id]).get(profile_id)
    return found.owned if found else None


def applied_version(conn: redis.Redis, account: str, destination: str, profile_id: str) -> int | None:
    found = applied_states(conn, account, destination, [profile_id]).get(profile_id)
    return found.version if found else None


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


def replay_dead_letter(
    conn: redis.Redis,
    dead: DeadLetters,
    item: DeadLetter,
    now: datetime,
    destination_exists: Callable[[str, str], bool] | None = None,
) -> str:
    """Replay one dead letter: a sync change goes back in the queue (``queued``, or ``superseded``
    when a newer version is pending or applied), a stored event back on its shard's stream
    (``queued``), and either leaves the dead letters. A sync change whose destination is no longer
    in its account (renamed or removed; ``destination_exists``, by default the account files in
    force) could never be sent: it is ``no such destination`` and stays. An event that cannot be
    read, and any other kind, is ``not replayable`` and stays."""
    if item.kind == "events" and isinstance(item.payload, str):
        return _replay_event(conn, dead, item)
    if not item.kind.startswith("sync:") or not isinstance(item.payload, dict):
        return NOT_REPLAYABLE
    try:
        change = Change.from_dict(item.payload["change"])
    except (KeyError, TypeError, ValueError):
        return NOT_REPLAYABLE
    if not (destination_exists or configured_destination)(change.account, change.destination):
        return NO_SUCH_DESTINATION
    outcome = replay(conn, item.payload, now)
    dead.remove(item)
    return outcome


def configured_destination(account_id: str, destination: str) -> bool:
    """Whether the account files in force give the account a destination of that name."""
    from connector import runtime
    from connector.destinations import destinations

    account = runtime.current().account(account_id)
    return account is not None and destination in destinations(account)


def _replay_event(conn: redis.Redis, dead: DeadLetters, item: DeadLetter) -> str:
    from connector import runtime
    from connector.event import UndecodableItem, load_event
    from connector.ingest.queue import EventQueue

    try:
        event = load_event(item.payload)
    except UndecodableItem:
        return NOT_REPLAYABLE
    EventQueue(conn, runtime.current().settings.event_shards).restore(event)
    dead.remove(item)
    return "queued"
