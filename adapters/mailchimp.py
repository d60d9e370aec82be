"""Mailchimp Marketing API v3: one audience per destination; tags, static segments, merge fields.

Requests (see docs/destinations.md):

* merge fields: ``GET /lists/{id}/merge-fields?count=1000`` once per adapter (cached), and
  ``POST /lists/{id}/merge-fields`` ``{tag, name, type: number|text}`` for a written tag the audience
  lacks (Mailchimp refuses a member write naming an unknown merge field). A configured name that
  cannot be a merge tag (1-10 characters: A-Z, 0-9, ``_``, a letter first) fails the change.
* upsert: ``POST /lists/{list_id}`` (batch subscribe, ≤500 members, ``sync_tags: false``) in a way
  that cannot change an existing member's status, whatever Mailchimp does with ``status_if_new``
  on an update (unconfirmed): contacts the ledger does not know go in a create-only batch
  (``update_existing: false``, ``status_if_new``), so an existing member is reported
  ``ERROR_CONTACT_EXISTS`` and left untouched; those and the contacts the connector wrote before
  go in an update batch (``update_existing: true``) with **no** ``status`` and no ``status_if_new``.
  Members a batch reports in ``errors[]`` are re-driven one by one (``PUT`` member with
  ``status_if_new`` only, which leaves an existing member's status alone, + tags call), which gives
  each its exact error; so is a whole batch refused with a 4xx that may be one member's fault. Each
  email sent must be named by the answer (``new_members``, ``updated_members``, ``errors``): one
  it does not name, or an answer that is not that JSON, is not written (retried later). A change
  that only takes things away writes no member at all.
* tag removals: ``POST /lists/{id}/members/{hash}/tags`` with ``inactive`` for the tags the
  connector set earlier and no longer wants (never any other tag); 404 (not in the audience) =
  nothing to remove.
* static segments: ``POST /lists/{id}/segments/{seg_id}`` with ``members_to_add`` /
  ``members_to_remove`` (≤500 each); emails not in the audience are ignored by Mailchimp.
* erasure: ``POST /lists/{id}/members/{hash}/actions/delete-permanent`` (404 = already gone).

A 429 (10 concurrent connections per key) reaches the shared limiter through ``EspClient``: the
key's factor halves and with it the number of concurrent leases; a ``Retry-After`` blocks the key.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from .base import (
    AUDIENCE,
    CREATED,
    FOUND,
    MERGE_FIELD,
    STATIC_SEGMENT,
    TAG,
    UNCHECKED,
    UNUSABLE,
    BatchState,
    Checker,
    EspAdapter,
    EspClient,
    MappedObject,
    ObjectCheck,
    Transport,
    answer,
    chunks,
    credential_key,
    json_body,
    status_error,
    unconfirmed,
)
from .change import CONSENT_SUBSCRIBED, CONSENT_UNSUBSCRIBED, Change, OwnedState
from .errors import ABUSE, MAX_RETRY_AFTER, AdapterError, PermanentError, RateLimited
from .ratelimit import Limits

BATCH_LIMIT = 500
ABUSE_PARK_SECONDS = MAX_RETRY_AFTER  # "signed up to a lot of lists very recently": 6 hours
STATUSES_IF_NEW = ("transactional", "pending", "unsubscribed")
MERGE_TAG = re.compile(r"[A-Z][A-Z0-9_]{0,9}")
MERGE_FIELDS_PAGE = 1000  # the largest ``count`` Mailchimp accepts
# the fields of a static segment call's answer: one at least, or it is not that answer
SEGMENT_ANSWER = ("members_added", "members_removed", "total_added", "total_removed", "errors", "error_count")
# where a 404 means the audience (list_id) does not exist: the audience itself, its merge fields,
# a member upsert (PUT creates, so only the audience can be missing); and a static segment's path
AUDIENCE_PATH = re.compile(r"^/lists/(?P<list>[^/]+)(?:/merge-fields|/members/[^/]+)?$")
SEGMENT_PATH = re.compile(r"^/lists/[^/]+/segments/(?P<segment>[^/]+)$")


@dataclass(frozen=True)
class MailchimpConfig:
    api_key: str = field(repr=False)
    list_id: str
    base_url: str | None = None  # default https://{dc}.api.mailchimp.com/3.0
    status_if_new: str = "transactional"  # for contacts without marketing consent
    subscribe_with_consent: bool = True  # consent "subscribed" → status_if_new "subscribed"
    concurrency: int = 10
    is_syncing: bool = False  # true: automations on these tags do not fire
    bulk_tag_threshold: int = 20  # contacts dropping one tag in a batch from which its segment is used
    # segment -> (journey id, step id): a Customer Journey step started when a contact enters it
    journeys: Mapping[str, tuple[str, str]] = field(default_factory=dict)

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        return f"https://{data_centre(self.api_key)}.api.mailchimp.com/3.0"


# A Mailchimp API key ends in ``-<data centre>`` (``-us6``); the suffix becomes the API's host name,
# so anything else (``-evil.example/x?``) would send the key elsewhere.
DATA_CENTRE = re.compile(r"^[a-z]+[0-9]+$")


def data_centre(api_key: str) -> str:
    """The data centre an API key belongs to (``us1`` without a suffix); ``ValueError`` when the
    suffix is not one (the message never quotes the key)."""
    dc = api_key.rsplit("-", 1)[-1] if "-" in api_key else "us1"
    if not DATA_CENTRE.fullmatch(dc):
        raise ValueError("the API key does not end in a Mailchimp data centre (like -us6)")
    return dc


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


def map_error(response: httpx.Response) -> AdapterError:
    """Mailchimp problem+json → the adapter's error types."""
    body = json_body(response)
    body = body if isinstance(body, dict) else {}
    title = str(body.get("title") or "")
    detail = str(body.get("detail") or "")
    problems = body.get("errors")
    if isinstance(problems, list) and problems:
        detail += " " + "; ".join(
            f"{p.get('field')}: {p.get('message')}" for p in problems if isinstance(p, dict)
        )
    status = response.status_code
    if status == 503 and ("compliance" in title.lower() or "disabled" in detail.lower()):
        return PermanentError(
            f"503 {title}: {detail}", status=status, code=title or "ComplianceRelated", detail=detail
        )
    if status == 400 and "a lot of lists very recently" in detail:
        return RateLimited(
            f"400 {title}: anti-abuse throttle",
            retry_after=ABUSE_PARK_SECONDS,
            scope=ABUSE,
            status=400,
            code=title,
            detail=detail,
        )
    return status_error(response, title or None, detail)


def _merge_value(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return value
    return str(value)


def merge_type(value: Any) -> str:
    """The type of a merge field created for ``value``: numbers are ``number``, the rest ``text``
    (booleans are sent as the strings ``"true"``/``"false"``)."""
    return "number" if isinstance(value, int | float) and not isinstance(value, bool) else "text"


def invalid_merge_tags(names: Any) -> PermanentError | None:
    """A permanent error naming the configured fields that cannot be Mailchimp merge tags."""
    bad = sorted(str(n) for n in names if not MERGE_TAG.fullmatch(str(n)))
    if not bad:
        return None
    detail = (
        f"{', '.join(bad)}: a Mailchimp merge tag has 1-10 characters, uppercase letters A-Z, digits "
        "or _, starting with a letter (e.g. CARTVAL); fix the destination's `fields` mapping"
    )
    return PermanentError(f"invalid merge tag: {detail}", code="invalid_merge_tag", detail=detail)


def _items(value: Any) -> list[dict[str, Any]]:
    """The objects of a list in an answer (anything else holds none)."""
    return [item for item in value if isinstance(item, dict)] if isinstance(value, list) else []


def refused_for_a_member(err: AdapterError) -> bool:
    """A whole batch subscribe refused with a 4xx that may be one member's fault, not the
    credential's (401/403), a rate limit's or the audience's (404: it does not exist); a throttle
    of one contact (anti-abuse) counts as a member's. Its contacts are sent again one by one."""
    if isinstance(err, RateLimited):
        return err.per_contact
    status = err.status or 0
    return (
        isinstance(err, PermanentError)
        and not err.stops_destination
        and 400 <= status < 500
        and status != 404
    )


def _already_member(item: Mapping[str, Any]) -> bool:
    return item.get("error_code") == "ERROR_CONTACT_EXISTS" or "already a list member" in str(
        item.get("error", "")
    )


def _merge_problem(item: Mapping[str, Any]) -> bool:
    text = f"{item.get('error', '')} {item.get('field_message', '')}".lower()
    return "merge field" in text


class MailchimpClient(EspClient):
    """The shared client; a 404 names the object it is about (the audience, a static segment), so a
    dead letter can say which mapping the ESP refused."""

    def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: Mapping[str, Any] | None = None,
        bucket: str = "default",
    ) -> httpx.Response:
        try:
            return super().request(method, path, json=json, params=params, bucket=bucket)
        except PermanentError as err:
            if err.status == 404:
                segment = SEGMENT_PATH.match(path)
                audience = AUDIENCE_PATH.match(path)
                if segment is not None:
                    err.about(STATIC_SEGMENT, segment["segment"])
                elif audience is not None and (method != "GET" or "/members/" not in path):
                    err.about(AUDIENCE, audience["list"])
            raise


class MailchimpAdapter(EspAdapter):
    name = "mailchimp"
    batch_size = BATCH_LIMIT
    erased_note = "deleted permanently"

    def __init__(self, config: MailchimpConfig, transport: Transport | None = None, **kw: Any) -> None:
        if config.status_if_new not in STATUSES_IF_NEW:
            raise ValueError(f"status_if_new must be one of {', '.join(STATUSES_IF_NEW)}")
        self.config = config
        token = base64.b64encode(f"connector:{config.api_key}".encode()).decode()
        transport = transport or Transport(
            base_url=config.url(),
            headers={"Authorization": f"Basic {token}", "Accept": "application/json"},
            limiter_key=credential_key("mailchimp", config.api_key),
            error_mapper=map_error,
            buckets={"default": Limits(concurrency=config.concurrency)},
            max_connections=config.concurrency,
            **{"timeout": httpx.Timeout(120.0, connect=10.0), **kw},
        )
        self.client = MailchimpClient(transport)
        self.list_id = config.list_id
        self._tag_ids: dict[str, str] = {}
        self._merge_tags: dict[str, str] | None = None  # merge tag → type, read once per adapter
        self._merge_read_now = False  # the cache was (re)read during the current apply

    # -- helpers ---------------------------------------------------------------------------
    def status_if_new(self, change: Change) -> str:
        if change.consent == CONSENT_SUBSCRIBED and self.config.subscribe_with_consent:
            return "subscribed"
        if change.consent == CONSENT_UNSUBSCRIBED:
            return "unsubscribed"
        return self.config.status_if_new

    @staticmethod
    def written_fields(change: Change) -> dict[str, Any]:
        return {k: v for k, v in change.fields.items() if v is not None}

    @classmethod
    def erased_fields(cls, change: Change, owned: OwnedState) -> set[str]:
        """Fields the connector set earlier and no longer has a value for: written as ``""``."""
        return set(owned.fields) - set(cls.written_fields(change))

    def merge_fields(self, change: Change, owned: OwnedState) -> dict[str, Any]:
        out = {k: _merge_value(v) for k, v in self.written_fields(change).items()}
        known = self._merge_tags
        for name in sorted(self.erased_fields(change, owned)):
            if known is None or name in known:  # a field that no longer exists has nothing to erase
                out[name] = ""
        return out

    def member(self, change: Change, owned: OwnedState, *, status_if_new: bool = True) -> dict[str, Any]:
        """The member object of a write. Without ``status_if_new`` it carries no status of any kind
        (the update batch), so no reading of ``update_existing`` can change a member's status."""
        body: dict[str, Any] = {"email_address": change.email}
        if status_if_new:
            body["status_if_new"] = self.status_if_new(change)
        merge = self.merge_fields(change, owned)
        if merge:
            body["merge_fields"] = merge
        return body

    def needs_write(self, change: Change, owned: OwnedState) -> bool:
        """False for a change that only takes tags or lists away from a contact the connector wrote
        before: no member is written, so one archived or deleted in Mailchimp meanwhile is not
        added back to the audience just to leave a segment."""
        if change.tags or change.lists or self.written_fields(change):
            return True
        return bool(self.erased_fields(change, owned)) or not self.known(owned)

    @staticmethod
    def known(owned: OwnedState) -> bool:
        """The ledger says the connector wrote this contact before: it is most likely a member."""
        return bool(owned.tags or owned.lists or owned.fields)

    @staticmethod
    def removed_tags(change: Change, owned: OwnedState) -> list[str]:
        wanted = {t.casefold() for t in change.tags}
        return sorted(t for t in owned.tags if t.casefold() not in wanted)

    # -- apply -----------------------------------------------------------------------------
    def check(self, batch: BatchState) -> None:
        self._merge_read_now = False
        for change in batch.live:
            invalid = invalid_merge_tags(self.written_fields(change))
            if invalid is not None:
                batch.fail(change, invalid)

    def write(self, batch: BatchState) -> None:
        writes = [c for c in batch.pending() if self.needs_write(c, batch.before(c))]
        self._ensure_merge_fields(writes, batch)
        writes = batch.pending(writes)
        for chunk in chunks(writes, BATCH_LIMIT):
            self._batch_upsert(chunk, batch)
        batch.written = {c.profile_id for c in batch.pending(writes)}
        ok = batch.pending()
        self._remove_tags(ok, batch)
        for change in ok:
            if change.profile_id in batch.errors:  # its removals may not have run
                batch.tags_kept[change.profile_id] = self.removed_tags(change, batch.before(change))

    def memberships(self, batch: BatchState) -> None:
        self._segments(batch.pending(), batch)

    def follow_up(self, batch: BatchState) -> None:
        """Start the Customer Journey step of each segment a contact entered (``POST
        /customer-journeys/journeys/{id}/steps/{id}/actions/trigger``); a failure fails the contact,
        whose segments then stay as they were, so the trigger is due again on the retry."""
        journeys = self.config.journeys
        for change in batch.pending() if journeys else ():
            for segment in sorted(change.segments - batch.before(change).segments):
                if segment in journeys:
                    journey_id, step_id = journeys[segment]
                    path = f"/customer-journeys/journeys/{journey_id}/steps/{step_id}/actions/trigger"
                    call = partial(self.client.request, "POST", path, json={"email_address": change.email})
                    if not batch.attempt(change, call):
                        break

    def delete_contact(self, email: str) -> None:
        self.client.request(
            "POST", f"/lists/{self.list_id}/members/{subscriber_hash(email)}/actions/delete-permanent"
        )

    # -- mapping check (read requests only) ------------------------------------------------
    def check_mapping(self, objects: Sequence[MappedObject]) -> list[ObjectCheck]:
        """The audience (``GET /lists/{id}``), each static segment (``GET …/segments/{id}``: a
        static one), tags (``GET …/tag-search``: a missing one is created on first use) and merge
        fields (``GET …/merge-fields``: a missing one is created by the connector on first write)."""
        checker = Checker()
        self._merge_tags = None  # read afresh once for this check
        audience = checker.read(MappedObject(AUDIENCE, self.list_id), self._check_audience, self._audiences)
        out: list[ObjectCheck] = []
        for obj in objects:
            if obj.kind == AUDIENCE and obj.id == self.list_id:
                out.append(audience)
            elif audience.status != FOUND:
                why = audience.detail if audience.status == UNCHECKED else "its audience does not exist"
                out.append(ObjectCheck(obj.kind, obj.id, UNCHECKED, why))
            else:
                known = self._segments_known if obj.kind == STATIC_SEGMENT else None
                out.append(checker.read(obj, partial(self._check_object, obj), known))
        return out

    def _check_audience(self) -> ObjectCheck:
        response = self.client.request("GET", f"/lists/{self.list_id}", params={"fields": "id,name"})
        data = answer(response, "audience", ("id",))
        return ObjectCheck(AUDIENCE, self.list_id, FOUND, f"audience {data.get('name') or self.list_id}")

    def _audiences(self) -> list[tuple[str, str]]:
        response = self.client.request(
            "GET", "/lists", params={"count": 1000, "fields": "lists.id,lists.name"}
        )
        lists = _items(answer(response, "audiences", ("lists",)).get("lists"))
        return [(str(a.get("id")), str(a.get("name") or "")) for a in lists if a.get("id")]

    def _segments_known(self) -> list[tuple[str, str]]:
        path = f"/lists/{self.list_id}/segments"
        response = self.client.request("GET", path, params={"count": 1000, "type": "static"})
        segments = _items(answer(response, "static segments", ("segments",)).get("segments"))
        return [(str(s.get("id")), str(s.get("name") or "")) for s in segments if s.get("id") is not None]

    def _check_object(self, obj: MappedObject) -> ObjectCheck:
        if obj.kind == STATIC_SEGMENT:
            path = f"/lists/{self.list_id}/segments/{obj.id}"
            data = answer(self.client.request("GET", path), "static segment", ("id",))
            name, kind = data.get("name") or obj.id, str(data.get("type") or "static")
            if kind != "static":
                detail = f"`{name}` is a {kind} segment: only static segments (tags) take members"
                return ObjectCheck(obj.kind, obj.id, UNUSABLE, detail)
            return ObjectCheck(obj.kind, obj.id, FOUND, f"static segment {name}")
        if obj.kind == TAG:
            if self.tag_id(obj.id) is not None:
                return ObjectCheck(obj.kind, obj.id, FOUND, "tag in the audience")
            return ObjectCheck(
                obj.kind, obj.id, CREATED, "not in the audience yet: Mailchimp creates a tag on first use"
            )
        if obj.kind == MERGE_FIELD:
            if obj.id in self.merge_tags():
                return ObjectCheck(obj.kind, obj.id, FOUND, "merge field in the audience")
            return ObjectCheck(
                obj.kind, obj.id, CREATED, "not in the audience yet: the connector creates it on first write"
            )
        return ObjectCheck(obj.kind, obj.id, UNCHECKED, f"Mailchimp has no {obj.kind}")

    # -- merge fields ----------------------------------------------------------------------
    def merge_tags(self, refresh: bool = False) -> dict[str, str]:
        """The audience's merge tags and their types (``GET …/merge-fields``, paged by 1,000), cached."""
        if self._merge_tags is None or refresh:
            tags: dict[str, str] = {}
            offset = 0
            while True:
                response = self.client.request(
                    "GET",
                    f"/lists/{self.list_id}/merge-fields",
                    params={"count": MERGE_FIELDS_PAGE, "offset": offset},
                )
                data = answer(response, "merge fields", ("merge_fields",))
                page = _items(data.get("merge_fields"))
                for item in page:
                    if item.get("tag"):
                        tags[str(item["tag"])] = str(item.get("type") or "")
                offset += len(page)
                if not page or offset >= int(data.get("total_items") or 0):
                    break
            self._merge_tags = tags
            self._merge_read_now = True
        return self._merge_tags

    def _create_merge_field(self, tag: str, value: Any) -> None:
        body = {"tag": tag, "name": tag, "type": merge_type(value)}
        try:
            response = self.client.request("POST", f"/lists/{self.list_id}/merge-fields", json=body)
        except PermanentError as err:
            # another worker created it meanwhile ("A Merge Field with the tag … already exists")
            if err.status == 400 and tag in self.merge_tags(refresh=True):
                return
            raise
        data = json_body(response)
        data = data if isinstance(data, dict) else {}
        assert self._merge_tags is not None
        self._merge_tags[str(data.get("tag") or tag)] = str(data.get("type") or body["type"])

    def _ensure_merge_fields(
        self, changes: Sequence[Change], batch: BatchState, refresh: bool = False
    ) -> None:
        """Every merge tag these changes write exists in the audience (created when missing)."""
        touching = [c for c in changes if self.written_fields(c) or self.erased_fields(c, batch.before(c))]
        if not touching:
            return
        try:
            existing = self.merge_tags(refresh)
        except AdapterError as err:
            batch.fail_all(touching, err)
            return
        failed = self._create_missing(touching, existing)
        if not failed:
            return
        for change in touching:
            cause = next((failed[n] for n in sorted(self.written_fields(change)) if n in failed), None)
            if cause is not None:
                batch.fail(change, cause)

    def _create_missing(
        self, changes: Sequence[Change], existing: Mapping[str, str]
    ) -> dict[str, AdapterError]:
        """Create the merge fields the changes write that the audience lacks; returns the tags that
        could not be created and why."""
        wanted: dict[str, Any] = {}
        for change in changes:
            for name, value in self.written_fields(change).items():
                wanted.setdefault(name, value)
        failed: dict[str, AdapterError] = {}
        for tag, value in sorted(wanted.items()):
            if tag in existing:
                continue
            try:
                self._create_merge_field(tag, value)
            except AdapterError as err:
                if err.stops_destination:
                    raise
                failed[tag] = err
        return failed

    # -- member writes ---------------------------------------------------------------------
    def _batch_upsert(self, chunk: Sequence[Change], batch: BatchState) -> None:
        by_email: dict[str, Change] = {}
        single: list[Change] = []
        for change in chunk:
            key = (change.email or "").lower()
            if key in by_email:
                single.append(change)  # the same email twice in one batch: send it on its own
            else:
                by_email[key] = change
        fresh = [c for c in by_email.values() if not self.known(batch.before(c))]
        update = [c for c in by_email.values() if self.known(batch.before(c))]
        redrive: list[Change] = list(single)
        # create-only: new members get status_if_new; existing ones are reported and left untouched
        exists, failed, merge_trouble = self._batch_call(fresh, batch, update_existing=False)
        redrive += failed
        # update: no status and no status_if_new, so no member's status can change
        _, failed, trouble = self._batch_call([*update, *exists], batch, update_existing=True)
        redrive += failed
        if (merge_trouble or trouble) and not self._merge_read_now:
            # the cached merge fields may be stale (one deleted in Mailchimp): read them again
            self._ensure_merge_fields(redrive, batch, refresh=True)
        self._one_by_one(redrive, batch)

    def _one_by_one(self, changes: Sequence[Change], batch: BatchState) -> None:
        """``PUT`` member (+ tags call) per contact, which gives each its own answer. After an
        outage (a transient error that is not about one contact) the rest are not sent: they fail
        with it and wait for the retry instead of each meeting it in turn."""
        outage: AdapterError | None = None
        for change in batch.pending(changes):
            if outage is not None:
                batch.fail(change, outage)
            elif not batch.attempt(change, partial(self._single_upsert, change, batch.before(change))):
                err = batch.errors[change.profile_id]
                if err.retryable and not (isinstance(err, RateLimited) and err.per_contact):
                    outage = err

    def _batch_call(
        self, changes: Sequence[Change], batch: BatchState, *, update_existing: bool
    ) -> tuple[list[Change], list[Change], bool]:
        """One batch subscribe; returns (already members, contacts to send one by one, whether a
        failure concerned merge fields). A whole batch refused for what may be one member's fault
        (see :func:`refused_for_a_member`) is sent again one contact at a time, so only that member
        fails, with its own error."""
        if not changes:
            return [], [], False
        members = []
        for change in changes:
            member = self.member(change, batch.before(change), status_if_new=not update_existing)
            if change.tags:
                member["tags"] = sorted(change.tags)
            members.append(member)
        body = {"members": members, "update_existing": update_existing, "sync_tags": False}
        try:
            response = self.client.request("POST", f"/lists/{self.list_id}", json=body)
            data = answer(response, "batch subscribe")
        except AdapterError as err:
            if refused_for_a_member(err):
                return [], list(changes), "merge field" in f"{err.message} {err.detail}".lower()
            batch.fail_all(changes, err)
            return [], [], False
        return self._batch_answer(data, changes, batch, update_existing, response.status_code)

    @staticmethod
    def _batch_answer(
        data: Mapping[str, Any],
        changes: Sequence[Change],
        batch: BatchState,
        update_existing: bool,
        status: int,
    ) -> tuple[list[Change], list[Change], bool]:
        """Each email sent must be accounted for by the answer: in ``new_members`` or
        ``updated_members`` (written), or in ``errors``. One it does not name is not counted as
        written: it fails transiently (retried later)."""
        by_email = {str(c.email).lower(): c for c in changes}
        written = {
            str(item.get("email_address", "")).lower()
            for key in ("new_members", "updated_members")
            for item in _items(data.get(key))
        }
        exists: list[Change] = []
        failed: list[Change] = []
        trouble = False
        reported: set[str] = set()
        for item in _items(data.get("errors")):
            email = str(item.get("email_address", "")).lower()
            named = by_email.get(email)
            if named is None or email in reported:
                continue
            reported.add(email)
            if not update_existing and _already_member(item):
                exists.append(named)
            else:
                failed.append(named)
                trouble |= _merge_problem(item)
        for email, change in by_email.items():
            if email not in written and email not in reported:
                batch.fail(change, unconfirmed("batch subscribe", status))
        return exists, failed, trouble

    def _remove_tags(self, changes: Sequence[Change], batch: BatchState) -> None:
        """Tags the connector set and no longer wants. A tag dropped by many contacts at once goes
        through its static segment (``members_to_remove``, 500 per call); the rest one contact at a
        time through the tags endpoint."""
        by_tag: dict[str, list[Change]] = {}
        removals: dict[str, list[str]] = {}
        for change in changes:
            removed = self.removed_tags(change, batch.before(change))
            removals[change.profile_id] = removed
            for tag in removed:
                by_tag.setdefault(tag, []).append(change)
        done: dict[str, set[str]] = {}
        for tag, group in sorted(by_tag.items()):
            if len(group) >= self.config.bulk_tag_threshold:
                for pid in self._remove_by_segment(tag, group, batch):
                    done.setdefault(pid, set()).add(tag)
        for change in batch.pending(changes):
            rest = [t for t in removals[change.profile_id] if t not in done.get(change.profile_id, set())]
            if rest:
                batch.attempt(change, partial(self._drop_tags, change, rest))

    def _remove_by_segment(self, tag: str, group: Sequence[Change], batch: BatchState) -> list[str]:
        """Remove ``tag`` from the group through its static segment; returns the profiles it is
        gone from (none when the segment cannot be found: the tags endpoint is used instead)."""
        try:
            seg = self.tag_id(tag)
        except AdapterError as err:
            if err.stops_destination:
                raise
            return []  # fall back to the tags endpoint
        if seg is None:  # the tag no longer exists: nothing to remove
            return [c.profile_id for c in group]
        for i in range(0, len(group), BATCH_LIMIT):
            self._segment_call(seg, [], group[i : i + BATCH_LIMIT], batch, redrive=True)
        return [c.profile_id for c in batch.pending(group)]

    def tag_id(self, name: str) -> str | None:
        """The static segment id of a tag (``GET /lists/{id}/tag-search?name=``), cached."""
        key = name.casefold()
        if key not in self._tag_ids:
            response = self.client.request("GET", f"/lists/{self.list_id}/tag-search", params={"name": name})
            tags = _items(answer(response, "tag search", ("tags",)).get("tags"))
            match = next((t for t in tags if str(t.get("name", "")).casefold() == key), None)
            if match is None:
                return None
            self._tag_ids[key] = str(match["id"])
        return self._tag_ids[key]

    def _single_upsert(self, change: Change, owned: OwnedState) -> None:
        assert change.email
        key = subscriber_hash(change.email)
        path = f"/lists/{self.list_id}/members/{key}"
        response = self.client.request(
            "PUT", path, json=self.member(change, owned), params={"skip_merge_validation": "false"}
        )
        data = answer(response, "member write", ("id", "email_address"))
        if str(data.get("email_address", "")).lower() != change.email.lower() and data.get("id") != key:
            raise unconfirmed("member write", response.status_code)
        if change.tags:
            self._set_tags(change, sorted(change.tags), [])

    def _drop_tags(self, change: Change, tags: list[str]) -> None:
        try:
            self._set_tags(change, [], tags)
        except PermanentError as err:
            if err.status != 404:
                raise
            # 404: not in the audience (never added, archived or deleted): nothing to remove

    def _set_tags(self, change: Change, active: list[str], inactive: list[str]) -> None:
        assert change.email
        tags = [{"name": t, "status": "active"} for t in active]
        tags += [{"name": t, "status": "inactive"} for t in inactive]
        path = f"/lists/{self.list_id}/members/{subscriber_hash(change.email)}/tags"
        self.client.request("POST", path, json={"tags": tags, "is_syncing": self.config.is_syncing})

    def _segments(self, changes: Sequence[Change], batch: BatchState) -> None:
        adds: dict[str, list[Change]] = {}
        removes: dict[str, list[Change]] = {}
        for change in changes:
            before = batch.before(change).lists
            for seg in sorted(change.lists - before):
                adds.setdefault(seg, []).append(change)
            for seg in sorted(before - change.lists):
                removes.setdefault(seg, []).append(change)
        for seg in sorted(set(adds) | set(removes)):
            add, remove = adds.get(seg, []), removes.get(seg, [])
            for i in range(0, max(len(add), len(remove)), BATCH_LIMIT):
                part_add, part_remove = add[i : i + BATCH_LIMIT], remove[i : i + BATCH_LIMIT]
                failed = self._segment_call(seg, part_add, part_remove, batch, redrive=True)
                for joining, group in ((True, part_add), (False, part_remove)):
                    for change in group:
                        if change.profile_id not in failed:
                            batch.moved.record(change, seg, joining)

    def _segment_call(
        self,
        seg: str,
        add: Sequence[Change],
        remove: Sequence[Change],
        batch: BatchState,
        redrive: bool,
    ) -> set[str]:
        """One static-segment call; returns the profiles it failed for (their errors are set)."""
        body = {
            "members_to_add": [c.email for c in add],
            "members_to_remove": [c.email for c in remove],
        }
        everyone = {str(c.email).lower(): c for c in [*add, *remove]}
        try:
            response = self.client.request("POST", f"/lists/{self.list_id}/segments/{seg}", json=body)
            data = answer(response, f"static segment {seg}", SEGMENT_ANSWER)
        except AdapterError as err:
            batch.fail_all(everyone.values(), err)
            return {c.profile_id for c in everyone.values()}
        failed: dict[str, str] = {}
        for item in _items(data.get("errors")):
            emails = item.get("email_addresses")
            for email in emails if isinstance(emails, list) else []:
                failed[str(email).lower()] = str(item.get("error", ""))
        if not failed:
            return set()
        if redrive:
            again_add = [c for c in add if str(c.email).lower() in failed]
            again_remove = [c for c in remove if str(c.email).lower() in failed]
            return self._segment_call(seg, again_add, again_remove, batch, redrive=False)
        refused: set[str] = set()
        for email, message in failed.items():
            who = everyone.get(email)
            if who is not None:
                refused.add(who.profile_id)
                batch.fail(
                    who,
                    PermanentError(
                        f"static segment {seg}: {message}",
                        status=200,
                        code="segment_member_error",
                        detail=message,
                    ),
                )
        return refused
