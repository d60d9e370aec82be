"""The scheduler process: wakes every ``TICK_SECONDS`` and

* re-arms the drain of any event shard that holds work (unread entries, entries a dead worker left
  pending, a failed batch whose backoff is over) and has no live pump: no pump flag, or one whose
  heartbeat is older than ``PUMP_TTL_SECONDS`` (a web process that died between storing and
  enqueueing, a worker killed mid-batch);
* enqueues the re-evaluation of every profile whose ``next_due`` has come (connector/due.py), and
  sleeps only until the next due instant, so time-based transitions fire when they fall due;
* arms the flush of every destination whose retry backoff has come due (connector/sync.py);
* runs every registered periodic task (``TASKS``: the daily training of the predictions, the
  overlaps of the segments every ten minutes, the erasures left unfinished by an interruption, the
  state of every profile sent again when an account's destination mappings changed).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

import redis
from rq import Queue

from connector import clock
from connector import runtime as process_runtime
from connector.ingest.queue import PUMP_TTL_SECONDS, EventQueue, pump_key, stream_key
from connector.predict import jobs as predict_jobs
from connector.runtime import Runtime
from connector.sync.runner import RedisOutage
from connector.worker import due, erasure, jobs, publish

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2

Task = Callable[[datetime], int]

# The overlap of every pair of an account's segments (:mod:`connector.analytics.overlap`), counted
# again every OVERLAP_SECONDS by a job on the background queue served last (after events, sync and
# backfill work). Each scheduler looks at the clock once a tick; a Redis key claims each account's
# interval, so two schedulers enqueue it once.
OVERLAP_SECONDS = 600.0
OVERLAP_QUEUE = predict_jobs.PREDICT_QUEUE
_overlap_check: list[float | None] = [None]  # the first refresh comes one interval after the start


def overlap_job(account_id: str) -> int:
    """RQ job: count the overlaps of the account's segments now; the number of pairs."""
    from connector.analytics import overlap

    rt = process_runtime.current()
    account = rt.account(account_id)
    if account is None:
        return 0
    return overlap.refresh(rt.profile_redis, account_id, account.ruleset.segment_names, clock.now())


def refresh_overlaps(now: datetime) -> int:
    """Scheduler task: every OVERLAP_SECONDS, enqueue each account's overlap job (claimed per
    account and interval); returns how many were enqueued."""
    last = _overlap_check[0]
    if last is None or now.timestamp() < last:
        _overlap_check[0] = now.timestamp()
        return 0
    if now.timestamp() - last < OVERLAP_SECONDS:
        return 0
    _overlap_check[0] = now.timestamp()
    rt = process_runtime.current()
    queue = Queue(OVERLAP_QUEUE, connection=rt.queue_redis)
    stamp = now.timestamp()
    enqueued = 0
    for account in (a.id for a in rt.accounts):
        claim = f"overlap:claim:{account}"  # holds the instant of the last enqueue
        if rt.queue_redis.eval(
            _TAKE_PUMP, 1, claim, repr(stamp - OVERLAP_SECONDS + 1), repr(stamp), int(OVERLAP_SECONDS) * 2
        ):
            queue.enqueue(overlap_job, account, result_ttl=0, failure_ttl=24 * 3600)
            enqueued += 1
    return enqueued


TASKS: list[Task] = [
    predict_jobs.daily,  # each account's predictions, trained once a day
    refresh_overlaps,  # the overlaps of each account's segments, every ten minutes
    erasure.finish_unfinished,  # erasures interrupted midway (a process killed, a write failed)
    publish.resend_changed_mappings,  # a destination's mapping changed: the new state to the ESPs
    publish.reevaluate_changed_rules,  # the rules in force changed without a publish: re-evaluate
]


# Takes the pump of a shard whose flag is down or stale (compare-and-set, so that two schedulers
# re-arm a shard once): ARGV[1] = the oldest fresh heartbeat, ARGV[2] = now, ARGV[3] = expiry (s).
# Also claims an account's overlap interval (the key then holds the last enqueue instant).
_TAKE_PUMP = """
local beat = tonumber(redis.call('GET', KEYS[1]) or '')
if beat and beat > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[2], 'EX', ARGV[3])
return 1
"""


def rearm_pumps(queue: EventQueue, now: datetime) -> int:
    """Enqueue a drain for every shard that holds work and has no live pump; returns how many."""
    conn = queue.conn
    pipe = conn.pipeline(transaction=False)
    for shard in range(queue.shards):
        pipe.xlen(stream_key(shard))
        pipe.get(pump_key(shard))
    replies = pipe.execute()
    rearmed = 0
    for shard in range(queue.shards):
        depth, beat = replies[2 * shard], replies[2 * shard + 1]
        if not depth or jobs.fresh(beat, now) or not jobs.needs_drain(conn, stream_key(shard), now):
            continue
        stamp = now.timestamp()
        if conn.eval(
            _TAKE_PUMP, 1, pump_key(shard), repr(stamp - PUMP_TTL_SECONDS), repr(stamp), PUMP_TTL_SECONDS
        ):
            queue.enqueue_drain(shard)
            log.info("re-armed the drain of a shard", extra={"shard": shard, "stale_flag": beat is not None})
            rearmed += 1
    return rearmed


DUE_BATCH = 1000
REEVALUATE_CHUNK = 200


def fire_due(conn: redis.Redis, now: datetime, limit: int = DUE_BATCH) -> int:
    """Enqueue re-evaluation of every profile due at or before ``now``; returns how many."""
    from connector.worker.jobs import REEVALUATE_QUEUE

    fired = 0
    rq = Queue(REEVALUATE_QUEUE, connection=conn)
    while True:
        entries = due.take_due(conn, now, limit)
        if not entries:
            return fired
        by_account: dict[str, list[tuple[str, float]]] = {}
        for account, profile_id, score in entries:
            by_account.setdefault(account, []).append((profile_id, score))
        for account, items in by_account.items():
            for start in range(0, len(items), REEVALUATE_CHUNK):
                chunk = items[start : start + REEVALUATE_CHUNK]
                rq.enqueue(
                    "connector.worker.jobs.reevaluate",
                    account,
                    [pid for pid, _ in chunk],
                    [score for _, score in chunk],
                    result_ttl=0,
                    failure_ttl=24 * 3600,
                    retry=jobs.reevaluate_retry(),
                    meta=jobs.reevaluate_meta(),
                )
        due.remove_taken(conn, entries)
        fired += len(entries)
        if len(entries) < limit:
            return fired


def tick(queue: EventQueue, now: datetime) -> int:
    from connector import sync

    done = rearm_pumps(queue, now)
    done += fire_due(queue.conn, now)
    done += sync.fire_due(queue.conn, now)
    for task in TASKS:
        done += task(now)
    return done


FIRE_GAP_SECONDS = 0.1


def sleep_seconds(conn: redis.Redis, now: datetime) -> float:
    """Until the next due instant, at most one tick and at least ``FIRE_GAP_SECONDS``: due profiles
    fire at most that long after their instant, and profiles falling due close together fire in one
    re-evaluation job (waking for each instant made one job per profile, whose RQ overhead outgrew
    the worker at 100 due times per second)."""
    nxt = due.earliest(conn)
    if nxt is None:
        return TICK_SECONDS
    return max(FIRE_GAP_SECONDS, min(TICK_SECONDS, nxt - now.timestamp()))


def run(
    rt: Runtime,
    stop: threading.Event,
    *,
    max_ticks: int | None = None,
    pause: Callable[[float], object] | None = None,
    outage: RedisOutage | None = None,
) -> None:
    """The scheduler's loop until ``stop`` is set: a tick, then a wait until the next due instant,
    at most a tick. While Redis is out of reach it backs off as the ``sync`` dispatcher does
    (:class:`connector.sync.runner.RedisOutage`). ``pause``: the waits (default: on ``stop``, so a
    signal ends the longest of them at once)."""
    queue = EventQueue(rt.queue_redis, rt.settings.event_shards)
    wait = pause or stop.wait
    backoff = outage or RedisOutage("scheduler", log)
    ticks = 0
    while not stop.is_set() and (max_ticks is None or ticks < max_ticks):
        try:
            tick(queue, clock.now())
            delay = sleep_seconds(queue.conn, clock.now())
        except redis.RedisError as err:
            delay = backoff.failed(err)
        else:
            backoff.succeeded()
        ticks += 1
        wait(delay)
