"""Open-loop load generator for bench/ingest: sends requests at a fixed rate, whatever the answers.

Request i is due at ``start + i / rate``; its latency is measured from that intended instant (not
from when it was actually sent), so a stalled server or generator cannot hide queueing delay
(no coordinated omission). Every request uses its own connection, as gunicorn's sync workers close
the connection after each response. The generator's own overhead is reported as the lag between a
request's intended and actual send instant.

Usage: python bench/openloop.py HOST PORT PATH BODIES_FILE RATE SECONDS  (prints one JSON object)
"""

from __future__ import annotations

import errno
import json
import selectors
import socket
import sys
import time


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def load_requests(path: str, host: str, port: int, target: str) -> list[bytes]:
    requests = []
    with open(path, "rb") as fh:
        for line in fh:
            sig, _, body = line.rstrip(b"\n").partition(b"\t")
            head = (
                f"POST {target} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"X-Signature: {sig.decode()}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            ).encode()
            requests.append(head + body)
    return requests


def run(host: str, port: int, requests: list[bytes], rate: float, seconds: float) -> dict[str, float]:
    """One epoll loop, non-blocking sockets: far cheaper per request than asyncio streams."""
    total = int(rate * seconds)
    latency: list[float] = []
    errors: list[float] = []
    lag: list[float] = []
    sel = selectors.DefaultSelector()
    addr = (host, port)
    start = time.perf_counter() + 0.05
    sent = 0
    open_count = 0
    head: dict[int, bytes] = {}

    def finish(sock: socket.socket, due: float, ok: bool) -> None:
        nonlocal open_count
        sel.unregister(sock)
        sock.close()
        head.pop(id(sock), None)
        open_count -= 1
        (latency if ok else errors).append(time.perf_counter() - due)

    while sent < total or open_count:
        now = time.perf_counter()
        while sent < total and start + sent / rate <= now:
            due = start + sent / rate
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setblocking(False)
            lag.append(time.perf_counter() - due)
            err = sock.connect_ex(addr)
            if err not in (0, errno.EINPROGRESS):
                sock.close()
                errors.append(time.perf_counter() - due)
            else:
                sel.register(sock, selectors.EVENT_WRITE, (due, requests[sent % len(requests)]))
                open_count += 1
            sent += 1
        timeout = max(0.0, start + sent / rate - time.perf_counter()) if sent < total else 1.0
        for key, mask in sel.select(timeout):
            sock = key.fileobj  # type: ignore[assignment]
            due, payload = key.data
            try:
                if mask & selectors.EVENT_WRITE and payload is not None:
                    sock.send(payload)
                    sel.modify(sock, selectors.EVENT_READ, (due, None))
                    continue
                chunk = sock.recv(65536)
            except OSError:
                finish(sock, due, False)
                continue
            if chunk:
                head.setdefault(id(sock), chunk[:16])
            else:
                finish(sock, due, head.get(id(sock), b"")[9:12] == b"200")
        if time.perf_counter() > start + seconds + 30:
            break  # whatever is still open counts as an error
    errors.extend([float("inf")] * open_count)
    elapsed = time.perf_counter() - start
    return {
        "target_rate": rate,
        "sent": total,
        "ok": len(latency),
        "errors": len(errors),
        "achieved_rate": round(len(latency) / elapsed, 1),
        "p50_ms": round(percentile(latency, 0.50) * 1000, 2),
        "p99_ms": round(percentile(latency, 0.99) * 1000, 2),
        "max_ms": round(max(latency, default=float("nan")) * 1000, 2),
        "send_lag_p50_ms": round(percentile(lag, 0.50) * 1000, 2),
        "send_lag_p99_ms": round(percentile(lag, 0.99) * 1000, 2),
    }


def main() -> None:
    host, port, target, bodies, rate, seconds = sys.argv[1:7]
    requests = load_requests(bodies, host, int(port), target)
    result = run(host, int(port), requests, float(rate), float(seconds))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
