"""The event worker's live entries (real Redis, the real pipeline in-process): while the account is
watched each batch writes one ``landed`` entry (where each event landed, the transitions and trait
changes it caused); otherwise nothing but one EXISTS per batch."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from connector import livefeed
from connector.config import Accounts, load_accounts
from connector.event import Event
from connector.ingest import queue
from connector.ops import live
from connector.profiles import lookup
from connector.worker.pipeline import apply_batch
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import ev

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def shop(config_dir: Path) -> Accounts:
    write_accounts(config_dir, {**ACME, "rules": {"include": ["vip", "lifecycle"]}})
    return load_accounts(config_dir)


def order(sid: str, revenue: float, email: str) -> Event:
    return ev(sid, "order_completed", at=NOW - timedelta(hours=1), props={"revenue": revenue}, email=email)


def landed(conn: redis.Redis) -> list[dict[str, object]]:
    return [e for _, e in live.latest(conn, "acme", 100) if e.get("kind") == "landed"]


def test_nothing_is_written_while_nobody_watches(redis_client: redis.Redis, shop: Accounts) -> None:
    apply_batch([order("o1", 1500.0, "big@example.com")], NOW, shop, redis_client, redis_client)
    assert redis_client.exists(live.key("acme")) == 0


def test_while_watched_a_batch_shows_where_its_events_landed_and_what_they_caused(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    live.watch(redis_client, "acme")
    events = [order("o1", 1500.0, "big.spender@example.com"), order("o2", 20.0, "small@example.com")]
    apply_batch(events, NOW, shop, redis_client, redis_client)
    (entry,) = landed(redis_client)
    assert entry["outcome"] == "landed" and entry["sender"] == "segment"
    assert entry["profile_count"] == 2
    big = lookup(redis_client, "acme", "email", "big.spender@example.com")
    by_profile = {p["profile"]: p for p in entry["profiles"]}  # type: ignore[attr-defined]
    assert set(by_profile) == {big, lookup(redis_client, "acme", "email", "small@example.com")}
    # the ids the delivery's entry shows (connector.ops.live), so the console puts it under it
    assert by_profile[big]["events"] == [events[0].event_id]
    assert live.delivered_entry(events[:1], 1, 0)["events"][0]["id"] == events[0].event_id
    assert "vip" in by_profile[big]["entered"] and by_profile[big]["exited"] == []
    assert "vip" not in by_profile[lookup(redis_client, "acme", "email", "small@example.com")]["entered"]
    raw = json.dumps(entry)
    assert "big.spender" not in raw and "small@" not in raw  # no identity in clear

    # the same batch delivered again (a worker killed before acknowledging) causes no transition
    apply_batch(events, NOW, shop, redis_client, redis_client)
    again = landed(redis_client)[-1]
    assert all(not p["entered"] and not p["exited"] for p in again["profiles"])  # type: ignore[attr-defined]


def test_one_watcher_check_per_batch_not_per_event(
    redis_client: redis.Redis, shop: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []
    real = livefeed.watched
    monkeypatch.setattr(
        livefeed, "watched", lambda conn, account: asked.append(account) or real(conn, account)
    )
    events = [order(f"o{i}", 10.0 * i, f"c{i}@example.com") for i in range(20)]
    redis_client.config_resetstat()
    apply_batch(events, NOW, shop, redis_client, redis_client)
    assert asked == ["acme"]
    assert "cmdstat_xadd" not in redis_client.info("commandstats")  # unwatched: nothing written


def test_the_keys_match_the_ingest_script_and_reasons_are_masked() -> None:
    assert livefeed.live_key("acme") == live.key("acme") == "live:acme"
    assert livefeed.watch_key("acme") == queue.live_watch_key("acme") == live.watch_key("acme")
    assert livefeed.MAXLEN == live.MAXLEN
    assert livefeed.describe({"type": "PermanentError", "message": "jane.doe@example.com is invalid"}) == (
        "PermanentError: j***@example.com is invalid"
    )
    assert livefeed.mask("email", "jane@example.com") == "j***@example.com"
