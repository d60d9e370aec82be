"""Bounded state: a first evaluation without membership writes no history; dead letters are
capped per account and kind, the oldest dropped and counted; what a cap drops is counted."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis

from connector.config import Accounts
from connector.errors import ConfigError
from connector.profiles import rejected
from connector.profiles.bounds import DROPPED_KEY, dropped
from connector.sync.deadletters import DeadLetters, max_items
from connector.worker.ledger import HISTORY_MAXLEN, INLINE, KEEP, Ledger, history_key, ledger_key
from connector.worker.publish import profiles_from_events
from tests.profile_helpers import NOW, apply, ev

T0 = datetime(2024, 1, 1, tzinfo=UTC)


def test_a_first_evaluation_without_membership_writes_no_history(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    assert ledger.record("acme", "p1", frozenset(), {}, T0, revision=1) is None
    assert redis_client.exists(history_key("acme", "p1")) == 0
    assert ledger.record("acme", "p2", frozenset(), {"ltv": 0}, T0, revision=1) is not None  # traits
    assert redis_client.exists(history_key("acme", "p2")) == 0
    entered = ledger.record("acme", "p1", frozenset({"vip"}), {}, T0 + timedelta(hours=1), revision=2)
    assert entered is not None and entered.entered == {"vip"}
    assert [h["entered"] for h in ledger.history("acme", "p1")] == [["vip"]]


def test_new_profiles_through_the_worker_keep_no_history_stream(redis_client, accounts: Accounts) -> None:
    apply(redis_client, accounts, *[ev(str(i), user_id=f"u{i}") for i in range(20)])
    assert len(list(redis_client.scan_iter("ledger:*"))) == 20
    assert list(redis_client.scan_iter("lhist:*")) == []


def test_a_contact_change_bumps_the_version_without_a_history_entry(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    first = ledger.record("acme", "p1", frozenset({"vip"}), {}, T0, revision=1)
    assert first is not None
    known = ledger.record("acme", "p1", frozenset({"vip"}), {}, T0, revision=2, contact="abc")
    assert known is not None and known.version == first.version + 1 and known.segments == {"vip"}
    assert ledger.record("acme", "p1", frozenset({"vip"}), {}, T0, revision=3, contact="abc") is None
    assert ledger.record("acme", "p1", frozenset({"vip"}), {}, T0, revision=4, contact="abc", force=True)
    assert len(ledger.history("acme", "p1")) == 1


def test_ledger_history_cap_is_counted(redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    trimmed = 0
    for n in range(HISTORY_MAXLEN + 300):
        diff = ledger.record("acme", "p1", frozenset({f"s{n % 2}"}), {}, T0, revision=n + 1)
        assert diff is not None
        trimmed += diff.trimmed
    assert trimmed > 0
    length = ledger.history_length("acme", "p1")
    assert length == HISTORY_MAXLEN + 300 - trimmed
    assert HISTORY_MAXLEN - (INLINE - KEEP) <= length <= HISTORY_MAXLEN  # dropped a block at a time
    assert redis_client.exists(ledger_key("acme", "p1"))


def test_dead_letters_are_capped_per_account_and_kind_and_the_drops_counted(
    redis_client: redis.Redis,
) -> None:
    dead = DeadLetters(redis_client, max_per_account=3)
    for n in range(5):
        dead.put("sync:mailchimp", f"reason {n}", {"n": n}, T0 + timedelta(seconds=n), account="acme")
    dead.put("sync:mailchimp", "other account", {"n": 99}, T0, account="globex")
    dead.put("events", "undecodable", "raw", T0)
    kept = [item.payload["n"] for item in dead.list("sync:mailchimp") if item.account == "acme"]
    assert sorted(kept) == [2, 3, 4]  # the oldest two were dropped
    assert dead.count("sync:mailchimp") == 4 and dead.count("events") == 1
    assert dropped(redis_client) == {"deadletters": 2}
    assert len(list(redis_client.scan_iter("dlq:item:*"))) == 5  # the dropped items' documents too
    for item in list(dead.list("sync:mailchimp")):
        dead.remove(item)
    assert redis_client.zcard("dlq:acct:acme:sync:mailchimp") == 0


def test_the_dead_letter_cap_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CONNECTOR_DEADLETTER_MAX", raising=False)
    assert max_items() == 100_000
    monkeypatch.setenv("CONNECTOR_DEADLETTER_MAX", "250")
    assert max_items() == 250
    monkeypatch.setenv("CONNECTOR_DEADLETTER_MAX", "lots")
    with pytest.raises(ConfigError, match="CONNECTOR_DEADLETTER_MAX must be a whole number"):
        max_items()
    # checked with the other settings at a process's start, not first at /metrics (a 500 there)
    from connector.settings import Settings

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigError, match="CONNECTOR_DEADLETTER_MAX must be a whole number"):
        Settings.from_env()


def test_rejected_events_over_the_cap_are_counted(
    redis_client: redis.Redis, accounts: Accounts, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rejected, "KEPT", 5)
    old = datetime(1900, 1, 1, tzinfo=UTC)
    apply(redis_client, accounts, *[ev(f"r{i}", at=old, user_id=f"u{i}") for i in range(400)], now=NOW)
    left = redis_client.xlen("rej:acme")
    assert left < 400 and int(redis_client.hget(DROPPED_KEY, "rejected") or 0) == 400 - left


def test_rules_test_events_stitch_identities_like_the_worker(tmp_path: Path, accounts: Accounts) -> None:
    lines = [
        {"type": "track", "event": "Product Added", "anonymousId": "anon-1", "messageId": "m1",
         "timestamp": "2024-01-01T00:00:00Z"},
        {"type": "identify", "anonymousId": "anon-1", "userId": "u-1", "messageId": "m2",
         "timestamp": "2024-01-01T00:05:00Z", "traits": {"email": "Jo@Example.com"}},
        {"type": "track", "event": "Product Viewed", "anonymousId": "anon-2", "messageId": "m3",
         "timestamp": "2024-01-01T00:06:00Z"},
        {"type": "alias", "userId": "u-1", "previousId": "anon-2", "messageId": "m4",
         "timestamp": "2024-01-01T00:07:00Z"},
    ]  # fmt: skip
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps(line) for line in lines))
    account = accounts.get("acme")
    [person] = profiles_from_events(path, account, NOW)
    assert person.identities["email"] == ("jo@example.com",)
    assert set(person.identities["anonymous_id"]) == {"anon-1", "anon-2"}
    assert [e.name for e in person.events] == ["add_to_cart", "product_viewed"]
