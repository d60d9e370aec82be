"""Another worker growing a bucketed structure while a call is made (connector.buckets)."""

from __future__ import annotations

import pytest
import redis

from connector import buckets
from tests.helpers import before_sent, script_call


def states_after(level: int, split: int, splits: int) -> list[tuple[int, int]]:
    """(L, s) now and after each of the next ``splits`` splits."""
    states = [(level, split)]
    for _ in range(splits):
        at_level, at = states[-1]
        states.append((at_level + 1, 0) if at + 1 == 1 << at_level else (at_level, at + 1))
    return states


def split_before_each_call(
    monkeypatch: pytest.MonkeyPatch,
    conn: redis.Redis,
    source: str,
    state: str,
    field: str,
    kind: str,
    prefix: str,
) -> list[int]:
    """Before every send of a call of the script ``source``, one more split of ``field``'s buckets
    (as another worker's, with cap 1: due whatever the count); returns the list the sends are
    counted in. The hook is on the connection's send, which every way of calling a script goes
    through; the calls it is used for go one per send."""
    split_script = conn.register_script(buckets.SPLIT)
    calls: list[int] = []

    def a_split_first() -> None:
        level, split, _ = buckets.unpack_state(conn.hget(state, field))
        src, dst = f"{prefix}{split}", f"{prefix}{split + (1 << level)}"
        split_script(keys=[state, src, dst], args=[field, kind, 1, prefix, level, split])
        calls.append(1)

    before_sent(monkeypatch, [script_call(conn, source)], a_split_first, once=False)
    return calls
