"""What an editor can store through the rules API is bounded: a rules text's size, the number of
versions kept per account (never the one in force), and the audit entry of a draft, which names
the text by digest and size instead of holding it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest
import redis

from connector import rules_store
from tests.ops.api.conftest import Mint, bearer
from tests.ops.api.test_rules_api import RAISED, URL, draft

LIMIT = str(rules_store.MAX_TEXT)


@pytest.fixture
def editor(mint: Mint) -> dict[str, str]:
    return bearer(mint("editor", "acme"))


def padded(size: int) -> str:
    """RAISED padded with YAML comments to ``size`` bytes of UTF-8."""
    line = "# " + "x" * 97 + "\n"
    text = RAISED + line * ((size - len(RAISED)) // len(line) + 1)
    return text[:size]


def test_a_draft_over_the_size_limit_is_refused_naming_the_limit(
    api: Any, editor: dict[str, str], redis_client: redis.Redis
) -> None:
    assert draft(api, editor, padded(rules_store.MAX_TEXT)) == 1  # at the limit: kept
    over = (
        padded(255 * 1024),  # a 255 KB text of comments, 200 of which once took 100 MB of Redis
        padded(rules_store.MAX_TEXT + 1),
        RAISED + "# " + "é" * (rules_store.MAX_TEXT // 2),  # fewer characters than the limit, more bytes
    )
    for text in over:
        answer = api.put(URL, json={"text": text, "note": ""}, headers=editor)
        assert answer.status_code == 422, answer.get_json()
        assert LIMIT in answer.get_json()["message"] and "bytes" in answer.get_json()["message"]
        checked = api.post(f"{URL}/validate", json={"text": text}, headers=editor)
        assert checked.status_code == 422 and LIMIT in checked.get_json()["message"]
    assert redis_client.hlen(rules_store.versions_key("acme")) == 1


def test_versions_past_the_bound_are_dropped_but_the_one_in_force(
    api: Any, editor: dict[str, str], redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rules_store, "MAX_VERSIONS", 3, raising=False)
    first = draft(api, editor)
    assert api.post(f"{URL}/versions/{first}/publish", headers=editor).status_code == 202
    numbers = [draft(api, editor, RAISED + f"# draft {n}\n") for n in range(6)]
    listed = api.get(f"{URL}/versions", headers=editor).get_json()
    assert [(i["version"], i["status"]) for i in listed["items"]] == [
        (numbers[5], "draft"),
        (numbers[4], "draft"),
        (numbers[3], "draft"),
        (first, "in_force"),
    ]
    assert listed["in_force"] == first
    gone = api.get(f"{URL}/versions/{numbers[0]}", headers=editor)
    assert gone.status_code == 404 and "no longer kept" in gone.get_json()["message"]
    assert api.post(f"{URL}/versions/{numbers[0]}/publish", headers=editor).status_code == 404
    never = api.get(f"{URL}/versions/99", headers=editor)
    assert never.status_code == 404 and "no rules version 99" in never.get_json()["message"]
    # every version kept can be published and rolled back to
    assert api.post(f"{URL}/versions/{numbers[3]}/publish", headers=editor).status_code == 202
    assert api.post(f"{URL}/versions/{numbers[4]}/publish", headers=editor).status_code == 202
    assert api.post(f"{URL}/versions/{numbers[3]}/rollback", headers=editor).status_code == 202
    assert api.get(URL, headers=editor).get_json()["version"] == numbers[3]
    # the version once in force is an ordinary old one now: the next draft drops it
    newest = draft(api, editor)
    kept = [i["version"] for i in api.get(f"{URL}/versions", headers=editor).get_json()["items"]]
    assert kept == [newest, numbers[5], numbers[4], numbers[3]]
    refused = api.post(f"{URL}/versions/{first}/rollback", headers=editor)
    assert refused.status_code == 404 and "no longer kept" in refused.get_json()["message"]
    assert int(redis_client.hget("metrics:dropped", "rule_versions") or 0) == 4  # 2, 3, 4, then the first


def test_the_audit_entry_of_a_draft_holds_a_digest_of_the_text_not_the_text(
    api: Any, editor: dict[str, str], mint: Mint
) -> None:
    text = RAISED + "# a-marker-only-in-the-text\n"
    number = draft(api, editor, text)
    entries = api.get("/api/v1/audit", headers=bearer(mint("viewer", "acme"))).get_json()["items"]
    (entry,) = [e for e in entries if e["action"] == "rules.draft"]
    data = text.encode()
    assert entry["after"] == {
        "version": number,
        "text_sha256": hashlib.sha256(data).hexdigest(),
        "text_bytes": len(data),
    }
    assert "a-marker-only-in-the-text" not in json.dumps(entry)
    # the version itself keeps the text, for the versions list and the console
    shown = api.get(f"{URL}/versions/{number}", headers=editor).get_json()
    assert shown["text"] == text
