"""RQ jobs. ``drain_events`` consumes one shard's stream in batches (hundreds of events per job).

Consumption uses a Redis consumer group. While a drain runs, a heartbeat (a thread, every
``HEARTBEAT_SECONDS``) refreshes the shard's pump flag and the consumer's liveness key with the
current instant, so a killed worker is known dead after ``PUMP_TTL_SECONDS``: the scheduler re-arms
its shard and the next drain claims the entries it left pending at once. A batch whose processing
raised is handed to the ``backoff`` consumer and claimed back (XAUTOCLAIM) after ``CLAIM_IDLE_MS``.
Entries delivered more than ``MAX_DELIVERIES`` times go to the dead letters instead of blocking the
shard.
"""

from __future__ import annotations

import functools
import gc
import logging
import os
import socket
import sys
import threading
from collections.abc import Callable, Sequence, Set
from datetime import datetime, timedelta
from types import TracebackType

import redis
from rq import Queue, Retry, get_current_job
from rq.timeouts import BaseTimeoutException

from connector import clock, redis_conn
from connector import runtime as process_runtime
from connector.errors import UndecodableItem
from connector.event import Event, load_event
from connector.ingest.queue import (
    HEARTBEAT_SECONDS,
    PUMP_TTL_SECONDS,
    STREAM_FIELD,
    EventQueue,
    pump_key,
    stream_key,
)
from connector.profiles.identity import LockTimeout
from connector.runtime import Runtime
from connector.sync.deadletters import DeadLetters
from connector.sync.keys import SYNC_QUEUE
from connector.worker import due, evaluation, pipeline

log = logging.getLogger(__name__)

GROUP = "workers"
BATCH_SIZE = 500
TIME_BUDGET_SECONDS = 10.0
TURN_SECONDS = 0.5  # a drain runs at least this long before it gives the worker up to waiting flushes
CLAIM_IDLE_MS = 60_000
MAX_DELIVERIES = 5
BACKOFF_CONSUMER = "backoff"
ERRORS_TTL_SECONDS = 86400

# Releases the shard's pump flag when the group has read every entry of the stream (entries still
# pending belong to other consumers: live ones acknowledge them, dead ones are the scheduler's).
# Atomic with the ingest script: an entry stored before the release keeps the flag up (and this
# drain reads it); one stored after it finds the flag down and enqueues a new drain.
_RELEASE = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  for _, group in ipairs(redis.call('XINFO', 'GROUPS', KEYS[1])) do
    local name, delivered
    for i = 1, #group, 2 do
      if group[i] == 'name' then name = group[i + 1] end
      if group[i] == 'last-delivered-id' then delivered = group[i + 1] end
    end
    if name == ARGV[1] and #redis.call('XRANGE', KEYS[1], '(' .. delivered, '+', 'COUNT', 1) > 0 then
      return 0
    end
  end
end
redis.call('DEL', KEYS[2])
return 1
"""

Processor = Callable[[Sequence[Event], datetime], None]


def consumer_name() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def live_key(consumer: str) -> str:
    return f"q:live:{consumer}"


def ensure_group(conn: redis.Redis, shard: int) -> None:
    try:
        conn.xgroup_create(stream_key(shard), GROUP, id="0", mkstream=True)
    except redis.ResponseError as err:
        if "BUSYGROUP" not in str(err):
            raise


def _default_processor(runtime: Runtime) -> Processor:
    return functools.partial(pipeline.process, runtime)


def fresh(value: bytes | str | None, now: datetime) -> bool:
    """Whether a pump flag or liveness value (epoch seconds) was written within PUMP_TTL_SECONDS."""
    if value is None:
        return False
    try:
        return float(value) > now.timestamp() - PUMP_TTL_SECONDS
    except ValueError:
        return False


class Heartbeat:
    """While a drain runs: the shard's pump flag (if still up) and the consumer's liveness key carry
    the current instant, refreshed every HEARTBEAT_SECONDS from a thread, however long a batch takes."""

    def __init__(self, conn: redis.Redis, shard: int, consumer: str) -> None:
        self.conn, self.shard, self.consumer = conn, shard, consumer
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"drain-heartbeat-{shard}", daemon=True)

    def beat(self) -> None:
        stamp = repr(clock.now().timestamp())
        pipe = self.conn.pipeline(transaction=False)
        pipe.set(pump_key(self.shard), stamp, xx=True, ex=PUMP_TTL_SECONDS)
        pipe.set(live_key(self.consumer), stamp, ex=PUMP_TTL_SECONDS)
        pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                self.beat()
            except redis.RedisError as err:
                log.warning(
                    "drain heartbeat failed", extra={"shard": self.shard, "error": type(err).__name__}
                )

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()


def drain_events(
    shard: int,
    *,
    batch_size: int = BATCH_SIZE,
    time_budget: float = TIME_BUDGET_SECONDS,
    processor: Processor | None = None,
    conn: redis.Redis | None = None,
    lanes: int | None = None,
) -> int:
    """Apply stored events of one shard until it is empty or the time budget is spent, on ``lanes``
    threads (default: the settings' ``drain_lanes``), each applying batches of its own."""
    rt = process_runtime.current()
    conn = conn or rt.queue_redis
    processor = processor or _default_processor(rt)
    lanes = lanes or rt.settings.drain_lanes
    ensure_group(conn, shard)
    consumer = consumer_name()
    with Heartbeat(conn, shard, consumer):
        drain = _Drain(conn, shard, consumer, batch_size, time_budget, processor)
        total, spent = drain.run(lanes)
        if spent:
            EventQueue(conn, rt.settings.event_shards).enqueue_drain(shard)
    return total


LANE_SWITCH_SECONDS = 0.001  # the interpreter's switch interval while lanes run (Python's default: 5 ms)


class _Drain:
    """One drain of a shard on one or more lanes: threads that each read a batch, apply it and
    acknowledge it, so that one lane's Python work overlaps another's wait for Redis. Batches of one
    shard may then be applied concurrently, as two worker processes would: the profile store, the
    ledger and the desired state are atomic per profile and order-independent (see
    docs/architecture.md, "Drain lanes").

    A lane that finds the stream empty stops; the last lane running releases the pump flag (atomic
    with the ingest script, as with a single lane) or, when entries came in meanwhile, reads them.
    A lane that spends the time budget (or the turn, when flushes wait) stops every lane after
    its batch; an error in one stops the others after theirs and is raised by the drain."""

    def __init__(
        self,
        conn: redis.Redis,
        shard: int,
        consumer: str,
        batch_size: int,
        time_budget: float,
        processor: Processor,
    ) -> None:
        self.conn, self.shard, self.consumer = conn, shard, consumer
        self.batch_size, self.time_budget, self.processor = batch_size, time_budget, processor
        self.dead = DeadLetters(conn)
        self.key = stream_key(shard)
        self.started = clock.monotonic()
        self.lock = threading.Lock()
        self.reading = threading.Lock()
        self.held: set[bytes] = set()  # entries a lane is applying
        self.total = 0
        self.running = 0
        self.stop = False
        self.spent = False
        self.errors: list[BaseException] = []

    def run(self, lanes: int) -> tuple[int, bool]:
        """(events applied, whether the time budget ran out with the flag still up)."""
        self.running = lanes
        if lanes == 1:
            self._lane()
        else:
            switch = sys.getswitchinterval()
            sys.setswitchinterval(min(switch, LANE_SWITCH_SECONDS))
            try:
                threads = [
                    threading.Thread(target=self._lane, name=f"drain-{self.shard}-lane-{n}", daemon=True)
                    for n in range(1, lanes)
                ]
                for thread in threads:
                    thread.start()
                self._lane()
                for thread in threads:
                    thread.join()
            finally:
                sys.setswitchinterval(switch)
        if self.errors:
            raise self.errors[0]
        return self.total, self.spent

    def _lane(self) -> None:
        """Read, apply and acknowledge batches until the stream is empty or the drain stops; an
        error is kept for :meth:`run` to raise once every lane has stopped."""
        counted = True  # this lane is in ``running``
        try:
            while True:
                entries = self._read()
                if entries is None:  # the drain stops
                    return
                if not entries:
                    if self._leave():
                        counted = False
                        return
                    if self._released():
                        return
                    continue  # entries were stored since the read: read them (within the budget)
                try:
                    applied = _apply(self.conn, self.dead, self.key, entries, self.processor)
                except BaseException:
                    with self.lock:
                        self.stop = True  # before the batch is let go: no other lane takes it up
                    raise
                finally:
                    with self.lock:
                        self.held.difference_update(entry_id for entry_id, _ in entries)
                elapsed = clock.monotonic() - self.started
                spent = elapsed > self.time_budget or (elapsed > TURN_SECONDS and _sync_waiting(self.conn))
                with self.lock:
                    self.total += applied
                    if spent:
                        self.stop = self.spent = True
        except BaseException as err:
            with self.lock:
                self.errors.append(err)
                self.stop = True
        finally:
            if counted:
                with self.lock:
                    self.running -= 1

    def _read(self) -> list[tuple[bytes, dict]] | None:
        """The lane's next batch; None once the drain stops. One lane reads at a time, and a claim
        of idle entries skips those another lane holds, so no entry is applied by two lanes at once."""
        with self.reading:
            with self.lock:
                if self.stop:
                    return None
                held = frozenset(self.held)
            entries = _next_entries(self.conn, self.key, self.consumer, self.batch_size, held)
            with self.lock:
                self.held.update(entry_id for entry_id, _ in entries)
        return entries

    def _leave(self) -> bool:
        """On an empty read: whether another lane is still applying a batch (it reads again after
        it, so this one stops and leaves the flag to it)."""
        with self.lock:
            if self.running > 1:
                self.running -= 1
                return True
            return False

    def _released(self) -> bool:
        """The last lane's empty read: release the flag, unless entries were stored since."""
        return bool(self.conn.eval(_RELEASE, 2, self.key, pump_key(self.shard), GROUP))


# The queues of this process's worker (``connector worker --queues``); None: every queue (a job run
# outside a worker, e.g. in tests).
_served: frozenset[str] | None = None


def serve_queues(names: Sequence[str] | None) -> None:
    """Name the queues this process's worker serves: a drain gives its turn up only to jobs that
    this worker would take (the flushes are the ``connector sync`` process's unless the worker
    serves ``sync`` too)."""
    global _served
    _served = frozenset(names) if names is not None else None


GC_YOUNG_THRESHOLD = 20_000  # allocations between young-generation collections (Python's default: 700)


def settle_heap() -> None:
    """For a long-running worker process, once started: what startup allocated (modules, the
    runtime, compiled rules) leaves the cyclic collector's generations for good (``gc.freeze``), and
    the youngest generation is collected every :data:`GC_YOUNG_THRESHOLD` allocations. A batch
    allocates many short-lived objects that reference counting frees (events, profiles, results);
    the default threshold ran a collection every few hundred of them (bench/worker: +2-3 %)."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def _sync_waiting(conn: redis.Redis) -> bool:
    """Whether a flush or a re-evaluation waits for this worker: a drain gives the worker up to it
    after ``TURN_SECONDS`` (and is enqueued again), so that changes reach the destinations within
    their batch delay and about one turn while events keep arriving."""
    names = [q for q in (SYNC_QUEUE, REEVALUATE_QUEUE) if _served is None or q in _served]
    if not names:
        return False
    pipe = conn.pipeline(transaction=False)
    for name in names:
        pipe.llen(Queue(name, connection=conn).key)
    return any(pipe.execute())


def _next_entries(
    conn: redis.Redis, key: str, consumer: str, count: int, held: Set[bytes] = frozenset()
) -> list[tuple[bytes, dict]]:
    """Entries a dead consumer left pending, then entries idle past CLAIM_IDLE_MS (but those in
    ``held``, which another lane of this drain is applying), then new ones."""
    entries = claim_orphans(conn, key, consumer, count, clock.now())
    if not entries:
        entries = _claim_stale(conn, key, consumer, count, held)
    if not entries:
        reply = conn.xreadgroup(GROUP, consumer, {key: ">"}, count=count)
        entries = reply[0][1] if reply else []
    return entries


def dead_consumers(conn: redis.Redis, key: str, now: datetime) -> list[str]:
    """Consumers holding pending entries of ``key`` whose heartbeat is older than PUMP_TTL_SECONDS."""
    summary = conn.xpending(key, GROUP)
    names = [
        c["name"].decode() if isinstance(c["name"], bytes) else str(c["name"])
        for c in summary.get("consumers") or []
    ]
    names = [name for name in names if name != BACKOFF_CONSUMER]
    if not names:
        return []
    beats = conn.mget([live_key(name) for name in names])
    return [name for name, beat in zip(names, beats, strict=True) if not fresh(beat, now)]


def claim_orphans(
    conn: redis.Redis, key: str, consumer: str, count: int, now: datetime
) -> list[tuple[bytes, dict]]:
    for name in dead_consumers(conn, key, now):
        if name == consumer:
            continue
        rows = conn.xpending_range(key, GROUP, min="-", max="+", count=count, consumername=name)
        entries = _claim(conn, key, consumer, [row["message_id"] for row in rows], 0)
        if entries:
            log.info("claimed entries of a dead consumer", extra={"consumer": name, "entries": len(entries)})
            return entries
    return []


def undelivered(conn: redis.Redis, key: str) -> bool:
    """Whether the stream holds an entry the consumer group has not read yet."""
    try:
        groups = conn.xinfo_groups(key)
    except redis.ResponseError:  # no stream yet
        return False
    for group in groups:
        if group["name"] in (GROUP, GROUP.encode()):
            delivered = group["last-delivered-id"]
            delivered = delivered.decode() if isinstance(delivered, bytes) else str(delivered)
            return bool(conn.xrange(key, min=f"({delivered}", max="+", count=1))
    return bool(conn.xlen(key))


def needs_drain(conn: redis.Redis, key: str, now: datetime) -> bool:
    """Whether a shard's stream holds work for a drain: unread entries, entries a dead consumer
    left pending, or entries whose backoff (CLAIM_IDLE_MS) is over. Entries a live consumer is
    applying are not: that drain acknowledges them."""
    if undelivered(conn, key):
        return True
    try:
        return bool(dead_consumers(conn, key, now)) or stale_entries(conn, key)
    except redis.ResponseError:  # no group yet
        return False


def stale_entries(conn: redis.Redis, key: str) -> bool:
    """Whether some pending entry has been idle for CLAIM_IDLE_MS (a failed batch's backoff is over)."""
    return bool(conn.xpending_range(key, GROUP, min="-", max="+", count=1, idle=CLAIM_IDLE_MS))


def _claim_stale(
    conn: redis.Redis, key: str, consumer: str, count: int, held: Set[bytes] = frozenset()
) -> list[tuple[bytes, dict]]:
    """Pending entries idle past CLAIM_IDLE_MS (a failed batch's backoff is over), but those in
    ``held``: listed first and claimed by id, so an entry another lane is applying is neither
    taken nor counted as delivered again."""
    rows = conn.xpending_range(key, GROUP, min="-", max="+", count=count, idle=CLAIM_IDLE_MS)
    ids = [row["message_id"] for row in rows if row["message_id"] not in held]
    return _claim(conn, key, consumer, ids, CLAIM_IDLE_MS)


def _claim(
    conn: redis.Redis, key: str, consumer: str, ids: list[bytes], min_idle: int
) -> list[tuple[bytes, dict]]:
    """Claim these pending entries for ``consumer`` (those still idle ``min_idle`` ms); the ones
    whose stream entry is still there."""
    if not ids:
        return []
    claimed = conn.xclaim(key, GROUP, consumer, min_idle_time=min_idle, message_ids=ids)
    return [(entry_id, fields) for entry_id, fields in claimed if fields is not None]


def _apply(
    conn: redis.Redis,
    dead: DeadLetters,
    key: str,
    entries: list[tuple[bytes, dict]],
    processor: Processor,
) -> int:
    """Apply a batch; acknowledge it. A batch that fails again after a redelivery is applied one
    event at a time, so one event that cannot be applied holds back (and, past
    ``MAX_DELIVERIES``, dead-letters) only itself, with its error as the reason, never the others
    of its batch (which may be other accounts')."""
    now = clock.now()
    applied: list[tuple[bytes, Event]] = []
    ids = [entry_id for entry_id, _ in entries]
    poisoned, redelivered = _deliveries(conn, key, ids)
    errors = _last_errors(conn, key, poisoned)
    for entry_id, fields in entries:
        raw = fields.get(STREAM_FIELD.encode(), b"")
        if entry_id in poisoned:
            reason = f"delivered more than {MAX_DELIVERIES} times without success"
            if entry_id in errors:
                reason += f" (last error: {errors[entry_id]})"
            dead.put("events", reason, _text(raw), now, account=_account_of(raw))
            continue
        try:
            applied.append((entry_id, load_event(raw)))
        except UndecodableItem as err:
            log.warning("undecodable queue item", extra={"entry": entry_id.decode(), "reason": str(err)})
            dead.put("events", str(err), _text(raw), now)
    failed: dict[bytes, BaseException] = {}
    if applied:
        try:
            with pipeline.redelivery(redelivered):
                processor([event for _, event in applied], now)
        except Exception as err:
            if not redelivered or len(applied) == 1 or _not_the_events(err):
                failed = {entry_id: err for entry_id, _ in applied}
            else:
                failed = _one_by_one(applied, processor, now)
    pipe = conn.pipeline(transaction=False)
    done = [entry_id for entry_id in ids if entry_id not in failed]
    if done:
        pipe.xack(key, GROUP, *done)
        pipe.xdel(key, *done)
        if redelivered:  # only an entry delivered before can have an error kept
            pipe.hdel(_errors_key(key), *done)
    if failed:
        # retried after CLAIM_IDLE_MS, not at once by the next drain (the worker is alive)
        pipe.xclaim(key, GROUP, BACKOFF_CONSUMER, min_idle_time=0, message_ids=list(failed), justid=True)
        pipe.hset(_errors_key(key), mapping={i: _error_text(err) for i, err in failed.items()})
        pipe.expire(_errors_key(key), ERRORS_TTL_SECONDS)
    pipe.execute()
    if failed:
        raise next(iter(failed.values()))
    return len(applied)


def _one_by_one(
    applied: list[tuple[bytes, Event]], processor: Processor, now: datetime
) -> dict[bytes, BaseException]:
    """Apply each event alone (as redelivered); the ones that fail, with their errors."""
    failed: dict[bytes, BaseException] = {}
    for n, (entry_id, event) in enumerate(applied):
        try:
            with pipeline.redelivery(True):
                processor([event], now)
        except Exception as err:
            if _not_the_events(err):  # Redis away, a lock not had, the job's time up: the rest waits
                failed.update((later, err) for later, _ in applied[n:])
                break
            log.warning("event failed alone", extra={"entry": entry_id.decode(), "error": type(err).__name__})
            failed[entry_id] = err
    return failed


def _not_the_events(err: BaseException) -> bool:
    """An error that says nothing about the events (Redis unreachable, the account's lock not
    had, the job's time up): trying them one by one would only repeat it for each."""
    return isinstance(err, redis.ConnectionError | redis.TimeoutError | LockTimeout | BaseTimeoutException)


def _errors_key(key: str) -> str:
    """The last error of each entry of a stream that failed, for its dead letter's reason."""
    return f"{key}:errors"


def _error_text(err: BaseException) -> str:
    return f"{type(err).__name__}: {err}"[:300]


def _last_errors(conn: redis.Redis, key: str, ids: Set[bytes]) -> dict[bytes, str]:
    if not ids:
        return {}
    order = list(ids)
    found = conn.hmget(_errors_key(key), order)
    return {i: v.decode("utf-8", "replace") for i, v in zip(order, found, strict=True) if v is not None}


def _deliveries(conn: redis.Redis, key: str, ids: list[bytes]) -> tuple[set[bytes], bool]:
    """The entries delivered more than ``MAX_DELIVERIES`` times, and whether any was delivered
    before (a batch that failed or whose worker died: applied again with ``reconcile``)."""
    if not ids:
        return set(), False
    # each row [id, consumer, idle ms, deliveries], read raw: redis-py's dict per row is a
    # batch's worth of work for four numbers each
    [rows] = redis_conn.pipelined(conn, [("XPENDING", key, GROUP, ids[0], ids[-1], len(ids))])
    if isinstance(rows, Exception):
        raise rows
    times = [(row[0], int(row[3])) for row in rows]
    return {entry_id for entry_id, n in times if n > MAX_DELIVERIES}, any(n > 1 for _, n in times)


def _text(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace")


def _account_of(raw: bytes) -> str | None:
    """The account a stored event names, if it can be read (its dead letter is then the account's:
    the console and the API show and replay it)."""
    try:
        return load_event(raw).account
    except UndecodableItem:
        return None


REEVALUATE_QUEUE = "reevaluate"
# A re-evaluation job that raised, or whose worker died (RQ's cleanup of abandoned jobs), is run
# again at once, up to this many times (then it stays in RQ's failed jobs for a day). The scheduler
# removed its profiles' due entries when it enqueued it: a due job that raises also puts them back
# (due again ``due.RETRY_SECONDS`` later, flagged for reconciling), so an outage longer than the
# retries delays its time-based transitions, never drops them.
REEVALUATE_RETRIES = 3


def reevaluate_retry() -> Retry:
    return Retry(max=REEVALUATE_RETRIES)


def reevaluate_meta() -> dict[str, int]:
    """The job's own retry budget, kept with it (a retry compares with it, whatever the constant
    says by then)."""
    return {"retries": REEVALUATE_RETRIES}


def _retried() -> bool:
    """Whether the running job is a retry (an earlier run may have recorded the ledger and stopped
    before the rest: the evaluation then reconciles)."""
    job = get_current_job()
    if job is None or job.retries_left is None:
        return False
    return job.retries_left < int(job.meta.get("retries", REEVALUATE_RETRIES))


BACKFILL_QUEUE = "backfill"


def reevaluate(
    account_id: str,
    profile_ids: list[str],
    due_scores: list[float] | None = None,
    progress_key: str | None = None,
    restate: bool = False,
) -> int:
    """Re-evaluate profiles: those whose results change because time passed (from the due index),
    or every profile of an account after its rules were published (``progress_key`` counts them);
    ``restate``: their state goes to the destinations again, changed or not (mappings changed)."""
    rt = process_runtime.current()
    if progress_key:  # a publish: see the rules just published or edited, whatever the last check was
        rt.provider.refresh_rules(force=True)
    flags = due.flags(rt.queue_redis, account_id, profile_ids) if due_scores else {}
    try:
        evaluation.evaluate_touched(
            rt,
            account_id,
            set(profile_ids),
            clock.now(),
            restate=set(profile_ids) if restate else (),
            reconcile=bool(flags) or _retried(),
        )
    except Exception:
        if due_scores:  # due again shortly, whatever becomes of this job's retries
            at = clock.now() + timedelta(seconds=due.RETRY_SECONDS)
            due.restore(rt.queue_redis, account_id, profile_ids, at)
        raise
    due.unflag(rt.queue_redis, account_id, flags)
    if progress_key:
        rt.queue_redis.hincrby(progress_key, "done", len(profile_ids))
    if due_scores:
        # measured after the whole chunk was evaluated: the lateness a person's segment really saw
        done = clock.now().timestamp()
        due.observe_lateness(rt.queue_redis, [done - score for score in due_scores])
    return len(profile_ids)
