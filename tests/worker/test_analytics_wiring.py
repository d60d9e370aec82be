"""The worker's batched path keeps the segment analytics (real Redis, the real pipeline in-process):
sizes and member sets, the migrations of exclusive groups, attribution of engagement and orders,
the overlap job from the scheduler; merges and erasures take the person out of all of it, and out
of the live stream of deliveries."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from rq import Queue, SimpleWorker

from connector import buckets
from connector.analytics import attribution, holdout, movement, overlap, report
from connector.analytics.keys import messages_key, person_key
from connector.config import Account, Accounts, load_accounts
from connector.event import Event
from connector.ops import live
from connector.profiles import keys, lookup
from connector.worker import scheduler, sizes
from connector.worker.erasure import forget_live
from connector.worker.evaluation import record_movements
from connector.worker.ledger_codec import Diff
from connector.worker.pipeline import apply_batch
from tests.conftest import ACME, write_accounts
from tests.profile_helpers import ev
from tests.profiles.test_profiles_cluster import cluster, cluster_url  # noqa: F401  (fixtures)
from tests.worker.test_batched_path import CountingConnection, acme, counted  # noqa: F401  (fixture)

NOW = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def shop(config_dir: Path) -> Accounts:
    acme = {**ACME, "rules": {"include": ["vip", "lifecycle", "purchase_behavior"]}}
    write_accounts(config_dir, acme)
    return load_accounts(config_dir)


def apply(conn: redis.Redis, accounts: Accounts, events: list[Event], now: datetime = NOW) -> Any:
    return apply_batch(events, now, accounts, conn, conn)["acme"]


def order(sid: str, revenue: float, at: datetime, **ids: str) -> Event:
    return ev(sid, "order_completed", at=at, props={"revenue": revenue, "order_id": sid}, **ids)


def test_sizes_and_member_sets_follow_the_ledger_and_a_replay_counts_once(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    events = [order(f"o{i}", 1500.0 if i < 3 else 20.0, NOW - timedelta(hours=1), email=f"c{i}@example.com")
              for i in range(5)]  # fmt: skip
    apply(redis_client, shop, events)
    apply(redis_client, shop, events)  # delivered twice
    assert sizes.sizes(redis_client, "acme")["vip"] == 3
    assert sizes.sizes(redis_client, "acme")["lifecycle_first_time"] == 5
    vip = lookup(redis_client, "acme", "email", "c0@example.com")
    small = lookup(redis_client, "acme", "email", "c4@example.com")
    assert vip and small
    assert sizes.is_member(redis_client, "acme", "vip", vip)
    assert not sizes.is_member(redis_client, "acme", "vip", small)
    [today] = sizes.hourly(redis_client, "acme", "vip", NOW, hours=1)
    assert (today.size, today.entered, today.exited) == (3, 3, 0)


def test_a_batch_counts_its_movements_in_the_same_round_trips_for_4_or_80_people(
    counted: redis.Redis,  # noqa: F811
    shop: Accounts,
) -> None:
    def trips(first: int, n: int) -> int:
        """Round trips of a batch, less one per bucket split (index, member sets): a split is a
        call of its own, about one per 40 new identities or 160 new members of a segment."""
        events = [order(f"o{i}", 1500.0, NOW - timedelta(hours=1), email=f"c{i}@example.com")
                  for i in range(first, first + n)]  # fmt: skip
        before, grown = CountingConnection.sent, _bucket_total(counted)
        apply(counted, shop, events)
        return CountingConnection.sent - before - (_bucket_total(counted) - grown)

    trips(1000, 2)  # scripts loaded, name codes cached
    counted.script_load(buckets.SPLIT)  # (no split yet)
    assert trips(0, 4) == trips(100, 80)
    assert sizes.sizes(counted, "acme")["vip"] == 86


def _bucket_total(conn: redis.Redis) -> int:
    states = [conn.hget(keys.index_key("acme"), "b"), *conn.hvals(sizes.buckets_key("acme"))]
    return sum(buckets.bucket_count(*buckets.unpack_state(state)[:2]) for state in states)


def test_the_migration_matrix_counts_moves_between_lifecycle_stages(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    day1, day2 = NOW - timedelta(days=1), NOW
    apply(redis_client, shop, [order("a1", 10.0, day1 - timedelta(hours=1), email="m@example.com")], day1)
    apply(redis_client, shop, [order("a2", 10.0, day2 - timedelta(hours=1), email="m@example.com")], day2)
    moves = movement.migration(redis_client, "acme", "lifecycle", NOW, 7)
    assert moves == {("-", "lifecycle_first_time"): 1, ("lifecycle_first_time", "lifecycle_developing"): 1}


def test_merging_takes_the_absorbed_profile_out_of_the_member_sets(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    at = NOW - timedelta(hours=1)
    apply(
        redis_client,
        shop,
        [order("m1", 1500.0, at, user_id="u-7"), order("m2", 1500.0, at, email="x@example.com")],
    )
    by_user = lookup(redis_client, "acme", "user_id", "u-7")
    by_email = lookup(redis_client, "acme", "email", "x@example.com")
    assert by_user and by_email and by_user != by_email
    assert sizes.sizes(redis_client, "acme")["vip"] == 2
    outcome = apply(
        redis_client,
        shop,
        [ev("link", "identify", type="identify", at=at, user_id="u-7", email="x@example.com")],
    )
    [(absorbed, survivor)] = outcome.absorbed.items()
    assert sizes.sizes(redis_client, "acme")["vip"] == 1
    assert sizes.is_member(redis_client, "acme", "vip", survivor)
    assert not sizes.is_member(redis_client, "acme", "vip", absorbed)
    assert not redis_client.exists(person_key("acme", absorbed))


def test_engagement_and_orders_are_credited_to_the_segments_the_person_was_in(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    at = NOW - timedelta(hours=3)
    apply(redis_client, shop, [order("v1", 1500.0, at, email="e@example.com")], at + timedelta(minutes=1))
    later = NOW - timedelta(hours=1)
    mail = {"message_id": "msg-1"}
    batch = [
        ev("d1", "email_delivered", at=later, props=mail, email="e@example.com"),
        ev("op1", "email_opened", at=later + timedelta(minutes=5), props=mail, email="e@example.com"),
        order("v2", 80.0, later + timedelta(minutes=10), email="e@example.com"),
    ]
    apply(redis_client, shop, batch)
    apply(redis_client, shop, batch)  # delivered twice: credited once
    vip = report.counters(redis_client, "acme", "vip", NOW, 7)["t"]
    assert (vip["en"], vip["dl"], vip["op"]) == (1, 1, 1)
    # the order after the entry (within 7 days of it); the one that made them VIP came before it
    assert vip["cv"] == 1 and vip["rv"] == 80 * 100
    assert report.counters(redis_client, "acme", "lifecycle_new", NOW, 7) == {}


def test_erasure_takes_the_person_out_of_sizes_and_analytics(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    at = NOW - timedelta(hours=1)
    apply(redis_client, shop, [order("z1", 1500.0, at, email="gone@example.com"),
                               order("z2", 1500.0, at, email="stays@example.com")])  # fmt: skip
    pid = lookup(redis_client, "acme", "email", "gone@example.com")
    assert pid and redis_client.exists(person_key("acme", pid))
    outcome = apply(
        redis_client, shop, [ev("del", "delete", type="delete", at=NOW, email="gone@example.com")]
    )
    assert outcome.erased == 1
    assert sizes.sizes(redis_client, "acme")["vip"] == 1
    assert not sizes.is_member(redis_client, "acme", "vip", pid)
    assert not redis_client.exists(person_key("acme", pid), messages_key("acme", pid))


def _deliver(conn: redis.Redis, account: Account, *identities: dict[str, str]) -> None:
    for n, ids in enumerate(identities):
        events = [ev(f"l{n}", "page_viewed", **ids)]
        entry = live.delivered_entry(events, 1, 0)
        conn.xadd(live.key(account.id), {live.FIELD: json.dumps(entry)})


def test_erasure_removes_the_persons_deliveries_from_the_live_stream(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    account = shop.get("acme")
    assert account is not None
    _deliver(redis_client, account, {"email": "jane@example.com"}, {"user_id": "user_8812"},
             {"email": "bob@example.com"}, {"anonymous_id": "jane@example.com"})  # fmt: skip
    removed = forget_live(redis_client, "acme", {"email": ["jane@example.com"], "user_id": ["user_8812"]})
    assert removed == 3
    [(_, left)] = live.latest(redis_client, "acme", 10)
    assert left["events"][0]["identities"] == {"email": "b***@example.com"}
    apply(redis_client, shop, [order("r1", 5.0, NOW - timedelta(hours=1), email="bob@example.com")])
    apply(redis_client, shop, [ev("redact", "shop_redact", type="delete", at=NOW)])
    assert not redis_client.exists(live.key("acme"))


def test_erasure_removes_a_live_entry_holding_several_deliveries_when_one_is_the_persons(
    redis_client: redis.Redis,
) -> None:
    def line(n: int, **ids: str) -> str:
        return json.dumps(live.delivered_entry([ev(f"m{n}", "page_viewed", **ids)], 1, 0))

    key = live.key("acme")
    kept = redis_client.xadd(key, {live.FIELD: line(0, email="bob@example.com")})
    redis_client.xadd(
        key, {live.FIELD: "\n".join([line(1, email="ann@example.com"), line(2, email="jane@example.com")])}
    )
    redis_client.xadd(
        key, {live.FIELD: "\n".join([line(3, email="ann@example.com"), line(4, email="bob@example.com")])}
    )
    assert forget_live(redis_client, "acme", {"email": ["jane@example.com"]}) == 1
    assert redis_client.xlen(key) == 2 and redis_client.xrange(key, count=1)[0][0] == kept
    assert [e["events"][0]["identities"]["email"] for _, e in live.latest(redis_client, "acme", 10)] == [
        "b***@example.com",
        "a***@example.com",
        "b***@example.com",
    ]


def test_the_scheduler_refreshes_the_overlaps_every_ten_minutes(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    at = NOW - timedelta(hours=1)
    apply(redis_client, shop, [order(f"p{i}", 1500.0 if i % 2 else 10.0, at, email=f"p{i}@example.com")
                               for i in range(6)])  # fmt: skip
    scheduler._overlap_check[0] = None
    assert scheduler.refresh_overlaps(NOW) == 0  # the first check comes after the interval
    assert scheduler.refresh_overlaps(NOW + timedelta(minutes=10, seconds=1)) == len(list(shop))
    assert scheduler.refresh_overlaps(NOW + timedelta(minutes=11)) == 0  # not due yet
    queue = Queue(scheduler.OVERLAP_QUEUE, connection=redis_client)
    SimpleWorker([queue], connection=redis_client).work(burst=True)
    both = overlap.read(redis_client, "acme", "vip", "lifecycle_first_time")
    assert both.both == 3 and both.computed_at is not None
    assert scheduler.refresh_overlaps(NOW + timedelta(minutes=20, seconds=2)) == len(list(shop))


def test_a_rank_condition_matches_in_the_worker_after_predict_train(
    config_dir: Path, redis_client: redis.Redis
) -> None:
    from click.testing import CliRunner

    from connector import clock
    from connector.cli.main import _register, cli
    from connector.worker.ledger import Ledger
    from tests.predict.test_predict_training import NOW as TRAINED
    from tests.predict.test_predict_training import _store_customers

    write_accounts(config_dir, {**ACME, "rules": {"include": ["value_tiers", "churn_risk"]}})
    accounts = load_accounts(config_dir)
    _store_customers(redis_client, accounts, 120, seed=33)
    pid = lookup(redis_client, "acme", "user_id", "user-0")
    assert pid and Ledger(redis_client).state("acme", pid).segments == frozenset()  # type: ignore[union-attr]
    _register()
    with clock.frozen(TRAINED):
        done = CliRunner().invoke(
            cli, ["predict", "train", "--account", "acme", "--min-repeat-customers", "10"]
        )
        assert done.exit_code == 0, done.output
        explained = CliRunner().invoke(cli, ["explain", "--account", "acme", "--profile-id", pid])
    assert explained.exit_code == 0, explained.output
    assert "predicted by bgnbd-gg/1@" in explained.output and "predicted_clv = " in explained.output
    later = TRAINED + timedelta(minutes=1)
    apply(redis_client, accounts, [ev("seen", "page_viewed", at=later, user_id="user-0")], later)
    state = Ledger(redis_client).state("acme", pid)
    assert state is not None
    tiers = {s for s in state.segments if s.startswith("value_tier_")}
    assert len(tiers) == 1  # exactly one tier, from the rank of its predicted CLV
    assert sum(sizes.sizes(redis_client, "acme").get(t, 0) for t in tiers) == 1


def _dump(conn: redis.Redis, account: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in conn.scan_iter(f"*{{{account}}}*"):
        name = key.decode().replace(account, "A")
        kind = conn.type(key).decode()
        out[name] = conn.hgetall(key) if kind == "hash" else sorted(conn.smembers(key))
        out[name + "#ttl"] = conn.ttl(key) > 0
    return out


def _analytics(conn: redis.Redis) -> dict[bytes, Any]:
    """Every analytics key of acme with its content (day counters' floats rounded)."""
    out: dict[bytes, Any] = {}
    for key in sorted(conn.scan_iter("an:{acme}:*")):
        kind = conn.type(key)
        if kind == b"hash":
            row = conn.hgetall(key)
            out[key] = {k: round(float(v), 6) if k.startswith(b"rq:") else v for k, v in row.items()}
        else:
            out[key] = (kind, conn.dump(key))
    return out


def _engaged(
    people: list[str], at: datetime, shapes: list[list[str]]
) -> tuple[list[Event], dict[str, str], dict[str, list[str]]]:
    """Per person a delivered, opened, clicked and unsubscribed email (every fifth without a
    message id) and an order: the batch, event id → person, and person → segments held (the
    ``shapes`` in turn)."""
    batch: list[Event] = []
    profile_of: dict[str, str] = {}
    held: dict[str, list[str]] = {}
    for n, pid in enumerate(people):
        mail = {"message_id": f"m-{n % 4}"} if n % 5 else {}
        for k, name in enumerate(("email_delivered", "email_opened", "email_clicked", "unsubscribed")):
            batch.append(ev(f"{pid}-{k}", name, at=at + timedelta(hours=k), props=mail, user_id=pid))
        batch.append(order(f"{pid}-o", 10.0 + n, at + timedelta(hours=5), user_id=pid))
        for e in batch[-5:]:
            profile_of[e.event_id] = pid
        held[pid] = shapes[n % len(shapes)]
    return batch, profile_of, held


def test_a_batch_is_credited_as_each_person_alone_many_per_script_call(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    account = acme(shop)
    at = NOW - timedelta(days=2)
    people = [f"p{n:02d}" for n in range(30)]
    batch, profile_of, held = _engaged(people, at, [["vip", "lifecycle_new"], ["vip"]])

    def entries() -> None:
        pipe = redis_client.pipeline()
        for n, pid in enumerate(people):
            movement.record_diff(pipe, "acme", {}, pid, held[pid], [], at - timedelta(days=n % 3))
        pipe.execute()

    entries()
    for pid in people:
        mine = [e for e in batch if profile_of[e.event_id] == pid]
        pipe = redis_client.pipeline(transaction=False)
        assert attribution.record(pipe, "acme", pid, mine, held[pid], {}, now=NOW) == 5
        pipe.execute()
    alone = _analytics(redis_client)
    redis_client.flushdb()
    redis_client.script_load(attribution._CREDIT_MANY.source)  # counted below without a NOSCRIPT
    entries()
    redis_client.config_resetstat()
    assert attribution.record_batch(redis_client, account, batch, held, profile_of, NOW) == 150
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2  # 150 credits, 100 per script call
    together = _analytics(redis_client)
    assert together == alone
    assert sum(1 for key in together if b":d:" in key) >= 1  # day counters were written


@pytest.fixture
def split(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Account:
    """acme with arms: ``vip`` with a holdout (the destination's), ``cart_abandoner`` with the
    variants of its rule only (a 24h, b 48h; the destination maps no variants), and
    ``checkout_abandoner`` with neither."""
    monkeypatch.setenv("ACME_MC_KEY", "mc-key-us21")
    mailchimp = {
        "api_key_env": "ACME_MC_KEY",
        "base_url": "http://127.0.0.1:9/3.0",
        "sandbox": True,
        "list_id": "list-1",
        "segments": {"vip": {"tags": ["VIP"], "holdout": 20}, "cart_abandoner": {"tags": ["cart"]}},
    }
    window = {"template": "cart_abandonment", "params": {"window": ["24h", "48h"]}}
    write_accounts(
        config_dir, {**ACME, "rules": {"include": [window, "vip"]}, "destinations": {"mailchimp": mailchimp}}
    )
    return acme(load_accounts(config_dir))


def test_a_batch_credits_each_segment_to_the_persons_arm_as_each_person_alone(
    redis_client: redis.Redis, split: Account
) -> None:
    at = NOW - timedelta(days=2)
    people = [f"p{n:02d}" for n in range(40)]
    names = split.ruleset.segment_names
    shapes = [["vip", "cart_abandoner"], ["cart_abandoner"], ["vip", "checkout_abandoner"], ["vip"]]
    batch, profile_of, held = _engaged(people, at, shapes)

    def entries() -> None:
        pipe = redis_client.pipeline()
        for n, pid in enumerate(people):
            arms = holdout.arms_of(split, pid, held[pid])
            movement.record_diff(pipe, "acme", {}, pid, held[pid], [], at - timedelta(days=n % 3), arms=arms)
        pipe.execute()

    entries()
    for pid in people:
        mine = [e for e in batch if profile_of[e.event_id] == pid]
        pipe = redis_client.pipeline(transaction=False)
        arms = holdout.arms_of(split, pid, names)
        assert attribution.record(pipe, "acme", pid, mine, held[pid], arms, now=NOW) == 5
        pipe.execute()
    alone = _analytics(redis_client)
    cart = report.counters(redis_client, "acme", "cart_abandoner", NOW, 7)
    vip = report.counters(redis_client, "acme", "vip", NOW, 7)
    assert set(cart) == {"a", "b"} and set(vip) == {"c", "t"}  # every arm credited
    assert set(report.counters(redis_client, "acme", "checkout_abandoner", NOW, 7)) == {"t"}
    redis_client.flushdb()
    entries()
    assert attribution.record_batch(redis_client, split, batch, held, profile_of, NOW) == 200
    assert report.counters(redis_client, "acme", "cart_abandoner", NOW, 7) == cart
    assert report.counters(redis_client, "acme", "vip", NOW, 7) == vip
    assert _analytics(redis_client) == alone


def test_the_worker_counts_each_entry_under_the_persons_arm_as_each_person_alone(
    redis_client: redis.Redis, split: Account
) -> None:
    """Entries of a segment with variants only in its rule count under the person's variant, those
    of a holdout's segment under its arm, the others under ``t``: the worker's batched counting
    (``record_movements``) gives what counting each person with ``holdout.arms_of`` gives."""
    people = [f"p{n:02d}" for n in range(40)]
    shapes = [{"vip", "cart_abandoner"}, {"cart_abandoner"}, {"vip", "checkout_abandoner"}]
    entered = {pid: frozenset(shapes[n % 3]) for n, pid in enumerate(people)}
    pipe = redis_client.pipeline(transaction=False)
    for pid in people:
        arms = holdout.arms_of(split, pid, entered[pid])
        sizes.record_transitions(pipe, "acme", entered[pid], (), NOW, profile_id=pid)
        movement.record_diff(pipe, "acme", split.ruleset.groups, pid, entered[pid], (), NOW, arms=arms)
    pipe.execute()
    alone = _dump(redis_client, "acme")
    cart = report.counters(redis_client, "acme", "cart_abandoner", NOW, 1)
    assert set(cart) == {"a", "b"} and sum(arm["en"] for arm in cart.values()) == 27
    assert set(report.counters(redis_client, "acme", "vip", NOW, 1)) == {"c", "t"}
    redis_client.flushdb()
    diffs = {pid: Diff(1, entered[pid], {}, entered=entered[pid]) for pid in people}
    record_movements(redis_client, split, split.ruleset, diffs, NOW)
    assert report.counters(redis_client, "acme", "cart_abandoner", NOW, 1) == cart
    assert _dump(redis_client, "acme") == alone


def test_a_credit_that_fails_holds_back_no_other_persons_credits(
    redis_client: redis.Redis, shop: Accounts
) -> None:
    account = acme(shop)
    at = NOW - timedelta(days=1)
    batch = [
        ev(f"{pid}-o", "order_completed", at=at, props={"revenue": 30.0}, user_id=pid) for pid in ("p0", "p1")
    ]
    profile_of = {e.event_id: e.identities["user_id"] for e in batch}
    held = {"p0": ["vip"], "p1": ["vip"]}
    pipe = redis_client.pipeline()
    for pid in held:
        movement.record_diff(pipe, "acme", {}, pid, ["vip"], [], at - timedelta(hours=1))
    pipe.execute()
    redis_client.hset(person_key("acme", "p0"), "*x", "unreadable")  # no period in the field's name
    with pytest.raises(redis.ResponseError, match="1 of 2 calls failed"):
        attribution.record_batch(redis_client, account, batch, held, profile_of, NOW)
    vip = report.counters(redis_client, "acme", "vip", NOW, 7)["t"]
    assert (vip["cv"], vip["rv"]) == (1, 30 * 100)  # p1's order, credited after p0's failed


def test_the_batched_counting_matches_counting_each_profile(redis_client: redis.Redis) -> None:
    groups = {"stage": ("s1", "s2", "s3"), "tier": ("t1", "t2")}
    diffs = [
        ("p1", {"s1", "t1", "x"}, set(), {"x": "c"}),
        ("p2", {"s2"}, {"s1", "t2"}, {}),
        ("p3", set(), {"x", "s3"}, {}),
        ("p4", set(), set(), {}),
        ("p1", {"s2"}, {"s1"}, {"s2": "v_b"}),  # the same profile again in the batch
    ]
    pipe = redis_client.pipeline(transaction=False)
    for pid, came, left, arms in diffs:
        sizes.record_transitions(pipe, "one", came, left, NOW, profile_id=pid)
        movement.record_diff(pipe, "one", groups, pid, came, left, NOW, arms=arms)
    pipe.execute()
    pipe = redis_client.pipeline(transaction=False)
    sizes.record_many(pipe, "many", [(pid, came, left) for pid, came, left, _ in diffs], NOW)
    movement.record_many(pipe, "many", groups, diffs, NOW)
    assert len(pipe.execute()) == 1  # sizes ran at once (two calls: p1 comes twice); movement queued
    one, many = _dump(redis_client, "one"), _dump(redis_client, "many")
    assert one == many and len(one) > 10


def test_the_batched_counting_takes_thousands_of_profiles_per_segment(redis_client: redis.Redis) -> None:
    pids = [f"p{n}" for n in range(2500)]
    sizes.record_many(redis_client, "big", [(pid, {"a"}, ()) for pid in pids], NOW)
    sizes.record_many(redis_client, "big", [(pid, {"b"}, {"a"}) for pid in pids[:1200]], NOW)
    assert sizes.sizes(redis_client, "big") == {"a": 1300, "b": 1200}
    assert len(sizes.member_ids(redis_client, "big", "a")) == 1300
    [hour] = sizes.hourly(redis_client, "big", "a", NOW, hours=1)
    assert (hour.size, hour.entered, hour.exited) == (1300, 2500, 1200)


def test_the_analytics_are_kept_on_a_cluster_profile_store(
    cluster: Any,  # noqa: F811
    redis_client: redis.Redis,
    shop: Accounts,
) -> None:
    at = NOW - timedelta(hours=3)
    apply_batch([order("k1", 1500.0, at, email="k@example.com")], at, shop, cluster, redis_client)
    mail = {"message_id": "m-9"}
    later = NOW - timedelta(hours=1)
    opened = [ev("kd", "email_delivered", at=later, props=mail, email="k@example.com"),
              ev("ko", "email_opened", at=later, props=mail, email="k@example.com")]  # fmt: skip
    apply_batch(opened, NOW, shop, cluster, redis_client)
    pid = lookup(cluster, "acme", "email", "k@example.com")
    assert pid and sizes.is_member(cluster, "acme", "vip", pid)
    assert sizes.sizes(cluster, "acme")["vip"] == 1
    vip = report.counters(cluster, "acme", "vip", NOW, 7)["t"]
    assert (vip["en"], vip["dl"], vip["op"]) == (1, 1, 1)
    apply_batch(
        [ev("kx", "delete", type="delete", at=NOW, email="k@example.com")], NOW, shop, cluster, redis_client
    )
    assert sizes.sizes(cluster, "acme").get("vip", 0) == 0
    assert not cluster.exists(person_key("acme", pid))
