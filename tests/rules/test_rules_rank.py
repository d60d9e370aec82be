"""``rank`` conditions (a profile's position in the account's distribution of a predicted trait as of the
last training), the value_tiers and churn_risk templates, and the overdue next order that fires at its
exact instant."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rules import Profile, RulesError, compile_rules, evaluate
from rules.model import EventRecord

NOW = datetime(2024, 6, 1, tzinfo=UTC)


def _profile(**traits: object) -> Profile:
    return Profile(account="acme", profile_id="p1", traits=traits)


def _segments(rules: dict[str, object], profile: Profile, now: datetime = NOW) -> frozenset[str]:
    return evaluate(profile, compile_rules(rules), now).segments


@pytest.mark.parametrize(
    ("share", "expected"),
    [
        (0.01, "value_tier_top"),
        (0.10, "value_tier_top"),
        (0.1001, "value_tier_high"),
        (0.40, "value_tier_high"),
        (0.55, "value_tier_middle"),
        (0.80, "value_tier_middle"),
        (0.81, "value_tier_bottom"),
        (1.0, "value_tier_bottom"),
    ],
)
def test_value_tiers_partition_the_account_by_predicted_clv(share: float, expected: str) -> None:
    found = _segments({"include": ["value_tiers"]}, _profile(**{"predicted.rank.predicted_clv": share}))
    assert found == {expected}


def test_no_prediction_means_no_tier() -> None:
    assert _segments({"include": ["value_tiers"]}, _profile()) == frozenset()


def test_rank_top_bottom_between_accept_percentages_and_fractions() -> None:
    rules = {
        "segments": [
            {"name": "top", "when": {"rank": {"trait": "predicted_clv", "top": "10%"}}},
            {"name": "bottom", "when": {"rank": {"trait": "predicted.churn_risk", "bottom": 0.5}}},
            {"name": "mid", "when": {"rank": {"trait": "expected_orders_90d", "between": ["10%", "40%"]}}},
        ]
    }
    profile = _profile(
        **{
            "predicted.rank.predicted_clv": 0.05,
            "predicted.rank.churn_risk": 0.9,
            "predicted.rank.expected_orders_90d": 0.1,
        }
    )
    assert _segments(rules, profile) == {"top", "bottom"}


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ({"trait": "predicted_clv"}, "exactly one of top, bottom, between"),
        ({"trait": "predicted_clv", "top": "10%", "bottom": "10%"}, "exactly one of top, bottom, between"),
        ({"trait": "predicted_clv", "top": "ten%"}, "not a percentage"),
        ({"trait": "predicted_clv", "top": "150%"}, "between 0% and 100%"),
        ({"trait": "predicted_clv", "between": ["40%", "10%"]}, "first share must be below the second"),
    ],
)
def test_bad_rank_conditions_are_refused_with_the_reason(arg: dict[str, object], message: str) -> None:
    with pytest.raises(RulesError, match=message):
        compile_rules({"segments": [{"name": "s", "when": {"rank": arg}}]})


def test_churn_risk_template_reads_the_predicted_trait() -> None:
    assert _segments({"include": ["churn_risk"]}, _profile(**{"predicted.churn_risk": 0.71})) == {
        "churn_risk_high"
    }
    assert _segments({"include": ["churn_risk"]}, _profile(**{"predicted.churn_risk": 0.7})) == frozenset()


def test_overdue_next_order_fires_at_its_exact_instant() -> None:
    expected = datetime(2024, 6, 10, 12, 0, tzinfo=UTC)
    profile = _profile(**{"predicted.expected_next_order_at": "2024-06-10T12:00:00Z"})
    rules = compile_rules({"include": ["churn_risk"]})
    before = evaluate(profile, rules, NOW)
    assert "next_order_overdue" not in before.segments
    assert before.next_due == expected + timedelta(days=14)
    just_before = evaluate(profile, rules, expected + timedelta(days=14) - timedelta(seconds=1))
    assert "next_order_overdue" not in just_before.segments
    at = evaluate(profile, rules, expected + timedelta(days=14))
    assert "next_order_overdue" in at.segments


def test_an_order_event_does_not_confuse_rank_conditions() -> None:
    profile = Profile(
        account="acme",
        profile_id="p1",
        traits={"predicted.rank.predicted_clv": 0.3},
        events=(EventRecord("order_completed", NOW - timedelta(days=1), {"revenue": 10.0}, "e1"),),
    )
    assert _segments({"include": ["value_tiers"]}, profile) == {"value_tier_high"}
