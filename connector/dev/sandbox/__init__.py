"""Fake Mailchimp, HubSpot and Klaviyo servers for tests and the local sandbox.

They follow the vendors' documented contracts (paths, auth, bodies, limits) and reject requests that break
them with the vendor's own error shape. State lives in memory; ``GET /_sandbox/state`` returns it.
"""

from __future__ import annotations

from typing import Any

from connector.dev.sandbox.base import FakeESP, Fault, Faults, RequestRecord
from connector.dev.sandbox.fake_hubspot import FakeHubSpot, HubSpotLimits
from connector.dev.sandbox.fake_klaviyo import FakeKlaviyo, Rate
from connector.dev.sandbox.fake_mailchimp import FakeMailchimp, MailchimpLimits, subscriber_hash
from connector.dev.sandbox.server import ServerThread, serving

# Credentials the sandbox fakes accept (they are not secrets: the fakes run on loopback only).
SANDBOX_MAILCHIMP_KEY = "sandbox-us1"
SANDBOX_MAILCHIMP_LIST = "sandbox"
SANDBOX_HUBSPOT_TOKEN = "pat-sandbox"
SANDBOX_KLAVIYO_KEY = "pk_sandbox"
DEFAULT_PORTS = {"mailchimp": 8901, "hubspot": 8902, "klaviyo": 8903}
API_PREFIX = {"mailchimp": "/3.0", "hubspot": "", "klaviyo": ""}


def sandbox_fakes(**kwargs: Any) -> dict[str, FakeESP]:
    """The three fakes configured as the sandbox serves them (documented limits enforced)."""
    return {
        # unknown merge fields are refused, as by Mailchimp: the adapter creates the ones it writes
        "mailchimp": FakeMailchimp(
            api_keys=[SANDBOX_MAILCHIMP_KEY], lists=[SANDBOX_MAILCHIMP_LIST], **kwargs
        ),
        "hubspot": FakeHubSpot(tokens=[SANDBOX_HUBSPOT_TOKEN], **kwargs),
        "klaviyo": FakeKlaviyo(api_keys=[SANDBOX_KLAVIYO_KEY], **kwargs),
    }


__all__ = [
    "API_PREFIX",
    "DEFAULT_PORTS",
    "SANDBOX_HUBSPOT_TOKEN",
    "SANDBOX_KLAVIYO_KEY",
    "SANDBOX_MAILCHIMP_KEY",
    "SANDBOX_MAILCHIMP_LIST",
    "FakeESP",
    "FakeHubSpot",
    "FakeKlaviyo",
    "FakeMailchimp",
    "Fault",
    "Faults",
    "HubSpotLimits",
    "MailchimpLimits",
    "Rate",
    "RequestRecord",
    "ServerThread",
    "sandbox_fakes",
    "serving",
    "subscriber_hash",
]
