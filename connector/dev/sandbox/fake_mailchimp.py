"""A fake Mailchimp Marketing API v3 (reference: esp-apis.md §1).

Contract enforced: HTTP Basic auth with any user and the API key as password (or an OAuth bearer
token), paths under ``/3.0``, member bodies with no unknown fields, ``status_if_new`` for new members,
the subscriber hash matching ``md5(email.lower())``, merge fields that exist on the audience (a
member write naming an unknown one is refused: "Your merge fields were invalid.") and are not
booleans (numbers for ``number`` fields), merge fields created with ``name`` and ``type``, 500 members
per batch subscribe and per ``members_to_add``/``members_to_remove`` (emails not in the audience are
ignored there), tags as static segments, 204 on the tags endpoint, compliance errors ("Member In
Compliance State", "Forgotten Email Not Subscribed"), and 10 concurrent connections per API key (429
without ``Retry-After`` unless configured). Errors are ``application/problem+json`` with an
``X-Request-Id``. Unconfirmed behaviours are options of :class:`MailchimpLimits`.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import tarfile
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from connector.dev.sandbox.base import EMAIL, Clock, FakeESP, VendorError, is_invalid, parse_json

ERROR_DOC = "https://mailchimp.com/developer/marketing/docs/errors/"
MEMBER_FIELDS = frozenset(
    {
        "email_address", "email_type", "status", "status_if_new", "merge_fields", "interests",
        "language", "vip", "location", "marketing_permissions", "ip_signup", "timestamp_signup",
        "ip_opt", "timestamp_opt", "tags",
    }
)  # fmt: skip
STATUSES = frozenset({"subscribed", "unsubscribed", "cleaned", "pending", "transactional"})
DEFAULT_MERGE_FIELDS = {
    "FNAME": "text",
    "LNAME": "text",
    "ADDRESS": "address",
    "PHONE": "phone",
    "BIRTHDAY": "birthday",
}
MERGE_TYPES = frozenset(
    {
        "text", "number", "address", "phone", "date", "url", "imageurl", "radio", "dropdown",
        "birthday", "zip",
    }
)  # fmt: skip
MERGE_FIELD_PROPERTIES = frozenset(
    {"tag", "name", "type", "required", "default_value", "public", "display_order", "options", "help_text"}
)
MERGE_TAG = re.compile(r"[A-Z][A-Z0-9_]{0,9}")
BATCH_LIMIT = 500
TITLES = {
    400: "Invalid Resource",
    401: "API Key Invalid",
    403: "Forbidden",
    404: "Resource Not Found",
    405: "Method Not Allowed",
    429: "Too Many Requests",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def subscriber_hash(email: str) -> str:
    return hashlib.md5(email.lower().encode()).hexdigest()


def _is_number(value: Any) -> bool:
    """A ``number`` merge field takes a number, a numeric string, or ``""`` (erases it)."""
    if isinstance(value, int | float):
        return True
    if isinstance(value, str):
        if value == "":
            return True
        try:
            float(value)
        except ValueError:
            return False
        return True
    return False


FIELD_DETAILS = (
    "The resource submitted could not be validated. For field-specific details, see the 'errors' array."
)


@dataclass
class Member:
    email: str
    status: str
    merge_fields: dict[str, Any] = field(default_factory=dict)
    interests: dict[str, bool] = field(default_factory=dict)
    language: str = ""
    vip: bool = False
    email_type: str = "html"
    contact_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    unique_email_id: str = field(default_factory=lambda: uuid.uuid4().hex[:10])


@dataclass
class Segment:
    id: int
    name: str
    members: set[str] = field(default_factory=set)  # lower-cased emails


@dataclass
class Audience:
    id: str
    name: str
    merge_fields: dict[str, str] = field(default_factory=lambda: dict(DEFAULT_MERGE_FIELDS))
    members: dict[str, Member] = field(default_factory=dict)  # by lower-cased email
    segments: dict[int, Segment] = field(default_factory=dict)


@dataclass
class MailchimpLimits:
    """``concurrent`` connections per API key (documented: 10). ``retry_after`` adds the header to 429s
    (undocumented, off by default). ``put_tags_existing``: whether PUT member adds ``tags`` to an
    existing member (unconfirmed; off by default, so only the tags endpoint changes them).

    Batch subscribe (``POST /lists/{id}``), unconfirmed behaviours:

    * ``batch_update_applies_status_if_new``: with ``update_existing: true``, an existing member's
      status is changed to its ``status_if_new`` as if it were ``status`` (compliance rules apply).
      Off by default: ``status_if_new`` concerns new members only, as on PUT.
    * ``batch_requires_status``: a batch member with neither ``status`` nor ``status_if_new`` is
      refused (a per-item error) even when it exists. Off by default: accepted for existing members.
    """

    concurrent: int | None = 10
    retry_after: int | None = None
    put_tags_existing: bool = False
    batch_update_applies_status_if_new: bool = False
    batch_requires_status: bool = False


class FakeMailchimp(FakeESP):
    name = "mailchimp"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (),
        oauth_tokens: Iterable[str] = (),
        lists: Iterable[str] = (),
        limits: MailchimpLimits | None = None,
        clock: Clock | None = None,
        hold: Callable[[], None] | None = None,
    ) -> None:
        self.api_keys = set(api_keys)
        self.oauth_tokens = set(oauth_tokens)
        self.limits = limits or MailchimpLimits()
        self.hold = hold  # called while a request counts as in flight (tests of concurrency)
        self._initial_lists = list(lists)
        self.audiences: dict[str, Audience] = {}
        self.forgotten: set[str] = set()
        self.batches: dict[str, dict[str, Any]] = {}
        self.journey_triggers: list[tuple[str, str, str]] = []  # (journey id, step id, email)
        self._batch_results: dict[str, list[dict[str, Any]]] = {}
        self._next_segment = 1000
        self._inflight: dict[str, int] = {}
        self.max_inflight: dict[str, int] = {}
        self._inflight_lock = threading.Lock()
        super().__init__(clock=clock)
        self.reset_state()

    # -- Python API for tests and the sandbox ------------------------------------------------

    def add_list(self, list_id: str, name: str | None = None) -> Audience:
        with self.lock:
            audience = self.audiences.setdefault(list_id, Audience(id=list_id, name=name or list_id))
        return audience

    def member(self, list_id: str, email: str) -> Member | None:
        return self.audiences[list_id].members.get(email.lower())

    def add_segment(self, list_id: str, name: str) -> Segment:
        """A static segment (a tag) on the audience; returns it (its ``id`` is the segment id)."""
        with self.lock:
            return self.tag_segment(self.audiences[list_id], name)

    def tags_of(self, list_id: str, email: str) -> set[str]:
        audience = self.audiences[list_id]
        return {s.name for s in audience.segments.values() if email.lower() in s.members}

    def set_status(self, list_id: str, email: str, status: str) -> None:
        with self.lock:
            audience = self.audiences[list_id]
            member = audience.members.get(email.lower())
            if member is None:
                audience.members[email.lower()] = Member(email=email, status=status)
            else:
                member.status = status

    def forget(self, email: str) -> None:
        with self.lock:
            self.forgotten.add(email.lower())
            for audience in self.audiences.values():
                audience.members.pop(email.lower(), None)
                for segment in audience.segments.values():
                    segment.members.discard(email.lower())

    def unforget(self, email: str) -> None:
        """The person re-subscribed through a Mailchimp form: they may be imported again."""
        with self.lock:
            self.forgotten.discard(email.lower())

    def reset_state(self) -> None:
        self.audiences = {}
        self.forgotten = set()
        self.batches = {}
        self.journey_triggers = []
        self._batch_results = {}
        self.max_inflight = {}
        for list_id in self._initial_lists:
            self.add_list(list_id)

    def snapshot(self) -> dict[str, Any]:
        lists = {}
        for audience in self.audiences.values():
            lists[audience.id] = {
                "name": audience.name,
                "members": {
                    m.email: {
                        "status": m.status,
                        "tags": sorted(self.tags_of(audience.id, m.email)),
                        "merge_fields": m.merge_fields,
                    }
                    for m in sorted(audience.members.values(), key=lambda m: m.email.lower())
                },
                "tags": {s.name: len(s.members) for s in audience.segments.values()},
            }
        return {"lists": lists, "forgotten": len(self.forgotten)}

    # -- vendor hooks ----------------------------------------------------------------------------

    def error_response(self, err: VendorError) -> Response:
        status = err.status
        title = err.code if not err.code.isdigit() and "_" not in err.code else TITLES.get(status, "Error")
        body: dict[str, Any] = {
            "type": ERROR_DOC,
            "title": title,
            "status": status,
            "detail": err.message,
            "instance": str(uuid.uuid4()),
        }
        body.update(err.extra)
        response = self.json(body, status, "application/problem+json")
        response.headers["X-Request-Id"] = body["instance"]
        return response

    def default_message(self, status: int) -> str:
        if status == 429:
            return f"You have exceeded the limit of {self.limits.concurrent or 10} simultaneous connections."
        return "An unexpected internal error has occurred. Please contact Support for more information."

    def authenticate(self, request: Request) -> str:
        header = request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "basic" and value:
            try:
                _, _, key = base64.b64decode(value.strip()).decode().partition(":")
            except ValueError:
                key = ""
            if key in self.api_keys:
                return key
            raise VendorError(
                401,
                "API Key Invalid",
                "Your API key may be invalid, or you've attempted to access the wrong datacenter.",
            )
        if scheme.lower() == "bearer" and value:
            if value.strip() in self.oauth_tokens:
                return value.strip()
            raise VendorError(401, "API Key Invalid", "Invalid OAuth token.")
        raise VendorError(
            401,
            "API Key Missing",
            "Your request did not include an API key. HTTP Basic auth with any user and the key "
            "as password is expected.",
        )

    def normalize_path(self, path: str) -> str:
        if not path.startswith("/3.0/"):
            raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
        return path[len("/3.0") :].rstrip("/") or "/"

    def before(self, request: Request, credential: str, path: str, now: float) -> Callable[[], None]:
        limit = self.limits.concurrent
        with self._inflight_lock:
            current = self._inflight.get(credential, 0)
            if limit is not None and current >= limit:
                headers = {}
                if self.limits.retry_after is not None:
                    headers["Retry-After"] = str(self.limits.retry_after)
                raise VendorError(
                    429,
                    "Too Many Requests",
                    f"You have exceeded the limit of {limit} simultaneous connections.",
                    headers=headers,
                )
            self._inflight[credential] = current + 1
            self.max_inflight[credential] = max(self.max_inflight.get(credential, 0), current + 1)

        def release() -> None:
            with self._inflight_lock:
                self._inflight[credential] -= 1

        if self.hold is not None:
            try:
                self.hold()
            except BaseException:
                release()
                raise
        return release

    def add_routes(self) -> None:
        member = r"/lists/(?P<list_id>[^/]+)/members/(?P<key>[^/]+)"
        segment = r"/lists/(?P<list_id>[^/]+)/segments/(?P<seg_id>[^/]+)"
        self.route("GET", r"/ping", self.ping)
        self.route("GET", r"/lists", self.get_lists)
        self.route("GET", r"/lists/(?P<list_id>[^/]+)", self.get_list)
        self.route("POST", r"/lists/(?P<list_id>[^/]+)", self.batch_subscribe)
        self.route("GET", r"/lists/(?P<list_id>[^/]+)/merge-fields", self.list_merge_fields)
        self.route("POST", r"/lists/(?P<list_id>[^/]+)/merge-fields", self.create_merge_field)
        self.route("POST", r"/lists/(?P<list_id>[^/]+)/members", self.create_member)
        self.route("GET", member, self.get_member)
        self.route("PUT", member, self.put_member)
        self.route("PATCH", member, self.patch_member)
        self.route("DELETE", member, self.archive_member)
        self.route("POST", member + r"/actions/delete-permanent", self.delete_permanent)
        self.route("GET", member + r"/tags", self.get_member_tags)
        self.route("POST", member + r"/tags", self.post_member_tags)
        self.route("GET", r"/lists/(?P<list_id>[^/]+)/tag-search", self.tag_search)
        self.route("GET", r"/lists/(?P<list_id>[^/]+)/segments", self.list_segments)
        self.route("POST", r"/lists/(?P<list_id>[^/]+)/segments", self.create_segment)
        self.route("GET", segment, self.get_segment)
        self.route("POST", segment, self.batch_segment)
        self.route("GET", segment + r"/members", self.segment_members)
        self.route("POST", segment + r"/members", self.add_segment_member)
        self.route("DELETE", segment + r"/members/(?P<key>[^/]+)", self.remove_segment_member)
        self.route("POST", r"/batches", self.create_batch)
        journey_step = r"/customer-journeys/journeys/(?P<journey_id>[0-9]+)/steps/(?P<step_id>[0-9]+)"
        self.route("POST", journey_step + r"/actions/trigger", self.trigger_journey)
        self.route("GET", r"/batches/(?P<batch_id>[^/]+)", self.get_batch)

    # -- validation helpers ----------------------------------------------------------------------

    @staticmethod
    def invalid(detail: str, errors: list[dict[str, str]] | None = None) -> VendorError:
        extra = {"errors": errors} if errors else {}
        return VendorError(400, "Invalid Resource", detail, extra=extra)

    def body(self, request: Request, *, required: bool = True) -> dict[str, Any]:
        data = parse_json(request)
        if is_invalid(data):
            raise VendorError(400, "JSON Parse Error", "We encountered an unspecified JSON parsing error.")
        if data is None and not required:
            return {}
        if not isinstance(data, dict):
            found = "NULL" if data is None else type(data).__name__
            raise self.invalid(
                FIELD_DETAILS,
                [{"field": "", "message": f"Schema describes object, {found} found instead"}],
            )
        return data

    def audience(self, list_id: str) -> Audience:
        audience = self.audiences.get(list_id)
        if audience is None:
            raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
        return audience

    def find_member(self, audience: Audience, key: str) -> Member | None:
        if "@" in key:
            return audience.members.get(key.lower())
        for m in audience.members.values():
            if subscriber_hash(m.email) == key.lower() or m.contact_id == key:
                return m
        return None

    def check_member_fields(self, audience: Audience, data: dict[str, Any], *, batch: bool = False) -> None:
        unknown = sorted(set(data) - MEMBER_FIELDS)
        if unknown:
            raise self.invalid(
                FIELD_DETAILS,
                [
                    {"field": name, "message": "Schema describes object with no such property"}
                    for name in unknown
                ],
            )
        for key in ("status", "status_if_new"):
            if key in data and data[key] not in STATUSES:
                raise self.invalid(
                    FIELD_DETAILS,
                    [{"field": key, "message": f"Value is not one of the enum values: {sorted(STATUSES)}"}],
                )
        email = data.get("email_address")
        if email is not None and (not isinstance(email, str) or not EMAIL.match(email)):
            raise self.invalid("Please provide a valid email address.")
        merge = data.get("merge_fields")
        if merge is not None:
            self.check_merge_fields(audience, merge)
        self.check_member_extras(data)

    def check_merge_fields(self, audience: Audience, merge: Any) -> None:
        if not isinstance(merge, dict):
            raise self.invalid(
                "Your merge fields were invalid.",
                [{"field": "merge_fields", "message": "must be an object"}],
            )
        errors = []
        for tag, value in merge.items():
            kind = audience.merge_fields.get(tag)
            if kind is None:
                errors.append({"field": tag, "message": "This merge field does not exist"})
            elif isinstance(value, bool) or not isinstance(value, str | int | float | dict):
                errors.append({"field": tag, "message": "Please enter a value (booleans as strings)"})
            elif kind == "number" and not _is_number(value):
                errors.append({"field": tag, "message": "Please enter a number"})
        if errors:
            raise self.invalid("Your merge fields were invalid.", errors)

    def check_member_extras(self, data: dict[str, Any]) -> None:
        """tags, interests and vip of a member write."""
        tags = data.get("tags")
        if tags is not None and (
            not isinstance(tags, list) or not all(isinstance(t, str) and t for t in tags)
        ):
            raise self.invalid(
                "Tags must be a list of names.", [{"field": "tags", "message": "array of strings"}]
            )
        if "interests" in data and not isinstance(data["interests"], dict):
            raise self.invalid("Invalid interests.", [{"field": "interests", "message": "must be an object"}])
        if "vip" in data and not isinstance(data["vip"], bool):
            raise self.invalid("Invalid vip.", [{"field": "vip", "message": "must be a boolean"}])

    def member_json(self, audience: Audience, m: Member) -> dict[str, Any]:
        tags = sorted(
            ((s.id, s.name) for s in audience.segments.values() if m.email.lower() in s.members),
        )
        return {
            "id": subscriber_hash(m.email),
            "email_address": m.email,
            "unique_email_id": m.unique_email_id,
            "contact_id": m.contact_id,
            "email_type": m.email_type,
            "status": m.status,
            "merge_fields": m.merge_fields,
            "interests": m.interests,
            "language": m.language,
            "vip": m.vip,
            "last_changed": self.now_iso(),
            "tags_count": len(tags),
            "tags": [{"id": i, "name": n} for i, n in tags],
            "list_id": audience.id,
        }

    def tag_segment(self, audience: Audience, name: str) -> Segment:
        for segment in audience.segments.values():
            if segment.name.lower() == name.lower():
                return segment
        self._next_segment += 1
        segment = Segment(id=self._next_segment, name=name)
        audience.segments[segment.id] = segment
        return segment

    def upsert(
        self,
        audience: Audience,
        data: dict[str, Any],
        email: str,
        *,
        create_only: bool = False,
        update_existing: bool = True,
        sync_tags: bool = False,
        batch: bool = False,
    ) -> tuple[Member, bool]:
        """Apply a member write; raises the vendor's 400 for compliance and validation errors."""
        lower = email.lower()
        if lower in self.forgotten:
            raise VendorError(
                400,
                "Forgotten Email Not Subscribed",
                f"{email} was permanently deleted and cannot be re-imported. The contact must "
                "re-subscribe to get back on the list.",
            )
        existing = audience.members.get(lower)
        if existing is not None and existing.status == "archived":
            existing = None
            audience.members.pop(lower)
        if existing is not None:
            status = self.batch_status(data) if batch and data.get("status") is None else data.get("status")
            self.update_member(
                existing, status, email, create_only=create_only, update_existing=update_existing
            )
            member, created = existing, False
        else:
            member, created = self.new_member(audience, data, email), True
        self.write_member_data(
            audience, member, data, email, created=created, sync_tags=sync_tags, batch=batch
        )
        return member, created

    def batch_status(self, data: dict[str, Any]) -> str | None:
        """The status a batch write without ``status`` gives an existing member."""
        if "status_if_new" not in data and self.limits.batch_requires_status:
            raise self.invalid(
                FIELD_DETAILS,
                [{"field": "status", "message": "This value should not be blank."}],
            )
        if self.limits.batch_update_applies_status_if_new:
            return data.get("status_if_new")  # the unconfirmed reading of update_existing
        return None

    @staticmethod
    def update_member(
        member: Member, status: str | None, email: str, *, create_only: bool, update_existing: bool
    ) -> None:
        if create_only:
            raise VendorError(
                400,
                "Member Exists",
                f"{email} is already a list member. Use PUT to insert or update list members.",
            )
        if not update_existing:
            raise VendorError(400, "Member Exists", f"{email} is already a list member.")
        if status == "subscribed" and member.status in ("unsubscribed", "cleaned"):
            raise VendorError(
                400,
                "Member In Compliance State",
                f"{email} is in a compliance state due to unsubscribe, bounce, or compliance "
                "review and cannot be subscribed.",
            )
        if status is not None:
            member.status = status

    def new_member(self, audience: Audience, data: dict[str, Any], email: str) -> Member:
        initial = data.get("status") or data.get("status_if_new")
        if initial is None:
            raise self.invalid(
                FIELD_DETAILS,
                [
                    {
                        "field": "status_if_new",
                        "message": "This value should not be blank for a new member.",
                    }
                ],
            )
        member = Member(email=email, status=initial)
        audience.members[email.lower()] = member
        return member

    def write_member_data(
        self,
        audience: Audience,
        member: Member,
        data: dict[str, Any],
        email: str,
        *,
        created: bool,
        sync_tags: bool,
        batch: bool,
    ) -> None:
        """Merge fields, interests, language, vip and tags of a member write."""
        lower = email.lower()
        member.merge_fields.update(data.get("merge_fields") or {})
        member.interests.update(data.get("interests") or {})
        if "language" in data:
            member.language = data["language"]
        if "vip" in data:
            member.vip = data["vip"]
        tags = data.get("tags")
        if tags is not None and (created or batch or self.limits.put_tags_existing):
            if sync_tags:
                for segment in audience.segments.values():
                    segment.members.discard(lower)
            for name in tags:
                self.tag_segment(audience, name).members.add(lower)

    # -- handlers --------------------------------------------------------------------------------

    def trigger_journey(self, request: Request, journey_id: str, step_id: str) -> Response:
        """Customer Journeys API trigger: 204; 400 when the contact is in no audience."""
        email = str(self.body(request).get("email_address") or "").strip().lower()
        with self.lock:
            if not email or not any(self.find_member(a, email) for a in self.audiences.values()):
                raise self.invalid("The contact must be in the journey's audience")
            self.journey_triggers.append((journey_id, step_id, email))
        return Response(status=204)

    def ping(self, request: Request) -> Response:
        return self.json({"health_status": "Everything's Chimpy!"})

    def get_lists(self, request: Request) -> Response:
        """``GET /lists``: the account's audiences (``count``/``offset``)."""
        count, offset = self.paging(request)
        with self.lock:
            lists = [
                {"id": a.id, "name": a.name, "stats": {"member_count": len(a.members)}}
                for a in self.audiences.values()
            ]
        return self.json({"lists": lists[offset : offset + count], "total_items": len(lists)})

    def get_list(self, request: Request, list_id: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            return self.json(
                {"id": audience.id, "name": audience.name, "stats": {"member_count": len(audience.members)}}
            )

    def list_merge_fields(self, request: Request, list_id: str) -> Response:
        count, offset = self.paging(request)
        with self.lock:
            audience = self.audience(list_id)
            fields = [
                {"merge_id": i + 1, "tag": tag, "name": tag.title(), "type": kind, "list_id": list_id}
                for i, (tag, kind) in enumerate(audience.merge_fields.items())
            ]
        return self.json(
            {"merge_fields": fields[offset : offset + count], "list_id": list_id, "total_items": len(fields)}
        )

    def create_merge_field(self, request: Request, list_id: str) -> Response:
        data = self.body(request)
        problems = [
            {"field": f, "message": "Schema describes object with no such property"}
            for f in sorted(set(data) - MERGE_FIELD_PROPERTIES)
        ]
        if not isinstance(data.get("name"), str) or not data["name"].strip():
            problems.append({"field": "name", "message": "This value should not be blank."})
        if data.get("type") not in MERGE_TYPES:
            problems.append(
                {"field": "type", "message": f"Value is not one of the enum values: {sorted(MERGE_TYPES)}"}
            )
        tag = data.get("tag")
        if tag is not None and (not isinstance(tag, str) or not MERGE_TAG.fullmatch(tag.upper())):
            problems.append(
                {"field": "tag", "message": "1-10 characters: letters, digits or _, starting with a letter"}
            )
        if problems:
            raise self.invalid(
                FIELD_DETAILS,
                problems,
            )
        with self.lock:
            audience = self.audience(list_id)
            if tag is None:  # Mailchimp names it MMERGE<n>
                n = len(audience.merge_fields) + 1
                while f"MMERGE{n}" in audience.merge_fields:
                    n += 1
                tag = f"MMERGE{n}"
            tag = tag.upper()
            if tag in audience.merge_fields:
                raise self.invalid(f'A Merge Field with the tag "{tag}" already exists for this list.')
            audience.merge_fields[tag] = data["type"]
            index = len(audience.merge_fields)
        return self.json(
            {"merge_id": index, "tag": tag, "name": data["name"], "type": data["type"], "list_id": list_id}
        )

    def get_member(self, request: Request, list_id: str, key: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            m = self.find_member(audience, key)
            if m is None:
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            return self.json(self.member_json(audience, m))

    def _write_member(self, request: Request, list_id: str, key: str, *, patch: bool) -> Response:
        data = self.body(request)
        with self.lock:
            audience = self.audience(list_id)
            self.check_member_fields(audience, data)
            email = data.get("email_address")
            existing = self.find_member(audience, key)
            if email is None:
                if existing is None:
                    if patch:
                        raise VendorError(
                            404, "Resource Not Found", "The requested resource could not be found."
                        )
                    raise self.invalid(
                        FIELD_DETAILS,
                        [{"field": "email_address", "message": "This value should not be blank."}],
                    )
                email = existing.email
            if key.lower() not in (subscriber_hash(email), email.lower()) and (
                existing is None or existing.contact_id != key
            ):
                raise self.invalid(
                    f"The subscriber hash in the path does not match the email address {email}."
                )
            if patch and existing is None:
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            member, _ = self.upsert(audience, data, email)
            return self.json(self.member_json(audience, member))

    def put_member(self, request: Request, list_id: str, key: str) -> Response:
        return self._write_member(request, list_id, key, patch=False)

    def patch_member(self, request: Request, list_id: str, key: str) -> Response:
        return self._write_member(request, list_id, key, patch=True)

    def create_member(self, request: Request, list_id: str) -> Response:
        data = self.body(request)
        with self.lock:
            audience = self.audience(list_id)
            self.check_member_fields(audience, data)
            if "status" not in data:
                raise self.invalid(
                    "The resource submitted could not be validated.",
                    [{"field": "status", "message": "This value should not be blank."}],
                )
            if "email_address" not in data:
                raise self.invalid("Please provide a valid email address.")
            member, _ = self.upsert(audience, data, data["email_address"], create_only=True)
            return self.json(self.member_json(audience, member))

    def archive_member(self, request: Request, list_id: str, key: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            m = self.find_member(audience, key)
            if m is None or m.status == "archived":
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            m.status = "archived"
        return Response(status=204)

    def existing_member(self, audience: Audience, key: str) -> Member:
        """The member, or Mailchimp's 404."""
        m = self.find_member(audience, key)
        if m is None:
            raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
        return m

    def delete_permanent(self, request: Request, list_id: str, key: str) -> Response:
        with self.lock:
            m = self.existing_member(self.audience(list_id), key)
            self.forget(m.email)
        return Response(status=204)

    def get_member_tags(self, request: Request, list_id: str, key: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            m = self.existing_member(audience, key)
            tags = [
                {"id": s.id, "name": s.name, "date_added": self.now_iso()}
                for s in audience.segments.values()
                if m.email.lower() in s.members
            ]
        return self.json({"tags": tags, "total_items": len(tags)})

    def post_member_tags(self, request: Request, list_id: str, key: str) -> Response:
        data = self.body(request)
        unknown = sorted(set(data) - {"tags", "is_syncing"})
        tags = data.get("tags")
        problems = [{"field": f, "message": "Schema describes object with no such property"} for f in unknown]
        if not isinstance(tags, list):
            problems.append(
                {"field": "tags", "message": "Required property tags was not present or not an array"}
            )
        else:
            for i, tag in enumerate(tags):
                if (
                    not isinstance(tag, dict)
                    or set(tag) != {"name", "status"}
                    or not isinstance(tag["name"], str)
                    or not tag["name"]
                    or tag["status"] not in ("active", "inactive")
                ):
                    problems.append(
                        {"field": f"tags.item:{i}", "message": "expected {name, status: active|inactive}"}
                    )
        if "is_syncing" in data and not isinstance(data["is_syncing"], bool):
            problems.append({"field": "is_syncing", "message": "must be a boolean"})
        if problems:
            raise self.invalid(
                FIELD_DETAILS,
                problems,
            )
        with self.lock:
            audience = self.audience(list_id)
            m = self.find_member(audience, key)
            if m is None or m.status == "archived":
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            self.record_items(request, len(tags or []))
            for tag in tags or []:
                if tag["status"] == "active":
                    self.tag_segment(audience, tag["name"]).members.add(m.email.lower())
                else:
                    for segment in audience.segments.values():
                        if segment.name.lower() == tag["name"].lower():
                            segment.members.discard(m.email.lower())
        response = Response(b"", status=204, content_type="application/json")
        return response

    def tag_search(self, request: Request, list_id: str) -> Response:
        name = (request.args.get("name") or "").lower()
        with self.lock:
            audience = self.audience(list_id)
            tags = [
                {"id": s.id, "name": s.name}
                for s in audience.segments.values()
                if s.name.lower().startswith(name)
            ]
        return self.json({"tags": tags, "total_items": len(tags)})

    def segment_json(self, audience: Audience, s: Segment) -> dict[str, Any]:
        return {
            "id": s.id,
            "name": s.name,
            "member_count": len(s.members),
            "type": "static",
            "list_id": audience.id,
        }

    def paging(self, request: Request) -> tuple[int, int]:
        """``count`` (default 10, at most 1,000) and ``offset`` of a collection."""
        try:
            count = int(request.args.get("count", "10"))
            offset = int(request.args.get("offset", "0"))
        except ValueError as err:
            raise self.invalid(f"Invalid paging parameter: {err}") from err
        if count > 1000 or count < 0 or offset < 0:
            raise self.invalid("count must be between 0 and 1000 and offset at least 0.")
        return count, offset

    def list_segments(self, request: Request, list_id: str) -> Response:
        count, offset = self.paging(request)
        with self.lock:
            audience = self.audience(list_id)
            segments = [self.segment_json(audience, s) for s in audience.segments.values()]
        return self.json(
            {"segments": segments[offset : offset + count], "total_items": len(segments), "list_id": list_id}
        )

    def create_segment(self, request: Request, list_id: str) -> Response:
        data = self.body(request)
        unknown = sorted(set(data) - {"name", "static_segment", "options"})
        if unknown or not isinstance(data.get("name"), str) or not data["name"]:
            raise self.invalid(
                "The resource submitted could not be validated.",
                [{"field": f, "message": "invalid"} for f in unknown or ["name"]],
            )
        if "options" in data:
            raise self.invalid(
                "Saved segments (options) are not supported by the sandbox; use static_segment."
            )
        emails = data.get("static_segment", [])
        if not isinstance(emails, list) or len(emails) > BATCH_LIMIT:
            raise self.invalid("static_segment must be a list of at most 500 emails.")
        with self.lock:
            audience = self.audience(list_id)
            if any(s.name.lower() == data["name"].lower() for s in audience.segments.values()):
                raise self.invalid("Sorry, that tag already exists.")
            segment = self.tag_segment(audience, data["name"])
            for email in emails:
                if isinstance(email, str) and email.lower() in audience.members:
                    segment.members.add(email.lower())
            return self.json(self.segment_json(audience, segment))

    def segment(self, audience: Audience, seg_id: str) -> Segment:
        segment = audience.segments.get(int(seg_id)) if seg_id.isdigit() else None
        if segment is None:
            raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
        return segment

    def get_segment(self, request: Request, list_id: str, seg_id: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            return self.json(self.segment_json(audience, self.segment(audience, seg_id)))

    def batch_segment(self, request: Request, list_id: str, seg_id: str) -> Response:
        data = self.body(request)
        unknown = sorted(set(data) - {"members_to_add", "members_to_remove"})
        problems = [{"field": f, "message": "Schema describes object with no such property"} for f in unknown]
        for key in ("members_to_add", "members_to_remove"):
            value = data.get(key, [])
            if not isinstance(value, list) or not all(isinstance(e, str) for e in value):
                problems.append({"field": key, "message": "Schema describes array of strings"})
            elif len(value) > BATCH_LIMIT:
                problems.append(
                    {"field": key, "message": f"Schema describes array with maxItems {BATCH_LIMIT}"}
                )
        if problems:
            raise self.invalid(
                FIELD_DETAILS,
                problems,
            )
        to_add, to_remove = data.get("members_to_add", []), data.get("members_to_remove", [])
        self.record_items(request, len(to_add) + len(to_remove))
        with self.lock:
            audience = self.audience(list_id)
            segment = self.segment(audience, seg_id)
            added, removed = [], []
            # emails that are not in the audience (never added, archived, deleted) are ignored
            for email in to_add:
                m = audience.members.get(email.lower())
                if m is None or m.status == "archived":
                    continue
                segment.members.add(email.lower())
                added.append({"id": subscriber_hash(email), "email_address": m.email, "status": m.status})
            for email in to_remove:
                m = audience.members.get(email.lower())
                if m is None or m.status == "archived":
                    continue
                if email.lower() not in segment.members:
                    continue  # not a member of the segment: nothing to do (idempotent)
                segment.members.discard(email.lower())
                removed.append({"id": subscriber_hash(email), "email_address": m.email, "status": m.status})
        return self.json(
            {
                "members_added": added,
                "members_removed": removed,
                "errors": [],
                "total_added": len(added),
                "total_removed": len(removed),
                "error_count": 0,
            }
        )

    def segment_members(self, request: Request, list_id: str, seg_id: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            segment = self.segment(audience, seg_id)
            members = [self.member_json(audience, audience.members[e]) for e in sorted(segment.members)]
        return self.json({"members": members, "total_items": len(members)})

    def add_segment_member(self, request: Request, list_id: str, seg_id: str) -> Response:
        data = self.body(request)
        if set(data) != {"email_address"} or not isinstance(data["email_address"], str):
            raise self.invalid(
                "The resource submitted could not be validated.",
                [{"field": "email_address", "message": "the only property; required"}],
            )
        with self.lock:
            audience = self.audience(list_id)
            segment = self.segment(audience, seg_id)
            m = audience.members.get(data["email_address"].lower())
            if m is None or m.status == "archived":
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            segment.members.add(m.email.lower())
            return self.json(self.member_json(audience, m))

    def remove_segment_member(self, request: Request, list_id: str, seg_id: str, key: str) -> Response:
        with self.lock:
            audience = self.audience(list_id)
            segment = self.segment(audience, seg_id)
            m = self.find_member(audience, key)
            if m is None or m.email.lower() not in segment.members:
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            segment.members.discard(m.email.lower())
        return Response(status=204)

    def batch_subscribe(self, request: Request, list_id: str) -> Response:
        data = self.body(request)
        unknown = sorted(set(data) - {"members", "update_existing", "sync_tags"})
        members = data.get("members")
        problems = [{"field": f, "message": "Schema describes object with no such property"} for f in unknown]
        if not isinstance(members, list) or not all(isinstance(m, dict) for m in members):
            problems.append(
                {"field": "members", "message": "Required property members must be an array of objects"}
            )
        elif len(members) > BATCH_LIMIT:
            problems.append(
                {"field": "members", "message": f"Schema describes array with maxItems {BATCH_LIMIT}"}
            )
        for key in ("update_existing", "sync_tags"):
            if key in data and not isinstance(data[key], bool):
                problems.append({"field": key, "message": "must be a boolean"})
        if problems:
            raise self.invalid(
                FIELD_DETAILS,
                problems,
            )
        assert isinstance(members, list)
        self.record_items(request, len(members))
        update_existing = bool(data.get("update_existing", False))
        sync_tags = bool(data.get("sync_tags", False)) and update_existing
        skip_duplicates = request.args.get("skip_duplicate_check") == "true"
        created: list[dict[str, Any]] = []
        updated: list[dict[str, Any]] = []
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()
        with self.lock:
            audience = self.audience(list_id)
            for item in members:
                email = item.get("email_address")
                try:
                    if not isinstance(email, str):
                        raise self.invalid("Please provide a valid email address.")
                    if email.lower() in seen and not skip_duplicates:
                        raise VendorError(400, "ERROR_GENERIC", f"{email} is a duplicate in this batch.")
                    seen.add(email.lower())
                    self.check_member_fields(audience, item, batch=True)
                    member, new = self.upsert(
                        audience,
                        item,
                        email,
                        update_existing=update_existing,
                        sync_tags=sync_tags,
                        batch=True,
                    )
                except VendorError as err:
                    code = "ERROR_CONTACT_EXISTS" if err.code == "Member Exists" else "ERROR_GENERIC"
                    field_errors = err.extra.get("errors") or [{}]
                    errors.append(
                        {
                            "email_address": email,
                            "error": err.message,
                            "error_code": code,
                            "field": field_errors[0].get("field", ""),
                            "field_message": field_errors[0].get("message", ""),
                        }
                    )
                    continue
                (created if new else updated).append(self.member_json(audience, member))
        return self.json(
            {
                "new_members": created,
                "updated_members": updated,
                "errors": errors,
                "total_created": len(created),
                "total_updated": len(updated),
                "error_count": len(errors),
            }
        )

    def create_batch(self, request: Request) -> Response:
        data = self.body(request)
        ops = data.get("operations")
        if set(data) != {"operations"} or not isinstance(ops, list):
            raise self.invalid(
                "The resource submitted could not be validated.",
                [{"field": "operations", "message": "required array"}],
            )
        for i, op in enumerate(ops):
            if (
                not isinstance(op, dict)
                or set(op) - {"method", "path", "params", "body", "operation_id"}
                or op.get("method") not in ("GET", "POST", "PUT", "PATCH", "DELETE")
                or not isinstance(op.get("path"), str)
                or ("body" in op and not isinstance(op["body"], str))
            ):
                raise self.invalid(
                    "The resource submitted could not be validated.",
                    [
                        {
                            "field": f"operations.item:{i}",
                            "message": "method, path, body (a JSON string), params, operation_id",
                        }
                    ],
                )
        with self.lock:
            if sum(1 for b in self.batches.values() if b["status"] != "finished") >= 500:
                raise VendorError(429, "Too Many Requests", "You have more than 500 pending batches.")
        self.record_items(request, len(ops))
        batch_id = uuid.uuid4().hex[:10]
        results = []
        auth = request.headers.get("Authorization", "")
        for op in ops:
            inner = Request.from_values(
                path="/3.0" + op["path"],
                method=op["method"],
                query_string=op.get("params") or {},
                data=(op.get("body") or "").encode(),
                headers={"Authorization": auth, "Content-Type": "application/json"},
            )
            path = self.normalize_path(inner.path)
            try:
                handler, params = self.resolve(inner.method, path)
                response = handler(inner, **params)
            except VendorError as err:
                response = self.error_response(err)
            results.append(
                {
                    "status_code": response.status_code,
                    "operation_id": op.get("operation_id"),
                    "response": response.get_data(as_text=True),
                }
            )
        errored = sum(1 for r in results if r["status_code"] >= 400)
        batch = {
            "id": batch_id,
            "status": "pending",
            "total_operations": len(ops),
            "finished_operations": 0,
            "errored_operations": 0,
            "submitted_at": self.now_iso(),
            "completed_at": "",
            "response_body_url": "",
            "_errored": errored,
        }
        with self.lock:
            self.batches[batch_id] = batch
            self._batch_results[batch_id] = results
        return self.json({k: v for k, v in batch.items() if not k.startswith("_")})

    def get_batch(self, request: Request, batch_id: str) -> Response:
        with self.lock:
            batch = self.batches.get(batch_id)
            if batch is None:
                raise VendorError(404, "Resource Not Found", "The requested resource could not be found.")
            if batch["status"] != "finished":  # finishes on the first poll
                batch.update(
                    status="finished",
                    finished_operations=batch["total_operations"],
                    errored_operations=batch["_errored"],
                    completed_at=self.now_iso(),
                    response_body_url=f"{request.host_url}_sandbox/batches/{batch_id}.tar.gz",
                )
            return self.json({k: v for k, v in batch.items() if not k.startswith("_")})

    def control(self, request: Request) -> Response:
        prefix = "/_sandbox/batches/"
        if request.method == "GET" and request.path.startswith(prefix) and request.path.endswith(".tar.gz"):
            batch_id = request.path[len(prefix) : -len(".tar.gz")]
            with self.lock:
                results = self._batch_results.get(batch_id)
            if results is None:
                return self.json({"error": "no such batch"}, 404)
            buffer = io.BytesIO()
            with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
                payload = json.dumps(results).encode()
                info = tarfile.TarInfo(f"{batch_id}.json")
                info.size = len(payload)
                tar.addfile(info, io.BytesIO(payload))
            return Response(buffer.getvalue(), content_type="application/gzip")
        return super().control(request)
