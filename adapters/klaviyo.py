"""Klaviyo (JSON:API, revisioned): profile import, a list-valued tags property, list relationships.

Requests (see docs/destinations.md), every one with ``Authorization: Klaviyo-API-Key …``, a
``revision`` header and ``application/vnd.api+json``:

* upsert: ``POST /api/profile-import`` (201 created / 200 updated; the profile id is kept in the
  ownership ledger). Tags go to a list-valued custom property through
  ``meta.patch_properties.append`` / ``unappend``, so values the connector did not set are never
  removed; owned fields no longer wanted are ``unset``. Skipped when only list memberships changed
  and the profile id is known.
* lists: ``POST`` / ``DELETE /api/lists/{id}/relationships/profiles`` (≤1,000 profile ids, 204).
* events (optional): ``POST /api/events`` "Segment Entered" / "Segment Exited" with a stable
  ``unique_id``, to start flows.
* erasure: ``POST /api/data-privacy-deletion-jobs`` (202).
* limits per endpoint (burst 1 s + steady 60 s); ``Retry-After`` honoured on 429.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .base import EspClient, Transport, chunks, credential_key, json_body, status_error
from .change import APPLIED, FAILED, SKIPPED, Change, OwnedState, Result
from .errors import AdapterError, PermanentError, RateLimited
from .ratelimit import Limits, Window

LIST_LIMIT = 1000
JSONAPI = "application/vnd.api+json"
BUCKETS = {
    "profile-import": Limits(windows=(Window(75, 1.0), Window(700, 60.0))),
    "lists": Limits(windows=(Window(10, 1.0), Window(150, 60.0))),
    "events": Limits(windows=(Window(350, 1.0), Window(3500, 60.0))),
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


class KlaviyoAdapter:
    name = "klaviyo"
    batch_size = LIST_LIMIT

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
            **kw,
        )
        self.client = EspClient(transport)

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

    def needs_import(self, change: Change, owned: OwnedState) -> bool:
        return (
            owned.remote_id is None or change.tags != owned.tags or bool(change.fields) or bool(owned.fields)
        )

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
        data = (json_body(response) or {}).get("data") or {}
        if not data.get("id"):
            raise PermanentError("profile-import answered without a profile id", status=response.status_code)
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
    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        results: dict[str, Result] = {}
        errors: dict[str, AdapterError] = {}
        ids: dict[str, str] = {}
        live: list[Change] = []
        for change in changes:
            before = owned.get(change.profile_id, OwnedState())
            if change.erase:
                results[change.profile_id] = self.erase(change)
                continue
            if not change.email:
                results[change.profile_id] = Result(
                    change.profile_id, change.version, SKIPPED, note="no email"
                )
                continue
            live.append(change)
            try:
                if self.needs_import(change, before):
                    ids[change.profile_id] = self.upsert(change, before)
                else:
                    ids[change.profile_id] = str(before.remote_id)
            except AdapterError as err:
                self._fail(errors, change, err)
        self._lists([c for c in live if c.profile_id not in errors], owned, ids, errors)
        if self.config.segment_events:
            for change in live:
                if change.profile_id in errors:
                    continue
                before = owned.get(change.profile_id, OwnedState())
                try:
                    for seg in sorted(change.segments - before.segments):
                        self.event(change, seg, True)
                    for seg in sorted(before.segments - change.segments):
                        self.event(change, seg, False)
                except AdapterError as err:
                    self._fail(errors, change, err)
        for change in live:
            failure = errors.get(change.profile_id)
            if failure is not None:
                results[change.profile_id] = Result(change.profile_id, change.version, FAILED, error=failure)
            else:
                state = OwnedState.of(change, ids.get(change.profile_id))
                results[change.profile_id] = Result(change.profile_id, change.version, APPLIED, state)
        return [results[c.profile_id] for c in changes]

    @staticmethod
    def _fail(errors: dict[str, AdapterError], change: Change, err: AdapterError) -> None:
        if err.status in (401, 403):
            raise err
        errors[change.profile_id] = err

    def _lists(
        self,
        changes: Sequence[Change],
        owned: Mapping[str, OwnedState],
        ids: Mapping[str, str],
        errors: dict[str, AdapterError],
    ) -> None:
        plan: dict[tuple[str, str], list[tuple[Change, str]]] = {}
        for change in changes:
            before = owned.get(change.profile_id, OwnedState())
            pid = ids[change.profile_id]
            for list_id in change.lists - before.lists:
                plan.setdefault((list_id, "POST"), []).append((change, pid))
            for list_id in before.lists - change.lists:
                plan.setdefault((list_id, "DELETE"), []).append((change, pid))
        for (list_id, method), members in sorted(plan.items()):
            for chunk in chunks(members, LIST_LIMIT):
                body = {"data": [{"type": "profile", "id": pid} for pid in sorted({p for _, p in chunk})]}
                try:
                    self.client.request(
                        method, f"/api/lists/{list_id}/relationships/profiles", json=body, bucket="lists"
                    )
                except AdapterError as err:
                    for change, _ in chunk:
                        self._fail(errors, change, err)

    def erase(self, change: Change) -> Result:
        if not change.email:
            return Result(change.profile_id, change.version, SKIPPED, note="no email to erase")
        body = {
            "data": {
                "type": "data-privacy-deletion-job",
                "attributes": {
                    "profile": {"data": {"type": "profile", "attributes": {"email": change.email}}}
                },
            }
        }
        try:
            self.client.request("POST", "/api/data-privacy-deletion-jobs", json=body)
        except AdapterError as err:
            if err.status in (401, 403):
                raise
            if isinstance(err, RateLimited) or err.status != 404:
                return Result(change.profile_id, change.version, FAILED, error=err)
        return Result(
            change.profile_id, change.version, APPLIED, None, note="data-privacy deletion requested"
        )
