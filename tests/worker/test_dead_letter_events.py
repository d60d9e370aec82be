"""An event batch that keeps failing goes to the dead letters under its account, and replaying it
puts the events back on their stream (past the dedupe check that accepted them once): the next
drain applies them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from connector import clock, sync
from connector.ingest.queue import EventQueue, stream_key
from connector.profiles import load_profile, lookup
from connector.sync.deadletters import DeadLetters
from connector.worker import jobs
from tests.profile_helpers import NOW, ev


class Broken(RuntimeError):
    pass


def test_a_dead_lettered_event_batch_is_the_account_s_and_replays_onto_its_stream(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    events = [ev(f"dl{i}", at=i, user_id="u-dead") for i in range(3)]
    assert EventQueue(redis_client, 1).ingest("acme", events, 3600).accepted == 3
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    monkeypatch.setattr(jobs, "MAX_DELIVERIES", 2)

    def broken(batch: Any, now: Any) -> None:
        raise Broken("a bug in this release")

    with clock.frozen(NOW):
        for _ in range(jobs.MAX_DELIVERIES):
            with pytest.raises(Broken):
                jobs.drain_events(0, processor=broken, conn=redis_client)
        assert jobs.drain_events(0, processor=broken, conn=redis_client) == 0  # past the limit
    dead = DeadLetters(redis_client)
    assert dead.count("events") == 3 and redis_client.xlen(stream_key(0)) == 0
    items = list(dead.list("events"))
    assert {item.account for item in items} == {"acme"}

    # the release is fixed: replay them
    assert [sync.replay_dead_letter(redis_client, dead, item, NOW) for item in items] == ["queued"] * 3
    assert dead.count("events") == 0 and redis_client.xlen(stream_key(0)) == 3
    with clock.frozen(NOW):
        assert jobs.drain_events(0, conn=redis_client) == 3
    pid = lookup(redis_client, "acme", "user_id", "u-dead")
    assert pid is not None
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and len(profile.events) == 3


def test_an_unreadable_dead_lettered_event_is_not_replayable_and_stays(redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client)
    dead.put("events", "not JSON", "{not json", NOW)
    (item,) = dead.list("events")
    assert sync.replay_dead_letter(redis_client, dead, item, NOW) == "not replayable"
    assert dead.count("events") == 1


def test_one_event_that_cannot_be_applied_holds_back_only_itself(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    events = [ev(f"ok{i}", f"ok{i}", at=i, user_id=f"u-ok{i}") for i in range(3)]
    events.insert(1, ev("poison", "poison", at=1, user_id="u-poison"))
    assert EventQueue(redis_client, 1).ingest("acme", events, 3600).accepted == 4
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    monkeypatch.setattr(jobs, "MAX_DELIVERIES", 3)
    applied: list[str] = []

    def picky(batch: Any, now: Any) -> None:
        if any(event.name == "poison" for event in batch):
            raise Broken("cannot convert float infinity to integer")
        applied.extend(event.name for event in batch)

    with clock.frozen(NOW):
        with pytest.raises(Broken):  # the batch fails once: retried whole (the cause may pass)
            jobs.drain_events(0, processor=picky, conn=redis_client)
        assert applied == []
        with pytest.raises(Broken):  # again: each event alone, the others are applied and acknowledged
            jobs.drain_events(0, processor=picky, conn=redis_client)
        assert sorted(applied) == ["ok0", "ok1", "ok2"]
        assert redis_client.xlen(stream_key(0)) == 1
        with pytest.raises(Broken):
            jobs.drain_events(0, processor=picky, conn=redis_client)
        assert jobs.drain_events(0, processor=picky, conn=redis_client) == 0  # past the limit
    dead = DeadLetters(redis_client)
    [item] = dead.list("events")
    assert item.account == "acme" and '"poison"' in item.payload
    last = "last error: Broken: cannot convert float infinity to integer"
    assert item.reason == f"delivered more than 3 times without success ({last})"
    assert sorted(applied) == ["ok0", "ok1", "ok2"] and redis_client.xlen(stream_key(0)) == 0


def test_an_outage_is_not_tried_event_by_event(
    redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Redis away says nothing about the events: each alone would only wait out the same outage
    monkeypatch.setenv("CONNECTOR_EVENT_SHARDS", "1")
    events = [ev(f"out{i}", at=i, user_id=f"u-out{i}") for i in range(5)]
    assert EventQueue(redis_client, 1).ingest("acme", events, 3600).accepted == 5
    monkeypatch.setattr(jobs, "CLAIM_IDLE_MS", 0)
    calls: list[int] = []

    def away(batch: Any, now: Any) -> None:
        calls.append(len(batch))
        raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6390. Connection refused.")

    with clock.frozen(NOW):
        for _ in range(3):
            with pytest.raises(redis.ConnectionError):
                jobs.drain_events(0, processor=away, conn=redis_client)
    assert calls == [5, 5, 5]
    assert redis_client.xlen(stream_key(0)) == 5
