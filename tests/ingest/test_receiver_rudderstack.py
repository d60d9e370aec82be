from __future__ import annotations

import json

from tests.conftest import fresh_runtime
from tests.helpers import stored_events

KEY = "rudder-static-key-42"


def post(client, body: bytes, key: str | None = KEY, account: str = "acme", header: str = "X-Signing-Key"):  # type: ignore[no-untyped-def]
    hdrs = {"Content-Type": "application/json"}
    if key is not None:
        hdrs[header] = key
    return client.post(f"/webhooks/{account}/rudderstack", data=body, headers=hdrs)


MESSAGE = {
    "type": "track", "event": "Product Added", "messageId": "rs-1", "anonymousId": "anon-9",
    "userId": "u-9", "channel": "web", "originalTimestamp": "2024-01-01T00:00:00.000Z",
    "timestamp": "2024-01-01T00:00:01.000Z", "properties": {"sku": "S1", "price": 5},
    "rudderId": "r-1",
}  # fmt: skip


def test_message_and_batch_normalized(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    assert post(client, json.dumps(MESSAGE).encode()).status_code == 200
    batch = [{**MESSAGE, "messageId": "rs-2"}, {"type": "identify", "messageId": "rs-3", "userId": "u-9",
             "traits": {"email": "U9@example.com"}}]  # fmt: skip
    res = post(client, json.dumps(batch).encode())
    assert res.status_code == 200 and res.json["accepted"] == 2
    events = {e["source_event_id"]: e for e in stored_events(redis_client)}
    assert events["rs-1"]["name"] == "add_to_cart"
    assert events["rs-1"]["source"] == "rudderstack"
    assert events["rs-1"]["identities"] == {"user_id": "u-9", "anonymous_id": "anon-9"}
    assert events["rs-3"]["identities"]["email"] == "u9@example.com"


def test_rejections_are_401(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(MESSAGE).encode()
    answers = [
        post(client, body, key="rudder-static-key-43"),
        post(client, body, key=None),
        post(client, body, header="X-Other-Key"),
        post(client, body, account="globex"),
        post(client, body, account="nosuch"),
    ]
    assert [a.status_code for a in answers] == [401] * len(answers)
    assert all(a.json == {"error": "unauthorized"} for a in answers)
    assert stored_events(redis_client) == []


def test_same_delivery_five_times(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    body = json.dumps(MESSAGE).encode()
    assert [post(client, body).json["accepted"] for _ in range(5)] == [1, 0, 0, 0, 0]
    assert len(stored_events(redis_client)) == 1


def test_invalid_message_is_400_naming_the_field(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = post(client, json.dumps([MESSAGE, {"type": "track", "messageId": "x"}]).encode())
    assert res.status_code == 400
    assert "body[1].event" in res.json["message"]
    assert stored_events(redis_client) == []


def test_connector_sign_uses_the_header_the_account_configured(
    tmp_path, monkeypatch, client, redis_client
) -> None:  # type: ignore[no-untyped-def]
    """`connector sign rudderstack` prints the header the destination in RudderStack must send."""
    from click.testing import CliRunner

    from connector.cli.sign_cmd import sign

    accounts = tmp_path / "signing"
    accounts.mkdir()
    (accounts / "shop.yaml").write_text(
        "account: shop\nsenders:\n  rudderstack:\n    secret_env: SHOP_RS_KEY\n    header: X-RS-Key\n"
    )
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(accounts))
    monkeypatch.setenv("SHOP_RS_KEY", KEY)
    fresh_runtime()  # a CLI invocation of its own: its runtime reads this environment
    (tmp_path / "body.json").write_text(json.dumps(MESSAGE))
    result = CliRunner().invoke(sign, ["rudderstack", str(tmp_path / "body.json"), "--account", "shop"])
    assert result.exit_code == 0, result.output
    headers = dict(line.split(": ", 1) for line in result.stdout.splitlines())
    assert headers == {"X-RS-Key": KEY, "Content-Type": "application/json"}
