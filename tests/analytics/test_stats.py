"""The comparison statistics against scipy as the reference implementation."""

from __future__ import annotations

import random

import pytest
from scipy import stats as sp

from connector.analytics import stats


@pytest.mark.parametrize(("s1", "n1", "s2", "n2"), [(56, 70, 48, 80), (9, 10, 3, 10), (120, 1000, 95, 1000)])
def test_newcombe_interval_combines_scipys_wilson_intervals(s1: int, n1: int, s2: int, n2: int) -> None:
    w1 = sp.binomtest(s1, n1).proportion_ci(method="wilson")
    w2 = sp.binomtest(s2, n2).proportion_ci(method="wilson")
    p1, p2 = s1 / n1, s2 / n2
    low = p1 - p2 - ((p1 - w1.low) ** 2 + (w2.high - p2) ** 2) ** 0.5
    high = p1 - p2 + ((w1.high - p1) ** 2 + (p2 - w2.low) ** 2) ** 0.5
    got = stats.newcombe(s1, n1, s2, n2)
    assert got.low == pytest.approx(low, abs=1e-9) and got.high == pytest.approx(high, abs=1e-9)


def test_newcombe_matches_the_published_example() -> None:
    # Newcombe (1998), Table II, example (a): 56/70 vs 48/80 -> 0.0524 to 0.3339
    got = stats.newcombe(56, 70, 48, 80)
    assert got.low == pytest.approx(0.0524, abs=1e-4) and got.high == pytest.approx(0.3339, abs=1e-4)


def test_wald_interval() -> None:
    got = stats.wald(120, 1000, 95, 1000)
    p1, p2 = 0.12, 0.095
    se = (p1 * (1 - p1) / 1000 + p2 * (1 - p2) / 1000) ** 0.5
    z = sp.norm.ppf(0.975)
    assert got.low == pytest.approx(p1 - p2 - z * se) and got.high == pytest.approx(p1 - p2 + z * se)


def test_welch_interval_matches_scipys_ttest() -> None:
    rng = random.Random(7)
    a = [rng.expovariate(1 / 40) if rng.random() < 0.3 else 0.0 for _ in range(400)]
    b = [rng.expovariate(1 / 35) if rng.random() < 0.25 else 0.0 for _ in range(150)]
    ref = sp.ttest_ind(a, b, equal_var=False).confidence_interval(0.95)
    got = stats.welch(len(a), sum(a), sum(x * x for x in a), len(b), sum(b), sum(x * x for x in b))
    assert got.low == pytest.approx(ref.low, rel=1e-6) and got.high == pytest.approx(ref.high, rel=1e-6)


def test_t_quantile_matches_scipy() -> None:
    for df in (1.5, 3, 12.7, 200):
        assert stats.t_quantile(0.975, df) == pytest.approx(sp.t.ppf(0.975, df), rel=1e-9)


def test_lift_and_the_small_sample_warning() -> None:
    assert stats.lift(0.12, 0.10) == pytest.approx(0.2)
    assert stats.lift(0.1, 0.0) is None
    assert "too few members" in (stats.warning(5000, 40, 300, 3) or "")
    assert "too few conversions" in (stats.warning(5000, 400, 300, 3) or "")
    assert stats.warning(5000, 500, 300, 30) is None
