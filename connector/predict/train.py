"""Training an account's models on its own stored history, and scoring its customers.

:func:`fit` and :func:`score` work on a :class:`~connector.predict.features.Summary` (arrays, no Redis);
:func:`train_account` reads the profile store, checks the :class:`Minimum`, fits, scores, refuses a
degenerate fit (:func:`refusal`) and stores the customers with a finite prediction.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
import redis

from connector.predict import features, models, store
from connector.predict.features import DAY, Summary
from connector.profiles import iter_profile_ids
from connector.profiles.store import load_profiles

log = logging.getLogger(__name__)

MODEL_VERSION = "bgnbd-gg/1"
HORIZON_DAYS = 90.0
CLV_MONTHS = 12
MONTHLY_DISCOUNT = 0.01
LOAD_CHUNK = 500
Progress = Callable[[int], None]
# A Gamma shape above this is a coefficient of variation 1/sqrt(shape) under 3.2 %: customers who do not
# differ. No customer base has purchase rates that alike; the fit gets there when the optimizer runs off
# towards the model's limit (no heterogeneity at all), which order histories that are too alike cause.
MAX_SHAPE = 1000.0
# A fit that leaves more than this share of its own training customers without a finite prediction is
# refused; below it, those customers are left without a prediction.
MAX_UNSCORED = 0.01
FLOAT32_MAX = float(np.finfo(np.float32).max)  # the record stores 32-bit floats
EPOCH32_MAX = 2**32 - 1  # and times as unsigned 32-bit epoch seconds


@dataclass(frozen=True)
class Minimum:
    """Below these, no prediction is produced (defaults in docs/predict.md, next to Klaviyo's)."""

    repeat_customers: int = 100  # customers with at least two purchase days
    history_days: int = 180  # from the account's first purchase to the cutoff

    def missing(self, summary: Summary, cutoff: float) -> list[str]:
        out: list[str] = []
        repeaters = int((summary.x > 0).sum()) if len(summary) else 0
        if repeaters < self.repeat_customers:
            out.append(f"customers with a repeat order: {repeaters}, at least {self.repeat_customers} needed")
        days = (cutoff - float(summary.first.min())) / DAY if len(summary) else 0.0
        if days < self.history_days:
            out.append(f"days of order history: {int(days)}, at least {self.history_days} needed")
        return out


@dataclass(frozen=True)
class Fitted:
    bgnbd: models.BgNbd
    # None when the spend model does not apply (fewer than 10 repeat customers, q <= 1, or a degenerate fit)
    spend: models.GammaGamma | None

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "bgnbd": {"r": self.bgnbd.r, "alpha": self.bgnbd.alpha, "a": self.bgnbd.a, "b": self.bgnbd.b}
        }
        if self.spend is not None:
            out["gamma_gamma"] = {"p": self.spend.p, "q": self.spend.q, "gamma": self.spend.gamma}
        return out


@dataclass
class Scores:
    p_active: np.ndarray
    expected_orders: np.ndarray
    spend: np.ndarray
    clv: np.ndarray
    next_order: np.ndarray  # epoch seconds
    rfm: list[str]
    shares: dict[str, np.ndarray] = field(default_factory=dict)
    # customers with a usable prediction (every value finite): the others get none and are not ranked
    scored: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))


def fit(summary: Summary) -> Fitted:
    bg = models.BgNbd.fit(summary.x, summary.t_x, summary.T)
    repeat = (summary.x > 0) & (summary.mbar > 0)
    spend: models.GammaGamma | None = None
    if int(repeat.sum()) >= 10:
        gg = models.GammaGamma.fit(summary.x, summary.mbar)
        spend = gg if _spend_model_applies(gg) else None
    return Fitted(bg, spend)


def _spend_model_applies(gg: models.GammaGamma) -> bool:
    """q > 1 (the population mean spend exists) and finite shapes within :data:`MAX_SHAPE`: beyond it the
    fit has run off to a limit (every order of a customer the same value, or every customer the same
    mean), where its parameters mean nothing and each customer's own mean is the answer."""
    shapes = np.array([gg.p, gg.q, gg.gamma])
    return bool(np.isfinite(shapes).all() and 1.0 < gg.q <= MAX_SHAPE and gg.p <= MAX_SHAPE)


def _describe(bg: models.BgNbd) -> str:
    return f"r = {bg.r:.3g}, alpha = {bg.alpha:.3g}, a = {bg.a:.3g}, b = {bg.b:.3g}"


def refusal(fitted: Fitted, summary: Summary, scores: Scores) -> str | None:
    """Why this fit must not replace the stored predictions, or None when it may.

    Refused: parameters or log-likelihood not finite; a purchase-rate shape ``r`` beyond :data:`MAX_SHAPE`
    (the optimizer ran off to the limit where every customer buys at the same rate: order histories where
    every customer orders at the same interval drive r and alpha to 1e13 and beyond, where the expected
    purchases are not even computable); more than :data:`MAX_UNSCORED` of the training customers
    without a finite prediction."""
    bg = fitted.bgnbd
    params = np.array([bg.r, bg.alpha, bg.a, bg.b])
    with np.errstate(all="ignore"):
        ll = float(np.sum(models.BgNbd.log_likelihood(params, summary.x, summary.t_x, summary.T)))
    if not (np.isfinite(params).all() and (params > 0).all() and np.isfinite(ll)):
        return (
            f"the purchase model could not be fitted to the order history ({_describe(bg)}, "
            f"log-likelihood {ll:.6g}); check that the orders carry their real dates, and train again "
            "when more customers have ordered more than once"
        )
    if bg.r > MAX_SHAPE:
        return (
            f"the purchase model's fit is degenerate ({_describe(bg)}): r above {MAX_SHAPE:,.0f} means "
            "the customers' purchase rates would differ by less than 3 %; real customers' rates never do. "
            "The order histories are too alike, as in generated test data where every customer orders at "
            "the same interval: train on the shop's real orders, or with more customers who ordered "
            "more than once"
        )
    unscored = int((~scores.scored).sum())
    if unscored > MAX_UNSCORED * len(summary):
        return (
            f"the fitted model gives no finite prediction for {unscored} of {len(summary)} customers "
            f"({_describe(bg)}): the fit is degenerate. The order histories are too alike (as in "
            "generated test data) or too few: train on the shop's real orders, or with more customers "
            "who ordered more than once"
        )
    return None


def _usable(*columns: np.ndarray) -> np.ndarray:
    """Customers whose every value is finite and fits the record's 32-bit floats."""
    ok = np.ones(len(columns[0]), dtype=bool)
    for column in columns:
        ok &= np.isfinite(column) & (np.abs(column) <= FLOAT32_MAX)
    return ok


def score(fitted: Fitted, summary: Summary) -> Scores:
    """Every customer's predictions; ranks only among the customers with a usable (finite) prediction."""
    bg, x, t_x, T = fitted.bgnbd, summary.x, summary.t_x, summary.T
    with np.errstate(all="ignore"):  # a degenerate fit gives NaN or inf: found below, never stored
        p_active = bg.p_alive(x, t_x, T)
        expected = bg.expected_purchases(HORIZON_DAYS, x, t_x, T)
        if fitted.spend is not None:
            spend = fitted.spend.expected_spend(x, summary.mbar)
        else:  # the customer's own mean purchase value
            spend = summary.total / (x + 1)
        value = models.clv(bg, spend, x, t_x, T, months=CLV_MONTHS, monthly_discount=MONTHLY_DISCOUNT)
        next_order = summary.last + bg.median_gap(x, T) * DAY
    rfm = models.rfm(summary.recency_days, summary.orders, summary.total)
    out = Scores(p_active, expected, spend, value, next_order, rfm)
    out.scored = _usable(p_active, expected, spend, value, summary.total)
    for name, column in (
        ("predicted_clv", value),
        ("churn_risk", 1.0 - p_active),
        ("expected_orders_90d", expected),
        ("expected_order_value", spend),
    ):
        out.shares[name] = models.top_share(np.where(out.scored, column, np.nan))
    return out


def distribution(values: np.ndarray) -> dict[str, Any]:
    """n, mean and 101 quantiles of the finite values."""
    values = values[np.isfinite(values)]
    return {
        "n": len(values),
        "mean": float(values.mean()) if len(values) else None,
        "quantiles": [round(float(q), 6) for q in np.quantile(values, np.linspace(0, 1, 101))]
        if len(values)
        else [],
    }


def pack_records(generation: int, summary: Summary, scores: Scores) -> dict[str, bytes]:
    """The records of the scored customers (the others get none: no prediction). An expected next order
    date that is not finite or past what the record holds (2106) is stored as none."""
    out: dict[str, bytes] = {}
    shares = [scores.shares[name] for name in store.RANKED]
    next_order = scores.next_order
    dated = np.isfinite(next_order) & (next_order >= 1) & (next_order <= EPOCH32_MAX)
    for i in np.flatnonzero(scores.scored):
        pid = summary.ids[i]
        out[pid] = store.Record(
            generation=generation,
            first=int(summary.first[i]),
            last=int(summary.last[i]),
            next_order=int(next_order[i]) if dated[i] else 0,
            orders=int(summary.orders[i]),
            x=int(summary.x[i]),
            rfm=scores.rfm[i],
            p_active=float(scores.p_active[i]),
            expected_orders_90d=float(scores.expected_orders[i]),
            expected_order_value=float(scores.spend[i]),
            predicted_clv=float(scores.clv[i]),
            age_days=float(summary.T[i]),
            total=float(summary.total[i]),
            shares=(float(shares[0][i]), float(shares[1][i]), float(shares[2][i]), float(shares[3][i])),
        ).pack()
    return out


def _chunks(ids: Iterator[str], size: int) -> Iterator[list[str]]:
    batch: list[str] = []
    for pid in ids:
        batch.append(pid)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def load_summary(
    conn: redis.Redis, account: str, cutoff: datetime, progress: Progress | None = None
) -> Summary:
    """Every customer of the account with an order before ``cutoff``, read in chunks."""
    parts: list[Summary] = []
    for batch in _chunks(iter_profile_ids(conn, account), LOAD_CHUNK):
        loaded = load_profiles(conn, account, batch, cutoff)
        parts.append(features.summarise((p for p in loaded.values() if p is not None), cutoff))
        if progress is not None:
            progress(len(batch))
    return concat(parts, cutoff)


def concat(parts: list[Summary], cutoff: datetime) -> Summary:
    if not parts:
        return features.summarise([], cutoff)
    ids = [pid for part in parts for pid in part.ids]
    columns = ("first", "last", "x", "t_x", "T", "mbar", "total", "orders")
    return Summary(ids, *(np.concatenate([getattr(p, c) for p in parts]) for c in columns))


@dataclass
class TrainResult:
    account: str
    trained: bool
    customers: int
    missing: list[str]
    meta: dict[str, Any] | None = None


def train_account(
    conn: redis.Redis,
    account: str,
    now: datetime,
    progress: Progress | None = None,
    minimum: Minimum | None = None,
) -> TrainResult:
    """Fit the account's models on its history up to ``now``, score every customer, store the traits.

    Below the :class:`Minimum`, nothing is fitted; when the fit is refused (:func:`refusal`), nothing is
    stored. Either way the stored predictions are left as they are and ``missing`` says why."""
    minimum = minimum or Minimum()
    summary = load_summary(conn, account, now, progress)
    missing = minimum.missing(summary, now.timestamp())
    if missing:
        log.info("predictions not trained", extra={"account": account, "missing": missing})
        return TrainResult(account, False, len(summary), missing)
    fitted = fit(summary)
    scores = score(fitted, summary)
    refused = refusal(fitted, summary, scores)
    if refused is not None:
        reasons = [refused, _kept(conn, account)]
        log.warning("predictions not trained: fit refused", extra={"account": account, "missing": reasons})
        return TrainResult(account, False, len(summary), reasons)
    generation = int(conn.hincrby(store.meta_key(account), "generations", 1))
    meta = {
        "model_version": f"{MODEL_VERSION}@{now.strftime('%Y-%m-%dT%H:%M:%SZ')}#{generation}",
        "generation": generation,
        "trained_at": now.isoformat(),
        "customers": len(summary),
        "repeat_customers": int((summary.x > 0).sum()),
        "scored": int(scores.scored.sum()),
        "horizon_days": HORIZON_DAYS,
        "clv_months": CLV_MONTHS,
        "monthly_discount": MONTHLY_DISCOUNT,
        "params": fitted.params(),
    }
    scored = scores.scored
    dists = {
        "predicted_clv": distribution(scores.clv[scored]),
        "churn_risk": distribution(1.0 - scores.p_active[scored]),
        "expected_orders_90d": distribution(scores.expected_orders[scored]),
        "expected_order_value": distribution(scores.spend[scored]),
    }
    store.write_training(conn, account, generation, meta, pack_records(generation, summary, scores), dists)
    conn.hset(store.meta_key(account), "generations", str(generation))
    return TrainResult(account, True, len(summary), [], meta)


def _kept(conn: redis.Redis, account: str) -> str:
    previous = store.current_meta(conn, account)
    if previous is None:
        return "no predictions are stored"
    return f"nothing new is stored: the predictions of {previous.get('model_version')} stay in use"
