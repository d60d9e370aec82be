"""What each condition means: traits, aggregates, recency, absence and sequence, references, computed traits,
exclusive groups, unknown values (missing property, division by zero) and the diff of two evaluations."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rules import EventRecord, Profile, RuleSet, compile_rules, diff, evaluate, render
from rules.model import Evaluation

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
US = timedelta(microseconds=1)
_ids = itertools.count(1)


def ev(name: str, ago: timedelta, **props: Any) -> EventRecord:
    return EventRecord(name=name, occurred_at=NOW - ago, properties=props, event_id=f"ev{next(_ids)}")


def person(*events: EventRecord, **traits: Any) -> Profile:
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    return Profile(account="acme", profile_id="p1", traits=traits, events=ordered)


def rules_for(when: dict[str, Any], **extra: Any) -> RuleSet:
    return compile_rules({"segments": [{"name": "s", "when": when}], **extra})


def holds(when: dict[str, Any], profile: Profile, now: datetime = NOW, **extra: Any) -> bool:
    return "s" in evaluate(profile, rules_for(when, **extra), now).segments


def explained(when: dict[str, Any], profile: Profile, now: datetime = NOW, **extra: Any) -> Any:
    return evaluate(profile, rules_for(when, **extra), now).explanations["s"]


# -- traits -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ({"eq": "pro"}, True),
        ({"ne": "pro"}, False),
        ({"in": ["free", "pro"]}, True),
        ({"not_in": ["free", "pro"]}, False),
        ({"starts_with": "pr"}, True),
        ({"contains": "ro"}, True),
        ({"exists": True}, True),
        ({"exists": False}, False),
    ],
)
def test_text_trait_operators(ops: dict[str, Any], expected: bool) -> None:
    assert holds({"trait": {"name": "plan", **ops}}, person(plan="pro")) is expected


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ({"gt": 41}, True),
        ({"gt": 42}, False),
        ({"gte": 42}, True),
        ({"lt": 42}, False),
        ({"lte": 42}, True),
        ({"between": [40, 42]}, True),
        ({"between": [43, 50]}, False),
        ({"eq": 42.0}, True),
        ({"gte": 40, "lt": 50}, True),
    ],
)
def test_numeric_trait_operators(ops: dict[str, Any], expected: bool) -> None:
    assert holds({"trait": {"name": "age", **ops}}, person(age=42)) is expected


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ({"gte": 40}, True),
        ({"eq": 42}, True),  # equality too, as the ordering does: both sent by one sender or another
        ({"ne": 42}, False),
        ({"in": [41, 42]}, True),
        ({"not_in": [42]}, False),
        ({"eq": 43}, False),
        ({"eq": "42"}, True),
        ({"eq": "42.0"}, False),  # text against text stays text
    ],
)
def test_numeric_text_is_compared_as_a_number(ops: dict[str, Any], expected: bool) -> None:
    assert holds({"trait": {"name": "age", **ops}}, person(age="42")) is expected


@pytest.mark.parametrize(
    ("ops", "expected"),
    [
        ({"eq": "DE"}, False),
        ({"ne": "DE"}, True),
        ({"gt": 10}, False),
        ({"exists": True}, True),
        ({"eq": True}, False),
    ],
)
def test_an_object_trait_is_one_value_not_one_per_group(ops: dict[str, Any], expected: bool) -> None:
    # Segment's reserved `address` trait is an object; only a group_by result is compared group by group
    for address in ({"city": "Berlin", "country": "DE", "zip": 12345}, {}):
        assert holds({"trait": {"name": "address", **ops}}, person(address=address)) is expected


def test_contains_on_a_list_trait() -> None:
    assert holds({"trait": {"name": "tags", "contains": "vip"}}, person(tags=["new", "vip"]))


def test_missing_trait_is_not_a_member_with_the_reason_even_under_not() -> None:
    when = {"not": {"trait": {"name": "plan", "eq": "pro"}}}
    explanation = explained(when, person())
    assert explanation.member is False
    assert "trait plan is missing" in "\n".join(explanation.reasons)
    assert holds({"trait": {"name": "plan", "exists": False}}, person())


def test_text_against_a_number_is_unknown_not_an_error() -> None:
    explanation = explained({"trait": {"name": "plan", "gt": 3}}, person(plan="pro"))
    assert explanation.member is False
    assert explanation.detail["condition"]["result"] == "unknown"
    assert "cannot be compared" in explanation.detail["condition"]["reason"]


def test_trait_date_older_than_flips_exactly() -> None:
    signed_up = NOW - timedelta(days=29)
    profile = person(signed_up_at=signed_up.isoformat())
    when = {"trait": {"name": "signed_up_at", "older_than": "30d"}}
    evaluation = evaluate(profile, rules_for(when), NOW)
    assert "s" not in evaluation.segments
    assert evaluation.next_due == signed_up + timedelta(days=30)
    assert not holds(when, profile, evaluation.next_due - US)
    assert holds(when, profile, evaluation.next_due)


def test_trait_date_within() -> None:
    profile = person(signed_up_at=(NOW - timedelta(days=5)).isoformat().replace("+00:00", "Z"))
    assert holds({"trait": {"name": "signed_up_at", "within": "7d"}}, profile)
    assert not holds({"trait": {"name": "signed_up_at", "within": "3d"}}, profile)
    assert not holds({"trait": {"name": "signed_up_at", "within": "3d"}}, person(signed_up_at="not a date"))


# -- event aggregates -------------------------------------------------------------------------------


def test_count_within_a_window_with_property_filters() -> None:
    profile = person(
        ev("order_completed", timedelta(days=1), category="shoes", revenue=150),
        ev("order_completed", timedelta(days=2), category="shoes", revenue=80),
        ev("order_completed", timedelta(days=3), category="hats", revenue=300),
        ev("order_completed", timedelta(days=40), category="shoes", revenue=500),
    )
    when = {"count": {"event": "order_completed", "within": "30d", "where": {"category": "shoes"}, "gte": 2}}
    assert holds(when, profile)
    filtered = {"category": "shoes", "revenue": {"gt": 100}}
    assert not holds(
        {"count": {"event": "order_completed", "within": "30d", "where": filtered, "gte": 2}}, profile
    )
    assert holds({"count": {"event": "order_completed", "where": filtered, "eq": 2}}, profile)


def test_count_leaving_the_window_flips_exactly_at_next_due() -> None:
    first = ev("order_completed", timedelta(days=20))
    profile = person(first, ev("order_completed", timedelta(days=10)))
    when = {"count": {"event": "order_completed", "within": "30d", "gte": 2}}
    evaluation = evaluate(profile, rules_for(when), NOW)
    assert "s" in evaluation.segments
    assert evaluation.next_due == first.occurred_at + timedelta(days=30)
    assert holds(when, profile, evaluation.next_due - US)
    assert not holds(when, profile, evaluation.next_due)


def test_window_between_two_offsets() -> None:
    profile = person(ev("email_opened", timedelta(days=10)))
    when = {"count": {"event": "email_opened", "within": "30d", "older_than": "14d", "gte": 1}}
    evaluation = evaluate(profile, rules_for(when), NOW)
    assert "s" not in evaluation.segments
    assert evaluation.next_due == NOW + timedelta(days=4)
    assert holds(when, profile, NOW + timedelta(days=4))
    assert holds(when, profile, NOW + timedelta(days=20) - US)
    assert not holds(when, profile, NOW + timedelta(days=20))


def test_group_by_one_category_within_ten_minutes() -> None:
    views = [ev("product_viewed", timedelta(minutes=m), category="shoes") for m in (1, 4, 8)]
    views.append(ev("product_viewed", timedelta(minutes=2), category="hats"))
    profile = person(*views)
    when = {"count": {"event": "product_viewed", "within": "10m", "group_by": "category", "gte": 3}}
    evaluation = evaluate(profile, rules_for(when), NOW)
    assert "s" in evaluation.segments
    assert evaluation.next_due == NOW + timedelta(minutes=2)  # the view 8 minutes ago leaves the window
    assert not holds(when, profile, NOW + timedelta(minutes=2))
    mixed = person(*views[1:], ev("product_viewed", timedelta(minutes=3), category="hats"))
    assert not holds(when, mixed)


@pytest.mark.parametrize(
    ("kind", "ops", "expected"),
    [
        ("sum", {"eq": 450}, True),
        ("avg", {"eq": 150}, True),
        ("min", {"eq": 50}, True),
        ("max", {"gte": 300}, True),
        ("distinct", {"eq": 2}, False),
    ],
)
def test_property_aggregates(kind: str, ops: dict[str, Any], expected: bool) -> None:
    profile = person(
        ev("order_completed", timedelta(days=1), revenue=100),
        ev("order_completed", timedelta(days=2), revenue="300"),
        ev("order_completed", timedelta(days=3), revenue=50),
        ev("order_completed", timedelta(days=4), revenue="n/a"),
    )
    assert holds({kind: {"event": "order_completed", "property": "revenue", **ops}}, profile) is expected


def test_amounts_sent_as_decimals_add_up_to_the_decimal_total() -> None:
    # as binary floats 500.64 + 468.93 + 30.43 is 999.9999999999999
    profile = person(
        *(
            ev("order_completed", timedelta(days=d + 1), revenue=r)
            for d, r in enumerate((500.64, "468.93", 30.43))
        )
    )
    assert holds({"sum": {"event": "order_completed", "property": "revenue", "gte": 1000}}, profile)
    assert holds({"sum": {"event": "order_completed", "property": "revenue", "eq": 1000}}, profile)
    tenths = person(
        *(ev("order_completed", timedelta(days=d + 1), revenue=r) for d, r in enumerate((0.1, 0.2)))
    )
    assert holds({"avg": {"event": "order_completed", "property": "revenue", "eq": 0.15}}, tenths)
    assert holds({"sum": {"event": "order_completed", "property": "revenue", "eq": 0.3}}, tenths)


def test_distinct_count_of_a_property() -> None:
    profile = person(
        *(ev("product_viewed", timedelta(hours=h), sku=s) for h, s in ((1, "a"), (2, "b"), (3, "a")))
    )
    assert holds({"distinct": {"event": "product_viewed", "property": "sku", "eq": 2}}, profile)


def test_distinct_counts_a_number_once_however_it_was_sent() -> None:
    # one shop sends the SKU as a number, another as text: one product, as eq and sum take it
    skus = (1, 1.0, "1", "sku-2", "2")
    profile = person(*(ev("product_viewed", timedelta(hours=h + 1), sku=s) for h, s in enumerate(skus)))
    assert holds({"distinct": {"event": "product_viewed", "property": "sku", "eq": 3}}, profile)


def test_average_of_nothing_is_unknown_with_the_reason() -> None:
    when = {"avg": {"event": "order_completed", "property": "revenue", "within": "30d", "gte": 0}}
    explanation = explained(when, person(ev("order_completed", timedelta(days=1))))
    assert explanation.member is False
    assert explanation.detail["condition"]["result"] == "unknown"
    assert "no order_completed with a numeric revenue" in explanation.detail["condition"]["reason"]


# -- recency ----------------------------------------------------------------------------------------


def test_last_order_older_than_flips_exactly() -> None:
    last = ev("order_completed", timedelta(days=80))
    profile = person(ev("order_completed", timedelta(days=200)), last)
    when = {"last": {"event": "order_completed", "older_than": "90d"}}
    evaluation = evaluate(profile, rules_for(when), NOW)
    assert "s" not in evaluation.segments
    assert evaluation.next_due == last.occurred_at + timedelta(days=90)
    assert holds(when, profile, evaluation.next_due)
    assert not holds(when, person(), NOW)  # never ordered: not "last order long ago"
    # and a definite fact, not an unknown: "not ordered in the last 30 days" holds for someone who never did
    assert holds({"not": {"last": {"event": "order_completed", "within": "30d"}}}, person())


def test_first_occurrence_within() -> None:
    profile = person(ev("page_viewed", timedelta(days=3)), ev("page_viewed", timedelta(days=1)))
    assert holds({"first": {"event": "page_viewed", "within": "7d"}}, profile)
    assert not holds({"first": {"event": "page_viewed", "within": "2d"}}, profile)
    assert holds({"last": {"event": "*", "within": "2d"}}, profile)


# -- absence and sequence ----------------------------------------------------------------------------

CART = {
    "sequence": {"first": {"event": "add_to_cart"}, "then_not": {"event": "order_completed"}, "within": "48h"}
}


def test_cart_abandonment_enters_when_the_window_closes() -> None:
    cart = ev("add_to_cart", timedelta(hours=10))
    profile = person(cart)
    evaluation = evaluate(profile, rules_for(CART), NOW)
    assert "s" not in evaluation.segments
    closes = cart.occurred_at + timedelta(hours=48)
    assert evaluation.next_due == closes
    assert evaluation.explanations["s"].next_change == closes
    assert "waiting" in evaluation.explanations["s"].detail["condition"]["reason"]
    assert not holds(CART, profile, closes - US)
    assert holds(CART, profile, closes)


def test_cart_abandonment_does_not_happen_when_ordered_in_time() -> None:
    profile = person(ev("add_to_cart", timedelta(hours=60)), ev("order_completed", timedelta(hours=30)))
    evaluation = evaluate(profile, rules_for(CART), NOW)
    assert "s" not in evaluation.segments
    assert evaluation.next_due is None


def test_cart_abandonment_only_looks_at_the_latest_cart_and_keeps_for_a_while() -> None:
    when = {"sequence": {**CART["sequence"], "first_within": "7d"}}
    cart = ev("add_to_cart", timedelta(days=3))
    profile = person(cart)
    evaluation = evaluate(profile, rules_for(when), NOW)
    assert "s" in evaluation.segments
    assert evaluation.next_due == cart.occurred_at + timedelta(days=7)
    assert not holds(when, profile, evaluation.next_due)
    newer = person(cart, ev("add_to_cart", timedelta(hours=1)))
    assert not holds(when, newer)  # a new cart: waiting again


def test_browse_abandonment_with_time_on_page() -> None:
    when = {
        "sequence": {
            "first": {"event": "product_viewed", "where": {"time_on_page": {"gte": 30}}},
            "then_not": {"event": "add_to_cart"},
            "within": "2h",
        }
    }
    assert holds(when, person(ev("product_viewed", timedelta(hours=3), time_on_page=45)))
    assert not holds(when, person(ev("product_viewed", timedelta(hours=3), time_on_page=5)))
    assert not holds(when, person(ev("product_viewed", timedelta(hours=3))))  # missing property: not counted
    carted = person(
        ev("product_viewed", timedelta(hours=3), time_on_page=45), ev("add_to_cart", timedelta(hours=2))
    )
    assert not holds(when, carted)


def test_funnel_did_a_then_b_within() -> None:
    when = {
        "sequence": {
            "first": {"event": "checkout_started"},
            "then": {"event": "order_completed"},
            "within": "1h",
        }
    }
    assert holds(
        when, person(ev("checkout_started", timedelta(hours=5)), ev("order_completed", timedelta(hours=4.5)))
    )
    assert not holds(
        when, person(ev("checkout_started", timedelta(hours=5)), ev("order_completed", timedelta(hours=3)))
    )
    assert not holds(
        when, person(ev("order_completed", timedelta(hours=5)), ev("checkout_started", timedelta(hours=4.9)))
    )


def test_funnel_of_the_same_event_needs_two_of_them() -> None:
    when = {
        "sequence": {
            "first": {"event": "order_completed"},
            "then": {"event": "order_completed"},
            "within": "30d",
        }
    }
    assert not holds(when, person(ev("order_completed", timedelta(days=3))))
    assert holds(
        when, person(ev("order_completed", timedelta(days=3)), ev("order_completed", timedelta(days=1)))
    )


def test_a_first_event_that_also_matches_then_is_not_its_own_follow_up() -> None:
    """A big order then any order: the big order itself is not the reorder; a page view of
    /pricing then no page view: the pricing view itself is not the page view that follows."""
    reorder = {
        "sequence": {
            "first": {"event": "order_completed", "where": {"revenue": {"gte": 200}}},
            "then": {"event": "order_completed"},
            "within": "30d",
        }
    }
    big = ev("order_completed", timedelta(days=3), revenue=250)
    assert not holds(reorder, person(big))
    assert "no order_completed within 30d after it" in render(explained(reorder, person(big)))
    assert holds(reorder, person(big, ev("order_completed", timedelta(days=1), revenue=20)))
    # an earlier small order does not follow it
    assert not holds(reorder, person(ev("order_completed", timedelta(days=4), revenue=20), big))

    left = {
        "sequence": {
            "first": {"event": "page_viewed", "where": {"path": "/pricing"}},
            "then_not": {"event": "page_viewed"},
            "within": "30m",
        }
    }
    pricing = ev("page_viewed", timedelta(minutes=55), path="/pricing")
    assert holds(left, person(pricing))
    waiting = evaluate(person(pricing), rules_for(left), NOW - timedelta(minutes=50))
    assert "s" not in waiting.segments
    assert waiting.next_due == NOW - timedelta(minutes=25)
    assert not holds(left, person(pricing, ev("page_viewed", timedelta(minutes=40), path="/")))

    # any event then a page view: the page view that is the first event does not follow itself
    anything = {"sequence": {"first": {"event": "*"}, "then": {"event": "page_viewed"}, "within": "1h"}}
    assert not holds(anything, person(ev("page_viewed", timedelta(minutes=10), path="/")))


# -- composition and references ----------------------------------------------------------------------


def test_all_any_not_nest_freely() -> None:
    when = {
        "any": [
            {"all": [{"trait": {"name": "plan", "eq": "pro"}}, {"not": {"count": {"event": "x", "gte": 1}}}]},
            {"trait": {"name": "vip", "eq": True}},
        ]
    }
    assert holds(when, person(plan="pro"))
    assert not holds(when, person(ev("x", timedelta(1)), plan="pro"))
    assert holds(when, person(ev("x", timedelta(1)), plan="free", vip=True))


def test_segment_references() -> None:
    rules = compile_rules(
        {
            "segments": [
                {"name": "buyer", "when": {"count": {"event": "order_completed", "gte": 1}}},
                {
                    "name": "browser",
                    "when": {
                        "all": [{"count": {"event": "product_viewed", "gte": 1}}, {"not_in_segment": "buyer"}]
                    },
                },
                {
                    "name": "happy_buyer",
                    "when": {"all": [{"in_segment": "buyer"}, {"trait": {"name": "nps", "gte": 9}}]},
                },
            ]
        }
    )
    browsing = evaluate(person(ev("product_viewed", timedelta(1)), nps=10), rules, NOW)
    assert browsing.segments == {"browser"}
    bought = evaluate(
        person(ev("product_viewed", timedelta(1)), ev("order_completed", timedelta(1)), nps=10), rules, NOW
    )
    assert bought.segments == {"buyer", "happy_buyer"}


def test_reference_to_a_time_based_segment_carries_its_next_change() -> None:
    rules = compile_rules(
        {
            "segments": [
                {"name": "recent", "when": {"last": {"event": "order_completed", "within": "30d"}}},
                {
                    "name": "lapsed",
                    "when": {
                        "all": [
                            {"count": {"event": "order_completed", "gte": 1}},
                            {"not_in_segment": "recent"},
                        ]
                    },
                },
            ]
        }
    )
    order = ev("order_completed", timedelta(days=10))
    evaluation = evaluate(person(order), rules, NOW)
    assert evaluation.segments == {"recent"}
    assert evaluation.next_due == order.occurred_at + timedelta(days=30)
    assert evaluation.explanations["lapsed"].next_change == evaluation.next_due
    assert evaluate(person(order), rules, evaluation.next_due).segments == {"lapsed"}


def test_exclusive_group_first_match_wins_and_plain_segments_overlap() -> None:
    rules = compile_rules(
        {
            "segments": [
                {"name": "big", "when": {"count": {"event": "order_completed", "gte": 5}}},
                {"name": "some", "when": {"count": {"event": "order_completed", "gte": 1}}},
                {"name": "any_order", "when": {"count": {"event": "order_completed", "gte": 1}}},
            ],
            "groups": [{"name": "size", "segments": ["big", "some"]}],
        }
    )
    many = person(*(ev("order_completed", timedelta(days=d)) for d in range(1, 7)))
    assert evaluate(many, rules, NOW).segments == {"big", "any_order"}
    few = person(ev("order_completed", timedelta(days=1)))
    assert evaluate(few, rules, NOW).segments == {"some", "any_order"}


# -- computed traits ---------------------------------------------------------------------------------

TRAITS = {
    "order_count": {"count": {"event": "order_completed"}},
    "lifetime_revenue": {"sum": {"event": "order_completed", "property": "revenue"}},
    "email_points": {
        "points": {"cap": 20, "rules": [{"event": "email_opened", "within": "30d", "weight": 5}]}
    },
    "site_points": {"points": {"rules": [{"event": "product_viewed", "within": "30d", "weight": 1}]}},
    "buy_points": {
        "points": {"cap": 30, "rules": [{"event": "order_completed", "within": "90d", "weight": 10}]}
    },
    "score": {
        "composite": {
            "scale": 10,
            "parts": [
                {"trait": "email_points", "weight": 40, "max": 20},
                {"trait": "site_points", "weight": 35, "max": 10},
                {"trait": "buy_points", "weight": 25, "max": 30},
            ],
        }
    },
    "open_rate": {
        "ratio": {
            "numerator": {"count": {"event": "email_opened", "within": "30d"}},
            "denominator": {"count": {"event": "email_delivered", "within": "30d"}},
        }
    },
}


def test_computed_traits_values_and_use_in_conditions() -> None:
    profile = person(
        ev("order_completed", timedelta(days=100), revenue=200),
        ev("order_completed", timedelta(days=5), revenue=99.5),
        *(ev("email_opened", timedelta(days=d)) for d in (1, 2, 3, 4, 5)),
        *(ev("email_delivered", timedelta(days=d)) for d in range(1, 11)),
        *(ev("product_viewed", timedelta(days=d)) for d in (1, 2)),
    )
    rules = compile_rules(
        {"traits": TRAITS, "segments": [{"name": "s", "when": {"trait": {"name": "score", "gte": 6}}}]}
    )
    evaluation = evaluate(profile, rules, NOW)
    traits = evaluation.traits
    assert traits["order_count"] == 2
    assert traits["lifetime_revenue"] == 299.5
    assert traits["email_points"] == 20  # 5 opens x 5, capped at 20
    assert traits["site_points"] == 2
    assert traits["buy_points"] == 10  # the order 100 days ago is outside 90 days
    # 10 x (0.40 x 20/20 + 0.35 x 2/10 + 0.25 x 10/30) = 5.53
    assert traits["score"] == 5.53
    assert traits["open_rate"] == 0.5
    assert "s" not in evaluation.segments


def test_ratio_division_by_zero_is_unknown_not_an_error() -> None:
    rules = compile_rules(
        {"traits": TRAITS, "segments": [{"name": "s", "when": {"trait": {"name": "open_rate", "lt": 0.1}}}]}
    )
    evaluation = evaluate(person(ev("email_opened", timedelta(days=1))), rules, NOW)
    assert evaluation.traits["open_rate"] is None
    assert "s" not in evaluation.segments
    assert "division by zero" in evaluation.explanations["s"].detail["condition"]["reason"]


def test_points_trait_changes_when_an_event_leaves_its_window() -> None:
    opened = ev("email_opened", timedelta(days=29))
    rules = compile_rules({"traits": {"p": TRAITS["email_points"]}})
    evaluation = evaluate(person(opened), rules, NOW)
    assert evaluation.traits == {"p": 5}
    assert evaluation.next_due == opened.occurred_at + timedelta(days=30)
    assert evaluate(person(opened), rules, evaluation.next_due - US).traits == {"p": 5}
    assert evaluate(person(opened), rules, evaluation.next_due).traits == {"p": 0}


# -- explanation, diff --------------------------------------------------------------------------------


def test_explanation_lists_values_thresholds_and_counted_events() -> None:
    orders = [ev("order_completed", timedelta(days=d), revenue=10) for d in (1, 2)]
    when = {"count": {"event": "order_completed", "within": "30d", "gte": 3}}
    explanation = explained(when, person(*orders))
    node = explanation.detail["condition"]
    assert node["value"] == 2
    assert node["threshold"] == "≥ 3"
    assert node["result"] == "false"
    assert [e["id"] for e in node["events"]] == [orders[0].event_id, orders[1].event_id]  # newest first
    text = render(explanation)
    assert text.startswith("s: OUT")
    assert "count of order_completed within 30d ≥ 3: false (value 2)" in text


def test_explain_can_be_left_out_for_speed_with_the_same_result() -> None:
    profile = person(ev("add_to_cart", timedelta(hours=50)), plan="pro")
    rules = rules_for(CART)
    quick = evaluate(profile, rules, NOW, explain=False)
    full = evaluate(profile, rules, NOW)
    assert quick.explanations == {}
    assert (quick.segments, quick.traits, quick.next_due) == (full.segments, full.traits, full.next_due)


def test_diff_of_two_evaluations() -> None:
    before = Evaluation(segments=frozenset({"a", "b"}), traits={"x": 1, "y": 2}, next_due=None)
    after = Evaluation(segments=frozenset({"b", "c"}), traits={"x": 1, "y": 3, "z": 0}, next_due=None)
    change = diff(before, after)
    assert change.entered == {"c"}
    assert change.exited == {"a"}
    assert change.changed_traits == {"y": (2, 3), "z": (None, 0)}
    assert diff(after, after).empty
    assert diff(None, after).entered == {"b", "c"}


def test_naive_now_is_taken_as_utc() -> None:
    profile = person(ev("order_completed", timedelta(days=1)))
    rules = rules_for({"count": {"event": "order_completed", "within": "2d", "gte": 1}})
    assert evaluate(profile, rules, NOW.replace(tzinfo=None)).segments == {"s"}


JUNK = [None, "", "x", "12", 3, -1.5, float("nan"), True, [], [1, "a"], {"a": 1}, "2024-13-45", "2024-05-01"]
# amounts whose sum leaves a float's range (two of them are summed below)
JUNK += ["1e308", float("inf"), -float("inf"), 1e308, 10**400, -(10**400)]


@pytest.mark.parametrize("junk", JUNK, ids=repr)
def test_odd_values_never_raise(junk: Any) -> None:
    rules = compile_rules(
        {
            "include": ["purchase_behavior", "engagement", "browse_abandonment", "high_intent"],
            "traits": {
                "avg_rev": {"avg": {"event": "order_completed", "property": "revenue"}},
                "kinds": {"distinct": {"event": "product_viewed", "property": "category"}},
            },
            "segments": [
                {"name": "t1", "when": {"trait": {"name": "plan", "gt": 3}}},
                {"name": "t2", "when": {"trait": {"name": "plan", "older_than": "1d"}}},
                {"name": "t3", "when": {"trait": {"name": "plan", "contains": "a"}}},
                {"name": "t4", "when": {"trait": {"name": "plan", "between": [1, 5]}}},
                {"name": "t5", "when": {"not": {"trait": {"name": "plan", "in": ["x", 3]}}}},
                {"name": "t6", "when": {"trait": {"name": "avg_rev", "gte": 1}}},
                {"name": "t7", "when": {"max": {"event": "order_completed", "property": "revenue", "lt": 9}}},
            ],
        }
    )
    profile = person(
        ev("order_completed", timedelta(days=1), revenue=junk),
        ev("order_completed", timedelta(days=2), revenue=junk),
        ev("product_viewed", timedelta(minutes=1), category=junk, time_on_page=junk),
        ev("product_viewed", timedelta(minutes=2), category=junk, time_on_page=junk),
        ev("product_viewed", timedelta(minutes=3), category=junk),
        plan=junk,
    )
    full = evaluate(profile, rules, NOW)
    quick = evaluate(profile, rules, NOW, explain=False)
    assert (full.segments, full.traits, full.next_due) == (quick.segments, quick.traits, quick.next_due)
    for explanation in full.explanations.values():
        assert render(explanation)


def test_a_next_change_past_the_walk_cap_is_said_to_be_a_lower_bound() -> None:
    # a page view every 5 minutes for 33 hours: more window exits than the engine walks through
    views = [ev("page_viewed", timedelta(days=29) - timedelta(minutes=5 * i)) for i in range(400)]
    when = {"count": {"event": "page_viewed", "within": "30d", "gte": 1}}
    explanation = explained(when, person(*views))
    leaves = views[-1].occurred_at + timedelta(days=30)  # the newest view leaves the window
    assert explanation.next_change is not None and explanation.next_change < leaves
    assert render(explanation).splitlines()[0].endswith(" at the earliest")
    # a short history is exact, and said without it
    few = explained(when, person(*views[:3]))
    assert few.next_change == views[2].occurred_at + timedelta(days=30)
    assert not render(few).splitlines()[0].endswith(" at the earliest")


def test_any_event_but_some_names() -> None:
    when = {"last": {"event": "*", "except": ["email_delivered", "email_bounced"], "within": "7d"}}
    browsed_long_ago = ev("page_viewed", timedelta(days=30))
    mailed = [ev("email_delivered", timedelta(days=d)) for d in (1, 3)] + [
        ev("email_bounced", timedelta(days=2))
    ]
    assert not holds(when, person(browsed_long_ago, *mailed))
    assert holds(when, person(browsed_long_ago, *mailed, ev("email_opened", timedelta(days=2))))
    assert "last any event but email_bounced, email_delivered within 7d" in render(
        explained(when, person(browsed_long_ago, *mailed))
    )
    counted = {"count": {"event": "*", "except": ["email_delivered"], "within": "7d", "gte": 2}}
    assert not holds(counted, person(*mailed))
    assert holds(counted, person(*mailed, ev("page_viewed", timedelta(days=1))))
    funnel = {
        "sequence": {
            "first": {"event": "*", "except": ["email_delivered", "email_bounced"]},
            "then_not": {"event": "x"},
            "within": "1h",
        }
    }
    assert not holds(funnel, person(*mailed))
    assert holds(funnel, person(*mailed, ev("page_viewed", timedelta(days=1))))


@pytest.mark.parametrize(
    ("spec", "path", "reason"),
    [
        ({"event": "order_completed", "except": ["x"]}, "except", 'goes with event: "*" only'),
        ({"event": "*", "except": []}, "except", "needs at least one event name"),
        ({"event": "*", "except": ["*"]}, "except", "* would leave no event"),
        ({"event": "*", "except": ["Email Delivered"]}, "except[0]", "did you mean `email_delivered`?"),
    ],
)
def test_except_is_checked(spec: dict[str, Any], path: str, reason: str) -> None:
    from rules import RulesError

    with pytest.raises(RulesError) as err:
        rules_for({"last": {**spec, "within": "7d"}})
    assert err.value.path == f"segments[0].when.last.{path}" and reason in err.value.reason
