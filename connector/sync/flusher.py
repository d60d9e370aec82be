"""The flusher: sends the ready changes of one (account, destination) in batches through its adapter,
records what was applied (version guard, ownership ledger, digest), retries with backoff, and parks
what cannot succeed in the dead letters."""

from __future__ import annotations

import json
import logging
import os
import random
from collections.abc import Callable
from dataclasses import replace
from datetime import datetime
from typing import Any

import redis

from adapters.base import Adapter
from adapters.change import APPLIED, DEFERRED, FAILED, Change, OwnedState, Result
from adapters.errors import AdapterError, AuthError, PermanentError, RateLimited, TransientError
from connector import clock, livefeed
from connector.destinations import Destination
from connector.errors import ConfigError, file_name_shown
from connector.profiles.bounds import count_dropped
from connector.sync import applied
from connector.sync.applied import pack_pid
from connector.sync.control import applied_states, is_paused, pause
from connector.sync.deadletters import DeadLetters
from connector.sync.keys import (
    BACKOFF_INITIAL,
    BACKOFF_MAX,
    DIGEST_BYTES,
    ERASURE_LOG_MAX,
    Applied,
    contact_key,
    key,
    member,
    profile_digest,
    run_script,
    short_digest,
    sync_names,
)
from connector.sync.submit import forget

log = logging.getLogger(__name__)

_COMMIT = (
    applied.WRITE
    + """
-- applied: KEYS pending, ready, applied, owned, digest, failing; ARGV pid, version, state tail
-- (see keys.Applied), packed pid; the stored version never goes back; the ledger and digest are
-- replaced
local found = ap_find(KEYS[3], ARGV[1], ARGV[4])
local version = ARGV[2]
if found.v then
  local was = string.match(found.v, '^%-?%d+')
  if was and tonumber(was) > tonumber(version) then version = was end
end
ap_put(KEYS[3], ARGV[1], ARGV[4], found, version .. ARGV[3])
redis.call('HDEL', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[5], ARGV[1])
redis.call('HDEL', KEYS[6], ARGV[1])
local pending = redis.call('HGET', KEYS[1], ARGV[1])
if pending and tonumber(cjson.decode(pending)['version']) <= tonumber(ARGV[2]) then
  redis.call('HDEL', KEYS[1], ARGV[1])
  redis.call('ZREM', KEYS[2], ARGV[1])
  return 1
end
return 0
"""
)

_OWN = (
    applied.WRITE
    + """
-- part of a change took effect: KEYS applied, owned, digest; ARGV pid, state tail (no digest),
-- packed pid
local found = ap_find(KEYS[1], ARGV[1], ARGV[3])
local version = found.v and string.match(found.v, '^%-?%d+') or '-1'
ap_put(KEYS[1], ARGV[1], ARGV[3], found, version .. ARGV[2])
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
"""
)

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


def mapping_reason(mapping: dict[str, Any]) -> str:
    """``acme/mc segment vip: static segment 99999 (acme.yaml: destinations.mc.segments.vip.lists[0])``:
    a dead letter's mapping in words (the ESP's refusal follows it in the reason)."""
    segments = mapping.get("segments") or []
    who = f"{mapping['account']}/{mapping['destination']}"
    if segments:
        who += f" segment{'s' if len(segments) > 1 else ''} {', '.join(segments)}"
    obj = mapping["object"]
    file = os.path.basename(str(mapping.get("file") or "")) or "the account file"
    paths = mapping.get("paths") or []
    where = f"{file}: {', '.join(paths)}" if paths else f"named by no mapping of {file} now"
    return f"{who}: {obj['kind']} {obj['id']} ({where}) refused by {mapping.get('type') or 'the ESP'}"


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
        self.live: livefeed.SyncFeed | None = None  # set per flush while the account is watched
        a, d = destination.account, destination.name
        self.k = {
            what: key(a, d, what) for what in ("pending", "ready", "applied", "owned", "digest", "failing")
        }

    def take(self, now: float) -> list[str]:
        """The next batch: nothing until the first change is ready (it has waited its batch delay),
        then every change due within one batch delay goes with it, up to the batch size; a full
        batch goes at once. So while changes keep coming a destination gets one batch per batch
        delay rather than one per round trip: a small batch costs as many requests as a large one."""
        size = self.dest.batch_size
        soon = self.conn.zrangebyscore(
            self.k["ready"], "-inf", now + self.dest.batch_delay_seconds, start=0, num=size, withscores=True
        )
        if not soon or (soon[0][1] > now and len(soon) < size):
            return []
        return [member.decode() for member, _ in soon]

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
            if not batches:  # one EXISTS per flush: its batches' outcomes go to the live view
                self.live = livefeed.SyncFeed.open(self.conn, a, d)
            batches += 1
            batch_counts: dict[str, int] = {}
            go_on = self._batch(ids, now, batch_counts)
            self._publish(batch_counts)
            if self.live is not None:
                self.live.publish(now)
            for outcome, n in batch_counts.items():
                counts[outcome] = counts.get(outcome, 0) + n
            if not go_on:
                break
        self._schedule_next(now.timestamp())
        return counts

    def _batch(self, ids: list[str], now: datetime, counts: dict[str, int]) -> bool:
        """One batch. False when the destination must stop (paused, daily limit)."""
        changes, owned = self._sendable(ids, counts)
        if not changes:
            return True
        if self.adapter is None:
            raise ConfigError(f"no adapter for destination {self.dest.name}")
        moved = self._moved(changes, owned)
        if moved:
            changes, go_on = self._leave(self.adapter, moved, changes, now, counts)
            if not changes or not go_on:
                return go_on
        try:
            results = self.adapter.apply(changes, owned)
        except Exception as err:  # sorted out by _failed: nothing of the batch is lost
            return self._failed(changes, err, now, counts)
        by_id = {c.profile_id: c for c in changes}
        for result in results:
            done = by_id.pop(result.profile_id, None)
            if done is not None:
                self._record(done, result, now, counts)
        for left in by_id.values():  # an adapter that forgot a change: try it again later
            self._retry(left, TransientError("no result from the adapter", code="no_result"), now, counts)
        return True

    def _sendable(self, ids: list[str], counts: dict[str, int]) -> tuple[list[Change], dict[str, OwnedState]]:
        """The pending changes of these contacts that need the ESP, with their ownership ledgers;
        superseded ones are dropped and unchanged ones recorded as applied."""
        raw = self.conn.hmget(self.k["pending"], ids)
        states = applied_states(self.conn, self.dest.account, self.dest.name, ids)
        changes: list[Change] = []
        owned: dict[str, OwnedState] = {}
        for pid, item in zip(ids, raw, strict=True):
            if item is None:
                self.conn.zrem(self.k["ready"], pid)
                continue
            change = Change.from_dict(json.loads(item))
            state = states.get(pid, Applied())
            if state.version is not None and change.version <= state.version:
                self._drop(change)
                self._count(counts, "superseded")
            elif not change.erase and self._unchanged(change, state):
                self._commit(change, state.owned)
                self._count(counts, "unchanged")
            else:
                changes.append(change)
                owned[change.profile_id] = state.owned or OwnedState()
        return changes, owned

    def _moved(
        self, changes: list[Change], owned: dict[str, OwnedState]
    ) -> dict[str, tuple[Change, OwnedState]]:
        """Changes whose contact's state was applied under another of the person's addresses (an
        email change, a merge): per profile, the change that takes the connector's tags, lists and
        fields off the contact of that address, and its ledger. The change itself then starts from
        an empty ledger (the ESP's id it holds is the other contact's). An address that is no longer
        the person's is not written to: its contact keeps what the connector set (logged)."""
        moved: dict[str, tuple[Change, OwnedState]] = {}
        if self.dest.type == "webhook":  # a webhook's receiver knows the person by profile id
            return moved
        for change in changes:
            old = owned[change.profile_id]
            if change.erase or old.email_key is None or change.email is None:
                continue
            if old.email_key == contact_key(change.email):
                continue
            # an address change is no segment change: the segments stay (no exit and entry events)
            owned[change.profile_id] = OwnedState(segments=old.segments)
            if not (old.tags or old.lists or old.fields):
                continue
            earlier = next((e for e in change.other_emails if contact_key(e) == old.email_key), None)
            if earlier is None:
                log.warning(
                    "contact moved from an address that is no longer the person's; its tags stay there",
                    extra={"account": change.account, "destination": change.destination},
                )
                continue
            leave = Change(
                account=change.account,
                destination=change.destination,
                profile_id=change.profile_id,
                version=change.version,
                email=earlier,
                fields={name: None for name in old.fields},
                segments=old.segments,
            )
            moved[change.profile_id] = (leave, old)
        return moved

    def _leave(
        self,
        adapter: Adapter,
        moved: dict[str, tuple[Change, OwnedState]],
        changes: list[Change],
        now: datetime,
        counts: dict[str, int],
    ) -> tuple[list[Change], bool]:
        """Take the connector's state off the contacts the people of ``moved`` left (one request
        batch), then the changes to send: those whose leaving is done, and every other one. A leaving
        that went through is recorded at once (the ledger then names the new address, so a retry of
        the change does not leave again). One the ESP refuses for good (the earlier contact deleted,
        archived, forgotten) is given up, logged and counted, and the change goes on: the person's
        new contact is never held back by the old one. One that may succeed later (an outage, a
        rate limit) holds its change, retried with the ledger of the earlier contact kept."""
        leaves = [leave for leave, _ in moved.values()]
        by_pid = {c.profile_id: c for c in changes}
        try:
            results = adapter.apply(leaves, {pid: old for pid, (_, old) in moved.items()})
        except Exception as err:  # as a failed batch: the moved changes wait, the others go on
            go_on = self._failed([by_pid[pid] for pid in moved], err, now, counts)
            return [c for c in changes if c.profile_id not in moved], go_on
        forgotten = TransientError("no result from the adapter", code="no_result")
        held: set[str] = set(moved)
        for result in results:
            pid = result.profile_id
            if pid not in moved or result.status == DEFERRED:  # pending: a later batch leaves first
                continue
            problem = result.error or forgotten
            if result.status == FAILED and isinstance(problem, AdapterError) and problem.retryable:
                if result.owned is not None:  # what is still set on the earlier contact
                    self._own(pid, replace(result.owned, email_key=moved[pid][1].email_key))
                self._retry(by_pid[pid], problem, now, counts)
                continue
            held.discard(pid)
            if result.status == FAILED:
                self._count(counts, "earlier_contact_refused")
                log.warning(
                    "the earlier contact of a person whose address changed was refused; its tags stay",
                    extra={
                        "account": self.dest.account,
                        "destination": self.dest.name,
                        "error": type(problem).__name__,
                    },
                )
            else:
                self._count(counts, "left_earlier_contact")
            new_key = contact_key(by_pid[pid].email or "")
            self._own(pid, OwnedState(segments=moved[pid][1].segments, email_key=new_key))
        for pid in held - {r.profile_id for r in results}:
            self._retry(by_pid[pid], forgotten, now, counts)
        return [c for c in changes if c.profile_id not in held], True

    def _own(self, profile_id: str, owned: OwnedState) -> None:
        """Store a contact's ledger only (part of a change took effect)."""
        keys = [self.k["applied"], self.k["owned"], self.k["digest"]]
        tail = self._tail(Applied(owned=owned))
        run_script(self.conn, _OWN, keys, [profile_id, tail, pack_pid(profile_id)])

    def _failed(self, changes: list[Change], err: Exception, now: datetime, counts: dict[str, int]) -> bool:
        """The whole batch failed; False when the destination must stop."""
        if isinstance(err, AuthError):
            pause(self.conn, self.dest.account, self.dest.name, err.message, err.status, now)
            self._count(counts, "paused")
            if self.live is not None:
                for change in changes:
                    self.live.note(change, "failed", f"destination paused: {err.message}")
            return False
        if isinstance(err, PermanentError):
            for change in changes:
                self._dead(change, err, now, counts)
            return True
        if not isinstance(err, TransientError):  # a defect or an answer nobody foresaw
            log.exception(
                "sync batch failed", extra={"account": self.dest.account, "destination": self.dest.name}
            )
            # retried with backoff like an outage; after the retry window it is a dead letter
            err = TransientError(f"unexpected {type(err).__name__} in the adapter", code="unexpected")
        for change in changes:
            self._retry(change, err, now, counts)
        return not isinstance(err, RateLimited)

    @staticmethod
    def _unchanged(change: Change, state: Applied) -> bool:
        if state.owned is None:
            # never sent, and nothing to send: enter → exit inside one batch window (segments count:
            # a webhook destination's change carries nothing else)
            nothing = not change.tags and not change.lists and not change.segments
            return nothing and all(v is None for v in change.fields.values())
        return state.digest is not None and state.digest[:DIGEST_BYTES] == short_digest(change)

    def _record(self, change: Change, result: Result, now: datetime, counts: dict[str, int]) -> None:
        if result.status == DEFERRED:  # still pending and ready: the next batch takes it
            self._count(counts, DEFERRED)
            return
        if result.status == FAILED and result.error is not None:
            err = result.error
            if result.owned is not None and not change.erase:
                # part of the change took effect: what it set is the connector's own from now on,
                # and the contact no longer matches the digest of the last applied state
                self._own(change.profile_id, _keyed(result.owned, change))
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
        if self.live is not None:
            self.live.note(change, result.status, result.note)

    def _tail(self, state: Applied) -> bytes:
        scope = f"{self.dest.account}:{self.dest.name}"
        # the batch read the applied states first, which compared the dictionary's generation
        return state.tail(sync_names(self.conn).codes(scope, state.names(), checked=True))

    def _commit(self, change: Change, owned: OwnedState | None, keep_owned: bool = False) -> None:
        keys = list(self.k.values())
        if change.erase:
            state = Applied()
        elif keep_owned:
            current = applied_states(self.conn, self.dest.account, self.dest.name, [change.profile_id])
            state = Applied(owned=current.get(change.profile_id, Applied()).owned)
        else:
            state = Applied(digest=short_digest(change), owned=_keyed(owned or OwnedState(), change))
        args = [change.profile_id, change.version, self._tail(state), pack_pid(change.profile_id)]
        run_script(self.conn, _COMMIT, keys, args)
        if change.erase:  # the ESP erased the contact: nothing of the person stays here
            forget(self.conn, self.dest.account, [self.dest.name], [change.profile_id])

    def _drop(self, change: Change) -> None:
        keys = [self.k["pending"], self.k["ready"], self.k["failing"]]
        run_script(self.conn, _DROP, keys, [change.profile_id, change.version])

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
            wait = max(wait, err.retry_after)  # a finite number: RateLimited holds no other
        # never past the retry window: the last attempt is at its end, then the dead letter
        at = min(now.timestamp() + wait, first + self.dest.retry_seconds)
        record = {"first_failed_at": first, "attempts": attempts, "error": describe, "next_at": at}
        pipe = self.conn.pipeline(transaction=True)
        pipe.hset(self.k["failing"], change.profile_id, json.dumps(record))
        pipe.zadd(self.k["ready"], {change.profile_id: at}, xx=True)
        pipe.execute()
        self._count(counts, "retry")
        if self.live is not None:
            self.live.note(change, "failed", describe, retry_at=at)

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
        mapping = self._mapping(change, err)
        if mapping is not None:  # the ESP refused an object the mapping names: say which, and where
            payload["mapping"] = mapping
            reason = f"{mapping_reason(mapping)}: {reason}"[:700]
        self.dead.put(
            f"sync:{change.destination}",
            reason,
            payload,
            now,
            account=change.account,
            person=change.profile_id,
        )
        if change.erase:
            self._erased(change, Result(change.profile_id, change.version, FAILED, error=err), now)
        self._drop(change)
        self.conn.hdel(self.k["failing"], change.profile_id)  # a newer pending change starts afresh
        self._count(counts, "dead")
        if self.live is not None:
            self.live.note(change, "dead_lettered", describe)
        log.warning(
            "change dead-lettered",
            extra={
                "account": change.account,
                "destination": change.destination,
                "error": describe.get("type"),
            },
        )

    def _mapping(self, change: Change, err: Exception) -> dict[str, Any] | None:
        """The mapping behind an error about one ESP object (``AdapterError.target``): the
        account, destination, segments, the object and where the account file names it."""
        target = err.target if isinstance(err, AdapterError) else None
        if target is None:
            return None
        kind, object_id = target
        places = self.dest.where(kind, object_id, change.segments)
        return {
            "account": self.dest.account,
            "destination": self.dest.name,
            "type": self.dest.type,
            "object": {"kind": kind, "id": object_id},
            "segments": sorted({p.segment for p in places if p.segment}),
            "file": file_name_shown(self.dest.file),  # its name in the config directory, never its path
            "paths": [p.path for p in places],
        }

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

    def _schedule_next(self, now: float) -> None:
        pipe = self.conn.pipeline(transaction=False)
        pipe.zrange(self.k["ready"], 0, 0, withscores=True)
        pipe.zrangebyscore(self.k["ready"], "+inf", "+inf")
        first, never = pipe.execute()
        if never:  # no instant (stored so by an older release): due now, like any other retry
            self.conn.zadd(self.k["ready"], {pid: now for pid in never}, xx=True)
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


def _keyed(owned: OwnedState, change: Change) -> OwnedState:
    """The ledger, marked with the address the change was applied under."""
    return replace(owned, email_key=contact_key(change.email)) if change.email else owned
