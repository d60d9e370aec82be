"""Durable hand-off from the receiver to the workers.

A request's events are deduplicated and appended to a Redis stream in one Lua script, so a
request is acknowledged only once its events are in Redis, and a duplicate is never stored twice.
Workers consume the streams in batches: the script raises a per-shard "pump" flag and, when the
flag was not already up, the web process enqueues one RQ job that drains that shard. There is no
RQ job per webhook.

Keys (queue Redis):
  ``dd:{account}:{event_id}``   dedupe marker (the event id is a digest: no identifier), TTL = the
                                account's dedupe window; for privileged events (erasure and access
                                requests) ``PRIVILEGED_DEDUPE_SECONDS``, so a replayed request stays
                                a duplicate; erasures keep the markers
  ``q:events:{shard}``          stream of stored events (field ``e`` = Event JSON)
  ``q:pump:{shard}``            flag: a drain job for this shard is queued or running; the value is
                                the instant (epoch seconds) it was raised or last heard from, and the
                                running drain refreshes it every ``HEARTBEAT_SECONDS``, so a killed
                                worker's flag is stale after ``PUMP_TTL_SECONDS``
  ``metrics:ingest``            hash of counters (``accepted:{account}``, ``duplicate:{account}``)
  ``live:watch:{account}``      present while someone watches the account's live events (the stream
                                endpoint, connector.ops.live, keeps it alive with a short TTL)

The script also says whether someone watches the account (one ``EXISTS``):
:attr:`IngestResult.watched`. Only then does the web process publish the delivery on the live
stream (connector.ops.live, which gathers a moment's deliveries into one write); with nobody
watching, the live view costs the request that ``EXISTS`` and nothing else.
"""

from __future__ import annotations

import hashlib
import logging
import os
import threading
import uuid
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis
from rq import Queue

from connector import clock
from connector.errors import StoreUnavailable
from connector.event import PRIVILEGED_TYPES, Event

log = logging.getLogger(__name__)

EVENTS_QUEUE = "events"
PUMP_TTL_SECONDS = 5
HEARTBEAT_SECONDS = 1.0
STREAM_FIELD = "e"
# Erasure and access requests are remembered for a year: the same signed request replayed later
# (a ``shop/redact`` wiping the people who came after it) is a duplicate, not a new request.
PRIVILEGED_DEDUPE_SECONDS = 365 * 24 * 3600

_INGEST = """
-- ARGV[1] is the account's dedupe window; each event carries its marker's own (key, ms, event).
-- The reply ends with whether KEYS[4] (the account's live watcher key) exists, and the pump flag.
local account = ARGV[2]
local raised_at = ARGV[3]
local added = 0
local flags = {}
for i = FIRST_EVENT_ARG, #ARGV, 3 do
  if redis.call('SET', ARGV[i], '1', 'NX', 'PX', ARGV[i + 1]) then
    redis.call('XADD', KEYS[1], '*', 'e', ARGV[i + 2])
    added = added + 1
    flags[#flags + 1] = 1
  else
    flags[#flags + 1] = 0
  end
end
local pump = 0
if added > 0 then
  redis.call('HINCRBY', KEYS[3], 'accepted:' .. account, added)
  if redis.call('SET', KEYS[2], raised_at, 'NX', 'EX', ARGV_PUMP_TTL) then pump = 1 end
end
local dup = ((#ARGV - FIRST_EVENT_ARG + 1) / 3) - added
if dup > 0 then redis.call('HINCRBY', KEYS[3], 'duplicate:' .. account, dup) end
flags[#flags + 1] = redis.call('EXISTS', KEYS[4])
flags[#flags + 1] = pump
return flags
""".replace("ARGV_PUMP_TTL", str(PUMP_TTL_SECONDS))
_INGEST = _INGEST.replace("FIRST_EVENT_ARG", "4")


def stream_key(shard: int) -> str:
    return f"q:events:{shard}"


def pump_key(shard: int) -> str:
    return f"q:pump:{shard}"


def live_watch_key(account: str) -> str:
    """Present while someone watches the account's live events; its TTL is kept short."""
    return f"live:watch:{account}"


def dedupe_key(account: str, event_id: str) -> str:
    return f"dd:{account}:{event_id}"


def dedupe_seconds(event: Event, dedupe_ttl_seconds: int) -> int:
    """How long an event's dedupe marker lives: the account's window, a year for privileged events."""
    if event.type in PRIVILEGED_TYPES:
        return max(dedupe_ttl_seconds, PRIVILEGED_DEDUPE_SECONDS)
    return dedupe_ttl_seconds


class OwnConnectionScript:
    """A Lua script run with EVALSHA on a connection this thread keeps for itself.

    One round trip per call, without the client's per-call pool checkout (a readiness poll and
    bookkeeping on every command), which costs more CPU than the script itself on the ingest path.
    A stale connection (the server restarted) is replaced and the call retried once; a server
    that does not know the script gets it loaded first. Safe to retry: the ingest script is
    idempotent (dedupe markers), a replay only turns accepted events into duplicates.
    """

    def __init__(self, client: redis.Redis, source: str) -> None:
        self.pool = client.connection_pool
        self.source = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()
        self._local = threading.local()

    def _connection(self) -> Any:
        conn = getattr(self._local, "conn", None)
        if conn is None or self._local.pid != os.getpid():
            conn = self.pool.connection_class(**self.pool.connection_kwargs)
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    def _run(self, conn: Any, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        try:
            conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return conn.read_response()
        except redis.exceptions.NoScriptError:
            conn.send_command("SCRIPT", "LOAD", self.source)
            conn.read_response()
            conn.send_command("EVALSHA", self.sha, len(keys), *keys, *args)
            return conn.read_response()

    def __call__(self, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        conn = self._connection()
        try:
            return self._run(conn, keys, args)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
        try:
            return self._run(conn, keys, args)
        except (redis.ConnectionError, redis.TimeoutError):
            conn.disconnect()
            raise


@dataclass(frozen=True)
class IngestResult:
    accepted: int
    duplicates: int
    shard: int
    # someone watches the account's live events (the watcher key was there when the events were stored)
    watched: bool = False


class EventQueue:
    def __init__(self, conn: redis.Redis, shards: int) -> None:
        self.conn = conn
        self.shards = shards
        self._script = OwnConnectionScript(conn, _INGEST)
        self._rq = Queue(EVENTS_QUEUE, connection=conn)

    def shard_for(self, account: str, events: Sequence[Event]) -> int:
        ids = events[0].identities if events else {}
        route = ids.get("user_id") or ids.get("anonymous_id") or ids.get("email")
        route = route or min(ids.values(), default="")  # a sender-specific id (Shopify, Klaviyo, ...)
        return zlib.crc32(f"{account}\x1f{route}".encode()) % self.shards

    def ingest(
        self,
        account: str,
        events: Sequence[Event],
        dedupe_ttl_seconds: int,
        now: datetime | None = None,
    ) -> IngestResult:
        """Store new events durably; duplicates (by event id, per account) are skipped. ``now``:
        the instant the request was received (the clock's when not given), the pump flag's value."""
        if not events:
            return IngestResult(0, 0, 0)
        shard = self.shard_for(account, events)
        args: list[str | int] = [
            dedupe_ttl_seconds * 1000,
            account,
            repr((clock.now() if now is None else now).timestamp()),
        ]
        for event in events:
            args.append(dedupe_key(account, event.event_id))
            args.append(dedupe_seconds(event, dedupe_ttl_seconds) * 1000)
            args.append(event.to_json())
        keys = [
            stream_key(shard),
            pump_key(shard),
            "metrics:ingest",
            live_watch_key(account),
        ]
        try:
            flags = self._script(keys, args)
        except redis.RedisError as err:
            raise StoreUnavailable(f"queue store unavailable: {type(err).__name__}") from err
        if flags[-1]:
            # Only the request that raised the shard's pump flag pays for an RQ enqueue.
            try:
                self.enqueue_drain(shard)
            except redis.RedisError as err:
                # The events are stored: acknowledge them. The flag is stale after PUMP_TTL_SECONDS
                # and the scheduler re-arms the shard then.
                log.warning("drain enqueue failed", extra={"shard": shard, "error": type(err).__name__})
        accepted = sum(int(f) for f in flags[:-2])
        return IngestResult(
            accepted=accepted, duplicates=len(events) - accepted, shard=shard, watched=bool(flags[-2])
        )

    def restore(self, event: Event) -> int:
        """Put a stored event back on its shard's stream as it is, without the dedupe check (its
        marker is there: it was accepted once), and make sure a drain follows; returns the shard.
        A dead-lettered event replayed (``connector dlq replay --kind events``)."""
        shard = self.shard_for(event.account, [event])
        self.conn.xadd(stream_key(shard), {STREAM_FIELD: event.to_json()})
        self.enqueue_drain(shard)
        return shard

    def enqueue_drain(self, shard: int) -> str:
        """Enqueue a drain of ``shard``; returns its job id.

        Every drain has its own job id: RQ deletes a finished job's hash (``result_ttl=0``) when it
        has finished the job, after the drain released the pump flag, so a drain enqueued in that
        gap under a shared id would be deleted with it and the shard would wait for the flag to go
        stale."""
        job_id = f"drain-events-{shard}-{uuid.uuid4().hex}"
        self._rq.enqueue(
            "connector.worker.jobs.drain_events",
            shard,
            job_id=job_id,
            result_ttl=0,
            failure_ttl=24 * 3600,
        )
        return job_id

    def pending(self) -> dict[int, int]:
        pipe = self.conn.pipeline(transaction=False)
        for shard in range(self.shards):
            pipe.xlen(stream_key(shard))
        return {shard: int(n) for shard, n in enumerate(pipe.execute())}

    def read_stored(self, shard: int, count: int = 100) -> list[tuple[str, bytes]]:
        """The oldest stored items of a shard (inspection; does not consume)."""
        rows = self.conn.xrange(stream_key(shard), count=count)
        return [(mid.decode(), fields[STREAM_FIELD.encode()]) for mid, fields in rows]
