"""The profile store on a real Redis Cluster (three primaries started from the embedded binary).

The queues stay on a plain Redis (RQ does not run on a cluster); profiles, identities and the
membership ledger go to the cluster, as with ``CONNECTOR_PROFILE_REDIS_URL=redis+cluster://…``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import redis
from redis.cluster import RedisCluster

from connector import clock, redis_conn
from connector.config import Accounts, load_accounts
from connector.dev.embedded_redis import EmbeddedCluster
from connector.errors import ConfigError
from connector.profiles import load_profile, lookup
from connector.profiles.batched import Batched
from connector.profiles.erasure import stored_exports
from connector.profiles.store import iter_profile_ids, run_scripts
from connector.redis_conn import per_node
from connector.settings import Settings
from connector.worker import due, evaluation
from connector.worker.ledger import Ledger
from connector.worker.pipeline import apply_batch
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import NOW, ev
from tests.worker.test_worker_concurrency import four_workers_on_one_profile

T0 = datetime(2024, 5, 6, 9, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def cluster_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with EmbeddedCluster(tmp_path_factory.mktemp("cluster")) as cluster:
        yield cluster.url


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


def test_a_profile_stored_without_its_identifier_count_is_counted_on_a_cluster(
    cluster: RedisCluster, redis_client: redis.Redis, accounts: Accounts
) -> None:
    apply_batch([ev("1", user_id="u1", anonymous_id="a1")], NOW, accounts, cluster, redis_client)
    pid = lookup(cluster, "acme", "user_id", "u1")
    assert pid is not None
    cluster.hdel(f"p:{{acme:{pid}}}", "in")  # as stored before the count came in
    apply_batch([ev("2", at=1, user_id="u1", anonymous_id="a2")], NOW, accounts, cluster, redis_client)
    assert cluster.hget(f"p:{{acme:{pid}}}", "in") == b"3"
    assert lookup(cluster, "acme", "anonymous_id", "a2") == pid


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


def test_scripts_follow_a_slot_that_moved_to_another_node(cluster: RedisCluster, cluster_url: str) -> None:
    """run_scripts sends each node its calls in a plain pipeline, by the client's slot map; when a
    slot has moved meanwhile, that node answers MOVED and the call goes through the cluster client."""
    key = "{moving}:n"
    # clients of their own, whose slot maps nothing refreshes before the move
    stale, stale_too = redis_conn._connect(cluster_url), redis_conn._connect(cluster_url)
    script = stale.register_script("return redis.call('INCR', KEYS[1])")
    assert run_scripts(stale, script, [([key], [])]) == [1]
    assert per_node(stale_too, [("GET", key, ())]) == [b"1"]
    slot = cluster.keyslot(key)
    source = stale.get_node_from_key(key)
    target = next(n for n in stale.get_primaries() if n.name != source.name)
    src = redis.Redis(host=source.host, port=source.port)
    dst = redis.Redis(host=target.host, port=target.port)
    src_id, dst_id = src.execute_command("CLUSTER", "MYID"), dst.execute_command("CLUSTER", "MYID")
    dst.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", src_id)
    src.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", dst_id)
    src.execute_command("MIGRATE", target.host, target.port, "", 0, 5000, "KEYS", key)
    for node in stale.get_primaries():
        client = redis.Redis(host=node.host, port=node.port)
        client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", dst_id)
        client.close()
    assert stale.get_node_from_key(key).name == source.name  # the clients' maps are stale
    assert stale_too.get_node_from_key(key).name == source.name
    assert run_scripts(stale, script, [([key], []), (["{other}:n"], [])]) == [2, 1]
    assert per_node(stale_too, [("GET", key, ()), ("GET", "{other}:n", ())]) == [b"2", b"1"]
    assert dst.get(key) == b"2"
    for client in (src, dst, stale, stale_too):
        client.close()


def test_batched_scripts_group_their_calls_by_slot_on_a_cluster(cluster: RedisCluster) -> None:
    """Calls whose keys share a slot go in one script call, the others to their own nodes; the
    replies come back in the order of the calls."""
    bump = Batched("return {KEYS[1], redis.call('INCRBY', KEYS[1], ARGV[1]), redis.call('INCR', KEYS[2])}")
    calls = [([f"n:{{p{n % 5}}}", f"m:{{p{n % 5}}}"], [n]) for n in range(12)]
    replies = bump.run(cluster, calls)
    totals: dict[str, int] = {}
    seen: dict[str, int] = {}
    for n, reply in enumerate(replies):
        key = f"n:{{p{n % 5}}}"
        totals[key] = totals.get(key, 0) + n
        seen[key] = seen.get(key, 0) + 1
        assert reply == [key.encode(), totals[key], seen[key]]
    assert {k: int(cluster.get(k) or 0) for k in totals} == totals
    assert len({cluster.get_node_from_key(k).name for k in totals}) > 1  # more than one node served


def test_histories_are_compressed_and_opened_on_a_cluster(
    cluster: RedisCluster, redis_client: redis.Redis, accounts: Accounts
) -> None:
    """Compare-and-set rewrites of histories spread over the nodes: compressed after a batch, opened
    for a late event and for a merge, every event still there."""
    people = [f"u{n}" for n in range(6)]
    batch = [
        ev(f"{u}-{i}", at=10 * i, user_id=u, props={"sku": f"S{i}", "n": i})
        for u in people
        for i in range(20)
    ]
    assert apply_batch(batch, NOW, accounts, cluster, redis_client)["acme"].applied == 120
    pids = [lookup(cluster, "acme", "user_id", u) for u in people]
    assert all(cluster.getrange(f"h:{{acme:{pid}}}", 0, 0) == b"\xff" for pid in pids)
    late = [ev(f"{u}-late", at=5, user_id=u, props={"n": 0.5}) for u in people]
    assert apply_batch(late, NOW, accounts, cluster, redis_client)["acme"].applied == 6
    apply_batch([ev("anon", at=7, anonymous_id="a1", props={"n": 0.7})], NOW, accounts, cluster, redis_client)
    link = ev("link", at=300, type="identify", user_id="u0", anonymous_id="a1")
    apply_batch([link], NOW, accounts, cluster, redis_client)
    for u in people:
        pid = lookup(cluster, "acme", "user_id", u)
        profile = load_profile(cluster, "acme", pid, NOW)
        assert profile is not None
        expected = [0, 0.5, *([0.7] if u == "u0" else []), *range(1, 20)]
        assert [e.properties["n"] for e in profile.events] == expected
        assert cluster.getrange(f"h:{{acme:{pid}}}", 0, 0) == b"\xff"
