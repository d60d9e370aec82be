"""A destination's mapping changed in the account file (a tag renamed): the scheduler notices and
every profile's state goes to the destinations again, so contacts get the new tag without waiting
for an event of theirs."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from connector import clock
from connector.config import load_accounts
from connector.worker import publish, scheduler
from connector.worker.jobs import BACKFILL_QUEUE
from connector.worker.pipeline import apply_batch
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import ev

NOW = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def account_with(config_dir: Path, tags: list[str]) -> dict[str, Any]:
    destination = {"api_key_env": "MAP_MC_KEY", "base_url": "http://127.0.0.1:9", "sandbox": True,
                   "list_id": "l1", "segments": {"buyers": {"tags": tags}}}  # fmt: skip
    rules = {"segments": [{"name": "buyers", "when": {"count": {"event": "order_completed", "gte": 1}}}]}
    acme = {**ACME, "rules": rules, "destinations": {"mailchimp": destination}}
    write_accounts(config_dir, acme)
    return acme


def pending_tags(conn: redis.Redis) -> dict[str, list[str]]:
    pending = conn.hgetall("sync:acme:mailchimp:pending")
    return {pid.decode(): sorted(json.loads(raw)["tags"]) for pid, raw in pending.items()}


def backfill(conn: redis.Redis) -> None:
    SimpleWorker([Queue(BACKFILL_QUEUE, connection=conn)], connection=conn).work(burst=True)


def test_a_renamed_tag_reaches_every_member_without_an_event(
    config_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAP_MC_KEY", "mc-key-0123456789-us1")
    monkeypatch.setattr(publish, "_seen", {"mapping": {}, "rules": {}})
    account_with(config_dir, ["buyer"])
    events = [
        ev(f"o{i}", "order_completed", at=NOW - timedelta(hours=1), email=f"b{i}@example.com")
        for i in range(3)
    ]
    with clock.frozen(NOW):
        apply_batch(events, NOW, load_accounts(config_dir), redis_client, redis_client)
    assert set(map(tuple, pending_tags(redis_client).values())) == {("buyer",)}
    redis_client.delete("sync:acme:mailchimp:pending")  # as if the sync had sent them
    assert publish.resend_changed_mappings(NOW) == 0  # met for the first time: recorded only
    assert publish.resend_changed_mappings(NOW) == 0  # unchanged
    assert redis_client.llen(f"rq:queue:{BACKFILL_QUEUE}") == 0

    account_with(config_dir, ["Buyer VIP"])
    assert publish.resend_changed_mappings(NOW + timedelta(seconds=1)) == 1
    assert publish.resend_changed_mappings(NOW + timedelta(seconds=2)) == 0  # once
    with clock.frozen(NOW + timedelta(seconds=2)):
        backfill(redis_client)
    assert pending_tags(redis_client) and set(map(tuple, pending_tags(redis_client).values())) == {
        ("Buyer VIP",)
    }
    assert len(pending_tags(redis_client)) == 3


def test_a_change_of_how_a_destination_sends_does_not_resend(
    config_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAP_MC_KEY", "mc-key-0123456789-us1")
    monkeypatch.setattr(publish, "_seen", {"mapping": {}, "rules": {}})
    acme = account_with(config_dir, ["buyer"])
    assert publish.resend_changed_mappings(NOW) == 0
    acme["destinations"]["mailchimp"]["batch_delay_ms"] = 100
    write_accounts(config_dir, acme)
    assert publish.resend_changed_mappings(NOW + timedelta(seconds=1)) == 0
    assert publish.resend_changed_mappings in scheduler.TASKS


def two_buyers(
    config_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> dict[str, Any]:
    """The account (buyers: one order or more), a buyer of one order and one of two, applied."""
    monkeypatch.setenv("MAP_MC_KEY", "mc-key-0123456789-us1")
    monkeypatch.setattr(publish, "_seen", {"mapping": {}, "rules": {}})
    acme = account_with(config_dir, ["buyer"])
    events = [ev("o0", "order_completed", at=NOW - timedelta(hours=2), email="b0@example.com")]
    events += [
        ev(f"o1{i}", "order_completed", at=NOW - timedelta(hours=1 + i), email="b1@example.com")
        for i in range(2)
    ]
    with clock.frozen(NOW):
        apply_batch(events, NOW, load_accounts(config_dir), redis_client, redis_client)
    return acme


def test_rules_edited_in_the_file_end_memberships_without_an_event(
    config_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    acme = two_buyers(config_dir, redis_client, monkeypatch)
    assert len(pending_tags(redis_client)) == 2
    redis_client.delete("sync:acme:mailchimp:pending")  # as if the sync had sent them
    assert publish.reevaluate_changed_rules(NOW) == 0  # met for the first time: recorded only
    assert publish.reevaluate_changed_rules(NOW) == 0  # unchanged
    acme["rules"]["segments"][0]["description"] = "Ordered at least once."
    write_accounts(config_dir, acme)
    assert publish.reevaluate_changed_rules(NOW) == 0  # what the rules compute is the same

    acme["rules"]["segments"][0]["when"]["count"]["gte"] = 2  # buyers: two orders now
    write_accounts(config_dir, acme)
    assert publish.resend_changed_mappings(NOW + timedelta(seconds=1)) == 0  # the mapping is the same
    assert publish.reevaluate_changed_rules(NOW + timedelta(seconds=1)) == 1
    assert publish.reevaluate_changed_rules(NOW + timedelta(seconds=2)) == 0  # once
    with clock.frozen(NOW + timedelta(seconds=2)):
        backfill(redis_client)
    # only the one-order buyer's state changed: the tag comes off for them, nobody else is sent
    assert list(pending_tags(redis_client).values()) == [[]]
    assert publish.reevaluate_changed_rules in scheduler.TASKS


def test_a_worker_that_looked_at_the_files_before_the_edit_re_evaluates_with_the_edited_rules(
    config_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scheduler and the worker look at the account files on timers of their own: a worker that
    looked just before the edit takes the job with the rules it holds unless the job looks again."""
    from connector import runtime
    from connector.settings import Settings

    acme = two_buyers(config_dir, redis_client, monkeypatch)
    redis_client.delete("sync:acme:mailchimp:pending")
    scheduler_rt = runtime.current()
    ticks = [0.0]
    worker_rt = runtime.Runtime.from_settings(Settings.from_env(), check_seconds=1.0)
    worker_rt.provider._monotonic = lambda: ticks[0]  # type: ignore[method-assign]
    assert worker_rt.accounts.get("acme") is not None  # the worker's last look: before the edit
    assert publish.reevaluate_changed_rules(NOW) == 0
    acme["rules"]["segments"][0]["when"]["count"]["gte"] = 2
    write_accounts(config_dir, acme)
    assert publish.reevaluate_changed_rules(NOW) == 1
    ticks[0] = 0.5  # half a second later, within its check interval, the worker takes the job
    runtime.install(worker_rt)
    try:
        with clock.frozen(NOW + timedelta(seconds=1)):
            backfill(redis_client)
    finally:
        runtime.install(scheduler_rt)
    assert list(pending_tags(redis_client).values()) == [[]]  # the one-order buyer left
    assert publish.reevaluate_changed_rules(NOW + timedelta(seconds=2)) == 0


def test_an_edit_of_a_mapping_and_the_rules_together_re_evaluates_once(
    config_dir: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MAP_MC_KEY", "mc-key-0123456789-us1")
    monkeypatch.setattr(publish, "_seen", {"mapping": {}, "rules": {}})
    acme = account_with(config_dir, ["buyer"])
    assert (publish.resend_changed_mappings(NOW), publish.reevaluate_changed_rules(NOW)) == (0, 0)
    acme["rules"]["segments"][0]["when"]["count"]["gte"] = 2
    acme["destinations"]["mailchimp"]["segments"]["buyers"]["tags"] = ["Buyer VIP"]
    write_accounts(config_dir, acme)
    assert publish.resend_changed_mappings(NOW) == 1
    assert publish.reevaluate_changed_rules(NOW) == 0  # the restate re-evaluates with the new rules
    assert redis_client.llen(f"rq:queue:{BACKFILL_QUEUE}") == 1
