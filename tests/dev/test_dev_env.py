"""The variables ``connector dev`` gives its processes are in ``.connector/dev.env`` too, where every
other ``connector`` command reads them: ``connector config validate`` run beside a running
``connector dev`` finds the sandbox ESPs' keys its sample account names, as its processes do."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from connector.cli import run_cmd
from connector.dev import devenv
from connector.dev.sandbox.process import ENV
from tests.cli.test_run_command import CONNECTOR, free_port, start_dev, wait_ready


@pytest.fixture
def clean_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a terminal in a fresh checkout: no Redis, no config, no sample secrets."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_URL", "CONNECTOR_", "DEMO_", "SANDBOX_")) and k != "PORT"
    }
    env["CONNECTOR_DATA_DIR"] = str(tmp_path / "data")
    return env


def test_the_sandbox_keys_are_written_to_dev_env_with_the_generated_secrets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CONNECTOR_DATA_DIR", str(tmp_path / "data"))
    for key in ENV:  # unset now, and unset again after the test (the sandbox sets them)
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    generated = devenv.ensure_dev_env()
    sandbox = run_cmd._start_sandbox(
        {"mailchimp": free_port(), "hubspot": free_port(), "klaviyo": free_port()}
    )
    try:
        written = devenv.read_env_file(devenv.dev_env_file())
    finally:
        sandbox.stop()
    assert {k: written[k] for k in ENV} == ENV
    assert {k: written[k] for k in generated} == generated  # the generated secrets stay as they were
    assert devenv.dev_env_file().stat().st_mode & 0o077 == 0
    before = devenv.dev_env_file().read_text()
    devenv.record_dev_env(ENV)  # nothing new: the file is left as it is
    assert devenv.dev_env_file().read_text() == before


@pytest.fixture
def running_dev(clean_env: dict[str, str], tmp_path: Path) -> Iterator[None]:
    proc, base, _ = start_dev(clean_env, tmp_path, subprocess.DEVNULL)
    try:
        wait_ready(base, proc)
        yield
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGINT)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def test_config_validate_finds_the_running_sample_account_valid(
    running_dev: None, clean_env: dict[str, str], tmp_path: Path
) -> None:
    done = subprocess.run(
        [CONNECTOR, "config", "validate"], env=clean_env, cwd=tmp_path, capture_output=True, timeout=60
    )
    stderr = done.stderr.decode()
    assert done.returncode == 0, stderr
    assert "ok: demo" in done.stdout.decode()
    assert "SANDBOX_" not in stderr and "invalid" not in stderr
