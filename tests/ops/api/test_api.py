"""The admin API: bearer tokens, roles, account scope (404 for other accounts), resources, the
audit log, and no secret in any answer."""

from __future__ import annotations

import base64
import hashlib
import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import redis

from connector import clock
from connector.ops import audit, tokens
from connector.profiles.erasure import profile_digest
from connector.sync.deadletters import DeadLetters
from connector.worker import sizes
from tests.ops.api.conftest import SECRETS, Mint, bearer

V1 = "/api/v1"


def get(api: Any, secret: str, path: str, **kw: Any) -> Any:
    return api.get(V1 + path, headers=bearer(secret), **kw)


def post(api: Any, secret: str, path: str, body: Any) -> Any:
    return api.post(V1 + path, headers=bearer(secret), json=body)


# auth


def test_no_token_a_bad_one_a_revoked_one_and_an_expired_one_answer_401(
    api: Any, mint: Mint, redis_client: redis.Redis, api_clock: clock.FrozenClock
) -> None:
    assert api.get(V1 + "/accounts").status_code == 401
    assert api.get(V1 + "/accounts").headers["WWW-Authenticate"].startswith("Bearer")
    assert get(api, "sc_0123456789ab_" + "x" * 43, "/accounts").status_code == 401
    live = mint("viewer", "acme")
    assert get(api, live, "/accounts").status_code == 200
    assert get(api, live[:-1] + ("A" if live[-1] != "A" else "B"), "/accounts").status_code == 401
    tokens.revoke(redis_client, live.split("_")[1])
    assert get(api, live, "/accounts").status_code == 401
    short = mint("viewer", "acme", expires=timedelta(hours=1))
    assert get(api, short, "/accounts").status_code == 200
    api_clock.advance(timedelta(hours=1, seconds=1))
    answer = get(api, short, "/accounts")
    assert answer.status_code == 401 and answer.get_json()["error"] == "unauthorized"


def test_tokens_are_stored_hashed(redis_client: redis.Redis, mint: Mint) -> None:
    secret = mint("admin", "acme")
    stored = b"".join(redis_client.hvals(tokens.TOKENS_KEY))
    assert secret.encode() not in stored
    assert secret.split("_", 2)[2].encode() not in stored


def test_another_accounts_data_answers_404_like_a_missing_account(
    api: Any, mint: Mint, people: dict[str, str]
) -> None:
    viewer = mint("viewer", "acme")
    listed = get(api, viewer, "/accounts").get_json()
    assert [a["id"] for a in listed["items"]] == ["acme"]
    gus = people["gus@globex.test"]
    for path in (
        "/accounts/globex",
        "/accounts/globex/segments",
        f"/accounts/globex/people/{gus}",
        "/accounts/nope",
    ):
        answer = get(api, viewer, path)
        assert answer.status_code == 404, path
        assert answer.get_json()["error"] == "not_found"
    everyone = mint("admin", "*")
    assert [a["id"] for a in get(api, everyone, "/accounts").get_json()["items"]] == ["acme", "globex"]
    assert get(api, everyone, f"/accounts/globex/people/{gus}").status_code == 200


def test_roles_viewer_reads_editor_replays_admin_erases(api: Any, mint: Mint, people: dict[str, str]) -> None:
    ann = people["ann@example.com"]
    viewer, editor = mint("viewer", "acme"), mint("editor", "acme")
    assert post(api, viewer, "/accounts/acme/deadletters/discard", {"kind": "sync"}).status_code == 403
    assert post(api, editor, "/accounts/acme/deadletters/discard", {"kind": "sync"}).status_code == 200
    for secret in (viewer, editor):
        answer = post(api, secret, f"/accounts/acme/people/{ann}/erase", {"confirm": ann})
        assert answer.status_code == 403
        assert "admin" in answer.get_json()["message"]
    assert get(api, editor, "/tokens").status_code == 403


def test_only_admin_tokens_span_accounts(redis_client: redis.Redis) -> None:
    for accounts, role in (
        (("acme", "globex"), "editor"),
        (("*",), "viewer"),
        (("*", "acme"), "admin"),
        ((), "admin"),
    ):
        try:
            tokens.create(redis_client, accounts, role, timedelta(days=1), clock.now())
        except tokens.TokenError:
            continue
        raise AssertionError(f"{accounts} {role} was accepted")


# accounts and health


def test_account_shows_configuration_and_health_without_secrets(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    redis_client.hset(
        "metrics:ingest", mapping={"accepted:acme": 7, "duplicate:acme": 2, "accepted:globex": 99}
    )
    redis_client.hset("metrics:rejected", mapping={"segment:401": 3})
    redis_client.hset("sync:pending", "x", "y")  # unrelated key
    redis_client.hset("sync:acme:mailchimp:pending", mapping={"p1": "{}", "p2": "{}"})
    redis_client.hset(
        "sync:paused",
        "acme\x1fmailchimp",
        json.dumps({"reason": "401 from the ESP", "status": 401, "at": "2024-03-01T00:00:00Z"}),
    )
    DeadLetters(redis_client).put("sync:mailchimp", "refused", {"change": {}}, clock.now(), account="acme")
    account = get(api, mint("viewer", "acme"), "/accounts/acme").get_json()
    assert account["counters"]["ingest"] == {"accepted": 7, "duplicate": 2}
    assert [s["name"] for s in account["senders"]][:2] == ["hubspot", "klaviyo"]
    assert all(s["refusals"] is None for s in account["senders"])  # counted across accounts
    (dest,) = account["destinations"]
    assert dest["segments"]["vip"] == {"tags": ["VIP"], "lists": []}
    assert dest["health"] == {
        "paused": True,
        "pause": {"reason": "401 from the ESP", "status": 401, "at": "2024-03-01T00:00:00Z"},
        "pending": 2,
        "dead_letters": 1,
    }
    assert account["segments"] == ["cart_abandoner", "checkout_abandoner", "vip"]
    assert "lifetime_revenue" in account["traits"]
    everyone = get(api, mint("admin", "*"), "/accounts/acme").get_json()
    segment = next(s for s in everyone["senders"] if s["name"] == "segment")
    assert segment["refusals"] == {"401": 3}


# segments


def test_segments_list_sizes_from_the_counters(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    pipe = redis_client.pipeline()
    for n in range(3):
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=f"p{n}")
    pipe.execute()
    listed = get(api, mint("viewer", "acme"), "/accounts/acme/segments").get_json()
    by_name = {s["name"]: s for s in listed["items"]}
    assert by_name["vip"]["size"] == 3 and by_name["cart_abandoner"]["size"] == 0
    assert by_name["vip"]["template"] == "vip"
    assert by_name["vip"]["definition"]["params"] == {"threshold": 100}
    in_force = by_name["vip"]["definition"]["in_force"]  # the template's $threshold replaced
    assert in_force["when"]["trait"]["gte"] == 100 and "$threshold" not in json.dumps(in_force)
    one = get(api, mint("viewer", "acme"), "/accounts/acme/segments/vip?hours=3&days=2").get_json()
    assert one["size"] == 3
    assert [(h["size"], h["entered"]) for h in one["hourly"]] == [(0, 0), (0, 0), (3, 3)]
    assert len(one["daily"]) == 2
    assert get(api, mint("viewer", "acme"), "/accounts/acme/segments/nope").status_code == 404


def test_members_paged_searchable_and_checked(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis
) -> None:
    viewer = mint("viewer", "acme")
    ann, bob, cid = people["ann@example.com"], people["bob@example.com"], people["cid@example.com"]
    pipe = redis_client.pipeline()
    for pid in (ann, bob):  # until the worker reports its diffs here (wired in evaluation)
        sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=pid)
    pipe.execute()
    seen, cursor = [], None
    while True:
        query = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        page = get(api, viewer, "/accounts/acme/segments/vip/members", query_string=query).get_json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(m["email"] for m in seen) == ["ann@example.com", "bob@example.com"]
    found = get(api, viewer, "/accounts/acme/segments/vip/members", query_string={"q": "BO"}).get_json()
    assert [m["profile_id"] for m in found["items"]] == [bob]
    assert get(api, viewer, f"/accounts/acme/segments/vip/members/{ann}").get_json()["member"] is True
    assert get(api, viewer, f"/accounts/acme/segments/vip/members/{cid}").get_json()["member"] is False
    bad = get(api, viewer, "/accounts/acme/segments/vip/members?cursor=abc")
    assert bad.status_code == 422 and "cursor" in bad.get_json()["message"]
    beyond = get(api, viewer, f"/accounts/acme/segments/vip/members?cursor={2**64}")  # over SSCAN's range
    assert beyond.status_code == 422 and "cursor" in beyond.get_json()["message"]


# people


def test_people_lookup_profile_timeline_explain_export(api: Any, mint: Mint, people: dict[str, str]) -> None:
    viewer = mint("viewer", "acme")
    bob = people["bob@example.com"]
    assert get(api, viewer, "/accounts/acme/people?email=BOB@example.com").get_json() == {"profile_id": bob}
    assert get(api, viewer, "/accounts/acme/people?user_id=u-bob").get_json() == {"profile_id": bob}
    assert get(api, viewer, "/accounts/acme/people?email=nobody@example.com").status_code == 404
    both = get(api, viewer, "/accounts/acme/people?email=a@b.c&user_id=x")
    assert both.status_code == 422 and "exactly one" in both.get_json()["message"]
    person = get(api, viewer, f"/accounts/acme/people/{bob}").get_json()
    assert person["identities"]["email"] == ["bob@example.com"]
    assert person["segments"] == ["vip"] and person["computed_traits"]["lifetime_revenue"] == 400.0
    timeline = get(api, viewer, f"/accounts/acme/people/{bob}/timeline").get_json()
    assert [e["name"] for e in timeline["events"]] == ["order_completed"]
    assert timeline["transitions"][0]["entered"] == ["vip"]
    (esp,) = timeline["destinations"]
    assert esp["destination"] == "mailchimp" and esp["pending"] is True
    explained = get(api, viewer, f"/accounts/acme/people/{bob}/explain").get_json()
    assert explained["segments"]["vip"]["member"] is True
    assert "vip: IN" in explained["text"]
    export = get(api, viewer, f"/accounts/acme/people/{bob}/export").get_json()
    assert export["document"]["profile_id"] == bob
    # an access request's answer holds what the worker and the sync keep too, as the CLI's does
    assert export["document"]["memberships"]["segments"] == ["vip"]
    assert export["document"]["computed_traits"]["lifetime_revenue"] == 400.0
    assert export["document"]["segment_history"] and "destinations" in export["document"]
    assert get(api, viewer, "/accounts/acme/people/0000000000000000").status_code == 404


def test_an_access_export_is_audited_by_digest(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis
) -> None:
    viewer = mint("viewer", "acme")
    bob = people["bob@example.com"]
    assert get(api, viewer, f"/accounts/acme/people/{bob}/export").status_code == 200
    assert get(api, viewer, "/accounts/acme/people/0000000000000000/export").status_code == 404
    (entry,) = get(api, viewer, "/audit").get_json()["items"]
    digest = profile_digest("acme", bob)
    assert entry["action"] == "person.export" and entry["accounts"] == ["acme"]
    assert entry["token"] == viewer.split("_")[1]
    assert entry["target"] == f"profile:{digest}" and entry["after"]["profile_digest"] == digest
    assert bob not in json.dumps(entry) and "bob@example.com" not in json.dumps(entry)
    assert get(api, mint("viewer", "globex"), "/audit").get_json()["items"] == []


def test_erasure_needs_admin_and_confirmation_and_is_audited(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis
) -> None:
    admin = mint("admin", "acme")
    bob = people["bob@example.com"]
    pipe = redis_client.pipeline()
    sizes.record_transitions(pipe, "acme", ["vip"], [], clock.now(), profile_id=bob)
    pipe.execute()
    vip = sizes.sizes(redis_client, "acme")["vip"]  # the worker counts the other VIPs too
    wrong = post(api, admin, f"/accounts/acme/people/{bob}/erase", {"confirm": "someone-else"})
    assert wrong.status_code == 422 and "confirm" in wrong.get_json()["message"]
    assert post(api, admin, f"/accounts/acme/people/{bob}/erase", {}).status_code == 422
    done = post(api, admin, f"/accounts/acme/people/{bob}/erase", {"confirm": bob})
    assert done.status_code == 200 and done.get_json()["erased"] is True
    assert get(api, admin, f"/accounts/acme/people/{bob}").status_code == 404
    assert not sizes.is_member(redis_client, "acme", "vip", bob)
    assert sizes.sizes(redis_client, "acme").get("vip", 0) == vip - 1
    (entry,) = get(api, admin, "/audit").get_json()["items"]
    assert entry["action"] == "person.erase" and entry["accounts"] == ["acme"]
    assert bob not in json.dumps(entry)  # a digest, not the profile id
    digest = profile_digest("acme", bob)
    assert entry["token"] == admin.split("_")[1] and entry["target"] == f"profile:{digest}"
    assert entry["before"] == {"profile_digest": digest, "segments": ["vip"]}
    assert post(api, admin, f"/accounts/acme/people/{bob}/erase", {"confirm": bob}).status_code == 404


# dead letters


def _dead(redis_client: redis.Redis, account: str, pid: str, n: int) -> str:
    change = {
        "account": account,
        "destination": "mailchimp",
        "profile_id": pid,
        "version": n,
        "email": f"{pid}@x.test",
    }
    return DeadLetters(redis_client).put(
        "sync:mailchimp", f"400 bad {n}", {"change": change}, clock.now(), account=account
    )


def test_dead_letters_list_show_replay_discard(api: Any, mint: Mint, redis_client: redis.Redis) -> None:
    ids = [_dead(redis_client, "acme", f"p{n}", n + 1) for n in range(3)]
    other = _dead(redis_client, "globex", "g1", 1)
    viewer, editor = mint("viewer", "acme"), mint("editor", "acme")
    listed = get(api, viewer, "/accounts/acme/deadletters?limit=2").get_json()
    assert len(listed["items"]) == 2 and listed["next_cursor"]
    rest = get(api, viewer, f"/accounts/acme/deadletters?limit=2&cursor={listed['next_cursor']}").get_json()
    assert sorted(i["id"] for i in listed["items"] + rest["items"]) == sorted(ids)
    assert rest["next_cursor"] is None
    shown = get(api, viewer, f"/accounts/acme/deadletters/sync:mailchimp/{ids[0]}").get_json()
    assert shown["payload"]["change"]["profile_id"] == "p0"
    assert get(api, viewer, f"/accounts/acme/deadletters/sync:mailchimp/{other}").status_code == 404
    assert post(api, editor, "/accounts/acme/deadletters/replay", {}).status_code == 422
    replayed = post(api, editor, "/accounts/acme/deadletters/replay", {"filter": "bad 1"}).get_json()
    assert replayed == {"matched": 1, "outcomes": {"queued": 1}}
    discarded = post(api, editor, "/accounts/acme/deadletters/discard", {"ids": [ids[1]]}).get_json()
    assert discarded == {"matched": 1, "outcomes": {"discarded": 1}}
    left = get(api, viewer, "/accounts/acme/deadletters").get_json()["items"]
    assert [i["id"] for i in left] == [ids[2]]
    assert DeadLetters(redis_client).get(other) is not None  # globex untouched
    by_email = post(
        api, editor, "/accounts/acme/deadletters/discard", {"kind": "sync", "filter": "P2@x.test"}
    )
    assert by_email.get_json() == {"matched": 1, "outcomes": {"discarded": 1}}
    entries = get(api, viewer, "/audit").get_json()["items"]
    assert [e["action"] for e in entries] == ["deadletters.discard"] * 2 + ["deadletters.replay"]
    # the filter text (an email, often) is kept as a digest and its length
    assert [e["before"]["selection"] for e in entries] == [
        {"kind": "sync", "filter_sha256": hashlib.sha256(b"P2@x.test").hexdigest()[:16], "filter_length": 9},
        {"ids": [ids[1]]},
        {"filter_sha256": hashlib.sha256(b"bad 1").hexdigest()[:16], "filter_length": 5},
    ]
    assert "x.test" not in json.dumps(entries).lower() and "bad 1" not in json.dumps(entries)


# tokens and audit


def test_tokens_through_the_api_are_audited_and_scoped(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    admin = mint("admin", "acme", expires=timedelta(days=7))
    made = api.post(
        V1 + "/tokens", headers=bearer(admin), json={"accounts": ["acme"], "role": "viewer", "expires": "2d"}
    )
    assert made.status_code == 201
    created = made.get_json()
    assert get(api, created["secret"], "/accounts/acme").status_code == 200
    assert (
        api.post(
            V1 + "/tokens", headers=bearer(admin), json={"accounts": ["globex"], "role": "viewer"}
        ).status_code
        == 404
    )
    assert (
        api.post(
            V1 + "/tokens",
            headers=bearer(admin),
            json={"accounts": ["acme"], "role": "viewer", "expires": "soon"},
        ).status_code
        == 422
    )
    listed = get(api, admin, "/tokens").get_json()["items"]
    assert created["token"]["id"] in [t["id"] for t in listed]
    assert "secret" not in json.dumps(listed) and "sha256" not in json.dumps(listed)
    assert api.delete(V1 + f"/tokens/{created['token']['id']}", headers=bearer(admin)).status_code == 200
    assert get(api, created["secret"], "/accounts/acme").status_code == 401
    entries = get(api, admin, "/audit").get_json()["items"]
    assert [e["action"] for e in entries] == ["token.revoke", "token.create"]
    assert created["secret"] not in json.dumps(entries)
    # a token of another account does not see acme's entries
    assert get(api, mint("admin", "globex"), "/audit").get_json()["items"] == []


def test_audit_log_is_capped_and_paged(redis_client: redis.Redis) -> None:
    for n in range(5):
        audit.record(redis_client, "t1", "x", str(n), ["acme"], None, n, clock.now())
    first, cursor = audit.read(redis_client, ("acme",), None, 2)
    second, _ = audit.read(redis_client, ("acme",), cursor, 2)
    assert [e.after for e in first + second] == [4, 3, 2, 1]


# no secret anywhere


def test_no_answer_holds_a_secret_or_its_variable_name(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis
) -> None:
    _dead(redis_client, "acme", people["ann@example.com"], 1)
    redis_client.hset("metrics:rejected", "segment:401", 1)
    admin = mint("admin", "*")
    paths = [
        *("/accounts", "/accounts/acme", "/accounts/globex", "/accounts/acme/segments"),
        *("/accounts/acme/segments/vip", "/accounts/acme/segments/vip/members", "/accounts/acme/deadletters"),
        *("/tokens", "/audit", "/openapi.json"),
    ]
    for pid in people.values():
        for suffix in ("", "/timeline", "/explain", "/export"):
            paths.append(f"/accounts/acme/people/{pid}{suffix}")
    bodies = [get(api, admin, path).get_data(as_text=True) for path in paths]
    assert all(bodies)
    for path, body in zip(paths, bodies, strict=True):
        for secret in SECRETS:
            assert secret not in body, f"{path} shows {secret}"


def test_a_token_note_that_is_not_unicode_is_refused_and_nothing_is_stored(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    admin = mint("admin", "acme")
    body = '{"accounts": ["acme"], "role": "viewer", "note": "ci \\ud800"}'
    answer = api.post(V1 + "/tokens", headers=bearer(admin), data=body, content_type="application/json")
    assert answer.status_code == 422
    assert "body.note has a lone surrogate escape (e.g. \\ud800): not text" in answer.get_json()["message"]
    assert [t.note for t in tokens.tokens(redis_client)] == [""]  # the admin's own only


def test_a_crafted_members_cursor_answers_422(api: Any, mint: Mint, people: dict[str, str]) -> None:
    viewer = mint("viewer", "acme")
    for position in ('[0,"\\ud800"]', '[-1,"\\u0661"]', '[-1,"\\ud800"]', '[true,""]'):
        cursor = base64.urlsafe_b64encode(position.encode()).decode().rstrip("=")
        answer = get(api, viewer, f"/accounts/acme/segments/vip/members?cursor={cursor}")
        assert answer.status_code == 422, (position, answer.get_data(as_text=True))
        assert answer.get_json()["message"].startswith("invalid cursor ")
        assert "pass the next_cursor of the previous page" in answer.get_json()["message"]


def test_a_body_nested_too_deep_answers_422(api: Any, mint: Mint) -> None:
    body = '{"text": ' + "[" * 100_000 + "]" * 100_000 + "}"
    answer = api.post(
        V1 + "/accounts/acme/rules/validate",
        headers=bearer(mint("viewer", "acme")),
        data=body,
        content_type="application/json",
    )
    assert answer.status_code == 422
    assert (
        answer.get_json()["message"] == "the JSON body cannot be taken: body is nested deeper than 64 levels"
    )


def test_a_body_with_a_number_too_long_to_read_answers_422(api: Any, mint: Mint) -> None:
    answer = api.post(
        V1 + "/accounts/acme/rules/validate",
        headers=bearer(mint("viewer", "acme")),
        data='{"text": "segments: []", "n": ' + "9" * 5000 + "}",
        content_type="application/json",
    )
    assert answer.status_code == 422
    assert (
        answer.get_json()["message"] == "the JSON body cannot be taken: body has an integer too long to parse"
    )


def test_deeply_nested_rules_text_is_refused_with_a_reason(api: Any, mint: Mint) -> None:
    checked = api.post(
        V1 + "/accounts/acme/rules/validate",
        headers=bearer(mint("viewer", "acme")),
        json={"text": "segments: " + "[" * 2000},
    )
    assert checked.status_code == 200
    body = checked.get_json()
    assert body["valid"] is False
    assert (
        body["reason"] == "not valid YAML or JSON: line 1 column 110: YAML nested more than 100 levels deep"
    )


def test_every_operation_with_a_json_body_refuses_a_lone_surrogate_before_anything_else(
    api: Any, mint: Mint
) -> None:
    """Every operation the OpenAPI document gives a JSON body: a body whose string is not Unicode is
    a 422 saying so, whatever route, method or path ids (the check runs before the view)."""
    admin = bearer(mint("admin", "*"))
    spec = api.get(V1 + "/openapi.json").get_json()
    checked, wrong = [], []
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            if not isinstance(operation, dict):  # the path's own parameters
                continue
            if "application/json" not in operation.get("requestBody", {}).get("content", {}):
                continue
            url = re.sub(r"\{account_id\}", "acme", re.sub(r"\{(?!account_id)[^}]+\}", "x", path))
            answer = api.open(
                url, method=method.upper(), data='{"note": "\\ud800"}', content_type="application/json",
                headers=admin,
            )  # fmt: skip
            checked.append((method, path))
            message = (answer.get_json(silent=True) or {}).get("message", "")
            if answer.status_code != 422 or not message.startswith(
                "the JSON body cannot be taken: body.note has a lone surrogate"
            ):
                wrong.append((method, path, answer.status_code, message))
    assert len(checked) >= 5 and wrong == []


def test_a_dead_letter_kind_no_one_could_mean_is_a_422_naming_the_closest(api: Any, mint: Mint) -> None:
    viewer = mint("viewer", "acme")
    answer = get(api, viewer, "/accounts/acme/deadletters?kind=sync:mailchimpp")
    assert answer.status_code == 422
    assert answer.get_json()["message"].startswith(
        "unknown kind `sync:mailchimpp` (did you mean `sync:mailchimp`?); known: events, sync, sync:hubspot"
    )
    assert get(api, viewer, "/accounts/acme/deadletters?kind=sync:klaviyo").status_code == 200  # none yet


def test_a_derived_template_parameter_is_shown_added_up(tmp_path: Path) -> None:
    """The definition "as it is evaluated" spells a parameter that is the sum of others as the sum
    (lifecycle's win-back quiet window: $win_back_within + $at_risk_after), not as its formula."""
    from connector.config import load_accounts
    from connector.ops.api.segments import _definition
    from tests.conftest import write_accounts

    directory = write_accounts(
        tmp_path / "acc",
        {
            "account": "shop",
            "rules": {"include": [{"template": "lifecycle", "params": {"at_risk_after": "60d"}}]},
        },
    )
    account = load_accounts(directory).get("shop")
    assert account is not None
    shown = _definition(account, account.ruleset.by_name["lifecycle_win_back"])
    text = json.dumps(shown["in_force"])
    assert "$" not in text
    assert '"90d"' in text  # 30d + 60d
