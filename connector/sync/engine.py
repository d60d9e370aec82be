"""The sync queue and worker: desired state per contact → batches per ESP → dead letters.

Flow (docs/destinations.md):

* :func:`submit` (called by the event worker after evaluation) turns the account's destination
  config into one :class:`~adapters.change.Change` per destination and queues it. Per
  (account, destination, profile) only the newest version waits: a newer one replaces an older
  pending one, so enter → exit → enter inside one batch window is sent once (or not at all when
  the final state is what the ESP already has).
* One RQ job per (account, destination) (:func:`flush_job`) takes the ready changes in batches of
  the ESP's limit, once the oldest has waited ``batch_delay`` (≤ 1 s) or a full batch is waiting.
* Version guard: the last applied version per contact and destination; an older change is dropped.
* Ownership ledger: what the connector set per contact; adapters only remove what is in it.
* Retries: transient failures come back with exponential backoff (or the ESP's Retry-After / daily
  reset) for ``retry_hours`` (24 h by default) of clock time, then go to the dead letters with the
  ESP's error and the desired state; permanent errors go there at once. ``connector dlq replay``
  puts them back.
* Bad credentials (401/403, or a missing environment variable) pause the destination for the
  account; its changes keep waiting; ``connector dlq resume`` lifts the pause.
* Erasure: :func:`erase` queues a deletion per destination; the outcome is recorded in
  ``sync:erasures`` with a digest of the profile id, no personal data, and :func:`forget` drops
  the person's entries from every key below.

Keys (queue Redis), ``{a}`` = account, ``{d}`` = destination:
  ``sync:{a}:{d}:pending``  hash profile → Change JSON (newest version only)
  ``sync:{a}:{d}:ready``    zset profile → instant it may be sent (delay or retry backoff)
  ``sync:{a}:{d}:applied``  hash profile → last applied version
  ``sync:{a}:{d}:owned``    hash profile → OwnedState JSON (the ownership ledger)
  ``sync:{a}:{d}:digest``   hash profile → digest of the last applied desired state
  ``sync:{a}:{d}:failing``  hash profile → {first_failed_at, attempts, error}
  ``sync:{a}:{d}:armed``    flag: a flush job is queued or running
  ``sync:{a}:{d}:lock``     one flush at a time per destination
  ``sync:due``              zset ``a \\x1f d`` → next instant a flush is needed (scheduler)
  ``sync:paused``           hash ``a \\x1f d`` → pause reason JSON
  ``sync:erasures``         list of erasure records (no personal data), capped (counted)
  ``sync:{a}:erased:{digest}`` flag for 7 days: an erased profile; none of its changes is queued
  ``metrics:sync``          counters ``{outcome}:{account}``
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

import redis
from rq import Queue

from adapters.base import Adapter
from adapters.change import APPLIED, CONSENT_UNKNOWN, DEFERRED, FAILED, Change, OwnedState, Result
from adapters.errors import AdapterError, AuthError, PermanentError, RateLimited, TransientError
from adapters.ratelimit import RateLimiter
from connector import clock, redis_conn
from connector.config import Account
from connector.destinations import Destination, build_adapter, destinations
from connector.errors import ConfigError
from connector.profiles.bounds import count_dropped
from connector.settings import Settings
from connector.sync.deadletters import DeadLetters

log = logging.getLogger(__name__)

SYNC_QUEUE = "sync"
SEP = "\x1f"
ARMED_TTL_SECONDS = 60
LOCK_TTL_MS = 600_000
JOB_TIME_BUDGET_SECONDS = 10.0
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 15 * 60.0
ERASE_VERSION = 2**62  # nothing queued after an erasure may recreate the contact
ERASURE_LOG_MAX = 100_000
ERASED_TTL_SECONDS = 7 * 24 * 3600  # longer than any evaluation in flight
SYNC_STATE = ("pending", "applied", "owned", "digest", "failing")

AdapterFactory = Callable[[Destination], Adapter]


def key(account: str, destination: str, what: str) -> str:
    return f"sync:{account}:{destination}:{what}"


def member(account: str, destination: str) -> str:
    return f"{account}{SEP}{destination}"


def profile_digest(account: str, profile_id: str) -> str:
    return hashlib.sha256(f"{account}{SEP}{profile_id}".encode()).hexdigest()[:24]


def erased_key(account: str, profile_id: str) -> str:
    """Flag (TTL ``ERASED_TTL_SECONDS``): the profile was erased; no change of it is queued again.
    Named by a digest: no identifier is kept."""
    return f"sync:{account}:erased:{profile_digest(account, profile_id)}"


# -----------------------------------------------------------------------------------------------
# queueing

_ENQUEUE = """
if redis.call('EXISTS', KEYS[6]) == 1 then return 0 end
local applied = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '-1')
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

_COMMIT = """
-- applied: KEYS pending, ready, applied, owned, digest, failing; ARGV pid, version, owned|'' , digest
local cur = tonumber(redis.call('HGET', KEYS[3], ARGV[1]) or '-1')
if tonumber(ARGV[2]) > cur then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
for i = 3, 4 do
  if ARGV[i] == '' then
    redis.call('HDEL', KEYS[i + 1], ARGV[1])
  else
    redis.call('HSET', KEYS[i + 1], ARGV[1], ARGV[i])
  end
end
redis.call('HDEL', KEYS[6], ARGV[1])
local pending = redis.call('HGET', KEYS[1], ARGV[1])
if pending and tonumber(cjson.decode(pending)['version']) <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""

_DROP = """
-- remove a pending change only if it is still the given version
local pending = redis.call('HGET', KEYS[1], ARGV[1])
if pending and tonumber(cjson.decode(pending)['version']) <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  return 1
end
return 0
"""

_RELEASE = """
-- clear the armed flag unless a change became ready meanwhile (then the job keeps going)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""


def enqueue_change(conn: redis.Redis, change: Change, ready_at: float) -> bool:
    """Queue ``change`` and make sure a flush job is armed for its destination; False when a
    newer version is pending or already applied."""
    a, d = change.account, change.destination
    keys = [key(a, d, "pending"), key(a, d, "ready"), key(a, d, "applied"), "sync:due", key(a, d, "armed")]
    # an erasure itself is never held back by the flag (it is set once the erasure was applied)
    keys.append(erased_key(a, "" if change.erase else change.profile_id))
    args = [change.profile_id, change.version, json.dumps(change.to_dict()), ready_at, member(a, d)]
    args.append(ARMED_TTL_SECONDS)
    outcome = int(_run(conn, _ENQUEUE, keys, args))
    if outcome == 2:
        _enqueue_job(conn, a, d)
    return outcome > 0


def _run(conn: redis.Redis, source: str, keys: list[str], args: list[Any]) -> Any:
    """Run a Lua script by its SHA (loaded on first use on each server)."""
    script = _SCRIPTS.get(source)
    if script is None:
        script = _SCRIPTS[source] = conn.register_script(source)
    return script(keys=keys, args=args, client=conn)


_SCRIPTS: dict[str, Any] = {}


def _enqueue_job(conn: redis.Redis, account: str, destination: str) -> None:
    Queue(SYNC_QUEUE, connection=conn).enqueue(
        "connector.sync.engine.flush_job",
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
    _enqueue_job(conn, account, destination)
    return True


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
    if not email:
        return []  # a contact is addressed by email: an anonymous profile reaches no destination
    segments = list(segments)
    known = {kind: value for kind, value in (identities or {}).items() if kind != "anonymous_id"}
    queued = []
    for dest in destinations(account).values():
        if not dest.enabled:
            continue
        change = dest.change(profile_id, version, segments, traits, email, consent or CONSENT_UNKNOWN, known)
        if enqueue_change(conn, change, now.timestamp() + dest.batch_delay_seconds):
            queued.append(dest.name)
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
    pipe = conn.pipeline(transaction=False)
    for name in destination_names:
        for what in SYNC_STATE:
            pipe.hdel(key(account, name, what), *pids)
        pipe.zrem(key(account, name, "ready"), *pids)
    for pid in pids:
        pipe.set(erased_key(account, pid), "1", ex=ERASED_TTL_SECONDS)
    pipe.execute()


# -----------------------------------------------------------------------------------------------
# pause


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


# -----------------------------------------------------------------------------------------------
# flushing


def state_digest(change: Change) -> str:
    body = change.to_dict()
    for volatile in ("version", "identities"):
        body.pop(volatile, None)
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=str).encode()).hexdigest()[:32]


def backoff(attempts: int, rng: Callable[[], float] = random.random) -> float:
    """Exponential with full jitter on the upper half: 1 s, 2 s, 4 s ... capped at 15 min."""
    base = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** max(0, attempts - 1))
    return base / 2 + rng() * base / 2


class Flusher:
    """Sends the ready changes of one (account, destination)."""

    def __init__(
        self,
        conn: redis.Redis,
        destination: Destination,
        adapter: Adapter | None,
        dead: DeadLetters | None = None,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.conn = conn
        self.dest = destination
        self.adapter = adapter
        self.dead = dead or DeadLetters(conn)
        self.rng = rng
        a, d = destination.account, destination.name
        self.k = {
            what: key(a, d, what) for what in ("pending", "ready", "applied", "owned", "digest", "failing")
        }

    def take(self, now: float) -> list[str]:
        size = self.dest.batch_size
        ready = self.conn.zrangebyscore(self.k["ready"], "-inf", now, start=0, num=size)
        if len(ready) < size:
            # a full batch waiting for its delay goes now
            soon = self.conn.zrangebyscore(
                self.k["ready"], "-inf", now + self.dest.batch_delay_seconds, start=0, num=size
            )
            if len(soon) >= size:
                ready = soon
        return [r.decode() for r in ready]

    def flush(self, now: datetime, max_batches: int | None = None) -> dict[str, int]:
        """Send ready changes until none is ready (or ``max_batches``); returns outcome counts."""
        counts: dict[str, int] = {}
        a, d = self.dest.account, self.dest.name
        if is_paused(self.conn, a, d):
            return counts
        batches = 0
        while max_batches is None or batches < max_batches:
            ids = self.take(now.timestamp())
            if not ids:
                break
            batches += 1
            batch_counts: dict[str, int] = {}
            go_on = self._batch(ids, now, batch_counts)
            self._publish(batch_counts)
            for outcome, n in batch_counts.items():
                counts[outcome] = counts.get(outcome, 0) + n
            if not go_on:
                break
        self._schedule_next()
        return counts

    def _batch(self, ids: list[str], now: datetime, counts: dict[str, int]) -> bool:
        """One batch. False when the destination must stop (paused, daily limit)."""
        a, d = self.dest.account, self.dest.name
        raw = self.conn.hmget(self.k["pending"], ids)
        applied = self.conn.hmget(self.k["applied"], ids)
        digests = self.conn.hmget(self.k["digest"], ids)
        owned_raw = self.conn.hmget(self.k["owned"], ids)
        changes: list[Change] = []
        owned: dict[str, OwnedState] = {}
        for pid, item, done, digest, own in zip(ids, raw, applied, digests, owned_raw, strict=True):
            if item is None:
                self.conn.zrem(self.k["ready"], pid)
                continue
            change = Change.from_dict(json.loads(item))
            if done is not None and change.version <= int(done):
                self._drop(change)
                self._count(counts, "superseded")
                continue
            ledger = OwnedState.from_dict(json.loads(own)) if own else None
            if not change.erase and self._unchanged(change, ledger, digest):
                self._commit(change, ledger)
                self._count(counts, "unchanged")
                continue
            changes.append(change)
            owned[change.profile_id] = ledger or OwnedState()
        if not changes:
            return True
        if self.adapter is None:
            raise ConfigError(f"no adapter for destination {d}")
        try:
            results = self.adapter.apply(changes, owned)
        except AuthError as err:
            pause(self.conn, a, d, err.message, err.status, now)
            self._count(counts, "paused")
            return False
        except RateLimited as err:
            for change in changes:
                self._retry(change, err, now, counts)
            return False
        except TransientError as err:
            for change in changes:
                self._retry(change, err, now, counts)
            return True
        except PermanentError as err:
            for change in changes:
                self._dead(change, err, now, counts)
            return True
        except Exception as err:  # a defect or an answer nobody foresaw: the batch is not lost
            log.exception("sync batch failed", extra={"account": a, "destination": d})
            unexpected = TransientError(f"unexpected {type(err).__name__} in the adapter", code="unexpected")
            for change in changes:
                # retried with backoff like an outage; after the retry window it is a dead letter
                self._retry(change, unexpected, now, counts)
            return True
        by_id = {c.profile_id: c for c in changes}
        for result in results:
            done = by_id.pop(result.profile_id, None)
            if done is not None:
                self._record(done, result, now, counts)
        for left in by_id.values():  # an adapter that forgot a change: try it again later
            self._retry(left, TransientError("no result from the adapter", code="no_result"), now, counts)
        return True

    @staticmethod
    def _unchanged(change: Change, ledger: OwnedState | None, digest: bytes | None) -> bool:
        if ledger is None:
            # never sent, and nothing to send: enter → exit inside one batch window
            return not change.tags and not change.lists and all(v is None for v in change.fields.values())
        return digest is not None and digest.decode() == state_digest(change)

    def _record(self, change: Change, result: Result, now: datetime, counts: dict[str, int]) -> None:
        if result.status == DEFERRED:  # still pending and ready: the next batch takes it
            self._count(counts, DEFERRED)
            return
        if result.status == FAILED and result.error is not None:
            err = result.error
            if result.owned is not None and not change.erase:
                # part of the change took effect: what it set is the connector's own from now on,
                # and the contact no longer matches the digest of the last applied state
                pipe = self.conn.pipeline(transaction=True)
                pipe.hset(self.k["owned"], change.profile_id, json.dumps(result.owned.to_dict()))
                pipe.hdel(self.k["digest"], change.profile_id)
                pipe.execute()
            if isinstance(err, AdapterError) and err.retryable:
                self._retry(change, err, now, counts)
            else:
                self._dead(change, err, now, counts)
            return
        if change.erase:
            self._erased(change, result, now)
        self._commit(
            change, result.owned if result.status == APPLIED else None, keep_owned=result.status != APPLIED
        )
        self._count(counts, result.status)

    def _commit(self, change: Change, owned: OwnedState | None, keep_owned: bool = False) -> None:
        keys = list(self.k.values())
        if change.erase:
            owned_json, digest = "", ""
        elif keep_owned:
            current = self.conn.hget(self.k["owned"], change.profile_id)
            owned_json = current.decode() if current else ""
            digest = ""
        else:
            owned_json = json.dumps((owned or OwnedState()).to_dict())
            digest = state_digest(change)
        _run(self.conn, _COMMIT, keys, [change.profile_id, change.version, owned_json, digest])
        if change.erase:  # the ESP erased the contact: nothing of the person stays here
            forget(self.conn, self.dest.account, [self.dest.name], [change.profile_id])

    def _drop(self, change: Change) -> None:
        keys = [self.k["pending"], self.k["ready"], self.k["failing"]]
        _run(self.conn, _DROP, keys, [change.profile_id, change.version])

    def _retry(self, change: Change, err: Exception, now: datetime, counts: dict[str, int]) -> None:
        record = self._failing(change.profile_id)
        first = record.get("first_failed_at", now.timestamp())
        attempts = int(record.get("attempts", 0)) + 1
        describe = err.describe() if isinstance(err, AdapterError) else {"type": type(err).__name__}
        if now.timestamp() - first >= self.dest.retry_seconds:
            self._dead(change, err, now, counts, attempts=attempts, first=first)
            return
        wait = backoff(attempts, self.rng)
        if isinstance(err, RateLimited) and err.retry_after is not None:
            wait = max(wait, err.retry_after)
        at = now.timestamp() + wait
        record = {"first_failed_at": first, "attempts": attempts, "error": describe, "next_at": at}
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(self.k["failing"], change.profile_id, json.dumps(record))
        pipe.zadd(self.k["ready"], {change.profile_id: at}, xx=True)
        pipe.execute()
        self._count(counts, "retry")

    def _failing(self, profile_id: str) -> dict[str, Any]:
        raw = self.conn.hget(self.k["failing"], profile_id)
        return dict(json.loads(raw)) if raw else {}

    def _dead(
        self,
        change: Change,
        err: Exception,
        now: datetime,
        counts: dict[str, int],
        attempts: int | None = None,
        first: float | None = None,
    ) -> None:
        describe = err.describe() if isinstance(err, AdapterError) else {"type": type(err).__name__}
        payload = {
            "account": change.account,
            "destination": change.destination,
            "change": change.to_dict(),
            "error": describe,
            "attempts": attempts or 1,
            "first_failed_at": first,
        }
        reason = f"{describe.get('type')}: {describe.get('message') or ''}"[:300]
        self.dead.put(f"sync:{change.destination}", reason, payload, now, account=change.account)
        if change.erase:
            self._erased(change, Result(change.profile_id, change.version, FAILED, error=err), now)
        self._drop(change)
        self.conn.hdel(self.k["failing"], change.profile_id)  # a newer pending change starts afresh
        self._count(counts, "dead")
        log.warning(
            "change dead-lettered",
            extra={
                "account": change.account,
                "destination": change.destination,
                "error": describe.get("type"),
            },
        )

    def _erased(self, change: Change, result: Result, now: datetime) -> None:
        record = {
            "account": change.account,
            "destination": change.destination,
            "profile": profile_digest(change.account, change.profile_id),
            "at": clock.isoformat(now),
            "outcome": result.status,
            "note": result.note,
        }
        pipe = self.conn.pipeline(transaction=False)
        pipe.lpush("sync:erasures", json.dumps(record))
        pipe.ltrim("sync:erasures", 0, ERASURE_LOG_MAX - 1)
        length, _ = pipe.execute()
        count_dropped(self.conn, "sync_erasure_log", int(length) - ERASURE_LOG_MAX)

    def _schedule_next(self) -> None:
        first = self.conn.zrange(self.k["ready"], 0, 0, withscores=True)
        m = member(self.dest.account, self.dest.name)
        if first:
            self.conn.zadd("sync:due", {m: first[0][1]})
        else:
            self.conn.zrem("sync:due", m)

    @staticmethod
    def _count(counts: dict[str, int], outcome: str) -> None:
        counts[outcome] = counts.get(outcome, 0) + 1

    def _publish(self, counts: dict[str, int]) -> None:
        if not counts:
            return
        pipe = self.conn.pipeline(transaction=False)
        for outcome, n in counts.items():
            if outcome == "paused":  # counted by pause()
                continue
            pipe.hincrby("metrics:sync", f"{outcome}:{self.dest.account}", n)
        pipe.execute()

    def next_ready(self) -> float | None:
        first = self.conn.zrange(self.k["ready"], 0, 0, withscores=True)
        return float(first[0][1]) if first else None


# -----------------------------------------------------------------------------------------------
# jobs


_ADAPTERS: dict[tuple[str, str, str], Adapter] = {}
_ACCOUNTS: dict[str, tuple[float, Any]] = {}


def _account(settings: Settings, account_id: str) -> Account | None:
    # the worker's accounts: a file that became invalid keeps serving its last valid version
    from connector.worker import accounts

    conn = redis_conn.connection(settings.queue_redis_url)
    return accounts.CACHE.get(settings.config_dir, lambda: conn).get(account_id)


def default_adapter(conn: redis.Redis, destination: Destination) -> Adapter:
    fingerprint = json.dumps(
        [destination.type, destination.api_key_env, dict(destination.options)], default=str
    )
    cache_key = (destination.account, destination.name, fingerprint)
    adapter = _ADAPTERS.get(cache_key)
    if adapter is None:
        limiter = RateLimiter(conn, clock=lambda: clock.now().timestamp(), sleep=time.sleep)
        adapter = build_adapter(destination, limiter, clock=lambda: clock.now().timestamp(), sleep=time.sleep)
        _ADAPTERS[cache_key] = adapter
    return adapter


def flush_job(
    account_id: str,
    destination_name: str,
    *,
    conn: redis.Redis | None = None,
    factory: AdapterFactory | None = None,
    sleep: Callable[[float], None] = time.sleep,
    time_budget: float = JOB_TIME_BUDGET_SECONDS,
) -> dict[str, int]:
    """RQ job: flush one destination until nothing is ready within its batch delay."""
    settings = Settings.from_env()
    conn = conn or redis_conn.connection(settings.queue_redis_url)
    armed = key(account_id, destination_name, "armed")
    account = _account(settings, account_id)
    dest = destinations(account).get(destination_name) if account else None
    if dest is None:
        conn.delete(armed)
        log.warning(
            "sync for an unknown destination", extra={"account": account_id, "destination": destination_name}
        )
        return {}
    lock = key(account_id, destination_name, "lock")
    token = uuid.uuid4().hex
    if not conn.set(lock, token, nx=True, px=LOCK_TTL_MS):
        return {}  # another worker is flushing this destination; it picks these up
    totals: dict[str, int] = {}
    started = clock.monotonic()
    try:
        try:
            adapter = factory(dest) if factory else default_adapter(conn, dest)
        except ConfigError as err:
            pause(conn, account_id, destination_name, err.reason, None, clock.now())
            conn.delete(armed)
            return {"paused": 1}
        flusher = Flusher(conn, dest, adapter)
        while True:
            conn.expire(armed, ARMED_TTL_SECONDS)
            # one batch at a time, so the time budget is checked between batches
            for outcome, n in flusher.flush(clock.now(), max_batches=1).items():
                totals[outcome] = totals.get(outcome, 0) + n
            nxt = flusher.next_ready()
            now = clock.now().timestamp()
            horizon = now + dest.batch_delay_seconds
            if is_paused(conn, account_id, destination_name):
                conn.delete(armed)  # resume() arms it again; the changes keep waiting
                break
            if nxt is None or nxt > horizon:
                if _run(conn, _RELEASE, [flusher.k["ready"], armed], [horizon]):
                    break
                continue
            if clock.monotonic() - started > time_budget:
                conn.delete(armed)
                arm(conn, account_id, destination_name)
                break
            sleep(max(0.0, nxt - now))
    finally:
        if conn.get(lock) == token.encode():
            conn.delete(lock)
    return totals


def fire_due(conn: redis.Redis, now: datetime) -> int:
    """Scheduler task: arm a flush for every destination whose retries or delays have come due."""
    fired = 0
    for raw in conn.zrangebyscore("sync:due", "-inf", now.timestamp()):
        a, _, d = raw.decode().partition(SEP)
        if is_paused(conn, a, d):
            continue
        if arm(conn, a, d):
            fired += 1
    return fired


# -----------------------------------------------------------------------------------------------
# inspection


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


# -----------------------------------------------------------------------------------------------
# replay


def replay(conn: redis.Redis, payload: Mapping[str, Any], now: datetime) -> str:
    """Put a dead-lettered change back in the queue: ``queued``, or ``superseded`` when a newer
    version of that contact is pending or already applied (the newer state wins)."""
    change = Change.from_dict(payload["change"])
    a, d = change.account, change.destination
    conn.hdel(key(a, d, "failing"), change.profile_id)
    if not enqueue_change(conn, change, now.timestamp()):
        return "superseded"
    return "queued"
