"""Comparing two groups (treated and control, or two variants): the difference of two proportions
with Newcombe's hybrid score interval (method 10, from Wilson intervals) next to the Wald interval,
the difference of two means with Welch's interval (Welch-Satterthwaite degrees of freedom), the
lift, and a plain warning while the samples are too small to say anything.

Stdlib only (the t quantile by bisection on the regularized incomplete beta function); the tests
check every figure against scipy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

CONFIDENCE = 0.95
MIN_GROUP = 100  # members per group below which nothing is concluded
MIN_EVENTS = 10  # conversions per group below which a proportion's interval is not trusted


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def to_dict(self) -> dict[str, float]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high}

    @property
    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0


def _z(confidence: float) -> float:
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    if n == 0:
        return (0.0, 1.0)
    z = _z(confidence)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (max(0.0, centre - half), min(1.0, centre + half))


def newcombe(s1: int, n1: int, s2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """p1 - p2 with Newcombe's hybrid score interval."""
    p1, p2 = (s1 / n1 if n1 else 0.0), (s2 / n2 if n2 else 0.0)
    l1, u1 = wilson(s1, n1, confidence)
    l2, u2 = wilson(s2, n2, confidence)
    d = p1 - p2
    return Interval(
        d, d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2), d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2)
    )


def wald(s1: int, n1: int, s2: int, n2: int, confidence: float = CONFIDENCE) -> Interval:
    """p1 - p2 with the Wald interval."""
    p1, p2 = (s1 / n1 if n1 else 0.0), (s2 / n2 if n2 else 0.0)
    se = math.sqrt((p1 * (1 - p1) / n1 if n1 else 0.0) + (p2 * (1 - p2) / n2 if n2 else 0.0))
    z = _z(confidence)
    return Interval(p1 - p2, p1 - p2 - z * se, p1 - p2 + z * se)


def moments(n: int, total: float, squares: float) -> tuple[float, float]:
    """Mean and sample variance from a count, a sum and a sum of squares."""
    if n == 0:
        return (0.0, 0.0)
    mean = total / n
    var = max(0.0, (squares - n * mean * mean) / (n - 1)) if n > 1 else 0.0
    return (mean, var)


def welch(
    n1: int, sum1: float, sq1: float, n2: int, sum2: float, sq2: float, confidence: float = CONFIDENCE
) -> Interval:
    """mean1 - mean2 with Welch's interval, from counts, sums and sums of squares."""
    m1, v1 = moments(n1, sum1, sq1)
    m2, v2 = moments(n2, sum2, sq2)
    d = m1 - m2
    if n1 < 2 or n2 < 2:
        return Interval(d, -math.inf, math.inf)
    a, b = v1 / n1, v2 / n2
    se = math.sqrt(a + b)
    if se == 0:
        return Interval(d, d, d)
    df = (a + b) ** 2 / (a * a / (n1 - 1) + b * b / (n2 - 1))
    half = t_quantile(0.5 + confidence / 2, df) * se
    return Interval(d, d - half, d + half)


def lift(treated: float, control: float) -> float | None:
    """(treated - control) / control; None when the control's figure is 0."""
    return None if control == 0 else (treated - control) / control


def warning(n_treated: int, n_control: int, events_treated: int, events_control: int) -> str | None:
    """Why the comparison says nothing yet, or None."""
    if min(n_treated, n_control) < MIN_GROUP:
        return f"too few members to compare (fewer than {MIN_GROUP} in a group): the figures say nothing yet"
    if min(events_treated, events_control) < MIN_EVENTS:
        return (
            f"too few conversions to compare (fewer than {MIN_EVENTS} in a group): "
            "the figures say nothing yet"
        )
    return None


# -- the t distribution (stdlib) --------------------------------------------------------------


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(
        math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    )
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2, 0.5, df / (df + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, df: float) -> float:
    """The ``p`` quantile of Student's t with ``df`` degrees of freedom (bisection)."""
    low, high = -1e3, 1e3
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, df) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2
