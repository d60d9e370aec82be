"""Fixtures of the admin API tests: two accounts with rules and destinations, a token per role,
and people applied through the real worker path."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from connector import clock
from connector.config import load_accounts
from connector.ops import tokens
from tests.conftest import ACME, ACME_ENV, FIXED_NOW, GLOBEX, fresh_runtime, write_accounts

DEST_ENV = {
    "ACME_MC_KEY": "mc-destination-key-0f1e2d3c-us1",
    "GLOBEX_KL_KEY": "klaviyo-destination-key-9a8b7c",
}
# every value the answers must never contain: secrets and the names of the variables holding them
SECRETS = [*ACME_ENV.values(), *DEST_ENV.values(), *ACME_ENV, *DEST_ENV]


def acme_file() -> dict[str, Any]:
    return {
        **ACME,
        "rules": {"include": ["cart_abandonment", {"template": "vip", "params": {"threshold": 100}}]},
        "destinations": {
            "mailchimp": {
                "api_key_env": "ACME_MC_KEY",
                "base_url": "http://127.0.0.1:9/3.0",
                "sandbox": True,
                "list_id": "list-1",
                "segments": {"vip": {"tags": ["VIP"]}, "cart_abandoner": {"tags": ["cart"]}},
                "fields": {"lifetime_revenue": "LTV"},
            }
        },
    }


def globex_file() -> dict[str, Any]:
    return {
        **GLOBEX,
        "rules": {"include": ["vip"]},
        "destinations": {
            "klaviyo": {
                "api_key_env": "GLOBEX_KL_KEY",
                "base_url": "http://127.0.0.1:9",
                "sandbox": True,
                "segments": {"vip": {"lists": ["L1"]}},
            }
        },
    }


API_NOW = FIXED_NOW.replace(year=2024, month=3, day=1, hour=12)


@pytest.fixture(autouse=True)
def api_clock() -> Iterator[clock.FrozenClock]:
    with clock.frozen(API_NOW) as frozen:
        yield frozen


@pytest.fixture
def api_accounts(config_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name, value in DEST_ENV.items():
        monkeypatch.setenv(name, value)
    write_accounts(config_dir, acme_file(), globex_file())
    fresh_runtime()
    return config_dir


@pytest.fixture
def api_app(api_accounts: Path, redis_client: redis.Redis, settings: Any):  # type: ignore[no-untyped-def]
    from connector import runtime
    from connector.app import create_app

    application = create_app(runtime=runtime.current())
    application.config["TESTING"] = True
    return application


@pytest.fixture
def api(api_app):  # type: ignore[no-untyped-def]
    return api_app.test_client()


Mint = Callable[..., str]


@pytest.fixture
def mint(redis_client: redis.Redis) -> Mint:
    """A bearer header value for a new token: ``mint("viewer", "acme")``."""

    def make(role: str, *accounts: str, expires: timedelta = timedelta(days=1)) -> str:
        _, secret = tokens.create(redis_client, accounts, role, expires, clock.now())
        return secret

    return make


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def people(api_accounts: Path, redis_client: redis.Redis) -> dict[str, str]:
    """Three acme people (two VIPs by revenue, one not) and one globex person, applied through
    the worker's pipeline; profile ids by email."""
    from connector.profiles import lookup
    from tests.profile_helpers import apply, ev

    accounts = load_accounts(api_accounts)
    order = "order_completed"
    apply(
        redis_client,
        accounts,
        ev("a1", order, at=0, props={"revenue": 150.0}, email="ann@example.com", user_id="u-ann"),
        ev("a2", order, at=1, props={"revenue": 400.0}, email="bob@example.com", user_id="u-bob"),
        ev("a3", "product_viewed", at=2, email="cid@example.com", anonymous_id="anon-cid"),
    )
    apply(
        redis_client,
        accounts,
        ev("g1", order, at=0, account="globex", props={"revenue": 5000}, email="gus@globex.test"),
    )
    out = {}
    for account, email in (
        ("acme", "ann@example.com"),
        ("acme", "bob@example.com"),
        ("acme", "cid@example.com"),
        ("globex", "gus@globex.test"),
    ):
        pid = lookup(redis_client, account, "email", email)
        assert pid is not None
        out[email] = pid
    return out
