"""The purchase, spend and RFM models, in numpy/scipy only (no Redis, no clock).

* :class:`BgNbd`: the BG/NBD purchase model (Fader, Hardie & Lee 2005, "Counting your customers the
  easy way"), fitted by maximum likelihood on each customer's sufficient statistics ``(x, t_x, T)``:
  ``x`` repeat purchases, ``t_x`` the time of the last purchase and ``T`` the age, both measured from
  the first purchase (here in days).
* :class:`GammaGamma`: the spend model (Fader, Hardie & Lee 2005, "RFM and CLV: using iso-value
  curves", and Fader & Hardie's note "The Gamma-Gamma model of monetary value"), fitted on the
  customers with repeat purchases from ``(x, mbar)``, the mean value of their repeat purchases.
* :func:`rfm`: recency, frequency and monetary quintile scores.

Every function is vectorised over customers; fitting works on identical rows grouped with weights, so
the cost grows with the number of distinct ``(x, t_x, T)`` rows, not with the number of customers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray
from scipy import optimize, special

Array = NDArray[np.float64]


def _compress(*columns: Array) -> tuple[list[Array], Array]:
    """Identical rows merged: the distinct rows (one array per column) and how many each stands for."""
    stacked = np.column_stack(columns)
    unique, counts = np.unique(stacked, axis=0, return_counts=True)
    return [unique[:, i] for i in range(unique.shape[1])], counts.astype(np.float64)


def _minimize(nll: object, start: Array) -> Array:
    """Minimise a negative log-likelihood over log-parameters (Nelder-Mead, then a polishing BFGS)."""
    first = optimize.minimize(
        nll, start, method="Nelder-Mead", options={"maxiter": 4000, "xatol": 1e-7, "fatol": 1e-9}
    )
    second = optimize.minimize(nll, first.x, method="BFGS")
    best = second.x if second.fun <= first.fun else first.x
    return np.asarray(best, dtype=np.float64)


# -- BG/NBD ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BgNbd:
    """Fitted BG/NBD parameters: purchase rates ~ Gamma(r, alpha), dropout probability ~ Beta(a, b)."""

    r: float
    alpha: float
    a: float
    b: float

    @staticmethod
    def log_likelihood(params: Array, x: Array, t_x: Array, T: Array) -> Array:
        """Each customer's log-likelihood (FHL 2005, equation 6)."""
        r, alpha, a, b = params
        a1 = special.gammaln(r + x) - special.gammaln(r) + r * np.log(alpha)
        a2 = special.gammaln(a + b) + special.gammaln(b + x) - special.gammaln(b) - special.gammaln(a + b + x)
        a3 = -(r + x) * np.log(alpha + T)
        repeat = x > 0
        a4 = np.where(
            repeat,
            np.log(a) - np.log(np.where(repeat, b + x - 1, 1.0)) - (r + x) * np.log(alpha + t_x),
            -np.inf,
        )
        return np.asarray(a1 + a2 + np.logaddexp(a3, a4), dtype=np.float64)

    @classmethod
    def fit(cls, x: Array, t_x: Array, T: Array, penalizer: float = 0.0) -> BgNbd:
        (ux, ut, uT), w = _compress(x, t_x, T)
        total = w.sum()
        scale = float(max(np.max(uT), 1.0))  # times in units of the longest age: a well-scaled problem
        ut, uT = ut / scale, uT / scale

        def nll(logp: Array) -> float:
            params = np.exp(logp)
            ll = cls.log_likelihood(params, ux, ut, uT)
            value = -(w * ll).sum() / total + penalizer * float(np.sum(params**2))
            return float(value) if np.isfinite(value) else 1e300

        best = np.exp(_minimize(nll, np.log(np.array([1.0, 1.0, 1.0, 1.0]))))
        return cls(r=float(best[0]), alpha=float(best[1] * scale), a=float(best[2]), b=float(best[3]))

    def p_alive(self, x: Array, t_x: Array, T: Array) -> Array:
        """P(still active | history) (FHL 2005, equation 13); 1 for customers without a repeat."""
        ratio = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + t_x)))
        odds = np.where(x > 0, self.a / np.maximum(self.b + x - 1, 1e-12) * ratio, 0.0)
        return np.asarray(1.0 / (1.0 + odds), dtype=np.float64)

    def expected_purchases(self, t: float, x: Array, t_x: Array, T: Array) -> Array:
        """Expected purchases in the next ``t`` time units given the history (FHL 2005, equation 10)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + T + t)
        hyp = special.hyp2f1(r + x, b + x, a + b + x - 1, z)
        head = (a + b + x - 1) / (a - 1)
        body = 1.0 - np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + T + t))) * hyp
        ratio = np.exp((r + x) * (np.log(alpha + T) - np.log(alpha + t_x)))
        odds = np.where(x > 0, a / np.maximum(b + x - 1, 1e-12) * ratio, 0.0)
        return np.asarray(np.maximum(head * body / (1.0 + odds), 0.0), dtype=np.float64)

    def expected_population(self, t: float) -> float:
        """Expected purchases of a new customer in ``(0, t]`` (FHL 2005, equation 9)."""
        r, alpha, a, b = self.r, self.alpha, self.a, self.b
        z = t / (alpha + t)
        return float(
            (a + b - 1) / (a - 1) * (1.0 - (alpha / (alpha + t)) ** r * special.hyp2f1(r, b, a + b - 1, z))
        )

    def median_gap(self, x: Array, T: Array) -> Array:
        """The median time between two purchases of an active customer: with the purchase rate's
        posterior Gamma(r + x, alpha + T), the gap is Pareto II (Lomax):
        median (alpha + T)(2^(1/(r+x)) - 1)."""
        return np.asarray((self.alpha + T) * (np.power(2.0, 1.0 / (self.r + x)) - 1.0), dtype=np.float64)

    def p_no_purchase(self, t: float, x: Array, t_x: Array, T: Array) -> Array:
        """P(no purchase in the next ``t``): inactive, or active and the next purchase comes later."""
        alive = self.p_alive(x, t_x, T)
        quiet = np.exp((self.r + x) * (np.log(self.alpha + T) - np.log(self.alpha + T + t)))
        return np.asarray(1.0 - alive + alive * quiet, dtype=np.float64)


# -- Gamma-Gamma ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class GammaGamma:
    """Fitted Gamma-Gamma parameters: transaction value ~ Gamma(p, nu), nu ~ Gamma(q, gamma)."""

    p: float
    q: float
    gamma: float

    @staticmethod
    def log_likelihood(params: Array, x: Array, mbar: Array) -> Array:
        """Each repeat customer's log-likelihood of their mean spend (terms free of parameters dropped)."""
        p, q, g = params
        px = p * x
        return np.asarray(
            special.gammaln(px + q)
            - special.gammaln(px)
            - special.gammaln(q)
            + q * np.log(g)
            + (px - 1) * np.log(mbar)
            + px * np.log(x)
            - (px + q) * np.log(g + x * mbar),
            dtype=np.float64,
        )

    @classmethod
    def fit(cls, x: Array, mbar: Array) -> GammaGamma:
        keep = (x > 0) & (mbar > 0)
        (ux, um), w = _compress(x[keep], mbar[keep])
        total = w.sum()
        scale = float(np.average(um, weights=w))  # money in units of the mean spend

        def nll(logp: Array) -> float:
            ll = cls.log_likelihood(np.exp(logp), ux, um / scale)
            value = -(w * ll).sum() / total
            return float(value) if np.isfinite(value) else 1e300

        best = np.exp(_minimize(nll, np.log(np.array([1.0, 1.0, 1.0]))))
        return cls(p=float(best[0]), q=float(best[1]), gamma=float(best[2] * scale))

    def expected_spend(self, x: Array, mbar: Array) -> Array:
        """E(mean transaction value | x, mbar): a weighted mean of the population's and the customer's
        own (FHL 2005 note, equation 5); the population mean ``p gamma / (q - 1)`` for x = 0."""
        p, q, g = self.p, self.q, self.gamma
        mb = np.where(x > 0, mbar, 0.0)
        return np.asarray((g + x * mb) * p / (p * x + q - 1), dtype=np.float64)


def clv(
    bgnbd: BgNbd,
    spend: Array,
    x: Array,
    t_x: Array,
    T: Array,
    months: int = 12,
    monthly_discount: float = 0.01,
    days_per_month: float = 365.0 / 12,
) -> Array:
    """Discounted value of the next ``months`` months: each month's expected purchases times the
    expected spend, divided by (1 + monthly discount)^month (values in the orders' currency)."""
    total = np.zeros_like(x, dtype=np.float64)
    before = np.zeros_like(x, dtype=np.float64)
    for m in range(1, months + 1):
        upto = bgnbd.expected_purchases(m * days_per_month, x, t_x, T)
        total += (upto - before) / (1.0 + monthly_discount) ** m
        before = upto
    return np.asarray(total * spend, dtype=np.float64)


# -- RFM ------------------------------------------------------------------------------------------


def quintile_scores(values: Array, higher_is_better: bool = True) -> NDArray[np.int64]:
    """1..5 by the value's rank among all customers (ties share their mean rank)."""
    n = len(values)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    order = values if higher_is_better else -values
    ranks = _mean_ranks(order)
    return np.clip(np.ceil(ranks / n * 5), 1, 5).astype(np.int64)


def _mean_ranks(values: Array) -> Array:
    """1-based ranks, ties sharing their mean rank (scipy.stats.rankdata's ``average``)."""
    from scipy.stats import rankdata

    return np.asarray(rankdata(values, method="average"), dtype=np.float64)


def rfm(recency_days: Array, orders: Array, monetary: Array) -> list[str]:
    """``"545"``-style scores: recency (fewer days since the last order scores higher), frequency
    (number of orders), monetary (total revenue); each a quintile score 1..5 within the account."""
    r = quintile_scores(recency_days, higher_is_better=False)
    f = quintile_scores(orders)
    m = quintile_scores(monetary)
    return [f"{a}{b}{c}" for a, b, c in zip(r, f, m, strict=True)]


def top_share(values: Array) -> Array:
    """Each value's position from the top as a share of the population: (1 + number of strictly larger
    values) / n, so the largest has 1/n and ties share the better position. ``top: 10%`` is share <= 0.1.

    Only finite values are ranked, and n counts only them: a NaN or infinite value is no prediction, so
    it gets NaN (no rank) and takes no position from the others."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(len(values), np.nan)
    finite = np.isfinite(values)
    n = int(finite.sum())
    if n == 0:
        return out
    ordered = np.sort(values[finite])
    larger = n - np.searchsorted(ordered, values[finite], side="right")
    out[finite] = (larger + 1) / n
    return out


def auc(scores: Array, labels: NDArray[np.bool_]) -> float | None:
    """Area under the ROC curve (Mann-Whitney, ties counted half) over the finite scores; None with one
    class only."""
    finite = np.isfinite(scores)
    scores, labels = scores[finite], labels[finite]
    positives = int(labels.sum())
    negatives = len(labels) - positives
    if positives == 0 or negatives == 0:
        return None
    ranks = _mean_ranks(scores)
    return float((ranks[labels].sum() - positives * (positives + 1) / 2) / (positives * negatives))
