"""Sync jobs: ``flush_job`` (RQ, one per destination at a time) flushes until nothing is ready within
the batch delay or its time budget is spent; ``fire_due`` (scheduler) arms the destinations whose
retries or delays have come due."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from datetime import datetime

import redis
from rq import Queue

from adapters.base import Adapter
from connector import clock
from connector import runtime as process_runtime
from connector.destinations import Destination, destinations
from connector.errors import ConfigError
from connector.sync.control import is_paused, pause
from connector.sync.flusher import Flusher
from connector.sync.keys import (
    ARMED_TTL_SECONDS,
    JOB_TIME_BUDGET_SECONDS,
    LOCK_TTL_MS,
    SEP,
    key,
    member,
    run_script,
)
from connector.sync.submit import arm

log = logging.getLogger(__name__)

AdapterFactory = Callable[[Destination], Adapter]

_RELEASE = """
-- clear the armed flag unless a change became ready meanwhile (then the job keeps going)
local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
if first[2] and tonumber(first[2]) <= tonumber(ARGV[1]) then return 0 end
redis.call('DEL', KEYS[2])
return 1
"""


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
    rt = process_runtime.current()
    conn = conn or rt.queue_redis
    armed = key(account_id, destination_name, "armed")
    account = rt.account(account_id)
    dest = destinations(account).get(destination_name) if account else None
    if dest is None:
        # unknown or removed: the job ends here and nothing arms it again (its waiting changes stay
        # until the destination is configured again, whose next change arms it)
        conn.delete(armed)
        conn.zrem("sync:due", member(account_id, destination_name))
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
            adapter = factory(dest) if factory else rt.adapter(dest)
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
                if run_script(conn, _RELEASE, [flusher.k["ready"], armed], [horizon]):
                    break
                continue
            if clock.monotonic() - started > time_budget:
                conn.delete(armed)
                arm(conn, account_id, destination_name)
                break
            if nxt > now and others_waiting(conn):
                # rather than hold the worker through the batch delay while jobs the same worker serves
                # wait: the flag stays up until the next change is ready (changes queued meanwhile
                # enqueue no job of their own), then the scheduler (``sync:due``) arms it again
                conn.set(armed, "1", px=max(1, int((nxt - now) * 1000) - REARM_EARLY_MS))
                break
            sleep(max(0.0, nxt - now))
    finally:
        if conn.get(lock) == token.encode():
            conn.delete(lock)
    return totals


# The queues ``connector worker`` serves besides the sync's (connector/worker/jobs.py and
# connector/ingest/queue.py name them): a flush job does not sleep through a batch delay while one of
# them holds a job.
OTHER_WORKER_QUEUES = ("reevaluate", "events")
REARM_EARLY_MS = 50  # the flag of a flush that gave way expires this much before its next change is ready


def others_waiting(conn: redis.Redis) -> bool:
    """Whether a re-evaluation or an event drain waits for the worker."""
    pipe = conn.pipeline(transaction=False)
    for name in OTHER_WORKER_QUEUES:
        pipe.llen(Queue(name, connection=conn).key)
    return any(pipe.execute())


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
