"""The rule language as marketers write it: one condition per group (``for_some``), calendar months
(``12mo``, ``1y``) with exact window edges, and ``always`` as the last stage of an exclusive group."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules import EventRecord, Profile, RulesError, compile_rules, evaluate
from rules.durations import Months, format_duration, parse_duration

US = timedelta(microseconds=1)


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def profile(*events: tuple[str, str, dict[str, object]]) -> Profile:
    records = [
        EventRecord(name, at(when), props, f"e{i:03d}") for i, (name, when, props) in enumerate(events)
    ]
    records.sort(key=lambda e: (e.occurred_at, e.event_id))
    return Profile("acme", "p", traits={}, events=records)


def members(p: Profile, rules: object, now: datetime) -> frozenset[str]:
    return evaluate(p, rules, now, explain=False).segments  # type: ignore[arg-type]


# -- for_some: several conditions on the same group ----------------------------------------------------

CATEGORY_INTENT = compile_rules(
    {
        "segments": [
            {
                "name": "category_intent",
                "when": {
                    "for_some": {
                        "group_by": "category",
                        "event": "product_viewed",
                        "when": {
                            "all": [
                                {"count": {"event": "product_viewed", "gte": 3}},
                                {"last": {"event": "product_viewed", "within": "2h"}},
                            ]
                        },
                    }
                },
            }
        ]
    }
)


def three_shoes_then_a_hat() -> Profile:
    return profile(
        ("product_viewed", "2024-06-01T08:00:00", {"category": "shoes"}),
        ("product_viewed", "2024-06-01T08:30:00", {"category": "shoes"}),
        ("product_viewed", "2024-06-01T09:00:00", {"category": "shoes"}),
        ("product_viewed", "2024-06-01T10:30:00", {"category": "hats"}),
    )


def test_for_some_holds_until_exactly_two_hours_after_the_last_view_of_that_category() -> None:
    p = three_shoes_then_a_hat()
    # the hat view at 10:30 is recent, but hats have one view; shoes' last view is 09:00
    assert members(p, CATEGORY_INTENT, at("2024-06-01T10:59:59")) == {"category_intent"}
    assert members(p, CATEGORY_INTENT, at("2024-06-01T11:00:00") - US) == {"category_intent"}
    assert members(p, CATEGORY_INTENT, at("2024-06-01T11:00:00")) == frozenset()
    ev = evaluate(p, CATEGORY_INTENT, at("2024-06-01T10:40:00"), explain=False)
    assert ev.next_due == at("2024-06-01T11:00:00")
    explained = evaluate(p, CATEGORY_INTENT, at("2024-06-01T10:40:00"))
    assert explained.explanations["category_intent"].next_change == at("2024-06-01T11:00:00")
    assert explained.explanations["category_intent"].detail["condition"]["value"] == ["shoes"]


def test_for_some_does_not_mix_groups() -> None:
    # the global question (>= 3 views, last view < 2h) holds at 10:40; the per-category one does not
    p = profile(
        ("product_viewed", "2024-06-01T06:00:00", {"category": "shoes"}),
        ("product_viewed", "2024-06-01T06:10:00", {"category": "shoes"}),
        ("product_viewed", "2024-06-01T06:20:00", {"category": "shoes"}),
        ("product_viewed", "2024-06-01T10:30:00", {"category": "hats"}),
    )
    assert members(p, CATEGORY_INTENT, at("2024-06-01T10:40:00")) == frozenset()
    explained = evaluate(p, CATEGORY_INTENT, at("2024-06-01T10:40:00"))
    assert explained.explanations["category_intent"].member is False


def test_for_some_without_any_grouped_event_is_false_not_unknown() -> None:
    p = profile(("product_viewed", "2024-06-01T06:00:00", {}))
    rules = compile_rules(
        {
            "segments": [
                {"name": "s", "when": {"not": {"for_some": {"group_by": "category", "when": "always"}}}}
            ]
        }
    )
    assert members(p, rules, at("2024-06-01T07:00:00")) == {"s"}


def test_for_some_refuses_segment_references_inside() -> None:
    with pytest.raises(RulesError) as err:
        compile_rules(
            {
                "segments": [
                    {"name": "a", "when": "always"},
                    {
                        "name": "b",
                        "when": {"for_some": {"group_by": "category", "when": {"in_segment": "a"}}},
                    },
                ]
            }
        )
    assert err.value.path == "segments[1].when.for_some.when.in_segment"


def test_for_some_needs_group_by_and_a_condition() -> None:
    with pytest.raises(RulesError) as err:
        compile_rules({"segments": [{"name": "b", "when": {"for_some": {"when": "always"}}}]})
    assert err.value.path == "segments[0].when.for_some.group_by"


# -- calendar months ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "span", "end"),
    [
        ("2024-01-15T10:00:00", "1mo", "2024-02-15T10:00:00"),
        ("2023-01-31T10:00:00", "1mo", "2023-03-01T00:00:00"),  # no Feb 31: the span ends with February
        ("2024-01-31T10:00:00", "1mo", "2024-03-01T00:00:00"),  # no Feb 31 in a leap year either
        ("2024-01-29T10:00:00", "1mo", "2024-02-29T10:00:00"),  # leap day exists in 2024
        ("2023-01-29T10:00:00", "1mo", "2023-03-01T00:00:00"),  # and not in 2023
        ("2024-02-29T12:00:00", "12mo", "2025-03-01T00:00:00"),
        ("2024-02-29T12:00:00", "1y", "2025-03-01T00:00:00"),
        ("2024-02-29T12:00:00", "48mo", "2028-02-29T12:00:00"),
        ("2024-12-15T00:00:00", "1mo", "2025-01-15T00:00:00"),
        ("2024-03-31T00:00:00", "1mo1d", "2024-05-02T00:00:00"),
    ],
)
def test_calendar_month_arithmetic(start: str, span: str, end: str) -> None:
    assert at(start) + parse_duration(span) == at(end)


def test_month_durations_are_parsed_and_spelled() -> None:
    assert parse_duration("12mo") == Months(12)
    assert parse_duration("1y6mo") == Months(18)
    assert format_duration(parse_duration("1mo2d")) == "1mo2d"
    assert parse_duration("10m") == timedelta(minutes=10)  # m stays minutes
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("12 months")


TENURE = compile_rules(
    {
        "segments": [
            {"name": "tenured", "when": {"first": {"event": "order_completed", "older_than": "12mo"}}},
            {
                "name": "month_buyer",
                "when": {"count": {"event": "order_completed", "within": "1mo", "gte": 1}},
            },
        ]
    }
)


def test_twelve_months_since_the_first_order_on_a_leap_day() -> None:
    p = profile(("order_completed", "2024-02-29T12:00:00", {}))
    assert members(p, TENURE, at("2025-02-28T23:59:59")) == frozenset()
    assert members(p, TENURE, at("2025-03-01T00:00:00")) == {"tenured"}
    ev = evaluate(p, TENURE, at("2024-12-01T00:00:00"), explain=False)
    assert ev.next_due == at("2025-03-01T00:00:00")
    assert evaluate(p, TENURE, at("2024-12-01T00:00:00")).explanations["tenured"].next_change == at(
        "2025-03-01T00:00:00"
    )


def test_within_one_month_leaves_at_the_end_of_a_short_month() -> None:
    p = profile(("order_completed", "2023-01-31T18:00:00", {}))
    assert members(p, TENURE, at("2023-02-28T23:59:59")) == {"month_buyer"}
    assert members(p, TENURE, at("2023-03-01T00:00:00")) == frozenset()
    assert evaluate(p, TENURE, at("2023-02-10T00:00:00"), explain=False).next_due == at("2023-03-01T00:00:00")
    q = profile(("order_completed", "2024-01-15T18:00:00", {}))
    assert evaluate(q, TENURE, at("2024-01-20T00:00:00"), explain=False).next_due == at("2024-02-15T18:00:00")


def test_month_windows_are_exact_around_month_ends_with_ties() -> None:
    # Jan 29, 30 and 31 all leave a one-month window at Mar 1 00:00 in 2023
    p = profile(
        ("order_completed", "2023-01-29T23:00:00", {}),
        ("order_completed", "2023-01-30T01:00:00", {}),
        ("order_completed", "2023-01-31T05:00:00", {}),
    )
    rules = compile_rules(
        {"traits": {"orders_1mo": {"count": {"event": "order_completed", "within": "1mo"}}}}
    )
    assert evaluate(p, rules, at("2023-02-28T23:59:59"), explain=False).traits["orders_1mo"] == 3
    assert evaluate(p, rules, at("2023-03-01T00:00:00"), explain=False).traits["orders_1mo"] == 0
    assert evaluate(p, rules, at("2023-02-01T00:00:00"), explain=False).next_due == at("2023-03-01T00:00:00")


DAYS = st.datetimes(min_value=datetime(2023, 1, 1), max_value=datetime(2025, 12, 31)).map(
    lambda d: d.replace(tzinfo=UTC)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(DAYS, min_size=1, max_size=6), DAYS)
def test_month_next_due_is_exact(times: list[datetime], now: datetime) -> None:
    p = Profile(
        "acme",
        "p",
        traits={},
        events=sorted(
            (EventRecord("order_completed", t, {}, f"e{i}") for i, t in enumerate(times)),
            key=lambda e: (e.occurred_at, e.event_id),
        ),
    )
    before = evaluate(p, TENURE, now, explain=False)
    if before.next_due is None:
        return
    assert before.next_due > now
    assert evaluate(p, TENURE, before.next_due - US, explain=False).segments == before.segments
    assert evaluate(p, TENURE, before.next_due, explain=False).segments != before.segments


def test_month_durations_as_template_parameters() -> None:
    rules = compile_rules({"include": [{"template": "lifecycle", "params": {"churned_after": "6mo"}}]})
    assert "lifecycle_churned" in rules.segment_names
    assert rules.max_lookback is None or rules.max_lookback >= timedelta(days=186)


# -- always ------------------------------------------------------------------------------------------------

STAGES = {
    "segments": [
        {"name": "buyer", "when": {"count": {"event": "order_completed", "gte": 1}}},
        {"name": "visitor", "when": "always"},
    ],
    "groups": [{"name": "stage", "segments": ["buyer", "visitor"]}],
}


def test_always_is_the_last_stage_of_an_exclusive_group() -> None:
    rules = compile_rules(STAGES)
    now = at("2024-06-01T00:00:00")
    assert members(profile(), rules, now) == {"visitor"}
    assert members(profile(("order_completed", "2024-05-01T00:00:00", {})), rules, now) == {"buyer"}
    explained = evaluate(profile(), rules, now)
    assert explained.explanations["visitor"].member is True
    assert explained.next_due is None
    # it reads no event: a rule set of only "always" needs no history
    only = compile_rules({"segments": [{"name": "everyone", "when": "always"}]})
    assert only.referenced_properties() == {}
    assert only.max_lookback is None or only.max_lookback == timedelta(0)


def test_always_as_a_mapping_and_refusals() -> None:
    rules = compile_rules({"segments": [{"name": "everyone", "when": {"always": True}}]})
    assert members(profile(), rules, at("2024-06-01T00:00:00")) == {"everyone"}
    with pytest.raises(RulesError) as err:
        compile_rules({"segments": [{"name": "everyone", "when": {"always": False}}]})
    assert err.value.path == "segments[0].when.always"
    with pytest.raises(RulesError):
        compile_rules({"segments": [{"name": "everyone", "when": "sometimes"}]})
