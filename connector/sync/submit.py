"""Submitting desired state: one :class:`~adapters.change.Change` per destination, queued so that
per (account, destination, profile) only the newest version waits, and a flush job armed for it;
erasure fan-out to every destination."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import redis
from rq import Queue

from adapters.change import CONSENT_UNKNOWN, Change
from connector.config import Account
from connector.destinations import destinations
from connector.profiles.batched import Batched
from connector.sync import applied
from connector.sync.keys import (
    ARMED_TTL_SECONDS,
    ERASE_VERSION,
    ERASED_TTL_SECONDS,
    LOCK_TTL_MS,
    SYNC_QUEUE,
    SYNC_STATE,
    erased_key,
    key,
    member,
)

# KEYS: pending, ready, applied (the hash of before; the buckets are named from it), sync:due,
# armed, erased flag. ARGV: pid, version, change JSON, ready at, due member, armed ttl, packed pid.
_ENQUEUE_BODY = """
if redis.call('EXISTS', KEYS[6]) == 1 then return 0 end
local applied = tonumber(string.match(ap_get(KEYS[3], ARGV[1], ARGV[7]) or '-1', '^%-?%d+'))
local version = tonumber(ARGV[2])
if version <= applied then return 0 end
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur then
  local v = tonumber(cjson.decode(cur)['version'])
  if v > version then return 0 end
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], 'NX', ARGV[4], ARGV[1])
redis.call('ZADD', KEYS[4], 'LT', ARGV[4], ARGV[5])
if redis.call('SET', KEYS[5], '1', 'NX', 'EX', ARGV[6]) then return 2 end
return 1
"""
# _ENQUEUE for many changes in one script call
_ENQUEUE_MANY = Batched(_ENQUEUE_BODY, applied.LOOKUP)


def enqueue_change(conn: redis.Redis, change: Change, ready_at: float) -> bool:
    """Queue ``change`` and make sure a flush job is armed for its destination; False when a
    newer version is pending or already applied."""
    return enqueue_changes(conn, [(change, ready_at)])[0]


def enqueue_changes(conn: redis.Redis, changes: Sequence[tuple[Change, float]]) -> list[bool]:
    """:func:`enqueue_change` for many ``(change, ready_at)``, in one round trip (plus one RQ
    enqueue per destination whose flush job was not armed yet)."""
    if not changes:
        return []
    calls = [_enqueue_call(change, ready_at) for change, ready_at in changes]
    outcomes = [int(outcome) for outcome in _ENQUEUE_MANY.run(conn, calls)]
    for (change, _), outcome in zip(changes, outcomes, strict=True):
        if outcome == 2:
            enqueue_job(conn, change.account, change.destination)
    return [outcome > 0 for outcome in outcomes]


def _enqueue_call(change: Change, ready_at: float) -> tuple[list[str], list[Any]]:
    a, d = change.account, change.destination
    keys = [key(a, d, "pending"), key(a, d, "ready"), key(a, d, "applied"), "sync:due", key(a, d, "armed")]
    # an erasure itself is never held back by the flag (it is set once the erasure was applied)
    keys.append(erased_key(a, "" if change.erase else change.profile_id))
    args = [change.profile_id, change.version, json.dumps(change.to_dict()), ready_at, member(a, d)]
    args += [ARMED_TTL_SECONDS, applied.pack_pid(change.profile_id)]
    return keys, args


def enqueue_job(conn: redis.Redis, account: str, destination: str) -> None:
    Queue(SYNC_QUEUE, connection=conn).enqueue(
        "connector.sync.jobs.flush_job",
        account,
        destination,
        result_ttl=0,
        failure_ttl=24 * 3600,
        # a batch can wait for rate-limit slots (up to a minute each): RQ's default 180 s would cut
        # a job short while it still holds the destination's lock, which lasts as long as this
        job_timeout=LOCK_TTL_MS // 1000,
    )


def arm(conn: redis.Redis, account: str, destination: str) -> bool:
    """Make sure a flush job is queued for this destination (one at a time)."""
    if not conn.set(key(account, destination, "armed"), "1", nx=True, ex=ARMED_TTL_SECONDS):
        return False
    enqueue_job(conn, account, destination)
    return True


@dataclass(frozen=True)
class Submission:
    """The desired state of one profile, for every destination of its account."""

    profile_id: str
    version: int
    segments: Iterable[str]
    traits: Mapping[str, Any]
    email: str | None
    consent: str
    identities: Mapping[str, str] | None = None
    # the person's addresses other than ``email`` (Change.other_emails)
    other_emails: tuple[str, ...] = ()


def submit(
    conn: redis.Redis,
    account: Account,
    profile_id: str,
    version: int,
    segments: Iterable[str],
    traits: Mapping[str, Any],
    email: str | None,
    consent: str,
    now: datetime,
    identities: Mapping[str, str] | None = None,
) -> list[str]:
    """Queue the desired state of one profile on every enabled destination of the account.

    Returns the destinations that took the change (an older version than the pending or applied
    one is ignored). Without an email nothing is queued: destinations never receive a contact for
    an anonymous id; when the profile gains an email the ledger bumps its version and the whole
    current state is submitted then. Anonymous ids are not passed on.
    """
    item = Submission(profile_id, version, segments, traits, email, consent, identities)
    return submit_many(conn, account, [item], now)[0]


def submit_many(
    conn: redis.Redis, account: Account, submissions: Sequence[Submission], now: datetime
) -> list[list[str]]:
    """:func:`submit` for many profiles of one account, in one round trip; per submission, the
    destinations that took it."""
    enabled = [dest for dest in destinations(account).values() if dest.enabled]
    changes: list[tuple[Change, float]] = []
    owners: list[int] = []
    for n, item in enumerate(submissions):
        if not item.email:
            continue  # a contact is addressed by email: an anonymous profile reaches no destination
        segments = list(item.segments)
        known = {kind: value for kind, value in (item.identities or {}).items() if kind != "anonymous_id"}
        consent = item.consent or CONSENT_UNKNOWN
        for dest in enabled:
            change = dest.change(
                item.profile_id, item.version, segments, item.traits, item.email, consent, known
            )
            if item.other_emails:
                change = replace(change, other_emails=item.other_emails)
            changes.append((change, now.timestamp() + dest.batch_delay_seconds))
            owners.append(n)
    queued: list[list[str]] = [[] for _ in submissions]
    for (change, _), n, took in zip(changes, owners, enqueue_changes(conn, changes), strict=True):
        if took:
            queued[n].append(change.destination)
    return queued


def erase(
    conn: redis.Redis,
    account: Account,
    profile_id: str,
    emails: Sequence[str] | str | None,
    now: datetime,
    version: int = ERASE_VERSION,
    absorbed: Sequence[str] = (),
) -> list[str]:
    """Ask every destination of the account to delete the person (GDPR fan-out), under each of
    their addresses, and forget what the sync keeps about them and the profiles merged into them.

    Without an address the person never reached a destination: their sync state is dropped at
    once. Otherwise the deletion waits in the queue (it holds the addresses) and, once the ESPs
    answered, the sync state is dropped (:func:`forget`). Dead letters are purged by the erasure
    service (:mod:`connector.worker.erasure`).
    """
    addresses = [emails] if isinstance(emails, str) else list(dict.fromkeys(emails or ()))
    names = list(destinations(account))
    forget(conn, account.id, names, absorbed)
    if not addresses:
        forget(conn, account.id, names, [profile_id])
        return []
    queued = []
    for dest in destinations(account).values():
        change = Change(
            account=account.id,
            destination=dest.name,
            profile_id=profile_id,
            version=version,
            email=addresses[0],
            erase=True,
            erase_emails=tuple(addresses[1:]),
        )
        if enqueue_change(conn, change, now.timestamp()):
            queued.append(dest.name)
    return queued


def forget(
    conn: redis.Redis, account: str, destination_names: Iterable[str], profile_ids: Iterable[str]
) -> None:
    """Drop every sync key entry of these profiles, and flag them erased (no later change of theirs
    is queued)."""
    pids = list(profile_ids)
    if not pids:
        return
    names = list(destination_names)
    pipe = conn.pipeline(transaction=False)
    for name in names:
        for what in SYNC_STATE:
            pipe.hdel(key(account, name, what), *pids)
        pipe.zrem(key(account, name, "ready"), *pids)
    applied.forget(pipe, [key(account, name, "applied") for name in names], pids)
    for pid in pids:
        pipe.set(erased_key(account, pid), "1", ex=ERASED_TTL_SECONDS)
    pipe.execute()
