"""A method a receiving route does not take is a 405 naming the methods it does take in ``Allow``
(RFC 9110, 15.5.6), with the contract's JSON body, whether or not the account exists."""

from __future__ import annotations

import pytest

from connector.ingest.receivers import REGISTRY


@pytest.mark.parametrize("sender", sorted(REGISTRY))
@pytest.mark.parametrize("account", ["acme", "nosuch"])
def test_a_webhook_route_names_the_methods_it_takes(client, redis_client, sender, account) -> None:  # type: ignore[no-untyped-def]
    res = client.delete(f"/webhooks/{account}/{sender}")
    assert res.status_code == 405
    assert res.headers["Allow"] == ", ".join(REGISTRY[sender].methods)
    assert res.json == {"error": "method_not_allowed", "message": f"{sender} accepts {res.headers['Allow']}"}


def test_segment_takes_post_put_and_patch(client, redis_client) -> None:  # type: ignore[no-untyped-def]
    res = client.delete("/webhooks/demo/segment")
    assert (res.status_code, res.headers["Allow"]) == (405, "POST, PUT, PATCH")


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch", "/v1/t", "/v1/b"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "HEAD"])
def test_a_tracking_call_takes_post(client, redis_client, path, method) -> None:  # type: ignore[no-untyped-def]
    res = client.open(path, method=method)
    assert res.status_code == 405
    assert res.headers["Allow"] == "POST"
    if method != "HEAD":
        assert res.json == {
            "error": "method_not_allowed",
            "code": "method_not_allowed",
            "message": "tracking calls accept POST",
        }
