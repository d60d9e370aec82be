"""The fake ESPs themselves: real HTTP on loopback, correct requests accepted, contract breaks rejected
with each vendor's own status and error shape, rate limits and injected faults in simulated time."""

from __future__ import annotations

import io
import json
import tarfile
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from connector.clock import FrozenClock
from connector.dev.sandbox import (
    FakeHubSpot,
    FakeKlaviyo,
    FakeMailchimp,
    HubSpotLimits,
    MailchimpLimits,
    serving,
    subscriber_hash,
)

T0 = datetime(2024, 3, 4, 12, 0, 0, tzinfo=UTC)
MC_KEY = "0123456789abcdef0123456789abcdef-us6"
HS_TOKEN = "pat-na1-11111111-2222-3333-4444-555555555555"
KL_KEY = "pk_test_0123456789"
REVISION = "2026-07-15"


@pytest.fixture
def sim() -> FrozenClock:
    return FrozenClock(T0)


def _client(url: str, **kwargs: Any) -> httpx.Client:
    return httpx.Client(base_url=url, timeout=10, **kwargs)


@pytest.fixture
def mc(sim: FrozenClock) -> Iterator[tuple[FakeMailchimp, httpx.Client]]:
    fake = FakeMailchimp(api_keys=[MC_KEY], lists=["aud1"], clock=sim)
    with serving(fake) as server, _client(server.url + "/3.0", auth=("anystring", MC_KEY)) as client:
        yield fake, client


@pytest.fixture
def hs(sim: FrozenClock) -> Iterator[tuple[FakeHubSpot, httpx.Client]]:
    fake = FakeHubSpot(tokens=[HS_TOKEN], clock=sim)
    headers = {"Authorization": f"Bearer {HS_TOKEN}"}
    with serving(fake) as server, _client(server.url, headers=headers) as client:
        yield fake, client


@pytest.fixture
def kl(sim: FrozenClock) -> Iterator[tuple[FakeKlaviyo, httpx.Client]]:
    fake = FakeKlaviyo(api_keys=[KL_KEY], clock=sim)
    headers = {
        "Authorization": f"Klaviyo-API-Key {KL_KEY}",
        "revision": REVISION,
        "Accept": "application/vnd.api+json",
        "Content-Type": "application/vnd.api+json",
    }
    with serving(fake) as server, _client(server.url, headers=headers) as client:
        yield fake, client


def _problem(response: httpx.Response, status: int, title: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert response.headers.get("X-Request-Id")
    body = response.json()
    assert body["status"] == status
    assert body["title"] == title, body
    assert body["type"].startswith("https://mailchimp.com/developer/")
    return dict(body)


def _put_member(client: httpx.Client, email: str, **body: Any) -> httpx.Response:
    payload = {"email_address": email, "status_if_new": "transactional", **body}
    return client.put(f"/lists/aud1/members/{subscriber_hash(email)}", json=payload)


# -- Mailchimp ----------------------------------------------------------------------------------


def test_mailchimp_member_upsert_and_tags(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    r = _put_member(client, "Ann@Example.com", merge_fields={"FNAME": "Ann"})
    assert r.status_code == 200
    member = r.json()
    assert member["id"] == subscriber_hash("ann@example.com")
    assert member["status"] == "transactional"
    assert member["merge_fields"] == {"FNAME": "Ann"}

    tags = {"tags": [{"name": "VIP", "status": "active"}, {"name": "Old", "status": "inactive"}]}
    r = client.post(f"/lists/aud1/members/{subscriber_hash('ann@example.com')}/tags", json=tags)
    assert r.status_code == 204
    assert r.content == b""
    assert fake.tags_of("aud1", "ann@example.com") == {"VIP"}

    r = client.get(f"/lists/aud1/members/{subscriber_hash('ann@example.com')}/tags")
    assert [t["name"] for t in r.json()["tags"]] == ["VIP"]
    # the member path also accepts the raw email
    assert client.get("/lists/aud1/members/ann@example.com").json()["status"] == "transactional"
    # a second PUT without status keeps consent unchanged
    r = _put_member(client, "ann@example.com", status_if_new="subscribed")
    assert r.json()["status"] == "transactional"


def test_mailchimp_auth(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    _, client = mc
    base = str(client.base_url)
    with httpx.Client(base_url=base) as anonymous:
        _problem(anonymous.get("/ping"), 401, "API Key Missing")
        _problem(anonymous.get("/ping", auth=("user", "wrong-us6")), 401, "API Key Invalid")
        _problem(
            anonymous.get("/ping", headers={"Authorization": f"Bearer {MC_KEY}"}), 401, "API Key Invalid"
        )
        assert anonymous.get("/ping", auth=("any", MC_KEY)).status_code == 200


def test_mailchimp_rejects_wrong_paths_and_methods(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    _, client = mc
    base = str(client.base_url).rstrip("/").removesuffix("/3.0")
    with httpx.Client(base_url=base, auth=("u", MC_KEY)) as bare:
        _problem(bare.get("/lists/aud1"), 404, "Resource Not Found")  # no /3.0 prefix
    _problem(client.get("/lists/nope"), 404, "Resource Not Found")
    _problem(client.delete("/lists/aud1/merge-fields"), 405, "Method Not Allowed")
    _problem(client.get("/contacts/v1/lists"), 404, "Resource Not Found")


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        (
            {"email_address": "a@example.com", "status_if_new": "pending", "emial": "x"},
            "could not be validated",
        ),
        ({"email_address": "a@example.com"}, "could not be validated"),  # new member without status_if_new
        ({"email_address": "a@example.com", "status_if_new": "yes"}, "could not be validated"),
        ({"email_address": "not-an-email", "status_if_new": "pending"}, "valid email address"),
        (
            {"email_address": "a@example.com", "status_if_new": "pending", "merge_fields": {"VIP": True}},
            "merge fields",
        ),
        (
            {"email_address": "a@example.com", "status_if_new": "pending", "merge_fields": {"NOPE": "x"}},
            "merge fields",
        ),
        ({"email_address": "a@example.com", "status_if_new": "pending", "tags": [{"name": "A"}]}, "Tags"),
        (["a@example.com"], "could not be validated"),
    ],
)
def test_mailchimp_rejects_bad_member_bodies(
    mc: tuple[FakeMailchimp, httpx.Client], body: Any, detail: str
) -> None:
    _, client = mc
    r = client.put(f"/lists/aud1/members/{subscriber_hash('a@example.com')}", json=body)
    problem = _problem(r, 400, "Invalid Resource")
    assert detail in problem["detail"]


def test_mailchimp_hash_must_match_email(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    _, client = mc
    r = client.put(
        f"/lists/aud1/members/{subscriber_hash('b@example.com')}",
        json={"email_address": "a@example.com", "status_if_new": "pending"},
    )
    assert "does not match" in _problem(r, 400, "Invalid Resource")["detail"]
    r = client.put(
        "/lists/aud1/members/abc", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    _problem(r, 400, "JSON Parse Error")


def test_mailchimp_tags_contract(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    _, client = mc
    path = f"/lists/aud1/members/{subscriber_hash('x@example.com')}/tags"
    r = client.post(path, json={"tags": [{"name": "A", "status": "active"}]})
    _problem(r, 404, "Resource Not Found")  # not in the audience
    _put_member(client, "x@example.com")
    _problem(client.post(path, json={"tags": ["A"]}), 400, "Invalid Resource")
    _problem(client.post(path, json={"tags": [{"name": "A", "status": "on"}]}), 400, "Invalid Resource")
    _problem(client.post(path, json={"tags": [], "sync": True}), 400, "Invalid Resource")
    assert (
        client.post(path, json={"tags": [{"name": "A", "status": "active"}], "is_syncing": True}).status_code
        == 204
    )


def test_mailchimp_compliance_errors(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    fake.set_status("aud1", "gone@example.com", "unsubscribed")
    r = _put_member(client, "gone@example.com", status="subscribed")
    assert "compliance state" in _problem(r, 400, "Member In Compliance State")["detail"]
    assert _put_member(client, "gone@example.com").status_code == 200  # without status: fine
    assert fake.member("aud1", "gone@example.com").status == "unsubscribed"  # type: ignore[union-attr]

    _put_member(client, "erase@example.com")
    r = client.post(f"/lists/aud1/members/{subscriber_hash('erase@example.com')}/actions/delete-permanent")
    assert r.status_code == 204
    _problem(_put_member(client, "erase@example.com"), 400, "Forgotten Email Not Subscribed")
    fake.unforget("erase@example.com")
    assert _put_member(client, "erase@example.com").status_code == 200


def test_mailchimp_create_only_and_archive(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    _, client = mc
    body = {"email_address": "c@example.com", "status": "pending"}
    assert client.post("/lists/aud1/members", json=body).status_code == 200
    _problem(client.post("/lists/aud1/members", json=body), 400, "Member Exists")
    assert client.delete(f"/lists/aud1/members/{subscriber_hash('c@example.com')}").status_code == 204
    _problem(
        client.delete(f"/lists/aud1/members/{subscriber_hash('c@example.com')}"), 404, "Resource Not Found"
    )


def test_mailchimp_batch_subscribe(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    fake.set_status("aud1", "unsub@example.com", "unsubscribed")
    members = [
        {"email_address": f"u{i}@example.com", "status_if_new": "transactional", "tags": ["A"]}
        for i in range(499)
    ]
    members.append({"email_address": "unsub@example.com", "status": "subscribed"})
    r = client.post("/lists/aud1", json={"members": members, "update_existing": True})
    assert r.status_code == 200
    body = r.json()
    assert body["total_created"] == 499
    assert body["error_count"] == 1
    assert body["errors"][0]["email_address"] == "unsub@example.com"
    assert "compliance state" in body["errors"][0]["error"]
    assert fake.tags_of("aud1", "u7@example.com") == {"A"}

    # tags are added to existing members; sync_tags replaces them
    again = [{"email_address": "u7@example.com", "status_if_new": "transactional", "tags": ["B"]}]
    client.post("/lists/aud1", json={"members": again, "update_existing": True})
    assert fake.tags_of("aud1", "u7@example.com") == {"A", "B"}
    client.post("/lists/aud1", json={"members": again, "update_existing": True, "sync_tags": True})
    assert fake.tags_of("aud1", "u7@example.com") == {"B"}

    too_many = members[:499] + [{"email_address": f"z{i}@example.com", "status": "pending"} for i in range(2)]
    r = client.post("/lists/aud1", json={"members": too_many, "update_existing": True})
    problem = _problem(r, 400, "Invalid Resource")
    assert problem["errors"][0]["field"] == "members"
    _problem(client.post("/lists/aud1", json={"members": [], "upsert": True}), 400, "Invalid Resource")


def test_mailchimp_static_segment_batch(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    for email in ("s1@example.com", "s2@example.com"):
        _put_member(client, email)
    seg = client.post("/lists/aud1/segments", json={"name": "Cart", "static_segment": []}).json()
    _problem(
        client.post("/lists/aud1/segments", json={"name": "cart", "static_segment": []}),
        400,
        "Invalid Resource",
    )
    r = client.post(
        f"/lists/aud1/segments/{seg['id']}",
        json={"members_to_add": ["s1@example.com", "s2@example.com", "stranger@example.com"]},
    )
    assert r.status_code == 200
    assert r.json()["total_added"] == 2
    # emails that are not in the audience are ignored (esp-apis.md §1 (c)), not reported as errors
    assert r.json()["errors"] == [] and r.json()["error_count"] == 0
    assert client.delete(f"/lists/aud1/members/{subscriber_hash('s1@example.com')}").status_code == 204
    r = client.post(
        f"/lists/aud1/segments/{seg['id']}",
        json={"members_to_remove": ["s2@example.com", "stranger@example.com", "s1@example.com"]},
    )
    assert r.json()["total_removed"] == 1  # s2; the unknown and the archived member are ignored
    assert r.json()["errors"] == [] and r.json()["error_count"] == 0
    assert fake.tags_of("aud1", "s2@example.com") == set()

    emails = [f"e{i}@example.com" for i in range(501)]
    r = client.post(f"/lists/aud1/segments/{seg['id']}", json={"members_to_add": emails})
    assert _problem(r, 400, "Invalid Resource")["errors"][0]["field"] == "members_to_add"
    r = client.post(f"/lists/aud1/segments/{seg['id']}", json={"add": ["s1@example.com"]})
    _problem(r, 400, "Invalid Resource")


def test_mailchimp_merge_fields_contract(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    # a member write naming a merge field the audience lacks is refused, as by Mailchimp
    r = _put_member(client, "m@example.com", merge_fields={"CARTVAL": 4})
    problem = _problem(r, 400, "Invalid Resource")
    assert problem["detail"] == "Your merge fields were invalid."
    assert problem["errors"] == [{"field": "CARTVAL", "message": "This merge field does not exist"}]
    member = {"email_address": "m@example.com", "status_if_new": "pending", "merge_fields": {"CARTVAL": 4}}
    r = client.post("/lists/aud1", json={"members": [member]})
    assert r.json()["errors"][0]["error"] == "Your merge fields were invalid."
    assert fake.member("aud1", "m@example.com") is None

    # creation: name and type are required, type from the vendor's list, tag optional (≤ 10)
    for body, field in [
        ({"tag": "CARTVAL", "type": "number"}, "name"),
        ({"tag": "CARTVAL", "name": "Cart value"}, "type"),
        ({"tag": "CARTVAL", "name": "Cart value", "type": "decimal"}, "type"),
        ({"tag": "CARTVALUE_11", "name": "Cart value", "type": "number"}, "tag"),
        ({"tag": "CART VAL", "name": "Cart value", "type": "number"}, "tag"),
        ({"tag": "CARTVAL", "name": "Cart value", "type": "number", "label": "x"}, "label"),
    ]:
        problem = _problem(client.post("/lists/aud1/merge-fields", json=body), 400, "Invalid Resource")
        assert [e["field"] for e in problem["errors"]] == [field], body
    r = client.post(
        "/lists/aud1/merge-fields", json={"tag": "CARTVAL", "name": "Cart value", "type": "number"}
    )
    assert r.status_code == 200 and r.json()["tag"] == "CARTVAL" and r.json()["type"] == "number"
    again = client.post("/lists/aud1/merge-fields", json={"tag": "CARTVAL", "name": "x", "type": "text"})
    assert "already exists" in _problem(again, 400, "Invalid Resource")["detail"]
    r = client.post("/lists/aud1/merge-fields", json={"name": "Notes", "type": "text"})
    assert r.json()["tag"] == "MMERGE7"  # Mailchimp names an untagged field MMERGE<n>

    # a number field takes numbers (or "" to erase it)
    r = _put_member(client, "m@example.com", merge_fields={"CARTVAL": "lots"})
    problem = _problem(r, 400, "Invalid Resource")
    assert problem["errors"] == [{"field": "CARTVAL", "message": "Please enter a number"}]
    assert _put_member(client, "m@example.com", merge_fields={"CARTVAL": 4.5}).status_code == 200
    assert _put_member(client, "m@example.com", merge_fields={"CARTVAL": ""}).status_code == 200

    # the collection is paged: count (default 10, at most 1,000) and offset
    page = client.get("/lists/aud1/merge-fields", params={"count": 3, "offset": 5}).json()
    assert [f["tag"] for f in page["merge_fields"]] == ["CARTVAL", "MMERGE7"] and page["total_items"] == 7
    assert len(client.get("/lists/aud1/merge-fields").json()["merge_fields"]) == 7
    _problem(client.get("/lists/aud1/merge-fields", params={"count": 1001}), 400, "Invalid Resource")


@pytest.mark.parametrize("applies", [False, True])
def test_mailchimp_batch_status_if_new_on_existing_members_is_configurable(
    sim: FrozenClock, applies: bool
) -> None:
    limits = MailchimpLimits(batch_update_applies_status_if_new=applies)
    fake = FakeMailchimp(api_keys=[MC_KEY], lists=["aud1"], clock=sim, limits=limits)
    for email, status in [("t@example.com", "transactional"), ("u@example.com", "unsubscribed")]:
        fake.set_status("aud1", email, status)
    members = [
        {"email_address": "t@example.com", "status_if_new": "subscribed"},
        {"email_address": "u@example.com", "status_if_new": "subscribed"},
        {"email_address": "n@example.com", "status_if_new": "pending"},
    ]
    with serving(fake) as server, _client(server.url + "/3.0", auth=("u", MC_KEY)) as client:
        body = client.post("/lists/aud1", json={"members": members, "update_existing": True}).json()
        # without any status, nothing can change (and an existing member is accepted)
        plain = {"members": [{"email_address": "t@example.com"}], "update_existing": True}
        bare = client.post("/lists/aud1", json=plain).json()
    status = {e: m.status for e, m in fake.audiences["aud1"].members.items()}
    assert status["n@example.com"] == "pending"  # new members: status_if_new either way
    if applies:  # status_if_new read as status: subscribes, or trips over the compliance rule
        assert status["t@example.com"] == "subscribed"
        assert status["u@example.com"] == "unsubscribed"
        assert [e["email_address"] for e in body["errors"]] == ["u@example.com"]
        assert "compliance state" in body["errors"][0]["error"]
    else:
        assert status["t@example.com"] == "transactional" and status["u@example.com"] == "unsubscribed"
        assert body["errors"] == []
    assert bare["errors"] == [] and bare["total_updated"] == 1


def test_mailchimp_batch_can_require_a_status_for_existing_members(sim: FrozenClock) -> None:
    limits = MailchimpLimits(batch_requires_status=True)
    fake = FakeMailchimp(api_keys=[MC_KEY], lists=["aud1"], clock=sim, limits=limits)
    fake.set_status("aud1", "t@example.com", "transactional")
    with serving(fake) as server, _client(server.url + "/3.0", auth=("u", MC_KEY)) as client:
        bare = {"members": [{"email_address": "t@example.com"}], "update_existing": True}
        body = client.post("/lists/aud1", json=bare).json()
    assert [(e["email_address"], e["field"]) for e in body["errors"]] == [("t@example.com", "status")]


def test_mailchimp_concurrency_limit(sim: FrozenClock) -> None:
    gate = threading.Event()
    entered = threading.Semaphore(0)

    def hold() -> None:
        entered.release()
        gate.wait(10)

    fake = FakeMailchimp(api_keys=[MC_KEY], lists=["aud1"], clock=sim, hold=hold)
    with serving(fake) as server, ThreadPoolExecutor(12) as pool:
        url = server.url + "/3.0/ping"

        def call() -> httpx.Response:
            return httpx.get(url, auth=("u", MC_KEY), timeout=10)

        held = [pool.submit(call) for _ in range(10)]
        for _ in range(10):
            assert entered.acquire(timeout=10)
        over = call()  # the 11th simultaneous connection
        gate.set()
        assert all(f.result().status_code == 200 for f in held)
    problem = _problem(over, 429, "Too Many Requests")
    assert "10 simultaneous connections" in problem["detail"]
    assert "Retry-After" not in over.headers
    assert fake.max_inflight[MC_KEY] == 10


def test_mailchimp_429_with_retry_after_when_configured(sim: FrozenClock) -> None:
    fake = FakeMailchimp(
        api_keys=[MC_KEY], lists=["aud1"], clock=sim, limits=MailchimpLimits(concurrent=0, retry_after=2)
    )
    with serving(fake) as server:
        r = httpx.get(server.url + "/3.0/ping", auth=("u", MC_KEY))
    _problem(r, 429, "Too Many Requests")
    assert r.headers["Retry-After"] == "2"


def test_mailchimp_async_batches(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    ops = [
        {
            "method": "PUT",
            "path": f"/lists/aud1/members/{subscriber_hash('b1@example.com')}",
            "body": json.dumps({"email_address": "b1@example.com", "status_if_new": "pending"}),
            "operation_id": "k1",
        },
        {"method": "PUT", "path": "/lists/aud1/members/x", "body": "{}", "operation_id": "k2"},
    ]
    r = client.post("/batches", json={"operations": ops})
    assert r.json()["status"] == "pending"
    batch = client.get(f"/batches/{r.json()['id']}").json()
    assert batch["status"] == "finished"
    assert batch["errored_operations"] == 1
    archive = httpx.get(batch["response_body_url"]).content
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        assert member is not None
        results = json.loads(member.read())
    assert [(x["operation_id"], x["status_code"]) for x in results] == [("k1", 200), ("k2", 400)]
    assert fake.member("aud1", "b1@example.com") is not None
    _problem(
        client.post("/batches", json={"operations": [{"method": "PUT", "path": "/x", "body": {}}]}),
        400,
        "Invalid Resource",
    )


# -- faults (shared machinery, shown on Mailchimp) ------------------------------------------------


def test_outage_window_in_simulated_time(mc: tuple[FakeMailchimp, httpx.Client], sim: FrozenClock) -> None:
    fake, client = mc
    fake.faults.outage(start=T0, end=T0 + timedelta(minutes=5), status=503)
    _problem(_put_member(client, "o@example.com"), 503, "Service Unavailable")
    sim.advance(timedelta(minutes=4, seconds=59))
    _problem(_put_member(client, "o@example.com"), 503, "Service Unavailable")
    sim.advance(timedelta(seconds=1))
    assert _put_member(client, "o@example.com").status_code == 200
    assert [r.status for r in fake.requests] == [503, 503, 200]
    assert [r.fault for r in fake.requests] == [True, True, False]


def test_fault_count_path_and_email(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    fake.faults.add(500, count=2, path="/members/")
    fake.faults.storm(count=1, retry_after=3, method="GET")
    assert client.get("/ping").headers["Retry-After"] == "3"
    assert client.get("/ping").status_code == 200
    assert _put_member(client, "f@example.com").status_code == 500
    assert _put_member(client, "f@example.com").status_code == 500
    assert _put_member(client, "f@example.com").status_code == 200

    fault = fake.faults.add(
        400,
        code="Member In Compliance State",
        message="p@example.com is in a compliance state",
        email="p@example.com",
    )
    _problem(_put_member(client, "p@example.com"), 400, "Member In Compliance State")
    assert _put_member(client, "q@example.com").status_code == 200
    fake.faults.remove(fault.id)
    assert _put_member(client, "p@example.com").status_code == 200


def test_control_endpoints(mc: tuple[FakeMailchimp, httpx.Client]) -> None:
    fake, client = mc
    root = str(client.base_url).rstrip("/").removesuffix("/3.0")
    r = httpx.post(root + "/_sandbox/faults", json={"status": 502, "count": 1, "end": "2030-01-01T00:00:00Z"})
    assert r.status_code == 201
    assert _put_member(client, "g@example.com").status_code == 502
    _put_member(client, "g@example.com")
    client.post(
        f"/lists/aud1/members/{subscriber_hash('g@example.com')}/tags",
        json={"tags": [{"name": "T", "status": "active"}]},
    )
    state = httpx.get(root + "/_sandbox/state").json()
    assert state["esp"] == "mailchimp"
    assert state["lists"]["aud1"]["members"]["g@example.com"]["tags"] == ["T"]
    log = httpx.get(root + "/_sandbox/requests").json()
    assert [e["status"] for e in log] == [502, 200, 204]
    assert all(MC_KEY not in json.dumps(e) for e in log)
    assert httpx.post(root + "/_sandbox/faults", json={"count": 1}).status_code == 400
    assert httpx.post(root + "/_sandbox/reset").status_code == 204
    assert fake.requests == []
    assert httpx.get(root + "/_sandbox/state").json()["lists"]["aud1"]["members"] == {}


# -- HubSpot ------------------------------------------------------------------------------------


def _hs_error(response: httpx.Response, status: int, category: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["status"] == "error"
    assert body["category"] == category, body
    assert body["correlationId"]
    return dict(body)


def _upsert(client: httpx.Client, *inputs: dict[str, Any]) -> httpx.Response:
    return client.post("/crm/v3/objects/contacts/batch/upsert", json={"inputs": list(inputs)})


def _input(email: str, **props: Any) -> dict[str, Any]:
    return {"id": email, "idProperty": "email", "properties": {"email": email, **props}}


def test_hubspot_batch_upsert(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    r = _upsert(client, _input("a@example.com", firstname="Ann"), _input("b@example.com"))
    assert r.status_code == 200
    body = r.json()
    assert body["status"] == "COMPLETE"
    assert [x["new"] for x in body["results"]] == [True, True]
    assert r.headers["X-HubSpot-RateLimit-Max"] == "100"
    assert r.headers["X-HubSpot-RateLimit-Remaining"] == "99"
    assert r.headers["X-HubSpot-RateLimit-Daily-Remaining"] == "249999"
    again = _upsert(client, _input("a@example.com", lastname="Lee")).json()["results"][0]
    assert again["new"] is False
    assert again["id"] == body["results"][0]["id"]
    assert fake.contact_by_email("a@example.com").properties["lastname"] == "Lee"  # type: ignore[union-attr]


def test_hubspot_rejects_contract_breaks(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    _, client = hs
    base = str(client.base_url)
    with httpx.Client(base_url=base) as anonymous:
        _hs_error(_upsert(anonymous, _input("a@example.com")), 401, "INVALID_AUTHENTICATION")
        wrong = anonymous.post(
            "/crm/v3/objects/contacts/batch/upsert",
            json={"inputs": [_input("a@example.com")]},
            headers={"Authorization": f"Klaviyo-API-Key {HS_TOKEN}"},
        )
        _hs_error(wrong, 401, "INVALID_AUTHENTICATION")
    _hs_error(_upsert(client, *[_input(f"u{i}@example.com") for i in range(101)]), 400, "VALIDATION_ERROR")
    dup = _hs_error(
        _upsert(client, _input("d@example.com"), _input("D@example.com")), 400, "VALIDATION_ERROR"
    )
    assert dup["message"].startswith("Duplicate IDs found in batch input")
    unknown = _hs_error(_upsert(client, _input("a@example.com", favourite="x")), 400, "VALIDATION_ERROR")
    assert "PROPERTY_DOESNT_EXIST" in unknown["message"]
    no_id_property = {"id": "a@example.com", "properties": {"email": "a@example.com"}}
    _hs_error(_upsert(client, no_id_property), 400, "VALIDATION_ERROR")
    _hs_error(
        client.post("/crm/v3/objects/contacts/batch/upsert", json=[_input("a@example.com")]),
        400,
        "VALIDATION_ERROR",
    )
    _hs_error(
        client.post("/crm/v3/objects/contacts/batch/upsert", json={"records": []}), 400, "VALIDATION_ERROR"
    )
    text = client.post(
        "/crm/v3/objects/contacts/batch/upsert", content=b"{}", headers={"Content-Type": "text/plain"}
    )
    _hs_error(text, 415, "UNSUPPORTED_MEDIA_TYPE")
    _hs_error(client.post("/contacts/v1/lists/5/add", json={"vids": [1]}), 404, "OBJECT_NOT_FOUND")
    _hs_error(client.get("/crm/v3/objects/contacts/batch/upsert"), 405, "METHOD_NOT_ALLOWED")


def test_hubspot_207_with_trace_ids(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    ok = {**_input("ok@example.com"), "objectWriteTraceId": "row-1"}
    bad = {**_input("bad@example.com", nope="1"), "objectWriteTraceId": "row-2"}
    r = _upsert(client, ok, bad)
    assert r.status_code == 207
    body = r.json()
    assert body["numErrors"] == 1
    assert body["errors"][0]["context"]["objectWriteTraceId"] == ["row-2"]
    assert body["results"][0]["objectWriteTraceId"] == "row-1"
    assert fake.contact_by_email("ok@example.com") is not None
    assert fake.contact_by_email("bad@example.com") is None


def test_hubspot_207_error_shapes_and_unreported_inputs(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    fake.invalid_emails.add("bad@example.com")
    bad = {**_input("bad@example.com"), "objectWriteTraceId": "row-2"}
    fake.error_context = "ids"  # named by the email sent as id, not by the trace id
    assert _upsert(client, bad).json()["errors"][0]["context"] == {"ids": ["bad@example.com"]}
    fake.error_context = "none"  # no context: only the message names the input
    error = _upsert(client, bad).json()["errors"][0]
    assert "context" not in error and "bad@example.com" in error["message"]
    fake.unreported_emails.add("quiet@example.com")
    r = _upsert(client, {**_input("quiet@example.com"), "objectWriteTraceId": "row-3"})
    assert r.status_code == 200 and r.json()["results"] == [] and "errors" not in r.json()
    assert fake.contact_by_email("quiet@example.com") is not None  # written all the same


def test_hubspot_memberships_report_hidden_records_missing(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    written = _upsert(client, _input("a@example.com"), _input("b@example.com")).json()["results"]
    ids = [x["id"] for x in written]
    cart = fake.add_list("Cart")
    fake.lists_missing_emails.add("B@example.com")
    r = client.put(f"/crm/v3/lists/{cart.id}/memberships/add", json=ids)
    assert r.json() == {"recordIdsMissing": [ids[1]], "recordIdsRemoved": [], "recordsIdsAdded": [ids[0]]}
    assert fake.emails_in_list("Cart") == {"a@example.com"}


def test_hubspot_tags_property_and_options(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    prop = {
        "name": "esp_tags",
        "label": "Tags",
        "type": "enumeration",
        "fieldType": "checkbox",
        "groupName": "contactinformation",
        "options": [{"label": "A", "value": "A"}],
    }
    assert client.post("/crm/v3/properties/contacts", json=prop).status_code == 201
    _hs_error(client.post("/crm/v3/properties/contacts", json=prop), 409, "OBJECT_ALREADY_EXISTS")
    _hs_error(
        client.post("/crm/v3/properties/contacts", json={**prop, "colour": "red"}), 400, "VALIDATION_ERROR"
    )
    r = _hs_error(_upsert(client, _input("t@example.com", esp_tags="A;B")), 400, "VALIDATION_ERROR")
    assert "INVALID_OPTION" in r["message"]
    options = [{"label": "A", "value": "A"}, {"label": "B", "value": "B"}]
    assert client.patch("/crm/v3/properties/contacts/esp_tags", json={"options": options}).status_code == 200
    assert _upsert(client, _input("t@example.com", esp_tags="A;B")).status_code == 200
    assert fake.contact_by_email("t@example.com").properties["esp_tags"] == "A;B"  # type: ignore[union-attr]
    assert client.get("/crm/v3/properties/contacts/esp_tags").json()["options"] == options


def test_hubspot_create_conflict(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    _, client = hs
    first = client.post("/crm/v3/objects/contacts", json={"properties": {"email": "c@example.com"}})
    assert first.status_code == 201
    again = client.post("/crm/v3/objects/contacts", json={"properties": {"email": "c@example.com"}})
    body = _hs_error(again, 409, "CONFLICT")
    assert body["message"] == f"Contact already exists. Existing ID: {first.json()['id']}"


def test_hubspot_lists_and_memberships(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    ids = [
        x["id"] for x in _upsert(client, _input("m1@example.com"), _input("m2@example.com")).json()["results"]
    ]
    created = client.post(
        "/crm/v3/lists/", json={"name": "Cart", "objectTypeId": "0-1", "processingType": "MANUAL"}
    )
    assert created.status_code == 200
    list_id = created.json()["list"]["listId"]
    assert client.get("/crm/v3/lists/object-type-id/0-1/name/Cart").json()["list"]["listId"] == list_id
    _hs_error(client.get("/crm/v3/lists/object-type-id/0-1/name/Other"), 404, "OBJECT_NOT_FOUND")

    r = client.put(f"/crm/v3/lists/{list_id}/memberships/add", json=[*ids, "999999"])
    assert r.status_code == 200
    assert r.json()["recordsIdsAdded"] == ids
    assert r.json()["recordIdsMissing"] == ["999999"]
    assert fake.emails_in_list("Cart") == {"m1@example.com", "m2@example.com"}
    r = client.put(f"/crm/v3/lists/{list_id}/memberships/remove", json=[ids[0]])
    assert r.json()["recordIdsRemoved"] == [ids[0]]
    r = client.put(
        f"/crm/v3/lists/{list_id}/memberships/add-and-remove",
        json={"recordIdsToAdd": [ids[0]], "recordIdsToRemove": [ids[1]]},
    )
    assert fake.emails_in_list("Cart") == {"m1@example.com"}

    _hs_error(
        client.put(f"/crm/v3/lists/{list_id}/memberships/add", json={"ids": ids}), 400, "VALIDATION_ERROR"
    )
    _hs_error(
        client.put(f"/crm/v3/lists/{list_id}/memberships/add", json=[int(ids[0])]), 400, "VALIDATION_ERROR"
    )
    _hs_error(
        client.put(f"/crm/v3/lists/{list_id}/memberships/add", json=["m1@example.com"]),
        400,
        "VALIDATION_ERROR",
    )
    dynamic = client.post(
        "/crm/v3/lists", json={"name": "Dyn", "objectTypeId": "0-1", "processingType": "DYNAMIC"}
    )
    dyn_id = dynamic.json()["list"]["listId"]
    _hs_error(client.put(f"/crm/v3/lists/{dyn_id}/memberships/add", json=ids), 400, "VALIDATION_ERROR")
    _hs_error(
        client.post(
            "/crm/v3/lists", json={"name": "Cart", "objectTypeId": "0-1", "processingType": "MANUAL"}
        ),
        400,
        "VALIDATION_ERROR",
    )
    _hs_error(
        client.post("/crm/v3/lists", json={"name": "X", "processingType": "MANUAL"}), 400, "VALIDATION_ERROR"
    )


def test_hubspot_ten_second_limit(hs: tuple[FakeHubSpot, httpx.Client], sim: FrozenClock) -> None:
    fake, client = hs
    for i in range(100):
        sim.advance(timedelta(milliseconds=50))
        assert client.get("/crm/v3/lists/object-type-id/0-1/name/x").status_code == 404, i
    r = client.get("/crm/v3/lists/object-type-id/0-1/name/x")
    assert r.status_code == 429
    body = r.json()
    assert body["policyName"] == "TEN_SECONDLY_ROLLING"
    assert body["errorType"] == "RATE_LIMIT"
    assert body["message"] == "You have reached your ten_secondly_rolling limit."
    sim.advance(timedelta(seconds=5.1))  # the first requests leave the rolling window
    assert client.get("/crm/v3/lists/object-type-id/0-1/name/x").status_code == 404
    ok = [r for r in fake.requests if r.status != 429]
    for i, rec in enumerate(ok):  # never more than 100 accepted in any 10 s
        assert sum(1 for o in ok[i:] if o.at < rec.at + 10) <= 100


def test_hubspot_daily_limit(sim: FrozenClock) -> None:
    fake = FakeHubSpot(tokens=[HS_TOKEN], clock=sim, limits=HubSpotLimits(daily=3, per_ten_seconds=None))
    with (
        serving(fake) as server,
        _client(server.url, headers={"Authorization": f"Bearer {HS_TOKEN}"}) as client,
    ):
        for _ in range(3):
            assert client.get("/crm/v3/properties/contacts/email").status_code == 200
        r = client.get("/crm/v3/properties/contacts/email")
        assert r.status_code == 429
        assert r.json()["policyName"] == "DAILY"
        assert r.json()["message"] == "You have reached your daily limit."
        sim.advance(timedelta(hours=12))  # past midnight UTC
        assert client.get("/crm/v3/properties/contacts/email").status_code == 200


def test_hubspot_daily_limit_resets_at_midnight_in_the_account_time_zone(sim: FrozenClock) -> None:
    limits = HubSpotLimits(daily=1, per_ten_seconds=None, timezone="America/New_York")
    fake = FakeHubSpot(tokens=[HS_TOKEN], clock=sim, limits=limits)  # T0 is 07:00 in New York
    with (
        serving(fake) as server,
        _client(server.url, headers={"Authorization": f"Bearer {HS_TOKEN}"}) as client,
    ):
        assert client.get("/crm/v3/properties/contacts/email").status_code == 200
        sim.advance(timedelta(hours=12, minutes=30))  # 00:30 UTC: 19:30 the same day in New York
        assert client.get("/crm/v3/properties/contacts/email").json()["policyName"] == "DAILY"
        sim.advance(timedelta(hours=5))  # 00:30 the next day in New York
        assert client.get("/crm/v3/properties/contacts/email").status_code == 200


def test_hubspot_gdpr_delete(hs: tuple[FakeHubSpot, httpx.Client]) -> None:
    fake, client = hs
    _upsert(client, _input("gone@example.com"))
    r = client.post(
        "/crm/v3/objects/contacts/gdpr-delete", json={"objectId": "gone@example.com", "idProperty": "email"}
    )
    assert r.status_code == 204
    assert fake.contact_by_email("gone@example.com") is None


# -- Klaviyo ------------------------------------------------------------------------------------


def _kl_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, response.text
    error = response.json()["errors"][0]
    assert error["status"] == status
    assert error["code"] == code, error
    assert error["id"] and error["title"] and "source" in error
    return dict(error)


def _profile(email: str, **attrs: Any) -> dict[str, Any]:
    return {"data": {"type": "profile", "attributes": {"email": email, **attrs}}}


def test_klaviyo_profile_import(kl: tuple[FakeKlaviyo, httpx.Client]) -> None:
    fake, client = kl
    r = client.post(
        "/api/profile-import", json=_profile("k@example.com", properties={"esp_tags": ["A", "B"]})
    )
    assert r.status_code == 201
    assert r.headers["content-type"].startswith("application/vnd.api+json")
    pid = r.json()["data"]["id"]
    assert r.headers["RateLimit-Limit"].startswith("75")
    r = client.post("/api/profile-import/", json=_profile("k@example.com", first_name="Kay"))
    assert r.status_code == 200
    assert r.json()["data"]["id"] == pid
    patch = _profile("k@example.com")
    patch["data"]["meta"] = {"patch_properties": {"append": {"esp_tags": "C"}, "unappend": {"esp_tags": "A"}}}
    client.post("/api/profile-import", json=patch)
    assert fake.profile_by_email("k@example.com").properties["esp_tags"] == ["B", "C"]  # type: ignore[union-attr]


def test_klaviyo_rejects_contract_breaks(kl: tuple[FakeKlaviyo, httpx.Client]) -> None:
    _, client = kl
    body = _profile("k@example.com")
    headers = dict(client.headers)
    bad_auth = {**headers, "Authorization": f"Bearer {KL_KEY}"}
    _kl_error(client.post("/api/profile-import", json=body, headers=bad_auth), 401, "not_authenticated")
    no_auth = {k: v for k, v in headers.items() if k.lower() != "authorization"}
    with httpx.Client(base_url=str(client.base_url), headers=no_auth) as anonymous:
        _kl_error(anonymous.post("/api/profile-import", json=body), 401, "not_authenticated")
    with httpx.Client(base_url=str(client.base_url)) as raw:
        no_revision = {"Authorization": f"Klaviyo-API-Key {KL_KEY}", "Content-Type": "application/json"}
        _kl_error(raw.post("/api/profile-import", json=body, headers=no_revision), 400, "invalid")
        plain = {**no_revision, "revision": REVISION, "Content-Type": "text/plain"}
        _kl_error(
            raw.post("/api/profile-import", content=json.dumps(body), headers=plain),
            415,
            "unsupported_media_type",
        )
        json_ok = {**no_revision, "revision": REVISION}
        assert raw.post("/api/profile-import", json=body, headers=json_ok).status_code == 201
    wrong_type = {"data": {"type": "profiles", "attributes": {"email": "k@example.com"}}}
    assert (
        _kl_error(client.post("/api/profile-import", json=wrong_type), 400, "invalid")["source"]["pointer"]
        == "/data/type"
    )
    unknown = _kl_error(
        client.post("/api/profile-import", json=_profile("k@example.com", tags=["A"])), 400, "invalid"
    )
    assert unknown["source"]["pointer"] == "/data/attributes/tags"
    flat = {"data": {"type": "profile", "email": "k@example.com"}}
    _kl_error(client.post("/api/profile-import", json=flat), 400, "invalid")
    no_id = {"data": {"type": "profile", "attributes": {"first_name": "K"}}}
    _kl_error(client.post("/api/profile-import", json=no_id), 400, "invalid")
    bad_email = _kl_error(client.post("/api/profile-import", json=_profile("nope")), 400, "invalid")
    assert bad_email["source"]["pointer"] == "/data/attributes/email"
    _kl_error(client.get("/v2/list/x"), 404, "not_found")
    _kl_error(client.put("/api/profile-import", json=body), 405, "method_not_allowed")


def test_klaviyo_duplicate_profile(kl: tuple[FakeKlaviyo, httpx.Client]) -> None:
    _, client = kl
    first = client.post("/api/profiles", json=_profile("dup@example.com"))
    assert first.status_code == 201
    error = _kl_error(
        client.post("/api/profiles", json=_profile("dup@example.com")), 409, "duplicate_profile"
    )
    assert error["meta"]["duplicate_profile_id"] == first.json()["data"]["id"]


def test_klaviyo_lists_relationships(kl: tuple[FakeKlaviyo, httpx.Client], sim: FrozenClock) -> None:
    fake, client = kl
    list_id = client.post(
        "/api/lists", json={"data": {"type": "list", "attributes": {"name": "Cart"}}}
    ).json()["data"]["id"]
    ids = [
        client.post("/api/profile-import", json=_profile(f"l{i}@example.com")).json()["data"]["id"]
        for i in range(3)
    ]
    rel = {"data": [{"type": "profile", "id": pid} for pid in ids]}
    r = client.post(f"/api/lists/{list_id}/relationships/profiles", json=rel)
    assert r.status_code == 204
    assert fake.emails_in_list("Cart") == {"l0@example.com", "l1@example.com", "l2@example.com"}
    r = client.request(
        "DELETE", f"/api/lists/{list_id}/relationships/profiles/", json={"data": rel["data"][:1]}
    )
    assert r.status_code == 204
    assert fake.emails_in_list("Cart") == {"l1@example.com", "l2@example.com"}
    by_email = {"data": [{"type": "profile", "id": "l1@example.com"}]}
    _kl_error(client.post(f"/api/lists/{list_id}/relationships/profiles", json=by_email), 404, "not_found")
    attrs = {"data": [{"type": "profile", "attributes": {"email": "l1@example.com"}}]}
    _kl_error(client.post(f"/api/lists/{list_id}/relationships/profiles", json=attrs), 400, "invalid")
    sim.advance(timedelta(seconds=1))
    fake.reject_unknown_profile_ids = False
    too_many = {"data": [{"type": "profile", "id": f"01X{i}"} for i in range(1001)]}
    _kl_error(client.post(f"/api/lists/{list_id}/relationships/profiles", json=too_many), 400, "invalid")
    listed = client.get(f"/api/lists/{list_id}/relationships/profiles").json()["data"]
    assert {x["id"] for x in listed} == set(ids[1:])


def test_klaviyo_burst_and_steady_limits(kl: tuple[FakeKlaviyo, httpx.Client], sim: FrozenClock) -> None:
    fake, client = kl
    list_id = fake.add_list("L").id
    path = f"/api/lists/{list_id}/relationships/profiles"
    pid = client.post("/api/profile-import", json=_profile("r@example.com")).json()["data"]["id"]
    body = {"data": [{"type": "profile", "id": pid}]}
    first = client.post(path, json=body)
    assert first.headers["RateLimit-Remaining"] == "9"
    assert first.headers["RateLimit-Reset"] == "1"  # the burst window is the one closest to exhaustion
    for _ in range(9):
        ok = client.post(path, json=body)
        assert ok.status_code == 204
    assert ok.headers["RateLimit-Remaining"] == "0"
    assert ok.headers["RateLimit-Reset"] == "1"
    r = client.post(path, json=body)
    error = _kl_error(r, 429, "throttled")
    assert r.headers["Retry-After"] == "1"
    assert "RateLimit-Limit" not in r.headers
    assert "throttled" in error["detail"]
    sim.advance(timedelta(seconds=1))
    assert client.post(path, json=body).status_code == 204
    statuses: list[int] = []
    accepted: list[httpx.Response] = []
    for _ in range(14):  # 11 accepted so far; 139 more reach the steady 150 per minute
        sim.advance(timedelta(seconds=1))
        responses = [client.post(path, json=body) for _ in range(10)]
        statuses += [r.status_code for r in responses]
        accepted = [r for r in responses if r.status_code == 204] or accepted
    assert statuses.count(204) == 139
    assert accepted[-1].headers["RateLimit-Remaining"] == "0"
    assert int(accepted[-1].headers["RateLimit-Reset"]) > 1  # the minute window is exhausted now
    sim.advance(timedelta(seconds=1))
    r = client.post(path, json=body)
    assert r.status_code == 429
    assert int(r.headers["Retry-After"]) > 1  # the steady window is the binding one
    # other endpoints have their own buckets
    assert client.post("/api/profile-import", json=_profile("r@example.com")).status_code == 200


def test_klaviyo_bulk_import_job(kl: tuple[FakeKlaviyo, httpx.Client]) -> None:
    fake, client = kl
    list_id = fake.add_list("Bulk").id
    profiles = [{"type": "profile", "attributes": {"email": f"b{i}@example.com"}} for i in range(250)]
    job = {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": profiles}},
            "relationships": {"lists": {"data": [{"type": "list", "id": list_id}]}},
        }
    }
    r = client.post("/api/profile-bulk-import-jobs", json=job)
    assert r.status_code == 202
    job_id = r.json()["data"]["id"]
    assert (
        client.get(f"/api/profile-bulk-import-jobs/{job_id}").json()["data"]["attributes"]["status"]
        == "complete"
    )
    page = client.get(
        f"/api/profile-bulk-import-jobs/{job_id}/relationships/profiles", params={"page[size]": 100}
    ).json()
    assert len(page["data"]) == 100
    assert page["links"]["next"]
    assert len(fake.emails_in_list("Bulk")) == 250

    profiles[3]["attributes"]["email"] = "broken"
    error = _kl_error(client.post("/api/profile-bulk-import-jobs", json=job), 400, "invalid")
    assert error["source"]["pointer"] == "/data/attributes/profiles/data/3/attributes/email"
    misplaced = {
        "data": {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": profiles[:2]}, "relationships": {}},
        }
    }
    _kl_error(client.post("/api/profile-bulk-import-jobs", json=misplaced), 400, "invalid")


def test_klaviyo_profile_filters_and_events(kl: tuple[FakeKlaviyo, httpx.Client]) -> None:
    fake, client = kl
    for email in ("f1@example.com", "f2@example.com", "f3@example.com"):
        client.post("/api/profile-import", json=_profile(email))
    r = client.get(
        "/api/profiles",
        params={"filter": 'any(email,["f1@example.com","f3@example.com"])', "page[size]": 100},
    )
    assert sorted(p["attributes"]["email"] for p in r.json()["data"]) == ["f1@example.com", "f3@example.com"]
    r = client.get("/api/profiles", params={"filter": 'equals(email,"f2@example.com")'})
    assert len(r.json()["data"]) == 1
    _kl_error(client.get("/api/profiles", params={"page[size]": 101}), 400, "invalid")
    event = {
        "data": {
            "type": "event",
            "attributes": {
                "properties": {"segment": "cart_abandoner"},
                "unique_id": "u1",
                "metric": {"data": {"type": "metric", "attributes": {"name": "Segment Entered"}}},
                "profile": {"data": {"type": "profile", "attributes": {"email": "f1@example.com"}}},
            },
        }
    }
    assert client.post("/api/events", json=event).status_code == 202
    assert client.post("/api/events", json=event).status_code == 202  # same unique_id: deduplicated
    assert len(fake.events) == 1
    event["data"]["attributes"]["metric"] = {"name": "Segment Entered"}
    _kl_error(client.post("/api/events", json=event), 400, "invalid")


def test_klaviyo_fault_retry_after_storm(kl: tuple[FakeKlaviyo, httpx.Client], sim: FrozenClock) -> None:
    fake, client = kl
    fake.faults.storm(end=T0 + timedelta(seconds=30), retry_after=7)
    r = client.post("/api/profile-import", json=_profile("s@example.com"))
    _kl_error(r, 429, "throttled")
    assert r.headers["Retry-After"] == "7"
    sim.advance(timedelta(seconds=30))
    assert client.post("/api/profile-import", json=_profile("s@example.com")).status_code == 201


# -- sandbox process and CLI --------------------------------------------------------------------


def test_sandbox_serve_and_show() -> None:
    from click.testing import CliRunner

    from connector.cli.main import _register, cli
    from connector.dev import devenv
    from connector.dev.sandbox import SANDBOX_MAILCHIMP_KEY, SANDBOX_MAILCHIMP_LIST
    from connector.dev.sandbox.process import start_sandbox

    running = start_sandbox(ports={"mailchimp": 0, "hubspot": 0, "klaviyo": 0}, lists=["cart_abandoner"])
    try:
        ids = running.list_ids["cart_abandoner"]
        dests = running.destinations()
        assert dests["hubspot"]["segments"]["cart_abandoner"]["lists"] == [ids["hubspot"]]
        assert dests["mailchimp"]["list_id"] == SANDBOX_MAILCHIMP_LIST
        # a Mailchimp tag is the static segment of that name: the segment is mapped to it once
        assert dests["mailchimp"]["segments"]["cart_abandoner"] == {"tags": ["cart_abandoner"]}
        mc_url = running.base_url("mailchimp")
        with httpx.Client(base_url=mc_url, auth=("u", SANDBOX_MAILCHIMP_KEY)) as client:
            _put_member_on(client, SANDBOX_MAILCHIMP_LIST, "ann@example.com")
            client.post(
                f"/lists/{SANDBOX_MAILCHIMP_LIST}/members/{subscriber_hash('ann@example.com')}/tags",
                json={"tags": [{"name": "cart_abandoner", "status": "active"}]},
            )
        ports = [f"--{esp}-port={server.port}" for esp, server in running.servers.items()]
        _register()
        result = CliRunner().invoke(cli, ["sandbox", "show", *ports])
        assert result.exit_code == 0, result.output
        assert "ann@example.com  status=transactional  tags: cart_abandoner" in result.output
        assert "lists: cart_abandoner" in result.output
        raw = CliRunner().invoke(cli, ["sandbox", "show", "--json", *ports])
        state = json.loads(raw.output)
        assert state["klaviyo"]["lists"]["cart_abandoner"]["id"] == ids["klaviyo"]
        # without port options: the fakes the running `connector dev` started (this process plays it)
        started = {esp: server.port for esp, server in running.servers.items()}
        assert set(started.values()).isdisjoint({8901, 8902, 8903})
        devenv.write_state("redis://127.0.0.1:1/0", Path.cwd(), None, started)
        try:
            looked_up = CliRunner().invoke(cli, ["sandbox", "show"])
        finally:
            devenv.clear_state()
        assert looked_up.exit_code == 0, looked_up.output
        assert f"mailchimp (127.0.0.1:{started['mailchimp']})" in looked_up.output
        assert "ann@example.com  status=transactional  tags: cart_abandoner" in looked_up.output
    finally:
        running.stop()
    down = CliRunner().invoke(cli, ["sandbox", "show", *ports])
    assert down.exit_code == 1
    assert "start it with `connector sandbox serve`" in down.output


def _put_member_on(client: httpx.Client, list_id: str, email: str) -> None:
    body = {"email_address": email, "status_if_new": "transactional"}
    assert client.put(f"/lists/{list_id}/members/{subscriber_hash(email)}", json=body).status_code == 200


def test_klaviyo_finds_profiles_by_identifier_after_changes() -> None:
    from connector.dev.sandbox.fake_klaviyo import Profile

    fake = FakeKlaviyo()
    moved = Profile(id="p-moved", attributes={})
    fake.profiles[moved.id] = moved
    fake.apply(moved, {"email": "first@example.com", "external_id": "u-1"})
    fake.apply(moved, {"email": "Second@Example.com"})
    direct = Profile(id="p-direct", attributes={"email": "direct@example.com"})
    fake.profiles[direct.id] = direct  # added without apply(): indexed at the next lookup
    assert fake.find_profile({"email": "second@example.com"}) is moved
    assert fake.find_profile({"email": "first@example.com"}) is None
    assert fake.find_profile({"email": "nobody@example.com", "external_id": "u-1"}) is moved
    assert fake.find_profile({"email": "DIRECT@example.com"}) is direct
    del fake.profiles[direct.id]
    assert fake.find_profile({"email": "direct@example.com"}) is None
