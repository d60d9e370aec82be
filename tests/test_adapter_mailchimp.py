"""Mailchimp adapter against a transport fake that checks auth, paths and body shapes."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from adapters.change import APPLIED, CONSENT_SUBSCRIBED, CONSENT_UNSUBSCRIBED, FAILED, Change, OwnedState
from adapters.errors import AuthError, PermanentError, RateLimited
from adapters.mailchimp import MailchimpAdapter, MailchimpConfig, map_error, subscriber_hash

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
        if request.method == "POST" and route == f"/lists/{LIST}":
            assert set(body) == {"members", "update_existing", "sync_tags"}
            assert len(body["members"]) <= 500
            for m in body["members"]:
                assert "status" not in m  # consent of existing members is never changed
                assert m["status_if_new"] in ("subscribed", "transactional", "pending", "unsubscribed")
                assert set(m) <= {"email_address", "status_if_new", "merge_fields", "tags"}
            return httpx.Response(
                200,
                json={
                    "new_members": body["members"],
                    "updated_members": [],
                    "errors": [],
                    "total_created": len(body["members"]),
                    "total_updated": 0,
                    "error_count": 0,
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


def adapter(fake: FakeMailchimp, **config: Any) -> MailchimpAdapter:
    cfg = MailchimpConfig(api_key=KEY, list_id=LIST, base_url="https://us6.api.mailchimp.test/3.0", **config)
    return MailchimpAdapter(cfg, http_transport=httpx.MockTransport(fake))


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
    method, route, body = fake.calls[0]
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
    assert body["update_existing"] is True and body["sync_tags"] is False
    assert len(fake.calls) == 1
    assert results[0].owned == OwnedState(tags=frozenset({"vip"}), fields=frozenset({"LTV", "ACTIVE"}))


def test_consent_can_be_required_for_subscribing() -> None:
    fake = FakeMailchimp()
    adapter(fake, subscribe_with_consent=False, status_if_new="pending").apply(
        [change("p1", consent=CONSENT_SUBSCRIBED)], {}
    )
    assert fake.calls[0][2]["members"][0]["status_if_new"] == "pending"


def test_only_owned_tags_are_removed_and_cleared_fields_are_erased() -> None:
    fake = FakeMailchimp()
    before = OwnedState(tags=frozenset({"vip", "Cart Abandoner"}), fields=frozenset({"LTV"}))
    results = adapter(fake).apply([change("p1", tags=frozenset({"vip"}))], {"p1": before})
    assert results[0].status == APPLIED
    batch = fake.calls[0][2]["members"][0]
    assert batch["merge_fields"] == {"LTV": ""}
    _, route, body = fake.calls[1]
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
                "new_members": [],
                "updated_members": [],
                "errors": errors,
                "total_created": 0,
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
