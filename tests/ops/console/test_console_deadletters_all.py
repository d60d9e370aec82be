"""The dead-letter page's bulk controls without JavaScript (Flask test client): the page's
"select all" link ticks every box, "all matching" confirms with the count and goes on batch by
batch with a Continue form, and a viewer is offered none of it."""

from __future__ import annotations

import re
from html import unescape
from typing import Any

import pytest
import redis

from connector import clock
from connector.ops.api import deadletters as api_deadletters
from connector.sync.deadletters import DeadLetters
from tests.ops.api.conftest import Mint
from tests.ops.console.test_console import csrf_of, login

PAGE = "/console/a/acme/deadletters"


def _put(conn: redis.Redis, n: int, reason: str) -> str:
    change = {"account": "acme", "destination": "mailchimp", "profile_id": f"p{n}", "version": n}
    return DeadLetters(conn).put("sync:mailchimp", reason, {"change": change}, clock.now(), account="acme")


def _hidden(html: str) -> dict[str, str]:
    """The hidden fields of the page's forms, as a browser sends them (HTML entities read)."""
    found = re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html)
    return {name: unescape(value) for name, value in found}


def test_all_matching_without_javascript_confirms_the_count_and_continues_by_form(
    api: Any, mint: Mint, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(api_deadletters, "MAX_SELECTED", 4)
    doomed = [_put(redis_client, n, "410 gone for good") for n in range(9)]
    kept = _put(redis_client, 99, "503 unavailable")
    login(api, mint("editor", "acme"))
    listed = api.get(f"{PAGE}?filter=gone&select=page").get_data(as_text=True)
    assert "9 dead letters match these filters" in listed and "Discard all 9 matching" in listed
    assert (
        listed.count('name="ids" value=') == listed.count(" checked>") - 1 == 9
    )  # every box, and the header
    assert "/deadletters?filter=gone&amp;select=page" in listed  # the no-script "All" link

    confirm = api.post(f"{PAGE}/discard/all", data={"csrf": csrf_of(listed), "filter": "gone"})
    html = confirm.get_data(as_text=True)
    assert confirm.status_code == 200 and "Discard all 9 matching?" in html and "cannot be undone" in html
    assert all(DeadLetters(redis_client).get(i) for i in doomed)  # nothing done before confirming
    form = _hidden(html)
    answers = [api.post(f"{PAGE}/discard/all", data=form).get_data(as_text=True)]
    while 'id="dl-continue"' in answers[-1]:
        assert len(answers) < 5
        answers.append(api.post(f"{PAGE}/discard/all", data=_hidden(answers[-1])).get_data(as_text=True))
    assert "4 of 9 done so far" in answers[0] and "8 of 9 done so far" in answers[1]
    assert "Discard: all 9 matching dead letters; 9 discarded." in answers[-1]
    assert not any(DeadLetters(redis_client).get(i) for i in doomed)
    assert DeadLetters(redis_client).get(kept) is not None


def test_a_viewer_is_offered_no_bulk_control_and_is_refused_one(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    item = _put(redis_client, 1, "410 gone")
    login(api, mint("viewer", "acme"))
    html = api.get(PAGE).get_data(as_text=True)
    assert "1 dead letter in this account" in html
    assert "Replay all" not in html and "dl-select-all" not in html
    refused = api.post(f"{PAGE}/replay/all", data={"csrf": csrf_of(html), "step": "run"})
    assert refused.status_code == 403 and "editor" in refused.get_data(as_text=True)
    assert DeadLetters(redis_client).get(item) is not None
