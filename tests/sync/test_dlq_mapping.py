"""A change an ESP refuses because the mapping names an object the ESP lacks (a mistyped list id) is
dead-lettered with a reason that names the mapping: account, destination, segment, the ESP object,
and where the account file names it, with the ESP's own status and message (the sandbox fakes over
loopback HTTP)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
import redis
import yaml
from click.testing import CliRunner

from adapters.change import CONSENT_UNKNOWN
from connector import clock, sync
from connector.cli.main import _register, cli
from connector.config import load_accounts
from connector.destinations import build_adapter, destinations
from connector.dev.sandbox import FakeHubSpot, FakeKlaviyo, FakeMailchimp, serving
from connector.sync.deadletters import DeadLetters
from tests.conftest import fresh_runtime

ENV = {
    "DLQ_MC_KEY": "0123456789abcdef0123456789abcdef-us6",
    "DLQ_HS_TOKEN": "pat-na1-aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
    "DLQ_KL_KEY": "pk_dlq_0123456789",
}


def test_a_missing_list_dead_letters_name_the_mapping(
    redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in ENV.items():
        monkeypatch.setenv(name, value)
    mc = FakeMailchimp(api_keys=[ENV["DLQ_MC_KEY"]], lists=["aud1"])
    hs = FakeHubSpot(tokens=[ENV["DLQ_HS_TOKEN"]])
    kl = FakeKlaviyo(api_keys=[ENV["DLQ_KL_KEY"]])
    with serving(mc) as a, serving(hs) as b, serving(kl) as c:
        common = {"sandbox": True, "batch_delay_ms": 0}
        cfg = {
            "mailchimp": {
                **common,
                "api_key_env": "DLQ_MC_KEY",
                "list_id": "aud1",
                "base_url": a.url + "/3.0",
                "segments": {"vip": {"tags": ["vip"], "lists": ["99999"]}},
            },
            "crm": {
                **common,
                "type": "hubspot",
                "api_key_env": "DLQ_HS_TOKEN",
                "base_url": b.url,
                "segments": {"vip": {"lists": ["999"]}},
            },
            "klaviyo": {
                **common,
                "api_key_env": "DLQ_KL_KEY",
                "base_url": c.url,
                "segments": {"vip": {"lists": ["NOPE12"]}},
            },
        }
        directory = tmp_path / "accounts"
        directory.mkdir()
        (directory / "acme.yaml").write_text(yaml.safe_dump({"account": "acme", "destinations": cfg}))
        monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
        fresh_runtime()
        account = load_accounts(directory).get("acme")
        assert account is not None
        now = clock.now()
        sync.submit(redis_client, account, "p1", 1, ["vip"], {}, "p1@example.com", CONSENT_UNKNOWN, now)
        for dest in destinations(account).values():
            adapter = build_adapter(dest, None, clock=lambda: now.timestamp(), sleep=lambda s: None, env=ENV)
            sync.Flusher(redis_client, dest, adapter).flush(now + timedelta(seconds=1))

    dead = DeadLetters(redis_client)
    items = {kind: list(dead.list(kind)) for kind in ("sync:mailchimp", "sync:crm", "sync:klaviyo")}
    assert all(len(found) == 1 for found in items.values()), items
    mc_item = items["sync:mailchimp"][0]
    assert mc_item.reason.startswith(
        "acme/mailchimp segment vip: static segment 99999 "
        "(acme.yaml: destinations.mailchimp.segments.vip.lists[0]) refused by mailchimp: "
        "PermanentError: 404 Resource Not Found"
    )
    assert mc_item.payload["mapping"]["paths"] == ["destinations.mailchimp.segments.vip.lists[0]"]
    assert mc_item.payload["mapping"]["file"] == "acme.yaml"  # its name, never the server's path
    assert mc_item.payload["error"]["object"] == {"kind": "static segment", "id": "99999"}
    hs_reason = items["sync:crm"][0].reason
    assert "acme/crm segment vip: list 999 (acme.yaml: destinations.crm.segments.vip.lists[0])" in hs_reason
    assert "404 OBJECT_NOT_FOUND: List 999 does not exist" in hs_reason
    kl_reason = items["sync:klaviyo"][0].reason
    assert "list NOPE12 (acme.yaml: destinations.klaviyo.segments.vip.lists[0])" in kl_reason
    assert "A list with id NOPE12 does not exist" in kl_reason
    for item in (mc_item, *items["sync:crm"], *items["sync:klaviyo"]):
        assert not any(secret in item.to_json() for secret in ENV.values())

    _register()
    runner = CliRunner()
    shown = runner.invoke(cli, ["dlq", "show", mc_item.id[:12]])
    assert shown.exit_code == 0, shown.output
    assert "destinations.mailchimp.segments.vip.lists[0]" in shown.output and "99999" in shown.output
    assert json.loads(shown.output)["payload"]["mapping"]["segments"] == ["vip"]
    listed = runner.invoke(cli, ["dlq", "list", "--kind", "sync:crm"])
    assert "list 999 (acme.yaml: destinations.crm.segments.vip.lists[0])" in listed.output
    # a dead letter stored before reasons named the mapping (no `mapping`) still shows as it was
    old = dead.put("sync:mailchimp", "PermanentError: 404 Resource Not Found", {"error": {}}, now, "acme")
    assert runner.invoke(cli, ["dlq", "show", old]).exit_code == 0
    assert old in runner.invoke(cli, ["dlq", "list"]).output
