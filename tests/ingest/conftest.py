"""Fixtures of the ingest tests that send over real HTTP: the app served on a loopback port."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from werkzeug.serving import make_server

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


@contextmanager
def serving(wsgi: WSGIApp) -> Iterator[str]:
    """``wsgi`` served by werkzeug in a thread on an ephemeral loopback port: its base URL."""
    http = make_server("127.0.0.1", 0, wsgi, threaded=True)
    thread = threading.Thread(target=http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{http.server_port}"
    finally:
        http.shutdown()
        thread.join(5)
        http.server_close()


@pytest.fixture
def tracking_server(app: Any) -> Iterator[str]:
    """The app (acme and globex accounts, a clean Redis) over HTTP: its base URL."""
    with serving(app) as base:
        yield base
