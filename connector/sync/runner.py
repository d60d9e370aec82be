"""The ``connector sync`` process: flushes every destination, each in a thread of its own, so that no
change waits behind an event drain, a re-evaluation or another ESP.

The work of a flush is mostly waiting on an ESP's answers and rate limits, so threads suffice: one
Python process keeps every destination of every account moving. A destination's thread runs
:func:`connector.sync.jobs.serve` (the loop of the RQ flush job, without giving way: nothing else
waits for this process) under the destination's lock, which the thread renews while it holds it.

What wakes a destination:

* ``sync:due`` (the instant its next change is ready, or its next retry): the dispatcher sleeps
  until the earliest of them, at most ``POLL_SECONDS``;
* flush jobs on the RQ ``sync`` queue (``arm``: the first change after an idle spell, ``connector
  dlq resume``, the scheduler's ``fire_due``): the dispatcher takes them as wake-ups and deletes
  them, so a ``connector worker`` that still serves ``sync`` and this process can run side by side.

While Redis is out of reach the dispatcher backs off (:class:`RedisOutage`, which the scheduler
shares): from half a second, doubling, to 30 s between attempts, with one warning when Redis goes
away, one when it is back and one a minute in between.

Nothing is held in the process: the changes, retries and dead letters are the sync's Redis keys, so a
process killed with -9 loses nothing, and its destinations' locks expire within
``HELD_LOCK_TTL_MS`` for the next process (several can run: each destination is flushed by one of
them at a time).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import redis
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job

from adapters.base import Adapter
from connector import clock
from connector import runtime as process_runtime
from connector.destinations import Destination
from connector.sync.jobs import AdapterFactory, DestinationLock, resolve, serve
from connector.sync.keys import JOB_TIME_BUDGET_SECONDS, SEP, SYNC_QUEUE

log = logging.getLogger(__name__)

POLL_SECONDS = 0.25  # the longest the dispatcher sleeps without looking at sync:due
BUSY_RETRY_SECONDS = 1.0  # a destination another process holds, or whose loop failed, waits this long
FLUSH_JOB = "connector.sync.jobs.flush_job"
OUTAGE_FIRST_SECONDS = 0.5  # the wait after the first failure to reach Redis, doubled after each next one
OUTAGE_LONGEST_SECONDS = 30.0  # ... up to this
OUTAGE_REMIND_SECONDS = 60.0  # while Redis stays out of reach, one warning this often


@dataclass
class RedisOutage:
    """How a process's loop waits while Redis is out of reach (the ``sync`` dispatcher, the
    scheduler): OUTAGE_FIRST_SECONDS after the first failure, twice as long after each next one, at
    most OUTAGE_LONGEST_SECONDS, and back to the loop's own pace at the first success. It warns once
    when Redis becomes unreachable, once when it is back, and once every OUTAGE_REMIND_SECONDS while
    it stays away, never once per attempt."""

    process: str
    log: logging.Logger
    monotonic: Callable[[], float] = clock.monotonic
    redis: str = ""  # the Redis waited for, named in the warnings (settings.redact: no password)
    delay: float = 0.0  # the current wait between attempts (0 while Redis answers)
    since: float | None = None  # when the outage began (monotonic), None while Redis answers
    attempts: int = 0  # failed attempts in this outage
    _warned: float = 0.0

    @property
    def down(self) -> bool:
        return self.since is not None

    def failed(self, err: Exception) -> float:
        """Note a failure to reach Redis; the seconds to wait before the next attempt."""
        now = self.monotonic()
        self.attempts += 1
        if self.since is None:
            self.since = self._warned = now
            self.delay = OUTAGE_FIRST_SECONDS
            self.log.warning(
                "%s: Redis is unavailable; retrying with backoff", self.process, extra=self._extra(err)
            )
            return self.delay
        self.delay = min(OUTAGE_LONGEST_SECONDS, self.delay * 2)
        if now - self._warned >= OUTAGE_REMIND_SECONDS:
            self._warned = now
            self.log.warning("%s: Redis is still unavailable", self.process, extra=self._extra(err))
        return self.delay

    def succeeded(self) -> None:
        """Note that Redis answered: the outage, if any, is over."""
        if self.since is None:
            return
        lasted = round(self.monotonic() - self.since, 1)
        self.log.warning(
            "%s: Redis is available again", self.process, extra={"seconds": lasted, "attempts": self.attempts}
        )
        self.since, self.delay, self.attempts = None, 0.0, 0

    def _extra(self, err: Exception) -> dict[str, object]:
        seconds = round(self.monotonic() - self.since, 1) if self.since is not None else 0.0
        extra: dict[str, object] = {
            "error": str(err) or type(err).__name__,
            "seconds": seconds,
            "attempts": self.attempts,
            "retry_in_seconds": self.delay,
        }
        if self.redis:
            extra["redis"] = self.redis
        return extra


@dataclass
class _Slot:
    thread: threading.Thread
    again: bool = False  # woken while running: look once more when done


@dataclass
class SyncRunner:
    """Dispatches destinations to threads (at most ``threads`` at once; the others wait their turn)."""

    conn: redis.Redis
    threads: int = 16
    time_budget: float = JOB_TIME_BUDGET_SECONDS
    stop: threading.Event = field(default_factory=threading.Event)
    sleep: Callable[[float], object] | None = None  # between batches; default: wait on ``stop``
    factory: AdapterFactory | None = None  # the destinations' adapters; default: the runtime's
    pause: Callable[[float], object] | None = None  # the dispatcher's waits; default: wait on ``stop``
    outage: RedisOutage = field(default_factory=lambda: RedisOutage("sync dispatcher", log))
    _running: dict[str, _Slot] = field(default_factory=dict)
    _waiting: list[str] = field(default_factory=list)
    _held_off: dict[str, float] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _woken_by: list[bytes] = field(default_factory=list)  # a job id the dispatcher's wait took
    # one client per destination (sharing the pool): what the sync caches per client, such as the
    # ownership ledgers' name codes, is then never touched by two threads at once
    _clients: dict[str, redis.Redis] = field(default_factory=dict)

    def run(self, max_rounds: int | None = None) -> None:
        rounds = 0
        while not self.stop.is_set() and (max_rounds is None or rounds < max_rounds):
            rounds += 1
            timeout = self.round()
            if max_rounds is not None and rounds >= max_rounds:
                break
            self.wait(timeout)
        self.join()
        if self._woken_by:  # a flush job the last wait took: back on the queue for the next process
            self.conn.lpush(Queue(SYNC_QUEUE, connection=self.conn).key, *self._woken_by)

    def round(self) -> float:
        """Start the flushes that are due; the seconds until the next look (backing off while Redis
        is out of reach)."""
        try:
            for name in self.wakeups():
                self.dispatch(name)
            self.start_waiting()
            timeout = self.next_wait()
        except redis.RedisError as err:
            return self.outage.failed(err)
        except Exception:  # a defect: logged, and the process keeps flushing
            log.exception("sync dispatcher failed")
            return POLL_SECONDS
        self.outage.succeeded()
        return timeout

    # -- what to flush ----------------------------------------------------------------------
    def wakeups(self) -> list[str]:
        """Destinations (``account SEP destination``) to look at now: flush jobs queued for them and
        those whose next change or retry is due; paused ones are left alone (``resume`` wakes them)."""
        names = self.take_jobs()
        now = clock.now().timestamp()
        names += [raw.decode() for raw in self.conn.zrangebyscore("sync:due", "-inf", now)]
        if not names:
            return []
        paused = {raw.decode() for raw in self.conn.hkeys("sync:paused")}
        return [name for name in dict.fromkeys(names) if name not in paused]

    def take_jobs(self, limit: int = 1000) -> list[str]:
        """The destinations of the flush jobs waiting on the RQ ``sync`` queue (taken off it)."""
        queue = Queue(SYNC_QUEUE, connection=self.conn)
        names = []
        for _ in range(limit):
            raw = self._woken_by.pop() if self._woken_by else self.conn.lpop(queue.key)
            if raw is None:
                break
            job_id = raw.decode()
            try:
                job = Job.fetch(job_id, connection=self.conn)
            except NoSuchJobError:
                continue
            args = job.args
            if job.func_name == FLUSH_JOB and len(args) == 2:
                names.append(f"{args[0]}{SEP}{args[1]}")
            else:
                log.warning("not a flush job on the sync queue; dropped", extra={"job": job_id})
            job.delete(remove_from_queue=False)
        return names

    def dispatch(self, name: str) -> None:
        with self._lock:
            slot = self._running.get(name)
            if slot is not None:
                slot.again = True
                return
        if self._held_off.get(name, 0.0) > time.monotonic():
            return
        if name not in self._waiting:
            self._waiting.append(name)

    def start_waiting(self) -> None:
        while self._waiting:
            with self._lock:
                if len(self._running) >= self.threads:
                    return
            name = self._waiting.pop(0)
            account, _, destination = name.partition(SEP)
            found = resolve(self.conn, account, destination, self.factory)
            if isinstance(found, dict):
                continue  # unknown (dropped from sync:due) or paused
            thread = threading.Thread(
                target=self._flush, args=(name, *found), name=f"sync-{name}", daemon=True
            )
            self.client(name)  # made here, in the dispatcher's thread
            with self._lock:
                self._running[name] = _Slot(thread)
            thread.start()

    def next_wait(self) -> float:
        """Until the earliest due destination not being flushed, at most POLL_SECONDS."""
        with self._lock:
            busy = set(self._running)
        now = clock.now().timestamp()
        for raw, score in self.conn.zrange("sync:due", 0, len(busy), withscores=True):
            if raw.decode() not in busy:
                return max(0.0, min(POLL_SECONDS, score - now))
        return POLL_SECONDS

    def wait(self, timeout: float) -> None:
        """Sleep up to ``timeout``, woken early by a flush job on the queue (kept for
        :meth:`take_jobs`)."""
        if timeout <= 0.001:
            return
        pause = self.pause or self.stop.wait
        if self.outage.down:  # Redis is out of reach: the backoff's wait, not a blocking pop
            pause(timeout)
            return
        try:
            found = self.conn.blpop([Queue(SYNC_QUEUE, connection=self.conn).key], timeout=timeout)
        except redis.RedisError as err:
            pause(self.outage.failed(err))
            return
        if found is not None:
            self._woken_by.append(found[1])

    # -- one destination ----------------------------------------------------------------------
    def client(self, name: str) -> redis.Redis:
        found = self._clients.get(name)
        if found is None:
            found = self._clients[name] = redis.Redis(connection_pool=self.conn.connection_pool)
        return found

    def _flush(self, name: str, dest: Destination, adapter: Adapter) -> None:
        conn = self.client(name)
        lock = DestinationLock(conn, dest.account, dest.name)
        try:
            if not lock.acquire():
                self._held_off[name] = time.monotonic() + BUSY_RETRY_SECONDS
                return
            with lock:
                while True:
                    serve(
                        conn,
                        dest,
                        adapter,
                        sleep=self.sleep or self.stop.wait,
                        time_budget=self.time_budget,
                        stopping=self.stop.is_set,
                    )
                    with self._lock:
                        slot = self._running[name]
                        if not slot.again or self.stop.is_set():
                            break
                        slot.again = False
        except Exception:
            log.exception("sync of a destination failed", extra={"destination": name})
            self._held_off[name] = time.monotonic() + BUSY_RETRY_SECONDS
        finally:
            with self._lock:
                self._running.pop(name, None)

    def join(self, timeout: float = 60.0) -> None:
        """Wait for the running flushes (each stops after its current batch once ``stop`` is set)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            threads = [slot.thread for slot in self._running.values()]
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))


def run(threads: int = 16) -> None:
    """``connector sync``: until SIGTERM or SIGINT (the flushes in hand finish their batch)."""
    import signal

    runner = SyncRunner(process_runtime.current().queue_redis, threads=threads)

    def _stop(signum: int, frame: object) -> None:
        runner.stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    runner.run()
