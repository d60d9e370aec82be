"""HubSpot CRM v3: contacts upserted by email, tags in a multi-checkbox property, MANUAL lists.

Requests (see docs/destinations.md):

* tag options: ``GET /crm/v3/properties/contacts/{tags_property}``; created with
  ``POST /crm/v3/properties/contacts`` when missing; new options added with ``PATCH`` (full option list).
* the tags property created by the connector is marked as managed (its description and each
  option's); while it holds only the connector's options the connector's tags are written whole.
* hand-set tags kept in any other case: ``POST /crm/v3/objects/contacts/batch/read`` (≤100,
  idProperty email) reads the property before writing, so only tags the connector set are removed.
* upsert: ``POST /crm/v3/objects/contacts/batch/upsert`` (≤100, ``idProperty: email``, one
  ``objectWriteTraceId`` per profile). 207: only the failed items are re-driven. A whole-batch
  400 re-drives items one by one (``POST /crm/v3/objects/contacts``; 409 → the existing id →
  ``PATCH /crm/v3/objects/contacts/{id}``).
* lists: ``PUT /crm/v3/lists/{listId}/memberships/add`` / ``.../remove`` (bare array of record ids,
  ≤1,000 per call by local policy). Never the retired v1 lists API.
* erasure: ``POST /crm/v3/objects/contacts/gdpr-delete`` (``idProperty: email``).
* limits: ``X-HubSpot-RateLimit-*`` headers are read; a DAILY 429 blocks the key until midnight
  in the account's time zone; at most ``per_day`` requests per day of that time zone.
* answers: an input counts as written only when a result names it (trace id or email) with a
  record id; a 207 error is matched by trace id, context ids or the email in its message; anything
  else fails transiently. A record id in ``recordIdsMissing`` fails that contact (retried by email).
  A success whose body is not the documented answer (membership calls, property and contact reads)
  fails the contacts of the call transiently rather than being read as empty.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import partial
from typing import Any
from zoneinfo import ZoneInfo

import httpx

from .base import (
    CREATED,
    FOUND,
    LIST,
    PROPERTY,
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
    header_number,
    json_body,
    membership_plan,
    retry_after_header,
    status_error,
    unconfirmed,
)
from .change import Change, OwnedState
from .errors import DAILY, MAX_RETRY_AFTER, AdapterError, PermanentError, RateLimited, TransientError
from .ratelimit import Limits, Window

UPSERT_LIMIT = 100
LIST_CHUNK = 1000
# the fields of a membership call's answer (``recordsIdsAdded`` as the spec spells it, the docs'
# ``recordIdsAdded`` too): one at least, or it is not that answer
MEMBERSHIP_ANSWER = ("recordIdsMissing", "recordIdsRemoved", "recordsIdsAdded", "recordIdsAdded")
OPTION_KEYS = ("label", "value", "description", "displayOrder", "hidden")
# how the connector marks the tags property and the options it creates, in HubSpot's own UI
MANAGED = "Managed by segment-connector"
PROPERTY_DESCRIPTION = (
    f"{MANAGED}: the tags of the segments each contact is in. Values ticked here by hand are replaced "
    "at the contact's next sync; keep tags of your own in a property of your own."
)
_EXISTING_ID = re.compile(r"Existing ID:\s*(\d+)")
# a write naming a contact property HubSpot does not have (the message may be JSON-escaped)
_NO_PROPERTY = re.compile(r'Property \\?"([^"\\]+)\\?" does not exist')
MEMBERSHIP_TYPES = ("MANUAL", "SNAPSHOT")  # the lists that accept membership calls
LISTS_SEARCH_PAGE = 500


def about_property(err: AdapterError, message: str) -> AdapterError:
    """Name the property a refusal says does not exist (``PROPERTY_DOESNT_EXIST``)."""
    match = _NO_PROPERTY.search(message)
    return err.about(PROPERTY, match.group(1)) if match else err


@dataclass(frozen=True)
class HubSpotConfig:
    token: str = field(repr=False)
    base_url: str = "https://api.hubapi.com"
    tags_property: str = "esp_tags"
    tags_label: str = "Tags"
    tags_group: str = "contactinformation"
    # True: read the tags property before writing it, so values set by hand or by other tools stay.
    # False: write the connector's tags whole. None (auto): write whole only while the property is
    # the connector's own (created by it, every option added by it), else read first.
    preserve_unowned_tags: bool | None = None
    property_refresh_seconds: float = 300.0  # how long the tags property's options are trusted
    create_properties: bool = True  # create missing properties for mapped computed traits
    per_ten_seconds: int = 100
    # the account tier's daily quota (Free/Starter 250,000; Professional 650,000; Enterprise 1M),
    # counted per day of ``timezone``
    per_day: int = 250_000
    timezone: str = "UTC"  # the HubSpot account's time zone: the daily quota resets at its midnight


def _values(value: Any) -> list[str]:
    """A context value as strings: HubSpot sends lists (``{"ids": [..]}``), sometimes scalars."""
    if isinstance(value, list | tuple):
        return [str(v) for v in value if v is not None]
    return [] if value is None or isinstance(value, dict) else [str(value)]


def _mentions(text: str, email: str) -> bool:
    """``email`` appears in ``text`` as a whole address (not inside a longer one)."""
    pattern = r"(?<![A-Za-z0-9._%+-])" + re.escape(email) + r"(?![A-Za-z0-9_%+-]|\.[A-Za-z0-9])"
    return re.search(pattern, text, re.IGNORECASE) is not None


def error_targets(
    item: Mapping[str, Any], by_trace: Mapping[str, Change], by_email: Mapping[str, Change]
) -> list[Change]:
    """The inputs one 207 ``errors[]`` entry is about: by ``objectWriteTraceId`` (in ``context``
    or on the entry), by the ids in ``context`` (the emails sent as ``id``), else by an input's
    email in the message. Nested ``errors[].context`` (the StandardError shape) count as well."""
    nodes = [item, *(e for e in item.get("errors") or [] if isinstance(e, dict))]
    found: dict[str, Change] = {}
    for node in nodes:
        context = node.get("context")
        context = context if isinstance(context, dict) else {}
        for trace in _values(node.get("objectWriteTraceId")) + _values(context.get("objectWriteTraceId")):
            if trace in by_trace:
                found[by_trace[trace].profile_id] = by_trace[trace]
        for key in ("ids", "id", "email", "emails"):
            for value in _values(context.get(key)):
                change = by_email.get(value.lower())
                if change is not None:
                    found[change.profile_id] = change
    if not found:
        text = " ".join(str(node.get("message") or "") for node in nodes)
        for email, change in by_email.items():
            if _mentions(text, email):
                found[change.profile_id] = change
    return list(found.values())


def existing_id(body: Any) -> str | None:
    """The record id named by a 409 "Contact already exists. Existing ID: 512"."""
    message = body.get("message", "") if isinstance(body, dict) else ""
    match = _EXISTING_ID.search(str(message))
    return match.group(1) if match else None


class DailyQuotaClient(EspClient):
    """The shared client plus HubSpot's daily quota: ``per_day`` requests per calendar day in the
    account's time zone (the quota resets at its midnight), counted by every worker in one Redis
    counter per day. A spent quota raises a DAILY :class:`RateLimited` at once (never waited
    in-process): the sync worker defers the destination until midnight.
    """

    def __init__(self, transport: Transport, per_day: int, day: Callable[[], tuple[str, float]]) -> None:
        super().__init__(transport)
        self.per_day = per_day
        self.day = day  # → (the account's date, seconds until its midnight)

    def _send(self, method: str, path: str, body: Any, params: Mapping[str, Any] | None) -> httpx.Response:
        limiter = self.t.limiter
        if limiter is not None:
            today, left = self.day()
            if not limiter.take_quota(self.t.limiter_key, today, self.per_day, keep_seconds=left + 3600):
                raise RateLimited(
                    f"daily quota of {self.per_day} requests spent: resets in {left:.0f} s",
                    retry_after=left,
                    scope=DAILY,
                    status=None,
                    code="DAILY_LOCAL",
                )
        return super()._send(method, path, body, params)


class HubSpotAdapter(EspAdapter):
    name = "hubspot"
    batch_size = LIST_CHUNK  # upserts go 100 at a time inside; list calls take up to 1,000 ids
    erased_note = "GDPR delete"

    def __init__(self, config: HubSpotConfig, transport: Transport | None = None, **kw: Any) -> None:
        self.config = config
        transport = transport or Transport(
            base_url=config.base_url,
            headers={"Authorization": f"Bearer {config.token}", "Accept": "application/json"},
            limiter_key=credential_key("hubspot", config.token),
            error_mapper=self.map_error,
            # HubSpot counts its rolling window when requests arrive: 0.1 s more than 10 s keeps
            # network jitter from landing a request in a window that is already full.
            buckets={"default": Limits(windows=(Window(config.per_ten_seconds, 10.1),))},
            observe=self.observe,
            **kw,
        )
        transport.error_mapper = self.map_error
        transport.observe = self.observe
        self.client: EspClient = DailyQuotaClient(transport, config.per_day, self.account_day)
        self._options: set[str] | None = None
        self._options_read_at = 0.0
        # the tags property was created by the connector and holds only options it added
        self._own_property = False
        self._fields: set[str] = {"email"}

    # -- errors and headers ----------------------------------------------------------------
    def seconds_until_reset(self) -> float:
        return self.account_day()[1]

    def account_day(self) -> tuple[str, float]:
        """The account's current date and the seconds until its midnight (the daily reset)."""
        tz = ZoneInfo(self.config.timezone)
        now = datetime.fromtimestamp(self.client.t.clock(), tz)
        midnight = (now + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return now.date().isoformat(), max(1.0, (midnight - now).total_seconds())

    def map_error(self, response: httpx.Response) -> AdapterError:
        body = json_body(response)
        body = body if isinstance(body, dict) else {}
        category = str(body.get("category") or body.get("errorType") or "") or None
        message = str(body.get("message") or "")
        if response.status_code == 429:
            policy = str(body.get("policyName") or "")
            if policy == DAILY:
                return RateLimited(
                    "429 daily limit reached",
                    retry_after=self.seconds_until_reset(),
                    scope=DAILY,
                    code=policy,
                    detail=message,
                )
            wait = retry_after_header(response)
            if wait is None:
                interval = header_number(response.headers.get("X-HubSpot-RateLimit-Interval-Milliseconds"))
                wait = 10.0 if interval is None else min(interval / 1000, MAX_RETRY_AFTER)
            return RateLimited(
                f"429 {policy or 'rate limit'}", retry_after=wait, code=policy or None, detail=message
            )
        return about_property(status_error(response, category, message), message)

    def observe(self, response: httpx.Response) -> None:
        limiter = self.client.t.limiter if hasattr(self, "client") else None
        if limiter is None or response.status_code == 429:
            return
        key = self.client.t.limiter_key
        headers = response.headers
        # `X-HubSpot-RateLimit-Remaining: 0` needs nothing here: the shared sliding window already
        # holds the next request until the oldest one leaves the rolling 10 s window. Blocking for a
        # whole interval from this response would waste the time the window has already run (and a
        # token shared with another app answers 429, which slows this key down adaptively).
        if headers.get("X-HubSpot-RateLimit-Daily-Remaining") == "0":
            limiter.block_until(key, self.client.t.clock() + self.seconds_until_reset())
        elif headers.get("X-HubSpot-RateLimit-Secondly-Remaining") == "0":
            limiter.block_until(key, self.client.t.clock() + 1.0)

    # -- tags property ---------------------------------------------------------------------
    @staticmethod
    def new_option(tag: str) -> dict[str, str]:
        return {"label": tag, "value": tag, "description": MANAGED}

    def ensure_options(self, tags: set[str]) -> None:
        """The tags property exists with an option for each of ``tags``. Its options are re-read
        after ``property_refresh_seconds``, so an option someone added by hand is noticed."""
        prop = self.config.tags_property
        now = self.client.t.clock()
        fresh = now - self._options_read_at < self.config.property_refresh_seconds
        if self._options is not None and fresh and tags <= self._options:
            return
        try:
            response = self.client.request("GET", f"/crm/v3/properties/contacts/{prop}")
            data = answer(response, f"property {prop}", ("options",))
            options = [o for o in data.get("options") or [] if isinstance(o, dict)]
            known = {str(o.get("value")) for o in options}
        except PermanentError as err:
            if err.status != 404:
                raise
            body = {
                "name": prop,
                "label": self.config.tags_label,
                "description": PROPERTY_DESCRIPTION,
                "type": "enumeration",
                "fieldType": "checkbox",
                "groupName": self.config.tags_group,
                "options": [self.new_option(t) for t in sorted(tags)],
            }
            try:
                self.client.request("POST", "/crm/v3/properties/contacts", json=body)
            except PermanentError as conflict:
                if conflict.status != 409:  # created meanwhile by another worker: read it next time
                    raise
                self._options = None
                self._own_property = False
                return
            self._options, self._options_read_at, self._own_property = set(tags), now, True
            return
        self._own_property = MANAGED in str(data.get("description") or "") and all(
            MANAGED in str(o.get("description") or "") for o in options
        )
        missing = sorted(tags - known)
        # what exists now, even when adding the missing options fails below: a caller can still
        # write the contacts whose tags are all known
        self._options, self._options_read_at = known, now
        if missing:
            full = [{k: o[k] for k in OPTION_KEYS if o.get(k) is not None} for o in options]
            full += [self.new_option(t) for t in missing]
            self.client.request("PATCH", f"/crm/v3/properties/contacts/{prop}", json={"options": full})
        self._options = known | tags

    def reads_tags_first(self) -> bool:
        """Whether the tags property is read before it is written (see ``preserve_unowned_tags``)."""
        if self.config.preserve_unowned_tags is not None:
            return self.config.preserve_unowned_tags
        return not self._own_property

    def ensure_fields(self, changes: Sequence[Change]) -> None:
        """Create the contact properties the computed traits map to when they do not exist yet
        (``string``/``text``, or ``number`` when the first value is a number)."""
        samples: dict[str, Any] = {}
        for change in changes:
            for name, value in change.fields.items():
                if value is not None and name not in self._fields and name not in samples:
                    samples[name] = value
        for name, value in sorted(samples.items()):
            try:
                self.client.request("GET", f"/crm/v3/properties/contacts/{name}")
            except PermanentError as err:
                if err.status != 404:
                    raise
                numeric = isinstance(value, int | float) and not isinstance(value, bool)
                body = {
                    "name": name,
                    "label": name.replace("_", " ").capitalize(),
                    "type": "number" if numeric else "string",
                    "fieldType": "number" if numeric else "text",
                    "groupName": self.config.tags_group,
                }
                try:
                    self.client.request("POST", "/crm/v3/properties/contacts", json=body)
                except PermanentError as conflict:
                    if conflict.status != 409:
                        raise
            self._fields.add(name)

    def current_tags(self, emails: Sequence[str]) -> dict[str, tuple[str | None, set[str]]]:
        """email (lower) → (record id, current values of the tags property), for existing contacts."""
        out: dict[str, tuple[str | None, set[str]]] = {}
        prop = self.config.tags_property
        for chunk in chunks(list(emails), UPSERT_LIMIT):
            body = {
                "idProperty": "email",
                "inputs": [{"id": e} for e in chunk],
                "properties": ["email", prop],
            }
            response = self.client.request("POST", "/crm/v3/objects/contacts/batch/read", json=body)
            results = answer(response, "contacts batch read", ("results",)).get("results")
            for item in results if isinstance(results, list) else []:
                if not isinstance(item, dict):
                    continue
                props = item.get("properties") or {}
                email = str(props.get("email") or "").lower()
                raw = props.get(prop) or ""
                out[email] = (
                    str(item.get("id")) if item.get("id") else None,
                    {t for t in raw.split(";") if t},
                )
        return out

    # -- mapping check (read requests only) ------------------------------------------------
    def check_mapping(self, objects: Sequence[MappedObject]) -> list[ObjectCheck]:
        """Lists (``GET /crm/v3/lists/{id}``: MANUAL or SNAPSHOT), the tags property and its options
        and the mapped contact properties (``GET /crm/v3/properties/contacts/{name}``). What the
        connector creates itself (the tags property, its options, properties of computed traits
        while ``create_properties`` is on) is not an error when missing."""
        checker = Checker()
        props: dict[str, dict[str, Any] | None] = {}
        out: list[ObjectCheck] = []
        for obj in objects:
            if obj.kind == LIST:
                out.append(checker.read(obj, partial(self._check_list, obj), self._lists_known))
            elif obj.kind in (TAG, PROPERTY):
                check = partial(self._check_property, obj, props)
                out.append(checker.read(obj, check, self._properties_known))
            else:
                out.append(ObjectCheck(obj.kind, obj.id, UNCHECKED, f"HubSpot has no {obj.kind}"))
        return out

    def _check_list(self, obj: MappedObject) -> ObjectCheck:
        data = answer(self.client.request("GET", f"/crm/v3/lists/{obj.id}"), "list", ("list",))
        found = data["list"] if isinstance(data.get("list"), dict) else {}
        name, kind = found.get("name") or obj.id, str(found.get("processingType") or "")
        if kind and kind not in MEMBERSHIP_TYPES:
            detail = f"`{name}` is a {kind} list: only MANUAL and SNAPSHOT lists take members"
            return ObjectCheck(obj.kind, obj.id, UNUSABLE, detail)
        return ObjectCheck(obj.kind, obj.id, FOUND, f"list {name}")

    def _lists_known(self) -> list[tuple[str, str]]:
        """Every contact list (``POST /crm/v3/lists/search``, a read), for a did-you-mean."""
        out: list[tuple[str, str]] = []
        for _ in range(10):  # at most 5,000 lists
            body = {"query": "", "count": LISTS_SEARCH_PAGE, "offset": len(out)}
            data = answer(self.client.request("POST", "/crm/v3/lists/search", json=body), "lists", ("lists",))
            page = [item for item in data.get("lists") or [] if isinstance(item, dict)]
            out += [(str(item.get("listId")), str(item.get("name") or "")) for item in page]
            if not page or not data.get("hasMore"):
                break
        return out

    def _property(self, name: str, props: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
        """The contact property ``name`` (read once per check), None when HubSpot has none."""
        if name not in props:
            try:
                response = self.client.request("GET", f"/crm/v3/properties/contacts/{name}")
                props[name] = answer(response, f"property {name}", ("name",))
            except PermanentError as err:
                if err.status != 404:
                    raise
                props[name] = None
        return props[name]

    def _check_property(self, obj: MappedObject, props: dict[str, dict[str, Any] | None]) -> ObjectCheck:
        prop = self.config.tags_property
        if obj.kind == TAG or obj.id == prop:
            found = self._property(prop, props)
            if found is None:
                return ObjectCheck(
                    obj.kind, obj.id, CREATED, f"the connector creates the property {prop} on first use"
                )
            if obj.kind == PROPERTY:
                return ObjectCheck(obj.kind, obj.id, FOUND, f"{found.get('fieldType') or 'a'} property")
            options = {str(o.get("value")) for o in found.get("options") or [] if isinstance(o, dict)}
            if obj.id in options:
                return ObjectCheck(obj.kind, obj.id, FOUND, f"an option of {prop}")
            return ObjectCheck(
                obj.kind, obj.id, CREATED, f"the connector adds it to {prop}'s options on first use"
            )
        found = self._property(obj.id, props)
        if found is not None:
            return ObjectCheck(obj.kind, obj.id, FOUND, f"{found.get('type') or 'a'} property")
        if self.config.create_properties:
            return ObjectCheck(
                obj.kind, obj.id, CREATED, "the connector creates it on first write (create_properties)"
            )
        raise PermanentError(
            f"404 OBJECT_NOT_FOUND: no contact property {obj.id} (create_properties is off)", status=404
        )

    def _properties_known(self) -> list[tuple[str, str]]:
        """Every contact property (``GET /crm/v3/properties/contacts``), for a did-you-mean."""
        data = answer(self.client.request("GET", "/crm/v3/properties/contacts"), "properties", ("results",))
        items = [p for p in data.get("results") or [] if isinstance(p, dict) and p.get("name")]
        return [(str(p["name"]), str(p.get("label") or "")) for p in items]

    # -- apply -----------------------------------------------------------------------------
    def properties(self, change: Change, owned: OwnedState, current: set[str] | None) -> dict[str, Any]:
        props: dict[str, Any] = {"email": change.email}
        for name in owned.fields:
            props[name] = ""
        for name, value in change.fields.items():
            if value is None:
                continue  # cleared above when the connector set it; otherwise left alone
            props[name] = str(value).lower() if isinstance(value, bool) else value
        if change.tags or owned.tags:  # a contact the connector never tagged: the property is left alone
            kept = (current or set()) - owned.tags
            props[self.config.tags_property] = ";".join(sorted(kept | set(change.tags)))
        return props

    def write(self, batch: BatchState) -> None:
        self._upsert_all(batch)
        batch.written = set(batch.ids)

    def memberships(self, batch: BatchState) -> None:
        self._lists(batch)

    def delete_contact(self, email: str) -> None:
        body = {"objectId": email, "idProperty": "email"}
        self.client.request("POST", "/crm/v3/objects/contacts/gdpr-delete", json=body)

    def _upsert_all(self, batch: BatchState) -> None:
        try:
            self._prepare(batch)
        except AdapterError as err:
            batch.fail_all(batch.live, err)
            return
        for wave in waves(batch.live):
            for chunk in chunks(wave, UPSERT_LIMIT):
                self._upsert(list(chunk), batch, redrive=True)

    def _prepare(self, batch: BatchState) -> None:
        """The tags property's options and the mapped properties exist; the current tags are read
        when hand-set values must be kept."""
        upserts = batch.live
        tagging = [c for c in upserts if c.tags or batch.before(c).tags]
        if tagging:
            self.ensure_options(set().union(*(c.tags for c in upserts)))
        if self.config.create_properties:
            self.ensure_fields(upserts)
        if tagging and self.reads_tags_first():
            current = self.current_tags(sorted({str(c.email).lower() for c in tagging}))
            for change in upserts:
                found = current.get(str(change.email).lower())
                if found is not None:
                    batch.remote_tags[change.profile_id] = found[1]

    def _input(self, change: Change, batch: BatchState) -> dict[str, Any]:
        props = self.properties(change, batch.before(change), batch.remote_tags.get(change.profile_id))
        return {
            "id": change.email,
            "idProperty": "email",
            "objectWriteTraceId": change.profile_id,
            "properties": props,
        }

    def _upsert(self, chunk: list[Change], batch: BatchState, redrive: bool) -> None:
        """One batch upsert. A whole-batch refusal re-drives the contacts one by one; 207 errors
        are re-driven once (after re-reading the tags options when one was unknown)."""
        inputs = [self._input(change, batch) for change in chunk]
        try:
            response = self.client.request(
                "POST", "/crm/v3/objects/contacts/batch/upsert", json={"inputs": inputs}
            )
        except AdapterError as err:
            if redrive and len(chunk) > 1 and isinstance(err, PermanentError) and not err.stops_destination:
                for change, item in zip(chunk, inputs, strict=True):
                    self._single(change, item["properties"], batch)
            else:
                batch.fail_all(chunk, err)
            return
        data = json_body(response)
        data = data if isinstance(data, dict) else {}
        confirmed = self._confirmed(data, chunk, batch)
        reported = self._reported(data, [c for c in chunk if c.profile_id not in confirmed])
        unconfirmed = [c for c in chunk if c.profile_id not in confirmed]
        options, again = self._refusals(unconfirmed, reported, response.status_code, redrive, batch)
        if options:
            again += self._with_options(options, batch)
        if again:
            self._upsert(again, batch, redrive=False)

    @staticmethod
    def _confirmed(data: Mapping[str, Any], chunk: Sequence[Change], batch: BatchState) -> set[str]:
        """The contacts a result names (trace id, else email) with a record id; their ids are kept."""
        by_trace = {c.profile_id: c for c in chunk}
        by_email = {str(c.email).lower(): c for c in chunk}
        confirmed: set[str] = set()
        for item in data.get("results") or []:
            if not isinstance(item, dict) or item.get("id") is None:
                continue
            trace = item.get("objectWriteTraceId")
            done = by_trace.get(str(trace)) if trace is not None else None
            if done is None:
                done = by_email.get(str((item.get("properties") or {}).get("email", "")).lower())
            if done is not None:
                batch.ids[done.profile_id] = str(item["id"])
                confirmed.add(done.profile_id)
        return confirmed

    @staticmethod
    def _reported(data: Mapping[str, Any], unconfirmed: Sequence[Change]) -> dict[str, Mapping[str, Any]]:
        """profile → the 207 error entry about it, among the inputs HubSpot did not confirm (an
        error entry never undoes a confirmed write)."""
        by_trace = {c.profile_id: c for c in unconfirmed}
        by_email = {str(c.email).lower(): c for c in unconfirmed}
        reported: dict[str, Mapping[str, Any]] = {}
        for item in data.get("errors") or []:
            if isinstance(item, dict):
                for failed in error_targets(item, by_trace, by_email):
                    reported.setdefault(failed.profile_id, item)
        return reported

    @staticmethod
    def _refusals(
        unconfirmed: Sequence[Change],
        reported: Mapping[str, Mapping[str, Any]],
        status: int,
        redrive: bool,
        batch: BatchState,
    ) -> tuple[list[Change], list[Change]]:
        """Fail the refused contacts that a second try cannot help; returns (those refused for an
        unknown tag option, the others to send again)."""
        options: list[Change] = []
        again: list[Change] = []
        for change in unconfirmed:
            item = reported.get(change.profile_id)
            if item is None:  # neither a result nor an error: never count it as written
                batch.fail(
                    change,
                    TransientError(
                        f"HubSpot answered {status} without a result or an error for this contact",
                        status=status,
                        code="unconfirmed",
                    ),
                )
                continue
            category = str(item.get("category") or "")
            message = str(item.get("message") or "")
            text = f"207 {category}: {message}"[:500]
            if category == "VALIDATION_ERROR" and "INVALID_OPTION" not in message:
                refused = PermanentError(text, status=207, code=category, detail=message)
                batch.fail(change, about_property(refused, message))
            elif redrive:
                (options if "INVALID_OPTION" in message else again).append(change)
            else:
                batch.fail(change, TransientError(text, status=207, code=category, detail=message))
        return options, again

    def _with_options(self, options: list[Change], batch: BatchState) -> list[Change]:
        """The options are read again (one may have been removed by hand) and added; returns the
        contacts whose tags all have an option now (the others fail)."""
        self._options = None
        try:
            self.ensure_options(set().union(*(c.tags for c in options)))
        except AdapterError as err:
            if err.stops_destination:
                raise
            known: set[str] = self._options or set()
            batch.fail_all([c for c in options if not c.tags <= known], err)
            return [c for c in options if c.tags <= known]
        return options

    def _single(self, change: Change, props: dict[str, Any], batch: BatchState) -> None:
        batch.attempt(change, lambda: self._create_or_update(change, props, batch))

    def _create_or_update(self, change: Change, props: dict[str, Any], batch: BatchState) -> None:
        try:
            data = json_body(
                self.client.request("POST", "/crm/v3/objects/contacts", json={"properties": props})
            )
            record = data.get("id") if isinstance(data, dict) else None
            if record is None:
                raise TransientError(
                    "HubSpot created the contact without answering its id", code="unconfirmed"
                )
            batch.ids[change.profile_id] = str(record)
            return
        except PermanentError as err:
            if err.status != 409:
                raise
            record = existing_id({"message": err.detail})
            if record is None:
                raise
        response = self.client.request(
            "PATCH", f"/crm/v3/objects/contacts/{record}", json={"properties": props}
        )
        if answer(response, "contact update", ("id",)).get("id") is None:
            raise unconfirmed("contact update", response.status_code)
        batch.ids[change.profile_id] = record

    def _lists(self, batch: BatchState) -> None:
        def missing() -> AdapterError:
            return TransientError("no HubSpot record id yet", code="no_record_id")

        plan = membership_plan(batch, batch.pending(), missing)
        for (list_id, joining), members in sorted(plan.items()):
            action = "add" if joining else "remove"
            for chunk in chunks(members, LIST_CHUNK):
                body = sorted({record for _, record in chunk})
                try:
                    response = self.client.request(
                        "PUT", f"/crm/v3/lists/{list_id}/memberships/{action}", json=body
                    )
                    moved = answer(response, f"list {list_id} {action}", MEMBERSHIP_ANSWER)
                except AdapterError as err:
                    if not err.retryable and (err.status == 404 or list_id in err.message):
                        err.about(LIST, list_id)  # no such list, or one that takes no members
                    batch.fail_all((change for change, _ in chunk), err)
                    continue
                self._members_moved(batch, chunk, list_id, joining, moved, response.status_code)

    @staticmethod
    def _members_moved(
        batch: BatchState,
        chunk: Sequence[tuple[Change, str]],
        list_id: str,
        joining: bool,
        moved: Mapping[str, Any],
        status: int,
    ) -> None:
        """Record the confirmed moves; a record id in ``recordIdsMissing`` fails its contact."""
        absent = set(_values(moved.get("recordIdsMissing")))
        action = "add" if joining else "remove"
        for change, record in chunk:
            if record not in absent:
                batch.moved.record(change, list_id, joining)
                continue
            # a merged or deleted record (or one the lists service does not see yet): the
            # cached id is not trusted; the retry upserts by email and gets the current id
            batch.ids.pop(change.profile_id, None)
            batch.fail(
                change,
                TransientError(
                    f"HubSpot reports record {record} missing on list {list_id} {action}",
                    status=status,
                    code="record_missing",
                ),
            )


def waves(upserts: Sequence[Change]) -> list[list[Change]]:
    """The same email twice in one batch is a 400: later ones go in the next wave."""
    out: list[list[Change]] = []
    for change in upserts:
        for wave in out:
            if all(str(c.email).lower() != str(change.email).lower() for c in wave):
                wave.append(change)
                break
        else:
            out.append([change])
    return out
