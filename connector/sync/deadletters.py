"""Dead letters: items the connector could not process, kept with the reason, never dropped.

One store for every kind (``events`` for undecodable queue items, ``sync:<destination>`` for
changes an ESP refused...). Each item is a JSON document with ``kind``, ``reason``, ``at`` and
``payload``; an index per kind keeps them in arrival order.

Keys: ``dlq:item:{id}`` (string), ``dlq:index:{kind}`` (sorted set by time), ``dlq:kinds`` (set).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import redis

from connector.clock import isoformat


@dataclass(frozen=True)
class DeadLetter:
    id: str
    kind: str
    reason: str
    at: str
    payload: Any
    account: str | None = None

    def to_json(self) -> str:
        return json.dumps(self.__dict__, default=str)


class DeadLetters:
    def __init__(self, conn: redis.Redis) -> None:
        self.conn = conn

    def put(self, kind: str, reason: str, payload: Any, now: datetime, account: str | None = None) -> str:
        item = DeadLetter(uuid.uuid4().hex, kind, reason, isoformat(now), payload, account)
        pipe = self.conn.pipeline(transaction=True)
        pipe.set(f"dlq:item:{item.id}", item.to_json())
        pipe.zadd(f"dlq:index:{kind}", {item.id: now.timestamp()})
        pipe.sadd("dlq:kinds", kind)
        pipe.execute()
        return item.id

    def get(self, item_id: str) -> DeadLetter | None:
        raw = self.conn.get(f"dlq:item:{item_id}")
        return DeadLetter(**json.loads(raw)) if raw else None

    def kinds(self) -> list[str]:
        return sorted(k.decode() for k in self.conn.smembers("dlq:kinds"))

    def list(self, kind: str | None = None, limit: int = 100) -> Iterator[DeadLetter]:
        for k in [kind] if kind else self.kinds():
            for item_id in self.conn.zrange(f"dlq:index:{k}", 0, limit - 1):
                item = self.get(item_id.decode())
                if item is not None:
                    yield item

    def count(self, kind: str) -> int:
        return int(self.conn.zcard(f"dlq:index:{kind}"))

    def remove(self, item: DeadLetter) -> None:
        pipe = self.conn.pipeline(transaction=True)
        pipe.delete(f"dlq:item:{item.id}")
        pipe.zrem(f"dlq:index:{item.kind}", item.id)
        pipe.execute()
