"""Rules through the admin API: versions validated and stored in Redis, dry runs over stored
profiles, publishing (the rules in force in every process, every profile re-evaluated with
progress), rollback, the audit log; and the account file winning again once its rules change."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from rq import Queue, SimpleWorker

from connector import runtime
from connector.runtime import AccountsProvider, RulesOverlay
from connector.worker.jobs import BACKFILL_QUEUE
from connector.worker.ledger import Ledger
from tests.conftest import ACME_ENV
from tests.ops.api.conftest import DEST_ENV, Mint, acme_file, bearer
from tests.profile_helpers import apply, ev

URL = "/api/v1/accounts/acme/rules"
# the VIP threshold raised from 100 to 300: ann (150) leaves vip, bob (400) stays
RAISED = "include:\n  - cart_abandonment\n  - template: vip\n    params: {threshold: 300}\n"
SELF_WRITTEN = (
    "traits:\n  lifetime_revenue:\n    sum: {event: order_completed, property: revenue}\n"
    "segments:\n"
    "  - name: vip\n    when: {trait: {name: lifetime_revenue, gte: 100}}\n"
    "  - name: cart_abandoner\n    when: {count: {event: checkout_started, gte: 1}}\n"
)


@pytest.fixture
def editor(mint: Mint) -> dict[str, str]:
    return bearer(mint("editor", "acme"))


def draft(api: Any, headers: dict[str, str], text: str = RAISED) -> int:
    answer = api.put(URL, json={"text": text, "note": "raise the bar"}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    return int(answer.get_json()["version"])


def run_backfill(conn: redis.Redis) -> None:
    SimpleWorker([Queue(BACKFILL_QUEUE, connection=conn)], connection=conn).work(burst=True)


def test_the_rules_in_force_come_from_the_file_at_first(api: Any, mint: Mint) -> None:
    body = api.get(URL, headers=bearer(mint("viewer", "acme"))).get_json()
    assert body["source"] == "file" and body["version"] is None and body["superseded_api_version"] is None
    assert yaml.safe_load(body["text"]) == acme_file()["rules"]
    assert "vip" in body["segments"] and body["file"].endswith("acme.yaml")


EMPTY_RULES = (
    "rules.segments: destination mailchimp maps segment `cart_abandoner`, which these rules do not define "
    "(defined: none)"
)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "segments:\n  - name: a\n    when: {count: {event: x, gte: lots}}\n",
            "rules.segments[0].when.count.gte: must be a number",
        ),
        (
            "segments:\n  - name: a\n    when: {bogus: 1}\n",
            "rules.segments[0].when.bogus: unknown condition `bogus`; known: all, always,",
        ),
        ("segmentz: []\n", "rules.segmentz: unknown field"),
        ("segments: [\n", "rules: not valid YAML or JSON: line 2"),
        ('{"segments": [}', "rules: not valid YAML or JSON"),
        ("- just\n- a list\n", "rules: must be a mapping"),
        (
            "segments:\n  - name: other\n    when: {always: true}\n",
            "rules.segments: destination mailchimp maps segment `cart_abandoner`",
        ),
        # empty rules would take every member out of every mapped list and tag
        *((empty, EMPTY_RULES) for empty in ("", "segments: []\n", "rules:\n", "null\n")),
    ],
)
def test_invalid_rules_answer_422_with_the_path_and_the_reason(
    api: Any, editor: dict[str, str], text: str, message: str
) -> None:
    answer = api.put(URL, json={"text": text}, headers=editor)
    assert answer.status_code == 422
    body = answer.get_json()
    assert body["error"] == "invalid_request" and body["message"].startswith(message), body
    assert body["errors"]["rules"]["path"] == message.split(":")[0]
    checked = api.post(f"{URL}/validate", json={"text": text}, headers=editor).get_json()
    assert checked["valid"] is False and f"{checked['path']}: {checked['reason']}".startswith(message)


def test_valid_rules_on_a_name_never_received_are_valid_with_a_warning(
    api: Any, editor: dict[str, str], people: dict[str, str]
) -> None:
    text = SELF_WRITTEN + (
        "  - name: adders\n    when: {count: {event: product_added, gte: 1}}\n"
        "  - name: viewers\n    when: {count: {event: product_viewed, gte: 1}}\n"
        "  - name: typo\n    when: {count: {event: prodcut_viewed, gte: 1}}\n"
    )
    checked = api.post(f"{URL}/validate", json={"text": text}, headers=editor).get_json()
    assert checked["valid"] is True and checked["segments"][-3:] == ["adders", "viewers", "typo"]
    first, second = checked["warnings"]
    assert first["path"] == "rules.segments[2].when.count.event"
    assert "`Product Added` is stored as `add_to_cart`" in first["message"]
    assert second["path"] == "rules.segments[4].when.count.event"
    assert "(did you mean `product_viewed`?)" in second["message"]
    plain = api.post(f"{URL}/validate", json={"text": RAISED}, headers=editor).get_json()
    assert plain["valid"] is True and plain["warnings"] == []


def test_a_viewer_reads_and_validates_but_cannot_write_dry_run_or_publish(
    api: Any, mint: Mint, editor: dict[str, str]
) -> None:
    viewer = bearer(mint("viewer", "acme"))
    number = draft(api, editor)
    assert api.post(f"{URL}/validate", json={"text": RAISED}, headers=viewer).get_json()["valid"] is True
    assert api.put(URL, json={"text": RAISED}, headers=viewer).status_code == 403
    assert api.post(f"{URL}/dry-run", json={"text": RAISED}, headers=viewer).status_code == 403
    assert api.post(f"{URL}/versions/{number}/publish", headers=viewer).status_code == 403
    assert api.post(f"{URL}/versions/{number}/rollback", headers=viewer).status_code == 403
    assert api.get(URL, headers=viewer).get_json()["source"] == "file"


def test_a_new_version_is_a_draft_until_published(api: Any, editor: dict[str, str]) -> None:
    number = draft(api, editor)
    assert number == 1
    assert api.get(URL, headers=editor).get_json()["source"] == "file"
    [item] = api.get(f"{URL}/versions", headers=editor).get_json()["items"]
    assert item["status"] == "draft" and item["text"] == RAISED and item["note"] == "raise the bar"


def test_dry_run_shows_who_enters_and_exits_over_a_bounded_sample(
    api: Any, editor: dict[str, str], people: dict[str, str]
) -> None:
    body = api.post(f"{URL}/dry-run", json={"text": RAISED}, headers=editor).get_json()
    assert body["profiles"] == 3 and body["sampled"] is False
    [vip] = body["segments"]
    assert vip["name"] == "vip" and vip["exiting"] == 1 and vip["exiting_sample"] == ["ann@example.com"]
    assert vip["entering"] == 0
    number = draft(api, editor)
    by_version = api.post(f"{URL}/dry-run", json={"version": number}, headers=editor).get_json()
    assert by_version["segments"] == body["segments"]
    bounded = api.post(f"{URL}/dry-run", json={"text": RAISED, "limit": 1}, headers=editor).get_json()
    assert bounded["profiles"] == 1 and bounded["limit"] == 1 and bounded["sampled"] is True
    both = api.post(f"{URL}/dry-run", json={"text": RAISED, "version": number}, headers=editor)
    assert both.status_code == 422
    assert api.post(f"{URL}/dry-run", json={"version": 99}, headers=editor).status_code == 404


def test_a_published_version_is_what_the_worker_evaluates_with_progress_to_the_end(
    api: Any, editor: dict[str, str], people: dict[str, str], redis_client: redis.Redis
) -> None:
    ledger = Ledger(redis_client)
    assert ledger.state("acme", people["ann@example.com"]).segments >= {"vip"}  # type: ignore[union-attr]
    number = draft(api, editor)
    started = api.post(f"{URL}/versions/{number}/publish", headers=editor)
    assert started.status_code == 202
    key, total = started.get_json()["key"], started.get_json()["total"]
    assert total == 3
    progress = api.get(f"{URL}/publish/{key}", headers=editor).get_json()
    assert progress == {"key": key, "done": 0, "total": 3, "percent": 0, "finished": False}
    body = api.get(URL, headers=editor).get_json()
    assert (
        body["source"] == "api"
        and body["version"] == number
        and yaml.safe_load(body["text"]) == yaml.safe_load(RAISED)
    )

    run_backfill(redis_client)  # the re-evaluation of every profile, in-process
    progress = api.get(f"{URL}/publish/{key}", headers=editor).get_json()
    assert progress["done"] == 3 and progress["percent"] == 100 and progress["finished"] is True
    assert "vip" not in ledger.state("acme", people["ann@example.com"]).segments  # type: ignore[union-attr]
    assert "vip" in ledger.state("acme", people["bob@example.com"]).segments  # type: ignore[union-attr]

    # a new event through the worker pipeline is evaluated with the published rules too
    rt = runtime.current()
    apply(
        redis_client,
        rt.accounts,
        ev("a9", "order_completed", at=5, props={"revenue": 250.0}, email="dee@example.com"),
    )
    from connector.profiles import lookup

    dee = lookup(redis_client, "acme", "email", "dee@example.com")
    assert dee is not None and "vip" not in ledger.state("acme", dee).segments  # type: ignore[union-attr]
    assert api.get(f"{URL}/publish/0123456789ab", headers=editor).status_code == 404


def test_another_process_sees_the_published_version_after_its_next_check_and_the_file_wins_once_changed(
    api: Any,
    editor: dict[str, str],
    api_accounts: Path,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    mint: Mint,
) -> None:
    ticks = [0.0]
    other = AccountsProvider(
        api_accounts,
        {**ACME_ENV, **DEST_ENV},
        check_seconds=1.0,
        monotonic=lambda: ticks[0],
        overlay=RulesOverlay(redis_client),
    )
    assert other.get("acme").ruleset.by_name["vip"]  # type: ignore[union-attr]
    before = other.get("acme")
    number = draft(api, editor, SELF_WRITTEN)
    assert api.post(f"{URL}/versions/{number}/publish", headers=editor).status_code == 202
    ticks[0] = 0.5
    assert other.get("acme") is before  # not looked at yet
    ticks[0] = 1.5
    seen = other.get("acme")
    assert seen is not None and seen.rules == yaml.safe_load(SELF_WRITTEN)
    assert other.rules_in_force("acme").source == "api"  # type: ignore[union-attr]

    # a deploy from git changes the file's rules: the file wins again, everywhere, and says so
    changed = acme_file()
    changed["rules"] = {"include": ["cart_abandonment", {"template": "vip", "params": {"threshold": 50}}]}
    (api_accounts / "acme.yaml").write_text(yaml.safe_dump(changed))
    ticks[0] = 3.0
    with caplog.at_level(logging.WARNING, logger="connector.runtime"):
        assert other.get("acme").rules == changed["rules"]  # type: ignore[union-attr]
    assert any("API rules version superseded" in r.getMessage() for r in caplog.records)
    body = api.get(URL, headers=editor).get_json()
    assert body["source"] == "file" and body["superseded_api_version"] == number
    assert yaml.safe_load(body["text"]) == changed["rules"]
    [item] = api.get(f"{URL}/versions", headers=editor).get_json()["items"]
    assert item["status"] == "superseded"
    ready = api.get("/readyz").get_json()
    assert ready["rules_superseded"] == [{"account": "acme", "version": number}]
    assert ready["status"] == "ready"  # a deploy doing its job: reported, not a fault
    # recorded once, by the process that marked it, though this one and the web's both saw it
    entries = api.get("/api/v1/audit", headers=bearer(mint("viewer", "acme"))).get_json()["items"]
    [entry] = [e for e in entries if e["action"] == "rules.superseded"]
    assert entry["token"] == "file:acme.yaml" and entry["target"] == "rules:acme"
    assert entry["before"] == {"source": "api", "version": number}
    assert entry["after"]["source"] == "file" and entry["after"]["rules_digest"]
    # a version written against the old file's rules cannot be published again
    assert api.post(f"{URL}/versions/{number}/publish", headers=editor).status_code == 409


def test_rollback_publishes_an_earlier_version_and_every_change_is_audited(
    api: Any, editor: dict[str, str], redis_client: redis.Redis, mint: Mint
) -> None:
    first = draft(api, editor, RAISED)
    second = draft(api, editor, SELF_WRITTEN)
    assert api.post(f"{URL}/versions/{second}/rollback", headers=editor).status_code == 409  # never published
    assert api.post(f"{URL}/versions/{first}/publish", headers=editor).status_code == 202
    assert api.post(f"{URL}/versions/{second}/publish", headers=editor).status_code == 202
    assert api.post(f"{URL}/versions/{second}/rollback", headers=editor).status_code == 409  # in force
    assert api.post(f"{URL}/versions/{first}/rollback", headers=editor).status_code == 202
    assert api.get(URL, headers=editor).get_json()["version"] == first
    items = api.get(f"{URL}/versions", headers=editor).get_json()["items"]
    assert [(i["version"], i["status"], len(i["published"])) for i in items] == [
        (second, "earlier", 1),
        (first, "in_force", 2),
    ]
    entries = api.get("/api/v1/audit", headers=bearer(mint("viewer", "acme"))).get_json()["items"]
    actions = [e["action"] for e in entries if e["target"] == "rules:acme"]
    assert actions == ["rules.rollback", "rules.publish", "rules.publish", "rules.draft", "rules.draft"]
    rollback = entries[0]
    assert rollback["before"]["version"] == second and rollback["after"]["version"] == first
    assert json.dumps(entries).count("sc_") == 0  # no token secret


def test_another_accounts_rules_are_not_found(api: Any, editor: dict[str, str]) -> None:
    assert api.get("/api/v1/accounts/globex/rules", headers=editor).status_code == 404
    assert api.put("/api/v1/accounts/globex/rules", json={"text": RAISED}, headers=editor).status_code == 404


def alias_bomb(levels: int = 7, width: int = 10) -> str:
    """Rules of a few hundred bytes whose YAML aliases would expand to ``width ** levels`` values."""
    lists = ["&a0 [" + ", ".join(["x"] * width) + "]"]
    lists += [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * width) + "]" for n in range(1, levels)]
    return "segments:\n  - name: a\n    when: {trait: {name: t, in: [" + ", ".join(lists) + "]}}\n"


def test_yaml_aliases_past_the_bound_are_refused_with_the_line_before_anything_expands_them(
    api: Any, editor: dict[str, str]
) -> None:
    text = alias_bomb()
    assert len(text) < 500
    refusal = (
        "YAML aliases expand this document to more than 100,000 values: write it with fewer repeats "
        "(an alias repeats the whole value its anchor names)"
    )
    for method, path in (("put", URL), ("post", f"{URL}/dry-run")):
        answer = getattr(api, method)(path, json={"text": text}, headers=editor)
        assert answer.status_code == 422, (path, answer.get_json())
        body = answer.get_json()
        assert body["message"].startswith("rules: not valid YAML or JSON: line 3 column ")
        assert body["message"].endswith(refusal) and body["errors"]["rules"]["path"] == "rules"
    checked = api.post(f"{URL}/validate", json={"text": text}, headers=editor).get_json()
    assert checked["valid"] is False and checked["path"] == "rules"
    assert checked["reason"].startswith("not valid YAML or JSON: line 3")
    assert checked["reason"].endswith(refusal)
    assert api.get(f"{URL}/versions", headers=editor).get_json()["items"] == []


def test_a_few_yaml_aliases_are_rules_like_any_other(api: Any, editor: dict[str, str]) -> None:
    text = SELF_WRITTEN + (  # the values written once, for both segments
        "  - {name: a, when: {trait: {name: t, in: &few [x, y]}}}\n"
        "  - {name: b, when: {trait: {name: u, in: *few}}}\n"
    )
    checked = api.post(f"{URL}/validate", json={"text": text}, headers=editor).get_json()
    assert checked["valid"] is True, checked
    assert api.put(URL, json={"text": text}, headers=editor).status_code == 201


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ('{"text": "segmentz: []\\n# \\ud800"}', "body.text"),
        ('{"text": "segments: []", "note": "note \\udfff"}', "body.note"),
        ('{"text": "segments: []", "limit": [1, {"\\ud83d": 2}]}', "body.limit[1] (a key)"),
    ],
)
def test_a_body_whose_strings_are_not_unicode_answers_422_and_stores_nothing(
    api: Any, editor: dict[str, str], body: str, where: str
) -> None:
    for method, path in (("put", URL), ("post", f"{URL}/validate"), ("post", f"{URL}/dry-run")):
        answer = getattr(api, method)(path, data=body, content_type="application/json", headers=editor)
        assert answer.status_code == 422, (path, answer.get_data(as_text=True))
        found = answer.get_json()
        assert found["error"] == "invalid_request" and found["message"] == (
            f"the JSON body cannot be taken: {where} has a lone surrogate escape (e.g. \\ud800): not text"
        )
    assert api.get(f"{URL}/versions", headers=editor).get_json()["items"] == []


def test_a_note_stored_with_a_lone_surrogate_is_read_with_it_replaced(
    api: Any, editor: dict[str, str], redis_client: redis.Redis
) -> None:
    from connector import clock, rules_store

    raw = yaml.safe_load(RAISED)
    rules_store.create(redis_client, "acme", RAISED, raw, "digest", "t1", clock.now(), "raise \ud800 it")
    [item] = api.get(f"{URL}/versions", headers=editor).get_json()["items"]
    assert item["note"] == "raise \ufffd it"


def test_a_version_written_in_another_script_s_digits_is_no_version(api: Any, editor: dict[str, str]) -> None:
    # "\u0661" (ARABIC-INDIC DIGIT ONE) was read as version 1
    text = "include: [vip, cart_abandonment, lifecycle]\n"
    assert api.put(URL, json={"text": text}, headers=editor).status_code == 201
    assert api.get(f"{URL}/versions/1", headers=editor).status_code == 200
    assert api.get(f"{URL}/versions/\u0661", headers=editor).status_code == 404


def test_rules_a_file_deploy_puts_in_force_are_re_evaluated_without_a_publish(
    api: Any,
    editor: dict[str, str],
    people: dict[str, str],
    api_accounts: Path,
    redis_client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from connector import clock
    from connector.worker import publish

    monkeypatch.setattr(publish, "_seen", {"mapping": {}, "rules": {}})
    ledger = Ledger(redis_client)
    assert publish.reevaluate_changed_rules(clock.now()) == 0  # met for the first time: recorded only
    number = draft(api, editor, SELF_WRITTEN)
    assert api.post(f"{URL}/versions/{number}/publish", headers=editor).status_code == 202
    run_backfill(redis_client)
    # the publish re-evaluated with the version it put in force: the scheduler does not again
    assert publish.reevaluate_changed_rules(clock.now()) == 0
    assert "vip" in ledger.state("acme", people["ann@example.com"]).segments  # type: ignore[union-attr]

    # a deploy from git raises the bar in the file: it supersedes the version and is in force at
    # once, and ann (150) leaves vip with no event of hers
    changed = acme_file()
    changed["rules"] = yaml.safe_load(RAISED)
    (api_accounts / "acme.yaml").write_text(yaml.safe_dump(changed))
    assert publish.reevaluate_changed_rules(clock.now()) == 1
    assert publish.reevaluate_changed_rules(clock.now()) == 0  # once
    assert api.get(URL, headers=editor).get_json()["superseded_api_version"] == number
    run_backfill(redis_client)
    assert "vip" not in ledger.state("acme", people["ann@example.com"]).segments  # type: ignore[union-attr]
    assert "vip" in ledger.state("acme", people["bob@example.com"]).segments  # type: ignore[union-attr]
