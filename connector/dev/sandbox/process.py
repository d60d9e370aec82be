"""The sandbox as one process: the three fakes on fixed loopback ports, lists created up front with
stable ids, and the account-file snippet that points the destinations at them.

``connector sandbox serve`` runs it; ``connector sandbox show`` reads ``/_sandbox/state`` of each.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx

from connector.dev.sandbox import (
    API_PREFIX,
    DEFAULT_PORTS,
    SANDBOX_HUBSPOT_TOKEN,
    SANDBOX_KLAVIYO_KEY,
    SANDBOX_MAILCHIMP_KEY,
    SANDBOX_MAILCHIMP_LIST,
    sandbox_fakes,
)
from connector.dev.sandbox.fake_hubspot import FakeHubSpot
from connector.dev.sandbox.fake_klaviyo import FakeKlaviyo
from connector.dev.sandbox.fake_mailchimp import FakeMailchimp
from connector.dev.sandbox.server import ServerThread

ENV = {
    "SANDBOX_MAILCHIMP_KEY": SANDBOX_MAILCHIMP_KEY,
    "SANDBOX_HUBSPOT_TOKEN": SANDBOX_HUBSPOT_TOKEN,
    "SANDBOX_KLAVIYO_KEY": SANDBOX_KLAVIYO_KEY,
}


def klaviyo_list_id(name: str) -> str:
    """A stable Klaviyo-style list id for a sandbox list name."""
    return "SB" + hashlib.sha256(name.encode()).hexdigest()[:4].upper()


@dataclass
class Sandbox:
    host: str
    servers: dict[str, ServerThread] = field(default_factory=dict)
    fakes: dict[str, Any] = field(default_factory=dict)
    list_ids: dict[str, dict[str, str]] = field(default_factory=dict)  # list name → esp → id

    def base_url(self, esp: str) -> str:
        return self.servers[esp].url + API_PREFIX[esp]

    def stop(self) -> None:
        for server in self.servers.values():
            server.stop()

    def destinations(self) -> dict[str, Any]:
        """The ``destinations:`` block of an account file that uses this sandbox: each segment as a
        tag, and on HubSpot and Klaviyo as a list too. On Mailchimp a tag is a static segment of
        the audience, so the segment's tag is its list there: mapping both would write every change
        twice to one object. Each destination says ``sandbox: true``: its base_url is a loopback
        fake, not the vendor."""
        segments: dict[str, dict[str, dict[str, list[str]]]] = {"mailchimp": {}, "hubspot": {}, "klaviyo": {}}
        for name, ids in self.list_ids.items():
            for esp, list_id in ids.items():
                segments[esp][name] = (
                    {"tags": [name]} if esp == "mailchimp" else {"tags": [name], "lists": [list_id]}
                )
        return {
            "mailchimp": {
                "api_key_env": "SANDBOX_MAILCHIMP_KEY",
                "base_url": self.base_url("mailchimp"),
                "sandbox": True,
                "list_id": SANDBOX_MAILCHIMP_LIST,
                "segments": segments["mailchimp"],
            },
            "hubspot": {
                "api_key_env": "SANDBOX_HUBSPOT_TOKEN",
                "base_url": self.base_url("hubspot"),
                "sandbox": True,
                "segments": segments["hubspot"],
            },
            "klaviyo": {
                "api_key_env": "SANDBOX_KLAVIYO_KEY",
                "base_url": self.base_url("klaviyo"),
                "sandbox": True,
                "segments": segments["klaviyo"],
            },
        }


def start_sandbox(
    host: str = "127.0.0.1", ports: dict[str, int] | None = None, lists: Iterable[str] = ()
) -> Sandbox:
    """Start the three fakes (documented limits enforced) and create ``lists`` in each."""
    ports = {**DEFAULT_PORTS, **(ports or {})}
    fakes = sandbox_fakes()
    sandbox = Sandbox(host=host, fakes=fakes)
    mailchimp, hubspot, klaviyo = fakes["mailchimp"], fakes["hubspot"], fakes["klaviyo"]
    assert isinstance(mailchimp, FakeMailchimp)
    assert isinstance(hubspot, FakeHubSpot)
    assert isinstance(klaviyo, FakeKlaviyo)
    for name in lists:
        sandbox.list_ids[name] = {
            "mailchimp": str(mailchimp.add_segment(SANDBOX_MAILCHIMP_LIST, name).id),
            "hubspot": hubspot.add_list(name).id,
            "klaviyo": klaviyo.add_list(name, klaviyo_list_id(name)).id,
        }
    try:
        for esp, fake in fakes.items():
            sandbox.servers[esp] = ServerThread(fake, host, ports[esp]).start()
    except OSError:
        sandbox.stop()
        raise
    return sandbox


def fetch_state(url: str, timeout: float = 5.0) -> dict[str, Any]:
    """``GET {url}/_sandbox/state`` of one running fake (``url`` without the API prefix)."""
    response = httpx.get(url.rstrip("/") + "/_sandbox/state", timeout=timeout)
    response.raise_for_status()
    data = response.json()
    if not isinstance(data, dict):
        raise ValueError("unexpected sandbox state")
    return data
