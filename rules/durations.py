"""Durations in rule files: ``30s``, ``10m``, ``48h``, ``30d``, ``2w`` (units may be combined: ``1h30m``)."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from typing import Any

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_WHOLE = re.compile(r"^(?:\d+[smhdw])+$")
_PART = re.compile(r"(\d+)([smhdw])")


class DurationError(ValueError):
    pass


def parse_duration(value: Any) -> timedelta:
    """Parse a duration string; raise :class:`DurationError` with a readable reason."""
    if isinstance(value, str) and _WHOLE.match(value.strip()):
        seconds = sum(int(n) * _UNITS[u] for n, u in _PART.findall(value.strip()))
        if seconds > 0:
            return timedelta(seconds=seconds)
    shown = json.dumps(value) if isinstance(value, str) else repr(value)
    raise DurationError(f"{shown} is not a duration like 10m, 48h, 30d")


def is_duration(value: Any) -> bool:
    try:
        parse_duration(value)
    except DurationError:
        return False
    return True


def format_duration(delta: timedelta) -> str:
    """An exact spelling in days, hours, minutes, seconds: ``timedelta(hours=49)`` gives ``2d1h``."""
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
