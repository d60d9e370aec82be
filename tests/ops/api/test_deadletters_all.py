"""Replaying and discarding every matching dead letter (``all``), not only a page: the count, the
editor role, one audit entry per answer, only matching items of the account touched, batches
going on by a cursor, none stored after the count acted on, and bad input as 422 JSON."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from typing import Any

import pytest
import redis

from connector import clock
from connector.ops.api import deadletters as api_deadletters
from connector.sync.deadletters import DeadLetters
from tests.ops.api.conftest import Mint, bearer

V1 = "/api/v1"


def get(api: Any, secret: str, path: str) -> Any:
    return api.get(V1 + path, headers=bearer(secret))


def post(api: Any, secret: str, path: str, body: Any) -> Any:
    return api.post(V1 + path, headers=bearer(secret), json=body)


def _dead(conn: redis.Redis, account: str, n: int, reason: str, destination: str = "mailchimp") -> str:
    change = {
        "account": account,
        "destination": destination,
        "profile_id": f"p{n}",
        "version": n,
        "email": f"p{n}@x.test",
    }
    return DeadLetters(conn).put(
        f"sync:{destination}", f"{reason} #{n}", {"change": change}, clock.now(), account=account
    )


def _ids(conn: redis.Redis, account: str) -> set[str]:
    return {i.id for i in DeadLetters(conn).list(limit=10**6) if i.account == account}


def _audit(api: Any, secret: str) -> list[dict[str, Any]]:
    return list(get(api, secret, "/audit").get_json()["items"])


def test_replay_all_matching_acts_on_every_page_of_matching_items_only(
    api: Any, mint: Mint, redis_client: redis.Redis, api_clock: clock.FrozenClock
) -> None:
    throttled = [_dead(redis_client, "acme", n, "throttled: too many requests") for n in range(70)]
    api_clock.advance(timedelta(seconds=1))
    refused = [_dead(redis_client, "acme", 100 + n, "400 bad request") for n in range(50)]
    globex = _dead(redis_client, "globex", 1, "throttled: too many requests")
    viewer, editor = mint("viewer", "acme"), mint("editor", "acme")

    # the count is of every matching item, not of a page (the list shows 50 at most)
    assert (
        len(get(api, viewer, "/accounts/acme/deadletters?limit=500&filter=throttled").get_json()["items"])
        == 70
    )
    count = get(api, viewer, "/accounts/acme/deadletters/count?filter=throttled").get_json()
    assert count["matching"] == 70 and count["complete"] is True
    assert get(api, viewer, "/accounts/acme/deadletters/count").get_json()["matching"] == 120
    assert get(api, viewer, "/accounts/acme/deadletters/count?kind=sync").get_json()["matching"] == 120

    # a viewer may count, not act
    refused_answer = post(
        api, viewer, "/accounts/acme/deadletters/replay", {"all": True, "filter": "throttled"}
    )
    assert refused_answer.status_code == 403
    assert "editor" in refused_answer.get_json()["message"]
    assert post(api, viewer, "/accounts/acme/deadletters/discard", {"all": True}).status_code == 403
    assert _audit(api, viewer) == []

    answer = post(
        api,
        editor,
        "/accounts/acme/deadletters/replay",
        {"all": True, "filter": "throttled", "until": count["until"]},
    )
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json() == {"matched": 70, "outcomes": {"queued": 70}, "next_cursor": None}
    assert _ids(redis_client, "acme") == set(refused)  # only the matching ones left
    assert DeadLetters(redis_client).get(globex) is not None  # another account's untouched
    assert not set(throttled) & _ids(redis_client, "acme")

    # one audit entry, saying how many and with which filter (the text as a digest)
    (entry,) = _audit(api, viewer)
    assert entry["action"] == "deadletters.replay" and entry["target"] == "deadletters:acme"
    assert entry["before"]["selection"] == {
        "all": True,
        "filter_sha256": hashlib.sha256(b"throttled").hexdigest()[:16],
        "filter_length": 9,
        "until": count["until"],
    }
    assert entry["after"] == {"outcomes": {"queued": 70}, "matched": 70, "continued": False, "finished": True}

    # discard all the rest, with no filter: every dead letter of the account
    gone = post(api, editor, "/accounts/acme/deadletters/discard", {"all": True}).get_json()
    assert gone == {"matched": 50, "outcomes": {"discarded": 50}, "next_cursor": None}
    assert _ids(redis_client, "acme") == set() and DeadLetters(redis_client).get(globex) is not None
    assert [e["action"] for e in _audit(api, viewer)] == ["deadletters.discard", "deadletters.replay"]
    assert "x.test" not in json.dumps(_audit(api, viewer))


def test_all_goes_on_in_batches_by_its_cursor_and_leaves_what_was_stored_after_the_count(
    api: Any,
    mint: Mint,
    redis_client: redis.Redis,
    api_clock: clock.FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api_deadletters, "MAX_SELECTED", 7)
    # the same instant for all (a batch dead-lettered at once): the cursor orders them by id too
    stored = [_dead(redis_client, "acme", n, "503 unavailable") for n in range(16)]
    # a destination no longer in the account: its dead letters stay when replayed, and are passed
    kept = [_dead(redis_client, "acme", 50 + n, "503 unavailable", destination="gone") for n in range(9)]
    editor, viewer = mint("editor", "acme"), mint("viewer", "acme")
    count = get(api, viewer, "/accounts/acme/deadletters/count?filter=503").get_json()
    assert count["matching"] == 25
    api_clock.advance(timedelta(seconds=5))
    later = _dead(redis_client, "acme", 99, "503 unavailable")  # after the count: left alone

    body: dict[str, Any] = {"all": True, "filter": "503", "until": count["until"]}
    answers = []
    while True:
        answer = post(api, editor, "/accounts/acme/deadletters/replay", body).get_json()
        answers.append(answer)
        if answer["next_cursor"] is None:
            break
        body["cursor"] = answer["next_cursor"]
        assert len(answers) < 10, "the cursor does not move"
    assert [a["matched"] for a in answers] == [7, 7, 7, 4]
    total: dict[str, int] = {}
    for answer in answers:
        for what, n in answer["outcomes"].items():
            total[what] = total.get(what, 0) + n
    assert total == {"queued": 16, "no such destination": 9}
    assert _ids(redis_client, "acme") == {*kept, later}
    assert not set(stored) & _ids(redis_client, "acme")
    entries = _audit(api, viewer)
    assert len(entries) == 4  # one per answer
    assert [e["after"]["continued"] for e in reversed(entries)] == [False, True, True, True]
    assert [e["after"]["finished"] for e in reversed(entries)] == [False, False, False, True]


def test_all_without_until_leaves_what_is_stored_while_it_goes(
    api: Any,
    mint: Mint,
    redis_client: redis.Redis,
    api_clock: clock.FrozenClock,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(api_deadletters, "MAX_SELECTED", 2)
    first = [_dead(redis_client, "acme", n, "500 oops") for n in range(3)]
    editor = mint("editor", "acme")
    answer = post(api, editor, "/accounts/acme/deadletters/discard", {"all": True}).get_json()
    assert answer["matched"] == 2 and answer["next_cursor"]
    api_clock.advance(timedelta(seconds=1))
    later = _dead(redis_client, "acme", 9, "500 oops")
    rest = post(
        api, editor, "/accounts/acme/deadletters/discard", {"all": True, "cursor": answer["next_cursor"]}
    ).get_json()
    assert rest == {"matched": 1, "outcomes": {"discarded": 1}, "next_cursor": None}
    assert _ids(redis_client, "acme") == {later} and later not in first


BAD = [
    ({"all": True, "ids": ["abc"]}, "send ids without it"),
    ({"cursor": "abc", "kind": "sync"}, "go with all"),
    ({"until": 5.0, "kind": "sync"}, "go with all"),
    ({"all": True, "cursor": "not-a-cursor"}, "invalid cursor"),
    ({"all": True, "cursor": "WyJzeW5jIiwgMSwgIm5vdC1oZXgiLCAyXQ"}, "invalid cursor"),  # id not hex
    ({"all": True, "kind": "sync:mailchimpp"}, "sync:mailchimp"),
    ({"all": "yes"}, "all"),
    ({"all": 1}, "all"),  # 1 == True in Python: never read as true, which would act on everything
    ({"all": 1.0}, "all"),
    ({"all": 0, "kind": "sync"}, "all"),
    ({"all": True, "filter": "x" * 201}, "filter"),
    ({"all": True, "until": "soon"}, "until"),
    ({}, "select what to act on"),
]


def test_bad_all_input_is_a_422_that_says_what_is_wrong(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    kept = _dead(redis_client, "acme", 1, "429")
    editor = mint("editor", "acme")
    for body, says in BAD:
        for action in ("replay", "discard"):
            answer = post(api, editor, f"/accounts/acme/deadletters/{action}", body)
            assert answer.status_code == 422, (body, answer.get_json())
            assert answer.is_json and says in answer.get_json()["message"], (body, answer.get_json())
    assert DeadLetters(redis_client).get(kept) is not None
    assert _audit(api, editor) == []  # nothing done, nothing recorded


def test_the_count_refuses_a_kind_no_one_could_mean_and_counts_nothing_stored(api: Any, mint: Mint) -> None:
    viewer = mint("viewer", "acme")
    answer = get(api, viewer, "/accounts/acme/deadletters/count?kind=sync:mailchimpp")
    assert answer.status_code == 422 and "sync:mailchimp" in answer.get_json()["message"]
    assert get(api, viewer, "/accounts/acme/deadletters/count").get_json() == {
        "matching": 0,
        "complete": True,
        "until": None,
    }
    assert get(api, mint("viewer", "globex"), "/accounts/acme/deadletters/count").status_code == 404


def test_a_count_with_a_text_filter_stops_at_its_limit_and_says_so(
    api: Any, mint: Mint, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_deadletters, "COUNT_LIMIT", 5)
    for n in range(8):
        _dead(redis_client, "acme", n, "throttled")
    counted = get(api, mint("viewer", "acme"), "/accounts/acme/deadletters/count?filter=throttled").get_json()
    assert counted["matching"] == 5 and counted["complete"] is False
    monkeypatch.setattr(api_deadletters, "COUNT_LIMIT", 8)
    counted = get(api, mint("viewer", "acme"), "/accounts/acme/deadletters/count?filter=throttled").get_json()
    assert counted["matching"] == 8 and counted["complete"] is True
    # a filter that matches nothing reads no more than the limit either, and says it stopped
    monkeypatch.setattr(api_deadletters, "COUNT_LIMIT", 5)
    read: list[int] = []
    mget = redis_client.__class__.mget

    def counted_mget(self: Any, keys: Any, *args: Any) -> Any:
        read.append(sum(1 for k in keys if str(k).startswith("dlq:item:")))
        return mget(self, keys, *args)

    monkeypatch.setattr(redis_client.__class__, "mget", counted_mget)
    counted = get(api, mint("viewer", "acme"), "/accounts/acme/deadletters/count?filter=nowhere").get_json()
    assert counted["matching"] == 0 and counted["complete"] is False and sum(read) <= 5
