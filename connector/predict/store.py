"""Predicted traits in Redis (profile Redis), one compact value per profile.

  ``pred:{acct}:v``     hash: profile id -> packed record (:data:`RECORD`, 64 bytes) of one training, for
                        each customer with a finite prediction (a record with a value that is not finite
                        reads as none: :attr:`Record.usable`)
  ``pred:{acct}:meta``  hash: ``current`` -> generation; ``g:<n>`` -> JSON of that training (model
                        version, parameters, trained_at, counts); ``g:<n>`` of older trainings are kept
                        only while a record can still name them (the whole hash is swapped per training)
  ``pred:{acct}:dist``  hash: trait -> JSON distribution snapshot as of the last training
                        (n, mean, 101 quantiles)

A training writes the records into a scratch hash and renames it over ``pred:{acct}:v``, so readers see
the previous training's records or the new one's, never a mix.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

PREFIX = "predicted."
# generation, first, last, next order (epoch s, 0 = none), orders, x, rfm,
# p_active, expected_orders_90d, expected_order_value, predicted_clv, age_days, total,
# top shares of predicted_clv, churn_risk, expected_orders_90d, expected_order_value
RECORD = struct.Struct("<IIIIHH3sx" + "f" * 6 + "f" * 4)
RANKED = ("predicted_clv", "churn_risk", "expected_orders_90d", "expected_order_value")


def values_key(account: str) -> str:
    return f"pred:{{{account}}}:v"


def scratch_key(account: str) -> str:
    return f"pred:{{{account}}}:v:new"


def meta_key(account: str) -> str:
    return f"pred:{{{account}}}:meta"


def dist_key(account: str) -> str:
    return f"pred:{{{account}}}:dist"


@dataclass(frozen=True)
class Record:
    generation: int
    first: int
    last: int
    next_order: int
    orders: int
    x: int
    rfm: str
    p_active: float
    expected_orders_90d: float
    expected_order_value: float
    predicted_clv: float
    age_days: float
    total: float
    shares: tuple[float, float, float, float]

    def pack(self) -> bytes:
        return RECORD.pack(
            self.generation,
            self.first,
            self.last,
            self.next_order,
            min(self.orders, 65535),
            min(self.x, 65535),
            self.rfm.encode("ascii"),
            self.p_active,
            self.expected_orders_90d,
            self.expected_order_value,
            self.predicted_clv,
            self.age_days,
            self.total,
            *self.shares,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> Record:
        f = RECORD.unpack(raw)
        return cls(
            f[0],
            f[1],
            f[2],
            f[3],
            f[4],
            f[5],
            f[6].decode("ascii"),
            f[7],
            f[8],
            f[9],
            f[10],
            f[11],
            f[12],
            (f[13], f[14], f[15], f[16]),
        )

    @property
    def usable(self) -> bool:
        """Every value finite: a record with a NaN or infinite value (written before such fits were
        refused) is no prediction."""
        values = (self.p_active, self.expected_orders_90d, self.expected_order_value, self.predicted_clv)
        return all(math.isfinite(v) for v in (*values, *self.shares))

    def traits(self) -> dict[str, Any]:
        """The computed traits rules see (names under ``predicted.``)."""
        out: dict[str, Any] = {
            "churn_risk": round(1.0 - self.p_active, 6),
            "p_active": round(self.p_active, 6),
            "expected_orders_90d": round(self.expected_orders_90d, 6),
            "expected_order_value": round(self.expected_order_value, 2),
            "predicted_clv": round(self.predicted_clv, 2),
            "rfm_score": self.rfm,
            "orders": self.orders,
            "recency_days": None,  # filled by predicted_traits (depends on now)
            "last_order_at": iso(self.last),
            "expected_next_order_at": iso(self.next_order) if self.next_order else None,
        }
        for name, share in zip(RANKED, self.shares, strict=True):
            out[f"rank.{name}"] = round(share, 6)
        return out


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_training(
    conn: redis.Redis,
    account: str,
    generation: int,
    meta: Mapping[str, Any],
    records: Mapping[str, bytes],
    distributions: Mapping[str, Mapping[str, Any]],
    chunk: int = 5000,
) -> None:
    """Replace the account's predictions with one training's, atomically for readers."""
    scratch = scratch_key(account)
    conn.delete(scratch)
    items = list(records.items())
    for start in range(0, len(items), chunk):
        conn.hset(scratch, mapping=dict(items[start : start + chunk]))
    pipe = conn.pipeline(transaction=True)
    if items:
        pipe.rename(scratch, values_key(account))
    else:
        pipe.delete(values_key(account))
    pipe.delete(meta_key(account), dist_key(account))
    pipe.hset(meta_key(account), mapping={"current": str(generation), f"g:{generation}": json.dumps(meta)})
    if distributions:
        pipe.hset(dist_key(account), mapping={k: json.dumps(v) for k, v in distributions.items()})
    pipe.execute()


def current_meta(conn: redis.Redis, account: str) -> dict[str, Any] | None:
    """The last training's description (model version, parameters, counts), or None."""
    current = conn.hget(meta_key(account), "current")
    if current is None:
        return None
    raw = conn.hget(meta_key(account), f"g:{int(current)}")
    return json.loads(raw) if raw else None


def distributions(conn: redis.Redis, account: str) -> dict[str, dict[str, Any]]:
    raw = conn.hgetall(dist_key(account))
    return {(k.decode() if isinstance(k, bytes) else k): json.loads(v) for k, v in raw.items()}


def records(conn: redis.Redis, account: str, profile_ids: Sequence[str]) -> dict[str, Record]:
    if not profile_ids:
        return {}
    raws = conn.hmget(values_key(account), list(profile_ids))
    found = ((pid, Record.unpack(raw)) for pid, raw in zip(profile_ids, raws, strict=True) if raw is not None)
    return {pid: record for pid, record in found if record.usable}
