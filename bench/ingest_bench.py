"""bench/ingest: the Procfile's web command against a bare Flask endpoint, side by side, in one run.

1. Starts an embedded Redis on its own port (append-only, fsync every second, as in production
   defaults) unless --redis-url is given, and writes a one-account config with a Segment secret.
2. Starts ``gunicorn --config python:connector.ops.gunicorn_conf 'connector.app:create_app()'`` and the
   same gunicorn settings serving ``bench/bare_app.py``.
3. (a) closed loop: wrk, cycling through pre-generated, distinct, correctly signed Segment bodies;
   (b) open loop at a fixed rate (bench/openloop.py), latency measured from each request's intended
   send instant.
   Each measurement runs --rounds times, alternating the two servers, so that every ratio compares
   runs made close in time (the machine may be shared with other work).
4. Prints a markdown table (requests/s, p50, p99) with, for ingest, how many events were stored
   and how many were duplicates (expected: every request stored, no duplicate).

With ``--live-client`` every round also runs the ingest server with a console client connected to
the account's live stream (``GET /api/v1/accounts/bench/live`` with an admin token made by
``connector tokens create``; it reconnects with ``Last-Event-ID`` when an answer's window closes, as
the browser does) and reports ingest with / without it, both ways, with the entries the client
received (proof it was connected).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import hmac
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import redis

from connector.dev.embedded_redis import EmbeddedRedis

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
SECRET = "bench-segment-secret-" + uuid.uuid4().hex
PATH = "/webhooks/bench/segment"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_bodies(path: Path, count: int, run: str) -> None:
    """Distinct Segment track events (unique messageId), signed like Segment does (HMAC-SHA1 hex)."""
    key = SECRET.encode()
    with path.open("w") as fh:
        for i in range(count):
            body = json.dumps(
                {
                    "type": "track",
                    "event": "Product Viewed",
                    "userId": f"user-{i % 5000}",
                    "anonymousId": f"anon-{i % 7000}",
                    "messageId": f"{run}-{i}",
                    "timestamp": "2024-05-01T12:00:00.000Z",
                    "context": {
                        "ip": "203.0.113.7",
                        "library": {"name": "analytics.js", "version": "2.11.1"},
                    },
                    "properties": {
                        "product_id": f"sku-{i % 300}",
                        "name": "Linen shirt",
                        "price": 39.0,
                        "currency": "EUR",
                        "url": "https://shop.example.com/products/linen-shirt",
                    },
                },
                separators=(",", ":"),
            )
            sig = hmac.new(key, body.encode(), hashlib.sha1).hexdigest()
            fh.write(f"{sig}\t{body}\n")


def start_gunicorn(app: str, port: int, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    cmd = [gunicorn, "--config", "python:connector.ops.gunicorn_conf", app]
    return subprocess.Popen(
        cmd,
        env={**env, "CONNECTOR_BIND": f"127.0.0.1:{port}"},
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def wait_http(url: str, proc: subprocess.Popen[bytes], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server for {url} exited with {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not answer within {timeout}s")


WRK_LINE = re.compile(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$")
UNIT = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def wrk(url: str, bodies: Path, threads: int, connections: int, seconds: int) -> dict[str, float]:
    env = {**os.environ, "BENCH_BODIES": str(bodies), "BENCH_THREADS": str(threads)}
    cmd = [
        "wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency",
        "-s", str(BENCH / "wrk_post.lua"), url,
    ]  # fmt: skip
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {"non_2xx": 0, "socket_errors": 0}
    for line in out.splitlines():
        if m := WRK_LINE.match(line):
            result[f"p{m.group(1)}_ms"] = round(float(m.group(2)) * UNIT[m.group(3)], 2)
        elif line.startswith("Requests/sec:"):
            result["rps"] = float(line.split()[1])
        elif "requests in" in line:
            result["requests"] = int(line.split()[0])
        elif "Non-2xx" in line:
            result["non_2xx"] = int(line.split()[-1])
        elif "Socket errors" in line:
            result["socket_errors"] = sum(int(n) for n in re.findall(r"\d+", line))
    return result


def openloop(port: int, bodies: Path, rate: int, seconds: int) -> dict[str, float]:
    cmd = [sys.executable, str(BENCH / "openloop.py"), "127.0.0.1", str(port), PATH, str(bodies)]
    out = subprocess.run([*cmd, str(rate), str(seconds)], capture_output=True, text=True, check=True)
    return dict(json.loads(out.stdout))


def cpu_ms(pids: list[int]) -> float:
    """CPU time (user + system) used so far by these processes, in milliseconds."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total * 1000 / os.sysconf("SC_CLK_TCK")


def server_pids(master: subprocess.Popen[bytes]) -> list[int]:
    """The gunicorn master and its workers."""
    children = subprocess.run(["pgrep", "-P", str(master.pid)], capture_output=True, text=True).stdout
    return [master.pid, *(int(pid) for pid in children.split())]


def stored(conn: redis.Redis) -> tuple[int, int]:
    counters = conn.hgetall("metrics:ingest")
    return int(counters.get(b"accepted:bench", 0)), int(counters.get(b"duplicate:bench", 0))


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/ingest", description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=int, default=8, help="duration of each closed-loop run")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each measurement")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections")
    parser.add_argument("--rate", type=int, default=1000, help="open-loop requests per second")
    parser.add_argument("--open-seconds", type=int, default=8, help="duration of each open-loop run")
    parser.add_argument("--redis-url", help="use this Redis (it is FLUSHED) instead of an embedded one")
    parser.add_argument("--workers", help="WEB_CONCURRENCY for both servers (default: gunicorn_conf's)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (logs)")
    parser.add_argument(
        "--live-client",
        action="store_true",
        help="also run ingest with a console client on the account's live stream, side by side",
    )
    return parser.parse_args()


LIVE = "ingest + live client"


def admin_token(env: dict[str, str]) -> str:
    """A bearer token for the bench account, made as an operator would (``connector tokens create``)."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "connector"), "tokens", "create", "--account", "bench",
         "--role", "admin", "--expires", "1d", "--note", "bench/ingest live client"],
        env=env, capture_output=True, text=True, check=True,
    )  # fmt: skip
    return done.stdout.strip().splitlines()[-1]


class LiveClient:
    """A console client on ``/api/v1/accounts/bench/live``: reads the event stream and reconnects
    with ``Last-Event-ID`` when an answer ends, until stopped; counts the entries it received."""

    def __init__(self, port: int, token: str) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/accounts/bench/live"
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        self.entries = 0
        self.answers = 0
        self.last_id = ""
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveClient:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    def _run(self) -> None:
        with httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as client:
            while not self.stopping.is_set():
                headers = {**self.headers, **({"Last-Event-ID": self.last_id} if self.last_id else {})}
                with client.stream("GET", self.url, params={"backlog": 0}, headers=headers) as answer:
                    if answer.status_code != 200:
                        raise RuntimeError(
                            f"live stream answered {answer.status_code}: {answer.read()[:300]!r}"
                        )
                    self.answers += 1
                    for line in answer.iter_lines():
                        if line.startswith("id:"):
                            self.last_id = line[3:].strip()
                            self.entries += 1
                        if self.stopping.is_set():
                            break


def server_env(tmp: Path, redis_url: str, workers: str | None) -> dict[str, str]:
    accounts = tmp / "accounts"
    accounts.mkdir()
    (accounts / "bench.yaml").write_text(
        "account: bench\nsenders:\n  segment:\n    secret_env: BENCH_SEGMENT_SECRET\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "REDIS_URL"))}
    env.update(
        REDIS_URL=redis_url,
        CONNECTOR_CONFIG_DIR=str(accounts),
        CONNECTOR_DATA_DIR=str(tmp),
        BENCH_SEGMENT_SECRET=SECRET,
        PYTHONPATH=str(BENCH),
    )
    if workers:
        env["WEB_CONCURRENCY"] = str(workers)
    return env


def closed_round(
    args: argparse.Namespace,
    conn: redis.Redis,
    targets: dict[str, int],
    masters: dict[int, subprocess.Popen[bytes]],
    redis_pids: list[int],
    bodies: Callable[[str, int], Path],
) -> dict[str, dict[str, float]]:
    """One closed-loop run of each server; the ingest one also counts Redis CPU and what was stored."""
    out: dict[str, dict[str, float]] = {}
    ingest_port = targets["ingest (signed, deduped, stored)"]
    for name, port in targets.items():
        run_bodies = bodies("closed", args.seconds * 12_000)
        conn.flushdb()
        pids = server_pids(masters[port])
        with live_client(name, port, args) as live:
            web0, redis0 = cpu_ms(pids), cpu_ms(redis_pids)
            result = wrk(
                f"http://127.0.0.1:{port}{PATH}", run_bodies, args.threads, args.connections, args.seconds
            )
            result["web_cpu_ms"] = (cpu_ms(pids) - web0) / result["requests"]
        if port == ingest_port:
            result["redis_cpu_ms"] = (cpu_ms(redis_pids) - redis0) / result["requests"]
            result["stored"], result["duplicates"] = stored(conn)
        if live is not None:
            result["live_entries"], result["live_answers"] = live.entries, live.answers
        out[name] = result
    return out


def live_client(name: str, port: int, args: argparse.Namespace) -> Any:
    """The console client for the LIVE runs, nothing otherwise. Its token is made after the run's
    FLUSHDB (which drops tokens too)."""
    return LiveClient(port, admin_token(args.env)) if name == LIVE else contextlib.nullcontext()


def open_round(
    args: argparse.Namespace, conn: redis.Redis, targets: dict[str, int], bodies: Callable[[str, int], Path]
) -> dict[str, dict[str, float]]:
    """One open-loop run of each server at the fixed rate."""
    out: dict[str, dict[str, float]] = {}
    ingest_port = targets["ingest (signed, deduped, stored)"]
    for name, port in targets.items():
        run_bodies = bodies("open", args.rate * args.open_seconds)
        conn.flushdb()
        with live_client(name, port, args) as live:
            result = openloop(port, run_bodies, args.rate, args.open_seconds)
        if port == ingest_port:
            result["stored"], result["duplicates"] = stored(conn)
        if live is not None:
            result["live_entries"], result["live_answers"] = live.entries, live.answers
        out[name] = result
    return out


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install -y wrk` or `brew install wrk`")

    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    procs: list[subprocess.Popen[bytes]] = []
    server: EmbeddedRedis | None = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            server = EmbeddedRedis(tmp / "redis").start()
            redis_url = server.url
        conn = redis.Redis.from_url(redis_url)
        env = server_env(tmp, redis_url, args.workers)
        ingest_port, bare_port = free_port(), free_port()
        procs.append(start_gunicorn("connector.app:create_app()", ingest_port, env, tmp / "ingest.log"))
        procs.append(start_gunicorn("bare_app:create_app()", bare_port, env, tmp / "bare.log"))
        wait_http(f"http://127.0.0.1:{ingest_port}/healthz", procs[0])
        wait_http(f"http://127.0.0.1:{bare_port}/", procs[1])

        def bodies(tag: str, count: int) -> Path:
            """A fresh file of distinct bodies per run; enough that no run wraps around."""
            path = tmp / f"bodies-{tag}.tsv"
            write_bodies(path, count, f"{tag}-{uuid.uuid4().hex[:8]}")
            return path

        targets = {"bare Flask 200": bare_port, "ingest (signed, deduped, stored)": ingest_port}
        if args.live_client:
            args.env = env
            targets[LIVE] = ingest_port
        for port in targets.values():
            wrk(f"http://127.0.0.1:{port}{PATH}", bodies("warmup", 24_000), args.threads, args.connections, 2)
        # Rounds alternate the two servers, so that each ratio compares runs close in time
        # (the machine may be shared).
        redis_pids = [server.process.pid] if server is not None and server.process is not None else []
        masters = {ingest_port: procs[0], bare_port: procs[1]}
        closed = [closed_round(args, conn, targets, masters, redis_pids, bodies) for _ in range(args.rounds)]
        opened = [open_round(args, conn, targets, bodies) for _ in range(args.rounds)]
        report(args, list(targets), closed, opened, (load_before, os.getloadavg()[0]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            proc.wait(15)
        if server is not None:
            server.stop()
        if args.keep:
            print(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def report(
    args: argparse.Namespace,
    names: list[str],
    closed: list[dict[str, dict[str, float]]],
    opened: list[dict[str, dict[str, float]]],
    load: tuple[float, float],
) -> None:
    bare, ingest = names[0], names[1]
    workers = args.workers or f"{os.cpu_count()} cores x 2 (gunicorn_conf)"
    print(f"\ngunicorn workers: {workers}; wrk -t{args.threads} -c{args.connections} -d{args.seconds}s")
    print(f"machine: {os.cpu_count()} cores; 1-minute load average {load[0]:.1f} before, {load[1]:.1f} after")
    print("\n| round | run | endpoint | req/s | p50 ms | p99 ms | CPU ms/request | notes |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for i, results in enumerate(closed, 1):
        for name, r in results.items():
            notes = f"non-2xx {int(r['non_2xx'])}, socket errors {int(r['socket_errors'])}"
            cpu = f"{r['web_cpu_ms']:.2f}"
            if "live_entries" in r:
                notes += (
                    f"; live client got {int(r['live_entries'])} entries ({int(r['live_answers'])} answers)"
                )
            if "stored" in r:
                notes += f"; stored {int(r['stored'])} of {int(r['requests'])}"
                notes += f", duplicates {int(r['duplicates'])}"
                cpu += f" + redis {r['redis_cpu_ms']:.2f}"
            print(
                f"| {i} | (a) closed loop, max throughput | {name} | {r['rps']:.0f} | {r['p50_ms']} "
                f"| {r['p99_ms']} | {cpu} | {notes} |"
            )
    for i, results in enumerate(opened, 1):
        for name, r in results.items():
            notes = (
                f"ok {r['ok']}/{r['sent']}, errors {r['errors']}; generator send lag p50/p99 "
                f"{r['send_lag_p50_ms']}/{r['send_lag_p99_ms']} ms"
            )
            if "live_entries" in r:
                notes += f"; live client got {int(r['live_entries'])} entries"
            if "stored" in r:
                notes += f"; stored {int(r['stored'])}, duplicates {int(r['duplicates'])}"
            print(
                f"| {i} | (b) open loop, {r['target_rate']:.0f} req/s | {name} | {r['achieved_rate']:.0f} "
                f"| {r['p50_ms']} | {r['p99_ms']} | | {notes} |"
            )
    ratios = [r[ingest]["rps"] / r[bare]["rps"] for r in closed]
    cpu_ratios = [
        r[bare]["web_cpu_ms"] / (r[ingest]["web_cpu_ms"] + r[ingest]["redis_cpu_ms"]) for r in closed
    ]
    p99s = [r[ingest]["p99_ms"] for r in opened]
    bare_p99s = [r[bare]["p99_ms"] for r in opened]
    print(
        f"\ningest / bare throughput per round: {', '.join(f'{x:.0%}' for x in ratios)}; "
        f"median {statistics.median(ratios):.0%} (target >= 60%)"
    )
    print(
        "bare CPU per request / ingest CPU per request (web + redis): "
        f"{', '.join(f'{x:.0%}' for x in cpu_ratios)}; median {statistics.median(cpu_ratios):.0%}"
    )
    print(
        f"ingest p99 at {args.rate} req/s per round: {', '.join(f'{x:g}' for x in p99s)} ms; "
        f"median {statistics.median(p99s):g} ms (target <= 25 ms; bare endpoint: "
        f"{', '.join(f'{x:g}' for x in bare_p99s)} ms)"
    )
    if LIVE in names:
        report_live(ingest, closed, opened)


def report_live(
    ingest: str, closed: list[dict[str, dict[str, float]]], opened: list[dict[str, dict[str, float]]]
) -> None:
    """Ingest with the live client against ingest without it, per round, both ways."""
    with_live = [r[LIVE]["rps"] / r[ingest]["rps"] for r in closed]
    cpu = [
        (r[LIVE]["web_cpu_ms"] + r[LIVE]["redis_cpu_ms"])
        / (r[ingest]["web_cpu_ms"] + r[ingest]["redis_cpu_ms"])
        for r in closed
    ]
    p99 = [r[LIVE]["p99_ms"] / r[ingest]["p99_ms"] for r in opened]
    back = [1 / x for x in with_live]
    print(
        f"\nthroughput with / without the live client per round: {', '.join(f'{x:.1%}' for x in with_live)}; "
        f"median {statistics.median(with_live):.1%} (without / with: {', '.join(f'{x:.1%}' for x in back)}; "
        f"median {statistics.median(back):.1%})"
    )
    print(
        f"CPU per request (web + redis) with / without: {', '.join(f'{x:.1%}' for x in cpu)}; "
        f"median {statistics.median(cpu):.1%}"
    )
    print(
        f"p99 at the fixed rate with / without: {', '.join(f'{x:.2f}x' for x in p99)}; "
        f"median {statistics.median(p99):.2f}x (without / with: median "
        f"{statistics.median([1 / x for x in p99]):.2f}x)"
    )


if __name__ == "__main__":
    main()
