"""No lost wake-ups: every stored event has a drain that will run, whatever the arrival pattern,
and a shard whose drain was killed (SIGKILL) is drained again within seconds."""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue, SimpleWorker
from rq.job import Job
from rq.registry import StartedJobRegistry

from connector import clock
from connector.event import Event
from connector.ingest.queue import EVENTS_QUEUE, PUMP_TTL_SECONDS, EventQueue, pump_key, stream_key
from connector.worker import jobs
from connector.worker.scheduler import rearm_pumps

T0 = datetime(2024, 1, 1, tzinfo=UTC)
NOW = T0 + timedelta(hours=1)


def make_event(n: int, user: str = "user-1") -> Event:
    return Event(
        account="acme",
        source="segment",
        source_event_id=f"wake-{n}",
        type="track",
        name="product_viewed",
        occurred_at=T0 + timedelta(seconds=n),
        received_at=T0 + timedelta(seconds=n),
        identities={"user_id": user},
        properties={"n": n},
    )


class GapWorker(SimpleWorker):
    """Runs ``arrival`` after a drain job returned (its pump flag released) and before RQ has
    finished the job: the gap in which a request re-raises the flag and enqueues the next drain."""

    arrivals: list[Callable[[], None]] = []

    def handle_job_success(self, job: Job, queue: Queue, started_job_registry: StartedJobRegistry) -> None:
        if self.arrivals:
            self.arrivals.pop(0)()
        super().handle_job_success(job, queue, started_job_registry)


def runnable_drains(conn: redis.Redis, shard: int) -> list[str]:
    """Drain jobs of a shard that a worker will run: queued, with their job hash present."""
    rq = Queue(EVENTS_QUEUE, connection=conn)
    return [
        job_id
        for job_id in rq.job_ids
        if conn.exists(f"rq:job:{job_id}") and Job.fetch(job_id, connection=conn).args == (shard,)
    ]


def test_a_request_arriving_while_rq_finishes_the_drain_is_drained(
    redis_client: redis.Redis, config_dir: Path
) -> None:
    queue = EventQueue(redis_client, shards=1)
    queue.ingest("acme", [make_event(1)], 3600)
    stored_in_gap: list[int] = []

    def arrive() -> None:
        assert not redis_client.exists(pump_key(0))  # the drain released its flag
        assert queue.ingest("acme", [make_event(2)], 3600).accepted == 1
        stored_in_gap.append(len(runnable_drains(redis_client, 0)))

    worker = GapWorker([Queue(EVENTS_QUEUE, connection=redis_client)], connection=redis_client)
    worker.arrivals = [arrive]
    worker.work(burst=True)

    assert stored_in_gap == [1]  # the request enqueued a drain
    assert queue.pending() == {0: 0}  # and it ran: nothing left waiting for a flag to expire
    assert not redis_client.exists(pump_key(0))
    assert runnable_drains(redis_client, 0) == []


def test_steady_arrivals_in_every_gap_never_leave_events_without_a_drain(
    redis_client: redis.Redis, config_dir: Path
) -> None:
    queue = EventQueue(redis_client, shards=1)
    n = 0

    def arrive() -> None:
        nonlocal n
        n += 1
        queue.ingest("acme", [make_event(n, user=f"u{n % 3}")], 3600)
        # at every instant an undelivered event has a drain that will run
        assert runnable_drains(redis_client, 0), "stored event without a runnable drain"

    with clock.frozen(NOW):
        arrive()
        worker = GapWorker([Queue(EVENTS_QUEUE, connection=redis_client)], connection=redis_client)
        worker.arrivals = [arrive for _ in range(30)]
        worker.work(burst=True)

    assert worker.arrivals == []
    assert redis_client.xlen(stream_key(0)) == 0
    assert int(redis_client.hget("metrics:worker", "applied:acme") or 0) == 31


def test_a_drain_enqueued_under_a_finished_drain_keeps_its_job(redis_client: redis.Redis) -> None:
    queue = EventQueue(redis_client, shards=1)
    first, second = queue.enqueue_drain(0), queue.enqueue_drain(0)
    assert first != second
    # RQ's cleanup of a finished drain (result_ttl=0) deletes that job only
    Job.fetch(first, connection=redis_client).delete(remove_from_queue=False)
    assert runnable_drains(redis_client, 0) == [second]


def _blocked_drain(redis_url: str, shard: int, reading, never) -> None:  # type: ignore[no-untyped-def]
    """A worker process whose drain takes a batch and then hangs in it (until it is killed)."""
    from connector import redis_conn

    def hang(events, now) -> None:  # type: ignore[no-untyped-def]
        reading.set()
        never.wait(120)

    redis_conn.reset()
    with clock.frozen(NOW):
        jobs.drain_events(shard, processor=hang, conn=redis.Redis.from_url(redis_url))


def test_a_shard_whose_worker_was_killed_drains_again_within_ten_seconds(
    redis_client: redis.Redis, redis_url: str, config_dir: Path
) -> None:
    queue = EventQueue(redis_client, shards=1)
    with clock.frozen(NOW):
        queue.ingest("acme", [make_event(n, user=f"u{n % 4}") for n in range(20)], 3600)
    Queue(EVENTS_QUEUE, connection=redis_client).empty()  # the killed worker had taken the job
    context = multiprocessing.get_context("fork")
    reading, never = context.Event(), context.Event()
    child = context.Process(target=_blocked_drain, args=(redis_url, 0, reading, never))
    child.start()
    assert reading.wait(60), "the worker never took a batch"
    os.kill(child.pid, signal.SIGKILL)  # type: ignore[arg-type]
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    assert redis_client.xpending(stream_key(0), jobs.GROUP)["pending"] == 20  # held by the dead worker

    # more events arrive; the dead worker's flag is still up, so no request enqueues a drain
    with clock.frozen(NOW + timedelta(seconds=1)):
        assert queue.ingest("acme", [make_event(n) for n in range(20, 25)], 3600).accepted == 5
    assert runnable_drains(redis_client, 0) == []
    # while its heartbeat is recent, the worker may be alive: nothing is re-armed
    assert rearm_pumps(queue, NOW + timedelta(seconds=PUMP_TTL_SECONDS - 1)) == 0
    # once it is stale (at most PUMP_TTL_SECONDS after the kill), the scheduler re-arms the shard
    later = NOW + timedelta(seconds=PUMP_TTL_SECONDS + 0.2)
    assert later - NOW < timedelta(seconds=10)
    assert rearm_pumps(queue, later) == 1
    with clock.frozen(later):
        SimpleWorker([Queue(EVENTS_QUEUE, connection=redis_client)], connection=redis_client).work(burst=True)
    # the killed worker's batch was claimed at once, not after CLAIM_IDLE_MS
    assert redis_client.xlen(stream_key(0)) == 0
    assert redis_client.xpending(stream_key(0), jobs.GROUP)["pending"] == 0
    assert int(redis_client.hget("metrics:worker", "applied:acme") or 0) == 25


def test_a_failed_batch_waits_for_its_backoff_without_re_arming_the_shard(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = EventQueue(redis_client, shards=1)
    with clock.frozen(NOW):
        queue.ingest("acme", [make_event(n) for n in range(3)], 3600)

        def failing(events, now) -> None:  # type: ignore[no-untyped-def]
            raise RuntimeError("profile store down")

        with pytest.raises(RuntimeError):
            jobs.drain_events(0, processor=failing, conn=redis_client)
    [holder] = redis_client.xpending(stream_key(0), jobs.GROUP)["consumers"]
    assert holder["name"] == jobs.BACKOFF_CONSUMER.encode()
    redis_client.delete(pump_key(0))  # the failed job's flag went away
    # the failed batch waits for its backoff, not re-armed every tick
    assert rearm_pumps(queue, NOW + timedelta(seconds=30)) == 0
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)  # the backoff is over
    assert rearm_pumps(queue, NOW + timedelta(seconds=60)) == 1


def test_a_live_workers_batch_in_progress_does_not_re_arm_the_shard(redis_client: redis.Redis) -> None:
    queue = EventQueue(redis_client, shards=1)
    with clock.frozen(NOW):
        queue.ingest("acme", [make_event(n) for n in range(3)], 3600)
    jobs.ensure_group(redis_client, 0)
    redis_client.xreadgroup(jobs.GROUP, "busy-worker", {stream_key(0): ">"}, count=10)
    redis_client.set(jobs.live_key("busy-worker"), repr(NOW.timestamp()))
    redis_client.delete(pump_key(0))
    assert rearm_pumps(queue, NOW + timedelta(seconds=1)) == 0
    assert rearm_pumps(queue, NOW + timedelta(seconds=PUMP_TTL_SECONDS + 1)) == 1  # until it goes silent
