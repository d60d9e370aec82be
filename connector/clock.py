"""The one clock seam.

Everything that depends on time takes ``now`` as a parameter; the edges (HTTP handlers, workers,
the scheduler) read it from here. Tests pin it with :func:`frozen` (in-process) or by setting
``CONNECTOR_CLOCK_OFFSET_SECONDS`` for processes they start.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta

Clock = Callable[[], datetime]


def _system_now() -> datetime:
    offset = os.environ.get("CONNECTOR_CLOCK_OFFSET_SECONDS")
    current = datetime.now(UTC)
    if offset:
        current += timedelta(seconds=float(offset))
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
