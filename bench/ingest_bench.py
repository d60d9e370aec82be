"""bench/ingest: the Procfile's web command against a bare Flask endpoint, side by side, in one run.

1. Starts an embedded Redis on its own port (append-only, fsync every second, as in production
   defaults) unless --redis-url is given, and writes a one-account config with a Segment secret.
2. Starts ``gunicorn --config python:connector.ops.gunicorn_conf 'connector.app:create_app()'`` and the
   same gunicorn settings serving ``bench/bare_app.py``.
3. (a) closed loop: wrk, cycling through pre-generated, distinct, correctly signed Segment bodies;
   (b) open loop at a fixed rate (bench/openloop.py), latency measured from each request's intended
   send instant.
   Each measurement runs --rounds times, alternating the two servers (every other round in the
   reverse order), so that every ratio compares runs made close in time (the machine may be shared
   with other work). Both count the servers' CPU per request (web processes + Redis); at the open
   loop's fixed rate that compares the work done for the same load.
4. Prints a markdown table (requests/s, p50, p99) with, for ingest, how many events were stored
   and how many were duplicates (expected: every request stored, no duplicate).

With ``--live-client`` every round also runs the ingest server with a console client connected to
the account's live stream (``GET /api/v1/accounts/bench/live`` with an admin token made by
``connector tokens create``; after each answer it waits the answer's ``retry`` and asks again with
``Last-Event-ID``, as the browser's EventSource does) and reports ingest with / without it, both
ways, how many of the run's deliveries the client received (one by one, or counted in the
``not_shown`` lines past the deliveries shown a second), and how long after its instant (taken
before the events were stored, so before the answer) each entry reached the client. The client
stands for a browser on another machine: it reads each answer whole with regular expressions (the
instants and outcomes of stored deliveries) and reports its own CPU per delivery, which it takes
from the same cores as the server here.

``--baseline DIR`` also serves, side by side in the same rounds, the connector from another
checkout (``git worktree add /tmp/before <rev>``) with that checkout's gunicorn settings: before /
after in one run. ``--compare-gunicorn-args ARGS`` also serves the bare app and the connector with
``GUNICORN_CMD_ARGS=ARGS`` (e.g. ``--worker-class gthread --threads 4``), to compare server settings.
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
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


def start_gunicorn(
    app: str, port: int, env: dict[str, str], log: Path, root: Path = ROOT
) -> subprocess.Popen[bytes]:
    gunicorn = str(Path(sys.executable).parent / "gunicorn")
    cmd = [gunicorn, "--config", "python:connector.ops.gunicorn_conf", app]
    # this checkout's connector (or --baseline's), ahead of the one installed in the venv
    env = {**env, "PYTHONPATH": f"{root}{os.pathsep}{env['PYTHONPATH']}"}
    return subprocess.Popen(
        cmd,
        env={**env, "CONNECTOR_BIND": f"127.0.0.1:{port}"},
        cwd=root,
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
    parser.add_argument(
        "--baseline", type=Path, help="also serve the connector from this checkout (before / after)"
    )
    parser.add_argument(
        "--compare-gunicorn-args",
        help="also serve bare and ingest with GUNICORN_CMD_ARGS set to this (other server settings)",
    )
    parser.add_argument("--no-open-loop", action="store_true", help="closed-loop runs only")
    return parser.parse_args()


BARE = "bare Flask 200"
INGEST = "ingest (signed, deduped, stored)"
LIVE = "ingest + live client"
BEFORE = "before: ingest"
BEFORE_LIVE = "before: ingest + live client"
ALT_BARE = "bare, other gunicorn args"
ALT_INGEST = "ingest, other gunicorn args"
ALT_LIVE = "ingest + live client, other gunicorn args"
LIVE_CATCH_UP_SECONDS = 10.0  # after a run, how long the client may take to receive the last entries
SETTLE_SECONDS = 1.5  # after the client left: its stream notices and stops keeping the account watched


@dataclass(frozen=True)
class Target:
    name: str
    port: int
    ingest: bool  # a connector (counts what it stored, Redis CPU) rather than the bare app
    live: bool  # with a console client on the live stream


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
    with ``Last-Event-ID`` when an answer ends, until stopped; counts the deliveries it received
    and, per entry, the time from the entry's instant to its arrival here."""

    def __init__(self, port: int, token: str) -> None:
        self.url = f"http://127.0.0.1:{port}/api/v1/accounts/bench/live"
        self.headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        self.entries = 0  # stored deliveries (accepted or duplicate), shown or counted
        self.counted = 0  # of which counted in "not_shown" lines rather than shown one by one
        self.answers = 0
        self.last_id = ""
        self.retry_seconds = 0.0
        self.delays_ms: list[float] = []
        self.cpu_s = 0.0  # this client's own CPU time (its thread): the bench's, not the server's
        self.connected = threading.Event()
        self.stopping = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> LiveClient:
        self.thread.start()
        if not self.connected.wait(30):
            raise RuntimeError(f"live client not connected: {self.failed!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopping.set()
        self.thread.join(30)

    def wait_for(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self.entries < count and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.05)

    def _run(self) -> None:
        try:
            self._stream()
        except BaseException as err:  # reported by __enter__ or in the results
            self.failed = err
            self.connected.set()

    def _stream(self) -> None:
        started = time.thread_time()
        with httpx.Client(timeout=httpx.Timeout(10.0, read=30.0)) as client:
            while not self.stopping.is_set():
                headers = {**self.headers, **({"Last-Event-ID": self.last_id} if self.last_id else {})}
                answer = client.get(self.url, params={"backlog": 0}, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"live stream answered {answer.status_code}: {answer.content[:300]!r}")
                self.answers += 1
                self._answer(answer.content, time.time())
                self.connected.set()  # the stream watches the account from its first answer
                self.cpu_s = time.thread_time() - started
                self.stopping.wait(self.retry_seconds)  # as EventSource does between two answers

    def _answer(self, body: bytes, arrived: float) -> None:
        """One whole answer (without ``window`` an answer ends at once): where to resume, the wait
        before the next, and the stored deliveries with their instants. Read with regular
        expressions over the body rather than line by line and JSON per entry: the client stands
        for a browser on another machine, and on this one it should take as little CPU from the
        server as it can (its CPU per delivery is reported)."""
        if ids := _SSE_ID.findall(body):
            self.last_id = ids[-1].decode()
        if retry := _SSE_RETRY.search(body):
            self.retry_seconds = int(retry.group(1)) / 1000
        for at in _SSE_DELIVERY.findall(body):
            self.entries += 1
            self.delays_ms.append((arrived - datetime.fromisoformat(at.decode()).timestamp()) * 1000)
        for count in _SSE_NOT_SHOWN.findall(body):  # past the deliveries shown a second: counts
            self.entries += int(count)  # (their line's instant is its flush's: no delay measured)
            self.counted += int(count)


# An ingest entry starts with its instant; landed/esp entries start with their kind, refusals are not
# counted. A JSON string cannot hold an unescaped quote, so '"outcome":"' matches the field only.
_SSE_DELIVERY = re.compile(rb'^data: \{"at":"([^"]+)"[^\n]*?"outcome":"(?:accepted|duplicate)"', re.M)
_SSE_NOT_SHOWN = re.compile(
    rb'^data: \{"at":"[^"]+"[^\n]*?"outcome":"not_shown"[^\n]*?"deliveries":(\d+)', re.M
)
_SSE_ID = re.compile(rb"^id: ?([^\n]*)$", re.M)
_SSE_RETRY = re.compile(rb"^retry: ?(\d+)$", re.M)


def server_env(tmp: Path, redis_url: str, workers: str | None) -> dict[str, str]:
    accounts = tmp / "accounts"
    accounts.mkdir()
    (accounts / "bench.yaml").write_text(
        "account: bench\nsenders:\n  segment:\n    secret_env: BENCH_SEGMENT_SECRET\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CONNECTOR_", "REDIS_URL"))}
    env.pop("GUNICORN_CMD_ARGS", None)
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


@contextlib.contextmanager
def live_client(target: Target, args: argparse.Namespace) -> Iterator[LiveClient | None]:
    """The console client for the live runs, nothing otherwise. Its token is made after the run's
    FLUSHDB (which drops tokens too). After it leaves, the bench waits for its stream to stop (the
    next run must not find the account still watched)."""
    if not target.live:
        yield None
        return
    with LiveClient(target.port, admin_token(args.env)) as client:
        yield client
    time.sleep(SETTLE_SECONDS)


def measure_live(conn: redis.Redis, result: dict[str, Any], live: LiveClient | None) -> None:
    """Once the load stopped: wait for the client to receive every stored delivery (the requests
    still in flight when the load generator stopped included), note what it got."""
    if live is None:
        return
    time.sleep(0.5)  # the requests in flight are served
    result["stored"], result["duplicates"] = stored(conn)
    expected = int(result["stored"] + result["duplicates"])
    live.wait_for(expected, LIVE_CATCH_UP_SECONDS)
    result["live_entries"], result["live_answers"] = live.entries, live.answers
    result["live_counted"] = live.counted
    result["live_client_cpu_ms"] = live.cpu_s * 1000 / max(expected, 1)
    result["live_expected"] = expected
    delays = sorted(live.delays_ms) or [float("nan")]
    result["live_p50_ms"] = delays[len(delays) // 2]
    result["live_p99_ms"] = delays[min(len(delays) - 1, int(0.99 * len(delays)))]
    result["live_max_ms"] = delays[-1]
    if live.failed is not None:
        result["live_failed"] = repr(live.failed)


def closed_round(
    args: argparse.Namespace,
    conn: redis.Redis,
    targets: list[Target],
    masters: dict[int, subprocess.Popen[bytes]],
    redis_pids: list[int],
    bodies: Callable[[str, int], Path],
    reverse: bool = False,
) -> dict[str, dict[str, Any]]:
    """One closed-loop run of each target; a connector's also counts Redis CPU and what was stored."""
    out: dict[str, dict[str, Any]] = {}
    for target in targets[:: -1 if reverse else 1]:
        run_bodies = bodies("closed", args.seconds * 12_000)
        conn.flushdb()
        pids = server_pids(masters[target.port])
        with live_client(target, args) as live:
            web0, redis0 = cpu_ms(pids), cpu_ms(redis_pids)
            result: dict[str, Any] = dict(
                wrk(
                    f"http://127.0.0.1:{target.port}{PATH}",
                    run_bodies,
                    args.threads,
                    args.connections,
                    args.seconds,
                )
            )
            result["web_cpu_ms"] = (cpu_ms(pids) - web0) / result["requests"]
            if target.ingest:
                result["redis_cpu_ms"] = (cpu_ms(redis_pids) - redis0) / result["requests"]
                result["stored"], result["duplicates"] = stored(conn)
            measure_live(conn, result, live)
        out[target.name] = result
    return out


def open_round(
    args: argparse.Namespace,
    conn: redis.Redis,
    targets: list[Target],
    masters: dict[int, subprocess.Popen[bytes]],
    redis_pids: list[int],
    bodies: Callable[[str, int], Path],
    reverse: bool = False,
) -> dict[str, dict[str, Any]]:
    """One open-loop run of each target at the fixed rate. CPU per request is counted here too: at
    the same rate for every target it compares work done for the same load, where a closed loop's
    also moves with the throughput each run reached."""
    out: dict[str, dict[str, Any]] = {}
    for target in targets[:: -1 if reverse else 1]:
        run_bodies = bodies("open", args.rate * args.open_seconds)
        conn.flushdb()
        pids = server_pids(masters[target.port])
        with live_client(target, args) as live:
            web0, redis0 = cpu_ms(pids), cpu_ms(redis_pids)
            result: dict[str, Any] = dict(openloop(target.port, run_bodies, args.rate, args.open_seconds))
            sent = max(int(result["sent"]), 1)
            result["web_cpu_ms"] = (cpu_ms(pids) - web0) / sent
            if target.ingest:
                result["redis_cpu_ms"] = (cpu_ms(redis_pids) - redis0) / sent
                result["stored"], result["duplicates"] = stored(conn)
            measure_live(conn, result, live)
        out[target.name] = result
    return out


def start_servers(
    args: argparse.Namespace, env: dict[str, str], tmp: Path
) -> tuple[list[Target], dict[int, subprocess.Popen[bytes]]]:
    """The servers the run compares, each on its own port, and the targets (server + live or not)."""
    masters: dict[int, subprocess.Popen[bytes]] = {}
    targets: list[Target] = []

    def serve(app: str, log: str, server_env: dict[str, str], root: Path = ROOT) -> int:
        port = free_port()
        masters[port] = start_gunicorn(app, port, server_env, tmp / log, root)
        probe = "/healthz" if app.startswith("connector") else "/"
        wait_http(f"http://127.0.0.1:{port}{probe}", masters[port])
        return port

    connector = "connector.app:create_app()"
    bare, ingest = serve("bare_app:create_app()", "bare.log", env), serve(connector, "ingest.log", env)
    targets += [Target(BARE, bare, False, False), Target(INGEST, ingest, True, False)]
    if args.live_client:
        targets.append(Target(LIVE, ingest, True, True))
    if args.baseline:
        before = serve(connector, "before.log", env, args.baseline.resolve())
        targets.append(Target(BEFORE, before, True, False))
        if args.live_client:
            targets.append(Target(BEFORE_LIVE, before, True, True))
    if args.compare_gunicorn_args:
        alt_env = {**env, "GUNICORN_CMD_ARGS": args.compare_gunicorn_args}
        alt_bare = serve("bare_app:create_app()", "alt-bare.log", alt_env)
        alt_ingest = serve(connector, "alt-ingest.log", alt_env)
        targets += [Target(ALT_BARE, alt_bare, False, False), Target(ALT_INGEST, alt_ingest, True, False)]
        if args.live_client:
            targets.append(Target(ALT_LIVE, alt_ingest, True, True))
    return targets, masters


def main() -> None:
    args = parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: `apt-get install -y wrk` or `brew install wrk`")

    load_before = os.getloadavg()
    started = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    tmp = Path(tempfile.mkdtemp(prefix="bench-ingest-"))
    masters: dict[int, subprocess.Popen[bytes]] = {}
    server: EmbeddedRedis | None = None
    try:
        if args.redis_url:
            redis_url = args.redis_url
        else:
            server = EmbeddedRedis(tmp / "redis").start()
            redis_url = server.url
        conn = redis.Redis.from_url(redis_url)
        env = server_env(tmp, redis_url, args.workers)
        args.env = env
        targets, masters = start_servers(args, env, tmp)

        def bodies(tag: str, count: int) -> Path:
            """A fresh file of distinct bodies per run; enough that no run wraps around."""
            path = tmp / f"bodies-{tag}.tsv"
            write_bodies(path, count, f"{tag}-{uuid.uuid4().hex[:8]}")
            return path

        for port in masters:
            wrk(f"http://127.0.0.1:{port}{PATH}", bodies("warmup", 24_000), args.threads, args.connections, 2)
        # Rounds alternate the servers, so that each ratio compares runs close in time (the
        # machine may be shared), every other round in the reverse order, so that no run always
        # comes first or after the same one.
        redis_pids = [server.process.pid] if server is not None and server.process is not None else []
        closed = [
            closed_round(args, conn, targets, masters, redis_pids, bodies, n % 2 == 1)
            for n in range(args.rounds)
        ]
        open_rounds = 0 if args.no_open_loop else args.rounds
        opened = [
            open_round(args, conn, targets, masters, redis_pids, bodies, n % 2 == 1)
            for n in range(open_rounds)
        ]
        report(args, [t.name for t in targets], closed, opened, (started, load_before, os.getloadavg()))
    finally:
        for proc in masters.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in masters.values():
            proc.wait(15)
        if server is not None:
            server.stop()
        if args.keep:
            print(f"logs and data kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _cpu(r: dict[str, Any]) -> float:
    """CPU per request, web + Redis (the bare app has no Redis)."""
    return float(r["web_cpu_ms"] + r.get("redis_cpu_ms", 0.0))


def _notes(r: dict[str, Any]) -> str:
    notes = []
    if "live_entries" in r:
        notes.append(
            f"live client got {int(r['live_entries'])} of {int(r['live_expected'])} deliveries "
            f"({int(r.get('live_counted', 0))} of them counted in not_shown lines) "
            f"({int(r['live_answers'])} answers), after p50/p99/max "
            f"{r['live_p50_ms']:.0f}/{r['live_p99_ms']:.0f}/{r['live_max_ms']:.0f} ms; "
            f"the client's own CPU {r['live_client_cpu_ms']:.3f} ms per delivery"
        )
        if "live_failed" in r:
            notes.append(f"live client failed: {r['live_failed']}")
    if "stored" in r:
        notes.append(f"stored {int(r['stored'])}, duplicates {int(r['duplicates'])}")
    return "; ".join(notes)


def report(
    args: argparse.Namespace,
    names: list[str],
    closed: list[dict[str, dict[str, Any]]],
    opened: list[dict[str, dict[str, Any]]],
    when: tuple[str, tuple[float, float, float], tuple[float, float, float]],
) -> None:
    workers = args.workers or f"{os.cpu_count()} cores x 2 (gunicorn_conf)"
    started, before, after = when
    print(
        f"\nstarted {started}; gunicorn workers: {workers}; "
        f"wrk -t{args.threads} -c{args.connections} -d{args.seconds}s"
    )
    print(
        f"machine: {os.cpu_count()} cores; load average {before[0]:.2f}, {before[1]:.2f}, {before[2]:.2f} "
        f"before, {after[0]:.2f}, {after[1]:.2f}, {after[2]:.2f} after"
    )
    if args.compare_gunicorn_args:
        print(f"other gunicorn args: GUNICORN_CMD_ARGS={args.compare_gunicorn_args!r}")
    if args.baseline:
        print(f"before: the connector of {args.baseline}")
    print("\n| round | run | endpoint | req/s | p50 ms | p99 ms | CPU ms/request | notes |")
    print("|---|---|---|---:|---:|---:|---:|---|")
    for i, results in enumerate(closed, 1):
        for name, r in ((n, results[n]) for n in names):
            cpu = _cpu_cell(r)
            notes = f"requests {int(r['requests'])}, non-2xx {int(r['non_2xx'])}"
            notes += f", socket errors {int(r['socket_errors'])}"
            extra = _notes(r)
            print(
                f"| {i} | (a) closed loop | {name} | {r['rps']:.0f} | {r['p50_ms']} | {r['p99_ms']} "
                f"| {cpu} | {notes}{'; ' + extra if extra else ''} |"
            )
    for i, results in enumerate(opened, 1):
        for name, r in ((n, results[n]) for n in names):
            notes = (
                f"ok {r['ok']}/{r['sent']}, errors {r['errors']}; send lag p50/p99 "
                f"{r['send_lag_p50_ms']}/{r['send_lag_p99_ms']} ms"
            )
            extra = _notes(r)
            print(
                f"| {i} | (b) open loop, {r['target_rate']:.0f} req/s | {name} | {r['achieved_rate']:.0f} "
                f"| {r['p50_ms']} | {r['p99_ms']} | {_cpu_cell(r)} | {notes}{'; ' + extra if extra else ''} |"
            )
    print()
    report_ratios(args, names, closed, opened)


def _cpu_cell(r: dict[str, Any]) -> str:
    cpu = f"{r['web_cpu_ms']:.2f}"
    if "redis_cpu_ms" in r:
        cpu += f" + redis {r['redis_cpu_ms']:.2f}"
    return cpu


def report_ratios(
    args: argparse.Namespace,
    names: list[str],
    closed: list[dict[str, dict[str, Any]]],
    opened: list[dict[str, dict[str, Any]]],
) -> None:
    ratio(closed, INGEST, BARE, "ingest / bare")
    if opened:
        p99s = [r[INGEST]["p99_ms"] for r in opened]
        print(
            f"ingest p99 at {args.rate} req/s per round: {', '.join(f'{x:g}' for x in p99s)} ms; "
            f"median {statistics.median(p99s):g} ms (target <= 25 ms; bare endpoint: "
            f"{', '.join(format(r[BARE]['p99_ms'], 'g') for r in opened)} ms)"
        )
    if LIVE in names:
        ratio(closed, LIVE, INGEST, "with / without the live client")
        ratio(closed, LIVE, BARE, "ingest with the live client / bare")
        cpu_ratio(opened, LIVE, INGEST, f"open loop at {args.rate} req/s, with / without the live client")
    if BEFORE in names:
        ratio(closed, BEFORE, BARE, "before: ingest / bare")
        ratio(closed, INGEST, BEFORE, "after / before, ingest")
    if BEFORE_LIVE in names:
        ratio(closed, BEFORE_LIVE, BEFORE, "before: with / without the live client")
        ratio(closed, BEFORE_LIVE, BARE, "before: ingest with the live client / bare")
        ratio(closed, LIVE, BEFORE_LIVE, "after / before, ingest with the live client")
        cpu_ratio(
            opened,
            BEFORE_LIVE,
            BEFORE,
            f"before: open loop at {args.rate} req/s, with / without the live client",
        )
    if ALT_INGEST in names:
        ratio(closed, ALT_INGEST, ALT_BARE, "other gunicorn args: ingest / bare")
        ratio(closed, ALT_INGEST, INGEST, "ingest, other gunicorn args / gunicorn_conf")
        ratio(closed, ALT_BARE, BARE, "bare, other gunicorn args / gunicorn_conf")
    if ALT_LIVE in names:
        ratio(closed, ALT_LIVE, ALT_INGEST, "other gunicorn args: with / without the live client")
        ratio(closed, ALT_LIVE, ALT_BARE, "other gunicorn args: ingest with the live client / bare")
    # in the table's order (rounds run their targets in alternating order)
    live_runs = [results[n] for results in closed + opened for n in names if "live_entries" in results[n]]
    if live_runs:
        complete = sum(1 for r in live_runs if r["live_entries"] >= r["live_expected"])
        worst = max(r["live_max_ms"] for r in live_runs)
        print(
            f"live client: every delivery received in {complete} of {len(live_runs)} runs; "
            f"entry instant -> client, per run p99 "
            f"{', '.join(format(r['live_p99_ms'], '.0f') for r in live_runs)} ms, max {worst:.0f} ms"
        )


def cpu_ratio(results: list[dict[str, dict[str, Any]]], top: str, bottom: str, label: str) -> None:
    """``top`` against ``bottom`` per open-loop round (same rate): CPU per request (web + Redis)."""
    if not results:
        return
    cpu = [_cpu(r[top]) / _cpu(r[bottom]) for r in results]
    print(
        f"{label}: CPU per request {', '.join(f'{x:.0%}' for x in cpu)} (median {statistics.median(cpu):.0%})"
    )


def ratio(results: list[dict[str, dict[str, Any]]], top: str, bottom: str, label: str) -> None:
    """``top`` against ``bottom`` per round: requests/s and CPU per request (web + Redis)."""
    rps = [r[top]["rps"] / r[bottom]["rps"] for r in results]
    cpu = [_cpu(r[top]) / _cpu(r[bottom]) for r in results]
    print(
        f"{label}: throughput {', '.join(f'{x:.0%}' for x in rps)} (median {statistics.median(rps):.0%}); "
        f"CPU per request {', '.join(f'{x:.0%}' for x in cpu)} (median {statistics.median(cpu):.0%})"
    )


if __name__ == "__main__":
    main()
