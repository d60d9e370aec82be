"""Batched script calls on Redis Cluster while a slot moves key by key (connector.profiles.batched)."""

from __future__ import annotations

from typing import Any

from connector.profiles.batched import Batched
from tests.profiles.test_buckets_resharding import SlotMove
from tests.profiles.test_profiles_cluster import cluster, cluster_url  # noqa: F401  (fixtures)

BUMP = Batched("return redis.call('INCR', KEYS[1]) + redis.call('INCR', KEYS[2])")


def test_profiles_of_a_half_moved_slot_are_each_applied(cluster: Any) -> None:  # noqa: F811
    """Two profiles (two hash tags) of one slot: one moved, the other not yet. Each profile's call
    goes where its keys are; a call naming both would be refused until the whole slot had moved."""
    slot = cluster.keyslot("{pa}")
    other = next(f"q{i}" for i in range(10**6) if cluster.keyslot(f"{{q{i}}}") == slot)
    calls: list[tuple[list[str], list[Any]]] = [
        ([f"x:{{{tag}}}", f"y:{{{tag}}}"], []) for tag in ("pa", other)
    ]
    assert BUMP.run(cluster, calls) == [2, 2]
    move = SlotMove(cluster, "{pa}")
    move.move("x:{pa}", "y:{pa}")  # the first profile moved whole, the other not yet
    assert BUMP.run(cluster, calls) == [4, 4]
    move.finish()
    assert BUMP.run(cluster, calls) == [6, 6]
