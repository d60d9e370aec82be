"""The event worker's batched path: a batch talks to Redis in a bounded number of round trips,
whatever the number of profiles it touches; the ledger's history holds compact entries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

import rules
from connector.config import Account, Accounts, load_accounts
from connector.profiles import load_profile
from connector.sync.control import pending
from connector.worker import due
from connector.worker import ledger as ledger_module
from connector.worker.evaluation import evaluate_profiles
from connector.worker.ledger import Entry, Ledger, history_key, ledger_key
from connector.worker.pipeline import apply_batch
from tests.conftest import ACME, write_accounts
from tests.helpers import before_sent, script_call
from tests.profile_helpers import ev

NOW = datetime(2024, 3, 1, tzinfo=UTC)
T0 = datetime(2024, 3, 1, 11, 0, tzinfo=UTC)


class CountingConnection(redis.Connection):
    """A real connection that counts the requests it sends (one per command or per pipeline)."""

    sent = 0

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        super().send_packed_command(command, check_health)


@pytest.fixture
def counted(redis_url: str, redis_client: redis.Redis) -> redis.Redis:
    pool = redis.ConnectionPool.from_url(redis_url, connection_class=CountingConnection)
    return redis.Redis(connection_pool=pool)


@pytest.fixture
def shop(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    monkeypatch.setenv("BATCH_MC_KEY", "mc-key-0123456789-us1")
    mapping = {"tags": ["vip"]}
    destination = {"api_key_env": "BATCH_MC_KEY", "base_url": "http://127.0.0.1:9", "sandbox": True,
                   "list_id": "l1", "segments": {"vip": mapping, "repeat_buyer": mapping}}  # fmt: skip
    acme = {
        **ACME,
        "rules": {"include": ["vip", "purchase_behavior", "cart_abandonment"]},
        "destinations": {"mailchimp": destination},
    }
    write_accounts(config_dir, acme)
    return load_accounts(config_dir)


def acme(accounts: Accounts) -> Account:
    account = accounts.get("acme")
    assert account is not None
    return account


def orders(n: int, at: datetime = NOW - timedelta(hours=2)) -> list[Any]:
    """Two orders for each of ``n`` known customers, and a cart for an anonymous visitor each."""
    events = []
    for i in range(n):
        for k in range(2):
            moment = at + timedelta(minutes=k)
            events.append(ev(f"o-{i}-{k}", "order_completed", at=moment, props={"revenue": 900.0},
                             user_id=f"u{i}", email=f"c{i}@example.com"))  # fmt: skip
        events.append(ev(f"c-{i}", "add_to_cart", at=at, anonymous_id=f"a{i}"))
    return events


def round_trips(conn: redis.Redis, account: Account, pids: list[str], now: datetime) -> int:
    before = CountingConnection.sent
    evaluate_profiles(account, pids, now, conn, conn)
    return CountingConnection.sent - before


def test_evaluating_a_batch_costs_the_same_round_trips_for_6_or_120_profiles(
    counted: redis.Redis, shop: Accounts
) -> None:
    few = apply_batch(orders(3), NOW, shop, counted, counted)["acme"].touched
    many = apply_batch(orders(60), NOW, shop, counted, counted)["acme"].touched
    assert len(many) == 120  # the 3 customers and visitors of the first batch are among them
    small = round_trips(counted, acme(shop), sorted(few), NOW + timedelta(seconds=1))
    large = round_trips(counted, acme(shop), sorted(many), NOW + timedelta(seconds=2))
    assert small == large <= 8


def test_a_batch_queues_the_known_customers_for_the_destination_and_no_anonymous_visitor(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    outcome = apply_batch(orders(20), NOW, shop, redis_client, redis_client)["acme"]
    ledger = Ledger(redis_client)
    states = {pid: ledger.state("acme", pid) for pid in outcome.touched}
    customers = [pid for pid, state in states.items() if state is not None and "vip" in state.segments]
    assert len(customers) == 20
    queued = pending(redis_client, "acme", "mailchimp")
    assert sorted(queued) == sorted(customers)
    assert all(c.email and c.email.endswith("@example.com") and "vip" in c.tags for c in queued.values())
    expected = {}
    for pid in outcome.touched:
        profile = load_profile(redis_client, "acme", pid, NOW)
        assert profile is not None
        expected[pid] = rules.evaluate(profile, acme(shop).ruleset, NOW, explain=False).next_due
    assert any(expected.values())
    assert {pid: due.due_at(redis_client, "acme", pid) for pid in outcome.touched} == expected


def test_history_entries_are_compact_and_read_back_in_the_same_shape(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    ledger.record("acme", "p1", frozenset({"vip", "active"}), {"ltv": 120.0, "n": 1}, T0, revision=1)
    later = T0 + timedelta(hours=1, microseconds=7)
    ledger.record("acme", "p1", frozenset({"vip", "new"}), {"ltv": 150.0, "n": 1}, later, revision=2)
    # names by their codes (active 1, ltv 2, n 3, vip 4, new 5); instants in base-36 µs; each change
    # holds the traits it changed as they were before (the first: "*", none were stored)
    assert redis_client.get(ledger_key("acme", "p1")) == (
        b"2 2 gtw7093407  2 5,4 2,3=[150.0,1]\n1 gtw5cpqm80 +1+4 *\n2 gtw7093407 +5-1 /2=[120.0]"
    )
    assert redis_client.exists(history_key("acme", "p1")) == 0
    assert redis_client.memory_usage(ledger_key("acme", "p1")) < 200  # state and history, one key
    assert ledger.history("acme", "p1") == [
        {"version": 1, "at": "2024-03-01T11:00:00Z", "entered": ["active", "vip"], "exited": [],
         "traits": {"ltv": 120.0, "n": 1}},
        {"version": 2, "at": "2024-03-01T12:00:00.000007Z", "entered": ["new"], "exited": ["active"],
         "traits": {"ltv": 150.0}},
    ]  # fmt: skip


def test_history_entries_written_with_the_whole_state_are_still_read(redis_client: redis.Redis) -> None:
    old = {"v": 3, "at": "2024-03-01T11:00:00Z", "old_s": '["a"]', "new_s": '["b"]',
           "old_t": '{"x":1}', "new_t": '{"x":2}'}  # fmt: skip
    redis_client.xadd(history_key("acme", "p1"), old)
    redis_client.hset(ledger_key("acme", "p1"), mapping={"v": 3, "s": '["b"]', "t": '{"x":2}', "r": 1})
    ledger = Ledger(redis_client)
    ledger.record("acme", "p1", frozenset({"c"}), {"x": 2}, T0, revision=2)
    assert ledger.history("acme", "p1") == [
        {"version": 3, "at": "2024-03-01T11:00:00Z", "entered": ["b"], "exited": ["a"], "traits": {"x": 2}},
        {"version": 4, "at": "2024-03-01T11:00:00Z", "entered": ["c"], "exited": ["b"], "traits": {}},
    ]
    assert ledger.history_length("acme", "p1") == 2


def _another_worker_records_before_the_write(monkeypatch: pytest.MonkeyPatch, conn: redis.Redis) -> None:
    """Another worker records p1 once, after this ledger read it and before its record script is
    sent."""

    def other_worker() -> None:
        Ledger(conn).record("acme", "p1", frozenset({"b"}), {}, T0, revision=2)

    before_sent(monkeypatch, [script_call(conn, ledger_module._RECORD_MANY.source)], other_worker)


def test_a_state_recorded_between_read_and_write_is_read_again(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    Ledger(redis_client).record("acme", "p1", frozenset({"a"}), {}, T0, revision=1)
    _another_worker_records_before_the_write(monkeypatch, redis_client)
    diffs = Ledger(redis_client).record_many("acme", [Entry("p1", frozenset({"c"}), {}, 3)], T0)
    diff = diffs[0]
    assert diff is not None and diff.version == 3
    assert (diff.entered, diff.exited) == ({"c"}, {"b"})
    assert [h["exited"] for h in Ledger(redis_client).history("acme", "p1")] == [[], ["a"], ["b"]]
    state = Ledger(redis_client).state("acme", "p1")
    assert state is not None and state.segments == {"c"}


def test_due_entries_of_a_batch_are_set_and_cleared_together(redis_client: redis.Redis) -> None:
    due.schedule_many(redis_client, "acme", {"p1": T0, "p2": T0 + timedelta(hours=1)})
    pipe = redis_client.pipeline(transaction=False)
    due.schedule_many(pipe, "acme", {"p1": None, "p2": T0, "p3": None})
    assert len(pipe.command_stack) == 2  # one ZADD, one ZREM
    pipe.execute()
    assert [due.due_at(redis_client, "acme", p) for p in ("p1", "p2", "p3")] == [None, T0, None]


def test_a_settled_worker_heap_is_frozen_and_collected_less_often() -> None:
    import gc

    from connector.worker import jobs

    before = gc.get_threshold()
    try:
        jobs.settle_heap()
        assert gc.get_threshold()[0] == jobs.GC_YOUNG_THRESHOLD
        assert gc.get_threshold()[1:] == before[1:]
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
