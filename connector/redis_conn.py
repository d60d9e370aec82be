"""Redis connections: one for the queues (RQ and the event streams), one for the profile store.

They default to the same URL. RQ does not run on Redis Cluster while a large profile store may
want to, so they are kept apart from the start.
"""

from __future__ import annotations

from functools import lru_cache

import redis


def _connect(url: str) -> redis.Redis:
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        health_check_interval=30,
    )


@lru_cache(maxsize=8)
def connection(url: str) -> redis.Redis:
    """A shared client (it holds a connection pool) per URL."""
    return _connect(url)


def reset() -> None:
    connection.cache_clear()
