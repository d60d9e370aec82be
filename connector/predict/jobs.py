"""The training job on its own RQ queue ``predict`` (served after reevaluate, events, sync and backfill,
so training never delays event or sync work), and the scheduler's daily task that enqueues it."""

from __future__ import annotations

import logging
from datetime import datetime

from connector import clock
from connector import runtime as process_runtime

log = logging.getLogger(__name__)

PREDICT_QUEUE = "predict"
DAILY_SECONDS = 24 * 3600
JOB_TIMEOUT = 3600
CHECK_SECONDS = 60.0  # the scheduler ticks 5 times a second; the daily claim is checked once a minute,
_last_check: list[float | None] = [None]  # the first time a minute after the process's first tick


def train(account: str) -> dict[str, object]:
    """RQ job: train one account's models on the profile store as of now."""
    from connector.predict.train import train_account

    rt = process_runtime.current()
    result = train_account(rt.profile_redis, account, clock.now())
    log.info(
        "predictions trained" if result.trained else "predictions not trained",
        extra={"account": account, "customers": result.customers, "missing": result.missing},
    )
    return {"account": account, "trained": result.trained, "missing": result.missing}


def enqueue_training(account: str) -> None:
    from rq import Queue

    rt = process_runtime.current()
    Queue(PREDICT_QUEUE, connection=rt.queue_redis).enqueue(
        "connector.predict.jobs.train", account, job_timeout=JOB_TIMEOUT, result_ttl=0, failure_ttl=7 * 86400
    )


def daily(now: datetime) -> int:
    """Scheduler task: once a day per account (a Redis key with a day's expiry claims the day, so two
    schedulers enqueue once), enqueue the account's training. Returns how many were enqueued."""
    last = _last_check[0]
    if last is None:
        _last_check[0] = now.timestamp()
        return 0
    if now.timestamp() - last < CHECK_SECONDS:
        return 0
    _last_check[0] = now.timestamp()
    rt = process_runtime.current()
    enqueued = 0
    for account in (a.id for a in rt.accounts):
        if rt.queue_redis.set(f"predict:daily:{account}", now.isoformat(), nx=True, ex=DAILY_SECONDS):
            enqueue_training(account)
            enqueued += 1
    return enqueued
