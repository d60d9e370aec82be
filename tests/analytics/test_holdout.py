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


def _hubspot(segments: dict) -> dict:
    return {
        "api_key_env": "HS_KEY",
        "base_url": "http://127.0.0.1:8902",
        "sandbox": True,
        "segments": segments,
    }


def _klaviyo(segments: dict) -> dict:
    return {
        "api_key_env": "KL_KEY",
        "base_url": "http://127.0.0.1:8903",
        "sandbox": True,
        "segments": segments,
    }


def _webhook(segments: dict) -> dict:
    return {
        "type": "webhook",
        "api_key_env": "HOOK_SECRET",
        "url": "http://127.0.0.1:9/hook",
        "sandbox": True,
        "segments": segments,
    }


def _vip_on_mailchimp(mapping: dict) -> dict:
    return {**_mailchimp({}), "segments": {"vip": mapping}}


def test_a_holdout_on_one_destination_only_is_refused_where_it_is_missing() -> None:
    """The control group kept out of Mailchimp's tag would still get HubSpot's and Klaviyo's lists."""
    dests = {
        "mailchimp": _vip_on_mailchimp({"tags": ["VIP"], "holdout": "10%"}),
        "hubspot": _hubspot({"vip": {"lists": ["123"]}}),
        "klaviyo": _klaviyo({"vip": {"lists": ["Xy12Ab"]}}),
    }
    with pytest.raises(ConfigError) as err:
        destinations(_account(dests))
    assert err.value.file == "acme.yaml"
    assert err.value.path == "destinations.hubspot.segments.vip"
    assert "no holdout or variants here" in err.value.reason
    assert "write the same `holdout: 10%` as `destinations.mailchimp.segments.vip`" in err.value.reason
    assert "one control group" in err.value.reason
    # the same whichever destination comes first in the file
    first = {"hubspot": dests["hubspot"], "mailchimp": dests["mailchimp"]}
    with pytest.raises(ConfigError) as err:
        destinations(_account(first))
    assert err.value.path == "destinations.hubspot.segments.vip"
    assert "as `destinations.mailchimp.segments.vip`" in err.value.reason


def test_every_destination_stating_the_same_holdout_keeps_the_control_group_out_of_each() -> None:
    vip = {"holdout": "10%"}
    account = _account(
        {
            "mailchimp": _vip_on_mailchimp({"tags": ["VIP"], **vip}),
            "hubspot": _hubspot({"vip": {"lists": ["123"], **vip}}),
            "klaviyo": _klaviyo({"vip": {"lists": ["Xy12Ab"], "holdout": 10}}),  # 10 is 10%
        }
    )
    dests = destinations(account)
    control = next(f"p{n}" for n in range(500) if assign.is_control("acme", "vip", f"p{n}", 10))
    for dest in dests.values():
        change = dest.change(control, 1, ["vip"], {}, "c@example.com")
        assert change.segments == frozenset() and not change.tags and not change.lists


def test_a_segment_some_destinations_do_not_map_needs_no_holdout_there() -> None:
    account = _account(
        {
            "mailchimp": _vip_on_mailchimp({"tags": ["VIP"], "holdout": 10}),
            "hubspot": _hubspot({"cart_abandoner": {"lists": ["9"]}}),
            "hook": _webhook({"cart_abandoner": {}}),
        }
    )
    assert set(destinations(account)) == {"mailchimp", "hubspot", "hook"}


def test_a_webhook_destination_triggering_on_the_segment_states_the_holdout_too() -> None:
    """Its triggers are the treatment as much as a tag is (a control member triggers nothing)."""
    mailchimp = _vip_on_mailchimp({"tags": ["VIP"], "holdout": 10})
    with pytest.raises(ConfigError) as err:
        destinations(_account({"mailchimp": mailchimp, "hook": _webhook({"vip": {}})}))
    assert err.value.path == "destinations.hook.segments.vip"
    hook = _webhook({"vip": {"holdout": "10%"}})
    assert set(destinations(_account({"mailchimp": mailchimp, "hook": hook}))) == {"mailchimp", "hook"}


def test_a_disabled_destination_mapping_the_segment_states_it_too() -> None:
    hubspot = {**_hubspot({"vip": {"lists": ["1"]}}), "enabled": False}
    mailchimp = _vip_on_mailchimp({"tags": ["VIP"], "holdout": 10})
    with pytest.raises(ConfigError, match="one control group") as err:
        destinations(_account({"mailchimp": mailchimp, "hubspot": hubspot}))
    assert err.value.path == "destinations.hubspot.segments.vip"


@pytest.mark.parametrize(
    ("other", "wanted"),
    [
        ({"holdout": 20}, 'write the same `holdout: 10%` and `holdout_salt: "q2"` as'),
        ({"holdout": 10, "holdout_salt": "q3"}, 'write the same `holdout: 10%` and `holdout_salt: "q2"` as'),
        ({"holdout": 10, "holdout_salt": "q2", "variants": {"a": {}, "b": {}}},
         'write the same `holdout: 10%`, `holdout_salt: "q2"` and no variants as'),
    ],
)  # fmt: skip
def test_what_to_write_names_each_setting_that_differs(other: dict, wanted: str) -> None:
    mailchimp = _vip_on_mailchimp({"tags": ["VIP"], "holdout": 10, "holdout_salt": "q2"})
    with pytest.raises(ConfigError) as err:
        destinations(
            _account({"mailchimp": mailchimp, "hubspot": _hubspot({"vip": {"lists": ["1"], **other}})})
        )
    assert err.value.path == "destinations.hubspot.segments.vip"
    assert wanted + " `destinations.mailchimp.segments.vip`" in err.value.reason


def test_variants_on_one_destination_only_are_refused_where_they_are_missing() -> None:
    variants = {"a": {"tags": ["VIP a"]}, "b": {"tags": ["VIP b"]}}
    mailchimp = _vip_on_mailchimp({"tags": ["VIP"], "variants": variants})
    with pytest.raises(ConfigError) as err:
        destinations(_account({"mailchimp": mailchimp, "klaviyo": _klaviyo({"vip": {"lists": ["L"]}})}))
    assert err.value.path == "destinations.klaviyo.segments.vip"
    assert "write the same `variants` a, b as `destinations.mailchimp.segments.vip`" in err.value.reason
    same = _klaviyo({"vip": {"lists": ["L"], "variants": {"a": {}, "b": {"lists": ["L2"]}}}})
    assert set(destinations(_account({"mailchimp": mailchimp, "klaviyo": same}))) == {"mailchimp", "klaviyo"}
