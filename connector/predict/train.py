"""Training an account's models on its own stored history, and scoring its customers.

:func:`fit` and :func:`score` work on a :class:`~connector.predict.features.Summary` (arrays, no Redis);
:func:`train_account` reads the profile store, checks the :class:`Minimum`, fits, scores and stores.
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
    spend: models.GammaGamma | None  # None when the spend model does not apply (q <= 1 or no repeats)

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


def fit(summary: Summary) -> Fitted:
    bg = models.BgNbd.fit(summary.x, summary.t_x, summary.T)
    repeat = (summary.x > 0) & (summary.mbar > 0)
    spend: models.GammaGamma | None = None
    if int(repeat.sum()) >= 10:
        gg = models.GammaGamma.fit(summary.x, summary.mbar)
        spend = gg if gg.q > 1 else None
    return Fitted(bg, spend)


def score(fitted: Fitted, summary: Summary) -> Scores:
    bg, x, t_x, T = fitted.bgnbd, summary.x, summary.t_x, summary.T
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
    for name, column in (
        ("predicted_clv", value),
        ("churn_risk", 1.0 - p_active),
        ("expected_orders_90d", expected),
        ("expected_order_value", spend),
    ):
        out.shares[name] = models.top_share(column)
    return out


def distribution(values: np.ndarray) -> dict[str, Any]:
    return {
        "n": len(values),
        "mean": float(values.mean()) if len(values) else None,
        "quantiles": [round(float(q), 6) for q in np.quantile(values, np.linspace(0, 1, 101))]
        if len(values)
        else [],
    }


def pack_records(generation: int, summary: Summary, scores: Scores) -> dict[str, bytes]:
    out: dict[str, bytes] = {}
    shares = [scores.shares[name] for name in store.RANKED]
    for i, pid in enumerate(summary.ids):
        out[pid] = store.Record(
            generation=generation,
            first=int(summary.first[i]),
            last=int(summary.last[i]),
            next_order=int(scores.next_order[i]),
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

    Below the :class:`Minimum` nothing is fitted and the stored predictions are left as they are."""
    minimum = minimum or Minimum()
    summary = load_summary(conn, account, now, progress)
    missing = minimum.missing(summary, now.timestamp())
    if missing:
        log.info("predictions not trained", extra={"account": account, "missing": missing})
        return TrainResult(account, False, len(summary), missing)
    fitted = fit(summary)
    scores = score(fitted, summary)
    generation = int(conn.hincrby(store.meta_key(account), "generations", 1))
    meta = {
        "model_version": f"{MODEL_VERSION}@{now.strftime('%Y-%m-%dT%H:%M:%SZ')}#{generation}",
        "generation": generation,
        "trained_at": now.isoformat(),
        "customers": len(summary),
        "repeat_customers": int((summary.x > 0).sum()),
        "horizon_days": HORIZON_DAYS,
        "clv_months": CLV_MONTHS,
        "monthly_discount": MONTHLY_DISCOUNT,
        "params": fitted.params(),
    }
    dists = {
        "predicted_clv": distribution(scores.clv),
        "churn_risk": distribution(1.0 - scores.p_active),
        "expected_orders_90d": distribution(scores.expected_orders),
        "expected_order_value": distribution(scores.spend),
    }
    store.write_training(conn, account, generation, meta, pack_records(generation, summary, scores), dists)
    conn.hset(store.meta_key(account), "generations", str(generation))
    return TrainResult(account, True, len(summary), [], meta)
