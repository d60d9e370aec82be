"""Sync jobs: the loop that flushes one destination (:func:`serve`), run by the ``connector sync``
process (connector/sync/runner.py, a thread per destination) or as the RQ job :func:`flush_job` by a
``connector worker`` that serves the ``sync`` queue; ``fire_due`` (scheduler) arms the destinations
whose retries or delays have come due."""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from types import TracebackType

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

# A held destination lock lives this long and is renewed every third of it (see DestinationLock).
HELD_LOCK_TTL_MS = 10_000

_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class DestinationLock:
    """One flush at a time per destination, across processes. The lock lives ``ttl_ms`` and is
    renewed every third of that from a thread while held, however long a batch waits on the ESP:
    a process killed with -9 frees its destinations within ``ttl_ms``."""

    def __init__(self, conn: redis.Redis, account: str, destination: str, ttl_ms: int = HELD_LOCK_TTL_MS):
        self.conn = conn
        self.key = key(account, destination, "lock")
        self.ttl_ms = ttl_ms
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> bool:
        if not self.conn.set(self.key, self.token, nx=True, px=self.ttl_ms):
            return False
        self._thread = threading.Thread(target=self._renew, name=f"sync-lock-{self.key}", daemon=True)
        self._thread.start()
        return True

    def renew(self) -> bool:
        """Another ``ttl_ms`` for the lock, unless it is no longer this holder's (it expired and was
        taken over)."""
        return bool(run_script(self.conn, _RENEW, [self.key], [self.token, self.ttl_ms]))

    def _renew(self) -> None:
        while not self._stop.wait(self.ttl_ms / 3000):
            try:
                if not self.renew():
                    log.warning("sync lock lost", extra={"lock": self.key})
                    return
            except redis.RedisError as err:
                log.warning("sync lock renewal failed", extra={"lock": self.key, "error": type(err).__name__})

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        run_script(self.conn, _UNLOCK, [self.key], [self.token])

    def __enter__(self) -> DestinationLock:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def resolve(
    conn: redis.Redis, account_id: str, destination_name: str, factory: AdapterFactory | None = None
) -> tuple[Destination, Adapter] | dict[str, int]:
    """The destination and its adapter, or the outcome when there is nothing to flush: an unknown
    or removed destination (``{}``: its flag is dropped and nothing arms it again; its waiting
    changes stay until it is configured again, whose next change arms it) or one whose credential
    is missing (``{"paused": 1}``)."""
    rt = process_runtime.current()
    armed = key(account_id, destination_name, "armed")
    account = rt.account(account_id)
    dest = destinations(account).get(destination_name) if account else None
    if dest is None:
        conn.delete(armed)
        conn.zrem("sync:due", member(account_id, destination_name))
        log.warning(
            "sync for an unknown destination", extra={"account": account_id, "destination": destination_name}
        )
        return {}
    try:
        adapter = factory(dest) if factory else rt.adapter(dest)
    except ConfigError as err:
        pause(conn, account_id, destination_name, err.reason, None, clock.now())
        conn.delete(armed)
        return {"paused": 1}
    return dest, adapter


def flush_job(
    account_id: str,
    destination_name: str,
    *,
    conn: redis.Redis | None = None,
    factory: AdapterFactory | None = None,
    sleep: Callable[[float], None] = time.sleep,
    time_budget: float = JOB_TIME_BUDGET_SECONDS,
) -> dict[str, int]:
    """RQ job: flush one destination until nothing is ready within its batch delay. Served by a
    ``connector worker`` that takes the ``sync`` queue; it gives the worker up to a waiting drain or
    re-evaluation rather than sleep through a batch delay."""
    conn = conn or process_runtime.current().queue_redis
    found = resolve(conn, account_id, destination_name, factory)
    if isinstance(found, dict):
        return found
    dest, adapter = found
    lock = DestinationLock(conn, account_id, destination_name)
    if not lock.acquire():
        return {}  # another worker is flushing this destination; it picks these up
    with lock:
        return serve(conn, dest, adapter, sleep=sleep, time_budget=time_budget, give_way=others_waiting)


def serve(
    conn: redis.Redis,
    dest: Destination,
    adapter: Adapter,
    *,
    sleep: Callable[[float], object],
    time_budget: float,
    give_way: Callable[[redis.Redis], bool] | None = None,
    stopping: Callable[[], bool] = lambda: False,
) -> dict[str, int]:
    """Flush one destination (its lock held) batch by batch until nothing is ready within the batch
    delay, the time budget is spent (the flush is armed again) or ``stopping()``. Between batches it
    sleeps until the next change is ready, unless ``give_way`` says other jobs wait for this process:
    then the armed flag stays up until that change is ready and the scheduler (``sync:due``) or the
    sync process takes it then."""
    a, d = dest.account, dest.name
    armed = key(a, d, "armed")
    totals: dict[str, int] = {}
    started = clock.monotonic()
    flusher = Flusher(conn, dest, adapter)
    while True:
        conn.expire(armed, ARMED_TTL_SECONDS)
        # one batch at a time, so the time budget is checked between batches
        for outcome, n in flusher.flush(clock.now(), max_batches=1).items():
            totals[outcome] = totals.get(outcome, 0) + n
        nxt = flusher.next_ready()
        now = clock.now().timestamp()
        horizon = now + dest.batch_delay_seconds
        if is_paused(conn, a, d):
            conn.delete(armed)  # resume() arms it again; the changes keep waiting
            break
        if nxt is None or nxt > horizon:
            if run_script(conn, _RELEASE, [flusher.k["ready"], armed], [horizon]):
                break
            continue
        if clock.monotonic() - started > time_budget or stopping():
            conn.delete(armed)
            arm(conn, a, d)
            break
        if nxt > now and give_way is not None and give_way(conn):
            conn.set(armed, "1", px=max(1, int((nxt - now) * 1000) - REARM_EARLY_MS))
            break
        sleep(max(0.0, nxt - now))
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
