"""``connector import``'s help and report: the usage line and the text name the file alike, and a
``--push`` that changed no profile says that nothing was queued for the destinations."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from connector import clock
from connector.cli.main import _register, cli
from connector.dev.sandbox import SANDBOX_MAILCHIMP_KEY, SANDBOX_MAILCHIMP_LIST
from connector.sync import pending
from tests.conftest import ACME, GLOBEX, write_accounts

T0 = datetime(2024, 6, 3, 10, 0, tzinfo=UTC)
BUYERS = {"segments": [{"name": "buyers", "when": {"count": {"event": "order_completed", "gte": 1}}}]}


@pytest.fixture
def account(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    _register()
    monkeypatch.setenv("IMPORT_MC_KEY", SANDBOX_MAILCHIMP_KEY)
    mailchimp = {
        "api_key_env": "IMPORT_MC_KEY",
        "base_url": "http://127.0.0.1:9/3.0",
        "sandbox": True,
        "list_id": SANDBOX_MAILCHIMP_LIST,
        "segments": {"buyers": {"tags": ["buyer"]}},
    }
    write_accounts(config_dir, {**ACME, "rules": BUYERS, "destinations": {"mailchimp": mailchimp}}, GLOBEX)
    return "acme"


def run(*args: str) -> tuple[int, str]:
    with clock.frozen(T0):
        result = CliRunner().invoke(cli, ["import", *args], catch_exceptions=False)
    return result.exit_code, result.output


def test_the_help_names_the_file_alike_in_the_usage_line_and_the_text() -> None:
    _register()
    shown = CliRunner().invoke(cli, ["import", "--help"]).output
    assert "Usage: cli import [OPTIONS] FILE" in shown and "from FILE" in shown
    assert "PATH" not in shown
    missing = CliRunner().invoke(cli, ["import", "--account", "acme", "no-such.jsonl"])
    assert missing.exit_code == 2 and "Invalid value for 'FILE'" in missing.output


def test_a_push_that_changed_nothing_says_nothing_was_queued(
    account: str, redis_client: redis.Redis, tmp_path: Path
) -> None:
    order = {
        "type": "track",
        "event": "Order Completed",
        "userId": "u-1",
        "messageId": "m-1",
        "timestamp": "2024-05-01T12:00:00Z",
        "context": {"traits": {"email": "bo@example.com"}},
        "properties": {"order_id": "1"},
    }
    path = tmp_path / "orders.jsonl"
    path.write_text(json.dumps(order) + "\n")
    code, first = run("--account", account, "--no-progress", "--push", str(path))
    assert code == 0, first
    assert "1 profiles evaluated, 1 changed" in first
    assert "segment changes: queued for the destinations (the 1 changed profile)" in first
    redis_client.delete(*redis_client.keys("sync:acme:mailchimp:*"))  # as if sent meanwhile
    code, again = run("--account", account, "--no-progress", "--push", str(path))
    assert code == 0, again
    assert "1 profiles evaluated, 0 changed" in again
    assert "segment changes: nothing queued (no profile changed)" in again
    assert "queued for the destinations" not in again
    assert pending(redis_client, "acme", "mailchimp") == {}
