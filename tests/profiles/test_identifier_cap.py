"""At most MAX_IDENTIFIERS identifiers per profile: a new one past the cap is not linked (counted), the
event is still applied; identifiers the profile has keep working; a merge that would pass the cap is
not made; erasure still removes every index entry; imports count what the cap drops."""

from __future__ import annotations

from pathlib import Path

import redis

from connector.config import Accounts
from connector.profiles import identity, keys, load_profile, lookup
from tests.profile_helpers import NOW, apply, ev, import_segment_lines

CAP = identity.MAX_IDENTIFIERS


def _index_entries(conn: redis.Redis) -> int:
    """Identities in the account's index buckets (the state key holds none)."""
    return sum(int(conn.hlen(k)) for k in conn.scan_iter("ix:{acme:ix}:*"))


def _identity_fields(conn: redis.Redis, pid: str) -> int:
    return sum(1 for f in conn.hkeys(keys.profile_key("acme", pid)) if f.startswith(b"i:"))


def _dropped(conn: redis.Redis) -> int:
    return int(conn.hget("metrics:dropped", "profile_identifiers") or 0)


def _fill(conn: redis.Redis, accounts: Accounts, user: str, n: int) -> str:
    """A profile of ``user`` with ``n`` anonymous ids (one track event each): ``n + 1`` identifiers."""
    apply(
        conn,
        accounts,
        *(ev(f"{user}-{k}", at=k, user_id=user, anonymous_id=f"a{k}") for k in range(n)),
    )
    pid = lookup(conn, "acme", "user_id", user)
    assert pid is not None
    return pid


def test_past_the_cap_a_new_identifier_is_not_linked_and_is_counted(redis_client, accounts) -> None:
    """identify(U, a1), (U, a2), ... beyond the cap (the sender holds the public write key): the
    profile keeps MAX_IDENTIFIERS, the rest are counted; every event is still applied to it."""
    assert CAP == 1_000
    events = [ev(f"e{k}", at=k, user_id="u1", anonymous_id=f"a{k}") for k in range(CAP + 100)]
    outcome = apply(redis_client, accounts, *events)
    pid = lookup(redis_client, "acme", "user_id", "u1")
    assert pid is not None
    assert outcome.applied == CAP + 100 and outcome.touched == {pid}  # the events all went to it
    assert outcome.unlinked == 101  # the user id and 999 anonymous ids fit
    assert _dropped(redis_client) == 101
    profile = load_profile(redis_client, "acme", pid, NOW)
    assert profile is not None and len(profile.events) == CAP + 100
    assert len(profile.identities["anonymous_id"]) == CAP - 1
    assert redis_client.hget(keys.profile_key("acme", pid), "in") == str(CAP).encode()
    assert _index_entries(redis_client) == CAP == _identity_fields(redis_client, pid)
    # the identifiers it has keep working, alone too (the lock-free path)
    assert lookup(redis_client, "acme", "anonymous_id", "a0") == pid
    assert lookup(redis_client, "acme", "anonymous_id", f"a{CAP - 2}") == pid
    assert lookup(redis_client, "acme", "anonymous_id", f"a{CAP - 1}") is None
    outcome = apply(redis_client, accounts, ev("known", at=5000, anonymous_id="a7"))
    assert outcome.touched == {pid} and outcome.unlinked == 0
    # a second batch: a new anonymous id, an email, an alias' previous id: none linked, all counted
    outcome = apply(
        redis_client,
        accounts,
        ev("again", at=5001, user_id="u1", anonymous_id="a-new", email="ann@example.com"),
        ev("alias", "alias", type="alias", at=5002, user_id="u1", previous_id="old-device"),
    )
    assert outcome.unlinked == 3 and outcome.touched == {pid} and _dropped(redis_client) == 104
    for kind, value in [
        ("anonymous_id", "a-new"),
        ("email", "ann@example.com"),
        ("anonymous_id", "old-device"),
    ]:
        assert lookup(redis_client, "acme", kind, value) is None
    assert _index_entries(redis_client) == CAP
    # an event whose only identifier was refused makes a profile of its own, as any unknown one
    outcome = apply(redis_client, accounts, ev("alone", at=5004, anonymous_id=f"a{CAP + 50}"))
    other = lookup(redis_client, "acme", "anonymous_id", f"a{CAP + 50}")
    assert other is not None and other != pid and outcome.touched == {other} and outcome.unlinked == 0


def test_a_full_anonymous_profile_is_not_given_a_user_id(redis_client, accounts) -> None:
    """A device's profile at the cap (anonymous ids linked by aliases) identified with a new user id:
    the event goes to it, the user id is not linked (nor kept as the profile's), so a later event of
    that user alone makes the user's own profile, which the full one is not merged into."""
    aliases = [
        ev(f"al{k}", "alias", type="alias", at=k, anonymous_id="device", previous_id=f"p{k}")
        for k in range(CAP)
    ]
    outcome = apply(redis_client, accounts, *aliases)
    pid = lookup(redis_client, "acme", "anonymous_id", "device")
    assert pid is not None and outcome.unlinked == 1  # the device and 999 previous ids fit
    outcome = apply(redis_client, accounts, ev("id", "identify", type="identify", at=CAP, user_id="u9",
                                               anonymous_id="device"))  # fmt: skip
    assert outcome.touched == {pid} and outcome.unlinked == 1
    assert lookup(redis_client, "acme", "user_id", "u9") is None
    assert redis_client.hget(keys.profile_key("acme", pid), "uid") is None
    outcome = apply(redis_client, accounts, ev("own", at=CAP + 1, user_id="u9"))
    own = lookup(redis_client, "acme", "user_id", "u9")
    assert own is not None and own != pid and outcome.touched == {own}
    outcome = apply(redis_client, accounts, ev("both", at=CAP + 2, user_id="u9", anonymous_id="device"))
    assert outcome.touched == {own} and outcome.absorbed == {} and outcome.unlinked == 1
    assert lookup(redis_client, "acme", "anonymous_id", "device") == pid
    assert _index_entries(redis_client) == CAP + 1


def test_a_merge_past_the_cap_is_not_made_and_the_index_stays_consistent(redis_client, accounts) -> None:
    """A merge within the cap links everything; one whose result would pass it is not made (recorded
    as a conflict): both profiles keep their identifiers and the index points to them; erasing the
    full profile removes every index entry of it."""
    pid = _fill(redis_client, accounts, "u1", CAP - 3)  # 998 identifiers: room for 2
    apply(redis_client, accounts, ev("v1", at=2000, anonymous_id="visitor-1"))
    apply(redis_client, accounts, ev("v2", "alias", type="alias", at=2001, anonymous_id="visitor-1",
                                     previous_id="visitor-1b"))  # fmt: skip
    small = lookup(redis_client, "acme", "anonymous_id", "visitor-1")
    assert small is not None and small != pid
    assert lookup(redis_client, "acme", "anonymous_id", "visitor-1b") == small
    # 998 + 2 = 1,000: merged, every identifier of the absorbed profile linked to the survivor
    outcome = apply(redis_client, accounts, ev("m1", "identify", type="identify", at=2002, user_id="u1",
                                               anonymous_id="visitor-1"))  # fmt: skip
    assert outcome.absorbed == {small: pid} and outcome.unlinked == 0
    assert lookup(redis_client, "acme", "anonymous_id", "visitor-1b") == pid
    assert redis_client.hget(keys.profile_key("acme", pid), "in") == str(CAP).encode()
    assert _identity_fields(redis_client, pid) == CAP == _index_entries(redis_client)
    # the profile is full: another visitor with history is not merged into it
    apply(redis_client, accounts, ev("v3", "order_completed", at=2003, anonymous_id="visitor-2"))
    visitor = lookup(redis_client, "acme", "anonymous_id", "visitor-2")
    assert visitor is not None
    outcome = apply(redis_client, accounts, ev("m2", "product_viewed", at=2004, user_id="u1",
                                               anonymous_id="visitor-2"))  # fmt: skip
    assert outcome.absorbed == {} and outcome.touched == {pid} and outcome.unlinked == 1
    assert _dropped(redis_client) == 1
    assert lookup(redis_client, "acme", "anonymous_id", "visitor-2") == visitor  # it stays with its profile
    kept = load_profile(redis_client, "acme", visitor, NOW)
    assert kept is not None and [e.name for e in kept.events] == ["order_completed"]
    [(_, conflict)] = redis_client.xrange("conflicts:acme")
    assert conflict == {b"profile": pid.encode(), b"other": visitor.encode(), b"at": conflict[b"at"],
                        b"why": b"identifiers"}  # fmt: skip
    assert _index_entries(redis_client) == CAP + 1
    # erasing the full profile removes every entry of the index naming it (and those of the profile
    # it absorbed); the visitor's stays
    outcome = apply(redis_client, accounts, ev("del", "delete", type="delete", at=3000, user_id="u1"))
    assert outcome.erased == 1
    assert _index_entries(redis_client) == 1
    assert lookup(redis_client, "acme", "anonymous_id", "visitor-1b") is None
    assert lookup(redis_client, "acme", "anonymous_id", "visitor-2") == visitor


def test_a_profile_stored_before_the_count_is_counted_once(redis_client, accounts) -> None:
    """A profile whose hash has no count yet (stored before the cap came in, possibly past it) is
    counted at its first new identifier, and takes none past the cap."""
    pid = _fill(redis_client, accounts, "u1", CAP + 5)
    pkey = keys.profile_key("acme", pid)
    # as stored before the cap: every identifier linked, no count
    extra = {f"i:a:late{k}": "" for k in range(20)}
    redis_client.hset(pkey, mapping=extra)
    identity.write_index(redis_client, "acme", {("anonymous_id", f"late{k}"): pid for k in range(20)})
    redis_client.hdel(pkey, "in")
    before = _index_entries(redis_client)
    outcome = apply(redis_client, accounts, ev("new", at=9000, user_id="u1", anonymous_id="brand-new"))
    assert outcome.unlinked == 1 and outcome.touched == {pid}
    assert redis_client.hget(pkey, "in") == str(CAP + 20).encode()
    assert _index_entries(redis_client) == before
    assert lookup(redis_client, "acme", "anonymous_id", "late3") == pid  # still found


def test_an_import_counts_the_identifiers_it_could_not_link(redis_client, accounts, tmp_path: Path) -> None:
    lines = [
        {"type": "identify", "userId": "imp", "anonymousId": f"ia{k}", "messageId": f"m{k}",
         "timestamp": "2024-01-01T00:00:00Z"}
        for k in range(CAP + 5)
    ]  # fmt: skip
    import_segment_lines(redis_client, accounts, tmp_path, lines)
    pid = lookup(redis_client, "acme", "user_id", "imp")
    assert pid is not None and _identity_fields(redis_client, pid) == CAP
    assert _dropped(redis_client) == 6
