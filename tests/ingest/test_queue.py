"""The durable event queue: ingest (dedupe + stream + pump flag), drain jobs, reclaim, dead letters."""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
import redis
from rq import Queue, SimpleWorker

from connector import clock
from connector.event import Event
from connector.ingest.queue import EVENTS_QUEUE, EventQueue, pump_key, stream_key
from connector.sync.deadletters import DeadLetters
from connector.worker import jobs
from connector.worker.scheduler import rearm_pumps

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def make_event(n: int, user: str = "user-1", account: str = "acme") -> Event:
    return Event(
        account=account,
        source="segment",
        source_event_id=f"msg-{n}",
        type="track",
        name="product_viewed",
        occurred_at=T0 + timedelta(seconds=n),
        received_at=T0 + timedelta(seconds=n),
        identities={"user_id": user},
        properties={"n": n},
    )


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[Event]] = []

    def __call__(self, events: Sequence[Event], now: datetime) -> None:
        self.batches.append(list(events))

    @property
    def ids(self) -> list[str]:
        return [e.source_event_id for batch in self.batches for e in batch]


@pytest.fixture
def queue(redis_client: redis.Redis) -> EventQueue:
    return EventQueue(redis_client, shards=1)


def test_ingest_stores_once_and_raises_the_pump_once(queue: EventQueue, redis_client) -> None:  # type: ignore[no-untyped-def]
    first = queue.ingest("acme", [make_event(1), make_event(2)], dedupe_ttl_seconds=3600)
    assert (first.accepted, first.duplicates) == (2, 0)
    again = queue.ingest("acme", [make_event(2), make_event(3)], dedupe_ttl_seconds=3600)
    assert (again.accepted, again.duplicates) == (1, 1)
    assert queue.pending() == {0: 3}
    assert redis_client.exists(pump_key(0))
    # one drain job for the shard, not one per request
    rq = Queue(EVENTS_QUEUE, connection=redis_client)
    assert len(rq.job_ids) == 1 and rq.job_ids[0].startswith("drain-events-0-")
    ttl = redis_client.pttl("dd:acme:" + make_event(1).event_id)
    assert 3_500_000 < ttl <= 3_600_000


def test_dedupe_is_per_account(queue: EventQueue) -> None:
    assert queue.ingest("acme", [make_event(1)], 3600).accepted == 1
    assert queue.ingest("globex", [make_event(1, account="globex")], 3600).accepted == 1


def test_drain_consumes_in_batches_acks_and_deletes(queue: EventQueue, redis_client) -> None:  # type: ignore[no-untyped-def]
    queue.ingest("acme", [make_event(n) for n in range(7)], 3600)
    recorder = Recorder()
    # one lane: batches in the order read (two lanes may finish them in either order)
    done = jobs.drain_events(0, batch_size=3, processor=recorder, conn=redis_client, lanes=1)
    assert done == 7
    assert [len(b) for b in recorder.batches] == [3, 3, 1]
    assert recorder.ids == [f"msg-{n}" for n in range(7)]
    assert redis_client.xlen(stream_key(0)) == 0
    assert redis_client.xpending(stream_key(0), jobs.GROUP)["pending"] == 0
    assert not redis_client.exists(pump_key(0))  # released: the next ingest enqueues a new drain


def test_drain_through_rq_worker_empties_the_shard(queue: EventQueue, redis_client, config_dir) -> None:  # type: ignore[no-untyped-def]
    queue.ingest("acme", [make_event(n) for n in range(5)], 3600)
    rq = Queue(EVENTS_QUEUE, connection=redis_client)
    SimpleWorker([rq], connection=redis_client).work(burst=True)
    assert queue.pending() == {0: 0}
    assert not redis_client.exists(pump_key(0))
    assert queue.ingest("acme", [make_event(9)], 3600).accepted == 1
    [job_id] = rq.job_ids  # re-armed by the next ingest
    assert job_id.startswith("drain-events-0-")


def _stuck_mid_batch(conn: redis.Redis, count: int) -> list[bytes]:
    """A consumer reads entries and keeps them pending; its heartbeat is recent (it is alive)."""
    jobs.ensure_group(conn, 0)
    conn.set(jobs.live_key("stuck-consumer"), repr(clock.now().timestamp()))
    reply = conn.xreadgroup(jobs.GROUP, "stuck-consumer", {stream_key(0): ">"}, count=count)
    return [entry_id for entry_id, _ in reply[0][1]]


def test_entries_left_pending_by_a_live_consumer_are_reclaimed_after_the_idle_time(
    queue: EventQueue, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.ingest("acme", [make_event(n) for n in range(4)], 3600)
    taken = _stuck_mid_batch(redis_client, 2)
    assert len(taken) == 2

    # Not idle long enough yet (default CLAIM_IDLE_MS is a minute): only the unread entries are applied.
    recorder = Recorder()
    jobs.drain_events(0, processor=recorder, conn=redis_client, time_budget=0.05)
    assert recorder.ids == ["msg-2", "msg-3"]
    assert redis_client.xpending(stream_key(0), jobs.GROUP)["pending"] == 2

    # Once idle for longer than CLAIM_IDLE_MS, the next drain claims them back.
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    recorder = Recorder()
    assert jobs.drain_events(0, processor=recorder, conn=redis_client) == 2
    assert recorder.ids == ["msg-0", "msg-1"]
    assert redis_client.xlen(stream_key(0)) == 0
    assert redis_client.xpending(stream_key(0), jobs.GROUP)["pending"] == 0


def test_undecodable_item_goes_to_dead_letters_and_does_not_block(queue: EventQueue, redis_client) -> None:  # type: ignore[no-untyped-def]
    queue.ingest("acme", [make_event(1)], 3600)
    redis_client.xadd(stream_key(0), {"e": b"{not json"})
    redis_client.xadd(stream_key(0), {"e": json.dumps({"account": "acme"})})
    queue.ingest("acme", [make_event(2)], 3600)

    recorder = Recorder()
    assert jobs.drain_events(0, processor=recorder, conn=redis_client) == 2
    assert recorder.ids == ["msg-1", "msg-2"]
    assert redis_client.xlen(stream_key(0)) == 0

    dead = DeadLetters(redis_client)
    letters = list(dead.list("events"))
    assert len(letters) == 2
    reasons = sorted(letter.reason for letter in letters)
    assert reasons[0].startswith("invalid event")
    assert reasons[1].startswith("not JSON")
    assert "{not json" in {letter.payload for letter in letters}


def test_entry_delivered_too_often_goes_to_dead_letters(
    queue: EventQueue, redis_client, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue.ingest("acme", [make_event(1), make_event(2)], 3600)
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    jobs.ensure_group(redis_client, 0)
    # msg-1 keeps killing the consumer that takes it: read once, then claimed back again and again
    redis_client.xreadgroup(jobs.GROUP, "dying", {stream_key(0): ">"}, count=1)
    for _ in range(jobs.MAX_DELIVERIES):
        redis_client.xautoclaim(stream_key(0), jobs.GROUP, "dying", min_idle_time=0, start_id="0-0")
    [pending] = redis_client.xpending_range(stream_key(0), jobs.GROUP, min="-", max="+", count=10)
    assert pending["times_delivered"] == jobs.MAX_DELIVERIES + 1

    recorder = Recorder()
    jobs.drain_events(0, processor=recorder, conn=redis_client)
    assert recorder.ids == ["msg-2"]
    [letter] = DeadLetters(redis_client).list("events")
    assert "delivered more than" in letter.reason
    assert json.loads(letter.payload)["source_event_id"] == "msg-1"


def test_rearm_pumps_enqueues_a_shard_with_events_and_no_pump_flag(redis_client) -> None:  # type: ignore[no-untyped-def]
    queue = EventQueue(redis_client, shards=3)
    redis_client.xadd(stream_key(1), {"e": make_event(1).to_json()})
    redis_client.xadd(stream_key(2), {"e": make_event(2).to_json()})
    redis_client.set(pump_key(2), repr(T0.timestamp()))  # shard 2 already has a drain queued
    rq = Queue(EVENTS_QUEUE, connection=redis_client)

    assert rearm_pumps(queue, T0) == 1
    [job_id] = rq.job_ids
    assert job_id.startswith("drain-events-1-")
    assert float(redis_client.get(pump_key(1))) == T0.timestamp()
    assert rearm_pumps(queue, T0 + timedelta(seconds=1)) == 0  # flag up and fresh: nothing more to do
    assert rq.job_ids == [job_id]
