"""The three sandbox ESPs for bench/latency, in their own process, each behind a recorder.

The fakes' own request log (``GET /_sandbox/requests``) keeps time, method, path and status but not
which contact a request carried. The recorder, a WSGI layer in front of each fake, keeps for every
vendor request the wall-clock instant it arrived (``time.time()``, comparable with the sender's
clock on the same machine), the status answered and the contacts it names: e-mail addresses in the
path or body, and Mailchimp subscriber hashes (MD5 of the lower-cased address) in the path.
``GET /_bench/log`` returns them as ``[at, method, path, status, [emails], [hashes]]``.

Prints one JSON line (base URLs, list ids) on stdout once serving; runs until terminated.

    python bench/latency_fakes.py LIST_NAME...
"""

from __future__ import annotations

import io
import json
import re
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from connector.dev.sandbox import API_PREFIX, SANDBOX_MAILCHIMP_LIST, sandbox_fakes  # noqa: E402
from connector.dev.sandbox.process import klaviyo_list_id  # noqa: E402
from connector.dev.sandbox.server import ServerThread  # noqa: E402

EMAIL = re.compile(rb"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
HASH = re.compile(r"\b[0-9a-f]{32}\b")


class Recorder:
    def __init__(self, app: Callable[..., Iterable[bytes]]) -> None:
        self.app = app
        self.log: list[list[Any]] = []
        self.lock = threading.Lock()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/_bench/log":
            with self.lock:
                body = json.dumps(self.log).encode()
            start_response("200 OK", [("Content-Type", "application/json")])
            return [body]
        if path.startswith("/_sandbox/"):
            return self.app(environ, start_response)
        at = time.time()
        length = int(environ.get("CONTENT_LENGTH") or 0)
        raw = environ["wsgi.input"].read(length) if length else b""
        environ["wsgi.input"] = io.BytesIO(raw)
        status: list[int] = [0]

        def recording_start(line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = int(line.split(" ", 1)[0])
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)

        result = self.app(environ, recording_start)
        emails = sorted({m.decode().lower() for m in EMAIL.findall(raw + b" " + path.encode())})
        hashes = sorted(set(HASH.findall(path)))
        with self.lock:
            self.log.append([at, environ.get("REQUEST_METHOD"), path, status[0], emails, hashes])
        return result


def main() -> None:
    lists = sys.argv[1:]
    fakes = sandbox_fakes()
    list_ids: dict[str, dict[str, str]] = {}
    for name in lists:
        list_ids[name] = {
            "mailchimp": str(fakes["mailchimp"].add_segment(SANDBOX_MAILCHIMP_LIST, name).id),  # type: ignore[attr-defined]
            "hubspot": fakes["hubspot"].add_list(name).id,  # type: ignore[attr-defined]
            "klaviyo": fakes["klaviyo"].add_list(name, klaviyo_list_id(name)).id,  # type: ignore[attr-defined]
        }
    servers = {esp: ServerThread(Recorder(fake)).start() for esp, fake in fakes.items()}
    info = {
        "base_urls": {esp: s.url + API_PREFIX[esp] for esp, s in servers.items()},
        "urls": {esp: s.url for esp, s in servers.items()},
        "list_ids": list_ids,
    }
    print(json.dumps(info), flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    for server in servers.values():
        server.stop()


if __name__ == "__main__":
    main()
