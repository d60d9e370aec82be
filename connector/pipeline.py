"""What the event worker does with a decoded batch. Filled in by the profile store."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from .event import Event


def process(events: Sequence[Event], now: datetime) -> None:
    """Apply a batch of stored events. Must be idempotent: a batch may be delivered twice."""
    del events, now
