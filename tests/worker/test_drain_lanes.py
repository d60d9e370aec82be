"""A drain applies its shard's batches on several lanes (threads) at once: every entry once, the
pump flag released by the last lane, an error stopping the drain with the failed batch left to its
backoff, and the same profiles and segments as a single lane leaves."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path

import pytest
import redis

from connector import clock
from connector.errors import ConfigError
from connector.event import Event
from connector.ingest.queue import pump_key, stream_key
from connector.profiles import load_profile, lookup
from connector.settings import Settings
from connector.worker import jobs
from connector.worker.ledger import Ledger
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import NOW, ev
from tests.worker.test_dead_letter_events import Broken
from tests.worker.test_worker_concurrency import _ingest


def test_two_lanes_apply_every_entry_once_at_the_same_time_and_release_the_flag(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    shard = _ingest(redis_client, config_dir, [ev(f"lane-{i}", at=i, user_id=f"u{i % 7}") for i in range(60)])
    assert redis_client.exists(pump_key(shard))
    both_inside = threading.Barrier(2, timeout=30)
    lanes_seen: set[str] = set()
    applied: list[str] = []
    lock = threading.Lock()

    def processor(events: Sequence[Event], now: datetime) -> None:
        name = threading.current_thread().name
        with lock:
            first = name not in lanes_seen
            lanes_seen.add(name)
            applied.extend(e.source_event_id for e in events)
        if first:  # each lane's first batch waits for the other's: two batches in flight at once
            both_inside.wait()

    with clock.frozen(NOW):
        assert jobs.drain_events(shard, batch_size=4, processor=processor, conn=redis_client, lanes=2) == 60
    assert len(lanes_seen) == 2
    assert Counter(applied) == Counter(f"lane-{i}" for i in range(60))  # each once
    assert redis_client.xlen(stream_key(shard)) == 0
    assert not redis_client.xpending(stream_key(shard), jobs.GROUP)["pending"]
    assert not redis_client.exists(pump_key(shard))  # released: the next event enqueues a drain


def test_an_error_in_one_lane_stops_the_drain_and_leaves_its_batch_to_the_backoff(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    shard = _ingest(redis_client, config_dir, [ev(f"err-{i}", at=i, user_id=f"u{i}") for i in range(40)])
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)  # the backoff is over at once: still not this drain's
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def processor(events: Sequence[Event], now: datetime) -> None:
        with lock:
            seen.update(e.source_event_id for e in events)
        if any(e.source_event_id == "err-9" for e in events):
            raise Broken("a bug in this release")

    with clock.frozen(NOW), pytest.raises(Broken):
        jobs.drain_events(shard, batch_size=5, processor=processor, conn=redis_client, lanes=2)
    assert seen["err-9"] == 1  # no other lane took the failed batch up
    pending = redis_client.xpending_range(stream_key(shard), jobs.GROUP, min="-", max="+", count=100)
    backoff = [p for p in pending if p["consumer"] == jobs.BACKOFF_CONSUMER.encode()]
    assert len(backoff) == 5 and all(p["times_delivered"] == 1 for p in backoff)
    assert redis_client.exists(pump_key(shard))  # not released: the scheduler re-arms the shard


def test_a_claim_of_idle_entries_skips_those_another_lane_holds(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    shard = _ingest(redis_client, config_dir, [ev(f"held-{i}", at=i, user_id="u1") for i in range(6)])
    key = stream_key(shard)
    jobs.ensure_group(redis_client, shard)
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    ((_, read),) = redis_client.xreadgroup(jobs.GROUP, "me", {key: ">"}, count=6)
    ids = [entry_id for entry_id, _ in read]
    claimed = jobs._claim_stale(redis_client, key, "me", 10, held=set(ids[:4]))
    assert [entry_id for entry_id, _ in claimed] == ids[4:]
    pending = redis_client.xpending_range(key, jobs.GROUP, min="-", max="+", count=10)
    assert [p["times_delivered"] for p in pending] == [1, 1, 1, 1, 2, 2]  # the held ones untouched


def _people() -> list[Event]:
    """Ten customers over many small batches: views as anonymous visitors, then a cart and orders
    that link the visitor to the customer (a merge when the visitor came first), then opens."""
    events = []
    for i in range(240):
        person, step = i % 10, i // 10
        at = NOW - timedelta(days=3) + timedelta(minutes=i)
        if step < 8:
            events.append(ev(f"v{i}", "product_viewed", at=at, anonymous_id=f"anon{person}"))
        elif step < 10:
            ids = {"anonymous_id": f"anon{person}", "user_id": f"u{person}"}
            events.append(ev(f"c{i}", "add_to_cart", at=at, **ids))
        elif step < 10 + person % 4:
            events.append(ev(f"o{i}", "order_completed", at=at, props={"revenue": 400.0 * (1 + person)},
                             user_id=f"u{person}", email=f"c{person}@example.com"))  # fmt: skip
        else:
            events.append(ev(f"e{i}", "email_opened", at=at, user_id=f"u{person}", traits={"last": i}))
    return events


def _state(conn: redis.Redis) -> dict[str, object]:
    """What the account's people look like: each customer's events, traits, identities, segments."""
    state: dict[str, object] = {}
    for person in range(10):
        pid = lookup(conn, "acme", "user_id", f"u{person}")
        assert pid is not None and lookup(conn, "acme", "anonymous_id", f"anon{person}") == pid
        profile = load_profile(conn, "acme", pid, NOW)
        ledger = Ledger(conn).state("acme", pid)
        assert profile is not None and ledger is not None
        state[f"u{person}"] = (
            sorted(e.event_id for e in profile.events),
            profile.traits,
            sorted(ledger.segments),
        )
    return state


def test_two_lanes_leave_the_profiles_and_segments_one_lane_leaves(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker's full path with rules, merges included."""
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    rules = {"include": ["vip", "purchase_behavior", "cart_abandonment", "engagement", "lifecycle"]}
    write_accounts(config_dir, {**ACME, "rules": rules})
    states = []
    for lanes in (1, 2):
        redis_client.flushdb()
        shard = _ingest(redis_client, config_dir, _people())
        with clock.frozen(NOW):
            assert jobs.drain_events(shard, batch_size=7, conn=redis_client, lanes=lanes) == 240
        states.append(_state(redis_client))
    assert states[0] == states[1]
    segments = {name for _, _, names in states[0].values() for name in names}  # type: ignore[attr-defined]
    assert len(segments) >= 3  # the rules did sort these people


@pytest.mark.parametrize("raw", ["0", "-1", "two"])
def test_a_lane_count_below_one_or_not_a_number_stops_start_up(
    raw: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_DRAIN_LANES", raw)
    with pytest.raises(ConfigError, match="CONNECTOR_DRAIN_LANES"):
        Settings.from_env()
