"""Durations in rule files: ``30s``, ``10m``, ``48h``, ``30d``, ``2w`` (units may be combined: ``1h30m``),
and calendar months and years: ``12mo``, ``1y`` (``1mo15d`` adds the month first, then the days).

A duration without months is a :class:`~datetime.timedelta`. One with months is a :class:`Months`: adding it
to an instant moves the month (and year) and keeps the day and time of day; when that day does not exist
in the target month (Jan 31 + 1mo; Feb 29 + 1y), the span ends with that month, at the first instant of
the next one (Mar 1 00:00). This keeps
``instant + span`` non-decreasing in ``instant``, so "at least 12 months since" and "within 1 month" have
exact edges that the evaluation can schedule.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_right
from calendar import monthrange
from collections.abc import Sequence
from datetime import date, datetime, timedelta
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_MONTH_UNITS = {"mo": 1, "y": 12}
_WHOLE = re.compile(r"^(?:\d+(?:mo|[smhdwy]))+$")
_PART = re.compile(r"(\d+)(mo|[smhdwy])")
_LONGEST_MONTH = timedelta(days=31)
# The longest span a rule may use: a hundred years. Event times are kept between 1970 and 2200
# (the receivers refuse others), so every window edge stays a representable instant.
MAX_SECONDS = 36525 * 86400
MAX_MONTHS = 1200
_MAX_LONGEST = MAX_MONTHS * 31 * 86400  # months counted as 31 days, as `Months.longest` does


class DurationError(ValueError):
    pass


class Months:
    """A calendar span: ``months`` calendar months, then ``extra`` (a fixed duration)."""

    __slots__ = ("extra", "months")

    def __init__(self, months: int, extra: timedelta = timedelta(0)) -> None:
        self.months = months
        self.extra = extra

    def after(self, instant: datetime) -> datetime:
        """``instant`` moved forward by this span (calendar months first, then the fixed part)."""
        index = instant.month - 1 + self.months
        year, month = instant.year + index // 12, index % 12 + 1
        if instant.day <= monthrange(year, month)[1]:
            moved = instant.replace(year=year, month=month)
        else:  # the day does not exist there: the span ends with the target month
            year, month = (year + 1, 1) if month == 12 else (year, month + 1)
            moved = instant.replace(year=year, month=month, day=1, hour=0, minute=0, second=0, microsecond=0)
        return moved + self.extra

    def __radd__(self, instant: datetime) -> datetime:
        return self.after(instant)

    @property
    def longest(self) -> timedelta:
        """An upper bound in fixed time (every month counted as 31 days)."""
        return self.months * _LONGEST_MONTH + self.extra

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Months) and (other.months, other.extra) == (self.months, self.extra)

    def __hash__(self) -> int:
        return hash((self.months, self.extra))

    def __repr__(self) -> str:
        return f"Months({format_duration(self)!r})"


Span = timedelta | Months


def parse_duration(value: Any) -> Span:
    """Parse a duration string; raise :class:`DurationError` with a readable reason."""
    shown = json.dumps(value) if isinstance(value, str) else repr(value)
    if isinstance(value, str) and _WHOLE.match(value.strip()):
        seconds = months = 0
        too_long = f"{shown} is longer than 100 years, the longest span a rule may use"
        for n, unit in _PART.findall(value.strip()):
            if len(n) > 12:
                raise DurationError(too_long)
            if unit in _MONTH_UNITS:
                months += int(n) * _MONTH_UNITS[unit]
            else:
                seconds += int(n) * _UNITS[unit]
        if seconds > MAX_SECONDS or months * 31 * 86400 + seconds > _MAX_LONGEST:
            raise DurationError(too_long)
        if months > 0:
            return Months(months, timedelta(seconds=seconds))
        if seconds > 0:
            return timedelta(seconds=seconds)
    if isinstance(value, date):  # YAML reads 2023-01-01 as a date
        raise DurationError(f"{value.isoformat()} is a date, not a duration like 10m, 48h, 30d")
    raise DurationError(f"{shown} is not a duration like 10m, 48h, 30d")


def is_duration(value: Any) -> bool:
    try:
        parse_duration(value)
    except DurationError:
        return False
    return True


def longest(span: Span) -> timedelta:
    """A fixed duration at least as long as ``span`` wherever it starts."""
    return span.longest if isinstance(span, Months) else span


def shortest(span: Span) -> timedelta:
    """A fixed duration at most as long as ``span`` wherever it starts (months of 28 days)."""
    return span.months * timedelta(days=28) + span.extra if isinstance(span, Months) else span


def shifted(instant: datetime, span: Span) -> datetime | None:
    """``instant + span``, or None when that is past the last instant a datetime can hold (a trait's
    date may be any year; ``9999-12-31`` stands for "never" in many systems)."""
    try:
        return instant + span
    except (OverflowError, ValueError):
        return None


def passed(times: Sequence[datetime], t: datetime, span: Span) -> int:
    """How many of the sorted ``times`` are at least ``span`` before ``t`` (``time + span <= t``)."""
    if isinstance(span, Months):
        return bisect_right(times, t, key=span.after)
    return bisect_right(times, t - span)


def format_duration(delta: Span) -> str:
    """An exact spelling: ``timedelta(hours=49)`` gives ``2d1h``; twelve calendar months give ``12mo``."""
    if isinstance(delta, Months):
        rest = format_duration(delta.extra) if delta.extra else ""
        return f"{delta.months}mo{rest}"
    seconds = int(delta.total_seconds())
    if seconds <= 0:
        return "0s"
    out = []
    for unit in ("d", "h", "m", "s"):
        size = _UNITS[unit]
        if seconds >= size:
            count, seconds = divmod(seconds, size)
            out.append(f"{count}{unit}")
    return "".join(out)
