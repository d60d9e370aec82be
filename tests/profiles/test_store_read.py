"""Reading profiles back: the profiles an evaluation loads are the full decode's, field by field."""

from __future__ import annotations

import redis

from connector.config import Accounts
from connector.profiles import lookup
from connector.profiles.store import load_profiles, name_codes, read_profiles, to_rules_profile
from tests.profile_helpers import NOW, apply, ev


def test_the_profiles_an_evaluation_loads_are_the_full_decode(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    apply(
        redis_client,
        accounts,
        ev("1", "order_completed", at=3, email="Ann@Example.com", props={"total": 12.5, "n": 2, "vip": True}),
        ev(
            "2", "product_viewed", at=1, email="ann@example.com", props={"sku": "a\u00e9", "tags": ["x", "y"]}
        ),
        ev(
            "3",
            "identify",
            type="identify",
            at=2,
            email="ann@example.com",
            user_id="u1",
            traits={"plan": "pro"},
        ),
        ev(
            "4", "identify", type="identify", at=5, user_id="u1", traits={"plan": "max", "age": 41, "x": None}
        ),
        ev("5", "product_viewed", at=4, anonymous_id="v1"),
        ev("6", "page", type="page", at=0, user_id="u1", props={"path": "/"}),
    )
    apply(redis_client, accounts, ev("7", "product_viewed", at=-30, user_id="u1"))  # late: sorted in
    pids = sorted(
        {
            p
            for p in (
                lookup(redis_client, "acme", "user_id", "u1"),
                lookup(redis_client, "acme", "anonymous_id", "v1"),
            )
            if p
        }
    )
    pids.append("nobody")
    loaded = load_profiles(redis_client, "acme", pids, NOW)
    full = read_profiles(redis_client, name_codes(redis_client), "acme", pids)
    assert loaded["nobody"] is None and full["nobody"] is None
    for pid in pids[:-1]:
        data = full[pid]
        assert data is not None and loaded[pid] == to_rules_profile(data)
    person = loaded[lookup(redis_client, "acme", "user_id", "u1") or ""]
    assert person is not None
    assert person.traits == {"age": 41, "plan": "max", "x": None}
    assert [e.name for e in person.events][:2] == ["product_viewed", "page"]
    assert len(person.events) == 4 and person.revision > 0
