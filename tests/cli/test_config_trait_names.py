"""Trait names that may be typos: a ``trait:`` name close to a computed trait it is not, and a
destination ``fields:`` key that is no computed trait (never written). Warnings of ``connector config
validate`` (the file stays valid), as for events never received; the admin API's rules validation
gives the rules' ones (tests/ops/api/test_rules_trait_warnings.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from connector import trait_names
from connector.cli.main import _register, cli

LTV = {"lifetime_revenue": {"sum": {"event": "order_completed", "property": "revenue"}}}
MC = {
    "api_key_env": "SHOP_MC_KEY",
    "list_id": "a1",
    "base_url": "http://127.0.0.1:9/3.0",
    "sandbox": True,
}
SEG_SECRET = "s3cr3t-value-for-tests"


def _segment(name: str, when: dict) -> dict:
    return {"name": name, "when": when}


def test_a_trait_name_close_to_a_computed_trait_is_warned_with_its_path_and_the_name_meant() -> None:
    rules = {
        "traits": {**LTV, "ltv_alias": {"trait": {"name": "lifetime_revenu"}}},
        "segments": [
            _segment("big", {"trait": {"name": "lifetime_revenu", "gte": 5}}),
            _segment("nested", {"all": [{"not": {"trait": {"name": "lifetime_revenues", "lt": 1}}}]}),
            _segment("own", {"trait": {"name": "lifetime_revenue", "gte": 5}}),  # the computed trait
            _segment("plan", {"trait": {"name": "plan", "eq": "pro"}}),  # a trait senders set
            _segment("churn", {"trait": {"name": "predicted.churn_risk", "gt": 0.7}}),  # a prediction
        ],
    }
    found = trait_names.warnings(rules, "shop", ["lifetime_revenue", "ltv_alias"])
    assert found == [
        (
            "rules.traits.ltv_alias.trait.name",
            "trait `lifetime_revenu` is not a computed trait of shop's rules (did you mean "
            "`lifetime_revenue`?), so this reads only a trait that senders set on the profile as "
            "`lifetime_revenu`",
        ),
        (
            "rules.segments[0].when.trait.name",
            "trait `lifetime_revenu` is not a computed trait of shop's rules (did you mean "
            "`lifetime_revenue`?), so this reads only a trait that senders set on the profile as "
            "`lifetime_revenu`",
        ),
        (
            "rules.segments[1].when.all[0].not.trait.name",
            "trait `lifetime_revenues` is not a computed trait of shop's rules (did you mean "
            "`lifetime_revenue`?), so this reads only a trait that senders set on the profile as "
            "`lifetime_revenues`",
        ),
    ]
    assert trait_names.warnings(rules, "shop", []) == []  # no computed trait to be close to
    assert trait_names.warnings(None, "shop", ["x"]) == []


def _validate(tmp_path: Path, data: dict, monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("SEG_SECRET", SEG_SECRET)
    monkeypatch.setenv("SHOP_MC_KEY", "0123456789abcdef0123456789abcdef-us6")
    (tmp_path / "shop.yaml").write_text(
        yaml.safe_dump({"senders": {"segment": {"secret_env": "SEG_SECRET"}}, **data})
    )
    _register()
    return CliRunner().invoke(cli, ["config", "validate", str(tmp_path)])


def test_validate_warns_about_a_misspelled_trait_and_a_field_no_computed_trait_fills(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    rules = {
        "traits": LTV,
        "segments": [_segment("big", {"trait": {"name": "lifetime_revenu", "gte": 5}})],
    }
    mailchimp = {
        **MC,
        "segments": {"big": {"tags": ["big"]}},
        "fields": {"lifetime_revenu": "LTV", "plan": "PLAN"},
    }
    result = _validate(tmp_path, {"rules": rules, "destinations": {"mailchimp": mailchimp}}, monkeypatch)
    assert result.exit_code == 0, result.output  # warnings, not errors
    assert "ok: shop" in result.output
    file = str(tmp_path / "shop.yaml")
    assert (
        f"WARNING {file}: rules.segments[0].when.trait.name: trait `lifetime_revenu` is not a computed "
        "trait of shop's rules (did you mean `lifetime_revenue`?), so this reads only a trait that "
        "senders set on the profile as `lifetime_revenu`"
    ) in result.output
    assert (
        f"WARNING {file}: destinations.mailchimp.fields.lifetime_revenu: `lifetime_revenu` is not a "
        "computed trait of shop's rules (did you mean `lifetime_revenue`?), so this field is never "
        "written (destinations write computed traits only); computed traits: lifetime_revenue"
    ) in result.output
    assert (
        f"WARNING {file}: destinations.mailchimp.fields.plan: `plan` is not a computed trait of shop's "
        "rules, so this field is never written (destinations write computed traits only); computed "
        "traits: lifetime_revenue"
    ) in result.output


def test_validate_says_nothing_of_names_that_are_computed_traits_or_an_account_without_rules(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    rules = {
        "include": ["purchase_behavior"],  # the template's computed traits count as the account's
        "segments": [_segment("orders", {"trait": {"name": "order_count", "gte": 2}})],
    }
    mailchimp = {**MC, "fields": {"lifetime_revenue": "LTV", "order_count": "ORDERS"}}
    result = _validate(tmp_path, {"rules": rules, "destinations": {"mailchimp": mailchimp}}, monkeypatch)
    assert result.exit_code == 0, result.output
    assert "WARNING" not in result.output
    (tmp_path / "shop.yaml").unlink()
    result = _validate(tmp_path, {"destinations": {"mailchimp": mailchimp}}, monkeypatch)
    assert result.exit_code == 0 and "WARNING" not in result.output, result.output


def test_validate_refuses_a_holdout_stated_on_one_destination_of_several(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_client: Any
) -> None:
    """The file was accepted before: the control group kept out of Mailchimp's tag still got the
    HubSpot list."""
    monkeypatch.setenv("SHOP_HS_KEY", "pat-na1-0123")
    hubspot = {
        "api_key_env": "SHOP_HS_KEY",
        "base_url": "http://127.0.0.1:9",
        "sandbox": True,
        "segments": {"vip": {"lists": ["123"]}},
    }
    mailchimp = {**MC, "segments": {"vip": {"tags": ["VIP"], "holdout": "10%"}}}
    data = {"rules": {"include": ["vip"]}, "destinations": {"mailchimp": mailchimp, "hubspot": hubspot}}
    result = _validate(tmp_path, data, monkeypatch)
    assert result.exit_code == 1, result.output
    assert "ok: shop" not in result.output
    assert (
        f"invalid: {tmp_path / 'shop.yaml'}: destinations.hubspot.segments.vip: `vip` has `holdout: 10%` "
        "in `destinations.mailchimp.segments.vip` and no holdout or variants here: write the same "
        "`holdout: 10%` as `destinations.mailchimp.segments.vip`"
    ) in result.output
