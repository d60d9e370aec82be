"""Test helpers shared by several test modules."""

from __future__ import annotations

import json
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.connection import AbstractConnection


def stored_events(conn: redis.Redis) -> list[dict[str, Any]]:
    """Every event stored for the workers, across shards."""
    out: list[dict[str, Any]] = []
    for key in sorted(conn.scan_iter("q:events:*")):
        for _, fields in conn.xrange(key):
            out.append(json.loads(fields[b"e"]))
    return out


def before_sent(
    monkeypatch: pytest.MonkeyPatch,
    needles: Sequence[bytes],
    meanwhile: Callable[[], object],
    *,
    once: bool = True,
) -> None:
    """Run ``meanwhile()`` just before a request holding every one of ``needles`` is sent on any
    Redis connection (once, or before each such request): what another worker or drain lane does
    while this one waits for Redis. Code under test meets it through Redis, compiled or not."""
    real = AbstractConnection.send_packed_command
    done: list[bool] = []

    def hooked(self: AbstractConnection, command: Any, check_health: bool = True) -> None:
        packed = command if isinstance(command, bytes) else b"".join(command)
        if not (once and done) and all(needle in packed for needle in needles):
            done.append(True)
            meanwhile()
        real(self, command, check_health)

    monkeypatch.setattr(AbstractConnection, "send_packed_command", hooked)


def script_call(conn: redis.Redis, source: str) -> bytes:
    """What a request that calls this script holds: ``EVALSHA`` and the script's digest (loaded now)."""
    return b"EVALSHA\r\n$40\r\n" + conn.script_load(source).encode()


class FakeTime:
    """A monotonic clock that moves only when something waits on it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.pauses: list[float] = []

    def monotonic(self) -> float:
        return self.now

    def pause(self, seconds: float) -> None:
        self.pauses.append(seconds)
        self.now += seconds


@contextmanager
def unreachable_redis_url() -> Iterator[str]:
    """A Redis URL of a port nothing listens on (the socket holds the port, so nothing else takes it)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{held.getsockname()[1]}/0"
