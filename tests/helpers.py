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


class SimClock:
    """A clock that moves only when something waits on it: called (or ``monotonic``) it gives
    epoch seconds; ``sleep`` (or ``pause``) records the wait and moves it on. ``before_sleep``
    runs before each wait (a fault a test injects while the code waits)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self.slept: list[float] = []
        self.before_sleep: Callable[[], None] | None = None

    def __call__(self) -> float:
        return self.t

    def monotonic(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        if self.before_sleep is not None:
            self.before_sleep()
        self.slept.append(seconds)
        self.t += seconds

    pause = sleep


@contextmanager
def unreachable_redis_url() -> Iterator[str]:
    """A Redis URL of a port nothing listens on (the socket holds the port, so nothing else takes it)."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"redis://127.0.0.1:{held.getsockname()[1]}/0"
