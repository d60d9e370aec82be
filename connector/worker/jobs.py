"""RQ jobs. ``drain_events`` consumes one shard's stream in batches (hundreds of events per job).

Consumption uses a Redis consumer group, so a job that dies mid-batch leaves its entries pending;
the next drain of that shard claims them back (XAUTOCLAIM) after ``CLAIM_IDLE_MS``. Entries
delivered more than ``MAX_DELIVERIES`` times go to the dead letters instead of blocking the shard.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from datetime import datetime

import redis

from connector import clock, redis_conn
from connector.errors import UndecodableItem
from connector.event import Event, load_event
from connector.ingest.queue import PUMP_TTL_SECONDS, STREAM_FIELD, EventQueue, pump_key, stream_key
from connector.settings import Settings
from connector.sync.deadletters import DeadLetters

log = logging.getLogger(__name__)

GROUP = "workers"
BATCH_SIZE = 500
TIME_BUDGET_SECONDS = 10.0
CLAIM_IDLE_MS = 60_000
MAX_DELIVERIES = 5

_RELEASE = """
if redis.call('XLEN', KEYS[1]) == 0 then
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""

Processor = Callable[[Sequence[Event], datetime], None]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def ensure_group(conn: redis.Redis, shard: int) -> None:
    try:
        conn.xgroup_create(stream_key(shard), GROUP, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def _default_processor() -> Processor:
    from connector.worker.pipeline import process

    return process


def drain_events(
    shard: int,
    *,
    batch_size: int = BATCH_SIZE,
    time_budget: float = TIME_BUDGET_SECONDS,
    processor: Processor | None = None,
    conn: redis.Redis | None = None,
) -> int:
    """Apply stored events of one shard until it is empty or the time budget is spent."""
    settings = Settings.from_env()
    conn = conn or redis_conn.connection(settings.queue_redis_url)
    processor = processor or _default_processor()
    ensure_group(conn, shard)
    consumer = consumer_name()
    dead = DeadLetters(conn)
    started = clock.monotonic()
    total = 0
    key = stream_key(shard)
    while True:
        conn.expire(pump_key(shard), PUMP_TTL_SECONDS)
        entries = _claim_stale(conn, key, consumer, batch_size)
        if not entries:
            reply = conn.xreadgroup(GROUP, consumer, {key: ">"}, count=batch_size)
            entries = reply[0][1] if reply else []
        if not entries:
            released = conn.eval(_RELEASE, 2, key, pump_key(shard))
            if released or clock.monotonic() - started > time_budget:
                break
            continue
        total += _apply(conn, dead, key, entries, processor)
        if clock.monotonic() - started > time_budget:
            EventQueue(conn, settings.event_shards).enqueue_drain(shard)
            break
    return total


def _claim_stale(conn: redis.Redis, key: str, consumer: str, count: int) -> list[tuple[bytes, dict]]:
    reply = conn.xautoclaim(key, GROUP, consumer, min_idle_time=CLAIM_IDLE_MS, start_id="0-0", count=count)
    return list(reply[1]) if reply and len(reply) > 1 else []


def _apply(
    conn: redis.Redis,
    dead: DeadLetters,
    key: str,
    entries: list[tuple[bytes, dict]],
    processor: Processor,
) -> int:
    now = clock.now()
    events: list[Event] = []
    ids = [entry_id for entry_id, _ in entries]
    poisoned = _over_delivered(conn, key, ids)
    for entry_id, fields in entries:
        raw = fields.get(STREAM_FIELD.encode(), b"")
        if entry_id in poisoned:
            dead.put("events", f"delivered more than {MAX_DELIVERIES} times without success", _text(raw), now)
            continue
        try:
            events.append(load_event(raw))
        except UndecodableItem as err:
            log.warning("undecodable queue item", extra={"entry": entry_id.decode(), "reason": str(err)})
            dead.put("events", str(err), _text(raw), now)
    if events:
        processor(events, now)
    pipe = conn.pipeline(transaction=False)
    pipe.xack(key, GROUP, *ids)
    pipe.xdel(key, *ids)
    pipe.execute()
    return len(events)


def _over_delivered(conn: redis.Redis, key: str, ids: list[bytes]) -> set[bytes]:
    if not ids:
        return set()
    pending = conn.xpending_range(key, GROUP, min=ids[0], max=ids[-1], count=len(ids))
    return {p["message_id"] for p in pending if int(p["times_delivered"]) > MAX_DELIVERIES}


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


REEVALUATE_QUEUE = "reevaluate"


BACKFILL_QUEUE = "backfill"


def reevaluate(
    account_id: str,
    profile_ids: list[str],
    due_scores: list[float] | None = None,
    progress_key: str | None = None,
) -> int:
    """Re-evaluate profiles: those whose results change because time passed (from the due index),
    or every profile of an account after its rules were published (``progress_key`` counts them)."""
    from connector.worker import due
    from connector.worker.evaluation import evaluate_touched

    evaluate_touched(account_id, set(profile_ids), clock.now())
    if progress_key:
        conn = redis_conn.connection(Settings.from_env().queue_redis_url)
        conn.hincrby(progress_key, "done", len(profile_ids))
    if due_scores:
        # measured after the whole chunk was evaluated: the lateness a person's segment really saw
        done = clock.now().timestamp()
        due.observe_lateness(
            redis_conn.connection(Settings.from_env().queue_redis_url),
            [done - score for score in due_scores],
        )
    return len(profile_ids)
