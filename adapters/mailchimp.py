"""Mailchimp Marketing API v3: one audience per destination; tags, static segments, merge fields.

Requests (see docs/destinations.md):

* upsert: ``POST /lists/{list_id}`` (batch subscribe, ≤500 members, ``update_existing: true``,
  ``sync_tags: false``), each member with ``status_if_new`` only, never ``status``: an existing
  contact's consent is never changed, an unsubscribed or cleaned contact is never re-subscribed.
  Members the batch reports in ``errors[]`` are re-driven one by one (``PUT`` member + tags call), which
  gives each its exact error.
* tag removals: ``POST /lists/{id}/members/{hash}/tags`` with ``inactive`` for the tags the
  connector set earlier and no longer wants (never any other tag).
* static segments: ``POST /lists/{id}/segments/{seg_id}`` with ``members_to_add`` /
  ``members_to_remove`` (≤500 each).
* erasure: ``POST /lists/{id}/members/{hash}/actions/delete-permanent`` (404 = already gone).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from .base import EspClient, Transport, chunks, credential_key, json_body, status_error, triage
from .change import (
    APPLIED,
    CONSENT_SUBSCRIBED,
    CONSENT_UNSUBSCRIBED,
    FAILED,
    SKIPPED,
    Change,
    OwnedState,
    Result,
)
from .errors import AdapterError, PermanentError, RateLimited
from .ratelimit import Limits

BATCH_LIMIT = 500
ABUSE_PARK_SECONDS = 6 * 3600
STATUSES_IF_NEW = ("transactional", "pending", "unsubscribed")


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

    def url(self) -> str:
        if self.base_url:
            return self.base_url.rstrip("/")
        dc = self.api_key.rsplit("-", 1)[-1] if "-" in self.api_key else "us1"
        return f"https://{dc}.api.mailchimp.com/3.0"


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
            scope="ABUSE",
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


class MailchimpAdapter:
    name = "mailchimp"
    batch_size = BATCH_LIMIT

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
            timeout=httpx.Timeout(120.0, connect=10.0),
            max_connections=config.concurrency,
            **kw,
        )
        self.client = EspClient(transport)
        self.list_id = config.list_id
        self._tag_ids: dict[str, str] = {}

    # -- helpers ---------------------------------------------------------------------------
    def status_if_new(self, change: Change) -> str:
        if change.consent == CONSENT_SUBSCRIBED and self.config.subscribe_with_consent:
            return "subscribed"
        if change.consent == CONSENT_UNSUBSCRIBED:
            return "unsubscribed"
        return self.config.status_if_new

    def merge_fields(self, change: Change, owned: OwnedState) -> dict[str, Any]:
        out = {k: _merge_value(v) for k, v in change.fields.items() if v is not None}
        for name in owned.fields:
            out.setdefault(name, "")  # owned field no longer wanted: erase it
        return out

    def member(self, change: Change, owned: OwnedState) -> dict[str, Any]:
        body: dict[str, Any] = {"email_address": change.email, "status_if_new": self.status_if_new(change)}
        merge = self.merge_fields(change, owned)
        if merge:
            body["merge_fields"] = merge
        return body

    @staticmethod
    def removed_tags(change: Change, owned: OwnedState) -> list[str]:
        wanted = {t.casefold() for t in change.tags}
        return sorted(t for t in owned.tags if t.casefold() not in wanted)

    # -- apply -----------------------------------------------------------------------------
    def apply(self, changes: Sequence[Change], owned: Mapping[str, OwnedState]) -> list[Result]:
        errors: dict[str, AdapterError] = {}
        results, upserts = triage(changes, self.erase)
        for chunk in chunks(upserts, BATCH_LIMIT):
            self._batch_upsert(chunk, owned, errors)
        ok = [c for c in upserts if c.profile_id not in errors]
        self._remove_tags(ok, owned, errors)
        self._segments([c for c in ok if c.profile_id not in errors], owned, errors)
        for change in upserts:
            err = errors.get(change.profile_id)
            if err is not None:
                results[change.profile_id] = Result(change.profile_id, change.version, FAILED, error=err)
            else:
                results[change.profile_id] = Result(
                    change.profile_id, change.version, APPLIED, OwnedState.of(change)
                )
        return [results[c.profile_id] for c in changes]

    def _capture(self, errors: dict[str, AdapterError], change: Change, fn: Any, *args: Any) -> None:
        try:
            fn(*args)
        except RateLimited as err:
            if err.scope == "DAILY":
                raise
            errors[change.profile_id] = err
        except AdapterError as err:
            if err.status in (401, 403):
                raise
            errors[change.profile_id] = err

    def _batch_upsert(
        self, chunk: Sequence[Change], owned: Mapping[str, OwnedState], errors: dict[str, AdapterError]
    ) -> None:
        by_email: dict[str, Change] = {}
        single: list[Change] = []
        for change in chunk:
            key = (change.email or "").lower()
            if key in by_email:
                single.append(change)  # the same email twice in one batch: send it on its own
            else:
                by_email[key] = change
        members = []
        for change in by_email.values():
            member = self.member(change, owned.get(change.profile_id, OwnedState()))
            if change.tags:
                member["tags"] = sorted(change.tags)
            members.append(member)
        redrive: list[Change] = list(single)
        if members:
            body = {"members": members, "update_existing": True, "sync_tags": False}
            try:
                response = self.client.request("POST", f"/lists/{self.list_id}", json=body)
            except AdapterError as err:
                if err.status in (401, 403):
                    raise
                for change in by_email.values():
                    errors[change.profile_id] = err
                return
            data = json_body(response) or {}
            for item in data.get("errors") or []:
                failed = by_email.get(str(item.get("email_address", "")).lower())
                if failed is not None:
                    redrive.append(failed)
        for change in redrive:
            self._capture(
                errors, change, self._single_upsert, change, owned.get(change.profile_id, OwnedState())
            )

    def _remove_tags(
        self, changes: Sequence[Change], owned: Mapping[str, OwnedState], errors: dict[str, AdapterError]
    ) -> None:
        """Tags the connector set and no longer wants. A tag dropped by many contacts at once goes
        through its static segment (``members_to_remove``, 500 per call); the rest one contact at a
        time through the tags endpoint."""
        by_tag: dict[str, list[Change]] = {}
        removals: dict[str, list[str]] = {}
        for change in changes:
            removed = self.removed_tags(change, owned.get(change.profile_id, OwnedState()))
            removals[change.profile_id] = removed
            for tag in removed:
                by_tag.setdefault(tag, []).append(change)
        done: dict[str, set[str]] = {}
        for tag, group in sorted(by_tag.items()):
            if len(group) < self.config.bulk_tag_threshold:
                continue
            try:
                seg = self.tag_id(tag)
            except AdapterError as err:
                if err.status in (401, 403):
                    raise
                continue  # fall back to the tags endpoint
            if seg is None:
                for change in group:  # the tag no longer exists: nothing to remove
                    done.setdefault(change.profile_id, set()).add(tag)
                continue
            failed_before = set(errors)
            for i in range(0, len(group), BATCH_LIMIT):
                self._segment_call(seg, [], group[i : i + BATCH_LIMIT], errors, redrive=True)
            for change in group:
                if change.profile_id not in failed_before and change.profile_id not in errors:
                    done.setdefault(change.profile_id, set()).add(tag)
        for change in changes:
            if change.profile_id in errors:
                continue
            rest = [t for t in removals[change.profile_id] if t not in done.get(change.profile_id, set())]
            if rest:
                self._capture(errors, change, self._set_tags, change, [], rest)

    def tag_id(self, name: str) -> str | None:
        """The static segment id of a tag (``GET /lists/{id}/tag-search?name=``), cached."""
        key = name.casefold()
        if key not in self._tag_ids:
            response = self.client.request("GET", f"/lists/{self.list_id}/tag-search", params={"name": name})
            tags = (json_body(response) or {}).get("tags") or []
            match = next((t for t in tags if str(t.get("name", "")).casefold() == key), None)
            if match is None:
                return None
            self._tag_ids[key] = str(match["id"])
        return self._tag_ids[key]

    def _single_upsert(self, change: Change, owned: OwnedState) -> None:
        assert change.email
        path = f"/lists/{self.list_id}/members/{subscriber_hash(change.email)}"
        self.client.request(
            "PUT", path, json=self.member(change, owned), params={"skip_merge_validation": "false"}
        )
        if change.tags:
            self._set_tags(change, sorted(change.tags), [])

    def _set_tags(self, change: Change, active: list[str], inactive: list[str]) -> None:
        assert change.email
        tags = [{"name": t, "status": "active"} for t in active]
        tags += [{"name": t, "status": "inactive"} for t in inactive]
        path = f"/lists/{self.list_id}/members/{subscriber_hash(change.email)}/tags"
        self.client.request("POST", path, json={"tags": tags, "is_syncing": self.config.is_syncing})

    def _segments(
        self, changes: Sequence[Change], owned: Mapping[str, OwnedState], errors: dict[str, AdapterError]
    ) -> None:
        adds: dict[str, list[Change]] = {}
        removes: dict[str, list[Change]] = {}
        for change in changes:
            before = owned.get(change.profile_id, OwnedState()).lists
            for seg in sorted(change.lists - before):
                adds.setdefault(seg, []).append(change)
            for seg in sorted(before - change.lists):
                removes.setdefault(seg, []).append(change)
        for seg in sorted(set(adds) | set(removes)):
            add, remove = adds.get(seg, []), removes.get(seg, [])
            for i in range(0, max(len(add), len(remove)), BATCH_LIMIT):
                self._segment_call(
                    seg, add[i : i + BATCH_LIMIT], remove[i : i + BATCH_LIMIT], errors, redrive=True
                )

    def _segment_call(
        self,
        seg: str,
        add: Sequence[Change],
        remove: Sequence[Change],
        errors: dict[str, AdapterError],
        redrive: bool,
    ) -> None:
        body = {
            "members_to_add": [c.email for c in add],
            "members_to_remove": [c.email for c in remove],
        }
        everyone = {str(c.email).lower(): c for c in [*add, *remove]}
        try:
            response = self.client.request("POST", f"/lists/{self.list_id}/segments/{seg}", json=body)
        except AdapterError as err:
            if err.status in (401, 403):
                raise
            for change in everyone.values():
                errors[change.profile_id] = err
            return
        data = json_body(response) or {}
        failed: dict[str, str] = {}
        for item in data.get("errors") or []:
            for email in item.get("email_addresses") or []:
                failed[str(email).lower()] = str(item.get("error", ""))
        if not failed:
            return
        if redrive:
            again_add = [c for c in add if str(c.email).lower() in failed]
            again_remove = [c for c in remove if str(c.email).lower() in failed]
            self._segment_call(seg, again_add, again_remove, errors, redrive=False)
            return
        for email, message in failed.items():
            who = everyone.get(email)
            if who is not None:
                errors[who.profile_id] = PermanentError(
                    f"static segment {seg}: {message}",
                    status=200,
                    code="segment_member_error",
                    detail=message,
                )

    def erase(self, change: Change) -> Result:
        if not change.email:
            return Result(change.profile_id, change.version, SKIPPED, note="no email to erase")
        path = f"/lists/{self.list_id}/members/{subscriber_hash(change.email)}/actions/delete-permanent"
        try:
            self.client.request("POST", path)
        except AdapterError as err:
            if err.status in (401, 403):
                raise
            if err.status != 404:  # 404: not (or no longer) in the audience
                return Result(change.profile_id, change.version, FAILED, error=err)
        return Result(change.profile_id, change.version, APPLIED, None, note="deleted permanently")
