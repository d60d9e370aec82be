"""From stored profiles to the models' inputs: each customer's orders summarised at a cutoff.

An order is an ``order_completed`` event; its value is the numeric ``revenue`` property (absent, not
a number, or not finite: the order counts, with value 0). Orders on the same UTC calendar day are one
purchase (their values added), as in the published BG/NBD applications: a split shipment is not a
repeat purchase. Times are in days.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from rules.model import Profile

ORDER_EVENT = "order_completed"
VALUE_PROPERTY = "revenue"
DAY = 86400.0


@dataclass
class Summary:
    """Per customer (one row each, same order as ``ids``)."""

    ids: list[str]
    first: np.ndarray  # epoch seconds of the first purchase
    last: np.ndarray  # epoch seconds of the last purchase
    x: np.ndarray  # repeat purchases (purchase days - 1)
    t_x: np.ndarray  # days from the first to the last purchase
    T: np.ndarray  # days from the first purchase to the cutoff
    mbar: np.ndarray  # mean value of the repeat purchases (0 without repeats)
    total: np.ndarray  # total value of all purchases
    orders: np.ndarray  # number of orders (events, not days)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def recency_days(self) -> np.ndarray:
        return self.T - self.t_x


def _value(properties: object) -> float:
    value = properties.get(VALUE_PROPERTY) if isinstance(properties, dict) else None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def purchase_days(profile: Profile, cutoff: datetime) -> tuple[list[float], list[float], int]:
    """The profile's purchase days up to ``cutoff``: (day start in epoch seconds, value), and its orders."""
    days: dict[int, float] = {}
    orders = 0
    for record in profile.events_named(ORDER_EVENT):
        if record.occurred_at > cutoff:
            break  # events are sorted by time
        orders += 1
        stamp = record.occurred_at.timestamp()
        day = int(stamp // DAY)
        days[day] = days.get(day, 0.0) + _value(dict(record.properties))
    keys = sorted(days)
    return [k * DAY for k in keys], [days[k] for k in keys], orders


def summarise(profiles: Iterable[Profile], cutoff: datetime) -> Summary:
    """The customers among ``profiles`` with at least one order before ``cutoff``."""
    ids: list[str] = []
    rows: list[tuple[float, float, float, float, float, float, float, float]] = []
    end = cutoff.timestamp()
    for profile in profiles:
        starts, values, orders = purchase_days(profile, cutoff)
        if not starts:
            continue
        x = len(starts) - 1
        repeat = sum(values[1:]) / x if x else 0.0
        ids.append(profile.profile_id)
        rows.append(
            (
                starts[0],
                starts[-1],
                float(x),
                (starts[-1] - starts[0]) / DAY,
                max(end - starts[0], 0.0) / DAY,
                repeat,
                float(sum(values)),
                float(orders),
            )
        )
    table = np.array(rows, dtype=np.float64).reshape(-1, 8)
    return Summary(ids, *(table[:, i].copy() for i in range(8)))
