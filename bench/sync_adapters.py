"""Requests and simulated time for N contacts entering one segment, per ESP, against the sandbox
fakes with their documented limits enforced (simulated clock shared by fakes and adapters).

    .venv/bin/python bench/sync_adapters.py --contacts 10000

Reports, per ESP: requests made, the minimum the batch limits allow, 429s received, simulated
time, and simulated time against the rate-limit ceiling (requests ÷ allowed rate). Uses Redis db
CONNECTOR_BENCH_REDIS_DB (default 5) of REDIS_URL for the shared rate limiter.
"""

from __future__ import annotations

import argparse
import math
import os
from datetime import UTC, datetime

import redis

from adapters.change import Change, OwnedState
from adapters.hubspot import HubSpotAdapter, HubSpotConfig
from adapters.klaviyo import KlaviyoAdapter, KlaviyoConfig
from adapters.mailchimp import MailchimpAdapter, MailchimpConfig
from adapters.ratelimit import RateLimiter
from connector import clock
from connector.dev.sandbox import (
    SANDBOX_HUBSPOT_TOKEN,
    SANDBOX_KLAVIYO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_MAILCHIMP_LIST,
    sandbox_fakes,
    serving,
)


class SimClock:
    def __init__(self) -> None:
        self.t = datetime(2024, 1, 1, tzinfo=UTC).timestamp()

    def __call__(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.t += seconds

    def now(self) -> datetime:
        return datetime.fromtimestamp(self.t, UTC)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--contacts", type=int, default=10_000)
    args = parser.parse_args()
    n = args.contacts
    base = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0]
    conn = redis.Redis.from_url(f"{base}/{os.environ.get('CONNECTOR_BENCH_REDIS_DB', '5')}")
    conn.flushdb()
    sim = SimClock()
    fakes = sandbox_fakes(clock=sim.now)
    limiter = RateLimiter(conn, clock=sim, sleep=sim.sleep)
    rows = []
    with serving(fakes["mailchimp"]) as mc, serving(fakes["hubspot"]) as hs, serving(fakes["klaviyo"]) as kl:
        kw = {"limiter": limiter, "clock": sim, "sleep": sim.sleep}
        adapters = {
            "mailchimp": MailchimpAdapter(
                MailchimpConfig(SANDBOX_MAILCHIMP_KEY, SANDBOX_MAILCHIMP_LIST, base_url=mc.url + "/3.0"), **kw
            ),
            "hubspot": HubSpotAdapter(
                HubSpotConfig(SANDBOX_HUBSPOT_TOKEN, base_url=hs.url, preserve_unowned_tags=False), **kw
            ),
            "klaviyo": KlaviyoAdapter(KlaviyoConfig(SANDBOX_KLAVIYO_KEY, base_url=kl.url), **kw),
        }
        lists = _lists(adapters)
        for name, adapter in adapters.items():
            setup = len(fakes[name].requests)
            tags = frozenset() if name == "klaviyo" else frozenset({"cart abandoner"})
            changes = [
                Change(
                    "bench", name, f"p{i}", 1, f"c{i}@example.com", tags=tags, lists=frozenset({lists[name]})
                )
                for i in range(n)
            ]
            started_sim, started = sim.t, clock.monotonic()
            failed = 0
            for i in range(0, n, adapter.batch_size):
                chunk = changes[i : i + adapter.batch_size]
                results = adapter.apply(chunk, {c.profile_id: OwnedState() for c in chunk})
                failed += sum(1 for r in results if r.status != "applied")
            requests = fakes[name].requests[setup:]
            minimum, rate = _minimum(name, n)
            simulated = sim.t - started_sim
            ceiling = len(requests) / rate if rate else 0.0
            rows.append(
                (
                    name,
                    len(requests),
                    minimum,
                    sum(1 for r in requests if r.status == 429),
                    failed,
                    simulated,
                    ceiling,
                    clock.monotonic() - started,
                )
            )
    print("| ESP | requests | minimum | ratio | 429s | failed | simulated s | ceiling s | wall s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, req, minimum, throttled, failed, simulated, ceiling, wall in rows:
        cells = [name, req, minimum, f"{req / minimum:.2f}", throttled, failed]
        cells += [f"{simulated:.1f}", f"{ceiling:.1f}", f"{wall:.1f}"]
        print("| " + " | ".join(str(c) for c in cells) + " |")


def _minimum(name: str, n: int) -> tuple[int, float]:
    """The fewest requests the batch limits allow, and the binding rate (requests per second)."""
    if name == "mailchimp":
        return 2 * math.ceil(n / 500), 0.0  # batch subscribe (tags) + static segment, 500 each
    if name == "hubspot":
        return math.ceil(n / 100) + math.ceil(n / 1000), 10.0  # upserts + list calls; 100 per 10 s
    return math.ceil(n / 10_000), 10.0  # one bulk import job per 10,000 (with the list)


def _lists(adapters: dict[str, object]) -> dict[str, str]:
    mc = adapters["mailchimp"].client  # type: ignore[attr-defined]
    seg = mc.request(
        "POST", f"/lists/{SANDBOX_MAILCHIMP_LIST}/segments", json={"name": "L", "static_segment": []}
    )
    hs = adapters["hubspot"].client  # type: ignore[attr-defined]
    lst = hs.request(
        "POST", "/crm/v3/lists/", json={"name": "L", "objectTypeId": "0-1", "processingType": "MANUAL"}
    )
    kl = adapters["klaviyo"].client  # type: ignore[attr-defined]
    kls = kl.request("POST", "/api/lists", json={"data": {"type": "list", "attributes": {"name": "L"}}})
    return {
        "mailchimp": str(seg.json()["id"]),
        "hubspot": str(lst.json()["list"]["listId"]),
        "klaviyo": str(kls.json()["data"]["id"]),
    }


if __name__ == "__main__":
    main()
