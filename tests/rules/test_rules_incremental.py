"""Incremental evaluation (``rules.evaluate_changed``) always agrees with a full evaluation.

A profile is evaluated in full at ``t0``; new events of a few names arrive (some late, with an
``occurred_at`` before ``t0``) and it is evaluated again at a ``t1`` before the first result's
``next_due``, both in full and incrementally from the first result: memberships, computed traits
and ``next_due`` must be equal.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import EventRecord, Profile, compile_rules, evaluate
from rules.dependencies import dependencies
from rules.evaluate import evaluate_changed
from rules.templates import all_templates_rules

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

# Every built-in template, plus segments that refer to other segments, read a profile trait, split
# events with for_some, and an exclusive group whose members read different events.
EXTRA: dict[str, Any] = {
    "segments": [
        {
            "name": "shoe_fan",
            "when": {
                "for_some": {
                    "group_by": "category",
                    "event": "product_viewed",
                    "when": {"count": {"event": "product_viewed", "gte": 2}},
                }
            },
        },
        {
            "name": "pro_viewer",
            "when": {
                "all": [
                    {"trait": {"name": "plan", "eq": "pro"}},
                    {"last": {"event": "page_viewed", "within": "3d"}},
                ]
            },
        },
        {
            "name": "fan_buyer",
            "when": {"all": [{"in_segment": "shoe_fan"}, {"count": {"event": "order_completed", "gte": 1}}]},
        },
        {"name": "opener", "when": {"last": {"event": "email_opened", "within": "2d"}}},
        {"name": "clicker", "when": {"last": {"event": "email_clicked", "within": "5d"}}},
        {"name": "quiet", "when": "always"},
    ],
    "groups": [{"name": "mail", "segments": ["opener", "clicker", "quiet"]}],
}


def _rules() -> Any:
    base = all_templates_rules()
    merged = dict(base)
    merged["segments"] = list(base.get("segments", [])) + EXTRA["segments"]
    merged["groups"] = list(base.get("groups", [])) + EXTRA["groups"]
    return compile_rules(merged)


RULESET = _rules()
NAMES = [
    "product_viewed",
    "page_viewed",
    "add_to_cart",
    "checkout_started",
    "order_completed",
    "email_delivered",
    "email_opened",
    "email_clicked",
    "newsletter_signup",  # read by no rule
]


def _event(draw: Any, n: int, latest: datetime) -> EventRecord:
    name = draw(st.sampled_from(NAMES))
    ago = timedelta(seconds=draw(st.integers(0, 400 * 86400)))
    props = {
        "category": draw(st.sampled_from(["shoes", "bags", "hats"])),
        "revenue": draw(st.integers(1, 900)),
        "time_on_page": draw(st.integers(0, 120)),
    }
    return EventRecord(name, latest - ago, props, f"e{n}")


@st.composite
def histories(draw: Any) -> tuple[list[EventRecord], timedelta, list[EventRecord], dict[str, Any]]:
    before = [_event(draw, n, T0) for n in range(draw(st.integers(0, 25)))]
    step = timedelta(seconds=draw(st.integers(0, 30 * 86400)))
    after = [_event(draw, 100 + n, T0 + step) for n in range(draw(st.integers(1, 4)))]
    traits = draw(st.sampled_from([{}, {"plan": "pro"}, {"plan": "free"}]))
    return before, step, after, traits


def _profile(events: list[EventRecord], traits: dict[str, Any]) -> Profile:
    ordered = sorted(events, key=lambda e: (e.occurred_at, e.event_id))
    return Profile("acct", "p1", {}, traits, tuple(ordered))


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(histories())
def test_incremental_evaluation_agrees_with_full(case: Any) -> None:
    before, step, after, traits = case
    first = evaluate(_profile(before, traits), RULESET, T0, explain=False)
    t1 = T0 + step
    if first.next_due is not None and t1 >= first.next_due:
        t1 = first.next_due - timedelta(microseconds=1)
    t1 = max(t1, T0)
    arrived = [e for e in after if e.occurred_at <= t1] or [EventRecord(after[0].name, t1, {}, "e-last")]
    profile = _profile(before + arrived, traits)
    full = evaluate(profile, RULESET, t1, explain=False)
    names = {e.name for e in arrived}
    incremental = evaluate_changed(
        profile, RULESET, t1, members=first.segments, due=first.next_due, names=names
    )
    assert incremental.segments == full.segments
    assert incremental.traits == full.traits
    assert incremental.next_due == full.next_due


def test_only_the_segments_an_event_can_change_are_affected() -> None:
    deps = dependencies(RULESET)
    opened = deps.affected(RULESET, ["email_opened"])
    assert "opener" in opened.own and "clicker" not in opened.own  # clicker's own condition is unchanged
    assert {"opener", "clicker", "quiet"} <= opened.changed  # but it may win or lose the group
    assert "pro_viewer" in opened.own  # reads a profile trait: always
    assert "vip" not in opened.changed and "cart_abandoner" not in opened.changed
    viewed = deps.affected(RULESET, ["product_viewed"])
    assert {"shoe_fan", "fan_buyer", "browse_abandoner"} <= viewed.own  # fan_buyer refers to shoe_fan
    assert "lifecycle_new" in viewed.own and "lifecycle_loyal" not in viewed.own  # new reads any event
    anything = deps.affected(RULESET, ["newsletter_signup"])
    assert "recently_active" in anything.own and "cart_abandoner" not in anything.changed
