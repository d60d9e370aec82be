"""Shared fixtures: a real Redis (REDIS_URL, or the embedded binary), a clean database per test,
account files written per test, the app, and a frozen clock."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
import redis
import yaml

from connector import clock, redis_conn, runtime
from connector.config import Accounts, load_accounts
from connector.settings import Settings

TEST_DB = int(os.environ.get("CONNECTOR_TEST_REDIS_DB", "9"))
VECTORS = Path(__file__).resolve().parent / "vectors" / "webhooks.json"
FIXED_NOW = datetime(2024, 1, 1, 0, 0, 30, tzinfo=UTC)


def _with_db(url: str, db: int) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{db}", parts.query, parts.fragment))


@pytest.fixture(scope="session", autouse=True)
def own_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """A data directory of the tests' own: a `connector dev` running from the repository (its
    ``.connector/dev.json``) is never picked up by a test."""
    before = os.environ.get("CONNECTOR_DATA_DIR")
    os.environ["CONNECTOR_DATA_DIR"] = str(tmp_path_factory.mktemp("data"))
    yield
    if before is None:
        os.environ.pop("CONNECTOR_DATA_DIR", None)
    else:
        os.environ["CONNECTOR_DATA_DIR"] = before


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    base = os.environ.get("REDIS_URL")
    if base:
        yield _with_db(base, TEST_DB)
        return
    from connector.dev.embedded_redis import EmbeddedRedis

    server = EmbeddedRedis(tmp_path_factory.mktemp("redis"), appendonly=False).start()
    os.environ["REDIS_URL"] = server.url
    try:
        yield _with_db(server.url, TEST_DB)
    finally:
        os.environ.pop("REDIS_URL", None)
        server.stop()


def fresh_runtime() -> None:
    """Forget the process runtime: the next use builds one from the environment as it is now (the
    entry points build theirs from settings); account files are looked at on every use."""
    runtime.uninstall()
    runtime.install_lazily(lambda: runtime.Runtime.from_settings(Settings.from_env(), check_seconds=0))


@pytest.fixture(autouse=True)
def process_runtime() -> Iterator[None]:
    """Each test's process runtime, built on first use from the environment the test set up."""
    fresh_runtime()
    yield
    runtime.uninstall()


@pytest.fixture
def redis_client(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    monkeypatch.setenv("REDIS_URL", redis_url)
    redis_conn.reset()
    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    yield client
    client.flushdb()
    client.close()
    redis_conn.reset()


@pytest.fixture
def vectors() -> list[dict[str, Any]]:
    return list(json.loads(VECTORS.read_text())["vectors"])


def vector(name: str) -> dict[str, Any]:
    for v in json.loads(VECTORS.read_text())["vectors"]:
        if v["name"] == name:
            return dict(v)
    raise KeyError(name)


# Secrets of the test accounts: the vectors' secrets, so that official vectors pass byte for byte.
ACME_ENV = {
    "ACME_SEGMENT_SECRET": "segment_shared_secret_123",
    "ACME_SEGMENT_SECRET_OLD": "segment_previous_secret_456",
    "ACME_WRITE_KEY": "acme-write-key-7f3a",
    "ACME_SHOPIFY_SECRET": "hush_shopify_client_secret",
    "ACME_SHOPIFY_SECRET_SDK": "test_secret_key",
    "ACME_KLAVIYO_SECRET": "klaviyo_secret_0123456789",
    "ACME_HUBSPOT_SECRET": "yyyyyyyy-yyyy-yyyy-yyyy-yyyyyyyyyyyy",
    "ACME_MAILCHIMP_TOKEN": "mc_url_secret_9f8e7d",
    "ACME_MANDRILL_KEY": "mandrill_webhook_key_abc123",
    "ACME_SW_SECRET": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
    "ACME_SW_SECRET_OLD": "whsec_b2xkLWtleS0wMTIzNDU2Nzg5YWJjZGVmZ2hpag==",
    "ACME_RUDDER_KEY": "rudder-static-key-42",
    "GLOBEX_SEGMENT_SECRET": "globex_segment_secret_999",
    "GLOBEX_WRITE_KEY": "globex-write-key-1b2c",
}

ACME = {
    "account": "acme",
    "senders": {
        "segment": {"secret_env": ["ACME_SEGMENT_SECRET", "ACME_SEGMENT_SECRET_OLD"]},
        "tracking": {"secret_env": "ACME_WRITE_KEY"},
        "shopify": {"secret_env": ["ACME_SHOPIFY_SECRET", "ACME_SHOPIFY_SECRET_SDK"]},
        "klaviyo": {"secret_env": "ACME_KLAVIYO_SECRET"},
        "hubspot": {"secret_env": "ACME_HUBSPOT_SECRET", "signature_versions": ["v3", "v2", "v1"]},
        "mailchimp": {"secret_env": "ACME_MAILCHIMP_TOKEN"},
        "mandrill": {"secret_env": "ACME_MANDRILL_KEY", "url": "https://hooks.example.com/webhooks/mandrill"},
        "standard_webhooks": {"secret_env": ["ACME_SW_SECRET", "ACME_SW_SECRET_OLD"]},
        "rudderstack": {"secret_env": "ACME_RUDDER_KEY", "header": "X-Signing-Key"},
    },
}

GLOBEX = {
    "account": "globex",
    "senders": {
        "segment": {"secret_env": "GLOBEX_SEGMENT_SECRET"},
        "tracking": {"secret_env": "GLOBEX_WRITE_KEY"},
    },
}


def write_accounts(directory: Path, *accounts: dict[str, Any]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for account in accounts:
        (directory / f"{account['account']}.yaml").write_text(yaml.safe_dump(account))
    return directory


@pytest.fixture
def config_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for key, value in ACME_ENV.items():
        monkeypatch.setenv(key, value)
    directory = write_accounts(tmp_path / "accounts", ACME, GLOBEX)
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    return directory


@pytest.fixture
def accounts(config_dir: Path) -> Accounts:
    return load_accounts(config_dir)


@pytest.fixture
def settings(redis_client: redis.Redis, redis_url: str, config_dir: Path) -> Settings:
    return Settings.from_env()


@pytest.fixture
def app(settings: Settings, accounts: Accounts):  # type: ignore[no-untyped-def]
    from connector.app import create_app

    application = create_app(runtime=runtime.current())
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


@pytest.fixture
def frozen_clock() -> Iterator[clock.FrozenClock]:
    with clock.frozen(FIXED_NOW) as frozen:
        yield frozen
