"""A webhook route answers a request that proves nothing (a sender's validation probe, or any bare
request without a signature or token) byte for byte the same whether the account exists and has
that sender, exists without it, or does not exist: status, headers (but ``Date``) and body. Else
the answer would tell an anonymous caller which accounts exist and which senders they use."""

from __future__ import annotations

from typing import Any

import pytest

from connector.ingest.receivers import REGISTRY
from tests.helpers import stored_events

# acme has every sender, globex only segment and tracking, nosuch is no account
ACCOUNTS = ("acme", "globex", "nosuch")
MAILCHIMP_TOKEN = "mc_url_secret_9f8e7d"  # acme's, in conftest.ACME_ENV
FORM = "application/x-www-form-urlencoded"

# (method, query string, content type, body): requests that carry no valid signature
BARE: list[tuple[str, str, str | None, bytes]] = [
    ("GET", "", None, b""),
    ("HEAD", "", None, b""),
    ("POST", "", None, b""),
    ("POST", "", FORM, b""),
    ("POST", "", FORM, b" \n"),
    ("POST", "", "application/json", b"{}"),
    ("PUT", "", "application/json", b""),
    ("PATCH", "", "application/json", b""),
    ("GET", f"secret={MAILCHIMP_TOKEN}", None, b""),
    ("POST", f"secret={MAILCHIMP_TOKEN}", FORM, b""),
    ("POST", "secret=wrong", FORM, b""),
]


def answer(client: Any, account: str, sender: str, request: tuple[str, str, str | None, bytes]) -> tuple:
    method, query, content_type, body = request
    headers = {"Content-Type": content_type} if content_type else {}
    res = client.open(
        f"/webhooks/{account}/{sender}", method=method, query_string=query, data=body, headers=headers
    )
    shown = [(name, value) for name, value in res.headers.items() if name.lower() != "date"]
    return res.status, shown, res.get_data()


@pytest.mark.parametrize("sender", sorted(REGISTRY))
def test_a_bare_request_is_answered_the_same_for_every_account(client, redis_client, sender) -> None:  # type: ignore[no-untyped-def]
    for request in BARE:
        if request[0] not in REGISTRY[sender].methods:
            continue  # a 405 is decided before the account is looked at (test_method_not_allowed)
        answers = {account: answer(client, account, sender, request) for account in ACCOUNTS}
        assert answers["globex"] == answers["acme"], (sender, request)
        assert answers["nosuch"] == answers["acme"], (sender, request)
    assert stored_events(redis_client) == []


PROBES = [
    ("mailchimp", ("GET", "", None, b"")),
    ("mailchimp", ("HEAD", "", None, b"")),
    ("mailchimp", ("POST", "", FORM, b"")),
    ("mailchimp", ("GET", f"secret={MAILCHIMP_TOKEN}", None, b"")),
    ("mandrill", ("HEAD", "", None, b"")),
]
PROBE_BODY = b'{"status":"accepted","accepted":0,"duplicates":0}\n'


@pytest.mark.parametrize(("sender", "request_"), PROBES)
def test_a_validation_probe_is_answered_200_with_one_body(client, redis_client, sender, request_) -> None:  # type: ignore[no-untyped-def]
    for account in ACCOUNTS:
        status, headers, body = answer(client, account, sender, request_)
        assert status == "200 OK", (account, status)
        assert dict(headers)["Content-Length"] == str(len(PROBE_BODY))
        assert body == (b"" if request_[0] == "HEAD" else PROBE_BODY)
    assert stored_events(redis_client) == []
