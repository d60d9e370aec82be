"""The runtime's accounts provider: one cache, one reload rule, last valid version on a bad edit."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from connector import runtime
from connector.runtime import AccountsProvider
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


def test_a_removed_file_removes_its_account(directory: Path) -> None:
    provider = AccountsProvider(directory, ACME_ENV, check_seconds=0)
    assert provider.get("globex") is not None
    (directory / "globex.yaml").unlink()
    assert provider.get("globex") is None


def test_current_without_an_installed_runtime_is_an_error() -> None:
    runtime.uninstall()
    with pytest.raises(RuntimeError, match="no runtime installed"):
        runtime.current()
