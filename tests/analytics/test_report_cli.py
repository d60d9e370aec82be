"""``connector segments report`` over the counters (real Redis)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from connector import clock
from connector.analytics import movement
from connector.cli.main import _register, cli
from connector.worker import sizes
from tests.conftest import fresh_runtime, write_accounts

NOW = datetime(2024, 3, 5, 12, tzinfo=UTC)
ACCOUNT = {
    "account": "shop",
    "rules": {"segments": [{"name": "buyers", "when": {"count": {"event": "order_completed", "gte": 1}}}]},
}


@pytest.fixture
def shop(redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> redis.Redis:
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(write_accounts(tmp_path / "accounts", ACCOUNT)))
    fresh_runtime()
    _register()
    for n in range(4):
        sizes.record_transitions(redis_client, "shop", ["buyers"], [], NOW, profile_id=f"p{n}")
        movement.record_diff(redis_client, "shop", {}, f"p{n}", ["buyers"], [], NOW)
    return redis_client


def test_report_prints_a_table_and_json(shop: redis.Redis) -> None:
    with clock.frozen(NOW):
        table = CliRunner().invoke(cli, ["segments", "report", "--account", "shop", "--since", "7d"])
        as_json = CliRunner().invoke(
            cli, ["segments", "report", "--account", "shop", "--segment", "buyers", "--json"]
        )
    assert table.exit_code == 0, table.output
    assert "buyers  size 4  entered 4  exited 0" in table.output
    data = json.loads(as_json.output)
    assert data["members"] == 4 and data["size"] == 4 and data["days"] == 30


def test_a_bad_period_or_segment_is_named(shop: redis.Redis) -> None:
    bad = CliRunner().invoke(cli, ["segments", "report", "--account", "shop", "--since", "3w"])
    assert bad.exit_code == 2 and "since must be a number of days" in bad.output
    missing = CliRunner().invoke(cli, ["segments", "report", "--account", "shop", "--segment", "buyer"])
    assert missing.exit_code == 1
    assert "unknown segment in account shop `buyer` (did you mean `buyers`?); known: buyers" in missing.output


def test_a_mistyped_analytics_setting_names_the_closest() -> None:
    from connector.analytics import settings
    from connector.errors import ConfigError

    with pytest.raises(ConfigError) as caught:
        settings.load({"conversoin_days": 5}, "shop.yaml")
    assert caught.value.path == "analytics.conversoin_days"
    assert "unknown field `conversoin_days` (did you mean `conversion_days`?)" in str(caught.value)
