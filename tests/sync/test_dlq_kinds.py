"""``connector dlq`` and the destinations of the account files: ``--kind sync:<type>`` stands for every
destination of that type whatever its name, an unknown kind is refused naming the real ones, a dead
letter whose destination left its account file is kept by a replay (``no such destination``), ``show``
takes a unique beginning of an id, and ``list`` leaves out kinds that hold nothing."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner

from adapters.change import Change
from connector import sync
from connector.cli.main import _register, cli
from connector.sync import deadletters
from connector.sync.deadletters import DeadLetters
from tests.conftest import fresh_runtime
from tests.sync.test_sync_dlq_cmd import NOW

ACME = {
    "account": "acme",
    "destinations": {
        "crm": {"type": "hubspot", "api_key_env": "DLQ_HS_TOKEN", "segments": {"vip": {"tags": ["vip"]}}},
        "mailchimp": {"api_key_env": "DLQ_MC_KEY", "list_id": "aud1", "segments": {"vip": {"tags": ["vip"]}}},
    },
}
GLOBEX = {
    "account": "globex",
    "destinations": {
        "hubspot": {"api_key_env": "DLQ_HS_TOKEN", "segments": {"vip": {"tags": ["vip"]}}},
        "klaviyo": {"api_key_env": "DLQ_KL_KEY", "segments": {"vip": {"lists": ["L1"]}}},
    },
}


def install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *accounts: dict[str, Any]) -> Path:
    directory = tmp_path / "accounts"
    directory.mkdir(exist_ok=True)
    for account in accounts:
        (directory / f"{account['account']}.yaml").write_text(yaml.safe_dump(account))
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    monkeypatch.setenv("DLQ_HS_TOKEN", "pat-na1-0000")
    monkeypatch.setenv("DLQ_MC_KEY", "0123456789abcdef0123456789abcdef-us6")
    monkeypatch.setenv("DLQ_KL_KEY", "pk_test")
    fresh_runtime()
    return directory


@pytest.fixture
def configured(redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return install(tmp_path, monkeypatch, ACME, GLOBEX)


@pytest.fixture
def runner() -> CliRunner:
    _register()
    return CliRunner()


def dead(conn: redis.Redis, account: str, destination: str, pid: str) -> str:
    """A change to ``destination`` (a name) that its ESP refused, filed as the sync files it."""
    change = Change(account, destination, pid, 3, f"{pid}@example.com", tags=frozenset({"vip"}))
    payload = {
        "account": account,
        "destination": destination,
        "change": change.to_dict(),
        "error": {"type": "PermanentError", "message": "Invalid Resource"},
        "attempts": 1,
        "first_failed_at": None,
    }
    return DeadLetters(conn).put(
        f"sync:{destination}", "PermanentError: Invalid Resource", payload, NOW, account=account
    )


def test_a_type_selects_every_destination_of_that_type_whatever_its_name(
    runner: CliRunner, configured: Path, redis_client: redis.Redis
) -> None:
    crm = dead(redis_client, "acme", "crm", "p1")
    hubspot = dead(redis_client, "globex", "hubspot", "p2")
    mailchimp = dead(redis_client, "acme", "mailchimp", "p3")
    klaviyo = dead(redis_client, "globex", "klaviyo", "p4")

    listed = runner.invoke(cli, ["dlq", "list", "--kind", "sync:hubspot"])
    assert listed.exit_code == 0, listed.output
    assert crm in listed.stdout and hubspot in listed.stdout
    assert mailchimp not in listed.stdout and klaviyo not in listed.stdout
    assert "2 shown" in listed.stdout
    assert "the dead letters of the hubspot destinations acme/crm, globex/hubspot" in listed.stderr

    one_account = runner.invoke(cli, ["dlq", "list", "--kind", "sync:hubspot", "--account", "acme"])
    assert crm in one_account.stdout and hubspot not in one_account.stdout

    replayed = runner.invoke(cli, ["dlq", "replay", "--kind", "sync:hubspot"])
    assert replayed.exit_code == 0, replayed.output
    assert "replay done: queued: 2" in replayed.stdout
    assert set(sync.pending(redis_client, "acme", "crm")) == {"p1"}
    assert set(sync.pending(redis_client, "globex", "hubspot")) == {"p2"}
    assert DeadLetters(redis_client).get(mailchimp) is not None

    discarded = runner.invoke(cli, ["dlq", "discard", "--kind", "sync:mailchimp", "--yes"])
    assert "discard done: 1 removed" in discarded.stdout
    assert DeadLetters(redis_client).get(klaviyo) is not None


def test_a_destination_name_without_dead_letters_is_a_kind_and_an_unused_type_is_refused(
    runner: CliRunner, configured: Path, redis_client: redis.Redis
) -> None:
    dead(redis_client, "acme", "mailchimp", "p1")
    quiet = runner.invoke(cli, ["dlq", "list", "--kind", "sync:crm"])
    assert quiet.exit_code == 0, quiet.output
    assert "0 shown" in quiet.stdout
    refused = runner.invoke(cli, ["dlq", "replay", "--kind", "sync:webhook"])
    assert refused.exit_code == 2
    assert "unknown kind `sync:webhook`" in refused.output
    assert "sync:crm" in refused.output and "sync:klaviyo" in refused.output  # the real ones
    typo = runner.invoke(cli, ["dlq", "list", "--kind", "sync:crn"])
    assert typo.exit_code == 2 and "(did you mean `sync:crm`?)" in typo.output


def test_a_replay_keeps_the_dead_letters_of_a_destination_no_longer_in_its_account(
    runner: CliRunner,
    configured: Path,
    redis_client: redis.Redis,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gone = [dead(redis_client, "acme", "crm", f"p{n}") for n in range(5)]
    kept = dead(redis_client, "acme", "mailchimp", "p9")
    renamed = yaml.safe_load(yaml.safe_dump(ACME))
    renamed["destinations"]["hubspot_main"] = renamed["destinations"].pop("crm")
    install(tmp_path, monkeypatch, renamed, GLOBEX)

    result = runner.invoke(cli, ["dlq", "replay", "--kind", "sync:crm"])
    assert result.exit_code == 0, result.output
    assert "replay done: no such destination: 5" in result.stdout
    assert "queued" not in result.stdout
    assert "acme/crm" in result.stderr
    assert sync.pending(redis_client, "acme", "crm") == {}
    assert all(DeadLetters(redis_client).get(item) is not None for item in gone)

    everything = runner.invoke(cli, ["dlq", "replay"])
    assert "replay done: no such destination: 5, queued: 1" in everything.stdout
    assert DeadLetters(redis_client).get(kept) is None
    assert DeadLetters(redis_client).count("sync:crm") == 5


def test_the_replay_of_the_api_and_console_checks_the_account_files_too(
    configured: Path, redis_client: redis.Redis
) -> None:
    dead_letters = DeadLetters(redis_client)
    removed = dead_letters.get(dead(redis_client, "acme", "old_crm", "p1"))
    present = dead_letters.get(dead(redis_client, "acme", "crm", "p2"))
    unknown_account = dead_letters.get(dead(redis_client, "initech", "crm", "p3"))
    assert removed is not None and present is not None and unknown_account is not None
    assert sync.replay_dead_letter(redis_client, dead_letters, removed, NOW) == "no such destination"
    assert sync.replay_dead_letter(redis_client, dead_letters, unknown_account, NOW) == "no such destination"
    assert sync.replay_dead_letter(redis_client, dead_letters, present, NOW) == "queued"
    assert dead_letters.get(removed.id) is not None and dead_letters.get(present.id) is None


def test_show_takes_a_unique_beginning_of_an_id(
    runner: CliRunner, configured: Path, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = iter(
        uuid.UUID(h)
        for h in (
            "abcdef0123456789abcdef0123456789",
            "abcdef0199999999abcdef0123456789",
            "1234567890abcdef1234567890abcdef",
        )
    )
    monkeypatch.setattr(deadletters.uuid, "uuid4", lambda: next(made))
    first, second, third = (dead(redis_client, "acme", "crm", f"p{n}") for n in range(3))

    shown = runner.invoke(cli, ["dlq", "show", third[:8]])
    assert shown.exit_code == 0, shown.output
    assert f'"id": "{third}"' in shown.stdout
    assert runner.invoke(cli, ["dlq", "show", first[:10].upper()]).stdout.count(first) == 1

    ambiguous = runner.invoke(cli, ["dlq", "show", "abcdef01"])
    assert ambiguous.exit_code == 1
    assert "abcdef01 is ambiguous" in ambiguous.stderr
    assert first in ambiguous.stderr and second in ambiguous.stderr

    short = runner.invoke(cli, ["dlq", "show", "1234"])
    assert short.exit_code == 1 and "at least its first 8 characters" in short.stderr
    missing = runner.invoke(cli, ["dlq", "show", "ffffffffff"])
    assert missing.exit_code == 1 and "no dead letter ffffffffff" in missing.stderr
    pattern = runner.invoke(cli, ["dlq", "show", "abcdef0*"])
    assert pattern.exit_code == 1 and "no dead letter abcdef0*" in pattern.stderr


def test_list_leaves_out_kinds_that_hold_nothing(
    runner: CliRunner, configured: Path, redis_client: redis.Redis
) -> None:
    dead(redis_client, "acme", "crm", "p1")
    dead(redis_client, "acme", "mailchimp", "p2")
    assert runner.invoke(cli, ["dlq", "discard", "--kind", "sync:crm", "--yes"]).exit_code == 0
    listed = runner.invoke(cli, ["dlq", "list"])
    assert "stored per kind: sync:mailchimp: 1" in listed.stdout and "sync:crm" not in listed.stdout
    runner.invoke(cli, ["dlq", "discard", "--yes"])
    assert "stored per kind: none" in runner.invoke(cli, ["dlq", "list"]).stdout
