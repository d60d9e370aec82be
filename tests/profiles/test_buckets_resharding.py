"""Bucketed structures while their slot moves to another node (Redis Cluster resharding).

The slot of an account's identity index (or of its segment members) is put in MIGRATING on its
node and IMPORTING on another, and only some of its keys are moved, as ``redis-cli --cluster
reshard`` does key by key. Every answer must then be right or a retryable error (never a wrong
"absent"), no write may create a key on the node that imports the slot for a bucket still on the
other one (finishing the migration would fail with BUSYKEY), and once the slot has moved everything
is found again.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar

import pytest
import redis
from redis.exceptions import AskError, ClusterError, TryAgainError

from connector import buckets
from connector.profiles import identity, keys
from connector.worker import sizes
from tests.profiles.test_profiles_cluster import cluster, cluster_url  # noqa: F401  (fixtures)

RETRYABLE = (TryAgainError, AskError, ClusterError, buckets.StateMoving)
NOW = datetime(2024, 3, 1, tzinfo=UTC)
T = TypeVar("T")


class SlotMove:
    """The slot of ``key`` moving from its node to another, a key at a time."""

    def __init__(self, client: Any, key: str) -> None:
        self.cluster = client
        self.slot = client.keyslot(key)
        src = client.get_node_from_key(key)
        dst = next(n for n in client.get_primaries() if n.name != src.name)
        self.src = redis.Redis(host=src.host, port=src.port)
        self.dst = redis.Redis(host=dst.host, port=dst.port)
        self.dst_addr = (dst.host, dst.port)
        self.dst_id = self.dst.execute_command("CLUSTER MYID")
        self.src_id = src_id = self.src.execute_command("CLUSTER MYID")
        self.dst.execute_command("CLUSTER SETSLOT", self.slot, "IMPORTING", src_id)
        self.src.execute_command("CLUSTER SETSLOT", self.slot, "MIGRATING", self.dst_id)

    def keys_on(self, node: redis.Redis) -> set[str]:
        return {buckets.text(k) for k in node.execute_command("CLUSTER GETKEYSINSLOT", self.slot, 100_000)}

    def move(self, *names: str) -> None:
        for name in names:
            self.src.execute_command("MIGRATE", *self.dst_addr, name, 0, 5000)

    def finish(self) -> None:
        """Move the keys left (fails with BUSYKEY if the target already holds one) and the slot."""
        self.move(*sorted(self.keys_on(self.src)))
        # the target first, then the source, then the others (as `redis-cli --cluster reshard`
        # does): the source never sends a client to a target that does not own the slot yet
        others = [redis.Redis(host=n.host, port=n.port) for n in self.cluster.get_primaries()]
        others = [c for c in others if c.execute_command("CLUSTER MYID") not in (self.dst_id, self.src_id)]
        for client in (self.dst, self.src, *others):
            client.execute_command("CLUSTER SETSLOT", self.slot, "NODE", self.dst_id)


def after_the_move(call: Callable[[], T], tries: int = 3) -> T:
    """The answer of ``call`` once the slot has moved, from a client whose map of slots still names
    the source (as every other process's does): redirected, which redis-py follows and learns one
    slot at a time; should it give up meanwhile (``ClusterError``: TTL exhausted, seen once in
    about 100 runs), a worker retries the batch, and so does this, a bounded number of times."""
    for attempt in range(tries):
        try:
            return call()
        except ClusterError:
            if attempt + 1 == tries:
                raise
    raise AssertionError("no attempt")


def right_or_retryable(call: Callable[[], T], expected: T | None = None) -> T | None:
    """The answer of ``call`` (equal to ``expected`` when given), or None on a retryable error."""
    try:
        answer = call()
    except RETRYABLE:
        return None
    if expected is not None:
        assert answer == expected
    return answer


@pytest.fixture(autouse=True)
def _fresh_cache() -> None:
    buckets.forget_known()


def test_the_identity_index_while_its_slot_moves(cluster: Any) -> None:  # noqa: F811
    mapping = {("user_id", f"u{n}"): f"{n:016x}" for n in range(500)}
    identity.write_index(cluster, "acme", mapping)
    pairs, truth = list(mapping), list(mapping.values())
    state = keys.index_key("acme")
    move = SlotMove(cluster, state)
    bucket_names = sorted(k for k in move.keys_on(move.src) if k != state)
    assert len(bucket_names) > 4

    move.move(state)  # the state first, its buckets still on the source
    right_or_retryable(lambda: identity.read_index(cluster, "acme", pairs)[0], truth)
    new = {("user_id", "new"): "00000000000000ff"}
    wrote = right_or_retryable(lambda: identity.write_index(cluster, "acme", new) or True)
    assert move.keys_on(move.dst) == {state}  # no bucket created on the importing node
    buckets.forget_known()  # another process: no (L, s) seen yet
    right_or_retryable(lambda: identity.read_index(cluster, "acme", pairs)[0], truth)

    move.move(*bucket_names[: len(bucket_names) // 2])  # half the buckets follow
    right_or_retryable(lambda: identity.read_index(cluster, "acme", pairs)[0], truth)
    right_or_retryable(lambda: identity.delete_index(cluster, "acme", [("user_id", "u7")], [truth[7]]))
    assert move.keys_on(move.dst) <= {state, *bucket_names}

    move.finish()  # no BUSYKEY: nothing was written where it did not belong
    found, _ = after_the_move(lambda: identity.read_index(cluster, "acme", [*pairs, ("user_id", "new")]))
    assert found[:7] == truth[:7] and found[8:500] == truth[8:]
    assert found[7] in (None, truth[7])  # deleted, unless the deletion was refused (retryable)
    assert found[500] == "00000000000000ff" if wrote else found[500] in (None, "00000000000000ff")


def test_the_members_of_a_segment_while_their_slot_moves(cluster: Any) -> None:  # noqa: F811
    pids = [f"{k * 0x9E3779B97F4A7C15 % 2**64:016x}" for k in range(1200)]
    sizes.record_many(cluster, "acme", [(p, {"a"}, ()) for p in pids], NOW)
    sizes.record_many(cluster, "acme", [(p, {"b"}, ()) for p in pids[:300]], NOW)
    state = sizes.buckets_key("acme")
    move = SlotMove(cluster, state)
    bucket_names = sorted(k for k in move.keys_on(move.src) if k.startswith(f"{state}:a:"))
    assert len(bucket_names) > 4

    move.move(state)
    right_or_retryable(lambda: sizes.is_member(cluster, "acme", "a", pids[3]), True)
    right_or_retryable(lambda: sizes.member_ids(cluster, "acme", "a"), set(pids))
    right_or_retryable(lambda: sizes.overlap(cluster, "acme", "a", "b"), 300)
    right_or_retryable(lambda: sizes.record_many(cluster, "acme", [("00000000000000ff", {"a"}, ())], NOW))
    assert move.keys_on(move.dst) == {state}

    move.move(*bucket_names[: len(bucket_names) // 2])
    seen = right_or_retryable(lambda: sizes.member_ids(cluster, "acme", "a"))
    assert seen is None or set(pids) <= seen <= set(pids) | {"00000000000000ff"}
    right_or_retryable(lambda: sizes.record_many(cluster, "acme", [(pids[0], (), {"a"})], NOW))

    move.finish()
    members = after_the_move(lambda: sizes.member_ids(cluster, "acme", "a"))
    assert set(pids[1:]) <= members <= set(pids) | {"00000000000000ff"}
