"""Mailchimp adapter against a transport fake that checks auth, paths and body shapes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import redis

from adapters.base import RetryPolicy, credential_key
from adapters.change import APPLIED, CONSENT_SUBSCRIBED, CONSENT_UNSUBSCRIBED, FAILED, Change, OwnedState
from adapters.errors import AuthError, PermanentError, RateLimited, TransientError
from adapters.mailchimp import MailchimpAdapter, MailchimpConfig, map_error, subscriber_hash
from adapters.ratelimit import RateLimiter
from tests.helpers import SimClock

KEY = "0123456789abcdef0123456789abcdef-us6"
LIST = "aud1"
Handler = Callable[[httpx.Request, Any], httpx.Response]


def problem(status: int, title: str, detail: str) -> httpx.Response:
    body = {
        "type": "https://mailchimp.com/developer/marketing/docs/errors/",
        "title": title,
        "status": status,
        "detail": detail,
        "instance": "i-1",
    }
    return httpx.Response(status, json=body, headers={"Content-Type": "application/problem+json"})


class FakeMailchimp:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self.overrides: dict[tuple[str, str], Handler] = {}
        self.merge_fields: dict[str, str] = {"FNAME": "text", "LNAME": "text"}
        self.members: set[str] = set()  # lower-cased emails already in the audience

    def __call__(self, request: httpx.Request) -> httpx.Response:
        expected = "Basic " + base64.b64encode(f"connector:{KEY}".encode()).decode()
        assert request.headers["Authorization"] == expected
        body = json.loads(request.content) if request.content else None
        path = request.url.path
        assert path.startswith("/3.0/")
        route = path[len("/3.0") :]
        self.calls.append((request.method, route, body))
        override = self.overrides.get((request.method, route))
        if override:
            return override(request, body)
        if request.method == "GET" and route == f"/lists/{LIST}/merge-fields":
            assert request.url.params["count"] == "1000"
            fields = [{"tag": t, "name": t, "type": k} for t, k in self.merge_fields.items()]
            offset = int(request.url.params.get("offset", "0"))
            return httpx.Response(
                200, json={"merge_fields": fields[offset:], "total_items": len(fields), "list_id": LIST}
            )
        if request.method == "POST" and route == f"/lists/{LIST}/merge-fields":
            assert set(body) == {"tag", "name", "type"} and body["type"] in ("text", "number")
            assert body["tag"] not in self.merge_fields
            self.merge_fields[body["tag"]] = body["type"]
            return httpx.Response(200, json={"merge_id": len(self.merge_fields), **body, "list_id": LIST})
        if request.method == "POST" and route == f"/lists/{LIST}":
            assert set(body) == {"members", "update_existing", "sync_tags"}
            assert len(body["members"]) <= 500 and body["sync_tags"] is False
            new, updated, errors = [], [], []
            for m in body["members"]:
                assert "status" not in m  # consent of existing members is never changed
                if body["update_existing"]:  # nothing that any reading could apply to a status
                    assert "status_if_new" not in m
                else:
                    assert m["status_if_new"] in ("subscribed", "transactional", "pending", "unsubscribed")
                assert set(m) <= {"email_address", "status_if_new", "merge_fields", "tags"}
                assert set(m.get("merge_fields", {})) <= set(self.merge_fields)  # only existing fields
                email = m["email_address"].lower()
                if email in self.members and not body["update_existing"]:
                    errors.append(
                        {
                            "email_address": m["email_address"],
                            "error": f"{m['email_address']} is already a list member.",
                            "error_code": "ERROR_CONTACT_EXISTS",
                        }
                    )
                else:
                    (updated if email in self.members else new).append(m)
                    self.members.add(email)
            return httpx.Response(
                200,
                json={
                    "new_members": new,
                    "updated_members": updated,
                    "errors": errors,
                    "total_created": len(new),
                    "total_updated": len(updated),
                    "error_count": len(errors),
                },
            )
        if request.method == "PUT" and route.startswith(f"/lists/{LIST}/members/"):
            assert request.url.params.get("skip_merge_validation") == "false"
            assert "status" not in body
            return httpx.Response(
                200,
                json={
                    "id": route.rsplit("/", 1)[-1],
                    "email_address": body["email_address"],
                    "status": body["status_if_new"],
                },
            )
        if request.method == "POST" and route.endswith("/tags"):
            assert set(body) == {"tags", "is_syncing"}
            assert all(
                set(t) == {"name", "status"} and t["status"] in ("active", "inactive") for t in body["tags"]
            )
            return httpx.Response(204, headers={"Content-Type": "application/json"})
        if request.method == "POST" and route.startswith(f"/lists/{LIST}/segments/"):
            assert set(body) == {"members_to_add", "members_to_remove"}
            assert len(body["members_to_add"]) <= 500 and len(body["members_to_remove"]) <= 500
            return httpx.Response(
                200,
                json={
                    "members_added": body["members_to_add"],
                    "members_removed": body["members_to_remove"],
                    "errors": [],
                    "total_added": len(body["members_to_add"]),
                    "total_removed": len(body["members_to_remove"]),
                    "error_count": 0,
                },
            )
        if request.method == "POST" and route.endswith("/actions/delete-permanent"):
            return httpx.Response(204)
        return problem(404, "Resource Not Found", "The requested resource could not be found.")


def adapter(fake: FakeMailchimp, transport: dict[str, Any] | None = None, **config: Any) -> MailchimpAdapter:
    cfg = MailchimpConfig(api_key=KEY, list_id=LIST, base_url="https://us6.api.mailchimp.test/3.0", **config)
    return MailchimpAdapter(cfg, http_transport=httpx.MockTransport(fake), **(transport or {}))


def change(pid: str, version: int = 1, **kw: Any) -> Change:
    kw.setdefault("email", f"{pid}@example.com")
    return Change(account="acme", destination="mailchimp", profile_id=pid, version=version, **kw)


def test_subscriber_hash_and_default_url() -> None:
    assert subscriber_hash("Ann@Example.com") == subscriber_hash("ann@example.com")
    assert MailchimpConfig(api_key=KEY, list_id=LIST).url() == "https://us6.api.mailchimp.com/3.0"


def test_upsert_batch_without_consent_is_transactional_with_tags_and_fields() -> None:
    fake = FakeMailchimp()
    results = adapter(fake).apply(
        [
            change("p1", tags=frozenset({"vip"}), fields={"LTV": 120, "ACTIVE": True}),
            change("p2", consent=CONSENT_SUBSCRIBED),
            change("p3", consent=CONSENT_UNSUBSCRIBED),
        ],
        {},
    )
    assert [r.status for r in results] == [APPLIED, APPLIED, APPLIED]
    # the merge fields it writes are created first (Mailchimp refuses unknown ones), typed by value
    assert [c[:2] for c in fake.calls[:3]] == [
        ("GET", f"/lists/{LIST}/merge-fields"),
        ("POST", f"/lists/{LIST}/merge-fields"),
        ("POST", f"/lists/{LIST}/merge-fields"),
    ]
    assert fake.calls[1][2] == {"tag": "ACTIVE", "name": "ACTIVE", "type": "text"}
    assert fake.calls[2][2] == {"tag": "LTV", "name": "LTV", "type": "number"}
    method, route, body = fake.calls[3]
    assert (method, route) == ("POST", f"/lists/{LIST}")
    members = {m["email_address"]: m for m in body["members"]}
    assert members["p1@example.com"] == {
        "email_address": "p1@example.com",
        "status_if_new": "transactional",
        "merge_fields": {"LTV": 120, "ACTIVE": "true"},
        "tags": ["vip"],
    }
    assert members["p2@example.com"]["status_if_new"] == "subscribed"
    assert members["p3@example.com"]["status_if_new"] == "unsubscribed"
    # contacts the ledger does not know: a create-only batch, which cannot touch an existing member
    assert body["update_existing"] is False and body["sync_tags"] is False
    assert len(fake.calls) == 4
    assert results[0].owned == OwnedState(tags=frozenset({"vip"}), fields=frozenset({"LTV", "ACTIVE"}))


def test_consent_can_be_required_for_subscribing() -> None:
    fake = FakeMailchimp()
    adapter(fake, subscribe_with_consent=False, status_if_new="pending").apply(
        [change("p1", consent=CONSENT_SUBSCRIBED)], {}
    )
    assert fake.calls[0][2]["members"][0]["status_if_new"] == "pending"


def test_only_owned_tags_are_removed_and_cleared_fields_are_erased() -> None:
    fake = FakeMailchimp()
    fake.merge_fields["LTV"] = "number"
    before = OwnedState(tags=frozenset({"vip", "Cart Abandoner"}), fields=frozenset({"LTV", "GONE"}))
    results = adapter(fake).apply([change("p1", tags=frozenset({"vip"}))], {"p1": before})
    assert results[0].status == APPLIED
    assert fake.calls[0][:2] == ("GET", f"/lists/{LIST}/merge-fields")
    update = fake.calls[1][2]
    assert update["update_existing"] is True  # written before: the update batch, without any status
    # a field deleted from the audience meanwhile has nothing to erase (and would be refused)
    assert update["members"][0] == {
        "email_address": "p1@example.com",
        "merge_fields": {"LTV": ""},
        "tags": ["vip"],
    }
    _, route, body = fake.calls[2]
    assert route == f"/lists/{LIST}/members/{subscriber_hash('p1@example.com')}/tags"
    # only the tag the connector set and no longer wants; nothing else is named
    assert body == {"tags": [{"name": "Cart Abandoner", "status": "inactive"}], "is_syncing": False}


def test_static_segments_add_and_remove_in_one_call_per_segment() -> None:
    fake = FakeMailchimp()
    changes = [change(f"p{i}", lists=frozenset({"77"})) for i in range(3)]
    changes.append(change("gone"))
    owned = {"gone": OwnedState(lists=frozenset({"77"}))}
    adapter(fake).apply(changes, owned)
    seg_calls = [c for c in fake.calls if c[1] == f"/lists/{LIST}/segments/77"]
    assert len(seg_calls) == 1
    assert sorted(seg_calls[0][2]["members_to_add"]) == ["p0@example.com", "p1@example.com", "p2@example.com"]
    assert seg_calls[0][2]["members_to_remove"] == ["gone@example.com"]


def test_batches_respect_the_500_limit() -> None:
    fake = FakeMailchimp()
    changes = [change(f"p{i}", lists=frozenset({"9"})) for i in range(1200)]
    results = adapter(fake).apply(changes, {})
    assert all(r.status == APPLIED for r in results)
    assert [len(c[2]["members"]) for c in fake.calls if c[1] == f"/lists/{LIST}"] == [500, 500, 200]
    assert len([c for c in fake.calls if c[1].startswith(f"/lists/{LIST}/segments/")]) == 3


def test_per_item_errors_are_redriven_one_by_one_and_compliance_is_permanent() -> None:
    fake = FakeMailchimp()

    def batch(request: httpx.Request, body: Any) -> httpx.Response:
        errors = [
            {
                "email_address": "bad@example.com",
                "error": "in compliance state",
                "error_code": "ERROR_GENERIC",
            },
            {"email_address": "flaky@example.com", "error": "oops", "error_code": "ERROR_GENERIC"},
        ]
        return httpx.Response(
            200,
            json={
                "new_members": [{"email_address": "ok@example.com"}],
                "updated_members": [],
                "errors": errors,
                "total_created": 1,
                "total_updated": 0,
                "error_count": 2,
            },
        )

    def put_bad(request: httpx.Request, body: Any) -> httpx.Response:
        return problem(
            400,
            "Member In Compliance State",
            "bad@example.com is in a compliance state due to unsubscribe, bounce, or compliance review "
            "and cannot be subscribed.",
        )

    fake.overrides[("POST", f"/lists/{LIST}")] = batch
    fake.overrides[("PUT", f"/lists/{LIST}/members/{subscriber_hash('bad@example.com')}")] = put_bad
    results = adapter(fake).apply(
        [
            change("ok", email="ok@example.com"),
            change("bad", email="bad@example.com"),
            change("flaky", email="flaky@example.com", tags=frozenset({"t"})),
        ],
        {},
    )
    status = {r.profile_id: r for r in results}
    assert status["ok"].status == APPLIED
    assert status["flaky"].status == APPLIED  # re-driven: PUT + tags succeeded
    assert status["bad"].status == FAILED
    assert isinstance(status["bad"].error, PermanentError)
    assert status["bad"].error.code == "Member In Compliance State"
    redriven = [c[1] for c in fake.calls if c[0] == "PUT"]
    assert len(redriven) == 2  # only the failed items


def test_error_mapping() -> None:
    assert isinstance(map_error(problem(401, "API Key Invalid", "Your API key may be invalid")), AuthError)
    forgotten = map_error(problem(400, "Forgotten Email Not Subscribed", "x was permanently deleted"))
    assert isinstance(forgotten, PermanentError) and not forgotten.retryable
    compliance = map_error(problem(503, "Compliance Related", "This method has been disabled"))
    assert isinstance(compliance, PermanentError)
    assert map_error(problem(503, "Service Unavailable", "try later")).retryable
    abuse = map_error(
        problem(
            400,
            "Invalid Resource",
            "x has signed up to a lot of lists very recently; we're not allowing more signups for now",
        )
    )
    assert isinstance(abuse, RateLimited) and abuse.scope == "ABUSE" and abuse.retry_after >= 3600
    busy = map_error(
        problem(429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections.")
    )
    assert isinstance(busy, RateLimited)


def test_bad_credentials_raise_for_the_whole_destination() -> None:
    fake = FakeMailchimp()
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: problem(401, "API Key Invalid", "invalid key")
    with pytest.raises(AuthError):
        adapter(fake).apply([change("p1")], {})


def test_erase_deletes_permanently_and_404_counts_as_done() -> None:
    fake = FakeMailchimp()
    gone = f"/lists/{LIST}/members/{subscriber_hash('gone@example.com')}/actions/delete-permanent"
    fake.overrides[("POST", gone)] = lambda r, b: problem(404, "Resource Not Found", "not found")
    results = adapter(fake).apply(
        [change("p1", erase=True), change("gone", email="gone@example.com", erase=True)], {}
    )
    assert [r.status for r in results] == [APPLIED, APPLIED]
    assert results[0].owned is None
    assert fake.calls[0][:2] == (
        "POST",
        f"/lists/{LIST}/members/{subscriber_hash('p1@example.com')}/actions/delete-permanent",
    )


def test_contacts_without_email_are_skipped() -> None:
    fake = FakeMailchimp()
    results = adapter(fake).apply([change("p1", email=None)], {})
    assert results[0].status == "skipped" and fake.calls == []


def test_a_tag_dropped_by_many_contacts_goes_through_its_segment() -> None:
    fake = FakeMailchimp()

    def tag_search(request: httpx.Request, body: Any) -> httpx.Response:
        assert request.url.params["name"] == "Cart Abandoner"
        return httpx.Response(
            200,
            json={
                "tags": [{"id": 4242, "name": "cart abandoner"}, {"id": 1, "name": "cart abandoner 2"}],
                "total_items": 2,
            },
        )

    fake.overrides[("GET", f"/lists/{LIST}/tag-search")] = tag_search
    owned = {f"p{i}": OwnedState(tags=frozenset({"Cart Abandoner"})) for i in range(30)}
    changes = [change(f"p{i}") for i in range(30)]
    results = adapter(fake).apply(changes, owned)
    assert all(r.status == APPLIED for r in results)
    removal = [c for c in fake.calls if c[1] == f"/lists/{LIST}/segments/4242"]
    assert len(removal) == 1 and len(removal[0][2]["members_to_remove"]) == 30
    assert not [c for c in fake.calls if c[1].endswith("/tags")]
    # few contacts: the tags endpoint, one per contact
    fake = FakeMailchimp()
    adapter(fake).apply(changes[:2], owned)
    assert len([c for c in fake.calls if c[1].endswith("/tags")]) == 2


# -- merge fields -------------------------------------------------------------------------------


def test_merge_fields_are_read_once_per_adapter_and_created_when_missing() -> None:
    fake = FakeMailchimp()
    mc = adapter(fake)
    first = mc.apply([change("p1", fields={"CARTVAL": 40.5, "FNAME": "Ann", "SKU": None})], {})
    assert first[0].status == APPLIED
    reads = [c for c in fake.calls if c[:2] == ("GET", f"/lists/{LIST}/merge-fields")]
    created = [c[2] for c in fake.calls if c[:2] == ("POST", f"/lists/{LIST}/merge-fields")]
    assert len(reads) == 1
    assert created == [{"tag": "CARTVAL", "name": "CARTVAL", "type": "number"}]  # FNAME exists
    fake.calls.clear()
    second = mc.apply([change("p2", fields={"CARTVAL": 3, "PLAN": "gold"})], {})
    assert second[0].status == APPLIED
    assert [c[:2] for c in fake.calls] == [
        ("POST", f"/lists/{LIST}/merge-fields"),  # only the new one; the list is cached
        ("POST", f"/lists/{LIST}"),
    ]
    assert fake.calls[0][2] == {"tag": "PLAN", "name": "PLAN", "type": "text"}


def test_changes_without_field_values_do_not_read_the_merge_fields() -> None:
    fake = FakeMailchimp()
    adapter(fake).apply([change("p1", tags=frozenset({"vip"}), fields={"CARTVAL": None})], {})
    assert [c[:2] for c in fake.calls] == [("POST", f"/lists/{LIST}")]


def test_a_name_that_cannot_be_a_merge_tag_fails_the_change_permanently() -> None:
    fake = FakeMailchimp()
    results = adapter(fake).apply(
        [
            change("lower", fields={"cart_value": 3}),
            change("long", fields={"LIFETIMEVAL1": 3}),
            change("fine", tags=frozenset({"vip"})),
        ],
        {},
    )
    status = {r.profile_id: r for r in results}
    assert status["fine"].status == APPLIED
    for pid, name in (("lower", "cart_value"), ("long", "LIFETIMEVAL1")):
        err = status[pid].error
        assert status[pid].status == FAILED and isinstance(err, PermanentError) and not err.retryable
        assert err.code == "invalid_merge_tag" and name in err.message and "1-10 characters" in err.message
    assert [c[:2] for c in fake.calls] == [("POST", f"/lists/{LIST}")]  # nothing created, nothing read
    assert [m["email_address"] for m in fake.calls[0][2]["members"]] == ["fine@example.com"]


def test_a_merge_field_created_meanwhile_by_another_worker_is_used() -> None:
    fake = FakeMailchimp()

    def race(request: httpx.Request, body: Any) -> httpx.Response:
        fake.merge_fields[body["tag"]] = body["type"]  # the other worker's request landed first
        return problem(400, "Invalid Resource", f'A Merge Field with the tag "{body["tag"]}" already exists.')

    fake.overrides[("POST", f"/lists/{LIST}/merge-fields")] = race
    results = adapter(fake).apply([change("p1", fields={"CARTVAL": 1})], {})
    assert results[0].status == APPLIED
    assert len([c for c in fake.calls if c[:2] == ("GET", f"/lists/{LIST}/merge-fields")]) == 2
    assert fake.calls[-1][2]["members"][0]["merge_fields"] == {"CARTVAL": 1}


def test_a_merge_field_that_cannot_be_created_fails_only_the_changes_writing_it() -> None:
    fake = FakeMailchimp()
    fake.overrides[("POST", f"/lists/{LIST}/merge-fields")] = lambda r, b: problem(
        400, "Invalid Resource", "This list has reached its limit of merge fields."
    )
    results = adapter(fake).apply(
        [change("p1", fields={"CARTVAL": 1}), change("p2", fields={"FNAME": "A"})], {}
    )
    status = {r.profile_id: r for r in results}
    assert status["p1"].status == FAILED and isinstance(status["p1"].error, PermanentError)
    assert status["p2"].status == APPLIED


# -- consent ------------------------------------------------------------------------------------


def test_existing_members_are_written_without_any_status() -> None:
    """Contacts the ledger does not know go in a create-only batch; an existing member is reported
    there untouched and written again in the update batch with no status and no status_if_new."""
    fake = FakeMailchimp()
    fake.members = {"old@example.com", "known@example.com"}
    results = adapter(fake).apply(
        [
            change("new", consent=CONSENT_SUBSCRIBED, tags=frozenset({"vip"})),
            change("old", email="old@example.com", consent=CONSENT_SUBSCRIBED, tags=frozenset({"vip"})),
            change("known", email="known@example.com", tags=frozenset({"vip"})),
        ],
        {"known": OwnedState(tags=frozenset({"vip"}))},
    )
    assert [r.status for r in results] == [APPLIED, APPLIED, APPLIED]
    batches = [c[2] for c in fake.calls if c[:2] == ("POST", f"/lists/{LIST}")]
    assert [b["update_existing"] for b in batches] == [False, True]
    assert [(m["email_address"], m["status_if_new"]) for m in batches[0]["members"]] == [
        ("new@example.com", "subscribed"),
        ("old@example.com", "subscribed"),
    ]
    assert batches[1]["members"] == [
        {"email_address": "known@example.com", "tags": ["vip"]},
        {"email_address": "old@example.com", "tags": ["vip"]},
    ]
    assert not [c for c in fake.calls if c[0] == "PUT"]


def test_a_change_that_only_takes_away_writes_no_member_and_404_means_nothing_to_remove() -> None:
    fake = FakeMailchimp()
    tags = f"/lists/{LIST}/members/{subscriber_hash('p1@example.com')}/tags"
    fake.overrides[("POST", tags)] = lambda r, b: problem(
        404, "Resource Not Found", "The requested resource could not be found."
    )  # archived or deleted in Mailchimp meanwhile
    owned = {"p1": OwnedState(tags=frozenset({"vip"}), lists=frozenset({"77"}))}
    results = adapter(fake).apply([change("p1")], owned)
    assert results[0].status == APPLIED and results[0].owned == OwnedState()
    assert [c[:2] for c in fake.calls] == [("POST", tags), ("POST", f"/lists/{LIST}/segments/77")]
    assert fake.calls[1][2] == {"members_to_add": [], "members_to_remove": ["p1@example.com"]}


# -- rate limits --------------------------------------------------------------------------------


def _limited(fake: FakeMailchimp, conn: redis.Redis) -> tuple[MailchimpAdapter, RateLimiter, SimClock]:
    clock = SimClock()
    limiter = RateLimiter(conn, clock=clock, sleep=clock.sleep)
    mc = adapter(fake, transport={"limiter": limiter, "clock": clock, "sleep": clock.sleep})
    return mc, limiter, clock


def test_a_429_halves_the_concurrent_connections_of_the_key(redis_client: redis.Redis) -> None:
    fake = FakeMailchimp()
    busy = [True]

    def batch(request: httpx.Request, body: Any) -> httpx.Response:
        if busy.pop() if busy else False:
            return problem(
                429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."
            )
        del fake.overrides[("POST", f"/lists/{LIST}")]
        return fake(request)

    fake.overrides[("POST", f"/lists/{LIST}")] = batch
    mc, limiter, clock = _limited(fake, redis_client)
    key = credential_key("mailchimp", KEY)
    assert mc.apply([change("p1", tags=frozenset({"vip"}))], {})[0].status == APPLIED
    assert len(clock.slept) == 1  # retried in the call after a backoff (no Retry-After)
    assert limiter.factor(key) < 1.0  # the shared limiter heard of the 429 ...
    leases = [limiter.try_lease(key, 10) for _ in range(10)]
    assert sum(1 for lease in leases if lease) == 5  # ... and allows half the connections


def test_a_429_with_retry_after_blocks_the_key_for_every_worker(redis_client: redis.Redis) -> None:
    fake = FakeMailchimp()
    busy = [True]

    def batch(request: httpx.Request, body: Any) -> httpx.Response:
        if busy.pop() if busy else False:
            response = problem(
                429, "Too Many Requests", "You have exceeded the limit of 10 simultaneous connections."
            )
            response.headers["Retry-After"] = "3"
            return response
        del fake.overrides[("POST", f"/lists/{LIST}")]
        return fake(request)

    fake.overrides[("POST", f"/lists/{LIST}")] = batch
    mc, limiter, clock = _limited(fake, redis_client)
    key = credential_key("mailchimp", KEY)
    blocked: list[float] = []  # what another worker sees while this one waits
    clock.before_sleep = lambda: blocked.append(limiter.blocked_for(key))
    assert mc.apply([change("p1", tags=frozenset({"vip"}))], {})[0].status == APPLIED
    assert blocked and blocked[0] == pytest.approx(3.0)
    assert clock.slept[0] == pytest.approx(3.0)  # Retry-After honoured in the call


def test_the_anti_abuse_throttle_parks_one_contact_and_leaves_the_key_open(redis_client: redis.Redis) -> None:
    fake = FakeMailchimp()
    abusive = f"/lists/{LIST}/members/{subscriber_hash('busy@example.com')}"

    def batch(request: httpx.Request, body: Any) -> httpx.Response:
        errors = [{"email_address": "busy@example.com", "error": "signed up", "error_code": "ERROR_GENERIC"}]
        ok = [m for m in body["members"] if m["email_address"] != "busy@example.com"]
        return httpx.Response(200, json={"new_members": ok, "updated_members": [], "errors": errors})

    fake.overrides[("POST", f"/lists/{LIST}")] = batch
    fake.overrides[("PUT", abusive)] = lambda r, b: problem(
        400,
        "Invalid Resource",
        "busy@example.com has signed up to a lot of lists very recently; "
        "we're not allowing more signups for now",
    )
    mc, limiter, _ = _limited(fake, redis_client)
    results = {
        r.profile_id: r for r in mc.apply([change("busy", email="busy@example.com"), change("p1")], {})
    }
    assert results["p1"].status == APPLIED
    err = results["busy"].error
    assert isinstance(err, RateLimited) and err.scope == "ABUSE" and err.retry_after == 6 * 3600
    key = credential_key("mailchimp", KEY)
    assert limiter.blocked_for(key) == 0 and limiter.factor(key) == 1.0


# -- answers that confirm (or not) what was sent ---------------------------------------------------


def _batch_answer(new: list[str], errors: list[dict[str, str]] | None = None) -> httpx.Response:
    return httpx.Response(
        200,
        json={
            "new_members": [{"email_address": e, "status": "transactional"} for e in new],
            "updated_members": [],
            "errors": errors or [],
            "total_created": len(new),
            "total_updated": 0,
            "error_count": len(errors or []),
        },
    )


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, text="<html>OK</html>", headers={"Content-Type": "text/html"}),
        httpx.Response(200, json={"total_created": 2}),
        httpx.Response(200, json=["a@example.com"]),
        httpx.Response(200),
    ],
    ids=["html", "no-lists", "array", "empty"],
)
def test_a_batch_answer_that_cannot_be_read_applies_nothing(response: httpx.Response) -> None:
    fake = FakeMailchimp()
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: response
    results = adapter(fake).apply([change("p1", tags=frozenset({"vip"})), change("p2")], {})
    for result in results:
        assert result.status == FAILED and isinstance(result.error, TransientError)
        assert result.error.retryable and result.error.code in ("unreadable_answer", "unconfirmed")
        assert result.owned is None  # nothing of it took effect
    assert not [c for c in fake.calls if c[0] == "PUT"]  # not re-driven: retried later


def test_only_the_emails_a_batch_answer_accounts_for_are_applied() -> None:
    fake = FakeMailchimp()
    errors = [{"email_address": "P3@example.com", "error": "bad", "error_code": "ERROR_GENERIC"}]
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: _batch_answer(["P1@Example.com"], errors)
    results = {
        r.profile_id: r
        for r in adapter(fake).apply(
            [change(p, tags=frozenset({"vip"}), lists=frozenset({"77"})) for p in ("p1", "p2", "p3")], {}
        )
    }
    assert results["p1"].status == APPLIED  # named (in another case)
    assert results["p2"].status == FAILED and isinstance(results["p2"].error, TransientError)
    assert results["p2"].error.code == "unconfirmed" and results["p2"].owned is None
    assert results["p3"].status == APPLIED  # reported in errors[]: re-driven on its own, which worked
    assert [c[1] for c in fake.calls if c[0] == "PUT"] == [
        f"/lists/{LIST}/members/{subscriber_hash('p3@example.com')}"
    ]
    segment = [c[2] for c in fake.calls if c[1] == f"/lists/{LIST}/segments/77"]
    assert segment == [{"members_to_add": ["p1@example.com", "p3@example.com"], "members_to_remove": []}]


def test_a_member_write_answer_that_does_not_name_the_member_is_not_done() -> None:
    fake = FakeMailchimp()
    errors = [{"email_address": "p1@example.com", "error": "oops", "error_code": "ERROR_GENERIC"}]
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: _batch_answer([], errors)
    put = f"/lists/{LIST}/members/{subscriber_hash('p1@example.com')}"
    fake.overrides[("PUT", put)] = lambda r, b: httpx.Response(
        200, json={"id": "other", "email_address": "x@y.z"}
    )
    result = adapter(fake).apply([change("p1", tags=frozenset({"vip"}))], {})[0]
    assert result.status == FAILED and isinstance(result.error, TransientError)
    assert result.error.code == "unconfirmed"
    assert not [c for c in fake.calls if c[1].endswith("/tags")]  # nothing more after it


def test_a_static_segment_answer_that_cannot_be_read_is_retried_and_not_recorded() -> None:
    fake = FakeMailchimp()
    fake.overrides[("POST", f"/lists/{LIST}/segments/77")] = lambda r, b: httpx.Response(
        200, text="OK", headers={"Content-Type": "text/plain"}
    )
    result = adapter(fake).apply([change("p1", tags=frozenset({"vip"}), lists=frozenset({"77"}))], {})[0]
    assert result.status == FAILED and isinstance(result.error, TransientError)
    assert result.error.code == "unreadable_answer" and "text/plain" in result.error.message
    assert result.owned is not None and result.owned.lists == frozenset()  # the write stands, not the list
    assert result.owned.tags == {"vip"}


def test_merge_fields_or_tag_search_that_cannot_be_read_are_not_taken_as_empty() -> None:
    fake = FakeMailchimp()
    fake.overrides[("GET", f"/lists/{LIST}/merge-fields")] = lambda r, b: httpx.Response(200, text="x")
    result = adapter(fake).apply([change("p1", fields={"CARTVAL": 3})], {})[0]
    assert result.status == FAILED and isinstance(result.error, TransientError)
    assert not [c for c in fake.calls if c[0] == "POST"]  # nothing created, nothing written

    fake = FakeMailchimp()
    fake.overrides[("GET", f"/lists/{LIST}/tag-search")] = lambda r, b: httpx.Response(200, json={})
    owned = {f"p{i}": OwnedState(tags=frozenset({"gone"})) for i in range(20)}
    results = adapter(fake).apply([change(f"p{i}") for i in range(20)], owned)
    assert all(r.status == APPLIED for r in results)
    # the tag was not taken for deleted: removed through the tags endpoint instead
    assert len([c for c in fake.calls if c[1].endswith("/tags")]) == 20


def test_a_whole_batch_refused_with_a_400_is_sent_again_one_by_one() -> None:
    fake = FakeMailchimp()
    reason = "bad@example.com looks fake or invalid, please enter a real email address."
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: problem(400, "Invalid Resource", reason)
    put_bad = f"/lists/{LIST}/members/{subscriber_hash('bad@example.com')}"
    fake.overrides[("PUT", put_bad)] = lambda r, b: problem(400, "Invalid Resource", reason)
    changes = [change(p, tags=frozenset({"vip"})) for p in ("ok1", "bad", "ok2")]
    changes.append(change("known", tags=frozenset({"vip"})))
    results = {
        r.profile_id: r for r in adapter(fake).apply(changes, {"known": OwnedState(tags=frozenset({"x"}))})
    }
    assert {p: r.status for p, r in results.items()} == {
        "ok1": APPLIED,
        "bad": FAILED,
        "ok2": APPLIED,
        "known": APPLIED,
    }
    bad = results["bad"].error
    assert isinstance(bad, PermanentError) and bad.detail == reason
    puts = [c[1] for c in fake.calls if c[0] == "PUT"]
    assert len(puts) == 4  # each contact of both refused batches, on its own
    assert results["ok1"].owned == OwnedState(tags=frozenset({"vip"}))


@pytest.mark.parametrize(
    ("status", "title"),
    [(404, "Resource Not Found"), (401, "API Key Invalid"), (429, "Too Many Requests"), (500, "Oops")],
)
def test_a_batch_refused_for_the_audience_the_key_or_a_limit_is_not_sent_one_by_one(
    status: int, title: str
) -> None:
    fake = FakeMailchimp()
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: problem(status, title, "no")
    mc = adapter(fake, transport={"policy": RetryPolicy(attempts=1)})
    try:
        results = mc.apply([change("p1"), change("p2")], {})
    except AuthError:
        assert status == 401
    else:
        assert [r.status for r in results] == [FAILED, FAILED]
    assert not [c for c in fake.calls if c[0] == "PUT"]


def test_an_outage_while_sending_one_by_one_stops_the_sending() -> None:
    fake = FakeMailchimp()
    fake.overrides[("POST", f"/lists/{LIST}")] = lambda r, b: problem(400, "Invalid Resource", "one is bad")
    for p in ("p0", "p1", "p2", "p3"):
        path = f"/lists/{LIST}/members/{subscriber_hash(f'{p}@example.com')}"
        fake.overrides[("PUT", path)] = lambda r, b: problem(503, "Service Unavailable", "down")
    mc = adapter(fake, transport={"policy": RetryPolicy(attempts=1)})
    results = mc.apply([change(f"p{i}") for i in range(4)], {})
    assert all(r.status == FAILED and r.error is not None and r.error.retryable for r in results)
    assert len([c for c in fake.calls if c[0] == "PUT"]) == 1
