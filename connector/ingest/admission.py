"""Admission: the one place that decides, after verification and parsing, whether a request's
events may be stored. :meth:`Receiver.handle` calls :func:`admit` for every webhook route; the
tracking API calls :func:`admit_tracking`.

1. Each event's type must be one the sender declares (``Receiver.event_types``).
2. Privileged types (:data:`PRIVILEGED`: ``delete`` erases a person, ``data_request`` exports one)
   need proof: the signature must cover the element, and the account's file must allow the type
   for this sender (``senders.<name>.privileged: [delete]``), unless the sender's own protocol
   makes them mandatory and the receiver proved them otherwise (Shopify's compliance topics:
   body shape and configured shop domain, see :mod:`.receivers.shopify`).
3. Elements of a batch the signature does not cover (Segment Actions signs the first element
   only) are refused unless the account opted in (``unsigned_batch_elements: accept``), and are
   never privileged.
4. Nothing the workers would refuse for a reason known now is acknowledged (:func:`storable`):
   an event name longer than the store keeps, an amount no order has (:data:`MAX_AMOUNT`), a time
   more than :data:`MAX_AHEAD` from now, or, on
   the Segment-spec routes where the spec
   makes an identity mandatory, a message without a usable ``userId``/``anonymousId``/email.

Every refusal is a 400 naming the element and the reason.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import ClassVar, Protocol

from connector import clock
from connector.clock import isoformat
from connector.config import Account, SenderConfig
from connector.errors import EventNotAllowed, MalformedPayload
from connector.event import PRIVILEGED_TYPES, Event


class Receiver(Protocol):
    """What admission reads of a receiver (:class:`connector.ingest.receivers.base.Receiver`)."""

    name: ClassVar[str]
    event_types: ClassVar[frozenset[str]]
    privileged: ClassVar[frozenset[str]]
    privileged_by_default: ClassVar[frozenset[str]]
    identity_required: ClassVar[bool]

    def where(self, index: int) -> str: ...


@dataclass(frozen=True)
class Proof:
    """What a successful verification proved.

    ``covered``: how many leading elements of a batch body the signature covers (``None``: the
    whole body). ``probe``: a validation request (Mailchimp's GET, Mandrill's HEAD) that stores
    nothing. ``detail``: a sender-specific value verification produced (e.g. a signed message id).
    """

    covered: int | None = None
    probe: bool = False
    detail: str = ""


PRIVILEGED = frozenset(PRIVILEGED_TYPES)
MAX_NAME = 200  # EventSchema's limit: a longer name is a dead letter in the worker
ACCEPT = "accept"


def allowed_privileged(receiver: Receiver, sender: SenderConfig) -> frozenset[str]:
    configured = frozenset(sender.options.get("privileged") or ())
    return (configured | receiver.privileged_by_default) & receiver.privileged


def admit(
    receiver: Receiver,
    events: Sequence[Event],
    account: Account,
    sender: SenderConfig,
    proof: Proof,
    single: bool = False,
) -> None:
    """``single``: the body is one message, not an array of them: its refusals name ``body``."""
    allowed = allowed_privileged(receiver, sender)
    accept_unsigned = sender.options.get("unsigned_batch_elements") == ACCEPT
    named: Callable[[int], str] = (lambda _: "body") if single else receiver.where
    for i, event in enumerate(events):
        where = named(i)
        if event.type not in receiver.event_types:
            raise EventNotAllowed(f"{where}: {receiver.name} does not deliver {event.type!r} events")
        if proof.covered is not None and i >= proof.covered:
            if event.type in PRIVILEGED:
                raise EventNotAllowed(
                    f"{where} is a {event.type!r} event outside the signed part of the body; "
                    "privileged events must be signed"
                )
            if not accept_unsigned:
                raise EventNotAllowed(
                    f"{where} is not covered by the signature ({receiver.name} signs only the first "
                    "element of a batch); send X-Segment-Signature over the whole body, or set "
                    f"senders.{receiver.name}.unsigned_batch_elements: accept"
                )
        if event.type in PRIVILEGED and event.type not in allowed:
            raise EventNotAllowed(
                f"{where} is a {event.type!r} event, which this account does not allow from "
                f"{receiver.name} (senders.{receiver.name}.privileged)"
            )
    storable(events, account, named, identity_required=receiver.identity_required)


def admit_tracking(events: Sequence[Event], account: Account, where: Callable[[int], str]) -> None:
    """The Segment-compatible tracking API never erases nor exports: an SDK's write key is public."""
    for i, event in enumerate(events):
        if event.type in PRIVILEGED:
            raise EventNotAllowed(
                f"{where(i)}.type {event.type!r} is not accepted by the tracking API "
                "(erasure and access requests come from a signed sender)"
            )
    storable(events, account, where, identity_required=True)


# The properties that hold an amount of money (the spec's, and what the receivers map to them):
# beyond ±10^12 in any currency no order is real, and such a number broke the sums the rules and
# the analytics keep (an infinity, or a Redis integer overflow that failed a whole worker batch)
# (``value`` is not among them: a generic property, often a score or a time in milliseconds; the
# analytics read it as revenue only below the same bound)
AMOUNTS = ("revenue", "total", "price", "subtotal", "tax", "shipping", "discount", "total_tax",
           "total_discounts")  # fmt: skip
MAX_AMOUNT = 10**12
MAX_AHEAD = timedelta(hours=24)  # clocks a little ahead, or a day off, are taken


def event_problem(event: Event) -> str | None:
    """Why the workers would refuse the event, or would keep it only to break a sum: a name too
    long to keep, an amount beyond :data:`MAX_AMOUNT`. None when there is no such reason."""
    if len(event.name) > MAX_NAME:
        return f"the event name is {len(event.name)} characters, more than the {MAX_NAME} kept"
    if event.occurred_at > clock.now() + MAX_AHEAD:
        # a time in the future would pin latest-wins traits and keep windows open until then
        return f"the event's time {isoformat(event.occurred_at)} is more than 24 hours from now"
    for name in AMOUNTS:
        value = event.properties.get(name)
        if value is None or isinstance(value, bool):
            continue
        amount = _amount(value)
        if amount is not None and not -MAX_AMOUNT <= amount <= MAX_AMOUNT:
            return f"properties.{name} is {value}, beyond the ±{MAX_AMOUNT:,} an amount may be"
    return None


def _amount(value: object) -> float | None:
    if isinstance(value, int | float):
        return float(value) if not isinstance(value, int) or abs(value) < 10**300 else math.inf
    if isinstance(value, str) and len(value) <= 400:
        try:
            return float(value)
        except ValueError:
            return None
    return None


def storable(
    events: Sequence[Event], account: Account, where: Callable[[int], str], *, identity_required: bool
) -> None:
    """Refuse what the workers would refuse for a reason the sender can be told now."""
    for i, event in enumerate(events):
        if (problem := event_problem(event)) is not None:
            raise MalformedPayload(f"{where(i)}: {problem}")
        if identity_required:
            reason = _identity_problem(event, account)
            if reason:
                raise MalformedPayload(f"{where(i)}: {reason}")


def _identity_problem(event: Event, account: Account) -> str | None:
    from connector.profiles.identity import clean_value, usable_identities  # the worker's own rules

    blocked = account.blocked_identity_values
    if event.type == "alias":
        if clean_value("user_id", event.identities.get("previous_id"), blocked) is None:
            return "previousId is required for an alias call (and must not be a blocked value)"
        return None
    if usable_identities(event.identities, blocked):
        return None
    if event.identities:
        return "userId, anonymousId and email are all missing, blocked or too long"
    return "userId or anonymousId is required"
