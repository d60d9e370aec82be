"""Event names in any script: a shop whose SDK sends `購入完了` or `Добавление в корзину` has each
stored under its own name (letters kept, lower-cased, composed), and rules can name them. Before,
every name without a Latin letter or digit was stored as `unnamed`, all of them together."""

from __future__ import annotations

import json
import unicodedata
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import yaml

from connector import clock
from connector.ingest.receivers.segment import sign
from connector.profiles import lookup
from connector.worker import jobs
from connector.worker.ledger import Ledger
from rules import RulesError, compile_rules
from tests.conftest import ACME, ACME_ENV, FIXED_NOW

RULES = {
    "segments": [
        {"name": "buyers", "when": {"count": {"event": "購入完了", "gte": 1}}},
        {"name": "carted", "when": {"count": {"event": "добавление_в_корзину", "gte": 1}}},
        {"name": "sized", "when": {"count": {"event": "größe_gewählt", "gte": 1}}},
    ]
}


def track(client, email: str, name: str, n: int) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(
        {
            "type": "track",
            "event": name,
            "userId": email,
            "messageId": f"script-{email}-{n}",
            "timestamp": (FIXED_NOW - timedelta(minutes=5)).isoformat(),
            "context": {"traits": {"email": email}},
        },
        ensure_ascii=False,
    ).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Signature": sign(ACME_ENV["ACME_SEGMENT_SECRET"].encode(), body),
    }
    answer = client.post("/webhooks/acme/segment", data=body, headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)


def test_names_in_any_script_are_stored_apart_and_match_their_rules(
    client,
    redis_client: redis.Redis,
    config_dir: Path,  # type: ignore[no-untyped-def]
) -> None:
    (config_dir / "acme.yaml").write_text(yaml.safe_dump({**ACME, "rules": RULES}, allow_unicode=True))
    with clock.frozen(FIXED_NOW):
        track(client, "kenji@example.com", "購入完了", 1)
        track(client, "olga@example.com", "Добавление в корзину", 1)
        # decomposed (NFD), as some keyboards and SDKs send it: stored composed, the same name
        track(client, "jonas@example.com", unicodedata.normalize("NFD", "Größe gewählt"), 1)
        track(client, "ana@example.com", "🛒", 1)
        for shard in range(4):
            jobs.drain_events(shard, conn=redis_client)
    ledger = Ledger(redis_client)

    def segments(email: str) -> set[str]:
        pid = lookup(redis_client, "acme", "email", email)
        assert pid is not None
        state = ledger.state("acme", pid)
        return set(state.segments) if state is not None else set()

    assert segments("kenji@example.com") == {"buyers"}
    assert segments("olga@example.com") == {"carted"}
    assert segments("jonas@example.com") == {"sized"}
    assert segments("ana@example.com") == set()  # no letter or digit at all: `unnamed`


@pytest.mark.parametrize(
    ("written", "stored"),
    [("Größe gewählt", "größe_gewählt"), ("Ürün Eklendi", "ürün_eklendi")],
)
def test_a_rule_naming_another_form_of_such_a_name_is_told_the_stored_one(written: str, stored: str) -> None:
    with pytest.raises(RulesError) as caught:
        compile_rules({"segments": [{"name": "s", "when": {"count": {"event": written, "gte": 1}}}]})
    assert caught.value.reason.endswith(f"did you mean `{stored}`?")
