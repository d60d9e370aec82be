"""What follows the ledger is never lost: a batch (or a re-evaluation job) that recorded a profile's
new result in the ledger and stopped before submitting it to the destinations and updating the
segment member sets is done again when it runs again, although the ledger then shows no change.

The fakes of the three ESPs serve over loopback; the interruption is a write that fails once right
after the ledger (a connection lost, a slot moving on a cluster), the same point as a worker killed
there."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import timedelta
from typing import Any, NamedTuple

import pytest
import redis
from rq import Queue

from connector import clock, runtime
from connector.profiles import lookup
from connector.sync.keys import key as sync_key
from connector.worker import due, evaluation, jobs, scheduler, sizes
from connector.worker.jobs import REEVALUATE_QUEUE, drain_events
from connector.worker.ledger import Ledger
from tests.test_end_to_end import T0, fakes, held, run_workers, send, wired  # noqa: F401  (fixtures)

ON_ESPS = {
    "mailchimp_tags": ["Cart list", "cart abandoner"],
    "hubspot_lists": ["Cart abandoners"],
    "klaviyo_lists": ["Cart abandoners"],
}
NONE_ON_ESPS = {"mailchimp_tags": [], "hubspot_lists": [], "klaviyo_lists": []}


class Interrupted(RuntimeError):
    pass


class World(NamedTuple):
    """The account with rules and the three ESPs on fakes (tests/test_end_to_end.py)."""

    apps: dict[str, Any]
    client: Any
    conn: redis.Redis
    monkeypatch: pytest.MonkeyPatch


@pytest.fixture
def world(
    wired: dict[str, str],  # noqa: F811
    client: Any,
    redis_client: redis.Redis,
    fakes: dict[str, Any],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> World:
    return World(fakes["apps"], client, redis_client, monkeypatch)


def fail_once(monkeypatch: pytest.MonkeyPatch, times: int = 1) -> list[int]:
    """The first submission(s) to the destinations after the ledger was recorded fail; returns the
    calls made, failed ones included."""
    calls: list[int] = []
    real: Callable[..., Any] = evaluation.submit_many

    def submit_many(*args: Any, **kwargs: Any) -> Any:
        calls.append(len(args[2]))
        if len(calls) <= times:
            raise Interrupted("the queue Redis went away right after the ledger")
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "submit_many", submit_many)
    return calls


def cart_48_hours_ago(world: World, frozen: clock.FrozenClock, message_id: str) -> None:
    """A cart, applied, then the clock at the instant it makes an abandoner (not fired yet)."""
    send(world.client, "Product Added", clock.now(), message_id)
    run_workers(world.conn)
    frozen.advance(timedelta(hours=48))


def in_segment(conn: redis.Redis) -> tuple[bool, int]:
    pid = lookup(conn, "acme", "user_id", "u-cart")
    assert pid is not None
    return sizes.is_member(conn, "acme", "cart_abandoner", pid), sizes.sizes(conn, "acme").get(
        "cart_abandoner", 0
    )


def test_a_batch_stopped_after_the_ledger_reaches_esps_and_member_sets_on_redelivery(world: World) -> None:
    apps, client, redis_client, monkeypatch = world
    with clock.frozen(T0) as frozen:
        cart_48_hours_ago(world, frozen, "after-ledger-cart")
        scheduler.fire_due(redis_client, clock.now())
        run_workers(redis_client)
        assert held(apps) == ON_ESPS and in_segment(redis_client) == (True, 1)

        # the order's batch records the exit in the ledger, then its next write fails
        frozen.advance(timedelta(hours=3))
        send(client, "Order Completed", clock.now(), "after-ledger-order")
        calls = fail_once(monkeypatch)
        assert drain_failing(redis_client) == 1 and calls == [1]
        run_workers(redis_client)
        assert held(apps) == ON_ESPS  # nothing went out: the batch waits for its backoff

        # delivered again: the ledger shows no change, and what followed it is done all the same
        monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
        run_workers(redis_client)
        assert held(apps) == NONE_ON_ESPS
        assert in_segment(redis_client) == (False, 0)
        assert calls == [1, 1]


def test_a_re_evaluation_interrupted_after_the_ledger_is_retried_and_reaches_the_esps(world: World) -> None:
    apps, _, redis_client, monkeypatch = world
    with clock.frozen(T0) as frozen:
        cart_48_hours_ago(world, frozen, "after-ledger-due")
        calls = fail_once(monkeypatch)
        assert scheduler.fire_due(redis_client, clock.now()) == 1
        (job,) = Queue(REEVALUATE_QUEUE, connection=redis_client).jobs
        assert job.retries_left == jobs.REEVALUATE_RETRIES == job.meta["retries"]
        # the first run enters the segment in the ledger and fails; RQ runs it again at once, and
        # the retry, finding the ledger up to date, submits and counts the entry all the same
        run_workers(redis_client)
        assert held(apps) == ON_ESPS
        assert in_segment(redis_client) == (True, 1)
        assert calls == [1, 1]


def ledger_segments(conn: redis.Redis, pid: str) -> frozenset[str]:
    state = Ledger(conn).state("acme", pid)
    assert state is not None
    return frozenset(state.segments)


def drain_failing(conn: redis.Redis) -> int:
    failed = 0
    for shard in range(4):
        try:
            drain_events(shard, conn=conn)
        except Interrupted:
            failed += 1
    return failed


def test_a_redelivered_batch_with_a_further_change_keeps_the_first_in_the_member_sets(world: World) -> None:
    """The first attempt records "entered cart_abandoner" and stops; by the second, time made the
    profile enter checkout_abandoner as well, a change of its own: both are in the member sets."""
    _, client, redis_client, monkeypatch = world
    with clock.frozen(T0) as frozen:
        send(client, "Product Added", T0 - timedelta(hours=49), "further-cart")
        send(client, "Checkout Started", T0 - timedelta(hours=10), "further-checkout")
        fail_once(monkeypatch)
        assert drain_failing(redis_client) == 1
        pid = lookup(redis_client, "acme", "user_id", "u-cart")
        assert pid is not None
        assert ledger_segments(redis_client, pid) == frozenset({"cart_abandoner"})
        frozen.advance(timedelta(hours=15))
        monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
        run_workers(redis_client)
        both = frozenset({"cart_abandoner", "checkout_abandoner"})
        assert ledger_segments(redis_client, pid) == both
        assert {s for s in both if sizes.is_member(redis_client, "acme", s, pid)} == both
        assert {s: sizes.sizes(redis_client, "acme").get(s) for s in both} == dict.fromkeys(both, 1)


def test_a_stale_result_is_never_reconciled_over_a_newer_one(world: World) -> None:
    """A second run loaded the profile before another worker recorded a newer revision: the ledger
    ignores the stale result, and reconciling submits and counts nothing of it."""
    apps, client, redis_client, monkeypatch = world
    with clock.frozen(T0):
        send(client, "Product Added", T0 - timedelta(hours=49), "stale-cart")
        run_workers(redis_client)
        pid = lookup(redis_client, "acme", "user_id", "u-cart")
        assert pid is not None
        account = runtime.current().account("acme")
        assert account is not None
        before_order = evaluation.load_with_predictions(redis_client, "acme", [pid], clock.now())
        send(client, "Order Completed", clock.now(), "stale-order")
        for shard in range(4):
            drain_events(shard, conn=redis_client)  # another worker: exits, a newer version
        pending = redis_client.hget(sync_key("acme", "klaviyo", "pending"), pid)
        assert pending is not None and json.loads(pending)["segments"] == []
        monkeypatch.setattr(evaluation, "load_with_predictions", lambda *args, **kwargs: before_order)
        evaluation.evaluate_profiles(account, {pid}, clock.now(), redis_client, redis_client, reconcile=True)
        assert redis_client.hget(sync_key("acme", "klaviyo", "pending"), pid) == pending
        assert not sizes.is_member(redis_client, "acme", "cart_abandoner", pid)
        monkeypatch.undo()
        run_workers(redis_client)
        assert held(apps) == NONE_ON_ESPS


def test_a_re_evaluation_failing_past_its_retries_is_due_again_and_then_reconciled(world: World) -> None:
    apps, client, redis_client, monkeypatch = world
    with clock.frozen(T0) as frozen:
        send(client, "Product Added", T0, "retries-cart")
        run_workers(redis_client)
        pid = lookup(redis_client, "acme", "user_id", "u-cart")
        assert pid is not None
        frozen.advance(timedelta(hours=48))
        calls = fail_once(monkeypatch, times=1 + jobs.REEVALUATE_RETRIES)  # an outage outlasting them
        assert scheduler.fire_due(redis_client, clock.now()) == 1
        run_workers(redis_client)
        assert len(calls) == 1 + jobs.REEVALUATE_RETRIES
        assert held(apps) == NONE_ON_ESPS
        at = clock.now() + timedelta(seconds=due.RETRY_SECONDS)
        assert due.due_at(redis_client, "acme", pid) == at
        assert list(due.flags(redis_client, "acme", [pid])) == [pid]
        # the ledger holds the entry since the first attempt; the next run finds no change in it
        assert ledger_segments(redis_client, pid) == frozenset({"cart_abandoner"})
        frozen.advance(timedelta(seconds=due.RETRY_SECONDS))
        assert scheduler.fire_due(redis_client, clock.now()) == 1
        run_workers(redis_client)
        assert held(apps) == ON_ESPS
        assert sizes.is_member(redis_client, "acme", "cart_abandoner", pid)
        assert list(due.flags(redis_client, "acme", [pid])) == []


def test_a_profile_gone_leaves_no_flag_for_reconciling(redis_client: redis.Redis) -> None:
    """An erased or merged-away profile whose last re-evaluation failed keeps no entry behind."""
    due.restore(redis_client, "acme", ["p-gone", "p-kept"], T0)
    assert list(due.flags(redis_client, "acme", ["p-gone", "p-kept"])) == ["p-gone", "p-kept"]
    due.unschedule(redis_client, "acme", ["p-gone"])
    assert list(due.flags(redis_client, "acme", ["p-gone", "p-kept"])) == ["p-kept"]
    assert due.due_at(redis_client, "acme", "p-gone") is None


def test_a_flag_raised_again_while_a_job_reconciles_stays(redis_client: redis.Redis) -> None:
    """A re-evaluation reads the flags, reconciles and clears them; another job of one of those
    profiles fails meanwhile (its ledger record may be half done): that profile's flag stays for
    the next run. A flag stored before flags were counted is cleared as before."""
    due.restore(redis_client, "acme", ["p-1", "p-2"], T0)
    redis_client.sadd(due.RECONCILE_KEY, due.member("acme", "p-old"))  # raised before the counts
    seen = due.flags(redis_client, "acme", ["p-1", "p-2", "p-old"])
    assert set(seen) == {"p-1", "p-2", "p-old"} and seen["p-old"] == ""
    due.restore(redis_client, "acme", ["p-1"], T0)  # the other job fails
    due.unflag(redis_client, "acme", seen)
    assert list(due.flags(redis_client, "acme", ["p-1", "p-2", "p-old"])) == ["p-1"]
    due.unflag(redis_client, "acme", due.flags(redis_client, "acme", ["p-1"]))
    assert list(due.flags(redis_client, "acme", ["p-1"])) == []
    assert redis_client.exists(due.RAISED_KEY) == 0


def test_a_flag_raised_again_after_another_job_cleared_it_stays(redis_client: redis.Redis) -> None:
    """Two jobs read the same flag; one reconciles and clears it; a third job fails (raising it
    anew); the second job's clearing leaves the new flag."""
    due.restore(redis_client, "acme", ["p-1"], T0)
    first = due.flags(redis_client, "acme", ["p-1"])
    second = due.flags(redis_client, "acme", ["p-1"])
    due.unflag(redis_client, "acme", first)
    due.restore(redis_client, "acme", ["p-1"], T0)  # the third job fails
    due.unflag(redis_client, "acme", second)
    assert list(due.flags(redis_client, "acme", ["p-1"])) == ["p-1"]
