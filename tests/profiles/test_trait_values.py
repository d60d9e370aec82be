"""Each trait value is bounded (MAX_TRAIT_BYTES of JSON): a longer one is not kept, the profile keeps
the value it had, the event's other traits are kept, and the drop is counted (worker and imports)."""

from __future__ import annotations

from pathlib import Path

import redis

from connector.config import Accounts
from connector.profiles import keys, load_profile, lookup
from connector.profiles.store import MAX_TRAIT_BYTES
from tests.profile_helpers import NOW, apply, ev, import_segment_lines


def _dropped(conn: redis.Redis) -> int:
    return int(conn.hget("metrics:dropped", "trait_values") or 0)


def test_an_oversized_trait_value_is_not_kept_and_is_counted(redis_client, accounts, client) -> None:
    assert MAX_TRAIT_BYTES == 2_048
    apply(redis_client, accounts, ev("1", "identify", type="identify", user_id="u1", traits={"bio": "short"}))
    pid = lookup(redis_client, "acme", "user_id", "u1")
    assert pid is not None
    huge = "x" * 1_000_000
    at_bound = "y" * (MAX_TRAIT_BYTES - 2)  # its JSON (quotes included) is exactly MAX_TRAIT_BYTES
    over = {"q": "z" * (MAX_TRAIT_BYTES - 7)}  # {"q":"..."}: one byte over
    later = {"bio": huge, "plan": "gold", "fresh": huge, "edge": at_bound, "nested": over}
    outcome = apply(
        redis_client, accounts, ev("2", "identify", type="identify", at=1, user_id="u1", traits=later)
    )
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None
    # the earlier value stays, a new trait is not created, the event's other traits are kept
    assert profile.traits == {"bio": "short", "plan": "gold", "edge": at_bound}
    assert outcome.oversized_traits == 3 and outcome.untraited == 0
    fields = redis_client.hkeys(keys.profile_key("acme", pid))
    assert b"t:fresh" not in fields and b"o:fresh" not in fields and b"t:nested" not in fields
    assert redis_client.hget(keys.profile_key("acme", pid), "tn") == b"3"  # not counted as kept traits
    assert max(len(v) for v in redis_client.hvals(keys.profile_key("acme", pid))) < 2 * MAX_TRAIT_BYTES
    assert _dropped(redis_client) == 3
    metrics = client.get("/metrics").get_data(as_text=True)
    assert 'connector_dropped_total{family="trait_values"} 3.0' in metrics
    # a later event (in order) with a value that fits still takes it
    apply(
        redis_client,
        accounts,
        ev("3", "identify", type="identify", at=2, user_id="u1", traits={"bio": "longer", "fresh": 1}),
    )
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and profile.traits["bio"] == "longer" and profile.traits["fresh"] == 1
    assert _dropped(redis_client) == 3


def test_an_oversized_value_later_in_a_batch_leaves_the_earlier_one(redis_client, accounts) -> None:
    """Within one batch the newest kept value wins: an oversized newer one does not replace it."""
    outcome = apply(
        redis_client,
        accounts,
        ev("1", "product_viewed", at=0, user_id="u2", traits={"note": "kept"}),
        ev("2", "product_viewed", at=1, user_id="u2", traits={"note": "n" * (MAX_TRAIT_BYTES + 1)}),
    )
    profile = load_profile(redis_client, "acme", lookup(redis_client, "acme", "user_id", "u2"), NOW)
    assert profile is not None and profile.traits == {"note": "kept"} and len(profile.events) == 2
    assert outcome.oversized_traits == 1 and outcome.applied == 2
    assert _dropped(redis_client) == 1


def test_an_import_counts_the_trait_values_it_did_not_keep(
    redis_client, accounts: Accounts, tmp_path: Path
) -> None:
    lines = [
        {"type": "identify", "userId": "imp", "messageId": "m1", "timestamp": "2024-01-01T00:00:00Z",
         "traits": {"email": "imp@example.com", "blob": "b" * 10_000}},
        {"type": "identify", "userId": "imp", "messageId": "m2", "timestamp": "2024-01-01T00:01:00Z",
         "traits": {"blob": ["c" * 3_000], "city": "Lyon"}},
    ]  # fmt: skip
    import_segment_lines(redis_client, accounts, tmp_path, lines)
    pid = lookup(redis_client, "acme", "user_id", "imp")
    profile = load_profile(redis_client, "acme", pid, NOW) if pid else None
    assert profile is not None and profile.traits == {"email": "imp@example.com", "city": "Lyon"}
    assert _dropped(redis_client) == 2


def test_a_trait_name_past_its_bound_is_not_kept_and_is_counted(redis_client, accounts) -> None:
    from connector.profiles.store import MAX_TRAIT_NAME

    long_name, at_bound = "n" * (MAX_TRAIT_NAME + 1), "m" * MAX_TRAIT_NAME
    traits = {long_name: 1, at_bound: 2}
    outcome = apply(redis_client, accounts, ev("1", "identify", type="identify", user_id="u9", traits=traits))
    pid = lookup(redis_client, "acme", "user_id", "u9")
    assert pid is not None
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and profile.traits == {at_bound: 2}
    assert outcome.oversized_traits == 1 and _dropped(redis_client) == 1
