"""Account files: validated at load, errors name the file, the path and the reason; secrets never shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from connector.cli.main import _register, cli
from connector.config import load_account_file, load_accounts
from connector.errors import ConfigError, env_name_shown

SEG_ENV = "senders.segment.secret_env"
WK = "write-key-0123456789"
ENV = {
    "SEG_SECRET": "s3cr3t-value-for-tests",
    "WRITE_KEY": WK,
    "OTHER_KEY": WK,
    "SHORT": "fifteen-chars-x",
    "MC_KEY": "0123456789abcdef0123456789abcdef-us6",
}


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
        ({"senders": {"segmnt": {"secret_env": "SEG_SECRET"}}}, "senders.segmnt", "unknown sender type"),
        ({"senders": {"segment": {}}}, "senders.segment.secret_env", "Missing data"),
        ({"senders": {"segment": {"secret_env": "not a name"}}}, SEG_ENV, "not an environment"),
        ({"senders": {"segment": {"secret_env": "UNSET_VAR"}}}, SEG_ENV, "UNSET_VAR is not set"),
        ({"dedupe_ttl_hours": 24}, "dedupe_ttl_hours", "greater than or equal to 72"),
        ({"retention": {"max_events": 0}}, "retention.max_events", "greater than or equal to 1"),
        ({"colour": "blue"}, "colour", "unknown field `colour`"),
        ({"senders": {"mandrill": {"secret_env": "SEG_SECRET"}}}, "senders.mandrill.url", "required"),
        ({"destinations": {"crm": {"type": "sendgrid", "api_key_env": "X"}}}, "destinations.crm.type",
         "unknown destination type `sendgrid`; known: hubspot, klaviyo, mailchimp, webhook"),
        ({"rules": {"segments": [{"name": "x", "when": {"count": {"event": "a", "within": "10 minutes"}}}]}},
         "rules.segments[0].when.count.within", "not a duration"),
    ],
)  # fmt: skip
def test_invalid_files_name_file_path_and_reason(tmp_path: Path, data: dict, path: str, reason: str) -> None:
    err = error(write(tmp_path, "shop", data))
    assert err.file == str(tmp_path / "shop.yaml")
    assert err.path == path
    assert reason in err.reason


@pytest.mark.parametrize(
    ("data", "path"),
    [
        (
            {"senders": {"klaviyo": {"secret_env": "pk_live_8f3K!x9Qz2Lm7Vb4Tn6R"}}},
            "senders.klaviyo.secret_env",
        ),
        ({"senders": {"segment": {"secret_env": ["SEG_SECRET", "sk-8f3K!x9Qz2Lm7Vb4"]}}}, SEG_ENV),
        ({"senders": {"segment": {"secret_env": "pk_9f8e7d6c5b4a39281706f5e4"}}}, SEG_ENV),  # a name's shape
        ({"senders": {"segment": {"secret_env": "K7Q2M9X4P1Z8R3T6W5Y0"}}}, SEG_ENV),  # upper case, random
    ],
)
def test_a_secret_written_in_place_of_its_variable_s_name_is_never_shown(
    tmp_path: Path, data: dict[str, Any], path: str
) -> None:
    err = error(write(tmp_path, "shop", data))
    assert err.path == path
    written = data["senders"][next(iter(data["senders"]))]["secret_env"]
    for value in written if isinstance(written, list) else [written]:
        if value != "SEG_SECRET":
            assert value not in str(err) and value[3:] not in err.reason
    assert "(name shortened)" in err.reason or "never in this file" in err.reason


@pytest.mark.parametrize(
    "name",
    ["SEG_SECRET", "SHOPIFY2_SECRET", "MAILCHIMP", "A", "DEMO_STANDARD_WEBHOOKS_SECRET", "KEY_1", "X_9"],
)
def test_a_variable_name_as_people_write_them_is_shown_whole(name: str) -> None:
    assert env_name_shown(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "K7Q2M9X4P1Z8R3T6W5Y0",  # a random upper-case secret: digits and no underscore
        "AKIA4EXAMPLE7KEY",
        "S3CR3T",
        "KEY2",
        "_SEG_SECRET",  # not starting with a letter
        "9SEG_SECRET",
        "seg_secret",  # not upper case
        "Seg_Secret",
        "pk_live_8f3K",
        "SEG-SECRET",  # not a name at all
        "SEG SECRET",
        "",
    ],
)
def test_anything_else_is_shortened_to_three_characters(name: str) -> None:
    shown = env_name_shown(name)
    assert shown == f"{name[:3]}… (name shortened)"
    assert name not in shown or len(name) <= 3


def test_a_random_upper_case_secret_named_as_a_destination_s_key_variable_is_shortened(
    tmp_path: Path,
) -> None:
    from connector.destinations import build_adapter, destinations

    pasted = "K7Q2M9X4P1Z8R3T6W5Y0"
    path = write(tmp_path, "shop", {"destinations": {"mailchimp": {"api_key_env": pasted, "list_id": "a1"}}})
    [destination] = destinations(load_account_file(path, ENV)).values()
    with pytest.raises(ConfigError) as info:  # what the sync reports (dead-letter list, log)
        build_adapter(destination, None, clock=lambda: 0.0, sleep=lambda _: None, env={})
    assert info.value.reason == "environment variable K7Q… (name shortened) is not set"


def test_a_random_upper_case_secret_named_as_a_variable_never_reaches_readyz(
    client, redis_client, config_dir: Path
) -> None:  # type: ignore[no-untyped-def]
    from connector import runtime

    pasted = "K7Q2M9X4P1Z8R3T6W5Y0"
    write(config_dir, "initech", {"senders": {"segment": {"secret_env": pasted}}})
    runtime.current().accounts  # noqa: B018  (looks at the directory, publishes the errors)
    ready = client.get("/readyz")
    assert ready.get_json()["status"] == "degraded"
    [problem] = ready.get_json()["config_errors"]
    assert problem["file"] == "initech.yaml"
    assert problem["reason"] == f"{SEG_ENV}: environment variable K7Q… (name shortened) is not set"
    assert pasted[3:] not in ready.get_data(as_text=True)


def test_broken_yaml_names_the_line(tmp_path: Path) -> None:
    err = error(write(tmp_path, "shop", "senders:\n  segment: [unclosed\n"))
    assert err.path is not None and err.path.startswith("line ")


def test_a_key_written_twice_is_refused_at_its_line(tmp_path: Path) -> None:
    # YAML would keep the second `senders:` silently: the Segment sender gone, its webhooks 401
    text = (
        "senders:\n  segment: {secret_env: SEG_SECRET}\nrules: {}\n"
        "senders:\n  shopify: {secret_env: SEG_SECRET}\n"
    )
    err = error(write(tmp_path, "shop", text))
    assert err.path == "line 4"
    assert "key `senders` is written twice in this mapping (first at line 1)" in err.reason


def test_duplicate_write_keys_across_accounts_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "a", {"senders": {"tracking": {"secret_env": "WRITE_KEY"}}})
    write(tmp_path, "b", {"senders": {"tracking": {"secret_env": "OTHER_KEY"}}})
    with pytest.raises(ConfigError) as info:
        load_accounts(tmp_path, ENV)
    assert "already used by another account" in str(info.value)
    assert WK not in str(info.value)


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
        "api_key_env": "MC_KEY",
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


# -- weak configuration refused at load ---------------------------------------------------------


@pytest.mark.parametrize("sender", ["segment", "tracking", "rudderstack", "mailchimp", "klaviyo"])
def test_an_owner_chosen_secret_shorter_than_16_characters_is_refused(tmp_path: Path, sender: str) -> None:
    assert len(ENV["SHORT"]) == 15
    err = error(write(tmp_path, "shop", {"senders": {sender: {"secret_env": ["SEG_SECRET", "SHORT"]}}}))
    assert err.file == str(tmp_path / "shop.yaml")
    assert err.path == f"senders.{sender}.secret_env"
    assert "SHORT" in err.reason and "shorter than 16 characters" in err.reason
    assert ENV["SHORT"] not in str(err) and ENV["SHORT"] not in repr(err)


def test_a_16_character_secret_is_accepted(tmp_path: Path) -> None:
    env = {**ENV, "SIXTEEN": "sixteen-chars-xy"}
    path = write(tmp_path, "shop", {"senders": {"segment": {"secret_env": "SIXTEEN"}}})
    assert load_account_file(path, env).senders["segment"].secrets[0].value == "sixteen-chars-xy"


def test_a_secret_issued_by_the_sender_is_taken_as_issued(tmp_path: Path) -> None:
    # Shopify's own SDK vector signs with a 15-character app secret; the vendor issues those secrets.
    env = {**ENV, "SHOPIFY": "test_secret_key"}
    path = write(tmp_path, "shop", {"senders": {"shopify": {"secret_env": "SHOPIFY"}}})
    assert load_account_file(path, env).senders["shopify"].secrets[0].value == "test_secret_key"


def _dest(kind: str, **extra: object) -> dict[str, object]:
    cfg: dict[str, object] = {"type": kind, "api_key_env": "SEG_SECRET", **extra}
    if kind == "mailchimp":
        cfg["list_id"] = "aud1"
    return cfg


@pytest.mark.parametrize(
    ("kind", "url"),
    [
        ("mailchimp", "https://us6.api.mailchimp.com/3.0"),
        ("hubspot", "https://api.hubapi.com"),
        ("hubspot", "https://api.hubspot.com"),
        ("klaviyo", "https://a.klaviyo.com/api"),
    ],
)
def test_a_base_url_on_the_vendors_own_host_is_accepted(tmp_path: Path, kind: str, url: str) -> None:
    from connector.destinations import destinations

    path = write(tmp_path, "shop", {"destinations": {"crm": _dest(kind, base_url=url)}})
    assert destinations(load_account_file(path, ENV))["crm"].options["base_url"] == url


@pytest.mark.parametrize(
    ("kind", "url", "reason"),
    [
        ("mailchimp", "https://mailchimp.example.com/3.0", "https://<dc>.api.mailchimp.com"),
        ("mailchimp", "https://us6.api.mailchimp.com.evil.example/3.0", "https://<dc>.api.mailchimp.com"),
        ("hubspot", "https://api.hubapi.com@evil.example", "https://api.hubapi.com"),
        ("hubspot", "https://api.hubapi.com:8443", "https://api.hubapi.com"),
        ("klaviyo", "https://b.klaviyo.com", "https://a.klaviyo.com"),
        ("klaviyo", "http://a.klaviyo.com", "must be https"),
        ("hubspot", "http://127.0.0.1:8902", "must be https"),
    ],
)
def test_a_base_url_outside_the_vendors_hosts_is_refused(
    tmp_path: Path, kind: str, url: str, reason: str
) -> None:
    err = error(write(tmp_path, "shop", {"destinations": {"crm": _dest(kind, base_url=url)}}))
    assert err.file == str(tmp_path / "shop.yaml")
    assert err.path == "destinations.crm.base_url"
    assert reason in err.reason and "sandbox: true" in err.reason
    assert ENV["SEG_SECRET"] not in str(err)


def test_a_sandbox_destination_may_point_at_a_loopback_fake(tmp_path: Path) -> None:
    from connector.destinations import destinations

    cfg = _dest("hubspot", base_url="http://127.0.0.1:8902", sandbox=True)
    path = write(tmp_path, "shop", {"destinations": {"crm": cfg}})
    assert destinations(load_account_file(path, ENV))["crm"].options["base_url"] == "http://127.0.0.1:8902"
    cfg = _dest("hubspot", base_url="ftp://127.0.0.1:8902", sandbox=True)
    err = error(write(tmp_path, "shop", {"destinations": {"crm": cfg}}))
    assert err.path == "destinations.crm.base_url"


def test_config_imports_destinations_and_not_the_other_way_round() -> None:
    from tests.test_import_cycles import import_graph

    graph = import_graph("connector")
    assert "connector.destinations" in graph["connector.config"]
    assert "connector.config" not in graph["connector.destinations"]
    assert "connector" not in graph["connector.destinations"]


def test_the_sandbox_block_marks_its_destinations_and_old_sample_files_get_the_flag(tmp_path: Path) -> None:
    from connector.cli.run_cmd import _seed_config
    from connector.dev.sandbox.process import ENV as SANDBOX_ENV
    from connector.dev.sandbox.process import start_sandbox

    running = start_sandbox(ports={"mailchimp": 0, "hubspot": 0, "klaviyo": 0}, lists=["vip"])
    try:
        block = running.destinations()
    finally:
        running.stop()
    assert all(cfg["sandbox"] is True for cfg in block.values())
    # a sample account seeded before the flag existed: same block without it, plus a user comment
    old = {name: {k: v for k, v in cfg.items() if k != "sandbox"} for name, cfg in block.items()}
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    seeded = accounts / "demo.yaml"
    seeded.write_text("# my notes\naccount: demo\n" + yaml.safe_dump({"destinations": old}, sort_keys=False))
    with pytest.raises(ConfigError) as info:
        load_account_file(seeded, SANDBOX_ENV)
    assert info.value.path == "destinations.mailchimp.base_url"
    _seed_config(tmp_path, block)
    text = seeded.read_text()
    assert text.startswith("# my notes\n") and text.count("sandbox: true") == 3
    account = load_account_file(seeded, SANDBOX_ENV)
    assert {name: cfg["sandbox"] for name, cfg in account.destinations.items()} == dict.fromkeys(block, True)
    _seed_config(tmp_path, block)
    assert seeded.read_text() == text


SHOES = {"name": "shoe_browsers", "when": {"count": {"event": "product_viewed", "within": "10m", "gte": 3}}}


def test_a_destination_mapping_a_missing_segment_names_it_with_did_you_mean(tmp_path: Path) -> None:
    mc = {"api_key_env": "MC_KEY", "list_id": "a1", "segments": {"shoe_browser": {"tags": ["Shoes"]}}}
    err = error(write(tmp_path, "shop", {"rules": {"segments": [SHOES]}, "destinations": {"mailchimp": mc}}))
    assert err.file == str(tmp_path / "shop.yaml")
    assert err.path == "destinations.mailchimp.segments.shoe_browser"
    assert "no segment `shoe_browser`" in err.reason and "did you mean `shoe_browsers`?" in err.reason


def test_a_non_numeric_threshold_is_refused_with_its_path(tmp_path: Path) -> None:
    three = {**SHOES, "when": {"count": {"event": "product_viewed", "within": "10m", "gte": "three"}}}
    err = error(write(tmp_path, "shop", {"rules": {"segments": [three]}}))
    assert err.path == "rules.segments[0].when.count.gte"
    assert "must be a number, not 'three'" in err.reason


def test_a_typo_in_a_nested_key_is_reported_as_the_unknown_field(tmp_path: Path) -> None:
    err = error(write(tmp_path, "shop", {"senders": {"segment": {"secret_evn": "SEG_SECRET"}}}))
    assert err.path == "senders.segment.secret_evn"
    assert err.reason == "unknown field `secret_evn` (did you mean `secret_env`?)"
    mc = {"api_key_evn": "MC_KEY", "list_id": "a1"}
    err = error(write(tmp_path, "shop", {"destinations": {"mailchimp": mc}}))
    assert err.path == "destinations.mailchimp.api_key_evn"
    assert err.reason == "unknown field `api_key_evn` (did you mean `api_key_env`?)"


# -- secrets too weak, whatever their length; Standard Webhooks keys ------------------------------


@pytest.mark.parametrize(
    ("value", "reason"),
    [(" " * 16, "whitespace"), ("x" * 16, "fewer than 8 different characters"),
     ("abababababababab", "fewer than 8 different characters"),
     ("s3cr3t-value-for-tests\n", "whitespace"), (" s3cr3t-value-for-tests", "whitespace")],
)  # fmt: skip
def test_owner_chosen_secrets_with_whitespace_or_few_characters_are_refused(
    tmp_path: Path, value: str, reason: str
) -> None:
    for sender in ("segment", "tracking", "mailchimp"):
        env = {**ENV, "WEAK": value}
        err = error(write(tmp_path, "shop", {"senders": {sender: {"secret_env": "WEAK"}}}), env)
        assert err.path == f"senders.{sender}.secret_env"
        assert "WEAK" in err.reason and reason in err.reason
        assert not value.strip() or value.strip() not in str(err)


def test_issued_secrets_with_whitespace_are_refused(tmp_path: Path) -> None:
    env = {**ENV, "SHOPIFY": "shpss_0123456789abcdef\n"}
    err = error(write(tmp_path, "shop", {"senders": {"shopify": {"secret_env": "SHOPIFY"}}}), env)
    assert err.path == "senders.shopify.secret_env" and "whitespace" in err.reason


@pytest.mark.parametrize(
    ("value", "reason"),
    [("whsec_", "decodes to 0 bytes"), ("whsec_YQ==", "decodes to 1 bytes"),
     ("whsec_" + "QUFB" * 5, "decodes to 15 bytes"), ("whsec_x", "not base64"), ("whsec_!!!!", "not base64"),
     ("abc", "shorter than 16"), ("x" * 20, "fewer than 8 different")],
)  # fmt: skip
def test_weak_standard_webhooks_secrets_are_refused(tmp_path: Path, value: str, reason: str) -> None:
    env = {**ENV, "SW": value}
    err = error(write(tmp_path, "shop", {"senders": {"standard_webhooks": {"secret_env": "SW"}}}), env)
    assert err.path == "senders.standard_webhooks.secret_env"
    assert reason in err.reason
    assert len(value) < 8 or value not in str(err)


def test_standard_webhooks_secrets_of_16_bytes_and_more_load(tmp_path: Path) -> None:
    import base64

    for value in ("whsec_" + base64.b64encode(b"k" * 16).decode(), "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                  "owner-chosen-secret-0123"):  # fmt: skip
        env = {**ENV, "SW": value}
        path = write(tmp_path, "shop", {"senders": {"standard_webhooks": {"secret_env": "SW"}}})
        assert load_account_file(path, env).senders["standard_webhooks"].secrets[0].value == value


# -- a Mailchimp key's data centre names the API host ------------------------------------------


@pytest.mark.parametrize("suffix", ["evil.example/x?", "us6.evil.example", "US6", "us", "6", "us6 ", "us6#"])
def test_mailchimp_key_without_a_data_centre_is_refused_at_load(tmp_path: Path, suffix: str) -> None:
    key = "0123456789abcdef0123456789abcdef-" + suffix
    env = {**ENV, "MC_KEY": key}
    dest = {"api_key_env": "MC_KEY", "list_id": "aud1"}
    err = error(write(tmp_path, "shop", {"destinations": {"mailchimp": dest}}), env)
    assert err.file == str(tmp_path / "shop.yaml")
    assert err.path == "destinations.mailchimp.api_key_env"
    assert "data centre" in err.reason and "MC_KEY" in err.reason
    assert key not in str(err) and "0123456789abcdef" not in str(err)
    # the adapter refuses it too, naming no key
    from adapters.mailchimp import MailchimpConfig

    with pytest.raises(ValueError, match="data centre") as info:
        MailchimpConfig(api_key=key, list_id="aud1").url()
    assert key not in str(info.value)


def test_mailchimp_key_with_a_data_centre_or_a_base_url_loads(tmp_path: Path) -> None:
    env = {**ENV, "MC_KEY": "0123456789abcdef0123456789abcdef-us21", "BAD": "k-evil.example"}
    dests = {
        "mailchimp": {"api_key_env": "MC_KEY", "list_id": "aud1"},
        "sandboxed": {"type": "mailchimp", "api_key_env": "BAD", "list_id": "aud1",
                      "base_url": "http://127.0.0.1:8901/3.0", "sandbox": True},
    }  # fmt: skip
    from connector.destinations import destinations

    account = load_account_file(write(tmp_path, "shop", {"destinations": dests}), env)
    assert set(destinations(account)) == {"mailchimp", "sandboxed"}
    from adapters.mailchimp import MailchimpConfig

    assert (
        MailchimpConfig(api_key=env["MC_KEY"], list_id="aud1").url() == "https://us21.api.mailchimp.com/3.0"
    )


def _validate(directory: Path) -> Any:
    _register()
    return CliRunner().invoke(cli, ["config", "validate", str(directory)])


def test_validate_says_an_empty_directory_holds_no_accounts(tmp_path: Path) -> None:
    result = _validate(tmp_path)
    assert result.exit_code == 1
    assert "holds no accounts" in result.output


def test_validate_reports_a_destination_whose_key_variable_is_unset(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEG_SECRET", ENV["SEG_SECRET"])
    monkeypatch.delenv("SHOP_MC_KEY_UNSET", raising=False)
    mc = {"api_key_env": "SHOP_MC_KEY_UNSET", "list_id": "a1"}
    write(
        tmp_path,
        "shop",
        {"senders": {"segment": {"secret_env": "SEG_SECRET"}}, "destinations": {"mailchimp": mc}},
    )
    result = _validate(tmp_path)
    assert result.exit_code == 1
    assert (
        "destinations.mailchimp.api_key_env: environment variable SHOP_MC_KEY_UNSET is not set"
        in result.output
    )
    assert "ok: shop" not in result.output


def test_validate_warns_about_an_event_never_received_with_did_you_mean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    from connector.profiles.store import NameCodes

    # what the workers record: event names, and property keys (prefixed) in the same dictionary
    NameCodes(redis_client).codes("shop", {"product_viewed", "order_completed", "@product_id", "@price"})
    typo = {
        "name": "shoe_browsers",
        "when": {"count": {"event": "prodcut_viewed", "within": "10m", "gte": 3}},
    }
    write(tmp_path, "shop", {"rules": {"segments": [typo]}})
    result = _validate(tmp_path)
    assert result.exit_code == 0, result.output  # a warning, not an error
    assert "ok: shop" in result.output
    assert (
        "WARNING "
        + str(tmp_path / "shop.yaml")
        + ": rules.segments[0].when.count.event: event `prodcut_viewed` "
        "was never received by shop and no template uses it (did you mean `product_viewed`?); "
        "names seen: order_completed, product_viewed"
    ) in result.output


def test_validate_says_which_stored_name_a_spec_name_in_snake_case_is_and_bounds_the_names_listed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    from connector.event_names import SEEN_SHOWN
    from connector.profiles.store import NameCodes

    NameCodes(redis_client).codes("shop", {f"custom_{n:03d}" for n in range(SEEN_SHOWN + 5)})
    added = {"name": "adders", "when": {"count": {"event": "product_added", "gte": 1}}}
    other = {"name": "others", "when": {"count": {"event": "custom_999", "gte": 1}}}
    write(tmp_path, "shop", {"rules": {"segments": [added, other]}})
    result = _validate(tmp_path)
    assert result.exit_code == 0, result.output
    assert (
        ": rules.segments[0].when.count.event: event `product_added` was never received by shop: the "
        "Segment spec's `Product Added` is stored as `add_to_cart`, so this rule matches only a sender "
        "that sends `product_added` itself (did you mean `add_to_cart`?)"
    ) in result.output
    [listed] = [line for line in result.output.splitlines() if "custom_999" in line]
    assert listed.endswith(", custom_019 and 5 more")

    NameCodes(redis_client).codes("shop", {"product_added"})  # a sender sends that very name
    assert "product_added" not in _validate(tmp_path).output


def test_a_value_written_once_and_aliased_loads_and_a_bomb_is_refused_with_the_line(tmp_path: Path) -> None:
    text = "senders:\n  segment: &seg {secret_env: SEG_SECRET}\n  rudderstack: *seg\n"
    account = load_account_file(write(tmp_path, "shop", text), ENV)
    assert set(account.senders) == {"segment", "rudderstack"}
    lists = ", ".join(
        ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
        + [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 6)]
    )
    err = error(write(tmp_path, "shop", f"senders: {{}}\nx: [{lists}]\n"))
    assert err.path == "line 2"
    assert err.reason.startswith(
        "not valid YAML: YAML aliases expand this document to more than 100,000 values"
    )
    _register()
    found = CliRunner().invoke(cli, ["config", "validate", str(tmp_path)], env=ENV)
    assert found.exit_code == 1
    assert f"{tmp_path / 'shop.yaml'}: line 2: not valid YAML: YAML aliases expand" in found.output


def test_the_sandbox_flag_leaves_a_file_it_cannot_read_as_it_is() -> None:
    from connector.dev.devenv import mark_sandbox_destinations

    broken = "destinations:\n  a: {base_url: [\n"
    assert mark_sandbox_destinations(broken, {"http://127.0.0.1:9"}) == broken
    aliased = "destinations:\n  a: &x\n    base_url: http://127.0.0.1:9\n  b: *x\n"
    marked = mark_sandbox_destinations(aliased, {"http://127.0.0.1:9"})
    assert marked == "destinations:\n  a: &x\n    base_url: http://127.0.0.1:9\n    sandbox: true\n  b: *x\n"
