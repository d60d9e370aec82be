"""The built-in templates: they compile, cover the promised segments, take parameters, and behave."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import EventRecord, Profile, builtin_templates, compile_rules, evaluate, render
from rules.templates import all_templates_rules

NOW = datetime(2024, 6, 1, 12, 0, tzinfo=UTC)
_ids = itertools.count(1)


def ev(name: str, ago: timedelta, **props: Any) -> EventRecord:
    return EventRecord(name=name, occurred_at=NOW - ago, properties=props, event_id=f"t{next(_ids)}")


def person(*events: EventRecord) -> Profile:
    return Profile("acme", "p1", events=sorted(events, key=lambda e: (e.occurred_at, e.event_id)))


def days(n: float) -> timedelta:
    return timedelta(days=n)


def in_group(rules: Any, profile: Profile, group: str, now: datetime = NOW) -> list[str]:
    segments = evaluate(profile, rules, now, explain=False).segments
    return [s for s in rules.groups[group] if s in segments]


def test_templates_ship_at_least_twenty_segments() -> None:
    names = set(builtin_templates())
    assert names >= {
        "lifecycle",
        "engagement",
        "purchase_behavior",
        "activity",
        "cart_abandonment",
        "browse_abandonment",
        "high_intent",
        "re_engagement",
        "vip",
    }
    rules = compile_rules(all_templates_rules())
    assert len(rules.segment_names) >= 20
    assert set(rules.groups) == {"lifecycle", "engagement", "activity"}


@pytest.mark.parametrize("template", sorted(builtin_templates()))
def test_each_template_compiles_alone(template: str) -> None:
    assert compile_rules({"include": [template]}).segment_names


LIFECYCLE = compile_rules({"include": ["lifecycle"]})


@pytest.mark.parametrize(
    ("events", "stage"),
    [
        ([ev("page_viewed", days(2))], "lifecycle_new"),
        ([ev("page_viewed", days(60))], None),
        ([ev("order_completed", days(10))], "lifecycle_first_time"),
        ([ev("order_completed", days(d)) for d in (10, 20)], "lifecycle_developing"),
        ([ev("order_completed", days(d)) for d in (5, 10, 20, 30, 40)], "lifecycle_loyal"),
        ([ev("order_completed", days(d)) for d in (100, 120)], "lifecycle_at_risk"),
        ([ev("order_completed", days(d)) for d in (200, 300)], "lifecycle_churned"),
        ([ev("order_completed", days(d)) for d in (5, 200)], "lifecycle_win_back"),
        ([ev("order_completed", days(d)) for d in (5, 100)], "lifecycle_win_back"),  # after 95 days
        ([ev("order_completed", days(d)) for d in (5, 125)], "lifecycle_win_back"),
        ([ev("order_completed", days(d)) for d in (0, 95)], "lifecycle_win_back"),
        ([ev("order_completed", days(d)) for d in (0, 90)], "lifecycle_win_back"),
        ([ev("order_completed", days(d)) for d in (0, 89)], "lifecycle_developing"),
    ],
)
def test_lifecycle_stages_never_overlap(events: list[EventRecord], stage: str | None) -> None:
    assert in_group(LIFECYCLE, person(*events), "lifecycle") == ([stage] if stage else [])


def test_lifecycle_moves_with_time_alone() -> None:
    profile = person(ev("order_completed", days(10)), ev("order_completed", days(20)))
    assert in_group(LIFECYCLE, profile, "lifecycle") == ["lifecycle_developing"]
    evaluation = evaluate(profile, LIFECYCLE, NOW, explain=False)
    assert evaluation.next_due == NOW + days(80)  # the last order becomes 90 days old
    assert in_group(LIFECYCLE, profile, "lifecycle", NOW + days(80)) == ["lifecycle_at_risk"]
    assert in_group(LIFECYCLE, profile, "lifecycle", NOW + days(170)) == ["lifecycle_churned"]


def test_win_back_needs_a_gap_before_the_returning_order_not_before_now() -> None:
    # a customer ordering every 65 days never goes 90 days without an order: never won back
    profile = person(ev("order_completed", days(90)), ev("order_completed", days(25)))
    for later in range(0, 40):
        assert in_group(LIFECYCLE, profile, "lifecycle", NOW + days(later)) != ["lifecycle_win_back"]
    # one returning after 100 days is won back from the order on, for win_back_within
    back = person(ev("order_completed", days(110)), ev("order_completed", days(10)))
    assert in_group(LIFECYCLE, back, "lifecycle") == ["lifecycle_win_back"]
    assert in_group(LIFECYCLE, back, "lifecycle", NOW + days(20)) == ["lifecycle_developing"]


WIN_BACK_PARAMS = [(30, 90), (14, 180), (45, 60)]  # (win_back_within, at_risk_after) in days
WIN_BACK_RULES = [
    compile_rules(
        {
            "include": [
                {"template": "lifecycle", "params": {"win_back_within": f"{w}d", "at_risk_after": f"{g}d"}}
            ]
        }
    )
    for w, g in WIN_BACK_PARAMS
]


@settings(max_examples=400, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=400), max_size=6),
    st.integers(min_value=0, max_value=400),
    st.integers(min_value=0, max_value=len(WIN_BACK_PARAMS) - 1),
)
def test_win_back_is_a_recent_order_after_a_long_gap(order_days: list[int], at: int, which: int) -> None:
    # the definition, written out: some order less than win_back_within ago came at_risk_after or
    # more after the one before (the defaults: 30 and 90 days)
    within, gap = WIN_BACK_PARAMS[which]
    orders = sorted(set(order_days))
    now = NOW + days(at)
    expected = any(
        now - days(within) < NOW + days(r) <= now and i > 0 and r - orders[i - 1] >= gap
        for i, r in enumerate(orders)
    )
    profile = Profile(
        "acme",
        "p1",
        events=[EventRecord("order_completed", NOW + days(d), {}, f"o{d:04d}") for d in orders if d <= at],
    )
    segments = evaluate(profile, WIN_BACK_RULES[which], now, explain=False).segments
    assert ("lifecycle_win_back" in segments) is expected


def test_lifecycle_thresholds_are_parameters() -> None:
    rules = compile_rules({"include": [{"template": "lifecycle", "params": {"loyal_orders": 2}}]})
    profile = person(ev("order_completed", days(10)), ev("order_completed", days(20)))
    assert in_group(rules, profile, "lifecycle") == ["lifecycle_loyal"]


def test_purchase_behavior_and_vip() -> None:
    rules = compile_rules(
        {"include": ["purchase_behavior", {"template": "vip", "params": {"threshold": 700}}]}
    )
    assert evaluate(person(), rules, NOW).segments == {"non_purchaser"}
    one = person(ev("order_completed", days(3), revenue=120))
    assert evaluate(one, rules, NOW).segments == {"first_time_buyer"}
    big = person(ev("order_completed", days(3), revenue=450), ev("order_completed", days(1), revenue="300"))
    evaluation = evaluate(big, rules, NOW)
    assert evaluation.segments == {"repeat_buyer", "high_value_customer", "vip"}
    assert evaluation.traits == {"order_count": 2, "lifetime_revenue": 750}


def test_activity_levels() -> None:
    rules = compile_rules({"include": ["activity"]})
    expected = {
        3: "recently_active",
        20: "moderately_active",
        60: "activity_at_risk",
        120: "activity_churned",
    }
    for ago, segment in expected.items():
        assert in_group(rules, person(ev("page_viewed", days(ago))), "activity") == [segment]
    assert in_group(rules, person(), "activity") == []


def test_cart_abandonment_with_a_shorter_window() -> None:
    rules = compile_rules({"include": [{"template": "cart_abandonment", "params": {"window": "24h"}}]})
    cart = person(ev("add_to_cart", timedelta(hours=30)))
    assert "cart_abandoner" in evaluate(cart, rules, NOW).segments
    default = compile_rules({"include": ["cart_abandonment"]})
    evaluation = evaluate(cart, default, NOW)
    assert "cart_abandoner" not in evaluation.segments
    assert evaluation.next_due == NOW + timedelta(hours=18)


def test_browse_abandonment_and_high_intent() -> None:
    rules = compile_rules({"include": ["browse_abandonment", "high_intent"]})
    views = [ev("product_viewed", timedelta(minutes=m), category="shoes", time_on_page=40) for m in (1, 2, 3)]
    evaluation = evaluate(person(*views), rules, NOW)
    assert evaluation.segments == {"high_intent_category"}
    later = evaluate(person(*views), rules, NOW + timedelta(hours=2))
    assert later.segments == {"browse_abandoner"}


@pytest.mark.parametrize("next_event", ["add_to_cart", "order_completed"])
def test_browse_abandonment_ends_at_the_next_cart_or_order(next_event: str) -> None:
    rules = compile_rules({"include": ["browse_abandonment"]})
    view = ev("product_viewed", timedelta(hours=6), time_on_page=40)
    assert evaluate(person(view), rules, NOW).segments == {"browse_abandoner"}
    # a cart or an order after the window, but before keep_for ran out, ends the membership
    followed = person(view, ev(next_event, timedelta(hours=1)))
    assert evaluate(followed, rules, NOW).segments == frozenset()
    # a new qualifying view starts it again
    again = person(
        view, ev(next_event, timedelta(hours=5)), ev("product_viewed", timedelta(hours=3), time_on_page=40)
    )
    assert evaluate(again, rules, NOW).segments == {"browse_abandoner"}


def test_re_engagement_candidates() -> None:
    rules = compile_rules({"include": ["re_engagement"]})
    delivered = [ev("email_delivered", days(d)) for d in range(1, 21)]
    low = evaluate(person(*delivered, ev("email_opened", days(2))), rules, NOW)
    assert low.segments == {"re_engagement_candidate"}
    assert low.traits == {"email_open_rate_30d": 0.05}
    high = evaluate(person(*delivered, *(ev("email_opened", days(d)) for d in (1, 2, 3))), rules, NOW)
    assert high.segments == frozenset()
    nothing = evaluate(person(), rules, NOW)
    assert nothing.segments == frozenset()
    assert "division by zero" in render(nothing.explanations["re_engagement_candidate"])


def test_engagement_levels_from_the_composite_score() -> None:
    rules = compile_rules({"include": ["engagement"]})
    busy = person(
        *(ev("email_clicked", days(d)) for d in range(1, 8)),
        *(ev("add_to_cart", days(d)) for d in range(1, 8)),
        *(ev("order_completed", days(d)) for d in (5, 30, 60)),
    )
    evaluation = evaluate(busy, rules, NOW)
    assert evaluation.traits["engagement_score"] == 10
    assert in_group(rules, busy, "engagement") == ["highly_engaged"]
    assert in_group(rules, person(), "engagement") == ["unengaged"]
    assert in_group(rules, person(*(ev("email_opened", days(d)) for d in range(1, 11))), "engagement") == [
        "lightly_engaged"
    ]


def test_explanations_are_json_and_readable_for_every_template_segment() -> None:
    import json

    rules = compile_rules(all_templates_rules())
    profile = person(
        ev("order_completed", days(100), revenue=120),
        ev("order_completed", days(3), revenue="80.5"),
        ev("add_to_cart", timedelta(hours=60), category="hats"),
        ev("product_viewed", timedelta(minutes=5), category="hats", time_on_page=45),
        ev("email_delivered", days(2)),
        ev("email_opened", days(1)),
    )
    evaluation = evaluate(profile, rules, NOW)
    assert set(evaluation.explanations) == set(rules.segment_names)
    for name, explanation in evaluation.explanations.items():
        json.dumps(explanation.detail)
        text = render(explanation)
        assert text.startswith(f"{name}: {'IN' if explanation.member else 'OUT'}")
    json.dumps(evaluation.traits)


def test_a_derived_parameter_follows_its_parts_and_is_not_set_alone() -> None:
    from rules import RulesError

    with pytest.raises(RulesError) as caught:
        compile_rules({"include": [{"template": "lifecycle", "params": {"win_back_quiet_until": "99d"}}]})
    assert caught.value.path == "include[0].params.win_back_quiet_until"
    assert caught.value.reason == "is $win_back_within + $at_risk_after: set those parameters instead"


def test_a_template_s_descriptions_show_its_parameters_values_overrides_included() -> None:
    rules = compile_rules(
        {
            "include": [
                {"template": "lifecycle", "params": {"win_back_within": "14d"}},
                {"template": "vip", "params": {"threshold": 300}},
                {"template": "churn_risk"},
            ]
        }
    )
    described = {name: seg.description.strip() for name, seg in rules.by_name.items()}
    assert described["lifecycle_win_back"] == (
        "Ordered in the last 14d, and that order came at least 90d after the order before it."
    )
    assert described["lifecycle_loyal"] == "5 orders or more."
    assert described["vip"] == "Lifetime revenue of 300 or more."
    assert described["churn_risk_high"] == "Churn risk above 0.7."
    assert not any("$" in text for text in described.values())


def test_every_built_in_segment_is_described_with_its_values() -> None:
    from rules.templates import builtin_templates

    rules = compile_rules({"include": [{"template": name} for name in builtin_templates()]})
    described = {name: seg.description.strip() for name, seg in rules.by_name.items()}
    assert sorted(name for name, text in described.items() if not text) == []
    assert [name for name, text in described.items() if "$" in text] == []
    assert described["cart_abandoner"].startswith("Added to cart and did not order within 48h.")
    assert "at least 3 emails delivered" in described["re_engagement_candidate"]


def test_activity_and_lifecycle_count_the_person_s_own_events_only() -> None:
    """A newsletter reaches someone who last browsed 200 days ago: delivered (and bounced) emails are
    no activity of theirs, so they are churned, not recently active; their first own event decides
    whether they are new."""
    now = datetime(2024, 6, 1, 12, tzinfo=UTC)
    ruleset = compile_rules({"include": ["activity", "lifecycle"]})

    def at(name: str, days: int, n: int) -> EventRecord:
        return EventRecord(name=name, occurred_at=now - timedelta(days=days), event_id=f"e{n}")

    mailed = [at("email_delivered", d, d) for d in range(1, 50, 7)] + [at("email_bounced", 2, 99)]
    lapsed = Profile(account="acme", profile_id="p1", events=[at("page_viewed", 200, 100), *mailed])
    assert sorted(evaluate(lapsed, ruleset, now).segments) == ["activity_churned"]
    subscriber = Profile(
        account="acme", profile_id="p2", events=[at("email_delivered", 100, 1), at("page_viewed", 3, 2)]
    )
    assert sorted(evaluate(subscriber, ruleset, now).segments) == ["lifecycle_new", "recently_active"]
    only_mailed = Profile(account="acme", profile_id="p3", events=mailed)
    assert evaluate(only_mailed, ruleset, now).segments == frozenset()
    # an account may count more (or fewer) names as not the person's
    quieter = compile_rules(
        {"include": [{"template": "activity", "params": {"not_activity": ["page_viewed"]}}]}
    )
    assert sorted(evaluate(lapsed, quieter, now).segments) == ["recently_active"]
