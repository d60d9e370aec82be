"""The one clock seam.

Everything that depends on time takes ``now`` as a parameter; the edges (HTTP handlers, workers,
the scheduler) read it from here. Tests pin it with :func:`frozen` (in-process) or by setting
``CONNECTOR_CLOCK_OFFSET_SECONDS`` for processes they start.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

from connector.errors import ConfigError

Clock = Callable[[], datetime]

OFFSET_ENV = "CONNECTOR_CLOCK_OFFSET_SECONDS"
OFFSET_MAX_SECONDS = 100 * 366 * 86400  # ±100 years: any test's needs, far from datetime's limits


def offset_seconds() -> float:
    """``CONNECTOR_CLOCK_OFFSET_SECONDS`` as a number (0 when unset). A value that is not a finite
    number of seconds within ±100 years is a :class:`ConfigError` naming the variable (checked at a
    process's start with the other settings), never a ``ValueError`` from the first clock read."""
    raw = os.environ.get(OFFSET_ENV)
    if raw is None or raw.strip() == "":
        return 0.0
    shown = raw if len(raw) <= 40 else raw[:40] + "..."
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{OFFSET_ENV}={shown!r} is not a number of seconds") from None
    if not math.isfinite(value) or abs(value) > OFFSET_MAX_SECONDS:
        raise ConfigError(
            f"{OFFSET_ENV}={shown!r} must be a finite number of seconds between "
            f"-{OFFSET_MAX_SECONDS} and {OFFSET_MAX_SECONDS} (about 100 years)"
        )
    return value


def _system_now() -> datetime:
    current = datetime.now(UTC)
    offset = offset_seconds()
    if offset:
        current += timedelta(seconds=offset)
    return current


_source: Clock = _system_now


def now() -> datetime:
    """Current instant, aware UTC."""
    return _source()


def monotonic() -> float:
    """Seconds from an arbitrary origin, for measuring durations only."""
    return time.monotonic()


def set_source(source: Clock) -> None:
    global _source
    _source = source


def reset() -> None:
    set_source(_system_now)


class FrozenClock:
    """A clock that stands still until moved; ``advance`` moves it forward."""

    def __init__(self, instant: datetime) -> None:
        if instant.tzinfo is None:
            raise ValueError("FrozenClock needs an aware datetime")
        self.instant = instant.astimezone(UTC)

    def __call__(self) -> datetime:
        return self.instant

    def advance(self, delta: timedelta) -> datetime:
        self.instant += delta
        return self.instant


@contextmanager
def frozen(instant: datetime) -> Iterator[FrozenClock]:
    clock = FrozenClock(instant)
    previous = _source
    set_source(clock)
    try:
        yield clock
    finally:
        set_source(previous)


def to_utc(value: datetime) -> datetime:
    """Aware UTC; naive values are taken as UTC."""
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def isoformat(value: datetime) -> str:
    return to_utc(value).isoformat().replace("+00:00", "Z")


def from_isoformat(text: str) -> datetime:
    """An instant :func:`isoformat` wrote (``Z`` or an offset), aware UTC; ValueError when it is none."""
    return to_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
