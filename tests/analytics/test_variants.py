"""A/B variants of a rule: declared by lists where a window or threshold goes, one variant per
person by the shared deterministic draw, each variant evaluated (membership and next_due) with its
own values, mapped to its own tags, and compared in the report."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import redis

import rules
from connector.analytics import assign, holdout, movement, report
from connector.destinations import destinations
from connector.errors import ConfigError
from rules import variants

T0 = datetime(2024, 3, 1, 12, tzinfo=UTC)
CART = {
    "segments": [
        {
            "name": "cart",
            "when": {
                "sequence": {
                    "first": {"event": "add_to_cart"},
                    "then_not": {"event": "order_completed"},
                    "within": ["24h", "48h"],
                }
            },
        }
    ]
}


def _person_in(variant: int, segment: str = "cart", count: int = 2) -> str:
    return next(
        f"p{n}" for n in range(1000) if variants.variant_index("acme", segment, f"p{n}", count) == variant
    )


def _profile(pid: str, *events: tuple[str, datetime]) -> rules.Profile:
    records = [rules.EventRecord(name, at, {}, f"e{i}") for i, (name, at) in enumerate(events)]
    return rules.Profile(account="acme", profile_id=pid, events=records)


@pytest.mark.parametrize("explain", [False, True])
def test_a_person_in_variant_0_waits_24h_and_one_in_variant_1_waits_48h(explain: bool) -> None:
    ruleset = rules.compile_rules(CART)
    assert len(ruleset.by_name["cart"].variants) == 2
    p0, p1 = _person_in(0), _person_in(1)
    early = T0 + timedelta(hours=1)
    e0 = rules.evaluate(_profile(p0, ("add_to_cart", T0)), ruleset, early, explain=explain)
    e1 = rules.evaluate(_profile(p1, ("add_to_cart", T0)), ruleset, early, explain=explain)
    assert not e0.segments and not e1.segments
    assert e0.next_due == T0 + timedelta(hours=24)
    assert e1.next_due == T0 + timedelta(hours=48)
    at30h = T0 + timedelta(hours=30)
    assert rules.evaluate(_profile(p0, ("add_to_cart", T0)), ruleset, at30h, explain=explain).segments == {
        "cart"
    }
    later = rules.evaluate(_profile(p1, ("add_to_cart", T0)), ruleset, at30h, explain=explain)
    assert later.segments == frozenset() and later.next_due == T0 + timedelta(hours=48)
    at49h = T0 + timedelta(hours=49)
    assert rules.evaluate(_profile(p1, ("add_to_cart", T0)), ruleset, at49h, explain=explain).segments == {
        "cart"
    }


def test_the_explanation_names_the_variant() -> None:
    ruleset = rules.compile_rules(CART)
    p1 = _person_in(1)
    got = rules.evaluate(_profile(p1, ("add_to_cart", T0)), ruleset, T0 + timedelta(hours=1))
    assert got.explanations["cart"].detail["variant"] == "b"
    assert got.explanations["cart"].next_change == T0 + timedelta(hours=48)


def test_thresholds_as_variants() -> None:
    ruleset = rules.compile_rules(
        {"segments": [{"name": "fan", "when": {"count": {"event": "viewed", "gte": [3, 5]}}}]}
    )
    views = [("viewed", T0 - timedelta(minutes=n)) for n in range(4)]
    p0, p1 = _person_in(0, "fan"), _person_in(1, "fan")
    assert rules.evaluate(_profile(p0, *views), ruleset, T0).segments == {"fan"}
    assert rules.evaluate(_profile(p1, *views), ruleset, T0).segments == frozenset()


def test_a_template_parameter_list_gives_the_template_segments_using_it_variants() -> None:
    ruleset = rules.compile_rules(
        {"include": [{"template": "cart_abandonment", "params": {"window": ["24h", "48h"]}}]}
    )
    assert len(ruleset.by_name["cart_abandoner"].variants) == 2
    assert ruleset.by_name["checkout_abandoner"].variants == ()


@pytest.mark.parametrize(
    ("template", "params", "name", "reason"),
    [
        (
            "re_engagement",
            {"window": ["30d", "60d"]},
            "window",
            "uses it at traits.email_open_rate_30d.ratio.numerator.count.within, in a computed trait",
        ),
        ("engagement", {"email_window": ["30d", "60d"]}, "email_window", "in a computed trait"),
        (
            "lifecycle",
            {"at_risk_after": ["60d", "90d"]},
            "at_risk_after",
            "win_back_quiet_until is $win_back_within + $at_risk_after",
        ),
        (
            "value_tiers",
            {"top": ["5%", "10%"]},
            "top",
            "at segments[0].when.rank.top, where variants are not",
        ),
    ],
)
def test_a_template_parameter_that_cannot_vary_is_named_with_where_it_is_used(
    template: str, params: dict[str, Any], name: str, reason: str
) -> None:
    with pytest.raises(rules.RulesError) as err:
        rules.compile_rules({"include": [{"template": template, "params": params}]})
    assert err.value.path == f"include[0].params.{name}"
    assert err.value.reason.startswith("cannot have variants:") and reason in err.value.reason


@pytest.mark.parametrize(
    ("rule", "path", "reason"),
    [
        (
            {"sequence": {"first": {"event": "a"}, "then_not": {"event": "b"}, "within": ["1h", "2h"]}},
            None,
            None,
        ),
        (
            {"count": {"event": "a", "within": ["1h", "2h"], "gte": [1, 2, 3]}},
            "segments[0].when.count.gte",
            "3 values, but segments[0].when.count.within has 2",
        ),
        ({"count": {"event": "a", "gte": [1]}}, "segments[0].when.count.gte", "a list of 2 to 8 values"),
        (
            {"count": {"event": "a", "within": ["1h", "soon"], "gte": 1}},
            "segments[0].when.count.within",
            "variant 1:",
        ),
    ],
)
def test_variant_lists_are_validated_with_their_path(rule: Any, path: str | None, reason: str | None) -> None:
    raw = {"segments": [{"name": "s", "when": rule}]}
    if path is None:
        assert len(rules.compile_rules(raw).by_name["s"].variants) == 2
        return
    with pytest.raises(rules.RulesError) as err:
        rules.compile_rules(raw)
    assert err.value.path == path and reason is not None and reason in err.value.reason


def test_a_segment_with_variants_cannot_be_in_an_exclusive_group() -> None:
    raw = {**CART, "groups": [{"name": "g", "segments": ["cart"]}]}
    with pytest.raises(rules.RulesError, match="exclusive group 'g'"):
        rules.compile_rules(raw)


def _account(mapping: dict[str, Any]) -> SimpleNamespace:
    dest = {
        "api_key_env": "MC_KEY",
        "list_id": "a1",
        "base_url": "http://127.0.0.1:8901/3.0",
        "sandbox": True,
        "segments": {"cart": mapping},
    }
    return SimpleNamespace(
        id="acme", file="acme.yaml", destinations={"mailchimp": dest}, ruleset=rules.compile_rules(CART)
    )


def test_each_rule_variant_gets_its_own_tag_and_arm() -> None:
    account = _account(
        {"tags": ["cart"], "variants": {"a": {"tags": ["cart 24h"]}, "b": {"tags": ["cart 48h"]}}}
    )
    dest = destinations(account)["mailchimp"]
    p0, p1 = _person_in(0), _person_in(1)
    assert dest.change(p0, 1, ["cart"], {}, "a@example.com").tags == {"cart", "cart 24h"}
    assert dest.change(p1, 1, ["cart"], {}, "b@example.com").tags == {"cart", "cart 48h"}
    assert holdout.arms_of(account, p0, ["cart"]) == {"cart": "a"}
    assert holdout.arms_of(account, p1, ["cart"]) == {"cart": "b"}


def test_without_variant_mappings_the_arm_is_still_the_rule_variant() -> None:
    account = _account({"tags": ["cart"]})
    assert holdout.arms_of(account, _person_in(1), ["cart"]) == {"cart": "b"}
    assert destinations(account)["mailchimp"].change(_person_in(1), 1, ["cart"], {}, None).tags == {"cart"}


def test_variant_mappings_must_match_the_rule_variants() -> None:
    account = _account({"tags": ["cart"], "variants": {"a": {"tags": ["x"]}, "b": {}, "c": {}}})
    with pytest.raises(ConfigError, match="declare 2 variants: map a, b") as err:
        destinations(account)
    assert err.value.path == "destinations.mailchimp.segments.cart.variants"


def test_the_draw_is_one_definition() -> None:
    assert assign.variant_index is variants.variant_index
    assert assign.bucket is variants.bucket
    split = [variants.variant_index("acme", "cart", f"p{n}", 2) for n in range(10_000)]
    assert abs(sum(split) / len(split) - 0.5) < 0.02


def test_the_report_compares_the_variants(redis_client: redis.Redis) -> None:
    account = _account({"tags": ["cart"]})
    pipe = redis_client.pipeline(transaction=False)
    for n in range(400):
        pid = f"p{n}"
        arms = holdout.arms_of(account, pid, ["cart"])
        movement.record_diff(pipe, "acme", {}, pid, ["cart"], [], T0, arms=arms)
    pipe.execute()
    got = report.segment_report(redis_client, "acme", "cart", T0 + timedelta(hours=1), 30)
    assert set(got["arms"]) == {"a", "b"}
    assert got["arms"]["a"]["members"] + got["arms"]["b"]["members"] == 400
    assert got["baseline"] == "a" and set(got["comparisons"]) == {"b"}
    assert "conversion_difference" in got["comparisons"]["b"]


def test_entries_from_before_the_segment_had_variants_are_not_compared_with_a_variant(
    redis_client: redis.Redis,
) -> None:
    account = _account({"tags": ["cart"]})
    pipe = redis_client.pipeline(transaction=False)
    for n in range(300):  # before the variants: the treated arm
        movement.record_diff(pipe, "acme", {}, f"old{n}", ["cart"], [], T0, arms={"cart": "t"})
    for n in range(400):
        pid = f"p{n}"
        movement.record_diff(
            pipe, "acme", {}, pid, ["cart"], [], T0, arms=holdout.arms_of(account, pid, ["cart"])
        )
    pipe.execute()
    got = report.segment_report(redis_client, "acme", "cart", T0 + timedelta(hours=1), 30)
    assert set(got["arms"]) == {"a", "b", "t"} and got["arms"]["t"]["members"] == 300
    assert got["baseline"] == "a" and set(got["comparisons"]) == {"b"}
    assert got["not_compared"] == {"t": "entries made while the segment had no variants"}
    assert got["members"] == 700
