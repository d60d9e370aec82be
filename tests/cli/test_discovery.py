"""One way to find configuration and Redis: explicit settings, else the running ``connector dev``
(found through the data directory, the nearest ``.connector`` up from the working directory), else
an error naming REDIS_URL; port conflicts name the flag that fixes them."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from connector.dev import devenv
from connector.errors import ConfigError
from connector.settings import SEEDED_CONFIG_ENV, Settings

CONNECTOR = str(Path(sys.executable).parent / "connector")


@pytest.fixture
def bare(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No REDIS_URL, no config dir, a working directory of its own inside a repository-like tree."""
    for name in ("REDIS_URL", "CONNECTOR_CONFIG_DIR", "CONNECTOR_DATA_DIR", "CONNECTOR_QUEUE_REDIS_URL",
                 "CONNECTOR_PROFILE_REDIS_URL"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)
    repo = tmp_path / "repo"
    (repo / "sub" / "dir").mkdir(parents=True)
    monkeypatch.chdir(repo / "sub" / "dir")
    return repo


def _running(repo: Path, pid: int) -> Path:
    data = repo / ".connector"
    (data / "accounts").mkdir(parents=True)
    state = {"pid": pid, "redis_url": "redis://:pw@127.0.0.1:6390/0", "config_dir": str(data / "accounts")}
    (data / "dev.json").write_text(json.dumps(state))
    return data


def test_without_redis_url_or_a_running_dev_the_settings_name_redis_url(bare: Path) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env()
    assert "REDIS_URL is not set" in str(info.value) and "connector dev" in str(info.value)


def test_the_running_dev_is_found_from_anywhere_in_the_repository(bare: Path) -> None:
    data = _running(bare, os.getpid())
    assert devenv.data_dir().resolve() == data.resolve()
    settings = Settings.from_env()
    assert settings.queue_redis_url == "redis://:pw@127.0.0.1:6390/0"
    assert settings.config_dir == (data / "accounts").resolve()
    described = settings.describe()
    assert "pw" not in described and "redis://:***@127.0.0.1:6390/0" in described
    assert "the running connector dev" in described
    # creating config/accounts does not switch a command away from the accounts the dev runs
    (Path.cwd() / "config" / "accounts").mkdir(parents=True)
    assert Settings.from_env().config_dir == (data / "accounts").resolve()


def test_explicit_settings_win_and_a_dead_dev_is_ignored(bare: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _running(bare, dead.pid)
    with pytest.raises(ConfigError, match="REDIS_URL"):
        Settings.from_env()
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6391/0")
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", "/etc/connector/accounts")
    settings = Settings.from_env()
    assert settings.queue_redis_url == "redis://127.0.0.1:6391/0"
    assert settings.config_dir == Path("/etc/connector/accounts")
    assert "(from REDIS_URL)" in settings.describe() and "(from CONNECTOR_CONFIG_DIR)" in settings.describe()


def _clean_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_URL", "CONNECTOR_"))}
    env["CONNECTOR_DATA_DIR"] = str(tmp_path / "data")
    return env


@pytest.mark.parametrize("command", [["worker", "--burst"], ["scheduler"], ["dlq", "list"]])
def test_processes_without_redis_say_so_and_exit_non_zero(tmp_path: Path, command: list[str]) -> None:
    done = subprocess.run([CONNECTOR, *command], env=_clean_env(tmp_path), cwd=tmp_path,
                          capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode != 0
    assert b"REDIS_URL is not set" in done.stderr
    assert b"Traceback" not in done.stderr


def test_a_process_states_its_config_and_redis_at_start(tmp_path: Path, redis_url: str) -> None:
    env = {**_clean_env(tmp_path), "REDIS_URL": redis_url, "CONNECTOR_CONFIG_DIR": str(tmp_path)}
    done = subprocess.run([CONNECTOR, "dlq", "list"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 0, done.stderr
    first = done.stderr.decode().splitlines()[0]
    assert first.startswith(f"connector: config {tmp_path.resolve()} (from CONNECTOR_CONFIG_DIR); redis ")
    assert "(from REDIS_URL)" in first


def _taken() -> socket.socket:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def test_port_conflicts_name_the_flag_that_fixes_them(tmp_path: Path) -> None:
    env = _clean_env(tmp_path)
    with _taken() as web:
        port = web.getsockname()[1]
        done = subprocess.run([CONNECTOR, "dev", "--no-sandbox", "--port", str(port)], env=env, cwd=tmp_path,
                              capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and b"--port" in done.stderr, done.stderr
    with _taken() as fake:
        taken = fake.getsockname()[1]
        with socket.socket() as free:
            free.bind(("127.0.0.1", 0))
            web_port = free.getsockname()[1]
        ports = f"{taken},0,0"
        done = subprocess.run([CONNECTOR, "dev", "--port", str(web_port), "--sandbox-ports", ports], env=env,
                              cwd=tmp_path, capture_output=True, timeout=60)  # fmt: skip
    assert done.returncode != 0 and b"--sandbox-ports" in done.stderr, done.stderr
    assert not (tmp_path / "data" / "dev.json").exists()


def test_the_directory_connector_dev_seeded_is_named_as_such(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6391/0")
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", "/srv/data/accounts")
    monkeypatch.setenv(SEEDED_CONFIG_ENV, "/srv/data/accounts")
    described = Settings.from_env().describe()
    assert "(from the sample account `connector dev` seeded; CONNECTOR_CONFIG_DIR was not set)" in described
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", "/etc/connector/accounts")  # set by the person: theirs
    assert "(from CONNECTOR_CONFIG_DIR)" in Settings.from_env().describe()


@pytest.mark.parametrize(
    "command",
    [["dlq", "list"], ["tokens", "list"], ["segments", "report", "--account", "demo", "--segment", "x"]],
)
def test_commands_with_redis_unreachable_say_so_without_a_traceback(
    tmp_path: Path, command: list[str]
) -> None:
    from tests.helpers import unreachable_redis_url

    config = tmp_path / "accounts"
    config.mkdir()
    (config / "demo.yaml").write_text("account: demo\nrules:\n  segments:\n  - {name: x, when: always}\n")
    with unreachable_redis_url() as url:
        env = {**_clean_env(tmp_path), "REDIS_URL": url, "CONNECTOR_CONFIG_DIR": str(config)}
        done = subprocess.run([CONNECTOR, *command], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert (
        b"Redis unavailable (ConnectionError" in done.stderr or b"unavailable: ConnectionError" in done.stderr
    )
    assert b"Traceback" not in done.stderr


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("localhost:6379", "is not a Redis URL: it starts with one of redis://"),
        ("redis//127.0.0.1:6379", "is not a Redis URL"),
        ("redis://127.0.0.1:6379/abc", "the database must be a number"),
        ("redis://:hunter2secret@127.0.0.1:6379/x1", "the database must be a number"),
    ],
)
def test_a_malformed_redis_url_is_refused_at_start_saying_why(tmp_path: Path, url: str, reason: str) -> None:
    env = {**_clean_env(tmp_path), "REDIS_URL": url}
    done = subprocess.run([CONNECTOR, "dlq", "list"], env=env, cwd=tmp_path, capture_output=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert reason.encode() in done.stderr
    assert b"Traceback" not in done.stderr and b"hunter2secret" not in done.stderr


def test_the_redis_connector_dev_started_is_named_so_not_as_redis_url(
    bare: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.settings import EMBEDDED_REDIS_ENV

    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6392/0")
    monkeypatch.setenv(EMBEDDED_REDIS_ENV, "redis://127.0.0.1:6392/0")
    described = Settings.from_env().describe()
    assert "(from the embedded Redis `connector dev` started; REDIS_URL was not set)" in described
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6393/0")  # set by hand: named as such
    assert "(from REDIS_URL)" in Settings.from_env().describe()
