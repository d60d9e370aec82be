"""Time: next_due is exact (nothing changes before it, something changes at it), and evaluation does not
depend on the order in which events arrived. Checked on generated profiles against all templates."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import EventRecord, Profile, compile_rules, evaluate
from rules.templates import all_templates_rules

NOW = datetime(2024, 6, 1, tzinfo=UTC)
US = timedelta(microseconds=1)
RULES = compile_rules(all_templates_rules())
NAMES = (
    "order_completed",
    "add_to_cart",
    "checkout_started",
    "product_viewed",
    "page_viewed",
    "email_delivered",
    "email_opened",
    "email_clicked",
)

# seconds ago: bursts of minutes, days and months, so that every kind of window edge shows up
AGO = st.one_of(
    st.integers(0, 900), st.integers(0, 4 * 86400), st.integers(0, 220 * 86400), st.integers(-60, 60)
)
EVENT = st.tuples(
    st.sampled_from(NAMES),
    AGO,
    st.sampled_from(["shoes", "hats", None]),
    st.one_of(st.none(), st.integers(0, 90)),
    st.sampled_from([10, 250, 900, "12.5", "n/a", None]),
)


def build(
    specs: list[tuple[str, int, str | None, int | None, object]], shuffle: int | None = None
) -> Profile:
    events = []
    for i, (name, ago, category, on_page, revenue) in enumerate(specs):
        props: dict[str, object] = {}
        if category is not None:
            props["category"] = category
        if on_page is not None:
            props["time_on_page"] = on_page
        if revenue is not None and name == "order_completed":
            props["revenue"] = revenue
        events.append(EventRecord(name, NOW - timedelta(seconds=ago), props, f"e{i:03d}"))
    if shuffle is None:
        events.sort(key=lambda e: (e.occurred_at, e.event_id))
    else:
        random.Random(shuffle).shuffle(events)
    return Profile("acme", "p", traits={"signed_up_at": "2024-05-20T00:00:00Z"}, events=events)


def state(profile: Profile, now: datetime) -> tuple[frozenset[str], dict[str, object]]:
    evaluation = evaluate(profile, RULES, now, explain=False)
    return evaluation.segments, dict(evaluation.traits)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, max_size=30))
def test_next_due_is_the_exact_instant_of_the_next_change(specs: list[tuple]) -> None:  # type: ignore[type-arg]
    profile = build(specs)
    evaluation = evaluate(profile, RULES, NOW, explain=False)
    if evaluation.next_due is None:
        return
    assert evaluation.next_due > NOW
    now_state = (evaluation.segments, dict(evaluation.traits))
    assert state(profile, evaluation.next_due - US) == now_state
    assert state(profile, evaluation.next_due) != now_state


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, max_size=25))
def test_each_segment_next_change_is_exact(specs: list[tuple]) -> None:  # type: ignore[type-arg]
    profile = build(specs)
    evaluation = evaluate(profile, RULES, NOW)
    for name, explanation in evaluation.explanations.items():
        if explanation.next_change is None:
            continue
        assert explanation.detail["next_change_exact"], name
        before = evaluate(profile, RULES, explanation.next_change - US, explain=False)
        at = evaluate(profile, RULES, explanation.next_change, explain=False)
        assert (name in before.segments) == explanation.member, name
        assert (name in at.segments) != explanation.member, name


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(EVENT, max_size=30), st.integers(0, 1000))
def test_result_does_not_depend_on_arrival_order(specs: list[tuple], seed: int) -> None:  # type: ignore[type-arg]
    ordered = evaluate(build(specs), RULES, NOW)
    shuffled = evaluate(build(specs, shuffle=seed), RULES, NOW)
    assert shuffled.segments == ordered.segments
    assert shuffled.traits == ordered.traits
    assert shuffled.next_due == ordered.next_due
    assert shuffled.explanations == ordered.explanations


def test_walking_time_forward_by_next_due_visits_every_change() -> None:
    """Re-evaluating only at next_due gives the same memberships as checking every hour."""
    specs = [
        ("add_to_cart", 3600, None, None, None),
        ("order_completed", 80 * 86400, None, None, 100),
        ("product_viewed", 600, "shoes", 40, None),
        ("product_viewed", 300, "shoes", None, None),
        ("product_viewed", 200, "shoes", None, None),
        ("email_delivered", 86400, None, None, None),
        ("email_delivered", 2 * 86400, None, None, None),
        ("email_delivered", 3 * 86400, None, None, None),
    ]
    profile = build(specs)
    due_walk = {}
    instant: datetime | None = NOW
    while instant is not None and instant < NOW + timedelta(days=120):
        evaluation = evaluate(profile, RULES, instant, explain=False)
        due_walk[instant] = evaluation.segments
        instant = evaluation.next_due
    checkpoints = sorted(due_walk)
    hour = NOW
    while hour < NOW + timedelta(days=120):
        latest = max(c for c in checkpoints if c <= hour)
        assert evaluate(profile, RULES, hour, explain=False).segments == due_walk[latest], hour
        hour += timedelta(hours=1)


@pytest.mark.parametrize(
    ("instant", "within", "older_than"),
    [
        ("9999-12-31T23:59:59Z", True, False),  # "never" in many systems: in the future, not old
        ("9999-12-31T00:00:00-05:00", True, False),
        ("0001-01-01T00:00:00Z", False, True),
    ],
)
def test_trait_dates_at_the_ends_of_the_calendar_are_compared_without_failing(
    instant: str, within: bool, older_than: bool
) -> None:
    # the window's edge past year 9999 cannot be an instant: the evaluation failed for the profile
    rules = compile_rules(
        {
            "segments": [
                {"name": "recent", "when": {"trait": {"name": "renews_at", "within": "30d"}}},
                {"name": "old", "when": {"trait": {"name": "renews_at", "older_than": "100y"}}},
                {
                    "name": "both",
                    "when": {
                        "all": [
                            {"trait": {"name": "renews_at", "within": "30d"}},
                            {"count": {"event": "order_completed", "within": "30d", "gte": 1}},
                        ]
                    },
                },
            ]
        }
    )
    now = datetime(2026, 5, 1, tzinfo=UTC)
    event = EventRecord("order_completed", now - timedelta(days=1), {}, "0" * 16)
    profile = Profile("a", "p", {}, {"renews_at": instant}, [event])
    result = evaluate(profile, rules, now)
    assert ("recent" in result.segments) is within
    assert ("old" in result.segments) is older_than
    assert ("both" in result.segments) is within
    # the order's window is the only change ahead, and only where the date is recent
    assert result.next_due == (now + timedelta(days=29) if within else None)
