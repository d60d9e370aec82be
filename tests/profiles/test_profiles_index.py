"""The identity index in buckets: growth, exactness through merges and erasures, the earlier layout."""

from __future__ import annotations

import pytest
import redis
from click.testing import CliRunner

from connector import buckets
from connector.cli.main import _register, cli
from connector.config import Accounts
from connector.profiles import identity, keys, lookup
from connector.profiles.identity import (
    INDEX_CAP,
    delete_index,
    migrate_index,
    read_index,
    write_index,
)
from tests.bucket_helpers import split_before_each_call, states_after
from tests.profile_helpers import apply, ev
from tests.profiles.test_profiles_cluster import cluster, cluster_url  # noqa: F401

_register()


def _state(conn: redis.Redis, account: str = "acme") -> tuple[int, int, int]:
    return buckets.unpack_state(conn.hget(keys.index_key(account), "b"))


def test_profile_ids_are_packed_exactly() -> None:
    for pid in ("0123456789abcdef", "ffffffffffffffff", "8000000000000000", "0000000000000000"):
        packed = buckets.pack_pid(pid)
        assert int(packed) < 2**63 and buckets.unpack_pid(packed.encode()) == pid
    for odd in ("p1", "42", "-7", "=x", "==", "", "0123456789ABCDEF", "0123456789abcdef0", "x" * 80):
        assert buckets.unpack_pid(buckets.pack_pid(odd)) == odd


def test_the_index_grows_one_bucket_at_a_time_and_stays_exact(redis_client: redis.Redis) -> None:
    mapping = {("email", f"p{n}@example.com"): f"{n:016x}" for n in range(3000)}
    items = list(mapping.items())
    for start in range(0, len(items), 250):
        write_index(redis_client, "acme", dict(items[start : start + 250]))
    level, split, count = _state(redis_client)
    assert count == 3000
    n_buckets = buckets.bucket_count(level, split)
    assert 3000 / n_buckets <= INDEX_CAP < 3000 / (n_buckets - 1)
    sizes = [redis_client.hlen(f"{keys.index_key('acme')}:{b}") for b in range(n_buckets)]
    assert sum(sizes) == 3000 and max(sizes) <= 128
    encodings = {redis_client.object("encoding", f"{keys.index_key('acme')}:{b}") for b in range(n_buckets)}
    assert encodings <= {b"listpack", b"ziplist"}  # compact (ziplist before Redis 7)
    found, legacy = read_index(redis_client, "acme", list(mapping))
    assert found == list(mapping.values()) and legacy == "0"  # a new account: no earlier layout
    assert read_index(redis_client, "acme", [("email", "nobody@example.com")])[0] == [None]
    # an entry is where the hash says (the Python mirror of the scripts' bucket function)
    field_name = keys.index_field("email", "p7@example.com")
    bucket = buckets.bucket_of(buckets.field_hash(field_name), level, split)
    assert redis_client.hget(f"{keys.index_key('acme')}:{bucket}", field_name) == b"7"


def test_merges_and_erasures_keep_the_index_exact(redis_client: redis.Redis, accounts: Accounts) -> None:
    people = [ev(str(n), anonymous_id=f"anon-{n}", email=f"m{n}@example.com") for n in range(300)]
    apply(redis_client, accounts, *people)
    assert _state(redis_client)[2] == 600
    # each person's user id arrives with a new anonymous id: one merge per person
    apply(redis_client, accounts, *[ev(f"u{n}", anonymous_id=f"new-{n}") for n in range(300)])
    ids = [
        ev(f"i{n}", "identify", type="identify", anonymous_id=f"new-{n}", email=f"m{n}@example.com")
        for n in range(300)
    ]
    outcome = apply(redis_client, accounts, *ids)
    assert outcome is not None
    for n in range(300):
        pid = lookup(redis_client, "acme", "email", f"m{n}@example.com")
        assert pid is not None
        assert lookup(redis_client, "acme", "anonymous_id", f"anon-{n}") == pid
        assert lookup(redis_client, "acme", "anonymous_id", f"new-{n}") == pid
    assert _state(redis_client)[2] == 900
    for n in range(300):
        apply(redis_client, accounts, ev(f"del{n}", "delete", type="delete", email=f"m{n}@example.com"))
    # the buckets are gone; the state stays (``o`` holds: no lookup of the earlier layout again)
    assert list(redis_client.scan_iter("ix:*")) == [keys.index_key("acme").encode()]
    assert _state(redis_client)[2] == 0


def _legacy(conn: redis.Redis, kind: str, value: str, pid: str) -> None:
    conn.set(keys.identity_key("acme", kind, value), pid)


def test_the_earlier_layout_is_read_moved_when_met_and_migrated(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    apply(redis_client, accounts, ev("0", user_id="someone"))  # the account has events: names exist
    _made_before(redis_client)
    redis_client.delete(keys.index_key("acme"), *redis_client.keys("ix:{acme:ix}:*"))
    pid = "00000000000000aa"
    redis_client.hset(keys.profile_key("acme", pid), mapping={"i:e:old@example.com": "", "i:a:old-anon": ""})
    _legacy(redis_client, "email", "old@example.com", pid)
    _legacy(redis_client, "anonymous_id", "old-anon", pid)
    _legacy(redis_client, "user_id", "old-user", "00000000000000bb")
    assert lookup(redis_client, "acme", "email", "old@example.com") == pid  # read, not moved
    assert redis_client.exists(keys.identity_key("acme", "email", "old@example.com"))
    # a returning person: found through the earlier layout, moved under the lock
    apply(redis_client, accounts, ev("1", email="old@example.com", anonymous_id="fresh-anon"))
    assert not redis_client.exists(keys.identity_key("acme", "email", "old@example.com"))
    assert lookup(redis_client, "acme", "email", "old@example.com") == pid
    assert lookup(redis_client, "acme", "anonymous_id", "fresh-anon") == pid
    assert lookup(redis_client, "acme", "anonymous_id", "old-anon") == pid  # still the earlier layout
    assert redis_client.hget(keys.index_key("acme"), "o") == b"1"
    moved = CliRunner().invoke(cli, ["profiles", "migrate-index", "--account", "acme"])
    assert moved.exit_code == 0 and "2 identities moved" in moved.output, moved.output
    assert redis_client.keys("ix:acme:*") == []
    assert redis_client.hget(keys.index_key("acme"), "o") == b"0"
    assert migrate_index(redis_client, "acme") == 0  # again: nothing left
    again = CliRunner().invoke(cli, ["profiles", "migrate-index", "--all"])
    assert again.exit_code == 0 and "identity index of acme: 0 identities moved" in again.output, again.output
    both = CliRunner().invoke(cli, ["profiles", "migrate-index", "--all", "--account", "acme"])
    assert both.exit_code == 2 and "exactly one of --account A and --all" in both.output
    assert lookup(redis_client, "acme", "anonymous_id", "old-anon") == pid
    assert lookup(redis_client, "acme", "user_id", "old-user") == "00000000000000bb"


def _made_before(conn: redis.Redis) -> None:
    """The account's names dictionary as the version before the buckets made it (32 hex digits)."""
    conn.hset(keys.names_key("acme"), "#gen", "0123456789abcdef" * 2)


def test_an_account_of_this_version_never_looks_for_the_earlier_layout(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    apply(redis_client, accounts, ev("1", email="new@example.com"))  # names made first, then the index
    assert redis_client.hget(keys.index_key("acme"), "o") == b"0"
    pid = lookup(redis_client, "acme", "email", "new@example.com")
    apply(redis_client, accounts, ev("2", "delete", type="delete", email="new@example.com"))
    assert pid is not None and lookup(redis_client, "acme", "email", "new@example.com") is None
    assert redis_client.hget(keys.index_key("acme"), "o") == b"0"  # kept when the index empties
    apply(redis_client, accounts, ev("3", email="again@example.com"))
    assert redis_client.hget(keys.index_key("acme"), "o") == b"0"


def test_an_account_of_the_earlier_version_looks_until_migrated(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    _made_before(redis_client)
    apply(redis_client, accounts, ev("1", email="old@example.com"))
    assert redis_client.hget(keys.index_key("acme"), "o") == b"1"
    assert migrate_index(redis_client, "acme") == 0
    assert redis_client.hget(keys.index_key("acme"), "o") == b"0"


def test_erasure_removes_links_of_both_layouts(redis_client: redis.Redis, accounts: Accounts) -> None:
    _made_before(redis_client)
    apply(redis_client, accounts, ev("1", email="both@example.com", anonymous_id="a-both"))
    pid = lookup(redis_client, "acme", "email", "both@example.com")
    assert pid is not None
    _legacy(redis_client, "anonymous_id", "a-both", pid)  # a leftover of the earlier layout
    _legacy(redis_client, "user_id", "someone-else", "ffffffffffffffff")
    pairs = [("email", "both@example.com"), ("anonymous_id", "a-both"), ("user_id", "someone-else")]
    assert delete_index(redis_client, "acme", pairs, [pid]) == 2
    assert read_index(redis_client, "acme", pairs)[0] == [None, None, "ffffffffffffffff"]


def test_the_index_answers_on_a_cluster(cluster) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    mapping = {("user_id", f"u{n}"): f"{n:016x}" for n in range(500)}
    write_index(cluster, "acme", mapping)
    assert read_index(cluster, "acme", list(mapping))[0] == list(mapping.values())
    assert identity.delete_index(cluster, "acme", list(mapping), list(mapping.values())) == 500
    assert set(cluster.scan_iter("ix:*")) <= {b"ix:{acme:ix}"}  # the index state stays


def test_a_read_while_another_worker_keeps_splitting_the_index_goes_through(
    redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each script call finds the index split once more since the last (another worker growing it);
    a read whose identities' buckets those splits leave alone is answered at its first call."""
    mapping = {("user_id", f"u{n}"): f"{n:016x}" for n in range(600)}
    write_index(redis_client, "acme", mapping)
    level, split, _ = _state(redis_client)
    states = states_after(level, split, 2 * buckets.TRIES)
    steady = [
        pair
        for pair in mapping
        if len({buckets.bucket_of(buckets.field_hash(keys.index_field(*pair)), *st) for st in states}) == 1
    ][:20]
    assert len(steady) == 20
    state_key = keys.index_key("acme")
    calls = split_before_each_call(
        monkeypatch, redis_client, identity._INDEX_GET, state_key, "b", "h", f"{state_key}:"
    )
    found, _ = read_index(redis_client, "acme", steady)
    assert found == [mapping[pair] for pair in steady]
    assert len(calls) <= 2  # the first call, or a second with the state the first one answered
    assert _state(redis_client)[:2] != (level, split)  # the index did move under it
