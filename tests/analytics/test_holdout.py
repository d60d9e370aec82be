"""Holdouts: the deterministic draw, its share, raising it, and destinations leaving control out."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from connector.analytics import assign, holdout
from connector.destinations import destinations
from connector.errors import ConfigError


def _account(dests: dict, account_id: str = "acme") -> SimpleNamespace:
    return SimpleNamespace(id=account_id, file="acme.yaml", destinations=dests)


def _mailchimp(mapping: dict) -> dict:
    return {
        "api_key_env": "MC_KEY",
        "list_id": "a1",
        "base_url": "http://127.0.0.1:8901/3.0",
        "sandbox": True,
        "segments": {"cart_abandoner": mapping},
    }


def test_control_share_is_within_half_a_point_over_100000_people() -> None:
    people = [f"p{n}" for n in range(100_000)]
    control = sum(assign.is_control("acme", "cart_abandoner", pid, 10) for pid in people)
    assert abs(control / len(people) - 0.10) <= 0.005


def test_raising_the_percentage_moves_only_treated_people_to_control() -> None:
    people = [f"p{n}" for n in range(20_000)]
    at10 = {p for p in people if assign.is_control("acme", "s", p, 10)}
    at15 = {p for p in people if assign.is_control("acme", "s", p, 15)}
    assert at10 < at15  # nobody leaves control
    moved = at15 - at10
    expected = {p for p in people if 1000 <= assign.bucket("acme", "s", p) < 1500}
    assert moved == expected


def test_the_draw_depends_on_account_segment_and_salt() -> None:
    people = [f"p{n}" for n in range(2000)]
    base = {p for p in people if assign.is_control("acme", "s", p, 10)}
    assert base != {p for p in people if assign.is_control("acme", "t", p, 10)}
    assert base != {p for p in people if assign.is_control("globex", "s", p, 10)}
    assert base != {p for p in people if assign.is_control("acme", "s", p, 10, salt="2024q2")}


def test_a_control_member_is_not_pushed_and_gets_the_control_tag_when_configured() -> None:
    account = _account(
        {"mailchimp": _mailchimp({"tags": ["cart"], "holdout": "10%", "control_tag": "cart holdout"})}
    )
    dest = destinations(account)["mailchimp"]
    people = [f"p{n}" for n in range(500)]
    control = [p for p in people if assign.is_control("acme", "cart_abandoner", p, 10)]
    treated = [p for p in people if p not in control]
    assert control and treated
    c = dest.change(control[0], 3, ["cart_abandoner"], {}, "c@example.com")
    assert c.tags == {"cart holdout"} and c.segments == frozenset()
    t = dest.change(treated[0], 3, ["cart_abandoner"], {}, "t@example.com")
    assert t.tags == {"cart"} and t.segments == {"cart_abandoner"}
    assert holdout.filter_desired(account, ["cart_abandoner", "x"], control[0]) == (
        frozenset({"x"}),
        frozenset({"cart_abandoner"}),
    )


def test_without_a_control_tag_a_control_member_gets_nothing() -> None:
    account = _account({"mailchimp": _mailchimp({"tags": ["cart"], "holdout": 50})})
    dest = destinations(account)["mailchimp"]
    pid = next(f"p{n}" for n in range(100) if assign.is_control("acme", "cart_abandoner", f"p{n}", 50))
    assert dest.change(pid, 1, ["cart_abandoner"], {}, "c@example.com").tags == frozenset()


def test_variants_map_to_their_own_tags() -> None:
    account = _account(
        {
            "mailchimp": _mailchimp(
                {"tags": ["cart"], "variants": {"a": {"tags": ["cart 24h"]}, "b": {"tags": ["cart 48h"]}}}
            )
        }
    )
    dest = destinations(account)["mailchimp"]
    seen = {
        frozenset(dest.change(f"p{n}", 1, ["cart_abandoner"], {}, "x@example.com").tags) for n in range(50)
    }
    assert seen == {frozenset({"cart", "cart 24h"}), frozenset({"cart", "cart 48h"})}


@pytest.mark.parametrize("value", ["60%", "ten", -1, True])
def test_a_bad_holdout_is_a_config_error_naming_the_path(value: object) -> None:
    with pytest.raises(ConfigError) as err:
        destinations(_account({"mailchimp": _mailchimp({"holdout": value})}))
    assert "segments.cart_abandoner.holdout" in str(err.value)


def test_two_destinations_may_not_disagree_on_a_segments_holdout() -> None:
    other = _mailchimp({"holdout": 20})
    other["type"] = "mailchimp"
    with pytest.raises(ConfigError, match="one control group"):
        destinations(_account({"mailchimp": _mailchimp({"holdout": 10}), "mc2": other}))
