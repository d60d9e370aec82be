"""A body the server cannot decode (invalid chunked framing, a connection cut mid-body) is a 400
JSON answer naming the problem, before any authentication, on every receiving route: never a 500."""

from __future__ import annotations

import io
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gunicorn.http.errors import ChunkMissingTerminator, InvalidChunkSize, NoMoreData

from tests.conftest import ACME_ENV

ROUTES = [
    "/webhooks/acme/segment",
    "/webhooks/nosuch/shopify",
    "/webhooks/acme/mailchimp",
    "/v1/track",
    "/v1/batch",
]


class Failing(io.RawIOBase):
    """A wsgi.input whose read raises what the server raises for a body it cannot decode."""

    def __init__(self, error: Exception) -> None:
        self.error = error

    def read(self, size: int = -1) -> bytes:  # type: ignore[override]
        raise self.error


def call(app, path: str, stream: object, extra: dict[str, str]) -> tuple[str, bytes]:  # type: ignore[no-untyped-def]
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": path,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "HTTP_HOST": "127.0.0.1:8000",
        "CONTENT_TYPE": "application/json",
        "wsgi.url_scheme": "http",
        "wsgi.input": stream,
        "wsgi.errors": io.StringIO(),
        **extra,
    }
    seen: dict[str, str] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: object = None) -> None:
        seen["status"] = status

    out = b"".join(app.wsgi_app(environ, start_response))
    return seen["status"], out


@pytest.mark.parametrize(
    "error",
    [InvalidChunkSize(io.BytesIO(b"ZZ")), ChunkMissingTerminator(b"xx"), NoMoreData(b""), OSError("reset"),
     ValueError("I/O operation on closed file")],
    ids=lambda e: type(e).__name__,
)  # fmt: skip
def test_unreadable_body_is_400_on_every_route(app, redis_client, error: Exception) -> None:  # type: ignore[no-untyped-def]
    for path in ROUTES:
        for extra in ({"wsgi.input_terminated": True}, {"CONTENT_LENGTH": "10"}):
            status, out = call(app, path, Failing(error), extra)  # type: ignore[arg-type]
            assert status.startswith("400"), (path, status, out)
            answer = json.loads(out)
            assert answer["error"] == "malformed_payload"
            assert "could not be read" in answer["message"] and type(error).__name__ in answer["message"]
    assert redis_client.keys("q:events:*") == []


# --- the same through a real gunicorn and a raw socket -----------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def gunicorn_url(settings, tmp_path: Path) -> Iterator[tuple[str, int]]:  # type: ignore[no-untyped-def]
    port = _free_port()
    env = {
        **os.environ,
        **ACME_ENV,
        "REDIS_URL": settings.queue_redis_url,
        "CONNECTOR_CONFIG_DIR": str(settings.config_dir),
        "CONNECTOR_BIND": f"127.0.0.1:{port}",
        "WEB_CONCURRENCY": "1",
    }
    bin_dir = Path(sys.executable).parent
    log = (tmp_path / "gunicorn.log").open("wb")
    proc = subprocess.Popen(
        [
            str(bin_dir / "gunicorn"),
            "--config",
            "python:connector.ops.gunicorn_conf",
            "connector.app:create_app()",
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError((tmp_path / "gunicorn.log").read_text()) from None
                time.sleep(0.05)
        yield "127.0.0.1", port
    finally:
        proc.terminate()
        proc.wait(10)
        log.close()


def raw(address: tuple[str, int], request: bytes) -> bytes:
    with socket.create_connection(address, timeout=10) as s:
        s.sendall(request)
        out = b""
        while chunk := s.recv(65536):
            out += chunk
    return out


def test_invalid_chunked_body_through_gunicorn_is_400_json(gunicorn_url, redis_client) -> None:  # type: ignore[no-untyped-def]
    for path in ROUTES:
        for framing in (b"ZZ\r\nabc\r\n0\r\n\r\n", b"3\r\nabcXY0\r\n\r\n", b"5\r\nab"):
            request = (
                b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"Transfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n" + framing
            )
            if framing == b"5\r\nab":  # the client stops sending: half-close so the server sees the end
                with socket.create_connection(gunicorn_url, timeout=10) as s:
                    s.sendall(request)
                    s.shutdown(socket.SHUT_WR)
                    out = b""
                    while chunk := s.recv(65536):
                        out += chunk
            else:
                out = raw(gunicorn_url, request)
            head, _, body = out.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 400"), (path, framing, out[:300])
            assert b"application/json" in head.lower()
            assert json.loads(body)["error"] == "malformed_payload", body
    assert redis_client.keys("q:events:*") == []


# --- no event carries a number that is not finite -------------------------------------------


def test_event_with_a_non_finite_number_is_never_encoded_nor_queued(app, accounts, redis_client) -> None:  # type: ignore[no-untyped-def]
    from connector.errors import MalformedPayload
    from connector.event import Event
    from connector.ingest.web import accepted_answer
    from tests.conftest import FIXED_NOW

    for value in (float("inf"), float("-inf"), float("nan")):
        event = Event(
            account="acme", source="shopify", source_event_id=f"x{value}", type="track",
            name="order_completed", original_name="orders/create", occurred_at=FIXED_NOW,
            received_at=FIXED_NOW, identities={"email": "a@example.com"}, properties={"revenue": value},
            traits={}, raw={},
        )  # fmt: skip
        with pytest.raises(ValueError):
            event.to_json()
        with pytest.raises(MalformedPayload, match="not finite"):
            app.wsgi_app.accept(accounts.get("acme"), [event], accepted_answer)
    assert redis_client.keys("q:events:*") == []
