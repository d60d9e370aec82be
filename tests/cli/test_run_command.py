"""``connector dev`` as a user runs it: embedded Redis started and stopped cleanly, a signed event
accepted and stored durably (it is still there after the embedded Redis restarts)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from connector.dev.embedded_redis import EmbeddedRedis

CONNECTOR = str(Path(sys.executable).parent / "connector")
BODY = json.dumps(
    {
        "type": "track",
        "event": "Product Viewed",
        "userId": "user-run-1",
        "messageId": "run-command-msg-1",
        "timestamp": "2024-01-01T00:00:00Z",
        "properties": {"product_id": "sku-1", "email": "jane@example.com"},
    }
).encode()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie (exited, not yet reaped) counts as gone
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


def wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"connector dev exited early with {proc.returncode}")
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("connector dev did not become ready")


@pytest.fixture
def dev_env(tmp_path: Path) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("REDIS_URL", "CONNECTOR_", "DEMO_")) and k != "PORT"
    }
    env["CONNECTOR_DATA_DIR"] = str(tmp_path / "data")
    return env


def start_dev(
    env: dict[str, str], cwd: Path, output: int = subprocess.PIPE
) -> tuple[subprocess.Popen[bytes], str, str]:
    """``connector dev`` on free ports, in its own process group (like a terminal's foreground
    job): the process, its web URL and its sandbox ports."""
    port = free_port()
    sandbox = ",".join(str(free_port()) for _ in range(3))
    proc = subprocess.Popen(
        [CONNECTOR, "dev", "--port", str(port), "--sandbox-ports", sandbox],
        env=env,
        cwd=cwd,
        stdout=output,
        stderr=subprocess.STDOUT if output == subprocess.PIPE else output,
        start_new_session=True,
    )
    return proc, f"http://127.0.0.1:{port}", sandbox


@pytest.fixture
def dev(dev_env: dict[str, str], tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    proc, base, sandbox = start_dev(dev_env, tmp_path)
    dev_env["TEST_SANDBOX_PORTS"] = sandbox  # for the test to read the fakes
    try:
        yield proc, base
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_dev_runs_accepts_a_signed_event_and_stops_cleanly(dev, dev_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    proc, base = dev
    data = Path(dev_env["CONNECTOR_DATA_DIR"])
    wait_ready(base, proc)

    redis_url = json.loads((data / "dev.json").read_text())["redis_url"]
    assert (data / "dev.json").stat().st_mode & 0o077 == 0  # may hold a Redis password
    assert (data / "dev.env").stat().st_mode & 0o077 == 0  # secrets file readable by its owner only
    redis_pid = int(redis.Redis.from_url(redis_url).info("server")["process_id"])

    # sign with the generated secret, as the README shows
    (tmp_path / "event.json").write_bytes(BODY)
    signed = subprocess.run(
        [CONNECTOR, "sign", "segment", "event.json"],
        env=dev_env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    headers = dict(line.split(": ", 1) for line in signed.stdout.decode().splitlines())
    assert set(headers) == {"X-Signature", "Content-Type"}

    res = httpx.post(f"{base}/webhooks/demo/segment", content=BODY, headers=headers)
    assert res.status_code == 200, res.text
    assert res.json() == {"status": "accepted", "accepted": 1, "duplicates": 0}
    res = httpx.post(f"{base}/webhooks/demo/segment", content=BODY, headers=headers)
    assert res.json()["status"] == "duplicate"
    metrics = httpx.get(f"{base}/metrics").text
    assert 'connector_ingest_events_total{account="demo",outcome="accepted"} 1' in metrics
    assert 'connector_ingest_events_total{account="demo",outcome="duplicate"} 1' in metrics

    # Ctrl-C: the terminal sends SIGINT to the whole foreground process group
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0, output.decode()
    assert b"embedded redis stopped" in output
    assert b"Traceback" not in output, output.decode()
    assert not pid_alive(redis_pid)
    assert not (data / "dev.json").exists()
    assert (data / "redis" / "appendonlydir").is_dir() or (data / "redis" / "appendonly.aof").is_file()

    # durability: the same data dir, a new embedded Redis, the acknowledged event is still there
    with EmbeddedRedis(data / "redis") as server:
        conn = redis.Redis.from_url(server.url)
        assert conn.hget("metrics:ingest", "accepted:demo") == b"1"
        assert len(list(conn.scan_iter("dd:demo:*"))) == 1
        conn.close()


def test_dev_refuses_to_start_on_an_invalid_account_file(dev_env, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    accounts = tmp_path / "accounts"
    accounts.mkdir()
    (accounts / "broken.yaml").write_text("account: broken\nsenders:\n  segment:\n    secret_env: 12\n")
    env = {**dev_env, "CONNECTOR_CONFIG_DIR": str(accounts)}
    done = subprocess.run(
        [CONNECTOR, "dev", "--port", str(free_port())],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert b"broken.yaml" in done.stderr
    assert b"Traceback" not in done.stderr
    assert not (Path(dev_env["CONNECTOR_DATA_DIR"]) / "dev.json").exists()


def _post_signed(base: str, body: dict[str, object], dev_env: dict[str, str], tmp_path: Path) -> None:
    """Sign with ``connector sign`` and post, as the README's walk-through does."""
    raw = json.dumps(body).encode()
    (tmp_path / "body.json").write_bytes(raw)
    signed = subprocess.run(
        [CONNECTOR, "sign", "segment", "body.json"],
        env=dev_env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    headers = dict(line.split(": ", 1) for line in signed.stdout.decode().splitlines())
    res = httpx.post(f"{base}/webhooks/demo/segment", content=raw, headers=headers)
    assert res.status_code == 200, res.text
    assert res.json()["accepted"] == 1


def _sandbox(dev_env: dict[str, str], tmp_path: Path) -> dict[str, dict[str, object]]:
    mc, hs, kl = dev_env["TEST_SANDBOX_PORTS"].split(",")
    shown = subprocess.run(
        [
            CONNECTOR,
            "sandbox",
            "show",
            "--json",
            "--mailchimp-port",
            mc,
            "--hubspot-port",
            hs,
            "--klaviyo-port",
            kl,
        ],
        env=dev_env,
        cwd=tmp_path,
        capture_output=True,
        check=True,
    )
    state: dict[str, dict[str, object]] = json.loads(shown.stdout)
    return state


def _memberships(state: dict[str, dict[str, object]], email: str) -> dict[str, object]:
    """What each fake holds for one person: Mailchimp tags, HubSpot and Klaviyo list names."""
    [audience] = state["mailchimp"]["lists"].values()  # type: ignore[attr-defined]
    member = audience["members"].get(email, {})
    contact = state["hubspot"]["contacts"].get(email, {})  # type: ignore[attr-defined]
    profile = state["klaviyo"]["profiles"].get(email, {})  # type: ignore[attr-defined]
    return {
        "mailchimp_tags": sorted(member.get("tags", [])),
        "hubspot_lists": sorted(contact.get("lists", [])),
        "klaviyo_lists": sorted(profile.get("lists", [])),
    }


def _until(check, proc: subprocess.Popen[bytes], timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Poll the running service until ``check()`` returns a truthy value (the work is asynchronous)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        assert proc.poll() is None, "connector dev exited"
        last = check()
        if last:
            return last
        time.sleep(0.2)
    raise AssertionError(f"not reached within {timeout}s; last: {last}")


def test_dev_walkthrough_cart_abandoner_reaches_the_sandbox_esps_and_leaves_them(
    dev, dev_env, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """The README's sandbox walk-through against the running service (web, worker, scheduler, sync,
    fake ESPs). The add-to-cart is sent 48 hours and one minute after it happened, so its window
    has already closed: the person enters at once instead of a minute later."""
    from datetime import UTC, datetime, timedelta

    proc, base = dev
    wait_ready(base, proc)
    email = "sam.lee@example.com"
    added = datetime.now(UTC) - timedelta(hours=48, minutes=1)
    traits = {"traits": {"email": email}}
    cart = {
        "type": "track",
        "event": "Product Added",
        "userId": "user-2002",
        "messageId": "cart-2002-1",
        "timestamp": added.isoformat(),
        "context": traits,
        "properties": {"product_id": "sku-1", "price": 25.0},
    }
    _post_signed(base, cart, dev_env, tmp_path)
    inside = {
        "mailchimp_tags": ["cart_abandoner"],
        "hubspot_lists": ["cart_abandoner"],
        "klaviyo_lists": ["cart_abandoner"],
    }
    _until(lambda: _memberships(_sandbox(dev_env, tmp_path), email) == inside, proc)

    order = {
        "type": "track",
        "event": "Order Completed",
        "userId": "user-2002",
        "messageId": "order-2002-1",
        "context": traits,
        "properties": {"order_id": "A-2002", "revenue": 25.0, "currency": "EUR"},
    }
    _post_signed(base, order, dev_env, tmp_path)
    outside = {"mailchimp_tags": [], "hubspot_lists": [], "klaviyo_lists": []}
    _until(lambda: _memberships(_sandbox(dev_env, tmp_path), email) == outside, proc)
    state = _sandbox(dev_env, tmp_path)
    [audience] = state["mailchimp"]["lists"].values()  # type: ignore[attr-defined]
    assert audience["members"][email]["status"] != "subscribed"  # no marketing consent was given
    os.killpg(proc.pid, signal.SIGINT)
    output, _ = proc.communicate(timeout=60)
    assert proc.returncode == 0 and b"Traceback" not in output, output.decode()
