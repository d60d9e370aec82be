"""Erasure and access: delete events, shop/redact, data requests and the profiles CLI."""

from __future__ import annotations

import json

import redis
from click.testing import CliRunner

from connector.cli.main import _register, cli
from connector.config import Accounts
from connector.ingest.queue import dedupe_key
from connector.profiles import erasures_since, lookup
from connector.profiles.erasure import profile_digest, stored_exports
from tests.profile_helpers import NOW, T0, apply, ev

_register()


def _person(conn: redis.Redis, accounts: Accounts) -> str:
    events = [
        ev("1", anonymous_id="anon-e", props={"sku": "A1"}),
        ev(
            "2",
            "identify",
            type="identify",
            at=1,
            anonymous_id="anon-e",
            email="erin@example.com",
            traits={"name": "Erin"},
        ),
        ev("3", "order_completed", at=2, email="erin@example.com", props={"total": 42}),
    ]
    apply(conn, accounts, *events)
    for e in events:  # the dedupe markers the receiver left
        conn.set(dedupe_key("acme", e.event_id), "1")
    conn.set(dedupe_key("acme", "f" * 32), "1")  # someone else's
    pid = lookup(conn, "acme", "email", "erin@example.com")
    assert pid is not None
    return pid


def _assert_gone(conn: redis.Redis, pid: str) -> None:
    assert lookup(conn, "acme", "email", "erin@example.com") is None
    assert lookup(conn, "acme", "anonymous_id", "anon-e") is None
    assert conn.exists(f"h:{{acme:{pid}}}") == 0
    assert conn.exists(f"p:{{acme:{pid}}}") == 0  # no tombstone naming the profile either
    assert set(conn.scan_iter("ix:*")) <= {b"ix:{acme:ix}"}  # the index state (no identifier) stays
    assert len(list(conn.scan_iter("dd:*"))) == 4  # dedupe markers stay: digests, no identifier
    # nothing personal is left anywhere in the store
    for key in conn.scan_iter("*"):
        dumped = repr(conn.dump(key))
        assert "erin" not in dumped.lower() and "anon-e" not in dumped


def test_delete_event_erases_everything_and_logs_without_personal_data(redis_client, accounts) -> None:
    pid = _person(redis_client, accounts)
    outcome = apply(
        redis_client, accounts, ev("del", "delete", type="delete", at=T0, email="Erin@example.com ")
    )
    assert outcome.erased == 1
    _assert_gone(redis_client, pid)
    log = erasures_since(redis_client, "acme", since=T0)
    assert [(e.profile_digest, e.at, e.source) for e in log] == [
        (profile_digest("acme", pid), NOW, "segment:delete")
    ]
    assert pid not in profile_digest("acme", pid)
    assert erasures_since(redis_client, "acme", after=log[0].entry_id) == []


def test_events_of_a_batch_resolved_before_an_erasure_are_not_stored(redis_client, accounts) -> None:
    """The apply script refuses a profile that no longer exists: no bare profile is recreated."""
    from connector.profiles import keys
    from connector.profiles.store import APPLY

    pid = _person(redis_client, accounts)
    apply(redis_client, accounts, ev("del", "delete", type="delete", email="erin@example.com"))
    script = redis_client.register_script(APPLY)
    reply = script(keys=[keys.profile_key("acme", pid), keys.history_key("acme", pid)], args=[0, 100])
    assert reply == [b"n"]  # the worker looks again under the identity lock, then drops them
    assert redis_client.exists(keys.profile_key("acme", pid), keys.history_key("acme", pid)) == 0


def test_shop_redact_erases_every_profile_of_the_account(redis_client, accounts) -> None:
    apply(redis_client, accounts, *[ev(str(i), user_id=f"u{i}") for i in range(5)])
    outcome = apply(redis_client, accounts, ev("redact", "shop_redact", type="delete"))
    assert outcome.erased == 5
    assert set(redis_client.scan_iter("ix:*")) <= {b"ix:{acme:ix}"}  # the index state stays
    assert len(erasures_since(redis_client, "acme")) == 5


def test_data_request_event_stores_an_export(redis_client, accounts) -> None:
    pid = _person(redis_client, accounts)
    outcome = apply(
        redis_client, accounts, ev("dr", "data_request", type="data_request", email="erin@example.com")
    )
    assert outcome.exported == 1
    (item,) = stored_exports(redis_client, "acme")
    assert item["profile"] == pid
    assert item["data"]["traits"] == {"name": "Erin"}
    assert [e["name"] for e in item["data"]["events"]] == ["product_viewed", "order_completed"]
    # erasing the person also drops the export
    apply(redis_client, accounts, ev("del", "delete", type="delete", email="erin@example.com"))
    assert stored_exports(redis_client, "acme") == []


def test_cli_show_export_delete(redis_client, accounts, settings) -> None:
    pid = _person(redis_client, accounts)
    runner = CliRunner()
    shown = runner.invoke(cli, ["profiles", "show", "--account", "acme", "--email", "ERIN@example.com"])
    assert shown.exit_code == 0, shown.output
    assert pid in shown.output and "order_completed" in shown.output and "erin@example.com" in shown.output
    as_json = runner.invoke(
        cli, ["profiles", "show", "--account", "acme", "--anonymous-id", "anon-e", "--json"]
    )
    assert json.loads(as_json.output)["event_count"] == 2
    exported = runner.invoke(cli, ["profiles", "export", "--account", "acme", "--email", "erin@example.com"])
    assert json.loads(exported.output)["traits"] == {"name": "Erin"}
    missing = runner.invoke(cli, ["profiles", "show", "--account", "acme", "--email", "nobody@example.com"])
    assert missing.exit_code == 1 and "no profile" in missing.output
    unknown = runner.invoke(cli, ["profiles", "show", "--account", "nope", "--email", "erin@example.com"])
    assert unknown.exit_code == 1 and "unknown account" in unknown.output
    deleted = runner.invoke(
        cli, ["profiles", "delete", "--account", "acme", "--email", "erin@example.com", "--yes"]
    )
    assert deleted.exit_code == 0 and f"erased profile {pid}" in deleted.output
    _assert_gone(redis_client, pid)


def test_cli_events_rejected(redis_client, accounts, settings) -> None:
    apply(redis_client, accounts, ev("r1", user_id="undefined"), ev("r2", "checkout_started"))
    result = CliRunner().invoke(cli, ["events", "rejected", "--account", "acme"])
    assert result.exit_code == 0, result.output
    assert "2 rejected events" in result.output and "checkout_started  no identity" in result.output
    as_json = CliRunner().invoke(cli, ["events", "rejected", "--account", "acme", "--json"])
    assert len(json.loads(as_json.output)) == 2
