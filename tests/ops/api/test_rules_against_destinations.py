"""Rules published through the API are checked against the account's destinations as a file's are:
a version whose segment declares three variants where the mappings name two is refused (422), and
one stored before this check (or written by another code version) is not applied in a process,
which keeps serving the file's rules instead of stopping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import redis

from connector import clock, rules_store, runtime
from connector.destinations import destinations as parse_destinations
from connector.runtime import AccountsProvider, RulesOverlay
from tests.conftest import ACME_ENV, fresh_runtime, write_accounts
from tests.ops.api.conftest import DEST_ENV, Mint, acme_file, bearer

URL = "/api/v1/accounts/acme/rules"
THREE = "include:\n  - template: cart_abandonment\n    params: {window: [24h, 48h, 72h]}\n  - vip\n"


@pytest.fixture
def editor(mint: Mint) -> dict[str, str]:
    return bearer(mint("editor", "acme"))


def with_variants() -> dict[str, Any]:
    account = acme_file()
    account["rules"] = {
        "include": [{"template": "cart_abandonment", "params": {"window": ["24h", "48h"]}}, "vip"]
    }
    variants = {"a": {"tags": ["cart 24h"]}, "b": {"tags": ["cart 48h"]}}
    account["destinations"]["mailchimp"]["segments"]["cart_abandoner"] = {"variants": variants}
    return account


def test_a_version_whose_variants_the_mappings_do_not_name_is_refused_and_a_stored_one_never_applied(
    api: Any, editor: dict[str, str], api_accounts: Path, redis_client: redis.Redis
) -> None:
    write_accounts(api_accounts, with_variants())
    fresh_runtime()
    checked = api.post(f"{URL}/validate", json={"text": THREE}, headers=editor)
    assert checked.status_code == 200 and checked.get_json()["valid"] is False, checked.get_json()
    refused = api.put(URL, json={"text": THREE}, headers=editor)
    assert refused.status_code == 422, refused.get_json()
    message = str(refused.get_json())
    assert "destinations.mailchimp.segments.cart_abandoner.variants" in message and "3 variants" in message

    # a version stored without the check (an earlier code version published it): never applied here
    account = runtime.current().account("acme")
    assert account is not None
    raw = rules_store.parse_text(THREE)
    version = rules_store.create(
        redis_client, "acme", THREE, raw, rules_store.digest(account.rules), "tok", account_now()
    )
    rules_store.publish(redis_client, version, "tok", account_now())
    provider = AccountsProvider(
        api_accounts, {**ACME_ENV, **DEST_ENV}, check_seconds=0, overlay=RulesOverlay(redis_client)
    )
    served = provider.get("acme")  # no ConfigError out of the provider: the file's rules serve
    assert served is not None and served.rules == account.rules
    state = provider.overlay.states["acme"]  # type: ignore[union-attr]
    assert state.source == "file" and state.problem is not None and "3 variants" in state.problem
    answer = api.get(URL, headers=editor).get_json()
    assert answer["source"] == "file" and "3 variants" in answer["problem"]


def account_now() -> Any:
    return clock.now()


def test_a_mapping_edited_under_a_published_version_checks_the_version_anew(
    api: Any, editor: dict[str, str], api_accounts: Path, redis_client: redis.Redis
) -> None:
    # the file's rules have no variants, the published version three; the mapping names none: valid
    fresh_runtime()
    number = api.put(URL, json={"text": THREE}, headers=editor).get_json()["version"]
    assert api.post(f"{URL}/versions/{number}/publish", headers=editor).status_code == 202
    ticks = [0.0]
    provider = AccountsProvider(
        api_accounts,
        {**ACME_ENV, **DEST_ENV},
        check_seconds=1.0,
        monotonic=lambda: ticks[0],
        overlay=RulesOverlay(redis_client),
    )
    served = provider.get("acme")
    assert served is not None and served.ruleset.by_name["cart_abandoner"].variants  # the version's
    # only the mapping changes: two variants, which the file's own rules accept and the version's not
    edited = acme_file()
    edited["destinations"]["mailchimp"]["segments"]["cart_abandoner"] = {
        "variants": {"a": {"tags": ["cart 24h"]}, "b": {"tags": ["cart 48h"]}}
    }
    write_accounts(api_accounts, edited)
    ticks[0] = 2.0
    served = provider.get("acme")  # never a ConfigError out of the provider
    assert served is not None and served.rules == edited["rules"]
    assert parse_destinations(served)["mailchimp"].segments["cart_abandoner"].variants
    state = provider.overlay.states["acme"]  # type: ignore[union-attr]
    assert state.source == "file" and state.problem is not None and "3 variants" in state.problem
