"""The scheduler process: wakes every ``TICK_SECONDS`` and

* re-arms the drain of any event shard that holds events but has no drain job (a web process
  that died between storing and enqueueing, a worker that died mid-batch);
* runs every registered periodic task (the due index of time-based re-evaluation registers here).
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable
from datetime import datetime
from types import FrameType

import redis

from . import clock, redis_conn
from .queue import PUMP_TTL_SECONDS, EventQueue, pump_key
from .settings import Settings

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2

Task = Callable[[datetime], int]
TASKS: list[Task] = []


def rearm_pumps(queue: EventQueue) -> int:
    rearmed = 0
    for shard, depth in queue.pending().items():
        if depth and queue.conn.set(pump_key(shard), "1", nx=True, ex=PUMP_TTL_SECONDS):
            queue.enqueue_drain(shard)
            rearmed += 1
    return rearmed


def tick(queue: EventQueue, now: datetime) -> int:
    done = rearm_pumps(queue)
    for task in TASKS:
        done += task(now)
    return done


def run(settings: Settings | None = None, max_ticks: int | None = None) -> None:
    settings = settings or Settings.from_env()
    queue = EventQueue(redis_conn.connection(settings.queue_redis_url), settings.event_shards)
    stopping = False

    def _stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    ticks = 0
    while not stopping and (max_ticks is None or ticks < max_ticks):
        try:
            tick(queue, clock.now())
        except redis.RedisError as err:
            log.warning("scheduler tick failed: %s", err)
        ticks += 1
        time.sleep(TICK_SECONDS)
