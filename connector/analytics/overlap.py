"""The overlap of two segments: the number of people in both, counted exactly by a background job
over the member buckets kept by :mod:`connector.worker.sizes` (a server-side count, O(the smaller
segment)), stored with the instant it was computed so every
answer shows its freshness. A request reads one hash field; it never intersects sets itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import combinations

import redis

from connector.analytics.keys import overlap_key
from connector.worker import sizes


@dataclass(frozen=True)
class Overlap:
    a: str
    b: str
    both: int
    computed_at: datetime | None  # None: not computed yet

    def to_dict(self) -> dict[str, object]:
        return {
            "a": self.a,
            "b": self.b,
            "both": self.both,
            "computed_at": self.computed_at.isoformat().replace("+00:00", "Z") if self.computed_at else None,
        }


def _field(a: str, b: str) -> str:
    first, second = sorted((a, b))
    return f"{first}|{second}"


def count(conn: redis.Redis, account: str, a: str, b: str) -> int:
    return sizes.overlap(conn, account, a, b)


def refresh(conn: redis.Redis, account: str, segments: Iterable[str], now: datetime) -> int:
    """The background job: count every pair of ``segments`` and store it with ``now``; the number
    of pairs."""
    pairs = list(combinations(sorted(set(segments)), 2))
    stamp = int(now.timestamp())
    values = {_field(a, b): f"{count(conn, account, a, b)} {stamp}" for a, b in pairs}
    if values:
        conn.hset(overlap_key(account), mapping=values)
    return len(pairs)


def read(conn: redis.Redis, account: str, a: str, b: str) -> Overlap:
    """The stored overlap (the size itself when ``a == b``)."""
    if a == b:
        return Overlap(a, b, sizes.sizes(conn, account).get(a, 0), None)
    raw = conn.hget(overlap_key(account), _field(a, b))
    if raw is None:
        return Overlap(a, b, 0, None)
    both, _, stamp = (raw.decode() if isinstance(raw, bytes) else raw).partition(" ")
    return Overlap(a, b, int(both), datetime.fromtimestamp(int(stamp), UTC))
