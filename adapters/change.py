"""What adapters receive (DESIGN.md §3): the desired state of one contact on one destination."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    # the person's other addresses, deleted too on erasure (a profile may have had several)
    erase_emails: tuple[str, ...] = ()
    # the person's addresses other than ``email``: when the contact's state was applied under one of
    # them (an email change, a merge), the connector's tags and lists are taken off that contact
    other_emails: tuple[str, ...] = ()
    # The account's segment names behind this state (Klaviyo "Segment Entered/Exited" events).
    segments: frozenset[str] = frozenset()

    def to_dict(self) -> dict[str, Any]:
        return {
            "account": self.account,
            "destination": self.destination,
            "profile_id": self.profile_id,
            "version": self.version,
            "email": self.email,
            "tags": sorted(self.tags),
            "lists": sorted(self.lists),
            "fields": dict(self.fields),
            "consent": self.consent,
            "identities": dict(self.identities),
            "erase": self.erase,
            "segments": sorted(self.segments),
            **({"erase_emails": list(self.erase_emails)} if self.erase_emails else {}),
            **({"other_emails": list(self.other_emails)} if self.other_emails else {}),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Change:
        return cls(
            account=str(data["account"]),
            destination=str(data["destination"]),
            profile_id=str(data["profile_id"]),
            version=int(data["version"]),
            email=data.get("email"),
            tags=frozenset(data.get("tags", ())),
            lists=frozenset(str(x) for x in data.get("lists", ())),
            fields=dict(data.get("fields", {})),
            consent=str(data.get("consent", CONSENT_UNKNOWN)),
            identities=dict(data.get("identities", {})),
            erase=bool(data.get("erase", False)),
            segments=frozenset(data.get("segments", ())),
            erase_emails=tuple(str(e) for e in data.get("erase_emails", ())),
            other_emails=tuple(str(e) for e in data.get("other_emails", ())),
        )


@dataclass(frozen=True)
class OwnedState:
    """What the connector itself set on one contact of one destination (the ownership ledger).

    Only these tags, lists and fields are ever removed; anything else on the contact is left alone.
    ``remote_id`` caches the ESP's id of the contact (HubSpot record id, Klaviyo profile id).
    """

    tags: frozenset[str] = frozenset()
    lists: frozenset[str] = frozenset()
    fields: frozenset[str] = frozenset()
    segments: frozenset[str] = frozenset()
    remote_id: str | None = None
    # which address the state was applied under (``connector.sync.keys.contact_key``); None: not
    # known (a ledger written before it was kept)
    email_key: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "tags": sorted(self.tags),
            "lists": sorted(self.lists),
            "fields": sorted(self.fields),
            "segments": sorted(self.segments),
            "remote_id": self.remote_id,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> OwnedState:
        if not data:
            return cls()
        return cls(
            tags=frozenset(data.get("tags", ())),
            lists=frozenset(str(x) for x in data.get("lists", ())),
            fields=frozenset(data.get("fields", ())),
            segments=frozenset(data.get("segments", ())),
            remote_id=data.get("remote_id"),
        )

    @classmethod
    def of(cls, change: Change, remote_id: str | None = None) -> OwnedState:
        """The ledger after ``change`` was applied."""
        return cls(
            tags=change.tags,
            lists=change.lists,
            fields=frozenset(k for k, v in change.fields.items() if v is not None),
            segments=change.segments,
            remote_id=remote_id,
        )


class Moves:
    """What one batch's calls confirmed per contact, to tell the sync worker how far a failed change
    got (:meth:`partial`): the list calls the ESP confirmed."""

    def __init__(self) -> None:
        self.joined: dict[str, set[str]] = {}
        self.left: dict[str, set[str]] = {}

    def record(self, change: Change, list_id: str, joining: bool) -> None:
        (self.joined if joining else self.left).setdefault(change.profile_id, set()).add(list_id)

    def partial(
        self,
        before: OwnedState,
        change: Change,
        *,
        written: bool,
        tags_kept: Iterable[str] = (),
        remote_id: str | None = None,
    ) -> OwnedState | None:
        """The ledger after ``change`` failed part way, or None when nothing of it took effect.

        ``written``: the ESP confirmed the contact's write (its tags and fields now are the
        change's, plus ``tags_kept``, owned tags whose removal did not go through); lists: the
        recorded confirmed calls. Segments stay as they were, so the entry and exit events of a
        destination that sends them are still due. Recording this keeps what the connector did set
        as its own: a later change removes it instead of leaving it behind as if set by hand."""
        pid = change.profile_id
        write = OwnedState.of(change) if written else before
        after = OwnedState(
            tags=write.tags | frozenset(tags_kept),
            lists=(before.lists | self.joined.get(pid, set())) - self.left.get(pid, set()),
            fields=write.fields,
            segments=before.segments,
            remote_id=remote_id or before.remote_id,
            email_key=before.email_key,
        )
        return None if after == before else after


APPLIED = "applied"
SKIPPED = "skipped"
FAILED = "failed"
# not attempted: the batch's budget of per-contact requests was spent; it goes with the next batch
# (not a failure: no backoff, no retry window)
DEFERRED = "deferred"


@dataclass(frozen=True)
class Result:
    """The outcome of one Change. ``owned`` is the new ledger entry when applied (None when erased);
    on a failure, what the change did take effect (:meth:`Moves.partial`), or None.

    ``error`` is set when failed; its type says what the sync worker does (retry later, dead
    letter, pause the destination).
    """

    profile_id: str
    version: int
    status: str
    owned: OwnedState | None = None
    error: Exception | None = None
    note: str = ""
