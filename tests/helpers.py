"""Test helpers shared by several test modules."""

from __future__ import annotations

import json
from typing import Any

import redis


def stored_events(conn: redis.Redis) -> list[dict[str, Any]]:
    """Every event stored for the workers, across shards."""
    out: list[dict[str, Any]] = []
    for key in sorted(conn.scan_iter("q:events:*")):
        for _, fields in conn.xrange(key):
            out.append(json.loads(fields[b"e"]))
    return out
