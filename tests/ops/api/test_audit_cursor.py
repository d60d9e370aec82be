"""The audit log's cursor at the very start of the stream."""

from __future__ import annotations

import redis

from connector.ops import audit


def test_a_cursor_at_the_first_possible_id_is_the_end(redis_client: redis.Redis) -> None:
    assert audit.read(redis_client, ("*",), before="0-0") == ([], None)
    assert audit.read(redis_client, ("*",), before="0-00") == ([], None)
