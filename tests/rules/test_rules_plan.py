"""The worker's evaluation on a rule set's prepared plan (``rules.plan``) equals the generic walk of
the condition trees (``rules.evaluate.walk_evaluate``): memberships, computed traits and next_due,
for full and incremental evaluation, across random profiles (histories from empty to a few dozen
events, with and without profile traits), every built-in template plus segments that refer to other
segments, read traits, split events with for_some and have A/B variants, at random instants.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rules import EventRecord, Profile, compile_rules, evaluate
from rules.evaluate import _evaluate, changed_inputs, evaluate_changed, walk_evaluate
from rules.templates import all_templates_rules

from . import test_rules_incremental as incremental
from .test_rules_incremental import EXTRA

T0 = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)

VARIANTS: list[dict[str, Any]] = [
    {"name": "fan", "when": {"count": {"event": "product_viewed", "within": ["2d", "20d"], "gte": [2, 3]}}},
    {
        "name": "cart_quick",
        "when": {
            "sequence": {
                "first": {"event": "add_to_cart"},
                "then_not": {"event": "order_completed"},
                "within": ["1h", "2d"],
            }
        },
    },
    {"name": "fan_not_buyer", "when": {"all": [{"in_segment": "fan"}, {"not_in_segment": "repeat_buyer"}]}},
]


def _rules() -> Any:
    base = all_templates_rules()
    merged = dict(base)
    # a computed trait over events no segment reads
    merged["traits"] = {
        **base.get("traits", {}),
        "refunds_1mo": {"count": {"event": "refund_issued", "within": "1mo"}},
    }
    merged["segments"] = list(base.get("segments", [])) + EXTRA["segments"] + VARIANTS
    merged["groups"] = list(base.get("groups", [])) + EXTRA["groups"]
    return compile_rules(merged)


RULESET = _rules()
NAMES = [*incremental.NAMES, "refund_issued"]  # refund_issued: read by a computed trait only
TRAITS = st.fixed_dictionaries(
    {},
    optional={
        "plan": st.sampled_from(["pro", "free"]),
        "predicted.churn_risk": st.sampled_from([0.2, 0.9, "high"]),
        "predicted.expected_next_order_at": st.sampled_from(
            [T0 - timedelta(days=20), T0 - timedelta(days=3), (T0 + timedelta(days=2)).isoformat()]
        ),
        "predicted.rank.predicted_clv": st.sampled_from([0.05, 0.3, 0.6, 0.95]),
    },
)


@st.composite
def events(draw: Any, latest: datetime, first: int, most: int) -> list[EventRecord]:
    # few names per profile, as first-touch profiles have: most names are absent
    names = draw(st.lists(st.sampled_from(NAMES), min_size=1, max_size=4, unique=True))
    span = draw(st.sampled_from([3600, 3 * 86400, 40 * 86400, 400 * 86400]))
    out = []
    for n in range(draw(st.integers(first, most))):
        name = draw(st.sampled_from(names))
        props = draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "category": st.sampled_from(["shoes", "bags", "hats"]),
                    "revenue": st.integers(1, 900),
                    "time_on_page": st.integers(0, 120),
                },
            )
        )
        at = latest - timedelta(seconds=draw(st.integers(0, span)))
        out.append(EventRecord(name, at, props, f"e{first}-{n}"))
    return out


def _profile(records: list[EventRecord], traits: dict[str, Any], pid: str = "p1") -> Profile:
    ordered = sorted(records, key=lambda e: (e.occurred_at, e.event_id))
    return Profile("acct", pid, {}, traits, tuple(ordered))


def _same(a: Any, b: Any) -> None:
    assert a.segments == b.segments
    assert a.traits == b.traits
    assert a.next_due == b.next_due


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(
    events(T0, 0, 30),
    TRAITS,
    st.integers(-2 * 86400, 60 * 86400),
    st.sampled_from(["p1", "p2", "p3", "p4"]),
)
def test_the_plan_agrees_with_the_walk(records: Any, traits: Any, offset: int, pid: str) -> None:
    profile = _profile(records, traits, pid)
    now = T0 + timedelta(seconds=offset)
    planned = evaluate(profile, RULESET, now, explain=False)
    _same(planned, walk_evaluate(profile, RULESET, now))
    # and at the instant it gives, where something changes
    if planned.next_due is not None:
        _same(
            _evaluate(profile, RULESET, planned.next_due, None),
            walk_evaluate(profile, RULESET, planned.next_due),
        )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow], derandomize=True)
@given(events(T0, 0, 25), events(T0 + timedelta(days=3), 100, 103), TRAITS, st.integers(0, 30 * 86400))
def test_incremental_evaluation_on_the_plan_agrees_with_the_walk(
    before: Any, after: Any, traits: Any, step: int
) -> None:
    first = evaluate(_profile(before, traits), RULESET, T0, explain=False)
    t1 = T0 + timedelta(seconds=step)
    if first.next_due is not None and t1 >= first.next_due:
        t1 = first.next_due - timedelta(microseconds=1)
    t1 = max(t1, T0)
    arrived = [e for e in after if e.occurred_at <= t1] or [EventRecord(after[0].name, t1, {}, "e-last")]
    profile = _profile(before + arrived, traits)
    names = {e.name for e in arrived}
    incremental = evaluate_changed(
        profile, RULESET, t1, members=first.segments, due=first.next_due, names=names
    )
    known, prior = changed_inputs(RULESET, first.segments, first.next_due, names)
    _same(incremental, walk_evaluate(profile, RULESET, t1, known, prior))
    _same(incremental, walk_evaluate(profile, RULESET, t1))


def test_every_segment_kind_is_in_the_rule_set_checked() -> None:
    from rules.conditions import Compare, ForSome, InSegment, Junction, Not, Sequence_

    kinds: set[type] = set()

    def walk(c: Any) -> None:
        kinds.add(type(c))
        for child in c.children():
            walk(child)

    for segment in RULESET.segments:
        walk(segment.matched)
        for variant in segment.variants:
            walk(variant)
    assert {Compare, ForSome, InSegment, Junction, Not, Sequence_} <= kinds
    assert any(s.variants for s in RULESET.segments)
    assert RULESET.groups


def test_past_the_cap_of_known_results_everything_is_evaluated(monkeypatch: Any) -> None:
    from rules import plan as plan_module

    monkeypatch.setattr(plan_module, "CONSTANTS_CAP", 0)
    rules = _rules()  # a rule set of its own: its plan keeps nothing
    records = [
        EventRecord("page_viewed", T0 - timedelta(days=2), {}, "a"),
        EventRecord("order_completed", T0 - timedelta(days=40), {"revenue": 600}, "b"),
    ]
    for traits in ({}, {"predicted.churn_risk": 0.9}):
        profile = _profile(records, traits)
        _same(evaluate(profile, rules, T0, explain=False), walk_evaluate(profile, rules, T0))
    assert plan_module.plan_of(rules)._constants == {}
    assert evaluate(_profile(records, {}), rules, T0, explain=False).segments >= {"high_value_customer"}
