"""Account files: validated at load, errors name the file, the path and the reason; secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from connector.cli.main import _register, cli
from connector.config import load_account_file, load_accounts
from connector.errors import ConfigError

SEG_ENV = "senders.segment.secret_env"
ENV = {"SEG_SECRET": "s3cr3t-value-for-tests", "WRITE_KEY": "wk-1", "OTHER_KEY": "wk-1"}


def write(tmp_path: Path, name: str, data: object) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def error(path: Path, env: dict[str, str] = ENV) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        load_account_file(path, env)
    return info.value


def test_valid_file_loads_with_defaults_and_hides_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, "shop", {"senders": {"segment": {"secret_env": "SEG_SECRET"}}})
    account = load_account_file(path, ENV)
    assert account.id == "shop"
    assert account.dedupe_ttl_seconds == 72 * 3600
    assert (account.retention_max_age_days, account.retention_max_events) == (400, 5000)
    assert "undefined" in account.blocked_identity_values
    secret = account.senders["segment"].secrets[0]
    assert secret.value == ENV["SEG_SECRET"]
    assert ENV["SEG_SECRET"] not in repr(account) and ENV["SEG_SECRET"] not in str(secret)


@pytest.mark.parametrize(
    ("data", "path", "reason"),
    [
        ({"senders": {"segmnt": {"secret_env": "SEG_SECRET"}}}, "senders.segmnt.key", "Must be one of"),
        ({"senders": {"segment": {}}}, "senders.segment.secret_env", "Missing data"),
        ({"senders": {"segment": {"secret_env": "not a name"}}}, SEG_ENV, "not an environment"),
        ({"senders": {"segment": {"secret_env": "UNSET_VAR"}}}, SEG_ENV, "UNSET_VAR is not set"),
        ({"dedupe_ttl_hours": 24}, "dedupe_ttl_hours", "greater than or equal to 72"),
        ({"retention": {"max_events": 0}}, "retention.max_events", "greater than or equal to 1"),
        ({"colour": "blue"}, "colour", "Unknown field"),
        ({"senders": {"mandrill": {"secret_env": "SEG_SECRET"}}}, "senders.mandrill.url", "required"),
        ({"destinations": {"crm": {"type": "sendgrid", "api_key_env": "X"}}}, "destinations.crm.type", "one"),
        ({"rules": {"segments": [{"name": "x", "when": {"count": {"event": "a", "within": "10 minutes"}}}]}},
         "rules.segments[0].when.count.within", "not a duration"),
    ],
)  # fmt: skip
def test_invalid_files_name_file_path_and_reason(tmp_path: Path, data: dict, path: str, reason: str) -> None:
    err = error(write(tmp_path, "shop", data))
    assert err.file == str(tmp_path / "shop.yaml")
    assert err.path == path
    assert reason in err.reason


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    err = error(write(tmp_path, "shop", "senders:\n  segment: [unclosed\n"))
    assert err.path is not None and err.path.startswith("line ")


def test_duplicate_write_keys_across_accounts_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a", {"senders": {"tracking": {"secret_env": "WRITE_KEY"}}})
    write(tmp_path, "b", {"senders": {"tracking": {"secret_env": "OTHER_KEY"}}})
    with pytest.raises(ConfigError) as info:
        load_accounts(tmp_path, ENV)
    assert "already used by another account" in str(info.value)
    assert "wk-1" not in str(info.value)


def test_config_validate_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _register()
    for key, value in ENV.items():
        monkeypatch.setenv(key, value)
    write(tmp_path, "shop", {"senders": {"segment": {"secret_env": "SEG_SECRET"}}})
    ok = CliRunner().invoke(cli, ["config", "validate", str(tmp_path)])
    assert ok.exit_code == 0 and "ok: shop" in ok.output
    assert ENV["SEG_SECRET"] not in ok.output
    write(tmp_path, "bad", {"senders": {"segment": {"secret_env": "UNSET_VAR"}}})
    bad = CliRunner().invoke(cli, ["config", "validate", str(tmp_path)])
    assert bad.exit_code == 1
    assert (
        f"{tmp_path / 'bad.yaml'}: senders.segment.secret_env: environment variable UNSET_VAR is not set"
        in bad.output
    )


def test_a_mailchimp_field_that_cannot_be_a_merge_tag_is_refused_with_its_path(tmp_path: Path) -> None:
    from connector.destinations import destinations

    dest = {
        "api_key_env": "SEG_SECRET",
        "list_id": "aud1",
        "fields": {"ltv": "LTV", "cart_value": "cart value"},
    }
    path = write(tmp_path, "shop", {"destinations": {"mailchimp": dest}})
    with pytest.raises(ConfigError) as info:
        destinations(load_account_file(path, ENV))
    assert info.value.path == "destinations.mailchimp.fields.cart_value"
    assert "merge tag" in info.value.reason and "CARTVAL" in info.value.reason
    dest["fields"] = {"ltv": "LTV", "cart_value": "CARTVAL"}
    path = write(tmp_path, "shop", {"destinations": {"mailchimp": dest}})
    assert destinations(load_account_file(path, ENV))["mailchimp"].fields == {
        "ltv": "LTV",
        "cart_value": "CARTVAL",
    }
