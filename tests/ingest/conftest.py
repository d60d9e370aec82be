"""Fixtures of the ingest tests that send over real HTTP: the app served on a loopback port."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from connector.dev.sandbox.server import WSGIApp
from connector.dev.sandbox.server import serving as serving_thread


@contextmanager
def serving(wsgi: WSGIApp) -> Iterator[str]:
    """``wsgi`` served in a thread on an ephemeral loopback port (the sandbox's server): its base URL."""
    with serving_thread(wsgi) as server:
        yield server.url


@pytest.fixture
def tracking_server(app: Any) -> Iterator[str]:
    """The app (acme and globex accounts, a clean Redis) over HTTP: its base URL."""
    with serving(app) as base:
        yield base
