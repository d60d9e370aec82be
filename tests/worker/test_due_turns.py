"""One ``connector worker`` serves re-evaluations (due times, publishes), flushes and event drains in
turns: a drain gives the worker up to a waiting flush or re-evaluation after its turn, a flush does
not sleep through a batch delay while a drain or a re-evaluation waits, and the worker takes flushes
before the next turn of a drain. Without these, a steady flow of events (or of due times) kept the
changes from the destinations until it stopped."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from rq import Queue

from connector import clock, sync
from connector.cli import run_cmd
from connector.event import Event
from connector.ingest.queue import EVENTS_QUEUE, EventQueue, stream_key
from connector.sync import jobs as sync_jobs
from connector.worker import jobs
from tests.profile_helpers import ev
from tests.sync.test_sync_worker import RecordingEsp, job_account, submit

NOW = datetime(2024, 1, 1, 12, tzinfo=UTC)


def test_a_drain_gives_the_worker_up_to_a_waiting_flush_after_its_turn(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = EventQueue(redis_client, shards=1)
    queue.ingest("acme", [ev(f"turn-{n}", at=NOW, user_id=f"u{n}") for n in range(3)], 3600)
    Queue(sync.SYNC_QUEUE, connection=redis_client).enqueue("connector.sync.jobs.flush_job", "acme", "esp")
    monkeypatch.setattr(jobs, "TURN_SECONDS", 0.0)  # the turn is over after the first batch
    applied: list[int] = []
    drains = len(Queue(EVENTS_QUEUE, connection=redis_client))

    def processor(events: Sequence[Event], now: datetime) -> None:
        applied.append(len(events))

    # one lane: the turn ends after its first batch (with more, after each lane's batch in flight)
    assert jobs.drain_events(0, batch_size=1, processor=processor, conn=redis_client, lanes=1) == 1
    assert applied == [1]
    assert redis_client.xlen(stream_key(0)) == 2  # the rest waits for the drain it enqueued again
    assert len(Queue(EVENTS_QUEUE, connection=redis_client)) == drains + 1
    # with nothing else waiting the drain takes the whole shard
    Queue(sync.SYNC_QUEUE, connection=redis_client).empty()
    assert jobs.drain_events(0, batch_size=1, processor=processor, conn=redis_client) == 2


def test_a_flush_does_not_sleep_through_the_batch_delay_while_a_drain_waits(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    acct = job_account(tmp_path, monkeypatch)
    slept: list[float] = []
    with clock.frozen(NOW) as frozen:

        class ChangingMeanwhile(RecordingEsp):
            def apply(self, changes, owned):  # type: ignore[no-untyped-def]
                if not self.calls:  # p2 changes while p1's batch is on its way: ready 0.5 s later
                    submit(redis_client, acct, "p2", 1, ["vip"], now=frozen())
                return super().apply(changes, owned)

        esp = ChangingMeanwhile()
        submit(redis_client, acct, "p1", 1, ["vip"])
        frozen.advance(timedelta(seconds=1))
        EventQueue(redis_client, shards=1).enqueue_drain(0)
        totals = sync.flush_job(
            "acme", "mailchimp", conn=redis_client, factory=lambda d: esp, sleep=slept.append
        )
    assert totals == {"applied": 1} and slept == []
    assert len(sync.pending(redis_client, "acme", "mailchimp")) == 1
    # changes queued until p2 is ready enqueue no flush of their own; then the scheduler arms it
    assert 0 < redis_client.pttl(sync.key("acme", "mailchimp", "armed")) <= 500
    ready_at = redis_client.zscore("sync:due", sync.member("acme", "mailchimp"))
    assert ready_at == pytest.approx((NOW + timedelta(seconds=1.5)).timestamp())


def test_the_worker_takes_flushes_before_the_next_turn_of_a_drain() -> None:
    order = run_cmd.WORKER_QUEUES  # what `connector worker` serves by default, in this order
    assert order.index("reevaluate") < order.index("sync") < order.index("events") < order.index("predict")
    assert set(sync_jobs.OTHER_WORKER_QUEUES) == {jobs.REEVALUATE_QUEUE, EVENTS_QUEUE}
