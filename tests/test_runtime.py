"""The runtime's accounts provider: one cache, one reload rule, last valid version on a bad edit."""

from __future__ import annotations

import ast
import json
import threading
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from connector import runtime
from connector.config import load_accounts
from connector.errors import ConfigError
from connector.runtime import AccountsProvider
from connector.settings import Settings
from tests.conftest import ACME, ACME_ENV, GLOBEX, write_accounts


class Ticks:
    def __init__(self) -> None:
        self.value = 0.0

    def __call__(self) -> float:
        return self.value


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return write_accounts(tmp_path / "accounts", ACME, GLOBEX)


def test_changed_file_is_picked_up_after_the_check_interval(directory: Path) -> None:
    ticks = Ticks()
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=1.0, monotonic=ticks)
    assert provider.get("acme") is not None
    changed = {**GLOBEX, "dedupe_ttl_hours": 96}
    (directory / "globex.yaml").write_text(yaml.safe_dump(changed))
    ticks.value = 0.5
    globex = provider.get("globex")
    assert globex is not None and globex.dedupe_ttl_seconds != 96 * 3600  # not looked at yet
    ticks.value = 1.5
    globex = provider.get("globex")
    assert globex is not None and globex.dedupe_ttl_seconds == 96 * 3600


def test_a_broken_edit_keeps_the_last_valid_version_and_reports_it(directory: Path) -> None:
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    before = provider.get("acme")
    assert before is not None
    (directory / "acme.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": "soon"}))
    assert provider.get("acme") is before
    [error] = provider.errors
    assert error.file == str(directory / "acme.yaml")
    assert error.path == "dedupe_ttl_hours"
    (directory / "acme.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 100}))
    fixed = provider.get("acme")
    assert fixed is not None and fixed.dedupe_ttl_seconds == 100 * 3600
    assert provider.errors == []


def test_a_file_that_never_loaded_serves_nothing_and_the_others_serve(directory: Path) -> None:
    (directory / "broken.yaml").write_text("account: broken\nsenders: [\n")
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    assert provider.get("acme") is not None and provider.get("broken") is None
    assert [e.file for e in provider.errors] == [str(directory / "broken.yaml")]


def test_a_second_file_for_the_same_account_is_refused_not_the_first(directory: Path) -> None:
    (directory / "zz-acme-copy.yaml").write_text(yaml.safe_dump(ACME))
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    assert provider.get("acme") is not None
    [error] = provider.errors
    assert error.file.endswith("zz-acme-copy.yaml") and "also defined" in error.reason


def test_of_two_files_of_one_account_the_one_named_after_it_serves_before_and_after_a_restart(
    directory: Path,
) -> None:
    # a backup copy whose name sorts first (acme.bak.yaml < acme.yaml), made while the process runs
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    (directory / "acme.bak.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 96}))
    (directory / "acme.yaml").write_text(yaml.safe_dump({**ACME, "dedupe_ttl_hours": 100}))
    for running in (provider, AccountsProvider(directory, ACME_ENV, check_seconds=0)):  # then restarted
        served = running.get("acme")
        assert served is not None and served.file == str(directory / "acme.yaml")
        assert served.dedupe_ttl_seconds == 100 * 3600
        [error] = running.errors
        assert error.file == str(directory / "acme.bak.yaml") and "also defined" in error.reason
    with pytest.raises(ConfigError, match="also defined in"):  # what `connector config validate` loads
        load_accounts(directory, ACME_ENV)


def test_a_file_added_with_a_serving_account_s_write_key_is_refused_and_takes_nothing_from_it(
    directory: Path,
) -> None:
    # `aaa.yaml` sorts before `acme.yaml` and claims acme's tracking write key while acme serves
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    acme = provider.get("acme")
    assert acme is not None
    copied = {"account": "aaa", "senders": {"tracking": {"secret_env": "ACME_WRITE_KEY"}}}
    (directory / "aaa.yaml").write_text(yaml.safe_dump(copied))
    served_acme = provider.get("acme")
    assert served_acme is not None and served_acme.file == acme.file and provider.get("aaa") is None
    [error] = provider.errors
    assert error.file == str(directory / "aaa.yaml") and "write key is already used" in error.reason
    served = provider.current().by_write_key(ACME_ENV["ACME_WRITE_KEY"])
    assert served is not None and served.id == "acme"  # its tracking traffic stays acme's

    # acme's file breaks meanwhile: its last valid version still serves, the clash notwithstanding
    (directory / "acme.yaml").write_text("account: acme\nsenders: [\n")
    assert provider.get("acme") is served_acme
    assert sorted(e.file for e in provider.errors) == [
        str(directory / "aaa.yaml"),
        str(directory / "acme.yaml"),
    ]


def test_a_removed_file_removes_its_account(directory: Path) -> None:
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    assert provider.get("globex") is not None
    (directory / "globex.yaml").unlink()
    assert provider.get("globex") is None


def test_current_without_an_installed_runtime_is_an_error() -> None:
    runtime.uninstall()
    with pytest.raises(RuntimeError, match="no runtime installed"):
        runtime.current()


# Where the process's settings, connections and accounts may come from: the entry points only.
ENTRY_POINTS = {"connector/app.py", "connector/cli/main.py", "connector/cli/run_cmd.py"}
BUILDERS = {"from_env", "connection", "load_accounts"}  # Settings.from_env, redis_conn.connection


def _calls(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in BUILDERS:
                found.add(name)
    return found


def test_nothing_below_the_entry_points_reads_settings_or_opens_connections() -> None:
    root = Path(__file__).resolve().parents[1]
    allowed = ENTRY_POINTS | {
        "connector/runtime.py",  # builds the runtime from the settings it is given
        "connector/redis_conn.py",  # defines connection()
        "connector/settings.py",  # defines from_env()
        "connector/config.py",  # defines load_accounts()
        "connector/cli/config_cmd.py",  # `config validate DIR` loads the directory it is given
        "connector/cli/sign_cmd.py",  # signs with the directory's secrets, strictly loaded
    }
    offenders = {
        str(path.relative_to(root)): sorted(calls)
        for path in sorted((root / "connector").rglob("*.py"))
        if str(path.relative_to(root)) not in allowed and "dev/" not in str(path.relative_to(root))
        for calls in [_calls(path)]
        if calls
    }
    assert offenders == {}


def test_the_checker_sees_a_settings_read(tmp_path: Path) -> None:
    module = tmp_path / "m.py"
    module.write_text("from connector.settings import Settings\n\ndef f():\n    return Settings.from_env()\n")
    assert _calls(module) == {"from_env"}


def test_the_web_process_takes_a_rotated_secret_without_a_restart(
    settings: Settings, redis_client: redis.Redis, config_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from connector.app import create_app
    from connector.ingest.receivers.segment import sign

    app = create_app(runtime=runtime.Runtime.from_settings(settings, check_seconds=0))
    client = app.test_client()
    body = json.dumps(
        {"type": "track", "event": "Product Viewed", "userId": "u-rot", "messageId": "rot-1"}
    ).encode()

    def post(secret: str) -> int:
        headers = {"X-Signature": sign(secret.encode(), body), "Content-Type": "application/json"}
        return int(client.post("/webhooks/globex/segment", data=body, headers=headers).status_code)

    rotated = "globex-rotated-segment-secret-0042"
    assert post(rotated) == 401
    monkeypatch.setenv("GLOBEX_SEGMENT_SECRET_NEW", rotated)
    globex = {
        **GLOBEX,
        "senders": {**GLOBEX["senders"], "segment": {"secret_env": "GLOBEX_SEGMENT_SECRET_NEW"}},
    }
    (config_dir / "globex.yaml").write_text(yaml.safe_dump(globex))
    assert post(rotated) == 200
    assert post(ACME_ENV["GLOBEX_SEGMENT_SECRET"]) == 401  # the old one is gone


class _TellingLock:
    """The provider's lock, telling when a thread other than the loading one waits for it."""

    def __init__(self, waiting: threading.Event) -> None:
        self._lock = threading.RLock()
        self._waiting = waiting
        self.loader: int | None = None

    def __enter__(self) -> _TellingLock:
        if self.loader is not None and threading.get_ident() != self.loader:
            self._waiting.set()
        self._lock.acquire()
        self.loader = self.loader or threading.get_ident()
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.release()


def test_a_thread_asking_while_another_loads_the_accounts_waits_for_them(
    directory: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A drain lane (or a threaded web worker) asking for an account while another thread is loading
    the files for the first time got the empty set of before the load: its events were rejected as
    of an unknown account."""
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=1.0, monotonic=lambda: 5.0)
    loading, go_on, answered_or_waiting = threading.Event(), threading.Event(), threading.Event()
    real = runtime.load_account_file

    def slow_load(path: Path, env: Any) -> Any:
        loading.set()
        assert go_on.wait(10)
        return real(path, env)

    monkeypatch.setattr(runtime, "load_account_file", slow_load)
    provider._lock = _TellingLock(answered_or_waiting)  # type: ignore[assignment]
    found: dict[str, Any] = {}

    def ask(name: str) -> None:
        found[name] = provider.get("acme")
        answered_or_waiting.set()

    first = threading.Thread(target=ask, args=("first",))
    first.start()
    assert loading.wait(10)
    second = threading.Thread(target=ask, args=("second",))
    second.start()
    assert answered_or_waiting.wait(10)  # the second thread answered, or waits for the load
    go_on.set()
    first.join(10)
    second.join(10)
    assert found["first"] is not None and found["second"] is not None
    assert found["second"].id == "acme"
