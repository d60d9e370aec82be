"""The console's rule editor (Flask test client, real Redis): the page, validation as you type,
the dry run, publishing with progress, and a viewer who can read and check but not change."""

from __future__ import annotations

from typing import Any

import redis
from rq import Queue, SimpleWorker

from connector.worker.jobs import BACKFILL_QUEUE
from tests.ops.api.conftest import Mint
from tests.ops.console.test_console import csrf_of, login

PAGE = "/console/a/acme/rules"
RAISED = "include:\n  - cart_abandonment\n  - template: vip\n    params: {threshold: 300}\n"


def test_the_page_shows_the_rules_in_force_and_the_editor(api: Any, mint: Mint) -> None:
    login(api, mint("editor", "acme"))
    html = api.get(PAGE).get_data(as_text=True)
    assert "the account file" in html and "template: vip" in html
    assert 'id="dry-run"' in html and 'id="publish"' in html and "rules.js" in html
    assert ">Rules</a>" in html  # in the navigation


def test_validation_names_the_path_and_the_reason(api: Any, mint: Mint) -> None:
    login(api, mint("viewer", "acme"))
    csrf = csrf_of(api.get(PAGE).get_data(as_text=True))
    bad = "segments:\n  - name: a\n    when: {count: {event: x, gte: lots}}\n"
    answer = api.post(f"{PAGE}/validate", data={"csrf": csrf, "text": bad}).get_json()
    assert answer["valid"] is False and answer["path"] == "rules.segments[0].when.count.gte"
    assert answer["reason"].startswith("must be a number")
    good = api.post(f"{PAGE}/validate", data={"csrf": csrf, "text": RAISED}).get_json()
    assert good["valid"] is True and "vip" in good["segments"]
    assert api.post(f"{PAGE}/validate", data={"csrf": "forged", "text": RAISED}).status_code == 400


def test_a_viewer_reads_but_cannot_dry_run_or_publish(api: Any, mint: Mint) -> None:
    login(api, mint("viewer", "acme"))
    html = api.get(PAGE).get_data(as_text=True)
    assert "readonly" in html and 'id="publish"' not in html and "need an editor token" in html
    csrf = csrf_of(html)
    assert api.post(f"{PAGE}/dry-run", data={"csrf": csrf, "text": RAISED}).status_code == 403
    refused = api.post(f"{PAGE}/publish", data={"csrf": csrf, "text": RAISED})
    assert refused.status_code == 403 and "editor" in refused.get_json()["error"]
    assert "the account file" in api.get(PAGE).get_data(as_text=True)


def test_dry_run_then_publish_with_progress_to_the_end(
    api: Any, mint: Mint, people: dict[str, str], redis_client: redis.Redis
) -> None:
    login(api, mint("editor", "acme"))
    csrf = csrf_of(api.get(PAGE).get_data(as_text=True))
    diff = api.post(f"{PAGE}/dry-run", data={"csrf": csrf, "text": RAISED}).get_json()
    assert diff["segments"][0]["exiting_sample"] == ["ann@example.com"]
    invalid = api.post(f"{PAGE}/publish", data={"csrf": csrf, "text": "segmentz: []"})
    assert invalid.status_code == 422 and invalid.get_json()["error"].startswith("rules.segmentz")
    started = api.post(f"{PAGE}/publish", data={"csrf": csrf, "text": RAISED}).get_json()
    assert started["version"] == 1 and started["total"] == 3
    assert api.get(f"{PAGE}/progress/{started['key']}").get_json()["percent"] == 0
    SimpleWorker([Queue(BACKFILL_QUEUE, connection=redis_client)], connection=redis_client).work(burst=True)
    done = api.get(f"{PAGE}/progress/{started['key']}").get_json()
    assert done["percent"] == 100 and done["finished"] is True
    html = api.get(PAGE).get_data(as_text=True)
    assert "API version 1" in html and "in force" in html
    assert api.get(f"{PAGE}/progress/0123456789ab").status_code == 404


def test_the_page_shows_a_note_stored_with_a_lone_surrogate_replaced(
    api: Any, mint: Mint, redis_client: redis.Redis
) -> None:
    import yaml

    from connector import clock, rules_store

    raw = yaml.safe_load(RAISED)
    rules_store.create(redis_client, "acme", RAISED, raw, "digest", "t1", clock.now(), "raise \ud800 it")
    login(api, mint("viewer", "acme"))
    page = api.get(PAGE)
    assert page.status_code == 200
    assert "raise \ufffd it" in page.get_data(as_text=True)
