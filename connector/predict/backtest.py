"""Backtest on an account's own data: fit on everything before ``now - holdout``, compare with the holdout.

* churn: AUC of churn risk for "no order in the holdout", against the baseline "days since last order";
* value: mean absolute error of the predicted holdout revenue, and its calibration by decile, against
  the baseline "average historical spend" (the customer's revenue per day so far times the holdout days);
* next order date: for customers who ordered in the holdout, days between the expected next order date
  and their first holdout order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import numpy as np
import redis

from connector.predict import features, models, train
from connector.predict.features import DAY, Summary
from connector.profiles import iter_profile_ids
from connector.profiles.store import load_profiles

HOLDOUT_DAYS_MAX = 3650  # ten years: a longer holdout leaves no history to fit on


@dataclass
class Holdout:
    calibration: Summary
    orders: np.ndarray  # purchase days in the holdout, per calibration customer
    revenue: np.ndarray
    first_after: np.ndarray  # epoch seconds of the first holdout purchase (nan: none)


@dataclass
class Report:
    account: str
    cutoff: datetime
    holdout_days: float
    customers: int
    missing: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def holdout_split(conn: redis.Redis, account: str, cutoff: datetime, now: datetime) -> Holdout:
    cal_parts: list[Summary] = []
    after: list[tuple[float, float, float]] = []
    for batch in train._chunks(iter_profile_ids(conn, account), train.LOAD_CHUNK):
        loaded = [p for p in load_profiles(conn, account, batch, now).values() if p is not None]
        part = features.summarise(loaded, cutoff)
        cal_parts.append(part)
        keep = set(part.ids)
        for profile in loaded:
            if profile.profile_id in keep:
                after.append(_after(profile, cutoff, now))
    table = np.array(after, dtype=np.float64).reshape(-1, 3)
    return Holdout(train.concat(cal_parts, cutoff), table[:, 0], table[:, 1], table[:, 2])


def _after(profile: Any, cutoff: datetime, now: datetime) -> tuple[float, float, float]:
    starts, values, _ = features.purchase_days(profile, now)
    edge = cutoff.timestamp()
    later = [(s, v) for s, v in zip(starts, values, strict=True) if s >= edge]
    first = later[0][0] if later else float("nan")
    return float(len(later)), float(sum(v for _, v in later)), first


def _deciles(predicted: np.ndarray, actual: np.ndarray) -> list[dict[str, float]]:
    order = np.argsort(predicted, kind="stable")
    out = []
    for i, chunk in enumerate(np.array_split(order, 10)):
        if len(chunk):
            out.append(
                {
                    "decile": i + 1,
                    "predicted": round(float(predicted[chunk].mean()), 2),
                    "actual": round(float(actual[chunk].mean()), 2),
                }
            )
    return out


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)


def metrics(
    cal: Summary,
    hold: Holdout,
    holdout_days: float,
    fitted: train.Fitted | None = None,
    scores: train.Scores | None = None,
) -> dict[str, Any]:
    """The measures over the calibration customers with a prediction (``scored``: the others, whose
    values are not finite, would get none from a training either)."""
    fitted = fitted or train.fit(cal)
    scores = scores or train.score(fitted, cal)
    keep = scores.scored
    x, t_x, T = cal.x[keep], cal.t_x[keep], cal.T[keep]
    churned = hold.orders[keep] == 0
    revenue = hold.revenue[keep]
    expected = fitted.bgnbd.expected_purchases(holdout_days, x, t_x, T)
    predicted_value = expected * scores.spend[keep]
    baseline_value = cal.total[keep] / np.maximum(T, 1.0) * holdout_days
    first_after = hold.first_after[keep]
    ordered = ~np.isnan(first_after)
    date_error = np.abs(first_after[ordered] - scores.next_order[keep][ordered]) / DAY
    return {
        "params": fitted.params(),
        "scored": int(keep.sum()),
        "churn_rate": round(float(churned.mean()), 4),
        "churn_auc": _round(models.auc(1.0 - scores.p_active[keep], churned)),
        "churn_auc_no_order_probability": _round(
            models.auc(fitted.bgnbd.p_no_purchase(holdout_days, x, t_x, T), churned)
        ),
        "churn_auc_baseline_days_since_last_order": _round(models.auc(cal.recency_days[keep], churned)),
        "value_mae": round(float(np.abs(predicted_value - revenue).mean()), 2),
        "value_mae_baseline_average_spend": round(float(np.abs(baseline_value - revenue).mean()), 2),
        "value_deciles": _deciles(predicted_value, revenue),
        "next_order_customers": int(ordered.sum()),
        "next_order_error_days_median": round(float(np.median(date_error)), 1) if len(date_error) else None,
        "next_order_error_days_mean": round(float(date_error.mean()), 1) if len(date_error) else None,
    }


def report(
    conn: redis.Redis,
    account: str,
    now: datetime,
    holdout_days: float = 90.0,
    minimum: train.Minimum | None = None,
) -> Report:
    if not (math.isfinite(holdout_days) and 0 < holdout_days <= HOLDOUT_DAYS_MAX):
        raise ValueError(f"holdout_days must be above 0 and at most {HOLDOUT_DAYS_MAX}, got {holdout_days!r}")
    cutoff = now - timedelta(days=holdout_days)
    hold = holdout_split(conn, account, cutoff, now)
    cal = hold.calibration
    out = Report(account, cutoff, holdout_days, len(cal))
    out.missing = (minimum or train.Minimum()).missing(cal, cutoff.timestamp())
    if out.missing:
        return out
    fitted = train.fit(cal)
    scores = train.score(fitted, cal)
    refused = train.refusal(fitted, cal, scores)
    if refused is not None:  # a training would refuse this fit too
        out.missing = [refused]
        return out
    out.metrics = metrics(cal, hold, holdout_days, fitted, scores)
    return out
