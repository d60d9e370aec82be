"""What adapters receive (DESIGN.md §3): the desired state of one contact on one destination."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

CONSENT_SUBSCRIBED = "subscribed"
CONSENT_UNSUBSCRIBED = "unsubscribed"
CONSENT_UNKNOWN = "unknown"


@dataclass(frozen=True)
class Change:
    """Desired state, not commands: the full set of connector-owned tags, lists and fields.

    ``version`` increases with every change of the profile; an adapter or the sync worker never
    applies a change older than the last one applied for that contact and destination.
    """

    account: str
    destination: str  # the destination's name in the account file (e.g. "mailchimp")
    profile_id: str
    version: int
    email: str | None
    tags: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    fields: Mapping[str, Any] = field(default_factory=dict)
    consent: str = CONSENT_UNKNOWN
    identities: Mapping[str, str] = field(default_factory=dict)
    erase: bool = False  # the person was erased: ask the ESP to delete them
