"""Privileged commands are recorded in the audit log (``api:audit``) as the admin API records them:
erasure, access export, rules publish, dead letter replay and discard; the actor is
``cli:<operating system user>``, a person is named by a digest of the profile id only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import redis
import yaml
from click.testing import CliRunner

from connector.cli.main import _register, cli
from connector.config import Accounts, load_accounts
from connector.ops import audit
from connector.profiles import lookup
from connector.profiles.erasure import profile_digest
from connector.sync.deadletters import DeadLetters
from tests.cli.test_operable import SHOP
from tests.conftest import fresh_runtime
from tests.profile_helpers import NOW, apply, ev
from tests.sync.test_sync_dlq_cmd import dead_change

OPERATOR = "ops-alice"
ACTOR = f"cli:{OPERATOR}"
EMAIL = "bo@example.com"


@pytest.fixture
def shop(redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    directory = tmp_path / "accounts"
    directory.mkdir()
    (directory / "shop.yaml").write_text(yaml.safe_dump(SHOP))
    (directory / "other.yaml").write_text(yaml.safe_dump({**SHOP, "account": "other"}))
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    monkeypatch.setenv("SHOP_MC_KEY", "mc-key-us1")
    monkeypatch.setenv("SHOP_KL_KEY", "pk_test")
    monkeypatch.setenv("LOGNAME", OPERATOR)  # the operating system user getpass reports
    fresh_runtime()
    return load_accounts(directory)


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


def test_the_cli_actor_names_the_operating_system_user(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("USER", "deploy")
    assert audit.cli_actor() == "cli:deploy"


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
    assert entries[0].before == {"selection": {"kind": "sync", "filter": "invalid resource"}}
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
