"""Number options out of their range are usage errors naming the option and the range, before any
Redis or account is looked at: ``predict report --holdout-days nan`` used to end in a traceback
(``timedelta`` of nan, inf or 1e308 days) and a negative holdout reported on a date in the future;
``events rejected --limit 0`` ended in "profile store unavailable: DataError" with Redis fine."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from click.testing import CliRunner

from connector.cli import predict_cmd
from connector.cli.main import _register, cli
from connector.config import Accounts
from connector.predict import backtest
from tests.cli.test_operable import install_shop


@pytest.fixture
def runner() -> CliRunner:
    _register()
    return CliRunner()


@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e308", "0", "-5", "3651", "abc"])
def test_holdout_days_out_of_range_is_a_usage_error(runner: CliRunner, value: str) -> None:
    result = runner.invoke(cli, ["predict", "report", "--account", "demo", "--holdout-days", value])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--holdout-days'" in result.output
    assert "Traceback" not in result.output and not isinstance(result.exception, ValueError | OverflowError)
    if value != "abc":
        assert "0<x<=3650" in result.output


@pytest.mark.parametrize("command", ["report", "train"])
@pytest.mark.parametrize("option", ["--min-days", "--min-repeat-customers"])
@pytest.mark.parametrize("value", ["0", "-1"])
def test_minimums_below_1_are_a_usage_error(runner: CliRunner, command: str, option: str, value: str) -> None:
    result = runner.invoke(cli, ["predict", command, "--account", "demo", option, value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '{option}': {value} is not in the range x>=1." in result.output


def test_the_cli_and_the_backtest_agree_on_the_longest_holdout() -> None:
    assert predict_cmd.HOLDOUT_DAYS_MAX == backtest.HOLDOUT_DAYS_MAX


@pytest.mark.parametrize("days", [float("nan"), float("inf"), 1e308, 0.0, -1.0])
def test_the_backtest_refuses_a_holdout_out_of_range(days: float) -> None:
    with pytest.raises(ValueError, match="holdout_days must be above 0 and at most 3650"):
        backtest.report(None, "acme", datetime(2026, 1, 1, tzinfo=UTC), days)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", ["0", "-5"])
def test_a_limit_below_1_is_a_usage_error(runner: CliRunner, value: str) -> None:
    result = runner.invoke(cli, ["events", "rejected", "--account", "demo", "--limit", value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--limit': {value} is not in the range x>=1." in result.output
    assert "profile store unavailable" not in result.output


@pytest.mark.parametrize("value", ["0", "-5", "99999999999999999999"])
def test_the_exports_limit_out_of_range_is_a_usage_error(runner: CliRunner, value: str) -> None:
    result = runner.invoke(cli, ["profiles", "exports", "--account", "demo", "--limit", value])
    assert result.exit_code == 2, result.output
    assert f"Invalid value for '--limit': {value} is not in the range 1<=x<=10000." in result.output


@pytest.fixture
def shop(redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    return install_shop(tmp_path, monkeypatch)


@pytest.mark.parametrize("value", ["1", "20", str(2**63), str(10**30)])
def test_limits_from_1_up_list_the_rejected_events(runner: CliRunner, shop: Accounts, value: str) -> None:
    result = runner.invoke(cli, ["events", "rejected", "--account", "shop", "--limit", value])
    assert result.exit_code == 0, result.output
    assert "0 rejected events kept for shop; latest 0:" in result.output
