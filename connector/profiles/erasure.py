"""Erasure (GDPR / CCPA) and access requests.

Erasing a person removes their profile, history and identity links, the dedupe markers of their
events in the queue Redis (``dd:{account}:{event_id}``), their pending data exports, and whatever
the registered erasure hooks remove (the destinations' ledgers register one). What remains is one
entry in the account's erasure log with an opaque id and the time: no personal data. Destinations
read the log with :func:`erasures_since` to ask the ESPs to erase too.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat
from connector.profiles import keys
from connector.profiles.identity import TOMBSTONE_TTL_SECONDS, AccountLock, mget_keys
from connector.profiles.store import ProfileData, name_codes, read_profile

log = logging.getLogger(__name__)

EXPORTS_KEPT = 1000
EXPORTS_TTL_SECONDS = 30 * 24 * 3600

# Called under the account lock, before the profile is deleted, with (profile conn, account, profile id,
# identities, now). Hooks remove their own entries that name the person (e.g. membership ledgers).
ErasureHook = Callable[[redis.Redis, str, str, dict[str, list[str]], datetime], None]
_HOOKS: list[ErasureHook] = []


def register_erasure_hook(hook: ErasureHook) -> None:
    if hook not in _HOOKS:
        _HOOKS.append(hook)


def unregister_erasure_hook(hook: ErasureHook) -> None:
    if hook in _HOOKS:
        _HOOKS.remove(hook)


@dataclass(frozen=True)
class Erasure:
    entry_id: str  # the log's stream id; pass it back as ``after`` to read on
    account: str
    profile_id: str  # opaque: a random id, not derived from any identity
    at: datetime
    source: str


def exports_key(account: str) -> str:
    return f"exports:{account}"


def erase_profile(
    conn: redis.Redis,
    queue_conn: redis.Redis,
    account: str,
    pid: str,
    now: datetime,
    source: str,
    *,
    dedupe: bool = True,
) -> bool:
    """Erase one profile. Returns False if it did not exist (nothing is logged then).

    ``dedupe=False`` leaves the dedupe markers to the caller (erasing a whole account drops them all
    at once)."""
    with AccountLock(conn, account):
        data = read_profile(conn, name_codes(conn), account, pid)
        if data is None:
            return False
        for hook in list(_HOOKS):
            hook(conn, account, pid, data.identities, now)
        index = [
            keys.identity_key(account, kind, value)
            for kind, values in data.identities.items()
            if kind in keys.KIND_CODES
            for value in values
        ]
        owned = [k for k, owner in zip(index, mget_keys(conn, index), strict=True) if owner == pid.encode()]
        for key in owned:  # separate keys (other cluster slots)
            conn.delete(key)
        pkey = keys.profile_key(account, pid)
        pipe = conn.pipeline(transaction=True)  # the profile's own keys share a slot
        pipe.delete(pkey, keys.history_key(account, pid))
        pipe.hset(pkey, "x", "1")
        pipe.expire(pkey, TOMBSTONE_TTL_SECONDS)
        pipe.execute()
        conn.xadd(keys.erasures_key(account), {"profile": pid, "at": isoformat(now), "source": source})
    _drop_exports(conn, account, {pid})
    prefixes = {stored.event_id for _, stored in data.events} | set(data.other_event_ids)
    removed = _drop_dedupe(queue_conn, account, prefixes) if dedupe else 0
    log.info(
        "profile erased", extra={"account": account, "profile": pid, "source": source, "dedupe": removed}
    )
    return True


def erase_account(
    conn: redis.Redis, queue_conn: redis.Redis, account: str, now: datetime, source: str
) -> int:
    """Erase every profile of an account (Shopify shop/redact), and all its dedupe markers."""
    from connector.profiles.store import iter_profile_ids

    erased = 0
    for pid in list(iter_profile_ids(conn, account)):
        erased += erase_profile(conn, queue_conn, account, pid, now, source, dedupe=False)
    chunk: list[bytes] = []
    for key in queue_conn.scan_iter(match=f"dd:{account}:*", count=1000):
        chunk.append(key)
        if len(chunk) >= 500:
            queue_conn.delete(*chunk)
            chunk = []
    if chunk:
        queue_conn.delete(*chunk)
    conn.delete(exports_key(account))
    return erased


def _drop_dedupe(queue_conn: redis.Redis, account: str, prefixes: set[str]) -> int:
    """Delete dedupe markers of the person's events. The history keeps 16 of the event id's 32
    hex digits, so the markers are found by one scan of the account's markers (erasure is rare;
    keeping full ids would cost 8 bytes per stored event)."""
    if not prefixes:
        return 0
    start = len(f"dd:{account}:")
    doomed = [
        key
        for key in queue_conn.scan_iter(match=f"dd:{account}:*", count=1000)
        if key.decode()[start : start + 16] in prefixes
    ]
    if doomed:
        queue_conn.delete(*doomed)
    return len(doomed)


def _drop_exports(conn: redis.Redis, account: str, pids: set[str]) -> None:
    doomed = [
        entry_id
        for entry_id, fields in conn.xrange(exports_key(account))
        if fields.get(b"profile", b"").decode() in pids
    ]
    if doomed:
        conn.xdel(exports_key(account), *doomed)


def erasures_since(
    conn: redis.Redis,
    account: str,
    since: datetime | None = None,
    after: str | None = None,
    count: int = 1000,
) -> list[Erasure]:
    """Erasures logged at or after ``since`` (or strictly after the entry id ``after``), oldest first."""
    if after is not None:
        start = f"({after}"
    elif since is not None:
        start = str(int(since.timestamp() * 1000))
    else:
        start = "-"
    out = []
    for entry_id, fields in conn.xrange(keys.erasures_key(account), min=start, count=count):
        out.append(
            Erasure(
                entry_id=entry_id.decode(),
                account=account,
                profile_id=fields[b"profile"].decode(),
                at=datetime.fromisoformat(fields[b"at"].decode().replace("Z", "+00:00")),
                source=fields[b"source"].decode(),
            )
        )
    return out


def export_document(data: ProfileData) -> dict[str, Any]:
    """Everything stored about a person, as a JSON-able document."""
    return {
        "account": data.account,
        "profile_id": data.profile_id,
        "identities": dict(sorted(data.identities.items())),
        "traits": data.traits,
        "trait_updated_at": {k: isoformat(v) for k, v in sorted(data.trait_times.items())},
        "first_seen": {k: isoformat(v) for k, v in sorted(data.first_seen.items())},
        "last_seen": {k: isoformat(v) for k, v in sorted(data.last_seen.items())},
        "identify_event_id_prefixes": sorted(data.other_event_ids),
        "events": [
            {
                "name": name,
                "occurred_at": isoformat(stored.occurred_at),
                "event_id_prefix": stored.event_id,
                "properties": stored.properties,
            }
            for name, stored in data.events
        ],
    }


def export_profile(conn: redis.Redis, account: str, pid: str) -> dict[str, Any] | None:
    data = read_profile(conn, name_codes(conn), account, pid)
    return export_document(data) if data is not None else None


def store_export(conn: redis.Redis, account: str, pid: str, request_id: str, now: datetime) -> bool:
    """Answer a data request: keep the export for an operator to hand over (30 days, capped)."""
    document = export_profile(conn, account, pid)
    if document is None:
        return False
    pipe = conn.pipeline(transaction=True)
    pipe.xadd(
        exports_key(account),
        {"profile": pid, "request": request_id, "at": isoformat(now), "data": json.dumps(document)},
        maxlen=EXPORTS_KEPT,
        approximate=True,
    )
    pipe.expire(exports_key(account), EXPORTS_TTL_SECONDS)
    pipe.execute()
    return True


def stored_exports(conn: redis.Redis, account: str, count: int = 100) -> list[dict[str, Any]]:
    out = []
    for entry_id, fields in conn.xrevrange(exports_key(account), count=count):
        out.append(
            {
                "id": entry_id.decode(),
                "profile": fields[b"profile"].decode(),
                "request": fields[b"request"].decode(),
                "at": fields[b"at"].decode(),
                "data": json.loads(fields[b"data"]),
            }
        )
    return out
