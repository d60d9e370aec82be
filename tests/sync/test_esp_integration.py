"""The adapters and the sync worker against the fake ESPs over real HTTP, in simulated time.

The fakes, the shared rate limiter and the adapters' retry sleeps all run on one FrozenClock: a
"sleep" moves the clock, so minutes of outage or throttling take milliseconds and the fakes'
request logs carry the simulated instants the sender produced.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from adapters.base import credential_key
from adapters.change import CONSENT_UNKNOWN
from adapters.klaviyo import KlaviyoAdapter
from adapters.ratelimit import RateLimiter
from connector import sync
from connector.clock import FrozenClock
from connector.config import Account, load_accounts
from connector.destinations import build_adapter, destinations
from connector.dev.sandbox import (
    FakeHubSpot,
    FakeKlaviyo,
    FakeMailchimp,
    HubSpotLimits,
    MailchimpLimits,
    serving,
)
from connector.dev.sandbox.base import RequestRecord
from connector.sync.deadletters import DeadLetters

T0 = datetime(2024, 5, 6, 9, 0, 0, tzinfo=UTC)
ENV = {
    "ACME_MC_KEY": "0123456789abcdef0123456789abcdef-us6",
    "ACME_HS_TOKEN": "pat-na1-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    "ACME_KL_KEY": "pk_integration_0123456789",
}
LIST = "aud1"


@dataclass
class Fakes:
    mailchimp: FakeMailchimp
    hubspot: FakeHubSpot
    klaviyo: FakeKlaviyo
    urls: dict[str, str] = field(default_factory=dict)


@pytest.fixture
def sim() -> FrozenClock:
    return FrozenClock(T0)


@pytest.fixture
def fakes(sim: FrozenClock) -> Iterator[Fakes]:
    mc = FakeMailchimp(api_keys=[ENV["ACME_MC_KEY"]], lists=[LIST], clock=sim)
    hs = FakeHubSpot(tokens=[ENV["ACME_HS_TOKEN"]], clock=sim)
    kl = FakeKlaviyo(api_keys=[ENV["ACME_KL_KEY"]], clock=sim)
    with serving(mc) as a, serving(hs) as b, serving(kl) as c:
        yield Fakes(mc, hs, kl, {"mailchimp": a.url + "/3.0", "hubspot": b.url, "klaviyo": c.url})


class Harness:
    """One account with the three destinations, the shared limiter on simulated time, and a loop
    that flushes every destination and moves the clock to the next instant something is due."""

    def __init__(self, conn: redis.Redis, sim: FrozenClock, account: Account) -> None:
        self.conn = conn
        self.sim = sim
        self.account = account
        self.limiter = RateLimiter(conn, clock=self.now_ts, sleep=self.sleep, lease_poll_seconds=0.01)
        self.dests = destinations(account)
        self.flushers = {
            name: sync.Flusher(
                conn,
                dest,
                build_adapter(dest, self.limiter, clock=self.now_ts, sleep=self.sleep, env=ENV),
                rng=lambda: 0.5,
            )
            for name, dest in self.dests.items()
        }
        self.final: dict[str, tuple[int, frozenset[str]]] = {}  # profile → (version, segments)

    def now_ts(self) -> float:
        return self.sim().timestamp()

    def sleep(self, seconds: float) -> None:
        self.sim.advance(timedelta(seconds=max(0.0, seconds)))

    def submit(self, profile: str, version: int, segments: set[str]) -> None:
        sync.submit(
            self.conn,
            self.account,
            profile,
            version,
            sorted(segments),
            {},
            email_of(profile),
            CONSENT_UNKNOWN,
            self.sim(),
        )
        self.final[profile] = (version, frozenset(segments))

    def drive(self, until: datetime | None = None, max_rounds: int = 5000) -> None:
        """Flush until nothing is pending (or the clock reaches ``until``)."""
        for _ in range(max_rounds):
            for flusher in self.flushers.values():
                flusher.flush(self.sim())
            upcoming = [t for f in self.flushers.values() if (t := f.next_ready()) is not None]
            if not upcoming:
                if until is not None and self.sim() < until:
                    self.sim.instant = until
                return
            target = datetime.fromtimestamp(min(upcoming), UTC)
            if until is not None and target >= until:
                self.sim.instant = max(self.sim(), until)
                return
            if target > self.sim():
                self.sim.instant = target
        raise AssertionError("the sync did not settle")


def email_of(profile: str) -> str:
    return f"{profile}@example.com"


def write_account(directory: Path, destinations_cfg: dict[str, Any]) -> Account:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "acme.yaml").write_text(
        yaml.safe_dump({"account": "acme", "destinations": destinations_cfg})
    )
    account = load_accounts(directory).get("acme")
    assert account is not None
    return account


def standard_account(tmp_path: Path, fakes: Fakes, **overrides: dict[str, Any]) -> Account:
    mc_cart = fakes.mailchimp.add_segment(LIST, "Cart")
    hs_cart = fakes.hubspot.add_list("Cart")
    kl_cart = fakes.klaviyo.add_list("Cart")
    cfg: dict[str, Any] = {
        "mailchimp": {
            "api_key_env": "ACME_MC_KEY",
            "list_id": LIST,
            "base_url": fakes.urls["mailchimp"],
            "sandbox": True,
            "segments": {
                "cart_abandoner": {"tags": ["cart abandoner"], "lists": [str(mc_cart.id)]},
                "vip": {"tags": ["vip"]},
            },
        },
        "hubspot": {
            "api_key_env": "ACME_HS_TOKEN",
            "base_url": fakes.urls["hubspot"],
            "sandbox": True,
            "segments": {
                "cart_abandoner": {"tags": ["cart abandoner"], "lists": [hs_cart.id]},
                "vip": {"tags": ["vip"]},
            },
        },
        "klaviyo": {
            "api_key_env": "ACME_KL_KEY",
            "base_url": fakes.urls["klaviyo"],
            "sandbox": True,
            "segments": {
                "cart_abandoner": {"tags": ["cart abandoner"], "lists": [kl_cart.id]},
                "vip": {"tags": ["vip"]},
            },
        },
    }
    for name, extra in overrides.items():
        cfg[name].update(extra)
    return write_account(tmp_path / "accounts", cfg)


def expected_tags(segments: frozenset[str]) -> set[str]:
    tags = {"cart abandoner"} if "cart_abandoner" in segments else set()
    return tags | ({"vip"} if "vip" in segments else set())


def assert_final_state(h: Harness, fakes: Fakes) -> None:
    carts = {email_of(p) for p, (_, segs) in h.final.items() if "cart_abandoner" in segs}
    assert fakes.hubspot.emails_in_list("Cart") == carts
    assert fakes.klaviyo.emails_in_list("Cart") == carts
    for profile, (version, segments) in h.final.items():
        email = email_of(profile)
        tags = expected_tags(segments)
        mc_tags = fakes.mailchimp.tags_of(LIST, email)
        assert mc_tags == tags | ({"Cart"} if "cart_abandoner" in segments else set()), profile
        contact = fakes.hubspot.contact_by_email(email)
        hs_tags = set(filter(None, (contact.properties.get("esp_tags", "") if contact else "").split(";")))
        assert hs_tags == tags, profile
        kl_profile = fakes.klaviyo.profile_by_email(email)
        assert set(kl_profile.properties.get("esp_tags", []) if kl_profile else []) == tags, profile
        for name in h.dests:
            applied = sync.applied_version(h.conn, "acme", name, profile)
            assert applied is None or applied <= version
            assert not sync.pending(h.conn, "acme", name)


def segments_for(i: int, phase: int) -> set[str]:
    out = set()
    if (i + phase) % 2 == 0:
        out.add("cart_abandoner")
    if (i * (phase + 1)) % 3 == 0:
        out.add("vip")
    return out


def test_outage_of_minutes_ends_at_the_final_desired_state(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    outage_end = T0 + timedelta(minutes=6)
    for fake in (fakes.mailchimp, fakes.hubspot, fakes.klaviyo):
        fake.faults.outage(start=T0, end=outage_end, status=503)
    profiles = [f"p{i:02d}" for i in range(24)]
    for i, p in enumerate(profiles):
        h.submit(p, 1, segments_for(i, 0))
    h.drive(until=T0 + timedelta(minutes=2))
    for i, p in enumerate(profiles[::2]):  # changes while the ESPs are still down
        h.submit(p, 2, segments_for(i, 1))
    h.drive(until=T0 + timedelta(minutes=4))
    for i, p in enumerate(profiles[::4]):  # enter → exit → enter for some
        h.submit(p, 3, segments_for(i, 0))
        h.submit(p, 4, segments_for(i, 1))
        h.submit(p, 5, segments_for(i, 0))
    h.drive()
    assert h.sim() >= outage_end
    assert_final_state(h, fakes)
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0
    assert DeadLetters(redis_client).count("sync:hubspot") == 0
    assert DeadLetters(redis_client).count("sync:klaviyo") == 0
    for fake in (fakes.mailchimp, fakes.hubspot, fakes.klaviyo):
        assert any(r.status == 503 for r in fake.requests)  # the outage was really hit
        late = [
            (r.method, r.path, r.status)
            for r in fake.requests
            if r.at >= outage_end.timestamp() and r.status >= 400
        ]
        # after the outage only the expected lookup miss (the tags property does not exist yet)
        assert late in ([], [("GET", "/crm/v3/properties/contacts/esp_tags", 404)]), (fake.name, late)
    for p in profiles:
        for name in h.dests:
            assert sync.applied_version(redis_client, "acme", name, p) == h.final[p][0]


def _max_in_window(records: list[RequestRecord], seconds: float) -> int:
    times = sorted(r.at for r in records)
    best, start = 0, 0
    for end, t in enumerate(times):
        while times[start] <= t - seconds:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_429_storm_never_pushes_the_sender_above_the_configured_rate(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    fakes.hubspot.limits = HubSpotLimits(per_ten_seconds=5)
    account = standard_account(tmp_path, fakes, hubspot={"per_ten_seconds": 5})
    h = Harness(redis_client, sim, account)
    klaviyo = h.flushers["klaviyo"].adapter
    assert isinstance(klaviyo, KlaviyoAdapter)
    # the per-contact imports under a storm: waves of 95 stay below the bulk threshold here
    klaviyo.config = dataclasses.replace(klaviyo.config, bulk_threshold=100)
    storm_end = T0 + timedelta(seconds=90)
    fakes.hubspot.faults.storm(start=T0 + timedelta(seconds=5), end=storm_end)  # no Retry-After
    # Klaviyo: the first 40 single profile imports get 429 with Retry-After: 4
    fakes.klaviyo.faults.storm(count=40, retry_after=4, path="^/api/profile-import$")
    profiles = [f"s{i:03d}" for i in range(250)]
    for i, p in enumerate(profiles):
        h.submit(p, 1, segments_for(i, 0))
    h.drive()  # the backfill (bulk jobs where the adapter uses them)
    for wave in range(12):  # then waves of single updates: 95 per batch, over the 75/s burst
        for i, p in enumerate(profiles[(wave * 95) % 250 :][:95]):
            h.submit(p, 2 + wave, segments_for(i, wave + 1))
        h.drive()
    assert_final_state(h, fakes)

    hs = fakes.hubspot.requests
    assert any(r.status == 429 and r.fault for r in hs)
    assert _max_in_window(hs, 10.0) <= 5  # every request sent, 429s included
    assert not [r for r in hs if r.status == 429 and not r.fault]  # the fake's own limit never hit

    kl = fakes.klaviyo.requests
    imports = [r for r in kl if r.path.rstrip("/") == "/api/profile-import"]
    storm = [r for r in imports if r.status == 429 and r.fault]
    assert len(storm) == 40
    assert len(imports) > 600
    assert _max_in_window(imports, 1.0) <= 75  # burst, 429s included
    assert _max_in_window(imports, 60.0) <= 750  # steady, 429s included
    assert not [r for r in kl if r.status == 429 and not r.fault]
    for hit in storm:  # Retry-After honoured: nothing on that endpoint for 4 s after a 429
        assert not [r for r in imports if hit.at < r.at < hit.at + 4]


def test_permanent_error_goes_to_dead_letters_and_replays_after_the_fix(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    fakes.mailchimp.forget(email_of("gone"))  # permanently deleted earlier: cannot be re-imported
    fakes.hubspot.invalid_emails.add(email_of("blocked"))  # refused as INVALID_EMAIL
    for i, p in enumerate(["ok1", "gone", "blocked", "ok2"]):
        h.submit(p, 1, {"cart_abandoner", "vip"} if i % 2 == 0 else {"vip"})
    h.drive()

    dead = DeadLetters(redis_client)
    mc_dead = list(dead.list("sync:mailchimp"))
    hs_dead = list(dead.list("sync:hubspot"))
    assert [d.payload["change"]["profile_id"] for d in mc_dead] == ["gone"]
    assert mc_dead[0].payload["error"]["code"] == "Forgotten Email Not Subscribed"
    assert mc_dead[0].payload["change"]["tags"] == ["vip"]  # the desired state is kept
    assert [d.payload["change"]["profile_id"] for d in hs_dead] == ["blocked"]
    assert hs_dead[0].payload["error"]["code"] == "VALIDATION_ERROR"
    assert "INVALID_EMAIL" in hs_dead[0].payload["error"]["detail"]
    assert dead.count("sync:klaviyo") == 0
    # the others went through
    assert fakes.mailchimp.tags_of(LIST, email_of("ok1")) == {"cart abandoner", "vip", "Cart"}
    assert fakes.hubspot.contact_by_email(email_of("gone")) is not None
    assert fakes.hubspot.contact_by_email(email_of("blocked")) is None

    # the cause is fixed: the person re-subscribed through a form; HubSpot accepts the email
    fakes.mailchimp.unforget(email_of("gone"))
    fakes.hubspot.invalid_emails.clear()
    for item in [*mc_dead, *hs_dead]:
        assert sync.replay(redis_client, item.payload, sim()) == "queued"
        dead.remove(item)
    h.drive()
    assert dead.count("sync:mailchimp") == 0
    assert dead.count("sync:hubspot") == 0
    assert_final_state(h, fakes)
    assert fakes.mailchimp.tags_of(LIST, email_of("gone")) == {"vip"}


def test_consent_is_never_changed_and_compliance_state_is_respected(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    fakes.mailchimp.set_status(LIST, email_of("unsub"), "unsubscribed")
    sync.submit(redis_client, h.account, "unsub", 1, ["vip"], {}, email_of("unsub"), "subscribed", sim())
    h.final["unsub"] = (1, frozenset({"vip"}))
    h.drive()
    member = fakes.mailchimp.member(LIST, email_of("unsub"))
    assert member is not None and member.status == "unsubscribed"
    assert fakes.mailchimp.tags_of(LIST, email_of("unsub")) == {"vip"}
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_erasure_fans_out_to_each_esp(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    h.submit("gdpr", 1, {"vip", "cart_abandoner"})
    h.submit("stays", 1, {"vip"})
    h.drive()
    email = email_of("gdpr")
    assert fakes.hubspot.contact_by_email(email) is not None
    assert fakes.klaviyo.profile_by_email(email) is not None

    assert sorted(sync.erase(redis_client, h.account, "gdpr", email, sim())) == [
        "hubspot",
        "klaviyo",
        "mailchimp",
    ]
    h.drive()
    assert fakes.mailchimp.member(LIST, email) is None
    assert email in fakes.mailchimp.forgotten  # delete-permanent: cannot be re-imported
    assert fakes.hubspot.contact_by_email(email) is None
    assert fakes.klaviyo.profile_by_email(email) is None
    assert email not in fakes.klaviyo.emails_in_list("Cart")
    assert fakes.mailchimp.tags_of(LIST, email_of("stays")) == {"vip"}
    records = sync.erasures(redis_client)
    assert sorted((r["destination"], r["outcome"]) for r in records) == [
        ("hubspot", "applied"),
        ("klaviyo", "applied"),
        ("mailchimp", "applied"),
    ]
    assert "gdpr" not in json.dumps(records)  # recorded without personal data


def test_erasure_deletes_every_address_of_the_person(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    """A person who changed address was synced under both: the erasure deletes both everywhere."""
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    h.submit("old-address", 1, {"vip"})
    h.submit("new-address", 1, {"vip", "cart_abandoner"})
    h.drive()
    addresses = [email_of("new-address"), email_of("old-address")]
    assert all(fakes.hubspot.contact_by_email(a) is not None for a in addresses)

    sync.erase(redis_client, h.account, "new-address", addresses, sim())
    h.drive()
    for address in addresses:
        assert fakes.mailchimp.member(LIST, address) is None and address in fakes.mailchimp.forgotten
        assert fakes.hubspot.contact_by_email(address) is None
        assert fakes.klaviyo.profile_by_email(address) is None
    outcomes = sorted((r["destination"], r["outcome"]) for r in sync.erasures(redis_client))
    assert outcomes == [("hubspot", "applied"), ("klaviyo", "applied"), ("mailchimp", "applied")]
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


# -- Mailchimp: merge fields, consent, members that left the audience ------------------------------


def _submit(
    h: Harness,
    profile: str,
    version: int,
    segments: set[str],
    traits: dict[str, Any] | None = None,
    consent: str = CONSENT_UNKNOWN,
) -> None:
    email = email_of(profile)
    sync.submit(h.conn, h.account, profile, version, sorted(segments), traits or {}, email, consent, h.sim())
    h.final[profile] = (version, frozenset(segments))


def test_mailchimp_merge_fields_are_created_before_members_are_written(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    mapping = {"fields": {"cart_value": "CARTVAL", "plan": "PLAN"}}
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes, mailchimp=mapping))
    mc = fakes.mailchimp
    _submit(h, "ann", 1, {"vip"}, traits={"cart_value": 42.5, "plan": "gold"})
    _submit(h, "bob", 1, {"vip"}, traits={"cart_value": 7})
    h.drive()
    audience = mc.audiences[LIST]
    assert audience.merge_fields["CARTVAL"] == "number" and audience.merge_fields["PLAN"] == "text"
    assert mc.member(LIST, email_of("ann")).merge_fields == {"CARTVAL": 42.5, "PLAN": "gold"}  # type: ignore[union-attr]
    assert mc.member(LIST, email_of("bob")).merge_fields == {"CARTVAL": 7}  # type: ignore[union-attr]
    reads = [r for r in mc.requests if r.method == "GET" and r.path.endswith("/merge-fields")]
    assert len(reads) == 1
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0

    # someone deletes PLAN in Mailchimp: the refused write re-reads the fields and creates it again
    del audience.merge_fields["PLAN"]
    _submit(h, "ann", 2, {"vip"}, traits={"cart_value": 42.5, "plan": "silver"})
    h.drive()
    assert mc.member(LIST, email_of("ann")).merge_fields["PLAN"] == "silver"  # type: ignore[union-attr]
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0

    # (a mapped name that cannot be a merge tag is refused when the account file loads: test_config)


@pytest.mark.parametrize(
    ("applies", "requires_status"),
    [(False, False), (True, False), (True, True)],
    ids=["status_if_new-ignored", "status_if_new-applied", "status_if_new-applied-status-required"],
)
def test_mailchimp_never_changes_an_existing_members_status(
    redis_client: redis.Redis,
    sim: FrozenClock,
    fakes: Fakes,
    tmp_path: Path,
    applies: bool,
    requires_status: bool,
) -> None:
    """Whatever batch subscribe does with ``status_if_new`` on an existing member (unconfirmed), the
    connector subscribes no existing member and no contact without marketing consent."""
    mc = fakes.mailchimp
    mc.limits = MailchimpLimits(
        batch_update_applies_status_if_new=applies, batch_requires_status=requires_status
    )
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    before = {
        "unsub": "unsubscribed",
        "cleaned": "cleaned",
        "pending": "pending",
        "trans": "transactional",
        "subbed": "subscribed",
    }
    for profile, status in before.items():
        mc.set_status(LIST, email_of(profile), status)
    for version, segments in ((1, {"vip"}), (2, {"vip", "cart_abandoner"})):  # unknown, then in the ledger
        for profile in before:
            _submit(h, profile, version, segments, consent="subscribed")
        _submit(h, "subbed_noconsent", version, segments)  # existing, subscribed: not downgraded
        _submit(h, "new_noconsent", version, segments)
        _submit(h, "new_consent", version, segments, consent="subscribed")
        if version == 1:
            mc.set_status(LIST, email_of("subbed_noconsent"), "subscribed")
        h.drive()
        status = {p: mc.member(LIST, email_of(p)).status for p in h.final}  # type: ignore[union-attr]
        assert status == {
            **before,
            "subbed_noconsent": "subscribed",
            "new_noconsent": "transactional",
            "new_consent": "subscribed",
        }, version
        for profile in h.final:
            assert mc.tags_of(LIST, email_of(profile)) == expected_tags(frozenset(segments)) | (
                {"Cart"} if "cart_abandoner" in segments else set()
            ), profile
        assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_mailchimp_leaving_segments_after_archive_or_deletion_is_not_a_dead_letter(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    mc = fakes.mailchimp
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    for profile in ("archived", "deleted", "stays"):
        _submit(h, profile, 1, {"cart_abandoner", "vip"})
    h.drive()
    mc.set_status(LIST, email_of("archived"), "archived")  # archived by a marketer
    mc.forget(email_of("deleted"))  # permanently deleted in Mailchimp
    for profile in ("archived", "deleted", "stays"):
        _submit(h, profile, 2, set())
    h.drive()
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0
    for profile in ("archived", "deleted", "stays"):
        assert sync.applied_version(redis_client, "acme", "mailchimp", profile) == 2
    assert mc.member(LIST, email_of("archived")).status == "archived"  # type: ignore[union-attr]  # not re-added
    assert mc.member(LIST, email_of("deleted")) is None
    assert mc.tags_of(LIST, email_of("stays")) == set()


def test_mailchimp_workers_share_ten_connections_per_api_key(redis_client: redis.Redis) -> None:
    """Fourteen workers (threads, each with its own adapter and HTTP client) write to one audience
    with one API key: the shared leases let ten requests in at a time, and none gets a 429."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from adapters.change import Change
    from adapters.mailchimp import MailchimpAdapter, MailchimpConfig

    key = "workers0123456789-us1"
    opened = threading.Condition()
    seen = {"held": 0, "waiting": 0}

    def hold() -> None:
        # requests wait inside the fake until ten are in flight together and another worker is
        # waiting for a connection: an eleventh request would be answered 429 by the fake
        with opened:
            seen["held"] += 1
            opened.notify_all()
            opened.wait_for(lambda: seen["held"] >= 10 and seen["waiting"] > 0, timeout=10)

    sim = FrozenClock(datetime(2024, 5, 6, 9, 0, tzinfo=UTC))
    fake = FakeMailchimp(api_keys=[key], lists=[LIST], clock=sim, hold=hold)
    limiter = RateLimiter(redis_client, clock=lambda: sim().timestamp(), sleep=lambda s: opened_wait(s))

    def opened_wait(seconds: float) -> None:
        with opened:  # a worker waiting (for a lease): wakes the held requests, then waits a little
            seen["waiting"] += 1
            opened.notify_all()
            opened.wait(timeout=min(seconds, 0.05))

    def worker(n: int) -> list[str]:
        adapter = MailchimpAdapter(
            MailchimpConfig(api_key=key, list_id=LIST, base_url=server.url + "/3.0"),
            limiter=limiter,
            clock=lambda: sim().timestamp(),
            sleep=opened_wait,
        )
        changes = [
            Change(account=f"acct{n}", destination="mailchimp", profile_id=f"w{n}p{i}", version=1,
                   email=f"worker{n}.person{i}@example.com", tags=frozenset({"vip"}))
            for i in range(3)
        ]  # fmt: skip
        return [r.status for r in adapter.apply(changes, {})]

    with serving(fake) as server, ThreadPoolExecutor(14) as pool:
        statuses = [s for result in pool.map(worker, range(14)) for s in result]
    assert statuses == ["applied"] * 42
    assert fake.max_inflight[key] == 10
    assert not [r for r in fake.requests if r.status == 429]
    assert len(fake.audiences[LIST].members) == 42


def test_a_change_that_failed_after_its_tags_were_written_still_owns_them(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    """The tags reach each ESP, then the list call is refused and the change is dead-lettered. The
    tags it wrote are the connector's: when the person leaves the segment they are removed."""
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    list_paths = {
        fakes.mailchimp: r"/segments/\d+$",
        fakes.hubspot: r"/memberships/add$",
        fakes.klaviyo: r"^/api/lists/[^/]+/relationships/profiles",
    }
    for fake, path in list_paths.items():
        fake.faults.add(400, code="invalid_request", message="refused by the test", method="POST", path=path)
        fake.faults.add(400, code="invalid_request", message="refused by the test", method="PUT", path=path)
    for p in ("half1", "half2"):
        h.submit(p, 1, {"cart_abandoner"})
    h.drive()
    dead = DeadLetters(redis_client)
    for name in ("mailchimp", "hubspot", "klaviyo"):
        assert dead.count(f"sync:{name}") == 2, name
    email = email_of("half1")
    assert "cart abandoner" in fakes.mailchimp.tags_of(LIST, email)
    contact = fakes.hubspot.contact_by_email(email)
    assert contact is not None and contact.properties.get("esp_tags") == "cart abandoner"
    kl_profile = fakes.klaviyo.profile_by_email(email)
    assert kl_profile is not None and kl_profile.properties.get("esp_tags") == ["cart abandoner"]

    for fake in list_paths:
        fake.faults.clear()
    for p in ("half1", "half2"):
        h.submit(p, 2, set())
    h.drive()
    assert_final_state(h, fakes)


def test_a_retry_after_the_list_call_failed_does_not_write_the_tags_again(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    """Klaviyo appends tags (not idempotent): once the import is confirmed, the retry of a change
    whose list call failed sends the list call only."""
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    outage_end = T0 + timedelta(minutes=3)
    fakes.klaviyo.faults.outage(start=T0, end=outage_end, path="^/api/lists/")
    h.submit("retry1", 1, {"cart_abandoner"})
    h.drive()
    assert h.sim() >= outage_end
    assert_final_state(h, fakes)
    imports = [r for r in fakes.klaviyo.requests if r.path == "/api/profile-import"]
    assert [r.status for r in imports] == [201]
    list_calls = [r for r in fakes.klaviyo.requests if r.path.startswith("/api/lists/")]
    assert list_calls[-1].status == 204 and any(r.status == 503 for r in list_calls)


def test_mailchimp_a_tag_written_by_a_change_whose_tag_removal_failed_is_still_removed_later(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    """v2 adds "vip" (confirmed) but removing "cart abandoner" is refused: both stay the
    connector's, so v3 (no segment) removes both."""
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    email = email_of("mc1")
    h.submit("mc1", 1, {"cart_abandoner"})
    h.drive()
    fakes.mailchimp.faults.add(400, code="Invalid Resource", message="refused", method="POST", path=r"/tags$")
    h.submit("mc1", 2, {"vip"})
    h.drive()
    assert DeadLetters(redis_client).count("sync:mailchimp") == 1
    # the list (static segment "Cart") is left for the retry too: nothing after the failure ran
    assert fakes.mailchimp.tags_of(LIST, email) == {"cart abandoner", "vip", "Cart"}
    fakes.mailchimp.faults.clear()
    h.submit("mc1", 3, set())
    h.drive()
    assert fakes.mailchimp.tags_of(LIST, email) == set()


# -- Retry-After that cannot be taken at its word -------------------------------------------------

FIRST_WRITE = {
    "mailchimp": f"^/lists/{LIST}$",
    "hubspot": "^/crm/v3/objects/contacts/batch/upsert$",
    "klaviyo": "^/api/profile-import$",
}
LIMITER_KEYS = {
    "mailchimp": credential_key("mailchimp", ENV["ACME_MC_KEY"]),
    "hubspot": credential_key("hubspot", ENV["ACME_HS_TOKEN"]),
    "klaviyo": credential_key("klaviyo", ENV["ACME_KL_KEY"]),
}


def _assert_finite_retry_state(conn: redis.Redis, esp: str, now: float) -> None:
    """What the failed attempt left in Redis: finite instants, within 6 hours, a block with a TTL."""
    limiter_key = f"rl:{LIMITER_KEYS[esp]}"
    blocked = conn.hget(limiter_key, "blocked_until")
    if blocked is not None:
        assert math.isfinite(float(blocked)) and float(blocked) <= now + 6 * 3600 + 1
        assert conn.ttl(limiter_key) > 0
    for raw in conn.hvals(f"sync:acme:{esp}:failing"):
        record = json.loads(raw, parse_constant=lambda c: pytest.fail(f"{c} stored in the failing record"))
        assert record["next_at"] <= now + 6 * 3600 + 1
    for _, score in conn.zrange("sync:due", 0, -1, withscores=True):
        assert math.isfinite(score) and score <= now + 6 * 3600 + 1
    for _, score in conn.zrange(f"sync:acme:{esp}:ready", 0, -1, withscores=True):
        assert math.isfinite(score) and score <= now + 6 * 3600 + 1


@pytest.mark.parametrize("esp", ["mailchimp", "hubspot", "klaviyo"])
@pytest.mark.parametrize("retry_after", ["inf", "nan", "1e309", "100000", "-3", "soon"])
def test_a_429_with_a_huge_or_unreadable_retry_after_blocks_the_key_at_most_six_hours(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path, esp: str, retry_after: str
) -> None:
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    fake = {"mailchimp": fakes.mailchimp, "hubspot": fakes.hubspot, "klaviyo": fakes.klaviyo}[esp]
    fake.faults.storm(count=1, retry_after=retry_after, method="POST", path=FIRST_WRITE[esp])
    h.submit("ra1", 1, {"vip"})
    h.sim.advance(timedelta(seconds=1))
    h.flushers[esp].flush(h.sim())
    assert any(r.status == 429 and r.fault for r in fake.requests)  # the fault was met
    _assert_finite_retry_state(redis_client, esp, h.now_ts())

    h.drive()
    assert sync.applied_version(redis_client, "acme", esp, "ra1") == 1
    assert h.sim() - T0 <= timedelta(hours=6, minutes=1)
    assert DeadLetters(redis_client).count(f"sync:{esp}") == 0
    assert expected_tags(frozenset({"vip"})) <= _tags_at(fakes, esp, email_of("ra1"))


def _tags_at(fakes: Fakes, esp: str, email: str) -> set[str]:
    if esp == "mailchimp":
        return fakes.mailchimp.tags_of(LIST, email)
    if esp == "hubspot":
        contact = fakes.hubspot.contact_by_email(email)
        return set(filter(None, (contact.properties.get("esp_tags", "") if contact else "").split(";")))
    profile = fakes.klaviyo.profile_by_email(email)
    return set(profile.properties.get("esp_tags", []) if profile else [])


# -- answers that do not confirm the write ----------------------------------------------------------

NOT_JSON = "<html><body>OK</body></html>"


def _still_to_do(h: Harness, esp: str, profile: str) -> dict[str, Any]:
    """The contact's change is not applied and waits for a retry; returns its failing record."""
    assert sync.applied_version(h.conn, "acme", esp, profile) is None
    assert profile in sync.pending(h.conn, "acme", esp)
    raw = h.conn.hget(f"sync:acme:{esp}:failing", profile)
    assert raw is not None, f"{profile} is not retried"
    return dict(json.loads(raw))


@pytest.mark.parametrize(
    ("body", "content_type"),
    [
        (NOT_JSON, "text/html"),
        ('{"total_created": 2}', "application/json"),  # JSON without the documented lists
        ('{"new_members": [], "updated_members": [], "errors": []}', "application/json"),  # names nobody
        ("[]", "application/json"),
    ],
    ids=["not-json", "no-fields", "nobody-confirmed", "array"],
)
def test_mailchimp_a_batch_subscribe_answer_that_confirms_nobody_is_retried_not_applied(
    redis_client: redis.Redis,
    sim: FrozenClock,
    fakes: Fakes,
    tmp_path: Path,
    body: str,
    content_type: str,
) -> None:
    mc = fakes.mailchimp
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    mc.faults.add(200, body=body, content_type=content_type, count=1, method="POST", path=f"^/lists/{LIST}$")
    h.submit("c1", 1, {"vip"})
    h.submit("c2", 1, {"vip", "cart_abandoner"})
    h.sim.advance(timedelta(seconds=1))
    counts = h.flushers["mailchimp"].flush(h.sim())
    assert counts == {"retry": 2}
    assert mc.member(LIST, email_of("c1")) is None  # nothing was stored ...
    for profile in ("c1", "c2"):
        record = _still_to_do(h, "mailchimp", profile)  # ... and nothing is counted applied
        assert record["error"]["type"] == "TransientError"
    h.drive()
    assert_final_state(h, fakes)
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_mailchimp_a_static_segment_answer_that_is_not_json_is_retried(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    mc = fakes.mailchimp
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    mc.faults.add(
        200, body=NOT_JSON, content_type="text/html", count=1, method="POST", path=r"/segments/\d+$"
    )
    h.submit("s1", 1, {"cart_abandoner"})
    h.sim.advance(timedelta(seconds=1))
    h.flushers["mailchimp"].flush(h.sim())
    assert "Cart" not in mc.tags_of(LIST, email_of("s1"))
    _still_to_do(h, "mailchimp", "s1")
    h.drive()
    assert_final_state(h, fakes)
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


def test_mailchimp_a_refused_batch_is_sent_again_one_contact_at_a_time(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    """Mailchimp refuses a whole batch subscribe (400) because of one member: the others are
    written one by one, and only that member is a dead letter, with its own reason."""
    mc = fakes.mailchimp
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    h.submit("known", 1, {"vip"})  # in the ledger: the update batch
    h.drive()
    mc.forget(email_of("gone"))  # permanently deleted: Mailchimp refuses to import it again
    reason = f"{email_of('gone')} was permanently deleted and cannot be re-imported."
    mc.faults.add(400, code="Invalid Resource", message=reason, method="POST", path=f"^/lists/{LIST}$")
    for profile in ("ok1", "gone", "ok2"):
        h.submit(profile, 1, {"vip", "cart_abandoner"})
    h.submit("known", 2, {"vip", "cart_abandoner"})
    h.drive()

    dead = list(DeadLetters(redis_client).list("sync:mailchimp"))
    assert [d.payload["change"]["profile_id"] for d in dead] == ["gone"]
    assert dead[0].payload["error"]["code"] == "Forgotten Email Not Subscribed"
    for profile in ("ok1", "ok2", "known"):
        assert mc.tags_of(LIST, email_of(profile)) == {"vip", "cart abandoner", "Cart"}, profile
        assert sync.applied_version(redis_client, "acme", "mailchimp", profile) == h.final[profile][0]
        assert email_of(profile) not in json.dumps([d.payload for d in dead])
    batch_posts = [r for r in mc.requests if r.method == "POST" and r.path == f"/3.0/lists/{LIST}"]
    assert batch_posts and all(r.status == 400 for r in batch_posts[1:])


def test_mailchimp_a_batch_refused_for_bad_credentials_pauses_without_one_by_one(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    mc = fakes.mailchimp
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    mc.faults.add(403, code="Forbidden", message="User disabled", method="POST", path=f"^/lists/{LIST}$")
    for profile in ("a1", "a2"):
        h.submit(profile, 1, {"vip"})
    h.sim.advance(timedelta(seconds=1))
    assert h.flushers["mailchimp"].flush(h.sim()) == {"paused": 1}
    assert not [r for r in mc.requests if r.method == "PUT"]
    assert DeadLetters(redis_client).count("sync:mailchimp") == 0


# HubSpot and Klaviyo read their answers the same way


def test_hubspot_an_upsert_or_list_answer_that_is_not_json_is_retried(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    hs = fakes.hubspot
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    hs.faults.add(200, body=NOT_JSON, content_type="text/html", count=1, path="/batch/upsert$")
    h.submit("h1", 1, {"vip"})
    h.sim.advance(timedelta(seconds=1))
    h.flushers["hubspot"].flush(h.sim())
    _still_to_do(h, "hubspot", "h1")
    h.drive()
    hs.faults.add(200, body=NOT_JSON, content_type="text/html", count=1, path="/memberships/add$")
    h.submit("h1", 2, {"vip", "cart_abandoner"})
    h.sim.advance(timedelta(seconds=1))
    h.flushers["hubspot"].flush(h.sim())
    assert sync.applied_version(redis_client, "acme", "hubspot", "h1") == 1
    assert email_of("h1") not in hs.emails_in_list("Cart")
    h.drive()
    assert_final_state(h, fakes)
    assert DeadLetters(redis_client).count("sync:hubspot") == 0


def test_hubspot_tags_read_back_with_an_unreadable_answer_are_not_taken_as_none(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    """The tags property is the team's own, so it is read before it is written: an answer that
    cannot be read is retried rather than taken as "no tags", which would drop hand-set ones."""
    hs = fakes.hubspot
    account = standard_account(tmp_path, fakes, hubspot={"preserve_unowned_tags": True})
    h = Harness(redis_client, sim, account)
    h.submit("t1", 1, {"vip"})
    h.drive()
    contact = hs.contact_by_email(email_of("t1"))
    assert contact is not None
    hs.properties["esp_tags"]["options"].append({"label": "by hand", "value": "by hand"})
    contact.properties["esp_tags"] = "vip;by hand"
    hs.faults.add(200, body=NOT_JSON, content_type="text/html", count=1, path="/batch/read$")
    h.submit("t1", 2, {"vip", "cart_abandoner"})
    h.sim.advance(timedelta(seconds=1))
    h.flushers["hubspot"].flush(h.sim())
    assert sync.applied_version(redis_client, "acme", "hubspot", "t1") == 1
    assert set(contact.properties["esp_tags"].split(";")) == {"vip", "by hand"}
    h.drive()
    assert set(contact.properties["esp_tags"].split(";")) == {"vip", "cart abandoner", "by hand"}


def test_klaviyo_an_import_answer_without_a_profile_is_retried_not_dead_lettered(
    redis_client: redis.Redis, sim: FrozenClock, fakes: Fakes, tmp_path: Path
) -> None:
    kl = fakes.klaviyo
    h = Harness(redis_client, sim, standard_account(tmp_path, fakes))
    kl.faults.add(200, body=NOT_JSON, content_type="text/html", count=1, path="^/api/profile-import$")
    h.submit("k1", 1, {"vip"})
    h.sim.advance(timedelta(seconds=1))
    h.flushers["klaviyo"].flush(h.sim())
    assert _still_to_do(h, "klaviyo", "k1")["error"]["type"] == "TransientError"
    h.drive()
    assert_final_state(h, fakes)
    assert DeadLetters(redis_client).count("sync:klaviyo") == 0
