"""What the rest of the connector reads: predicted traits per profile, and their explanation.

* :func:`predicted_traits` ``(conn, account, profile_ids, now)``: ``{profile id: {"predicted.<trait>":
  value}}`` for the profiles the last training scored (others are absent: their traits are missing).
* :func:`with_predictions` ``(profile, traits)``: the profile with those traits merged into
  ``Profile.traits``, the expected next order date dropped once an order arrived after the one it was
  predicted from (the next training predicts it again).
* :func:`explain` ``(conn, account, profile_id, now)``: each value with its inputs and model version.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import redis

from connector.predict import store
from connector.predict.features import DAY, ORDER_EVENT
from rules.model import Profile

PREFIX = store.PREFIX
NEXT_ORDER = PREFIX + "expected_next_order_at"
LAST_ORDER = PREFIX + "last_order_at"


def _traits(record: store.Record, now: datetime) -> dict[str, Any]:
    values = record.traits()
    values["recency_days"] = round(max(now.timestamp() - record.last, 0.0) / DAY, 3)
    return {PREFIX + name: value for name, value in values.items() if value is not None}


def predicted_traits(
    conn: redis.Redis, account: str, profile_ids: Sequence[str], now: datetime
) -> dict[str, dict[str, Any]]:
    """The predicted traits of each scored profile, named ``predicted.<trait>``; one round trip."""
    return {pid: _traits(rec, now) for pid, rec in store.records(conn, account, profile_ids).items()}


def with_predictions(profile: Profile, traits: Mapping[str, Any] | None) -> Profile:
    """``profile`` with its predicted traits merged (stored traits of the same name are not overridden)."""
    if not traits:
        return profile
    merged = dict(traits)
    if NEXT_ORDER in merged:
        orders = profile.events_named(ORDER_EVENT)
        last_trained = datetime.fromisoformat(str(merged[LAST_ORDER]).replace("Z", "+00:00"))
        if orders and orders[-1].occurred_at.timestamp() >= last_trained.timestamp() + DAY:
            del merged[NEXT_ORDER]  # ordered since the prediction: no longer expected then
    merged.update(profile.traits)
    return profile.replace(traits=merged)


def explain(conn: redis.Redis, account: str, profile_id: str, now: datetime) -> dict[str, Any] | None:
    """The profile's predicted values with the inputs behind them and the model version; None when the
    last training did not score it (no order, or no training yet)."""
    found = store.records(conn, account, [profile_id]).get(profile_id)
    meta = store.current_meta(conn, account)
    if found is None or meta is None:
        return None
    return {
        "model_version": meta.get("model_version"),
        "trained_at": meta.get("trained_at"),
        "params": meta.get("params"),
        "inputs": {
            "recency_days": round(max(now.timestamp() - found.last, 0.0) / DAY, 3),
            "frequency": found.x,
            "orders": found.orders,
            "age_days": round(found.age_days, 3),
            "monetary_total": round(found.total, 2),
            "first_order_at": store.iso(found.first),
            "last_order_at": store.iso(found.last),
        },
        "values": {k[len(PREFIX) :]: v for k, v in _traits(found, now).items()},
    }


def render_explain(found: Mapping[str, Any]) -> list[str]:
    """Readable lines for ``connector explain`` / ``connector predict explain``."""
    inputs = found["inputs"]
    lines = [
        f"predicted by {found['model_version']} (trained {found['trained_at']})",
        "  inputs: recency {recency_days} d, frequency {frequency} repeat purchase day(s) "
        "({orders} orders), age {age_days} d, monetary {monetary_total}".format(**inputs),
    ]
    for name, value in found["values"].items():
        lines.append(f"  {name} = {value}")
    return lines
