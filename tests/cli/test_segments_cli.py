"""The rule-facing CLI: explain, segments history, rules test (dry run) and rules publish."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
import yaml
from click.testing import CliRunner
from rq import Queue, SimpleWorker

from connector import clock
from connector.cli.main import _register, cli
from connector.config import load_accounts
from connector.ingest.receivers.spec import normalize
from connector.profiles import lookup
from connector.worker.jobs import BACKFILL_QUEUE
from connector.worker.ledger import Ledger
from connector.worker.pipeline import apply_batch
from tests.conftest import ACME, GLOBEX, write_accounts

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)
RULES = {
    "segments": [
        {"name": "browsers", "when": {"count": {"event": "product_viewed", "within": "7d", "gte": 2}}},
        {"name": "buyers", "when": {"count": {"event": "order_completed", "gte": 1}}},
    ]
}


@pytest.fixture(scope="module", autouse=True)
def commands() -> None:
    _register()


@pytest.fixture
def loaded(config_dir: Path, redis_client: redis.Redis) -> str:
    write_accounts(config_dir, {**ACME, "rules": RULES}, GLOBEX)
    accounts = load_accounts(config_dir)
    messages = [
        ("product_viewed", "Product Viewed", T0 - timedelta(days=1)),
        ("product_viewed", "Product Viewed", T0 - timedelta(hours=2)),
        ("order_completed", "Order Completed", T0 - timedelta(hours=1)),
    ]
    events = [
        normalize(
            {"type": "track", "event": original, "userId": "reader-1", "messageId": f"m{i}",
             "timestamp": at.isoformat(), "context": {"traits": {"email": "reader@example.com"}}},
            account="acme", source="segment", received_at=T0,
        )
        for i, (_, original, at) in enumerate(messages)
    ]  # fmt: skip
    with clock.frozen(T0):
        apply_batch(events, T0, accounts, redis_client, redis_client)
    pid = lookup(redis_client, "acme", "email", "reader@example.com")
    assert pid is not None
    return pid


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_explain_shows_membership_reasons_and_next_change(loaded: str) -> None:
    with clock.frozen(T0):
        code, out = run("explain", "--account", "acme", "--email", "reader@example.com", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["profile_id"] == loaded
    assert data["segments"]["browsers"]["member"] is True
    assert data["segments"]["buyers"]["member"] is True
    # the first view leaves the 7-day window 6 days after now: browsers then needs a new view
    assert data["next_due"] == "2024-05-12T09:00:00Z"
    with clock.frozen(T0):
        code, text = run(
            "explain", "--account", "acme", "--email", "reader@example.com", "--segment", "browsers"
        )
    assert code == 0 and "browsers" in text and "buyers" not in text


def test_explain_unknown_person_is_a_clear_error(loaded: str) -> None:
    code, out = run("explain", "--account", "acme", "--email", "nobody@example.com")
    assert code == 1
    assert "no profile with that email" in out


def test_segments_history_lists_entries(loaded: str) -> None:
    code, out = run("segments", "history", "--account", "acme", "--user-id", "reader-1", "--json")
    assert code == 0, out
    data = json.loads(out)
    assert data["current"]["segments"] == ["browsers", "buyers"]
    assert sorted(data["history"][0]["entered"]) == ["browsers", "buyers"]


def test_segments_history_says_why_a_version_is_not_listed(loaded: str, redis_client: redis.Redis) -> None:
    ledger = Ledger(redis_client)
    state = ledger.state("acme", loaded)
    assert state is not None
    code, out = run("segments", "history", "--account", "acme", "--profile-id", loaded)
    assert code == 0 and "versions not listed" not in out  # every version is a change so far
    # the person's email changes: a new version, with the same segments, sent again to the ESPs
    later, revision = T0 + timedelta(hours=1), 10**6  # a later evaluation than the one recorded
    ledger.record("acme", loaded, frozenset(state.segments), state.traits, later, revision, contact="x")
    code, out = run("segments", "history", "--account", "acme", "--profile-id", loaded)
    assert code == 0 and f"version {state.version + 1}," in out
    assert f"v{state.version + 1} " not in out and "versions not listed changed no segment" in out


def test_rules_test_reports_who_enters_and_exits(loaded: str, tmp_path: Path) -> None:
    candidate = tmp_path / "new.yaml"
    views3 = {"count": {"event": "product_viewed", "within": "7d", "gte": 3}}
    orders = {"count": {"event": "order_completed", "gte": 1}}
    orders_1d = {"count": {"event": "order_completed", "within": "1d", "gte": 1}}
    segments = [
        {"name": "browsers", "when": views3},
        {"name": "buyers", "when": orders},
        {"name": "shoppers", "when": orders_1d},
    ]
    candidate.write_text(yaml.safe_dump({"segments": segments}))
    with clock.frozen(T0):
        code, out = run("rules", "test", "--account", "acme", "--rules", str(candidate))
    assert code == 0, out
    assert "browsers: +0 entering, -1 exiting" in out
    assert "shoppers: +1 entering, -0 exiting" in out
    assert "exit: reader@example.com" in out
    assert "buyers" not in out  # unchanged segments are not listed


def test_rules_test_with_an_events_file(loaded: str, tmp_path: Path) -> None:
    events = tmp_path / "events.jsonl"
    lines = [
        {"type": "track", "event": "Order Completed", "userId": "u-9", "timestamp": "2024-05-06T08:00:00Z"},
        {"type": "track", "event": "Product Viewed", "userId": "u-9", "timestamp": "2024-05-06T07:00:00Z"},
    ]
    events.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    candidate = tmp_path / "new.yaml"
    candidate.write_text(
        yaml.safe_dump(
            {"segments": [{"name": "browsers", "when": {"count": {"event": "product_viewed", "gte": 1}}}]}
        )
    )
    with clock.frozen(T0):
        code, out = run(
            "rules", "test", "--account", "acme", "--rules", str(candidate), "--events", str(events)
        )
    assert code == 0, out
    assert "1 profiles evaluated" in out
    assert "browsers: +1 entering" in out and "buyers: +0 entering, -1 exiting" in out
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"type": "track", "event": "x", "userId": "u"}\n{oops\n')
    code, out = run("rules", "test", "--account", "acme", "--rules", str(candidate), "--events", str(bad))
    assert code == 1 and f"{bad}:2" in out


def test_rules_publish_reevaluates_everyone_in_the_background(
    loaded: str, config_dir: Path, redis_client: redis.Redis
) -> None:
    changed = {"segments": [{"name": "loyal", "when": {"count": {"event": "order_completed", "gte": 1}}}]}
    write_accounts(config_dir, {**ACME, "rules": changed}, GLOBEX)
    code, out = run("rules", "publish", "--account", "acme", "--no-wait")
    assert code == 0 and "re-evaluating 1 profiles" in out
    with clock.frozen(T0 + timedelta(minutes=1)):
        SimpleWorker([Queue(BACKFILL_QUEUE, connection=redis_client)], connection=redis_client).work(
            burst=True
        )
    state = Ledger(redis_client).state("acme", loaded)
    assert state is not None and state.segments == {"loyal"}
    key = next(iter(redis_client.scan_iter("publish:acme:*")))
    assert redis_client.hget(key, "done") == b"1"


def test_rules_test_refuses_rules_a_publish_would_refuse(
    config_dir: Path, redis_client: redis.Redis, tmp_path: Path
) -> None:
    """A dry run of rules that drop a segment a destination maps says so, as the API's and the
    console's checks do, instead of previewing rules that can never be published."""
    mailchimp = {
        "api_key_env": "ACME_MC_KEY",
        "list_id": "a1b2c3",
        "segments": {"buyers": {"tags": ["Buyers"]}},
    }
    write_accounts(config_dir, {**ACME, "rules": RULES, "destinations": {"mailchimp": mailchimp}}, GLOBEX)
    candidate = tmp_path / "carts.yaml"
    candidate.write_text(yaml.safe_dump({"include": ["cart_abandonment"]}))
    code, out = run("rules", "test", "--account", "acme", "--rules", str(candidate))
    assert code == 1
    assert (
        f"{candidate}: cannot be published for acme: rules.segments: destination mailchimp maps segment"
        in out
    )
    assert "`buyers`, which these rules do not define" in out
