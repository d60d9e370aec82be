"""Which event properties the history keeps.

The rules layer may narrow the kept set later (for example to the properties its conditions
reference) by installing another filter with :func:`set_property_filter`. The default keeps every
scalar property (strings up to ``MAX_STRING`` characters, numbers, booleans).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

MAX_STRING = 256

# (account, event name, properties) -> the properties to keep
PropertyFilter = Callable[[str, str, Mapping[str, Any]], dict[str, Any]]


def keep_scalars(account: str, name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    del account, name
    kept: dict[str, Any] = {}
    for key, value in properties.items():
        if isinstance(value, bool):  # apart from int: compiled, an int is unboxed and a bool
            kept[key] = value  # would come back as 1 or 0
        elif isinstance(value, int):
            kept[key] = value
        elif isinstance(value, float):
            if math.isfinite(value):
                kept[key] = value
        elif isinstance(value, str):
            kept[key] = value[:MAX_STRING]
    return kept


_filter: PropertyFilter = keep_scalars


def set_property_filter(fn: PropertyFilter | None) -> None:
    """Install the filter used by every later write; ``None`` restores the default."""
    global _filter
    _filter = fn or keep_scalars


def kept_properties(account: str, name: str, properties: Mapping[str, Any]) -> dict[str, Any]:
    return _filter(account, name, properties)
