"""Klaviyo (JSON:API, revisioned): profile import, a list-valued tags property, list relationships.

Requests (see docs/destinations.md), every one with ``Authorization: Klaviyo-API-Key …``, a
``revision`` header and ``application/vnd.api+json``:

* upsert: ``POST /api/profile-import`` (201 created / 200 updated; the profile id is kept in the
  ownership ledger). Tags go to a list-valued custom property through
  ``meta.patch_properties.append`` / ``unappend``, so values the connector did not set are never
  removed; owned fields no longer wanted are ``unset``. Skipped when only list memberships changed
  and the profile id is known.
* bulk: ``POST /api/profile-bulk-import-jobs`` (≤ 10,000 profiles, with the list relationship)
  when a batch holds at least ``bulk_threshold`` imports (5: a steady flow of changes, a backfill),
  polled after 0.2 s, then 0.4, 0.8, 1 s …. A job writes the tags property whole, so
  the current values are read first (``GET /api/profiles``, 100 emails per lookup) and written back
  with only the connector's own tags added and removed.
* lists: ``POST`` / ``DELETE /api/lists/{id}/relationships/profiles`` (≤1,000 profile ids, 204).
* events (optional): ``POST /api/events`` "Segment Entered" / "Segment Exited" with a stable
  ``unique_id``, to start flows.
* erasure: ``POST /api/data-privacy-deletion-jobs`` (202).
* limits per endpoint (burst 1 s + steady 60 s); ``Retry-After`` honoured on 429.
* answers: an import counts when its answer carries the profile id, a job when it carries the job
  id; otherwise, or when a lookup or poll answer cannot be read, the contacts fail transiently.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import httpx

from .base import (
    CREATED,
    FOUND,
    LIST,
    PROPERTY,
    TAG,
    UNCHECKED,
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
    status_error,
    unconfirmed,
)
from .change import Change, OwnedState
from .errors import MAX_RETRY_AFTER, AdapterError, PermanentError, TransientError
from .ratelimit import Limits, Window

LIST_LIMIT = 1000
BULK_LIMIT = 10_000
BULK_BYTES = 4_500_000  # under the 5 MB request limit
JSONAPI = "application/vnd.api+json"
OVER_BUDGET = "over the batch's per-contact request budget"
BUCKETS = {
    "profile-import": Limits(windows=(Window(75, 1.0), Window(750, 60.0))),  # its own page: 750/m
    "lists": Limits(windows=(Window(10, 1.0), Window(150, 60.0))),
    "events": Limits(windows=(Window(350, 1.0), Window(3500, 60.0))),
    "bulk": Limits(windows=(Window(10, 1.0), Window(150, 60.0))),
    "profiles": Limits(windows=(Window(75, 1.0), Window(700, 60.0))),
    "default": Limits(windows=(Window(3, 1.0), Window(60, 60.0))),
}


@dataclass(frozen=True)
class KlaviyoConfig:
    api_key: str = field(repr=False)
    base_url: str = "https://a.klaviyo.com"
    revision: str = "2024-10-15"
    tags_property: str = "esp_tags"
    segment_events: bool = False
    entered_metric: str = "Segment Entered"
    exited_metric: str = "Segment Exited"
    # imports in one batch from which bulk import jobs are used. profile-import allows 750/min
    # (12.5/s) and a destination sends at most one batch per batch delay (0.5 s by default): below
    # 5 per batch (≤ 8 imports/s) each contact is its own import, above it one job per batch keeps a
    # steady flow within the endpoints' limits (bulk jobs 150/min: ≤ 2 per second of batches)
    bulk_threshold: int = 5
    bulk_wait_seconds: float = 60.0
    bulk_first_poll_seconds: float = 0.2  # then doubling up to bulk_poll_seconds
    bulk_poll_seconds: float = 1.0
    # requests to per-contact endpoints (profile-import, events) one batch may make; contacts past
    # it are deferred to the next batch, so a large batch without bulk jobs never holds a worker for
    # long (1,000 imports take 80 s at 750/min)
    per_contact_budget: int = 1000


class _Redrive(PermanentError):
    """A bulk job did not complete cleanly: its changes go through profile-import one by one."""

    def __init__(self, cause: AdapterError) -> None:
        super().__init__(cause.message, status=cause.status, code=cause.code, detail=cause.detail)


class Conflict(PermanentError):
    """409 ``duplicate_profile``: ``duplicate_id`` is the existing profile."""

    def __init__(self, message: str, duplicate_id: str | None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.duplicate_id = duplicate_id


def map_error(response: httpx.Response) -> AdapterError:
    body = json_body(response)
    first: dict[str, Any] = {}
    if isinstance(body, dict) and isinstance(body.get("errors"), list) and body["errors"]:
        first = body["errors"][0] if isinstance(body["errors"][0], dict) else {}
    code = str(first.get("code") or "") or None
    detail = str(first.get("detail") or first.get("title") or "")
    pointer = (first.get("source") or {}).get("pointer") if isinstance(first.get("source"), dict) else None
    if pointer:
        detail = f"{detail} ({pointer})"
    if response.status_code == 409 and code == "duplicate_profile":
        dup = (first.get("meta") or {}).get("duplicate_profile_id")
        return Conflict(f"409 {code}", str(dup) if dup else None, status=409, code=code, detail=detail)
    return status_error(response, code, detail)


class KlaviyoAdapter(EspAdapter):
    name = "klaviyo"
    batch_size = BULK_LIMIT  # list calls go 1,000 ids at a time inside; bulk jobs take 10,000
    erased_note = "data-privacy deletion requested"

    def __init__(self, config: KlaviyoConfig, transport: Transport | None = None, **kw: Any) -> None:
        self.config = config
        transport = transport or Transport(
            base_url=config.base_url,
            headers={
                "Authorization": f"Klaviyo-API-Key {config.api_key}",
                "revision": config.revision,
                "Accept": JSONAPI,
                "Content-Type": JSONAPI,
            },
            limiter_key=credential_key("klaviyo", config.api_key),
            error_mapper=map_error,
            buckets=BUCKETS,
            observe=self.observe,
            **kw,
        )
        self.client = EspClient(transport)

    def observe(self, response: httpx.Response) -> None:
        """``RateLimit-Remaining: 0`` on a success: hold the key until ``RateLimit-Reset``."""
        client = getattr(self, "client", None)
        if client is None or client.t.limiter is None or response.status_code == 429:
            return
        if response.headers.get("RateLimit-Remaining") != "0":
            return
        reset = header_number(response.headers.get("RateLimit-Reset"))
        wait = None if reset is None else min(reset, MAX_RETRY_AFTER)
        if wait is not None:
            client.t.limiter.block_until(client.t.limiter_key, client.t.clock() + wait)

    # -- requests --------------------------------------------------------------------------
    def import_body(self, change: Change, owned: OwnedState, profile_id: str | None = None) -> dict[str, Any]:
        prop = self.config.tags_property
        attributes: dict[str, Any] = {"email": change.email}
        properties = {k: v for k, v in change.fields.items() if v is not None}
        if properties:
            attributes["properties"] = properties
        data: dict[str, Any] = {"type": "profile", "attributes": attributes}
        if profile_id:
            data["id"] = profile_id
        patch: dict[str, Any] = {}
        added = sorted(change.tags - owned.tags)
        removed = sorted(owned.tags - change.tags)
        if added:
            patch["append"] = {prop: added}
        if removed:
            patch["unappend"] = {prop: removed}
        unset = sorted(n for n in owned.fields if change.fields.get(n) is None)
        if unset:
            patch["unset"] = unset
        if patch:
            data["meta"] = {"patch_properties": patch}
        return {"data": data}

    @staticmethod
    def needs_import(change: Change, owned: OwnedState) -> bool:
        """Tags or fields to write, or a list to join without a known profile id (the import creates
        the profile and returns its id). A contact that only leaves lists is not imported: its id
        comes from the ledger or a lookup by email."""
        values = any(v is not None for v in change.fields.values())
        joins_without_id = owned.remote_id is None and bool(change.lists - owned.lists)
        return change.tags != owned.tags or values or bool(owned.fields) or joins_without_id

    def upsert(self, change: Change, owned: OwnedState) -> str:
        try:
            response = self.client.request(
                "POST", "/api/profile-import", json=self.import_body(change, owned), bucket="profile-import"
            )
        except Conflict as err:
            if not err.duplicate_id:
                raise
            response = self.client.request(
                "POST",
                "/api/profile-import",
                json=self.import_body(change, owned, err.duplicate_id),
                bucket="profile-import",
            )
        data = answer(response, "profile-import", ("data",)).get("data")
        if not isinstance(data, dict) or not data.get("id"):
            raise unconfirmed("profile-import", response.status_code)
        return str(data["id"])

    def event(self, change: Change, segment: str, entered: bool) -> None:
        metric = self.config.entered_metric if entered else self.config.exited_metric
        direction = "in" if entered else "out"
        body = {
            "data": {
                "type": "event",
                "attributes": {
                    "properties": {"segment": segment},
                    "unique_id": f"{change.profile_id}:{segment}:{change.version}:{direction}",
                    "metric": {"data": {"type": "metric", "attributes": {"name": metric}}},
                    "profile": {"data": {"type": "profile", "attributes": {"email": change.email}}},
                },
            }
        }
        self.client.request("POST", "/api/events", json=body, bucket="events")

    # -- apply -----------------------------------------------------------------------------
    def write(self, batch: BatchState) -> None:
        importing, bulk = self._plan(batch)
        in_bulk = self._bulk_import(bulk, batch) if bulk else set()
        self._import_one_by_one(importing, in_bulk, batch)
        for change in batch.live:
            remote = batch.before(change).remote_id
            if change.profile_id not in batch.ids and remote:
                batch.ids[change.profile_id] = remote

    def memberships(self, batch: BatchState) -> None:
        self._resolve_missing_ids(batch)
        self._lists(batch)

    def follow_up(self, batch: BatchState) -> None:
        if not self.config.segment_events:
            return
        for change in batch.pending():
            batch.attempt(change, partial(self._events, change, batch.before(change)))

    # -- mapping check (read requests only) ------------------------------------------------
    def check_mapping(self, objects: Sequence[MappedObject]) -> list[ObjectCheck]:
        """Lists (``GET /api/lists/{id}``); tags and fields are values of profile properties, which
        Klaviyo creates with their first value: nothing to check there."""
        checker = Checker()
        out: list[ObjectCheck] = []
        for obj in objects:
            if obj.kind == LIST:
                out.append(checker.read(obj, partial(self._check_list, obj), self._lists_known))
            elif obj.kind == TAG:
                detail = f"a value of the profile property {self.config.tags_property}: nothing to set up"
                out.append(ObjectCheck(obj.kind, obj.id, CREATED, detail))
            elif obj.kind == PROPERTY:
                detail = "a profile property: Klaviyo creates it with its first value"
                out.append(ObjectCheck(obj.kind, obj.id, CREATED, detail))
            else:
                out.append(ObjectCheck(obj.kind, obj.id, UNCHECKED, f"Klaviyo has no {obj.kind}"))
        return out

    def _check_list(self, obj: MappedObject) -> ObjectCheck:
        response = self.client.request("GET", f"/api/lists/{obj.id}", bucket="profiles")
        data = answer(response, "list", ("data",)).get("data")
        attributes = (data.get("attributes") if isinstance(data, dict) else None) or {}
        return ObjectCheck(obj.kind, obj.id, FOUND, f"list {attributes.get('name') or obj.id}")

    def _lists_known(self) -> list[tuple[str, str]]:
        """The account's lists (``GET /api/lists``, following ``links.next``), for a did-you-mean."""
        out: list[tuple[str, str]] = []
        params: dict[str, str] = {}
        for _ in range(20):  # a few hundred lists at most
            response = self.client.request("GET", "/api/lists", params=params, bucket="profiles")
            data = answer(response, "lists", ("data",))
            for item in data.get("data") or []:
                if isinstance(item, dict) and item.get("id"):
                    name = (item.get("attributes") or {}).get("name") or ""
                    out.append((str(item["id"]), str(name)))
            links = data.get("links")
            cursor = (
                httpx.URL(str(links.get("next"))).params.get("page[cursor]")
                if isinstance(links, dict) and links.get("next")
                else None
            )
            if not cursor:
                break
            params = {"page[cursor]": cursor}
        return out

    def delete_contact(self, email: str) -> None:
        body = {
            "data": {
                "type": "data-privacy-deletion-job",
                "attributes": {"profile": {"data": {"type": "profile", "attributes": {"email": email}}}},
            }
        }
        self.client.request("POST", "/api/data-privacy-deletion-jobs", json=body)

    def _events(self, change: Change, was: OwnedState) -> None:
        for seg in sorted(change.segments - was.segments):
            self.event(change, seg, True)
        for seg in sorted(was.segments - change.segments):
            self.event(change, seg, False)

    def _plan(self, batch: BatchState) -> tuple[list[Change], list[Change]]:
        """(the changes to import, those of them that go in bulk jobs); the changes past the
        batch's per-contact budget are deferred."""
        importing = [c for c in batch.live if self.needs_import(c, batch.before(c))]
        bulk: list[Change] = []
        if len(importing) >= self.config.bulk_threshold:
            bulk = [c for c in importing if self.bulk_eligible(c, batch.before(c))]
        later, batch.budget = self.within_budget(batch, importing, bulk)
        batch.defer(later, OVER_BUDGET)
        kept = {c.profile_id for c in batch.live}
        return [c for c in importing if c.profile_id in kept], [c for c in bulk if c.profile_id in kept]

    def _import_one_by_one(self, importing: Sequence[Change], in_bulk: set[str], batch: BatchState) -> None:
        """profile-import for the changes outside bulk jobs and those of a job to re-drive (paid
        from what is left of the budget). After a transient error (the ESP down or throttling
        after the in-call retries) the rest waits for the worker's next attempt instead of
        retrying contact by contact."""
        outage: AdapterError | None = None
        later: list[Change] = []
        for change in importing:
            pid = change.profile_id
            if not self._to_import(pid, in_bulk, batch):
                continue
            if pid in in_bulk:  # a job's change re-driven on its own: from the budget
                if batch.budget <= 0:
                    later.append(change)
                    continue
                batch.budget -= 1
            batch.errors.pop(pid, None)
            if outage is not None:
                batch.fail(change, outage)
            else:
                outage = self._import_one(change, batch)
        batch.defer(later, OVER_BUDGET)

    @staticmethod
    def _to_import(pid: str, in_bulk: set[str], batch: BatchState) -> bool:
        """Outside bulk jobs, or in a job that did not complete cleanly for it."""
        if pid not in batch.errors:
            return pid not in in_bulk
        return isinstance(batch.errors[pid], _Redrive)

    def _import_one(self, change: Change, batch: BatchState) -> TransientError | None:
        """One profile-import; returns a transient error it met (the others fail the change)."""
        try:
            batch.ids[change.profile_id] = self.upsert(change, batch.before(change))
            batch.written.add(change.profile_id)
        except TransientError as err:
            batch.fail(change, err)
            return err
        except AdapterError as err:
            batch.fail(change, err)
        return None

    def within_budget(
        self, batch: BatchState, importing: Sequence[Change], bulk: Sequence[Change]
    ) -> tuple[list[Change], int]:
        """(the live changes deferred, the budget left): per-contact requests (an import outside
        bulk jobs, one event per segment entered or left) within ``per_contact_budget``; what is
        left pays for re-driving a failed job's changes one by one. The first change that costs
        any is always taken, so every batch makes progress."""
        singles = {c.profile_id for c in importing} - {c.profile_id for c in bulk}
        budget = left = self.config.per_contact_budget
        later: list[Change] = []
        for change in batch.live:
            cost = 1 if change.profile_id in singles else 0
            if self.config.segment_events:
                cost += len(change.segments ^ batch.before(change).segments)
            if cost > left and left < budget:
                later.append(change)
                continue
            left -= cost
        return later, left

    # -- bulk import jobs (backfills) ------------------------------------------------------
    @staticmethod
    def bulk_eligible(change: Change, owned: OwnedState) -> bool:
        """A bulk job sets properties wholesale and adds to at most one list: only changes that
        clear no field (a job cannot clear one) and enter at most one list go that way."""
        unset = [n for n in owned.fields if change.fields.get(n) is None]
        return not unset and len(change.lists - owned.lists) <= 1

    def _bulk_import(self, bulk: list[Change], batch: BatchState) -> set[str]:
        """Import ``bulk`` in jobs (one per list entered). Returns the profiles that went into a
        job; ``batch.joined`` names the list a job added each to. Changes of a job that did not
        complete cleanly are marked for a re-drive.

        A job can only set the tags property whole, so for changes that move tags the profiles'
        current values are read first (100 per lookup, which also yields their ids) and the job
        writes them back with the connector's own tags added and removed: values set by hand stay.
        A change whose lookup failed goes through profile-import (``patch_properties``) instead.
        """
        tags = self._tags_to_write(bulk, batch)
        bulk = [c for c in bulk if c.profile_id in tags or c.tags == batch.before(c).tags]
        groups: dict[str | None, list[Change]] = {}
        for change in bulk:
            added = sorted(change.lists - batch.before(change).lists)
            groups.setdefault(added[0] if added else None, []).append(change)
        for list_id, group in sorted(groups.items(), key=lambda kv: kv[0] or ""):
            for chunk in self._job_chunks(group):
                self._job(chunk, list_id, tags, batch)
        in_bulk = {c.profile_id for c in bulk}
        batch.written |= {pid for pid in in_bulk if pid not in batch.errors}
        return in_bulk

    def _job(
        self, chunk: list[Change], list_id: str | None, tags: Mapping[str, list[str]], batch: BatchState
    ) -> None:
        try:
            self._run_job(chunk, list_id, tags)
        except AdapterError as err:
            if err.stops_destination:
                raise
            # a job refused for one bad row (400 with its pointer) or that did not complete
            # cleanly goes one profile-import at a time, so only the bad row fails
            for change in chunk:
                batch.errors[change.profile_id] = err if err.retryable else _Redrive(err)
            return
        if list_id is not None:
            for change in chunk:
                batch.joined[change.profile_id] = list_id
                batch.moved.record(change, list_id, True)

    def _tags_to_write(self, bulk: Sequence[Change], batch: BatchState) -> dict[str, list[str]]:
        """profile → the whole tags value a job writes, for the changes that move tags."""
        moving = [c for c in bulk if c.tags != batch.before(c).tags]
        found, failed = self.lookup(moving)
        out: dict[str, list[str]] = {}
        for change in moving:
            if change.profile_id in failed:
                continue
            remote_id, remote_tags = found.get(change.profile_id, (None, frozenset()))
            if remote_id:
                batch.ids[change.profile_id] = remote_id
            dropped = batch.before(change).tags - change.tags
            out[change.profile_id] = sorted((remote_tags - dropped) | change.tags)
        return out

    @staticmethod
    def _job_chunks(group: list[Change]) -> list[list[Change]]:
        out: list[list[Change]] = [[]]
        size = 0
        for change in group:
            item = len(json.dumps(change.fields, default=str)) + len(str(change.email)) + 120
            if len(out[-1]) >= BULK_LIMIT or size + item > BULK_BYTES:
                out.append([])
                size = 0
            out[-1].append(change)
            size += item
        return [chunk for chunk in out if chunk]

    def _run_job(self, chunk: list[Change], list_id: str | None, tags: Mapping[str, list[str]]) -> None:
        profiles = []
        for change in chunk:
            attributes: dict[str, Any] = {"email": change.email}
            properties = {k: v for k, v in change.fields.items() if v is not None}
            if change.profile_id in tags:
                properties[self.config.tags_property] = tags[change.profile_id]
            if properties:
                attributes["properties"] = properties
            profiles.append({"type": "profile", "attributes": attributes})
        data: dict[str, Any] = {
            "type": "profile-bulk-import-job",
            "attributes": {"profiles": {"data": profiles}},
        }
        if list_id is not None:
            data["relationships"] = {"lists": {"data": [{"type": "list", "id": list_id}]}}
        response = self.client.request(
            "POST", "/api/profile-bulk-import-jobs", json={"data": data}, bucket="bulk"
        )
        job = answer(response, "bulk import job", ("data",)).get("data")
        job_id = job.get("id") if isinstance(job, dict) else None
        if not isinstance(job, dict) or not job_id:
            raise unconfirmed("bulk import job", response.status_code)
        attributes = job.get("attributes") or {}
        waited, pause = 0.0, min(self.config.bulk_first_poll_seconds, self.config.bulk_poll_seconds)
        while attributes.get("status") not in ("complete", "cancelled"):
            if waited >= self.config.bulk_wait_seconds:
                raise TransientError(f"bulk import job still {attributes.get('status')}", code="job_pending")
            self.client.t.sleep(pause)
            waited += pause
            pause = min(2 * pause, self.config.bulk_poll_seconds)
            polled = self.client.request("GET", f"/api/profile-bulk-import-jobs/{job_id}", bucket="profiles")
            state = answer(polled, "bulk import job status", ("data",)).get("data")
            attributes = (state.get("attributes") if isinstance(state, dict) else None) or {}
        if attributes.get("status") == "cancelled" or int(attributes.get("failed_count") or 0) > 0:
            # which rows failed is not reliably reported: re-drive the whole chunk one by one
            status, failed = attributes.get("status"), attributes.get("failed_count")
            raise PermanentError(
                f"bulk import job {status} with {failed} failed rows",
                status=200,
                code="bulk_job_failed",
            )

    def _resolve_missing_ids(self, batch: BatchState) -> None:
        """Profile ids for list calls, by email (``GET /api/profiles?filter=any(email,[...])``),
        importing a contact that does not exist yet."""
        missing = []
        for change in batch.pending():
            if change.profile_id in batch.ids:
                continue
            was = batch.before(change)
            pending = (change.lists - was.lists) - {batch.joined.get(change.profile_id)}
            if pending or (was.lists - change.lists):
                missing.append(change)
        found, failed = self.lookup(missing)
        batch.errors.update(failed)
        for change in missing:
            if change.profile_id in failed:
                continue
            pid = found[change.profile_id][0] if change.profile_id in found else None
            was = batch.before(change)
            if pid is None and not (change.lists - was.lists):
                continue  # no such profile: it is in no list, nothing to remove
            pid = pid or self._import_for_id(change, was, batch)
            if pid is not None:
                batch.ids[change.profile_id] = pid

    def _import_for_id(self, change: Change, owned: OwnedState, batch: BatchState) -> str | None:
        """The profile id of an import of ``change``, or None when it failed (the change fails)."""
        try:
            return self.upsert(change, owned)
        except AdapterError as err:
            batch.fail(change, err)
            return None

    def lookup(
        self, changes: Sequence[Change]
    ) -> tuple[dict[str, tuple[str, frozenset[str]]], dict[str, AdapterError]]:
        """The current profile (id, tags) of each change's email, 100 emails per request: by profile
        id for those that exist, and the lookup's error by profile id for those whose request
        failed (bad credentials are raised)."""
        found: dict[str, tuple[str, frozenset[str]]] = {}
        failed: dict[str, AdapterError] = {}
        for chunk in chunks(changes, 100):
            try:
                remote = self.find_profiles([str(c.email) for c in chunk])
            except AdapterError as err:
                if err.stops_destination:
                    raise
                failed.update((c.profile_id, err) for c in chunk)
                continue
            for change in chunk:
                hit = remote.get(str(change.email).lower())
                if hit is not None:
                    found[change.profile_id] = hit
        return found, failed

    def find_profiles(self, emails: Sequence[str]) -> dict[str, tuple[str, frozenset[str]]]:
        """email (lower) → (profile id, current tags property), for the profiles that exist (≤ 100)."""
        listed = json.dumps(list(emails), separators=(",", ":"))
        params = {"filter": f"any(email,{listed})", "page[size]": "100"}
        response = self.client.request("GET", "/api/profiles", params=params, bucket="profiles")
        found = answer(response, "profile lookup", ("data",)).get("data")
        out = {}
        for item in found if isinstance(found, list) else []:
            if not isinstance(item, dict):
                continue
            attributes = item.get("attributes") or {}
            email = str(attributes.get("email") or "").lower()
            if email and item.get("id"):
                value = (attributes.get("properties") or {}).get(self.config.tags_property)
                values = value if isinstance(value, list) else [] if value in (None, "") else [value]
                out[email] = (str(item["id"]), frozenset(str(v) for v in values))
        return out

    def _lists(self, batch: BatchState) -> None:
        def missing() -> AdapterError:
            return TransientError("no Klaviyo profile id yet", code="no_profile_id")

        plan = membership_plan(batch, batch.pending(), missing)
        for (list_id, joining), members in sorted(plan.items()):
            for chunk in chunks(members, LIST_LIMIT):
                self._list_chunk(list_id, joining, chunk, batch)

    def _list_chunk(
        self, list_id: str, joining: bool, chunk: Sequence[tuple[Change, str]], batch: BatchState
    ) -> None:
        try:
            self._list_call(list_id, joining, chunk)
        except AdapterError as err:
            if err.status != 404 or err.retryable:
                batch.fail_all((change for change, _ in chunk), err)
                return
            # a cached profile id no longer exists (the profile was merged or deleted):
            # look the contacts up again by email and send the call once more
            chunk = self._refresh(chunk, joining, batch)
            try:
                if chunk:
                    self._list_call(list_id, joining, chunk)
            except AdapterError as again:
                if again.status == 404 and not again.retryable:  # the profiles are fresh: the list is gone
                    again.about(LIST, list_id)
                batch.fail_all((change for change, _ in chunk), again)
                return
        for change, _ in chunk:
            batch.moved.record(change, list_id, joining)

    def _list_call(self, list_id: str, joining: bool, members: Sequence[tuple[Change, str]]) -> None:
        body = {"data": [{"type": "profile", "id": pid} for pid in sorted({p for _, p in members})]}
        method = "POST" if joining else "DELETE"
        self.client.request(method, f"/api/lists/{list_id}/relationships/profiles", json=body, bucket="lists")

    def _refresh(
        self, members: Sequence[tuple[Change, str]], joining: bool, batch: BatchState
    ) -> list[tuple[Change, str]]:
        """The members with their current profile ids; a contact to add that no longer exists is
        imported again, one to remove that no longer exists is in no list."""
        found, failed = self.lookup([change for change, _ in members])
        batch.errors.update(failed)
        fresh: list[tuple[Change, str]] = []
        for change, _ in members:
            if change.profile_id in failed:
                continue
            pid = found[change.profile_id][0] if change.profile_id in found else None
            if pid is None and joining:
                # a new profile: every tag appended
                pid = self._import_for_id(change, OwnedState(), batch)
                if pid is None:
                    continue
            if pid is not None:
                batch.ids[change.profile_id] = pid
                fresh.append((change, pid))
        return fresh
