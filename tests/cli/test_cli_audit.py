"""Privileged commands are recorded in the audit log (``api:audit``) as the admin API records them:
erasure, access export, rules publish, dead letter replay and discard, a destination resumed, an
import pushed to the destinations; the actor is ``cli:<login>`` of the process's user id (not what
LOGNAME or USER say), a person is named by a digest of the profile id only, a dead letter filter by
a digest of its text."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from connector import sync
from connector.cli.main import _register, cli
from connector.clock import isoformat
from connector.config import Accounts
from connector.ops import audit
from connector.profiles import lookup
from connector.profiles.erasure import profile_digest
from connector.sync.deadletters import DeadLetters
from tests.cli.test_operable import install_shop
from tests.profile_helpers import NOW, apply, ev
from tests.sync.test_sync_dlq_cmd import dead_change

CLAIMED = "ops-alice"  # what LOGNAME and USER say: anyone can set them
ACTOR = f"cli:{pwd.getpwuid(os.getuid()).pw_name}"
EMAIL = "bo@example.com"


@pytest.fixture
def shop(redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    monkeypatch.setenv("LOGNAME", CLAIMED)
    monkeypatch.setenv("USER", CLAIMED)
    return install_shop(tmp_path, monkeypatch, "other")


@pytest.fixture
def runner() -> CliRunner:
    _register()
    return CliRunner()


def _buyer(conn: redis.Redis, accounts: Accounts) -> str:
    apply(conn, accounts, ev("o1", "order_completed", account="shop", email=EMAIL, props={"total": 9}))
    pid = lookup(conn, "shop", "email", EMAIL)
    assert pid is not None
    return pid


def _entries(conn: redis.Redis) -> list[audit.Entry]:
    """Oldest first."""
    entries, _ = audit.read(conn, ("*",), limit=100)
    return list(reversed(entries))


def test_the_cli_actor_is_the_process_s_user_whatever_the_environment_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "mallory")
    assert audit.cli_actor() == ACTOR != "cli:mallory"


def test_a_user_id_without_a_login_is_named_by_its_number(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setenv("LOGNAME", "mallory")
    monkeypatch.setattr(os, "getuid", lambda: 4242)
    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    assert audit.cli_actor() == "cli:uid:4242"


def _filter_digest(text: str) -> dict[str, object]:
    return {"filter_sha256": hashlib.sha256(text.encode()).hexdigest()[:16], "filter_length": len(text)}


def test_an_erasure_is_recorded_by_digest(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    pid = _buyer(redis_client, shop)
    declined = runner.invoke(cli, ["profiles", "delete", "--account", "shop", "--email", EMAIL], input="n\n")
    assert declined.exit_code == 1 and _entries(redis_client) == []
    result = runner.invoke(cli, ["profiles", "delete", "--account", "shop", "--email", EMAIL, "--yes"])
    assert result.exit_code == 0, result.output
    (entry,) = _entries(redis_client)
    digest = profile_digest("shop", pid)
    assert (entry.action, entry.token, entry.accounts) == ("person.erase", ACTOR, ("shop",))
    assert entry.target == f"profile:{digest}"
    assert entry.before == {"profile_digest": digest, "segments": ["buyers"]}
    assert entry.after == {"erased": True}
    assert pid not in json.dumps(entry.as_dict()) and EMAIL not in json.dumps(entry.as_dict())
    again = runner.invoke(cli, ["profiles", "delete", "--account", "shop", "--profile-id", pid, "--yes"])
    assert again.exit_code != 0 and len(_entries(redis_client)) == 1  # nothing erased, nothing recorded


def test_an_access_export_is_recorded_by_digest(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    pid = _buyer(redis_client, shop)
    result = runner.invoke(cli, ["profiles", "export", "--account", "shop", "--email", EMAIL])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["profile_id"] == pid
    (entry,) = _entries(redis_client)
    digest = profile_digest("shop", pid)
    assert (entry.action, entry.token, entry.accounts) == ("person.export", ACTOR, ("shop",))
    assert entry.target == f"profile:{digest}" and entry.after == {"profile_digest": digest, "exported": True}
    assert pid not in json.dumps(entry.as_dict()) and EMAIL not in json.dumps(entry.as_dict())


def test_handing_out_the_stored_exports_is_recorded_with_their_number_only(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    result = runner.invoke(cli, ["profiles", "exports", "--account", "shop", "--limit", "5"])
    assert result.exit_code == 0, result.output
    (entry,) = _entries(redis_client)
    assert (entry.action, entry.token, entry.accounts, entry.target) == (
        "exports.read",
        ACTOR,
        ("shop",),
        "exports:shop",
    )
    assert entry.after == {"exports": len(json.loads(result.stdout)), "limit": 5}


def test_a_rules_publish_is_recorded(runner: CliRunner, shop: Accounts, redis_client: redis.Redis) -> None:
    _buyer(redis_client, shop)
    result = runner.invoke(cli, ["rules", "publish", "--account", "shop", "--no-wait"])
    assert result.exit_code == 0, result.output
    (entry,) = _entries(redis_client)
    assert (entry.action, entry.token, entry.accounts) == ("rules.publish", ACTOR, ("shop",))
    assert entry.target == "rules:shop"
    assert entry.before["source"] == "file" and entry.before["rules_digest"]
    assert entry.after["profiles"] == 1
    assert redis_client.exists(f"publish:shop:{entry.after['progress']}")


def test_a_replay_is_recorded_per_account(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    dead_change(redis_client, "p1", account="shop", text="Invalid Resource")
    dead_change(redis_client, "p2", account="other", text="Invalid Resource")
    dead_change(redis_client, "p3", account="other", text="Member In Compliance State")
    result = runner.invoke(cli, ["dlq", "replay", "--kind", "sync", "--filter", "invalid resource"])
    assert result.exit_code == 0, result.output
    entries = _entries(redis_client)
    assert [(e.action, e.token, e.accounts, e.target) for e in entries] == [
        ("deadletters.replay", ACTOR, ("other",), "deadletters:other"),
        ("deadletters.replay", ACTOR, ("shop",), "deadletters:shop"),
    ]
    assert [e.after for e in entries] == [{"outcomes": {"queued": 1}}, {"outcomes": {"queued": 1}}]
    assert entries[0].before == {"selection": {"kind": "sync", **_filter_digest("invalid resource")}}
    assert "invalid resource" not in json.dumps([e.as_dict() for e in entries])
    # a token of one account sees that account's entry only
    (seen,), _ = audit.read(redis_client, ("shop",))
    assert seen.target == "deadletters:shop"


def test_a_discard_is_recorded_and_a_declined_one_is_not(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    dead_change(redis_client, "p1", account="shop")
    dead_change(redis_client, "p2", account="shop")
    DeadLetters(redis_client).put("events", "undecodable", "raw", NOW)
    declined = runner.invoke(cli, ["dlq", "discard", "--account", "shop"], input="n\n")
    assert declined.exit_code == 1 and _entries(redis_client) == []
    result = runner.invoke(cli, ["dlq", "discard", "--account", "shop", "--yes"])
    assert result.exit_code == 0, result.output
    (entry,) = _entries(redis_client)
    assert (entry.action, entry.token, entry.accounts) == ("deadletters.discard", ACTOR, ("shop",))
    assert entry.target == "deadletters:shop"
    assert entry.before == {"selection": {"account": "shop"}}
    assert entry.after == {"outcomes": {"discarded": 2}}
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0
    everything = runner.invoke(cli, ["dlq", "discard", "--kind", "events", "--yes"])
    assert everything.exit_code == 0, everything.output
    last = _entries(redis_client)[-1]
    assert (last.action, last.accounts, last.target) == ("deadletters.discard", ("*",), "deadletters:*")
    assert last.after == {"outcomes": {"discarded": 1}}
    assert audit.read(redis_client, ("shop",))[0] == [entry]  # one account's token sees its own only


def test_a_dead_letter_filter_naming_a_person_is_kept_as_a_digest(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    dead_change(redis_client, "p1", account="shop")
    dead_change(redis_client, "p2", account="shop")
    email = "p1@example.com"  # operators find dead letters by email
    replayed = runner.invoke(cli, ["dlq", "replay", "--filter", email])
    assert replayed.exit_code == 0, replayed.output
    discarded = runner.invoke(
        cli, ["dlq", "discard", "--account", "shop", "--filter", email.upper(), "--yes"]
    )
    assert discarded.exit_code == 0, discarded.output
    replay, discard = _entries(redis_client)
    assert replay.before == {"selection": _filter_digest(email)}
    assert discard.before == {"selection": {"account": "shop", **_filter_digest(email.upper())}}
    assert replay.after == {"outcomes": {"queued": 1}} and discard.after == {"outcomes": {}}
    logged = json.dumps([replay.as_dict(), discard.as_dict()]).lower()
    assert email not in logged and "p1" not in logged


def test_resuming_a_destination_is_recorded(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    reason = "401 API key invalid for ops@shop.example"
    sync.pause(redis_client, "shop", "mailchimp", reason, 401, NOW)
    result = runner.invoke(cli, ["dlq", "resume", "shop", "mailchimp"])
    assert result.exit_code == 0, result.output
    (entry,) = _entries(redis_client)
    assert (entry.action, entry.token, entry.accounts, entry.target) == (
        "destination.resume",
        ACTOR,
        ("shop",),
        "destination:shop/mailchimp",
    )
    assert entry.before == {"paused": True, "since": isoformat(NOW), "status": 401}
    assert entry.after == {"paused": False}
    assert "ops@shop.example" not in json.dumps(entry.as_dict())  # the ESP's text stays out
    again = runner.invoke(cli, ["dlq", "resume", "shop", "mailchimp"])
    assert again.exit_code == 0 and "was not paused" in again.output
    assert _entries(redis_client)[-1].before == {"paused": False, "since": None, "status": None}


def _history(path: Path, message_id: str, email: str) -> Path:
    message = {
        "type": "track",
        "event": "Order Completed",
        "userId": f"u-{message_id}",
        "messageId": message_id,
        "timestamp": "2024-02-01T12:00:00Z",
        "context": {"traits": {"email": email}},
    }
    path.write_text(json.dumps(message) + "\n")
    return path


def test_an_import_is_recorded_when_it_pushes_to_the_destinations(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis, tmp_path: Path
) -> None:
    quiet = _history(tmp_path / "quiet.jsonl", "m0", "quiet@example.com")
    for options in (["--dry-run", "--push"], []):  # nothing leaves the connector: not recorded
        result = runner.invoke(cli, ["import", "--account", "shop", "--no-progress", *options, str(quiet)])
        assert result.exit_code == 0, result.output
    assert _entries(redis_client) == []
    loud = _history(tmp_path / f"{EMAIL}.jsonl", "m1", EMAIL)
    args = ["import", "--account", "shop", "--no-progress", "--push", "--json", str(loud)]
    result = runner.invoke(cli, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    (entry,) = _entries(redis_client)
    assert (entry.action, entry.token, entry.accounts, entry.target) == (
        "import.push",
        ACTOR,
        ("shop",),
        "import:shop",
    )
    assert entry.before is None
    counts = ("format", "events", "applied", "profiles", "changed")
    assert entry.after == {"finished": True, **{k: report[k] for k in counts}}
    assert (report["pushed"], report["events"], report["changed"]) == (True, 1, 1)
    assert EMAIL not in json.dumps(entry.as_dict()) and "u-m1" not in json.dumps(entry.as_dict())


def test_an_import_pushing_that_stops_on_an_error_is_recorded_as_unfinished(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis, tmp_path: Path
) -> None:
    broken = tmp_path / "orders.csv"
    broken.write_text("Name,Email,Lineitem name\n#1,a@example.com,Shoe\n")  # no "Created at"
    result = runner.invoke(cli, ["import", "--account", "shop", "--no-progress", "--push", str(broken)])
    assert result.exit_code == 1 and "Created at" in result.output
    (entry,) = _entries(redis_client)
    assert (entry.action, entry.after) == ("import.push", {"finished": False})
