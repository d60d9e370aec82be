"""The profile store on a real Redis Cluster (three primaries started from the embedded binary).

The queues stay on a plain Redis (RQ does not run on a cluster); profiles, identities and the
membership ledger go to the cluster, as with ``CONNECTOR_PROFILE_REDIS_URL=redis+cluster://…``.
"""

from __future__ import annotations

import socket
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from connector import clock, due, evaluation, redis_conn
from connector.config import Accounts, load_accounts
from connector.embedded_redis import redis_binary
from connector.errors import ConfigError
from connector.ledger import Ledger
from connector.pipeline import apply_batch
from connector.profiles import load_profile, lookup
from connector.profiles.erasure import stored_exports
from connector.profiles.store import iter_profile_ids
from connector.settings import Settings
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import NOW, ev
from tests.test_worker_concurrency import four_workers_on_one_profile

NODES = 3
SLOTS = 16384
T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


def _port_with_bus() -> int:
    """A free port below 55536 whose cluster bus port (port + 10000) is free too."""
    for _ in range(200):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port > 55535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + 10000))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    ports = [_port_with_bus() for _ in range(NODES)]
    procs = []
    for port in ports:
        data = tmp_path_factory.mktemp(f"node{port}")
        procs.append(
            subprocess.Popen(
                [
                    redis_binary(),
                    "--port",
                    str(port),
                    "--bind",
                    "127.0.0.1",
                    "--dir",
                    str(data),
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(data / "nodes.conf"),
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
        )
    nodes = [redis.Redis(host="127.0.0.1", port=p) for p in ports]
    try:
        deadline = time.monotonic() + 15
        for node in nodes:
            while True:
                try:
                    node.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
        share = SLOTS // NODES
        for i, node in enumerate(nodes):
            last = SLOTS - 1 if i == NODES - 1 else (i + 1) * share - 1
            node.execute_command("CLUSTER", "ADDSLOTS", *range(i * share, last + 1))
        for node in nodes[1:]:
            node.execute_command("CLUSTER", "MEET", "127.0.0.1", ports[0])
        while not all(b"cluster_state:ok" in n.execute_command("CLUSTER", "INFO") for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the cluster did not form")
            time.sleep(0.05)
        yield f"redis+cluster://127.0.0.1:{ports[0]}/0"
    finally:
        for node in nodes:
            node.close()
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)


@pytest.fixture
def cluster(cluster_url: str) -> Iterator[RedisCluster]:
    client = redis_conn.connection(cluster_url)
    assert isinstance(client, RedisCluster)
    client.flushall()
    yield client
    client.flushall()


def test_events_merges_and_erasure_on_a_cluster(
    cluster: RedisCluster, redis_client: redis.Redis, accounts: Accounts
) -> None:
    first = apply_batch(
        [ev("1", anonymous_id="a1"), ev("2", at=1, email="bo@example.com")],
        NOW,
        accounts,
        cluster,
        redis_client,
    )["acme"]
    assert first.applied == 2
    merged = apply_batch(
        [ev("3", at=2, anonymous_id="a1", email="bo@example.com")], NOW, accounts, cluster, redis_client
    )["acme"]
    assert merged.applied == 1
    pid = lookup(cluster, "acme", "email", "bo@example.com")
    assert pid is not None and lookup(cluster, "acme", "anonymous_id", "a1") == pid
    profile = load_profile(cluster, "acme", pid, NOW)
    assert profile is not None and len(profile.events) == 3
    asked = apply_batch(
        [ev("r", "data_request", type="data_request", at=3, email="bo@example.com")],
        NOW,
        accounts,
        cluster,
        redis_client,
    )["acme"]
    assert asked.exported == 1
    [export] = stored_exports(cluster, "acme")
    assert export["profile"] == pid and len(export["data"]["events"]) == 3
    erased = apply_batch(
        [ev("4", "delete", type="delete", at=3, email="bo@example.com")], NOW, accounts, cluster, redis_client
    )["acme"]
    assert erased.erased == 1
    assert lookup(cluster, "acme", "email", "bo@example.com") is None
    assert load_profile(cluster, "acme", pid, NOW) is None
    assert stored_exports(cluster, "acme") == []  # erasure drops the exports that name the person


def test_rules_and_the_membership_ledger_on_a_cluster(
    cluster: RedisCluster,
    cluster_url: str,
    redis_client: redis.Redis,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    accounts = load_accounts(write_accounts(config_dir, {**ACME, "rules": {"include": ["cart_abandonment"]}}))
    monkeypatch.setenv("CONNECTOR_PROFILE_REDIS_URL", cluster_url)
    cart = ev("c1", "add_to_cart", at=T0, user_id="shopper-1", email="shopper@example.com")
    with clock.frozen(T0):
        apply_batch([cart], T0, accounts, cluster, redis_client)  # evaluates as the worker does
    pid = lookup(cluster, "acme", "email", "shopper@example.com")
    assert pid is not None
    assert due.due_at(redis_client, "acme", pid) == T0 + timedelta(hours=48)
    account = accounts.get("acme")
    assert account is not None
    later = T0 + timedelta(hours=48)
    [outcome] = evaluation.evaluate_profiles(account, [pid], later, cluster, redis_client, push=False)
    assert outcome.diff is not None and "cart_abandoner" in outcome.diff.entered
    state = Ledger(cluster).state("acme", pid)
    assert state is not None and "cart_abandoner" in state.segments
    assert sorted(iter_profile_ids(cluster, "acme")) == [pid]  # a scan over every node


def test_four_worker_processes_on_one_profile_on_a_cluster(
    cluster: RedisCluster,
    cluster_url: str,
    redis_client: redis.Redis,
    redis_url: str,
    config_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CONNECTOR_PROFILE_REDIS_URL", cluster_url)
    four_workers_on_one_profile(redis_url, config_dir, cluster, cluster_url)


def test_the_queues_refuse_a_cluster_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis+cluster://127.0.0.1:7000/0")
    monkeypatch.delenv("CONNECTOR_QUEUE_REDIS_URL", raising=False)
    with pytest.raises(ConfigError, match=r"queues \(RQ\) do not run on Redis Cluster"):
        Settings.from_env()
    monkeypatch.setenv("CONNECTOR_QUEUE_REDIS_URL", "redis://127.0.0.1:6379/0")
    settings = Settings.from_env()
    assert settings.profile_redis_url == "redis+cluster://127.0.0.1:7000/0"
