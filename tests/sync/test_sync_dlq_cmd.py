"""``connector dlq`` and the destination config schema."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner

from adapters.change import Change
from connector import sync
from connector.cli.main import _register, cli
from connector.config import load_account_file
from connector.destinations import build_adapter, destinations
from connector.errors import ConfigError
from connector.sync.deadletters import DeadLetters
from tests.conftest import fresh_runtime

NOW = datetime(2024, 1, 1, 12, 0, tzinfo=UTC)


def dead_change(conn: redis.Redis, pid: str, account: str = "acme", text: str = "Invalid Resource") -> str:
    change = Change(account, "mailchimp", pid, 3, f"{pid}@example.com", tags=frozenset({"vip"}))
    payload = {
        "account": account,
        "destination": "mailchimp",
        "change": change.to_dict(),
        "error": {"type": "PermanentError", "message": text},
        "attempts": 1,
        "first_failed_at": None,
    }
    return DeadLetters(conn).put("sync:mailchimp", f"PermanentError: {text}", payload, NOW, account=account)


@pytest.fixture
def runner(redis_client: redis.Redis) -> CliRunner:
    _register()
    return CliRunner()


def test_list_show_and_paused(runner: CliRunner, redis_client: redis.Redis) -> None:
    item = dead_change(redis_client, "p1")
    sync.pause(redis_client, "acme", "hubspot", "401 INVALID_AUTHENTICATION", 401, NOW)
    result = runner.invoke(cli, ["dlq", "list"])
    assert result.exit_code == 0, result.output
    assert "PAUSED acme/hubspot" in result.output
    assert item in result.output and "sync:mailchimp" in result.output
    shown = runner.invoke(cli, ["dlq", "show", item])
    assert shown.exit_code == 0 and '"tags"' in shown.output
    missing = runner.invoke(cli, ["dlq", "show", "nope"])
    assert missing.exit_code == 1


@pytest.fixture
def with_mailchimp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """acme and globex, each with a Mailchimp destination (a replay queues only for a destination
    the account has)."""
    directory = tmp_path / "accounts"
    directory.mkdir()
    mailchimp = {"api_key_env": "DLQ_MC_KEY", "list_id": "aud1", "segments": {"vip": {"tags": ["vip"]}}}
    for account in ("acme", "globex"):
        text = yaml.safe_dump({"account": account, "destinations": {"mailchimp": mailchimp}})
        (directory / f"{account}.yaml").write_text(text)
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    monkeypatch.setenv("DLQ_MC_KEY", "0123456789abcdef0123456789abcdef-us6")
    fresh_runtime()


def test_replay_with_filters_and_progress(
    runner: CliRunner, redis_client: redis.Redis, with_mailchimp: None
) -> None:
    dead_change(redis_client, "p1", text="Invalid Resource")
    dead_change(redis_client, "p2", text="Member In Compliance State")
    dead_change(redis_client, "p3", account="globex")
    DeadLetters(redis_client).put("events", "undecodable", "raw", NOW)
    result = runner.invoke(
        cli, ["dlq", "replay", "--kind", "sync", "--account", "acme", "--filter", "invalid resource"]
    )
    assert result.exit_code == 0, result.output
    assert "queued: 1" in result.output
    assert set(sync.pending(redis_client, "acme", "mailchimp")) == {"p1"}
    assert DeadLetters(redis_client).count("sync:mailchimp") == 2
    everything = runner.invoke(cli, ["dlq", "replay"])
    assert "not replayable: 1" in everything.output and "queued: 2" in everything.output
    assert DeadLetters(redis_client).count("events") == 1  # never dropped


def test_resume(runner: CliRunner, redis_client: redis.Redis) -> None:
    sync.pause(redis_client, "acme", "klaviyo", "403", 403, NOW)
    result = runner.invoke(cli, ["dlq", "resume", "acme", "klaviyo"])
    assert "resumed" in result.output
    assert not sync.is_paused(redis_client, "acme", "klaviyo")


def load(tmp_path: Path, dests: dict[str, Any]) -> Any:
    path = tmp_path / "acme.yaml"
    path.write_text(yaml.safe_dump({"account": "acme", "destinations": dests}))
    return load_account_file(path, env={})


def test_destination_config_errors_name_file_and_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        destinations(load(tmp_path, {"mailchimp": {"api_key_env": "K"}}))
    assert info.value.path == "destinations.mailchimp.list_id" and info.value.file
    with pytest.raises(ConfigError) as info:
        destinations(load(tmp_path, {"hubspot": {"api_key_env": "K", "batch_size": 5000}}))
    assert info.value.path == "destinations.hubspot.batch_size"
    with pytest.raises(ConfigError) as info:
        destinations(load(tmp_path, {"klaviyo": {"api_key_env": "K", "batch_delay_ms": 5000}}))
    assert info.value.path == "destinations.klaviyo.batch_delay_ms"
    with pytest.raises(ConfigError) as info:
        destinations(load(tmp_path, {"crm": {"api_key_env": "K"}}))
    assert info.value.path == "destinations.crm"  # the name is what is unknown: no `type:` was written
    assert info.value.reason.startswith("unknown destination type `crm`; known: hubspot, klaviyo, mailchimp")
    with pytest.raises(ConfigError) as info:
        destinations(load(tmp_path, {"hubspot": {"api_key_env": "K", "timezone": "Mars/Base"}}))
    assert info.value.path == "destinations.hubspot.timezone"


def test_adapters_are_built_with_env_credentials_and_base_url(tmp_path: Path) -> None:
    acct = load(
        tmp_path,
        {
            "mailchimp": {
                "api_key_env": "MC",
                "list_id": "a1",
                "base_url": "http://127.0.0.1:9/3.0",
                "sandbox": True,
            },
            "crm": {"type": "hubspot", "api_key_env": "HS"},
            "klaviyo": {"api_key_env": "KL", "segment_events": True},
        },
    )
    dests = destinations(acct)
    env = {"MC": "key-us2", "HS": "pat-1", "KL": "pk_1"}
    mc = build_adapter(dests["mailchimp"], None, clock=lambda: 0.0, sleep=lambda s: None, env=env)
    assert mc.name == "mailchimp" and "key-us2" not in repr(mc.client)  # type: ignore[attr-defined]
    assert (
        build_adapter(dests["crm"], None, clock=lambda: 0.0, sleep=lambda s: None, env=env).name == "hubspot"
    )
    with pytest.raises(ConfigError) as info:
        build_adapter(dests["klaviyo"], None, clock=lambda: 0.0, sleep=lambda s: None, env={})
    assert "KL" in str(info.value) and info.value.path == "destinations.klaviyo.api_key_env"


@pytest.mark.parametrize("text", ["jöe", "JÖE@EXAMPLE", '"isValid": false', "Member In Compliance"])
def test_the_text_filter_finds_text_as_it_reads_not_as_json_escapes_it(
    runner: CliRunner, redis_client: redis.Redis, text: str
) -> None:
    found = dead_change(redis_client, "jöe", text='Member In Compliance State: {"isValid": false}')
    other = dead_change(redis_client, "p2", text="Invalid Resource")
    listed = runner.invoke(cli, ["dlq", "list", "--filter", text])
    assert listed.exit_code == 0, listed.output
    assert found in listed.output and other not in listed.output


def test_a_limit_below_one_is_a_usage_error(runner: CliRunner, redis_client: redis.Redis) -> None:
    dead_change(redis_client, "p1")
    result = runner.invoke(cli, ["dlq", "list", "--limit", "0"])
    assert result.exit_code == 2 and "--limit" in result.output
