"""``connector config validate --esps``: every list, tag and field the mappings name, asked of the
ESPs (the sandbox fakes over loopback HTTP) with read requests only."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner, Result

from connector.cli.main import _register, cli
from connector.dev.sandbox import FakeHubSpot, FakeKlaviyo, FakeMailchimp, serving

ENV = {
    "ACME_MC_KEY": "0123456789abcdef0123456789abcdef-us6",
    "ACME_HS_TOKEN": "pat-na1-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    "ACME_KL_KEY": "pk_check_0123456789",
}
AUDIENCE = "a1b2c3d4"


@dataclass
class Fakes:
    mailchimp: FakeMailchimp
    hubspot: FakeHubSpot
    klaviyo: FakeKlaviyo
    urls: dict[str, str]


@pytest.fixture
def fakes(monkeypatch: pytest.MonkeyPatch) -> Iterator[Fakes]:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    mc = FakeMailchimp(api_keys=[ENV["ACME_MC_KEY"]])
    mc.add_list(AUDIENCE, "Main audience")
    hs = FakeHubSpot(tokens=[ENV["ACME_HS_TOKEN"]])
    kl = FakeKlaviyo(api_keys=[ENV["ACME_KL_KEY"]])
    with serving(mc) as a, serving(hs) as b, serving(kl) as c:
        yield Fakes(mc, hs, kl, {"mailchimp": a.url + "/3.0", "hubspot": b.url, "klaviyo": c.url})


@pytest.fixture
def runner() -> CliRunner:
    _register()
    return CliRunner()


def write(tmp_path: Path, fakes: Fakes, **changes: dict[str, Any]) -> Path:
    """acme with the three ESPs, each mapping `vip` to objects that exist (``changes`` replace
    settings of a destination)."""
    seg = fakes.mailchimp.add_segment(AUDIENCE, "VIP customers")  # the tag's static segment, once
    hs_list = fakes.hubspot.list_by_name("VIP customers") or fakes.hubspot.add_list("VIP customers")
    kl_list = fakes.klaviyo.list_by_name("VIP customers") or fakes.klaviyo.add_list("VIP customers")
    if fakes.klaviyo.list_by_name("Newsletter") is None:
        fakes.klaviyo.add_list("Newsletter")
    cfg: dict[str, Any] = {
        "mailchimp": {
            "api_key_env": "ACME_MC_KEY",
            "list_id": AUDIENCE,
            "base_url": fakes.urls["mailchimp"],
            "sandbox": True,
            "segments": {"vip": {"tags": ["VIP customers", "brand new tag"], "lists": [str(seg.id)]}},
        },
        "crm": {
            "type": "hubspot",
            "api_key_env": "ACME_HS_TOKEN",
            "base_url": fakes.urls["hubspot"],
            "sandbox": True,
            "segments": {"vip": {"tags": ["vip"], "lists": [hs_list.id]}},
            "fields": {"vip_score": "vip_score"},
        },
        "klaviyo": {
            "api_key_env": "ACME_KL_KEY",
            "base_url": fakes.urls["klaviyo"],
            "sandbox": True,
            "segments": {"vip": {"tags": ["vip"], "lists": [kl_list.id]}},
        },
    }
    for name, settings in changes.items():
        cfg[name] = {**cfg[name], **settings}
    directory = tmp_path / "accounts"
    directory.mkdir(exist_ok=True)
    (directory / "acme.yaml").write_text(yaml.safe_dump({"account": "acme", "destinations": cfg}))
    return directory


def validate(runner: CliRunner, directory: Path, *extra: str) -> Result:
    return runner.invoke(cli, ["config", "validate", str(directory), "--esps", *extra])


def by_path(result: Result) -> dict[str, dict[str, Any]]:
    doc = json.loads(result.stdout)
    return {r["path"]: r for r in doc["esps"]["results"]}


def writes(fake: Any) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests if r.method not in ("GET",)]


def test_every_mapping_there_is_ok_exit_0(runner: CliRunner, tmp_path: Path, fakes: Fakes) -> None:
    directory = write(tmp_path, fakes)
    result = validate(runner, directory)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "ok            acme/mailchimp  audience a1b2c3d4  destinations.mailchimp.list_id" in out
    assert "static segment" in out and "destinations.mailchimp.segments.vip.lists[0]" in out
    # a tag Mailchimp does not have yet is created on first use: said, and no error
    assert "ok, not yet   acme/mailchimp  tag brand new tag" in out and "creates a tag on first use" in out
    # HubSpot: the tags property and a computed trait's property are created by the connector
    assert "destinations.crm.tags_property" in out and "destinations.crm.fields.vip_score" in out
    assert "MISSING" not in out and "CANNOT CHECK" not in out
    as_json = validate(runner, directory, "--json")
    assert as_json.exit_code == 0, as_json.output
    results = by_path(as_json)
    assert results["destinations.klaviyo.segments.vip.lists[0]"]["status"] == "ok"
    assert results["destinations.mailchimp.segments.vip.tags[1]"]["status"] == "created_on_first_use"
    assert json.loads(as_json.stdout)["exit_code"] == 0
    # read requests only (HubSpot's list search is a POST that reads): nothing was written anywhere
    assert writes(fakes.mailchimp) == [] and writes(fakes.klaviyo) == []
    assert set(writes(fakes.hubspot)) <= {"POST /crm/v3/lists/search"}


def test_a_mistyped_list_id_is_missing_with_did_you_mean(
    runner: CliRunner, tmp_path: Path, fakes: Fakes
) -> None:
    directory = write(tmp_path, fakes)
    real_kl = fakes.klaviyo.list_by_name("VIP customers")
    real_mc = next(iter(fakes.mailchimp.audiences[AUDIENCE].segments.values()))
    assert real_kl is not None
    typo_kl = real_kl.id[:-1] + ("X" if real_kl.id[-1] != "X" else "Y")
    typo = write(
        tmp_path,
        fakes,
        klaviyo={"segments": {"vip": {"lists": [typo_kl]}}},
        mailchimp={"segments": {"vip": {"lists": [str(real_mc.id + 1)], "tags": ["vip"]}}},
        crm={"segments": {"vip": {"lists": ["VIP customers"]}}, "create_properties": False},
    )
    assert typo == directory
    result = validate(runner, directory)
    assert result.exit_code == 1, result.output
    out = result.stdout
    line = next(x for x in out.splitlines() if "destinations.klaviyo.segments.vip.lists[0]" in x)
    assert line.startswith("MISSING") and typo_kl in line
    assert f"did you mean `{real_kl.id}` (VIP customers)?" in line
    mc_line = next(x for x in out.splitlines() if "destinations.mailchimp.segments.vip.lists[0]" in x)
    assert mc_line.startswith("MISSING") and "404" in mc_line
    # a list's name written where its id belongs: the did-you-mean gives the id
    hs_line = next(x for x in out.splitlines() if "destinations.crm.segments.vip.lists[0]" in x)
    hs_list = fakes.hubspot.list_by_name("VIP customers")
    assert hs_list is not None and f"did you mean `{hs_list.id}`" in hs_line
    # create_properties off: a property HubSpot lacks is an error, with the closest one it has
    field = by_path(validate(runner, directory, "--json"))["destinations.crm.fields.vip_score"]
    assert field["status"] == "missing" and field["did_you_mean"] is None
    fakes.hubspot.properties["vip_scores"] = {"label": "VIP scores", "type": "number", "options": []}
    field = by_path(validate(runner, directory, "--json"))["destinations.crm.fields.vip_score"]
    assert field["did_you_mean"] == "`vip_scores` (VIP scores)"


def test_a_mistyped_audience(runner: CliRunner, tmp_path: Path, fakes: Fakes) -> None:
    directory = write(tmp_path, fakes, mailchimp={"list_id": "a1b2c3d5"})
    result = validate(runner, directory, "--account", "acme")
    assert result.exit_code == 1, result.output
    line = next(x for x in result.stdout.splitlines() if "destinations.mailchimp.list_id" in x)
    assert line.startswith("MISSING") and "did you mean `a1b2c3d4` (Main audience)?" in line
    # what lives in the audience cannot be checked without it (said, not guessed)
    seg = next(x for x in result.stdout.splitlines() if "destinations.mailchimp.segments.vip.lists[0]" in x)
    assert seg.startswith("CANNOT CHECK") and "its audience does not exist" in seg


def test_refused_credentials_cannot_be_checked(
    runner: CliRunner, tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write(tmp_path, fakes)
    monkeypatch.setenv("ACME_KL_KEY", "pk_wrong_key_000")
    monkeypatch.setenv("ACME_HS_TOKEN", "pat-na1-wrong")
    result = validate(runner, directory)
    assert result.exit_code == 3, result.output
    lines = [x for x in result.stdout.splitlines() if "acme/klaviyo  list" in x or "acme/crm  list" in x]
    assert len(lines) == 2
    assert all(x.startswith("CANNOT CHECK") and "credentials refused" in x for x in lines)
    for esp in ("acme/klaviyo", "acme/crm"):  # the first refused read says the ESP's answer
        first = next(x for x in result.stdout.splitlines() if x.startswith("CANNOT CHECK") and esp in x)
        assert "401" in first, first
    assert "pk_wrong_key_000" not in result.output and "pat-na1-wrong" not in result.output
    # after the refusal nothing more is asked of that ESP
    assert len([r for r in fakes.hubspot.requests if r.status == 401]) == 1
    # Mailchimp's key works: its mappings are checked
    assert "ok            acme/mailchimp  audience" in result.stdout


def test_unset_key_unreachable_esp_and_bad_input(
    runner: CliRunner, tmp_path: Path, fakes: Fakes, monkeypatch: pytest.MonkeyPatch
) -> None:
    directory = write(tmp_path, fakes, klaviyo={"base_url": "http://127.0.0.1:1"})
    monkeypatch.delenv("ACME_HS_TOKEN")
    result = validate(runner, directory, "--json")
    results = by_path(result)
    assert result.exit_code == 1  # an unset key variable is an invalid configuration already
    assert "ACME_HS_TOKEN" in results["destinations.crm.segments.vip.lists[0]"]["detail"]
    kl = results["destinations.klaviyo.segments.vip.lists[0]"]
    assert kl["status"] == "cannot_check" and "unreachable" in kl["detail"]
    unknown = validate(runner, directory, "--account", "acmee")
    assert unknown.exit_code == 2 and "did you mean `acme`" in unknown.output
    as_json = validate(runner, directory, "--account", "acmee", "--json")  # stdout still one document
    said = json.loads(as_json.stdout)
    assert as_json.exit_code == 2 and said["exit_code"] == 2 and "did you mean `acme`" in said["usage_error"]
    empty = runner.invoke(cli, ["config", "validate", str(tmp_path / "nowhere"), "--esps", "--json"])
    assert empty.exit_code == 1 and json.loads(empty.stdout)["errors"][0].endswith("does not exist")
    assert "Traceback" not in unknown.output
    alone = runner.invoke(cli, ["config", "validate", str(directory), "--account", "acme"])
    assert alone.exit_code == 2 and "--esps" in alone.output


def test_a_mistyped_case_finds_its_id_and_later_lines_name_no_other_request() -> None:
    from adapters.base import LIST, UNCHECKED, Checker, MappedObject
    from adapters.errors import TransientError
    from connector.esp_check import suggestion

    # Klaviyo's ids are upper case letters and digits: a lower-cased one is found whatever difflib says
    assert suggestion("sb325b", [("SB3CE0", "cart_abandoner"), ("SB325B", "checkout_abandoner")]) == (
        "`SB325B` (checkout_abandoner)"
    )

    def down() -> Any:
        raise TransientError("connection error: ConnectError on GET /api/lists/SB3CE0")

    checker = Checker()
    first = checker.read(MappedObject(LIST, "SB3CE0"), down)
    later = checker.read(MappedObject(LIST, "SB325B"), down)
    assert first.status == later.status == UNCHECKED
    assert "ESP unreachable" in first.detail and "SB3CE0" in first.detail
    assert "ESP unreachable" in later.detail and "SB3CE0" not in later.detail and "not asked" in later.detail
