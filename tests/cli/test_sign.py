"""``connector sign``: the README's pattern (``connector sign X body > headers.txt; curl -H
@headers.txt --data-binary @body URL``) is accepted for every sender ``sign --help`` lists."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from connector.cli.main import _register, cli
from tests.conftest import ACME, fresh_runtime

VECTOR_FOR = {
    "segment": "segment_single",
    "rudderstack": "segment_single",
    "shopify": "shopify_orders_create",
    "klaviyo": "klaviyo_iso_ts",
    "hubspot": "hubspot_v3",
    "mandrill": "mandrill",
    "mailchimp": "mailchimp_subscribe",
    "standard_webhooks": "standard_webhooks_spec",
}


def listed_senders(runner: CliRunner) -> list[str]:
    shown = runner.invoke(cli, ["sign", "--help"], terminal_width=1000, max_content_width=1000)
    assert shown.exit_code == 0, shown.output
    choice = re.search(r"\{([a-z_|]+)\}", shown.output)
    assert choice, shown.output
    return choice.group(1).split("|")


def curl_headers(text: str) -> dict[str, str]:
    """What curl does with ``-H @headers.txt``: one ``Name: value`` header per line."""
    headers = {}
    for line in text.splitlines():
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip()] = value.strip()
    return headers


def vector_body(vectors: list[dict[str, Any]], name: str) -> bytes:
    [found] = [v for v in vectors if v["name"] == name]
    body = found["body"]
    return body.encode() if isinstance(body, str) else json.dumps(body).encode()


@pytest.fixture
def runner() -> CliRunner:
    _register()
    return CliRunner()


def test_every_listed_sender_is_accepted_with_the_readme_curl_pattern(
    runner: CliRunner, client: Any, vectors: list[dict[str, Any]], tmp_path: Path
) -> None:
    senders = listed_senders(runner)
    assert set(senders) == set(VECTOR_FOR)
    for sender in senders:
        body = tmp_path / f"{sender}.body"
        body.write_bytes(vector_body(vectors, VECTOR_FOR[sender]))
        path = f"/webhooks/acme/{sender}"
        args = ["sign", sender, str(body), "--account", "acme"]
        if sender == "hubspot":  # HubSpot signs the URL the request is sent to
            args += ["--url", f"http://localhost{path}"]
        signed = runner.invoke(cli, args)
        assert signed.exit_code == 0, signed.output
        (tmp_path / "headers.txt").write_text(signed.stdout)
        if sender == "mailchimp":  # the secret goes in the URL, which sign prints on stderr
            posted = re.search(r"post to (\S+)", signed.stderr)
            assert posted, signed.stderr
            path = posted.group(1).replace("http://127.0.0.1:8000", "")
        headers = curl_headers((tmp_path / "headers.txt").read_text())
        res = client.post(path, data=body.read_bytes(), headers=headers)
        assert 200 <= res.status_code < 300, (sender, res.status_code, res.get_data(as_text=True))


def test_shopify_headers_carry_topic_fresh_id_and_the_checked_shop_domain(
    runner: CliRunner, client: Any, config_dir: Path, vectors: list[dict[str, Any]], tmp_path: Path
) -> None:
    shop = json.loads(json.dumps(ACME))
    shop["senders"]["shopify"]["shop_domains"] = ["acme.myshopify.com"]
    (config_dir / "acme.yaml").write_text(yaml.safe_dump(shop))
    fresh_runtime()
    body = tmp_path / "order.json"
    body.write_bytes(vector_body(vectors, "shopify_orders_create"))
    first = curl_headers(runner.invoke(cli, ["sign", "shopify", str(body), "--account", "acme"]).stdout)
    second = curl_headers(
        runner.invoke(
            cli, ["sign", "shopify", str(body), "--account", "acme", "--topic", "orders/paid"]
        ).stdout
    )
    assert first["X-Shopify-Topic"] == "orders/create" and second["X-Shopify-Topic"] == "orders/paid"
    assert first["X-Shopify-Webhook-Id"] != second["X-Shopify-Webhook-Id"]
    assert first["X-Shopify-Shop-Domain"] == "acme.myshopify.com"
    res = client.post("/webhooks/acme/shopify", data=body.read_bytes(), headers=first)
    assert res.status_code == 200, res.get_data(as_text=True)
    without_shop = {k: v for k, v in first.items() if k != "X-Shopify-Shop-Domain"}
    refused = client.post("/webhooks/acme/shopify", data=body.read_bytes(), headers=without_shop)
    assert refused.status_code == 401


def test_an_unknown_account_is_named_with_did_you_mean(
    runner: CliRunner, config_dir: Path, tmp_path: Path
) -> None:
    body = tmp_path / "b.json"
    body.write_text("{}")
    result = runner.invoke(cli, ["sign", "segment", str(body), "--account", "acmee"])
    assert result.exit_code == 1
    assert "unknown account `acmee` (did you mean `acme`?)" in result.stderr


@pytest.mark.parametrize("content", [b"[]", b"[", b"  [ ]", b"[" * 100 + b"]" * 100])
def test_a_segment_batch_with_no_first_element_is_a_usage_error_naming_the_file(
    runner: CliRunner, config_dir: Path, tmp_path: Path, content: bytes
) -> None:
    body = tmp_path / "b.json"
    body.write_bytes(content)
    result = runner.invoke(cli, ["sign", "segment", str(body), "--account", "acme"])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"Invalid value for BODY: {body}: " in result.stderr
    assert "Traceback" not in result.output and "MalformedPayload" not in result.output
    assert result.stdout == ""  # no headers for a body that cannot be signed
    from_stdin = runner.invoke(cli, ["sign", "segment", "-", "--account", "acme"], input=content)
    assert from_stdin.exit_code == 2 and "Invalid value for BODY: stdin: " in from_stdin.stderr


def test_every_other_sender_signs_an_empty_or_invalid_body(
    runner: CliRunner, config_dir: Path, tmp_path: Path
) -> None:
    for sender in set(listed_senders(runner)) - {"segment"}:
        for content in (b"", b"[]", b"not json"):
            body = tmp_path / "b.body"
            body.write_bytes(content)
            result = runner.invoke(
                cli, ["sign", sender, str(body), "--account", "acme", "--url", "http://x/y"]
            )
            assert result.exit_code == 0, (sender, content, result.output)
