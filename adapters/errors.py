"""The adapters' own exception hierarchy (adapters never import ``connector``).

The sync worker maps these to its decisions: :class:`TransientError` and :class:`RateLimited`
are retried later, :class:`PermanentError` goes to the dead letters, :class:`AuthError` pauses
the destination for the account. Messages never carry credentials.

The error policy lives here and nowhere else: :attr:`AdapterError.stops_destination` says whether
an error concerns the whole destination (bad credentials, a spent daily quota) rather than the
contacts of one call. Such an error is raised out of ``apply`` (the sync worker pauses or defers the
destination); any other error fails only the contacts of the call that met it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

# RateLimited scopes
BURST = "BURST"
DAILY = "DAILY"
ABUSE = "ABUSE"
WAIT = "WAIT"

# The longest an ESP's own word (a ``Retry-After``, a rate-limit reset header, Mailchimp's
# anti-abuse throttle) parks a credential or a contact: a longer value is taken as this long.
MAX_RETRY_AFTER = 6 * 3600.0


def finite_wait(seconds: float | None) -> float | None:
    """``seconds`` as a usable wait: None when absent or not a finite number, never negative."""
    if seconds is None or not math.isfinite(seconds):
        return None
    return max(0.0, float(seconds))


class AdapterError(Exception):
    """Base of every error an adapter raises on purpose.

    ``status`` is the HTTP status (None for transport errors), ``code`` the ESP's own error
    name (Mailchimp ``title``, HubSpot ``category``, Klaviyo ``errors[0].code``), ``detail`` its
    message. ``retryable`` tells the sync worker whether trying again later can help.
    """

    retryable = False

    def __init__(
        self, message: str, *, status: int | None = None, code: str | None = None, detail: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.detail = detail
        # the ESP object the error is about, when the ESP refused a call on it (a list, a static
        # segment, an audience, a property): (kind, id), kinds as in ``adapters.base.MAPPED_KINDS``
        self.target: tuple[str, str] | None = None

    def about(self, kind: str, object_id: str) -> AdapterError:
        """Name the ESP object this error is about (the first one named stays); returns itself."""
        if self.target is None:
            self.target = (kind, str(object_id))
        return self

    @property
    def stops_destination(self) -> bool:
        """True when no other contact of the destination can succeed either (bad credentials, a
        spent daily quota): ``apply`` raises it instead of failing the contacts of one call."""
        return False

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary for dead letters and logs."""
        out: dict[str, Any] = {
            "type": type(self).__name__,
            "status": self.status,
            "code": self.code,
            "message": self.message,
            "detail": self.detail,
        }
        if self.target is not None:
            out["object"] = {"kind": self.target[0], "id": self.target[1]}
        return out


class TransientError(AdapterError):
    """5xx, timeouts, connection errors: retry with backoff."""

    retryable = True


class RateLimited(TransientError):
    """429 (or an anti-abuse throttle): retry after ``retry_after`` seconds.

    ``scope`` names the limit: ``BURST`` (per second / ten seconds, or Mailchimp concurrency),
    ``DAILY`` (HubSpot daily quota: wait until the reset), ``ABUSE`` (Mailchimp "signed up to a
    lot of lists very recently": park that contact for hours) or ``WAIT`` (not sent: the shared
    limiter's next slot for the credential is further away than a request may wait in-process).
    A ``retry_after`` that is not a finite number is no ``retry_after`` at all (the caller's own
    backoff applies); a negative one is 0.
    """

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None,
        scope: str = BURST,
        status: int | None = 429,
        code: str | None = None,
        detail: str = "",
    ) -> None:
        super().__init__(message, status=status, code=code, detail=detail)
        self.retry_after = retry_after
        self.scope = scope

    @property
    def retry_after(self) -> float | None:
        return self._retry_after

    @retry_after.setter
    def retry_after(self, seconds: float | None) -> None:
        self._retry_after = finite_wait(seconds)

    @property
    def stops_destination(self) -> bool:
        """A spent daily quota: every request of the credential waits for the reset."""
        return self.scope == DAILY

    @property
    def per_contact(self) -> bool:
        """An anti-abuse throttle concerns one contact, not the credential: the key stays open."""
        return self.scope == ABUSE

    @property
    def waits_in_call(self) -> bool:
        """Whether the wait may be spent inside the request (not a quota reset or an hours-long park)."""
        return not (self.stops_destination or self.per_contact)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out.update(retry_after=self.retry_after, scope=self.scope)
        return out


class PermanentError(AdapterError):
    """The ESP refused the request for a reason retrying cannot fix (400, 404, 422, compliance...)."""


class AuthError(PermanentError):
    """401/403: bad or insufficient credentials. The destination is paused for the account."""

    @property
    def stops_destination(self) -> bool:
        return True


class ItemErrors(AdapterError):
    """A batch call succeeded for some items and failed for others.

    ``errors`` maps an item key (email or trace id) to the error of that item.
    """

    def __init__(self, message: str, errors: Mapping[str, AdapterError]) -> None:
        super().__init__(message)
        self.errors = dict(errors)
