from __future__ import annotations

from datetime import UTC, datetime, timedelta

from connector.worker import due
from connector.worker.ledger import Ledger

T0 = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


def test_ledger_yields_diffs_only_on_change(redis_client) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(redis_client)
    first = ledger.record("acme", "p1", frozenset({"vip", "active"}), {"ltv": 120.0}, T0, revision=1)
    assert first is not None
    assert (first.version, first.entered, first.exited) == (1, {"vip", "active"}, frozenset())
    assert ledger.record("acme", "p1", frozenset({"active", "vip"}), {"ltv": 120.0}, T0, revision=1) is None
    later = T0 + timedelta(hours=1)
    second = ledger.record("acme", "p1", frozenset({"vip"}), {"ltv": 150.0}, later, revision=2)
    assert second is not None
    assert (second.version, second.entered, second.exited) == (2, frozenset(), {"active"})
    assert second.changed_traits == {"ltv": 150.0}
    history = ledger.history("acme", "p1")
    assert [h["version"] for h in history] == [1, 2]
    assert history[1]["exited"] == ["active"]


def test_ledger_ignores_results_from_older_revisions_or_instants(redis_client) -> None:  # type: ignore[no-untyped-def]
    ledger = Ledger(redis_client)
    assert ledger.record("acme", "p1", frozenset({"a"}), {}, T0, revision=5) is not None
    assert ledger.record("acme", "p1", frozenset({"b"}), {}, T0 + timedelta(hours=1), revision=4) is None
    assert ledger.record("acme", "p1", frozenset({"b"}), {}, T0 - timedelta(seconds=1), revision=5) is None
    state = ledger.state("acme", "p1")
    assert state is not None and state.segments == {"a"} and state.version == 1


def test_due_index_takes_only_due_entries_and_keeps_rescheduled_ones(redis_client) -> None:  # type: ignore[no-untyped-def]
    pipe = redis_client.pipeline()
    due.schedule(pipe, "acme", "p1", T0)
    due.schedule(pipe, "acme", "p2", T0 + timedelta(seconds=1))
    due.schedule(pipe, "globex", "p3", T0 - timedelta(hours=1))
    pipe.execute()
    taken = due.take_due(redis_client, T0)
    assert due.group_by_account(taken) == {"globex": ["p3"], "acme": ["p1"]}
    # p1 is rescheduled between taking and removal: the new instant must survive
    due.schedule(redis_client, "acme", "p1", T0 + timedelta(days=2))
    assert due.remove_taken(redis_client, taken) == 1
    assert due.due_at(redis_client, "acme", "p1") == T0 + timedelta(days=2)
    assert due.pending(redis_client) == 2
    due.schedule(redis_client, "acme", "p2", None)
    assert due.pending(redis_client) == 1


def test_scheduler_sleeps_until_the_next_due_instant_at_most_one_tick(redis_client) -> None:  # type: ignore[no-untyped-def]
    from connector.worker import scheduler

    assert scheduler.sleep_seconds(redis_client, T0) == scheduler.TICK_SECONDS
    due.schedule(redis_client, "acme", "p1", T0 + timedelta(milliseconds=150))
    assert abs(scheduler.sleep_seconds(redis_client, T0) - 0.15) < 1e-6
    # entries due sooner (or already due) wait for the gap, so that close ones fire in one job
    due.schedule(redis_client, "acme", "p1", T0 + timedelta(milliseconds=10))
    assert scheduler.sleep_seconds(redis_client, T0) == scheduler.FIRE_GAP_SECONDS
    due.schedule(redis_client, "acme", "p1", T0 - timedelta(seconds=1))
    assert scheduler.sleep_seconds(redis_client, T0) == scheduler.FIRE_GAP_SECONDS
    due.schedule(redis_client, "acme", "p1", T0 + timedelta(hours=1))
    assert scheduler.sleep_seconds(redis_client, T0) == scheduler.TICK_SECONDS
