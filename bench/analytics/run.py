"""bench/analytics: the time of one segment's 30-day report (``report.segment_report``, what
``connector segments report`` and ``GET …/segments/{name}/report`` answer) with N people's counters
in Redis, written by the same functions the worker calls.

    .venv/bin/python -m bench.analytics.run --people 10000 [--redis-url redis://...]

Each person enters the measured segment on one of the last 30 days (10 % control), most enter
three other segments too, a quarter order (credited to the segment), every one gets a delivery and
some opens; then the report is asked ``--runs`` times and p50/p99 printed. The report reads one
hash per day and the sizes: its time does not depend on N.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis

from connector.analytics import attribution, movement, report
from connector.dev.embedded_redis import EmbeddedRedis
from connector.event import Event
from connector.worker import sizes

NOW = datetime(2024, 3, 31, 12, tzinfo=UTC)
SEGMENT = "cart_abandoner"
OTHERS = ("vip", "engaged", "browsers")
BATCH = 5_000


def _fill(conn: redis.Redis, people: int) -> None:
    pipe = conn.pipeline(transaction=False)
    for n in range(people):
        pid, at = f"p{n}", NOW - timedelta(days=n % 30, hours=1)
        arm = "c" if n % 10 == 0 else "t"
        segments = [SEGMENT, *OTHERS[: n % 4]]
        sizes.record_transitions(pipe, "bench", segments, [], at, profile_id=pid)
        movement.record_diff(pipe, "bench", {}, pid, segments, [], at, arms={SEGMENT: arm})
        if n % 4 == 0:
            when = at + timedelta(minutes=30)
            order = Event(
                "bench", "b", f"o{n}", "track", "order_completed", when, when, {}, {"revenue": 20 + n % 9}
            )
            attribution.record(pipe, "bench", pid, [order], segments, {SEGMENT: arm})
        if (n + 1) % BATCH == 0:
            pipe.execute()
    pipe.execute()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--people", type=int, default=10_000)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--redis-url", default=None, help="default: an embedded Redis of its own")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        server = None if args.redis_url else EmbeddedRedis(Path(tmp), appendonly=False).start()
        try:
            conn = redis.Redis.from_url(args.redis_url or server.url)  # type: ignore[union-attr]
            conn.flushdb()
            started = time.perf_counter()
            _fill(conn, args.people)
            filled = time.perf_counter() - started
            got = report.segment_report(conn, "bench", SEGMENT, NOW, 30)
            times = []
            for _ in range(args.runs):
                t = time.perf_counter()
                report.segment_report(conn, "bench", SEGMENT, NOW, 30)
                times.append((time.perf_counter() - t) * 1000)
            times.sort()
            p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
            memory = conn.info("memory")["used_memory_human"]
            print(
                f"people {args.people:,}  filled in {filled:.1f} s  redis {memory}  "
                f"members {got['members']:,} size {got['size']:,} conversions {got['conversions']:,}"
            )
            print(
                f"report of {SEGMENT} over 30 days, {args.runs} runs: "
                f"p50 {statistics.median(times):.2f} ms  p99 {p99:.2f} ms"
            )
        finally:
            if server is not None:
                server.stop()


if __name__ == "__main__":
    main()
