"""The report of one segment over a period, read from the counters (a few hash reads, no scan):
size now and per day, entries and exits, deliveries and open, click, unsubscribe rates, conversion
rate and revenue per member of the people who entered in the period, per arm (treated ``t``,
control ``c``, variants ``a``, ``b`` ...) and the comparison of each arm with the control (or of
each variant with the first)."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import redis

from connector.analytics import movement, stats
from connector.analytics.assign import CONTROL, TREATED
from connector.analytics.keys import day_key, day_starts
from connector.worker import sizes

METRICS = ("en", "dl", "op", "ck", "un", "cv", "rv", "rq")


def counters(
    conn: redis.Redis, account: str, segment: str, now: datetime, days: int
) -> dict[str, dict[str, float]]:
    """Arm → metric → total over the last ``days`` days."""
    pipe = conn.pipeline(transaction=False)
    for start in day_starts(now, days):
        pipe.hgetall(day_key(account, start))
    out: dict[str, dict[str, float]] = {}
    for row in pipe.execute():
        for raw, value in row.items():
            metric, _, rest = (raw.decode() if isinstance(raw, bytes) else raw).partition(":")
            name, _, arm = rest.rpartition(":")
            if name == segment and metric in METRICS:
                totals = out.setdefault(arm, dict.fromkeys(METRICS, 0.0))
                totals[metric] += float(value)
    return out


def _rate(part: float, whole: float) -> float | None:
    return part / whole if whole else None


def performance(totals: Mapping[str, float]) -> dict[str, Any]:
    members = int(totals["en"])
    return {
        "members": members,
        "deliveries": int(totals["dl"]),
        "open_rate": _rate(totals["op"], totals["dl"]),
        "click_rate": _rate(totals["ck"], totals["dl"]),
        "unsubscribe_rate": _rate(totals["un"], totals["dl"]),
        "conversions": int(totals["cv"]),
        "conversion_rate": _rate(totals["cv"], members),
        "revenue": totals["rv"] / 100,
        "revenue_per_member": _rate(totals["rv"] / 100, members),
    }


def compare(arm: Mapping[str, float], base: Mapping[str, float]) -> dict[str, Any]:
    """One arm against the baseline: conversion difference (Newcombe and Wald), revenue per member
    difference (Welch), lifts, and the warning while the samples say nothing."""
    n1, n2, c1, c2 = int(arm["en"]), int(base["en"]), int(arm["cv"]), int(base["cv"])
    rev = stats.welch(n1, arm["rv"] / 100, arm["rq"], n2, base["rv"] / 100, base["rq"])
    p1, p2 = _rate(c1, n1) or 0.0, _rate(c2, n2) or 0.0
    m1, m2 = (arm["rv"] / 100 / n1 if n1 else 0.0), (base["rv"] / 100 / n2 if n2 else 0.0)
    return {
        "conversion_difference": stats.newcombe(c1, n1, c2, n2).to_dict(),
        "conversion_difference_wald": stats.wald(c1, n1, c2, n2).to_dict(),
        "conversion_lift": stats.lift(p1, p2),
        "revenue_per_member_difference": rev.to_dict(),
        "revenue_per_member_lift": stats.lift(m1, m2),
        "warning": stats.warning(n1, n2, c1, c2),
    }


def segment_report(conn: redis.Redis, account: str, segment: str, now: datetime, days: int) -> dict[str, Any]:
    by_arm = counters(conn, account, segment, now, days)
    overall = dict.fromkeys(METRICS, 0.0)
    for totals in by_arm.values():
        for metric, value in totals.items():
            overall[metric] += value
    series = movement.series(conn, account, segment, now, days=days)
    report: dict[str, Any] = {
        "account": account,
        "segment": segment,
        "days": days,
        "size": sizes.sizes(conn, account).get(segment, 0),
        "entered": sum(p["entered"] for p in series),
        "exited": sum(p["exited"] for p in series),
        "daily": [{**p, "start": p["start"].isoformat().replace("+00:00", "Z")} for p in series],
        **performance(overall),
        "arms": {arm: performance(totals) for arm, totals in sorted(by_arm.items())},
    }
    # entries of the treated arm while variants are counted too were made before the segment had
    # variants (or after they were removed): another period, not an arm of the test
    compared = {arm: t for arm, t in by_arm.items() if arm != TREATED or not _has_variants(by_arm)}
    if len(compared) < len(by_arm):
        report["not_compared"] = {TREATED: "entries made while the segment had no variants"}
    baseline = CONTROL if CONTROL in compared else (sorted(compared)[0] if len(compared) > 1 else None)
    if baseline is not None:
        report["baseline"] = baseline
        report["comparisons"] = {
            arm: compare(totals, compared[baseline])
            for arm, totals in sorted(compared.items())
            if arm != baseline
        }
    return report


def _has_variants(by_arm: Mapping[str, Any]) -> bool:
    return any(arm not in (CONTROL, TREATED) for arm in by_arm)
