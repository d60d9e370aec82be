"""What follows the ledger is never lost: a batch (or a re-evaluation job) that recorded a profile's
new result in the ledger and stopped before submitting it to the destinations and updating the
segment member sets is done again when it runs again, although the ledger then shows no change.

The fakes of the three ESPs serve over loopback; the interruption is a write that fails once right
after the ledger (a connection lost, a slot moving on a cluster), the same point as a worker killed
there."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis
from rq import Queue

from connector import clock
from connector.profiles import lookup
from connector.worker import evaluation, jobs, scheduler, sizes
from connector.worker.jobs import REEVALUATE_QUEUE, drain_events
from tests.test_end_to_end import T0, fakes, held, run_workers, send, wired  # noqa: F401  (fixtures)

ON_ESPS = {
    "mailchimp_tags": ["Cart list", "cart abandoner"],
    "hubspot_lists": ["Cart abandoners"],
    "klaviyo_lists": ["Cart abandoners"],
}
NONE_ON_ESPS = {"mailchimp_tags": [], "hubspot_lists": [], "klaviyo_lists": []}


class Interrupted(RuntimeError):
    pass


def fail_once(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The first submission to the destinations after the ledger was recorded fails; returns the
    calls made, failed one included."""
    calls: list[int] = []
    real: Callable[..., Any] = evaluation.submit_many

    def submit_many(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        if len(calls) == 1:
            raise Interrupted("the queue Redis went away right after the ledger")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "submit_many", submit_many)
    return calls


def in_segment(conn: redis.Redis) -> tuple[bool, int]:
    pid = lookup(conn, "acme", "user_id", "u-cart")
    assert pid is not None
    return sizes.is_member(conn, "acme", "cart_abandoner", pid), sizes.sizes(conn, "acme").get(
        "cart_abandoner", 0
    )


def test_a_batch_interrupted_after_the_ledger_reaches_the_esps_and_the_member_sets_when_delivered_again(
    wired: dict[str, str],  # noqa: F811
    client: Any,
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apps = fakes["apps"]
    with clock.frozen(T0) as frozen:
        send(client, "Product Added", T0, "after-ledger-cart")
        run_workers(redis_client)
        frozen.advance(timedelta(hours=48))
        scheduler.fire_due(redis_client, clock.now())
        run_workers(redis_client)
        assert held(apps) == ON_ESPS and in_segment(redis_client) == (True, 1)

        # the order's batch records the exit in the ledger, then its next write fails
        frozen.advance(timedelta(hours=3))
        send(client, "Order Completed", clock.now(), "after-ledger-order")
        calls = fail_once(monkeypatch)
        failed = 0
        for shard in range(4):
            try:
                drain_events(shard, conn=redis_client)
            except Interrupted:
                failed += 1
        assert failed == 1 and calls == [1]
        run_workers(redis_client)
        assert held(apps) == ON_ESPS  # nothing went out: the batch waits for its backoff

        # delivered again: the ledger shows no change, and what followed it is done all the same
        monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
        run_workers(redis_client)
        assert held(apps) == NONE_ON_ESPS
        assert in_segment(redis_client) == (False, 0)
        assert calls == [1, 1]


def test_a_re_evaluation_interrupted_after_the_ledger_is_retried_and_reaches_the_esps(
    wired: dict[str, str],  # noqa: F811
    client: Any,
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    apps = fakes["apps"]
    with clock.frozen(T0) as frozen:
        send(client, "Product Added", T0, "after-ledger-due")
        run_workers(redis_client)
        frozen.advance(timedelta(hours=48))
        calls = fail_once(monkeypatch)
        assert scheduler.fire_due(redis_client, clock.now()) == 1
        (job,) = Queue(REEVALUATE_QUEUE, connection=redis_client).jobs
        assert job.retries_left == jobs.REEVALUATE_RETRIES
        # the first run enters the segment in the ledger and fails; RQ runs it again at once, and
        # the retry, finding the ledger up to date, submits and counts the entry all the same
        run_workers(redis_client)
        assert held(apps) == ON_ESPS
        assert in_segment(redis_client) == (True, 1)
        assert calls == [1, 1]
