"""The shared base of every ESP adapter: an httpx client with timeouts, the shared rate limiter,
error mapping and the tenacity retry policy, built from small composable condition objects.

Time is injected: ``clock`` (epoch seconds) and ``sleep`` come from the caller, so tests never
sleep and the retry budget runs on simulated time.
"""

from __future__ import annotations

import hashlib
import logging
import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx
import tenacity
from tenacity import RetryCallState

from .change import APPLIED, DEFERRED, FAILED, SKIPPED, Change, Moves, OwnedState, Result
from .errors import (
    MAX_RETRY_AFTER,
    WAIT,
    AdapterError,
    AuthError,
    PermanentError,
    RateLimited,
    TransientError,
    finite_wait,
)
from .ratelimit import Limits, RateLimiter, WaitTooLong

log = logging.getLogger(__name__)

Clock = Callable[[], float]
Sleep = Callable[[float], None]
ErrorMapper = Callable[[httpx.Response], AdapterError]


class Adapter(Protocol):
    """The one interface of every ESP module."""

    name: str
    batch_size: int  # how many changes one ``apply`` call handles at most

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        """Bring each contact to its desired state; one Result per change, in any order.

        Per-contact failures are returned in the Result; an error whose
        :attr:`~adapters.errors.AdapterError.stops_destination` is true (bad credentials, a spent
        daily quota) is raised because it concerns the whole destination.
        """
        ...


# ---------------------------------------------------------------------------------------------
# Retry conditions (tenacity objects)


class retry_if_retryable(tenacity.retry_base):
    """Retry transient errors whose wait fits in this call; longer waits go back to the worker."""

    def __init__(self, max_inline_wait: float) -> None:
        self.max_inline_wait = max_inline_wait

    def __call__(self, retry_state: RetryCallState) -> bool:
        outcome = retry_state.outcome
        if outcome is None or not outcome.failed:
            return False
        err = outcome.exception()
        if not isinstance(err, TransientError):
            return False
        if isinstance(err, RateLimited):
            if not err.waits_in_call:
                return False
            if err.retry_after is not None and err.retry_after > self.max_inline_wait:
                return False
        return True


class wait_retry_after(tenacity.wait.wait_base):
    """The ESP's Retry-After when it sent one, else the fallback (exponential with jitter)."""

    def __init__(self, fallback: tenacity.wait.wait_base) -> None:
        self.fallback = fallback

    def __call__(self, retry_state: RetryCallState) -> float:
        outcome = retry_state.outcome
        err = outcome.exception() if outcome is not None and outcome.failed else None
        if isinstance(err, RateLimited) and err.retry_after is not None:
            return max(0.0, err.retry_after)
        return float(self.fallback(retry_state))


class stop_after_budget(tenacity.stop.stop_base):
    """Stop when the next wait would end after ``budget`` seconds of the injected clock."""

    def __init__(self, clock: Clock, budget: float) -> None:
        self.clock = clock
        self.budget = budget
        self.started = clock()

    def __call__(self, retry_state: RetryCallState) -> bool:
        upcoming = retry_state.upcoming_sleep or 0.0
        return self.clock() + upcoming - self.started > self.budget


@dataclass(frozen=True)
class RetryPolicy:
    """In-call retries: a few quick attempts. Longer outages are the sync worker's business
    (it re-queues the change with backoff for up to 24 hours)."""

    attempts: int = 5
    budget_seconds: float = 60.0
    initial_wait: float = 0.5
    max_wait: float = 20.0
    max_inline_wait: float = 30.0
    # the longest wait for a rate-limit slot inside a request: longer than any window (Klaviyo's
    # minute), shorter than a blocked key (a daily quota spent, a long Retry-After), which defers
    # the work to the sync worker instead of holding a worker for hours
    max_slot_wait: float = 65.0

    def retrying(
        self, clock: Clock, sleep: Sleep, rng: Callable[[], float] = random.random
    ) -> tenacity.Retrying:
        fallback = tenacity.wait_exponential_jitter(multiplier=self.initial_wait, max=self.max_wait)
        return tenacity.Retrying(
            retry=retry_if_retryable(self.max_inline_wait),
            wait=wait_retry_after(fallback),
            stop=tenacity.stop_after_attempt(self.attempts) | stop_after_budget(clock, self.budget_seconds),
            sleep=sleep,
            reraise=True,
            before_sleep=_log_retry,
        )


def _log_retry(retry_state: RetryCallState) -> None:
    outcome = retry_state.outcome
    err = outcome.exception() if outcome is not None else None
    log.info(
        "retrying ESP request",
        extra={
            "attempt": retry_state.attempt_number,
            "wait": retry_state.upcoming_sleep,
            "error": type(err).__name__ if err else None,
            "status": getattr(err, "status", None),
        },
    )


# ---------------------------------------------------------------------------------------------
# HTTP


def credential_key(esp: str, secret: str) -> str:
    """The rate-limit key of one credential: the ESP and a short digest (never the secret)."""
    return f"{esp}:{hashlib.sha256(secret.encode()).hexdigest()[:16]}"


def json_body(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def answer(response: httpx.Response, what: str, fields: Sequence[str] = ()) -> dict[str, Any]:
    """The JSON object a success answered, read as the documented answer of ``what``.

    A 2xx whose body is not a JSON object, or holds none of ``fields`` (when given), is not taken
    as done, nor as empty: it raises a :class:`TransientError` (code ``unreadable_answer``), so the
    contacts of the call are retried later, never counted applied. The message names the content
    type and size, never the body (it may hold personal data).
    """
    data = json_body(response)
    if isinstance(data, dict) and (not fields or any(f in data for f in fields)):
        return data
    kind = response.headers.get("Content-Type", "no content type").split(";")[0]
    status = response.status_code
    raise TransientError(
        f"{what}: the {status} answer is not the documented one ({kind}, {len(response.content)} bytes)",
        status=status,
        code="unreadable_answer",
    )


def unconfirmed(what: str, status: int) -> TransientError:
    """A contact the ESP's answer does not account for: not done, retried later."""
    return TransientError(
        f"{what}: the {status} answer does not confirm this contact", status=status, code="unconfirmed"
    )


def status_error(response: httpx.Response, code: str | None, detail: str) -> AdapterError:
    """The generic mapping by status, once the ESP module has read its own error body."""
    status = response.status_code
    message = f"{status} {code or response.reason_phrase}: {detail}".strip()[:500]
    if status in (401, 403):
        return AuthError(message, status=status, code=code, detail=detail)
    if status == 429:
        return RateLimited(message, retry_after=retry_after_header(response), code=code, detail=detail)
    if status >= 500 or status in (408,):
        return TransientError(message, status=status, code=code, detail=detail)
    return PermanentError(message, status=status, code=code, detail=detail)


DELAY_SECONDS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def retry_after_header(response: httpx.Response) -> float | None:
    """The ``Retry-After`` of a response in seconds, at most :data:`MAX_RETRY_AFTER`.

    Two forms are read: a number of seconds (digits, optionally with a decimal part) and an HTTP
    date, counted from the response's own ``Date`` (an HTTP date in an answer without one is not
    taken: there is nothing here to count it from). Anything else (``inf``,
    ``nan``, ``1e309``, a negative number, text) is no ``Retry-After``: the caller's own backoff
    applies. So no answer can block a credential for longer than the cap.
    """
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    seconds = header_number(raw)
    if seconds is not None:  # digits: possibly huge (even beyond a float), never negative
        return min(seconds, MAX_RETRY_AFTER)
    when = http_date(raw.strip())
    if when is None:
        return None
    sent = http_date(response.headers.get("Date", ""))
    return capped_wait((when - sent).total_seconds()) if sent is not None else None


def header_number(raw: str | None) -> float | None:
    """A header value made of ASCII digits (optionally with a decimal part) as a number, which may
    be ``inf`` when the digits go beyond a float; None for anything else."""
    raw = (raw or "").strip()
    return float(raw) if DELAY_SECONDS.fullmatch(raw) else None


def capped_wait(seconds: float | None) -> float | None:
    """A wait an ESP asked for, usable as one: finite, 0 … :data:`MAX_RETRY_AFTER` (None when it
    is no number at all)."""
    wait = finite_wait(seconds)
    return None if wait is None else min(wait, MAX_RETRY_AFTER)


def http_date(raw: str) -> datetime | None:
    """An HTTP date (``Wed, 21 Oct 2015 07:28:00 GMT``) as an aware datetime; None if it is not one."""
    if not raw or not any(c.isalpha() for c in raw):
        return None
    try:
        when = parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)


@dataclass
class Transport:
    """How an adapter talks to its ESP: base URL, auth headers, limits, time seams."""

    base_url: str
    headers: Mapping[str, str] = field(repr=False)  # carries the credential
    limiter_key: str
    error_mapper: ErrorMapper
    limiter: RateLimiter | None = None
    buckets: Mapping[str, Limits] = field(default_factory=dict)
    clock: Clock = lambda: 0.0
    sleep: Sleep = lambda _s: None
    policy: RetryPolicy = field(default_factory=RetryPolicy)
    timeout: httpx.Timeout = field(default_factory=lambda: httpx.Timeout(30.0, connect=5.0))
    http_transport: httpx.BaseTransport | None = None
    max_connections: int = 10
    observe: Callable[[httpx.Response], None] | None = None


class EspClient:
    """One httpx client per adapter instance; ``request`` = limiter + retries + error mapping."""

    def __init__(self, transport: Transport) -> None:
        self.t = transport
        self.http = httpx.Client(
            base_url=transport.base_url.rstrip("/"),
            headers=dict(transport.headers),
            timeout=transport.timeout,
            transport=transport.http_transport,
            limits=httpx.Limits(max_connections=transport.max_connections),
        )
        self.requests = 0  # requests sent by this client (benchmarks, tests)

    def __repr__(self) -> str:
        return f"EspClient(base_url={self.t.base_url!r}, key={self.t.limiter_key!r})"

    def close(self) -> None:
        self.http.close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        bucket: str = "default",
    ) -> httpx.Response:
        """Send with the shared limits; retry transient errors in-call; raise AdapterError."""
        retrying = self.t.policy.retrying(self.t.clock, self.t.sleep)
        return retrying(self._once, method, path, json, params, bucket)

    def _once(
        self, method: str, path: str, body: Any, params: Mapping[str, Any] | None, bucket: str
    ) -> httpx.Response:
        limits = self.t.buckets.get(bucket) or self.t.buckets.get("default") or Limits()
        limiter = self.t.limiter
        key = self.t.limiter_key
        try:
            if limiter is not None:
                with limiter.slot(key, limits, self.t.policy.max_slot_wait):
                    response = self._send(method, path, body, params)
            else:
                response = self._send(method, path, body, params)
        except WaitTooLong as err:
            raise RateLimited(
                f"rate limit: {method} {_redact(path)} can be sent in {err.seconds:.0f} s",
                retry_after=err.seconds,
                scope=WAIT,
                status=None,
                code="rate_limited_locally",
            ) from None
        except httpx.TimeoutException as err:
            raise TransientError(f"timeout: {type(err).__name__} on {method} {path}") from err
        except httpx.TransportError as err:
            raise TransientError(f"connection error: {type(err).__name__} on {method} {path}") from err
        if self.t.observe is not None:
            self.t.observe(response)
        if response.status_code < 400:
            if limiter is not None:
                limiter.reward(key)
            return response
        error = self.t.error_mapper(response)
        if isinstance(error, RateLimited) and limiter is not None and not error.per_contact:
            if error.stops_destination and error.retry_after is not None:
                limiter.block_until(key, self.t.clock() + error.retry_after)
            else:
                limiter.penalize(key, error.retry_after)
        log.info(
            "ESP error",
            extra={
                "method": method,
                "path": _redact(path),
                "status": response.status_code,
                "code": error.code,
            },
        )
        raise error

    def _send(self, method: str, path: str, body: Any, params: Mapping[str, Any] | None) -> httpx.Response:
        self.requests += 1
        return self.http.request(method, path, json=body, params=params)


def _redact(path: str) -> str:
    # paths may hold an email or a subscriber hash: keep only the route shape in logs
    return "/".join(part if len(part) < 24 and "@" not in part else "…" for part in path.split("/"))


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def erase_every_address(change: Change, erase: Callable[[Change], Result]) -> Result:
    """Erase the contact under each of the person's addresses; the first failure is the result
    (the whole erasure is retried: deleting an address already gone is a no-op at every ESP)."""
    addresses = list(dict.fromkeys(a for a in (change.email, *change.erase_emails) if a))
    if len(addresses) <= 1:
        return erase(change)
    results = [erase(replace(change, email=address, erase_emails=())) for address in addresses]
    failed = [r for r in results if r.status == FAILED]
    if failed:
        return failed[0]
    done = [r for r in results if r.status != SKIPPED]
    note = f"{done[0].note} ({len(addresses)} addresses)" if done else results[0].note
    return Result(change.profile_id, change.version, done[0].status if done else SKIPPED, None, note=note)


Memberships = dict[tuple[str, bool], list[tuple[Change, str]]]


def membership_plan(
    batch: BatchState, changes: Sequence[Change], missing: Callable[[], AdapterError]
) -> Memberships:
    """The list calls a batch needs: (list id, True to add / False to remove) → (change, ESP id).

    Only lists that differ from the ownership ledger are named, so a list a marketer manages by hand
    is never touched. A change that must join a list before the ESP id of its contact is known fails
    with ``missing()`` (retried later); ``batch.joined`` holds lists a contact write already joined.
    """
    plan: Memberships = {}
    for change in changes:
        before = batch.before(change)
        adds = (change.lists - before.lists) - {batch.joined.get(change.profile_id)}
        removes = before.lists - change.lists
        remote = batch.ids.get(change.profile_id) or before.remote_id
        if remote is None:
            if adds:
                batch.fail(change, missing())
            continue  # without an id the contact joined none of our lists: nothing to remove
        for list_id in adds:
            plan.setdefault((list_id, True), []).append((change, remote))
        for list_id in removes:
            plan.setdefault((list_id, False), []).append((change, remote))
    return plan


# ---------------------------------------------------------------------------------------------
# One batch: its state and the apply skeleton


@dataclass
class BatchState:
    """What one ``apply`` carries through its calls, for every ESP.

    ``results`` holds the outcomes already settled (erased, skipped, deferred); ``live`` the changes
    still being carried out, whose outcome :meth:`finish` derives from ``errors`` (the first error
    met by each contact), ``ids`` (the ESP's id of each contact), ``written`` (contacts whose write
    the ESP confirmed), ``moved`` (confirmed list calls) and ``tags_kept`` (owned tags whose
    removal did not go through). ``remote_tags`` holds the contacts' current tags when a write
    replaces the tags value whole; ``joined`` the list a contact write already joined;
    ``budget`` the per-contact requests the batch may still make.
    """

    changes: Sequence[Change]
    owned: Mapping[str, OwnedState]
    results: dict[str, Result] = field(default_factory=dict)
    live: list[Change] = field(default_factory=list)
    errors: dict[str, AdapterError] = field(default_factory=dict)
    ids: dict[str, str] = field(default_factory=dict)
    written: set[str] = field(default_factory=set)
    moved: Moves = field(default_factory=Moves)
    tags_kept: dict[str, Sequence[str]] = field(default_factory=dict)
    remote_tags: dict[str, set[str]] = field(default_factory=dict)
    joined: dict[str, str] = field(default_factory=dict)
    budget: int = 0

    @classmethod
    def start(
        cls,
        changes: Sequence[Change],
        owned: Mapping[str, OwnedState],
        erase: Callable[[Change], Result],
    ) -> BatchState:
        """Erasures are carried out at once and changes without an email are skipped with the
        reason; the others are ``live``."""
        batch = cls(changes, owned)
        for change in changes:
            if change.erase:
                batch.results[change.profile_id] = erase_every_address(change, erase)
            elif not change.email:
                batch.settle(change, SKIPPED, "no email")
            else:
                batch.live.append(change)
        return batch

    def before(self, change: Change) -> OwnedState:
        """The ledger entry of the contact before this batch."""
        return self.owned.get(change.profile_id, OwnedState())

    def pending(self, changes: Sequence[Change] | None = None) -> list[Change]:
        """Those of ``changes`` (default: the live ones) that have not failed."""
        return [c for c in (self.live if changes is None else changes) if c.profile_id not in self.errors]

    def fail(self, change: Change, err: AdapterError) -> None:
        """The contact failed with ``err``; an error that stops the destination is raised."""
        if err.stops_destination:
            raise err
        self.errors[change.profile_id] = err

    def fail_all(self, changes: Iterable[Change], err: AdapterError) -> None:
        if err.stops_destination:
            raise err
        for change in changes:
            self.errors[change.profile_id] = err

    def attempt(self, change: Change, call: Callable[[], object]) -> bool:
        """Run one call for one contact; on an error the contact fails (see :meth:`fail`)."""
        try:
            call()
        except AdapterError as err:
            self.fail(change, err)
            return False
        return True

    def settle(self, change: Change, status: str, note: str) -> None:
        self.results[change.profile_id] = Result(change.profile_id, change.version, status, note=note)

    def defer(self, changes: Sequence[Change], note: str) -> None:
        """Not attempted in this batch: the next batch takes them (see ``DEFERRED``)."""
        later = {c.profile_id for c in changes}
        for change in changes:
            self.errors.pop(change.profile_id, None)
            self.settle(change, DEFERRED, note)
        self.live = [c for c in self.live if c.profile_id not in later]

    def finish(self) -> list[Result]:
        """One Result per change, in the order received."""
        for change in self.live:
            pid = change.profile_id
            err = self.errors.get(pid)
            if err is None:
                state = OwnedState.of(change, self.ids.get(pid))
                self.results[pid] = Result(pid, change.version, APPLIED, state)
                continue
            partial = self.moved.partial(
                self.before(change),
                change,
                written=pid in self.written,
                tags_kept=self.tags_kept.get(pid, ()),
                remote_id=self.ids.get(pid),
            )
            self.results[pid] = Result(pid, change.version, FAILED, partial, error=err)
        return [self.results[c.profile_id] for c in self.changes]


# ---------------------------------------------------------------------------------------------
# Mapping check: does every ESP object the account file names exist? (read requests only)

# The kinds of ESP objects a destination's mapping names (``AdapterError.target`` uses them too).
AUDIENCE = "audience"  # Mailchimp: the destination's list_id
STATIC_SEGMENT = "static segment"  # Mailchimp: a segment's `lists`
LIST = "list"  # HubSpot, Klaviyo: a segment's `lists`
TAG = "tag"  # every ESP: a segment's `tags` (Mailchimp tags, HubSpot options, Klaviyo values)
MERGE_FIELD = "merge field"  # Mailchimp: `fields`
PROPERTY = "property"  # HubSpot, Klaviyo: `fields`; HubSpot's tags property
MAPPED_KINDS = (AUDIENCE, STATIC_SEGMENT, LIST, TAG, MERGE_FIELD, PROPERTY)

# What a check found for one object. FOUND and CREATED are fine; the others are errors.
FOUND = "ok"
CREATED = "created_on_first_use"  # not there yet; the ESP or the connector creates it when first used
MISSING = "missing"  # the ESP does not know it: every change that needs it would be refused
UNUSABLE = "unusable"  # it exists, but the connector cannot use it (e.g. a DYNAMIC HubSpot list)
UNCHECKED = "cannot_check"  # refused credentials, the ESP unreachable, an unreadable answer
CHECK_STATUSES = (FOUND, CREATED, MISSING, UNUSABLE, UNCHECKED)

# A check's requests are bounded: a short timeout, one retry, no long waits (it is interactive).
CHECK_TIMEOUT = httpx.Timeout(10.0, connect=5.0)
CHECK_POLICY = RetryPolicy(attempts=2, budget_seconds=15.0, max_inline_wait=5.0, max_slot_wait=10.0)


@dataclass(frozen=True)
class MappedObject:
    """One ESP object a destination's mapping names: its kind (:data:`MAPPED_KINDS`) and id (a
    list id, a tag's or a property's name)."""

    kind: str
    id: str


@dataclass(frozen=True)
class ObjectCheck:
    """What the ESP says about one :class:`MappedObject` (the shared shape of every adapter's
    :meth:`EspAdapter.check_mapping`).

    ``status`` is one of :data:`CHECK_STATUSES`; ``detail`` says why (the ESP's status and message
    for a refusal, never a credential); ``existing`` holds the ESP's objects of that kind as
    ``(id, name)`` when one is missing, for a did-you-mean (the adapters never guess one).
    """

    kind: str
    id: str
    status: str
    detail: str = ""
    existing: tuple[tuple[str, str], ...] = ()

    @property
    def problem(self) -> bool:
        return self.status not in (FOUND, CREATED)


def refusal(err: AdapterError) -> str:
    """An error as a check reports it: the ESP's status and message (never a credential)."""
    if err.status is None or err.message.startswith(str(err.status)):
        return err.message
    return f"{err.message} (HTTP {err.status})"


class Checker:
    """Runs one adapter's check reads: once the credential is refused (or the ESP cannot be
    reached) every later object is reported unchecked with that reason, without more requests."""

    def __init__(self) -> None:
        self.stopped: str | None = None
        self._known: dict[int, tuple[tuple[str, str], ...]] = {}

    def read(
        self,
        obj: MappedObject,
        call: Callable[[], ObjectCheck],
        existing: Callable[[], Iterable[tuple[str, str]]] | None = None,
    ) -> ObjectCheck:
        """``call`` checks ``obj``; a 404 (or a 400 refusing the id) is MISSING, with ``existing()``
        (the ESP's objects of that kind, read once per callable; none when that read fails), any
        other error UNCHECKED with its reason."""
        if self.stopped is not None:
            return ObjectCheck(obj.kind, obj.id, UNCHECKED, self.stopped)
        try:
            return call()
        except AdapterError as err:
            if isinstance(err, PermanentError) and not err.stops_destination and err.status in (400, 404):
                known = self.known(existing) if existing is not None else ()
                return ObjectCheck(obj.kind, obj.id, MISSING, f"not found: {refusal(err)}", known)
            reason = refusal(err)
            # the objects after it are not asked, and their lines name no other object's request
            if isinstance(err, AuthError):
                self.stopped = "credentials refused (on an earlier read): not asked"
                reason = f"credentials refused: {reason}"
            elif err.retryable and err.status is None:
                self.stopped = "ESP unreachable (on an earlier read): not asked"
                reason = f"ESP unreachable: {reason}"
            return ObjectCheck(obj.kind, obj.id, UNCHECKED, reason)

    def known(self, existing: Callable[[], Iterable[tuple[str, str]]]) -> tuple[tuple[str, str], ...]:
        key = id(existing.__func__) if hasattr(existing, "__func__") else id(existing)
        if key not in self._known:
            try:
                self._known[key] = tuple(existing())
            except AdapterError:
                self._known[key] = ()
        return self._known[key]


class EspAdapter:
    """The one ``apply`` of every ESP module (one module per ESP on this base), filled in with
    hooks: :meth:`check` (local checks before any call), :meth:`write` (the contacts' writes),
    :meth:`memberships` (list calls for the contacts that have not failed), :meth:`follow_up`
    (calls after those, e.g. events). Erasure is :meth:`delete_contact`; 404 means already gone.
    """

    name: str
    batch_size: int  # how many changes one ``apply`` call handles at most
    client: EspClient
    erased_note = "deleted"

    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        batch = BatchState.start(changes, owned, self.erase)
        if batch.live:
            self.check(batch)
            self.write(batch)
            self.memberships(batch)
            self.follow_up(batch)
        return batch.finish()

    def check(self, batch: BatchState) -> None:
        """Fail the changes that cannot be sent as they are, before any call."""

    def write(self, batch: BatchState) -> None:
        raise NotImplementedError

    def memberships(self, batch: BatchState) -> None:
        """List calls for ``batch.pending()``."""

    def follow_up(self, batch: BatchState) -> None:
        """Calls after the memberships (e.g. events)."""

    def delete_contact(self, email: str) -> None:
        raise NotImplementedError

    def check_mapping(self, objects: Sequence[MappedObject]) -> list[ObjectCheck]:
        """Whether each object the mapping names exists at the ESP, with read requests only (no
        write, nothing created); one :class:`ObjectCheck` per object, in order. An ESP module
        without a check reports each unchecked."""
        return [ObjectCheck(o.kind, o.id, UNCHECKED, f"{self.name} has no check") for o in objects]

    def erase(self, change: Change) -> Result:
        if not change.email:
            return Result(change.profile_id, change.version, SKIPPED, note="no email to erase")
        try:
            self.delete_contact(change.email)
        except AdapterError as err:
            if err.stops_destination:
                raise
            if err.status != 404:  # 404: not (or no longer) there
                return Result(change.profile_id, change.version, FAILED, error=err)
        return Result(change.profile_id, change.version, APPLIED, None, note=self.erased_note)
