"""Serve a fake ESP (any WSGI app) on loopback: in a background thread for tests, or all three fakes
in the foreground for ``connector sandbox serve``."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server

log = logging.getLogger(__name__)

WSGIApp = Callable[..., Any]


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        log.debug("sandbox request", extra={"request_line": self.requestline, "status": str(code)})


class ServerThread:
    """A threaded werkzeug server on ``host:port`` (port 0 picks a free one) in a daemon thread."""

    def __init__(self, app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server(
            host, port, app, threaded=True, request_handler=_QuietHandler
        )
        self.thread = threading.Thread(target=self.server.serve_forever, name="sandbox-server", daemon=True)

    @property
    def port(self) -> int:
        return int(self.server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.port}"

    def start(self) -> ServerThread:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextmanager
def serving(app: WSGIApp, host: str = "127.0.0.1", port: int = 0) -> Iterator[ServerThread]:
    with ServerThread(app, host, port) as server:
        yield server


@dataclass
class Running:
    name: str
    server: ServerThread
    base_url: str  # what an adapter uses as its API base URL


def serve_all(
    apps: dict[str, WSGIApp],
    ports: dict[str, int],
    host: str = "127.0.0.1",
    prefixes: dict[str, str] | None = None,
) -> list[Running]:
    """Start each app on its port; the caller stops them (``server.stop()``)."""
    running = []
    for name, app in apps.items():
        server = ServerThread(app, host, ports.get(name, 0)).start()
        running.append(Running(name, server, server.url + (prefixes or {}).get(name, "")))
    return running
