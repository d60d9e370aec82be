"""Settings whose bad values used to be accepted and fail later: ``CONNECTOR_MAX_BODY_BYTES`` below
1 KiB (every body answered 413 while ``/readyz`` says ready), a ``CONNECTOR_PUBLIC_URL`` that is
not an absolute http(s) URL (every HubSpot and Mandrill signature check fails) and a
``CONNECTOR_CLOCK_OFFSET_SECONDS`` that is not a finite number (a ``ValueError`` traceback at the
first clock read). Each now stops start-up with one line naming the variable, as the other
settings do."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from connector import clock
from connector.errors import ConfigError
from connector.settings import Settings

CONNECTOR = str(Path(sys.executable).parent / "connector")


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A Redis URL (not connected to: the settings are checked first) and an empty config directory."""
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:9/0")
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(tmp_path))
    for name in ("CONNECTOR_MAX_BODY_BYTES", "CONNECTOR_PUBLIC_URL", "CONNECTOR_CLOCK_OFFSET_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


# -- CONNECTOR_MAX_BODY_BYTES ---------------------------------------------------------------------


@pytest.mark.parametrize("raw", ["0", "-1", "1023", str(2**30 + 1), str(2**63)])
def test_a_body_limit_below_1_kib_or_above_1_gib_stops_start_up(env: pytest.MonkeyPatch, raw: str) -> None:
    env.setenv("CONNECTOR_MAX_BODY_BYTES", raw)
    with pytest.raises(ConfigError, match=f"CONNECTOR_MAX_BODY_BYTES must be at least 1024 .*got {raw} "):
        Settings.from_env()


def test_a_body_limit_that_is_not_a_number_stops_start_up(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECTOR_MAX_BODY_BYTES", "lots")
    with pytest.raises(ConfigError, match="CONNECTOR_MAX_BODY_BYTES='lots' is not an integer"):
        Settings.from_env()


@pytest.mark.parametrize(
    ("raw", "expected"), [(None, 1024 * 1024), ("1024", 1024), ("5000000", 5_000_000), (str(2**30), 2**30)]
)
def test_body_limits_from_1_kib_to_1_gib_are_taken(
    env: pytest.MonkeyPatch, raw: str | None, expected: int
) -> None:
    if raw is not None:
        env.setenv("CONNECTOR_MAX_BODY_BYTES", raw)
    assert Settings.from_env().max_body_bytes == expected


# -- CONNECTOR_PUBLIC_URL -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        ("notaurl", "is not an absolute http:// or https:// URL with a host"),
        ("hooks.example.com", "is not an absolute http:// or https:// URL with a host"),
        ("ftp://hooks.example.com", "is not an absolute http:// or https:// URL with a host"),
        ("https://", "is not an absolute http:// or https:// URL with a host"),
        ("https:///webhooks", "is not an absolute http:// or https:// URL with a host"),
        ("https://hooks.example.com:port", "is not a valid URL"),
        ("https://[::1", "is not a valid URL"),
        (" https://hooks.example.com", "must not contain spaces"),
        ("https://hooks.example.com?x=1", "must not have a query or fragment"),
        ("https://hooks.example.com/#top", "must not have a query or fragment"),
    ],
)
def test_a_public_url_that_is_not_an_absolute_http_url_stops_start_up(
    env: pytest.MonkeyPatch, raw: str, problem: str
) -> None:
    env.setenv("CONNECTOR_PUBLIC_URL", raw)
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    message = str(info.value)
    assert message.startswith(f"CONNECTOR_PUBLIC_URL={raw!r} {problem}"), message
    assert "https://hooks.example.com" in message and "\n" not in message


def test_the_password_of_a_refused_public_url_is_not_shown(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECTOR_PUBLIC_URL", "https://user:s3cret@hooks.example.com?x=1")
    with pytest.raises(ConfigError, match="CONNECTOR_PUBLIC_URL") as info:
        Settings.from_env()
    assert "s3cret" not in str(info.value)


@pytest.mark.parametrize(
    "raw",
    [
        "https://hooks.example.com",
        "https://hooks.example.com/",
        "http://hooks.example.com:8080",
        "https://example.com/connector/",
        "http://127.0.0.1:8000",
        "https://[::1]:8443/hooks",
    ],
)
def test_absolute_http_urls_with_or_without_a_path_are_taken_as_they_are(
    env: pytest.MonkeyPatch, raw: str
) -> None:
    env.setenv("CONNECTOR_PUBLIC_URL", raw)
    assert Settings.from_env().public_url == raw


def test_an_empty_public_url_is_unset(env: pytest.MonkeyPatch) -> None:
    env.setenv("CONNECTOR_PUBLIC_URL", "")
    assert Settings.from_env().public_url is None


# -- CONNECTOR_CLOCK_OFFSET_SECONDS ---------------------------------------------------------------


@pytest.mark.parametrize("raw", ["abc", "nan", "inf", "-inf", "1e308", "-1e20", "12s"])
def test_a_clock_offset_that_is_not_a_finite_number_of_seconds_stops_start_up(
    env: pytest.MonkeyPatch, raw: str
) -> None:
    env.setenv("CONNECTOR_CLOCK_OFFSET_SECONDS", raw)
    with pytest.raises(ConfigError, match=f"CONNECTOR_CLOCK_OFFSET_SECONDS={raw!r}"):
        Settings.from_env()
    with pytest.raises(ConfigError, match="CONNECTOR_CLOCK_OFFSET_SECONDS"):  # not a ValueError
        clock.reset()
        clock.now()


@pytest.mark.parametrize(("raw", "seconds"), [("", 0), ("3600", 3600), ("-86400.5", -86400.5), (" 60 ", 60)])
def test_a_clock_offset_moves_the_clock(env: pytest.MonkeyPatch, raw: str, seconds: float) -> None:
    env.setenv("CONNECTOR_CLOCK_OFFSET_SECONDS", raw)
    Settings.from_env()
    clock.reset()
    shift = clock.now() - datetime.now(UTC)
    assert abs(shift - timedelta(seconds=seconds)) < timedelta(seconds=5)


# -- what an operator sees ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        ("CONNECTOR_CLOCK_OFFSET_SECONDS", "abc", "config error: CONNECTOR_CLOCK_OFFSET_SECONDS='abc' is"),
        ("CONNECTOR_CLOCK_OFFSET_SECONDS", "nan", "config error: CONNECTOR_CLOCK_OFFSET_SECONDS='nan' must"),
        ("CONNECTOR_MAX_BODY_BYTES", "-1", "config error: CONNECTOR_MAX_BODY_BYTES must be at least 1024"),
        ("CONNECTOR_PUBLIC_URL", "notaurl", "config error: CONNECTOR_PUBLIC_URL='notaurl' is not an"),
    ],
)
def test_the_command_says_which_setting_is_wrong_in_one_line(
    tmp_path: Path, name: str, raw: str, expected: str
) -> None:
    environment = {
        **{k: v for k, v in os.environ.items() if not k.startswith("CONNECTOR_")},
        "REDIS_URL": "redis://127.0.0.1:9/0",
        "CONNECTOR_CONFIG_DIR": str(tmp_path),
        "CONNECTOR_DATA_DIR": str(tmp_path / "data"),
        name: raw,
    }
    result = subprocess.run(
        [CONNECTOR, "events", "rejected", "--account", "demo"],
        env=environment,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [result.stderr.strip()]
    assert result.stderr.startswith(expected), result.stderr
