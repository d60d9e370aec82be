"""A person's new sync dead letter replaces their earlier one of the same destination: a change holds
the complete desired state, so the newer is all a replay needs. Before, every re-send of the same
refused contact (each change of the account file re-sends everyone) added one more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import redis

from connector.sync.deadletters import DeadLetters, latest_key

T0 = datetime(2026, 12, 1, 9, tzinfo=UTC)


def payload(version: int) -> dict[str, object]:
    return {"account": "acme", "destination": "mc", "change": {"version": version}}


def test_a_persons_newer_dead_letter_replaces_the_earlier_and_the_index_follows(
    redis_client: redis.Redis,
) -> None:
    dead = DeadLetters(redis_client, max_per_account=3)
    first = dead.put("sync:mc", "400 invalid", payload(1), T0, account="acme", person="p-tom")
    again = dead.put(
        "sync:mc", "400 invalid", payload(2), T0 + timedelta(minutes=5), account="acme", person="p-tom"
    )
    other = dead.put(
        "sync:hs", "400 invalid", payload(2), T0, account="acme", person="p-tom"
    )  # another destination
    ann = dead.put("sync:mc", "404 list", payload(1), T0, account="acme", person="p-ann")
    assert dead.get(first) is None
    kept = dead.get(again)
    assert kept is not None and kept.payload["change"] == {"version": 2}
    assert [i.id for i in dead.list("sync:mc")] == [ann, again]  # by when stored
    assert dead.get(other) is not None and dead.count("sync:mc") == 2

    # a replayed or discarded item leaves the index: the person's next one replaces nothing
    dead.remove(kept)
    assert redis_client.hget(latest_key("sync:mc"), "acme|p-tom") is None
    later = dead.put(
        "sync:mc", "400 invalid", payload(3), T0 + timedelta(hours=1), account="acme", person="p-tom"
    )
    assert {i.id for i in dead.list("sync:mc")} == {ann, later}

    # items the account's cap drops leave the index too
    for n in range(3):
        dead.put(
            "sync:mc", "429", payload(n), T0 + timedelta(hours=2, minutes=n), account="acme", person=f"p{n}"
        )
    fields = {f.decode() for f in redis_client.hkeys(latest_key("sync:mc"))}
    assert fields == {"acme|p0", "acme|p1", "acme|p2"} and dead.count("sync:mc") == 3


def test_items_of_nobody_are_never_replaced(redis_client: redis.Redis) -> None:
    dead = DeadLetters(redis_client)
    one = dead.put("events", "not decodable", "raw-1", T0, account="acme")
    two = dead.put("events", "not decodable", "raw-2", T0, account="acme")
    assert dead.get(one) is not None and dead.get(two) is not None
