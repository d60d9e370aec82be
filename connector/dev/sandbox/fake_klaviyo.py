"""A fake Klaviyo API (reference: esp-apis.md §3).

Contract enforced: ``Authorization: Klaviyo-API-Key <key>`` (or a bearer OAuth token), a ``revision``
header on every call, JSON:API bodies (``data.type`` + ``attributes``; no unknown attributes) sent as
``application/vnd.api+json`` or ``application/json``, profile-import 201/200, profiles 409
``duplicate_profile`` with ``meta.duplicate_profile_id``, list relationships by profile id only
(≤ 1,000, 204), bulk import jobs (≤ 10,000 profiles, 5 MB, 202), events (202), and per-endpoint
burst (1 s) and steady (1 min) fixed windows per key with ``Retry-After`` on 429 and ``RateLimit-*``
headers on other answers. A trailing ``/`` is accepted on every path.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import string
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from werkzeug.wrappers import Request, Response

from connector.dev.sandbox.base import EMAIL, Clock, FakeESP, VendorError, is_invalid, parse_json

JSONAPI = "application/vnd.api+json"
PROFILE_ATTRIBUTES = frozenset(
    {
        "email", "phone_number", "external_id", "anonymous_id", "_kx", "first_name", "last_name",
        "organization", "locale", "title", "image", "location", "properties",
    }
)  # fmt: skip
IDENTIFIERS = ("email", "phone_number", "external_id", "anonymous_id")
REVISION = re.compile(r"^\d{4}-\d{2}-\d{2}(\.pre)?$")
RELATIONSHIP_LIMIT = 1000
BULK_IMPORT_LIMIT = 10_000
BULK_IMPORT_BYTES = 5 * 1024 * 1024
TITLES = {
    400: ("invalid", "Invalid input."),
    401: ("not_authenticated", "Authentication credentials were not provided."),
    403: ("permission_denied", "You do not have permission to perform this action."),
    404: ("not_found", "Not found."),
    405: ("method_not_allowed", "Method not allowed."),
    409: ("conflict", "Conflict."),
    415: ("unsupported_media_type", "Unsupported media type."),
    429: ("throttled", "Request was throttled."),
    500: ("error", "A server error occurred."),
    503: ("service_unavailable", "Service unavailable."),
}


@dataclass(frozen=True)
class Rate:
    burst: int  # per second
    steady: int  # per minute
    daily: int | None = None


# Per endpoint, from the SDK's per-operation notes (esp-apis.md §3).
RATES = {
    "profile-import": Rate(75, 750),
    "profiles": Rate(75, 700),
    "lists-create": Rate(10, 150, 150),
    "lists": Rate(75, 700),
    "list-relationships": Rate(10, 150),
    "bulk-import": Rate(10, 150),
    "bulk-import-read": Rate(75, 700),
    "subscriptions": Rate(75, 700),
    "events": Rate(350, 3500),
    "privacy": Rate(3, 60),
}


def _ulid() -> str:
    return "01" + "".join(secrets.choice(string.ascii_uppercase + string.digits) for _ in range(24))


@dataclass
class Profile:
    id: str
    attributes: dict[str, Any]
    properties: dict[str, Any] = field(default_factory=dict)
    subscribed: bool = False


@dataclass
class KList:
    id: str
    name: str
    profiles: set[str] = field(default_factory=set)


class FakeKlaviyo(FakeESP):
    name = "klaviyo"

    def __init__(
        self,
        *,
        api_keys: Iterable[str] = (),
        oauth_tokens: Iterable[str] = (),
        rates: dict[str, Rate] | None = None,
        enforce_rates: bool = True,
        reject_unknown_profile_ids: bool = True,
        clock: Clock | None = None,
    ) -> None:
        self.api_keys = set(api_keys)
        self.oauth_tokens = set(oauth_tokens)
        self.rates = {**RATES, **(rates or {})}
        self.enforce_rates = enforce_rates
        self.reject_unknown_profile_ids = reject_unknown_profile_ids
        self.profiles: dict[str, Profile] = {}
        self.lists: dict[str, KList] = {}
        self.events: list[dict[str, Any]] = []
        self.jobs: dict[str, dict[str, Any]] = {}
        self._windows: dict[tuple[str, str, str, int], int] = {}
        # (identifier, lower-cased value) -> profile id, checked against the profile when read; and the
        # profiles indexed so far (a lookup indexes any profile added without apply() first)
        self._by_identifier: dict[tuple[str, str], str] = {}
        self._indexed: set[str] = set()
        super().__init__(clock=clock)
        self.reset_state()

    # -- Python API --------------------------------------------------------------------------

    def profile_by_email(self, email: str) -> Profile | None:
        return next(
            (
                p
                for p in self.profiles.values()
                if str(p.attributes.get("email", "")).lower() == email.lower()
            ),
            None,
        )

    def list_by_name(self, name: str) -> KList | None:
        return next((lst for lst in self.lists.values() if lst.name == name), None)

    def emails_in_list(self, name: str) -> set[str]:
        lst = self.list_by_name(name)
        if lst is None:
            return set()
        return {str(self.profiles[p].attributes.get("email")) for p in lst.profiles if p in self.profiles}

    def add_list(self, name: str, list_id: str | None = None) -> KList:
        with self.lock:
            lst = KList(id=list_id or secrets.token_hex(3).upper(), name=name)
            self.lists[lst.id] = lst
        return lst

    def reset_state(self) -> None:
        self.profiles = {}
        self._by_identifier = {}
        self._indexed = set()
        self.lists = {}
        self.events = []
        self.jobs = {}
        self._windows = {}

    def snapshot(self) -> dict[str, Any]:
        lists_of: dict[str, list[str]] = {}
        for lst in self.lists.values():
            for pid in lst.profiles:
                lists_of.setdefault(pid, []).append(lst.name)
        return {
            "profiles": {
                str(p.attributes.get("email") or p.id): {
                    "id": p.id,
                    "properties": p.properties,
                    "lists": sorted(lists_of.get(p.id, [])),
                    "subscribed": p.subscribed,
                }
                for p in sorted(self.profiles.values(), key=lambda p: str(p.attributes.get("email", "")))
            },
            "lists": {lst.name: {"id": lst.id, "size": len(lst.profiles)} for lst in self.lists.values()},
            "events": [
                {"metric": e["metric"], "email": e.get("email"), "time": e.get("time")}
                for e in self.events[-50:]
            ],
        }

    # -- vendor hooks ------------------------------------------------------------------------

    def error_response(self, err: VendorError) -> Response:
        code, title = TITLES.get(err.status, ("error", "Error."))
        if err.code and not err.code.isdigit() and err.code not in ("not_found", "method_not_allowed"):
            code = err.code
        item: dict[str, Any] = {
            "id": str(uuid.uuid4()),
            "status": err.status,
            "code": code,
            "title": err.extra.get("title", title),
            "detail": err.message,
            "source": {"pointer": err.extra.get("pointer", "/data/")},
            "links": {},
            "meta": err.extra.get("meta", {}),
        }
        return self.json({"errors": [item]}, err.status, JSONAPI)

    def default_message(self, status: int) -> str:
        if status == 429:
            return "Request was throttled. Expected available in 1 second."
        return "A server error occurred."

    def authenticate(self, request: Request) -> str:
        scheme, _, key = request.headers.get("Authorization", "").partition(" ")
        key = key.strip()
        if not (
            (scheme == "Klaviyo-API-Key" and key in self.api_keys)
            or (scheme == "Bearer" and key in self.oauth_tokens)
        ):
            raise VendorError(
                401, "not_authenticated", "Missing or invalid private key.", extra={"pointer": "/data/"}
            )
        revision = request.headers.get("revision")
        if not revision or not REVISION.match(revision):
            raise VendorError(
                400,
                "invalid",
                "A valid 'revision' header (YYYY-MM-DD) is required.",
                extra={"pointer": None, "title": "Invalid input."},
            )
        has_body = request.method in ("POST", "PATCH", "DELETE") and request.get_data(cache=True)
        if has_body and request.mimetype not in (JSONAPI, "application/json"):
            raise VendorError(
                415, "unsupported_media_type", f'Unsupported media type "{request.mimetype}" in request.'
            )
        return key

    def normalize_path(self, path: str) -> str:
        if not path.startswith("/api/"):
            raise VendorError(404, "not_found", f"No endpoint at {path}.")
        return path.rstrip("/")

    def endpoint_class(self, method: str, path: str) -> str:
        if path == "/api/profile-import":
            return "profile-import"
        if path.startswith("/api/profiles"):
            return "profiles"
        if re.match(r"^/api/lists/[^/]+/relationships/profiles$", path) and method in ("POST", "DELETE"):
            return "list-relationships"
        if path == "/api/lists" and method == "POST":
            return "lists-create"
        if path.startswith("/api/lists"):
            return "lists"
        if path.startswith("/api/profile-bulk-import-jobs"):
            return "bulk-import" if method == "POST" else "bulk-import-read"
        if path.startswith("/api/profile-subscription-bulk"):
            return "subscriptions"
        if path.startswith("/api/event"):
            return "events"
        return "privacy"

    def _windows_for(
        self, credential: str, bucket: str, now: float
    ) -> list[tuple[tuple[str, str, str, int], int, float]]:
        rate = self.rates[bucket]
        out = [
            ((credential, bucket, "s", int(now)), rate.burst, float(math.floor(now) + 1)),
            ((credential, bucket, "m", int(now // 60)), rate.steady, float((math.floor(now / 60) + 1) * 60)),
        ]
        if rate.daily is not None:
            out.append(
                (
                    (credential, bucket, "d", int(now // 86400)),
                    rate.daily,
                    float((math.floor(now / 86400) + 1) * 86400),
                )
            )
        return out

    def before(self, request: Request, credential: str, path: str, now: float) -> Callable[[], None]:
        if not self.enforce_rates:
            return lambda: None
        bucket = self.endpoint_class(request.method, path)
        with self.lock:
            windows = self._windows_for(credential, bucket, now)
            blocked = [reset for key, limit, reset in windows if self._windows.get(key, 0) >= limit]
            if blocked:
                wait = max(1, math.ceil(max(blocked) - now))
                raise VendorError(
                    429,
                    "throttled",
                    f"Request was throttled. Expected available in {wait} second{'s' if wait != 1 else ''}.",
                    headers={"Retry-After": str(wait)},
                )
            for key, _, _ in windows:
                self._windows[key] = self._windows.get(key, 0) + 1
        return lambda: None

    def decorate(self, request: Request, response: Response, credential: str, path: str, now: float) -> None:
        if not self.enforce_rates:
            return
        bucket = self.endpoint_class(request.method, path)
        rate = self.rates[bucket]
        with self.lock:
            windows = self._windows_for(credential, bucket, now)
            left = [(limit - self._windows.get(key, 0), reset) for key, limit, reset in windows]
        # the policy closest to exhaustion (IETF RateLimit headers): its remaining and its reset
        remaining = min(n for n, _ in left)
        reset = max(r for n, r in left if n == remaining)
        response.headers["RateLimit-Limit"] = f"{rate.burst}, {rate.burst};w=1, {rate.steady};w=60"
        response.headers["RateLimit-Remaining"] = str(max(0, remaining))
        response.headers["RateLimit-Reset"] = str(max(0, math.ceil(reset - now)))

    def add_routes(self) -> None:
        self.route("POST", "/api/profile-import", self.profile_import)
        self.route("POST", "/api/profiles", self.create_profile)
        self.route("GET", "/api/profiles", self.get_profiles)
        self.route("GET", "/api/profiles/(?P<profile_id>[^/]+)", self.get_profile)
        self.route("POST", "/api/lists", self.create_list)
        self.route("GET", "/api/lists", self.get_lists)
        self.route("GET", "/api/lists/(?P<list_id>[^/]+)", self.get_list)
        self.route("GET", "/api/lists/(?P<list_id>[^/]+)/relationships/profiles", self.list_profiles)
        self.route("POST", "/api/lists/(?P<list_id>[^/]+)/relationships/profiles", self.add_to_list)
        self.route("DELETE", "/api/lists/(?P<list_id>[^/]+)/relationships/profiles", self.remove_from_list)
        self.route("POST", "/api/profile-bulk-import-jobs", self.bulk_import)
        self.route("GET", "/api/profile-bulk-import-jobs/(?P<job_id>[^/]+)", self.get_job)
        self.route(
            "GET", "/api/profile-bulk-import-jobs/(?P<job_id>[^/]+)/relationships/profiles", self.job_profiles
        )
        self.route("GET", "/api/profile-bulk-import-jobs/(?P<job_id>[^/]+)/import-errors", self.job_errors)
        self.route("POST", "/api/profile-subscription-bulk-create-jobs", self.subscribe)
        self.route("POST", "/api/profile-subscription-bulk-delete-jobs", self.unsubscribe)
        self.route("POST", "/api/events", self.create_event)
        self.route("POST", "/api/data-privacy-deletion-jobs", self.privacy_delete)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def invalid(detail: str, pointer: str = "/data/") -> VendorError:
        return VendorError(400, "invalid", detail, extra={"pointer": pointer})

    def document(self, request: Request) -> Any:
        data = parse_json(request)
        if data is None or is_invalid(data):
            raise self.invalid("JSON parse error: the body is not a JSON:API document.", "/")
        if not isinstance(data, dict) or "data" not in data:
            raise self.invalid(
                "The request body must be a JSON:API document with a top-level 'data'.", "/data"
            )
        return data

    def resource(
        self,
        request: Request,
        type_: str,
        *,
        top: Iterable[str] = ("data",),
        keys: Iterable[str] = ("type", "attributes"),
    ) -> dict[str, Any]:
        doc = self.document(request)
        if set(doc) - set(top):
            raise self.invalid(f"Unexpected top-level member(s): {sorted(set(doc) - set(top))}", "/")
        data = doc["data"]
        if not isinstance(data, dict):
            raise self.invalid("'data' must be an object.", "/data")
        if data.get("type") != type_:
            raise self.invalid(f"'data.type' must be '{type_}'.", "/data/type")
        unknown = sorted(set(data) - set(keys))
        if unknown:
            raise self.invalid(f"Unexpected member(s) in data: {unknown}", "/data")
        if not isinstance(data.get("attributes"), dict):
            raise self.invalid("'data.attributes' is required.", "/data/attributes")
        return data

    def check_profile_attributes(
        self, attrs: dict[str, Any], pointer: str, *, allow_null: bool = True
    ) -> None:
        for name, value in attrs.items():
            if name not in PROFILE_ATTRIBUTES:
                raise self.invalid(
                    f"'{name}' is not a valid field for the resource 'profile'.", f"{pointer}/{name}"
                )
            if value is None and not allow_null:
                raise self.invalid(f"'{name}' cannot be null in a bulk import.", f"{pointer}/{name}")
        email = attrs.get("email")
        if email is not None and (not isinstance(email, str) or not EMAIL.match(email)):
            raise self.invalid(f"Invalid email address: {email!r}.", f"{pointer}/email")
        if (
            "properties" in attrs
            and attrs["properties"] is not None
            and not isinstance(attrs["properties"], dict)
        ):
            raise self.invalid("'properties' must be an object.", f"{pointer}/properties")

    def find_profile(self, attrs: dict[str, Any]) -> Profile | None:
        """The profile with the first identifier of ``attrs`` that one has (case-insensitive), through
        an index: a bulk import of 10,000 profiles into 100,000 was a scan per profile."""
        if len(self._indexed) != len(self.profiles):
            self._reindex()
        for key in IDENTIFIERS:
            value = attrs.get(key)
            if value:
                wanted = str(value).lower()
                found = self.profiles.get(self._by_identifier.get((key, wanted), ""))
                if found is not None and str(found.attributes.get(key, "")).lower() == wanted:
                    return found
        return None

    def _index(self, profile: Profile) -> None:
        self._indexed.add(profile.id)
        for key in IDENTIFIERS:
            value = profile.attributes.get(key)
            if value:
                self._by_identifier[(key, str(value).lower())] = profile.id

    def _reindex(self) -> None:
        """Index profiles added without apply() and forget deleted ones."""
        self._indexed &= self.profiles.keys()
        for profile in self.profiles.values():
            if profile.id not in self._indexed:
                self._index(profile)

    def apply(self, profile: Profile, attrs: dict[str, Any], *, clear_nulls: bool = True) -> None:
        for name, value in attrs.items():
            if name == "properties":
                for key, prop in (value or {}).items():
                    if prop is None and clear_nulls:
                        profile.properties.pop(key, None)
                    else:
                        profile.properties[key] = prop
            elif value is None:
                if clear_nulls:
                    profile.attributes.pop(name, None)
            else:
                profile.attributes[name] = value
        self._index(profile)

    def profile_json(self, p: Profile) -> dict[str, Any]:
        return {
            "type": "profile",
            "id": p.id,
            "attributes": {**p.attributes, "properties": p.properties, "updated": self.now_iso()},
            "links": {"self": f"/api/profiles/{p.id}/"},
        }

    # -- handlers ----------------------------------------------------------------------------

    def profile_import(self, request: Request) -> Response:
        data = self.resource(request, "profile", top=("data",), keys=("type", "attributes", "id", "meta"))
        attrs = data["attributes"]
        self.check_profile_attributes(attrs, "/data/attributes")
        patch = self.patch_properties(data, attrs)
        with self.lock:
            profile = self.import_target(data, attrs)
            created = profile is None
            if profile is None:
                profile = Profile(id=_ulid(), attributes={})
                self.profiles[profile.id] = profile
            self.apply(profile, attrs)
            self.apply_patch(profile, patch)
            return self.json({"data": self.profile_json(profile)}, 201 if created else 200, JSONAPI)

    def patch_properties(self, data: dict[str, Any], attrs: dict[str, Any]) -> dict[str, Any]:
        """``meta.patch_properties`` of an import, checked (never the same property set and patched)."""
        meta = data.get("meta") or {}
        if set(meta) - {"patch_properties"}:
            raise self.invalid("Unexpected member in meta.", "/data/meta")
        patch = meta.get("patch_properties") or {}
        if not isinstance(patch, dict) or set(patch) - {"append", "unappend", "unset"}:
            raise self.invalid(
                "patch_properties takes append, unappend and unset.", "/data/meta/patch_properties"
            )
        full = set((attrs.get("properties") or {}).keys())
        patched = set(patch.get("append") or {}) | set(patch.get("unappend") or {})
        if full & patched:
            raise self.invalid(
                f"Do not set and patch the same properties: {sorted(full & patched)}",
                "/data/meta/patch_properties",
            )
        return patch

    def import_target(self, data: dict[str, Any], attrs: dict[str, Any]) -> Profile | None:
        """The profile an import updates (by ``id``, else by its identifiers), None to create one."""
        if data.get("id"):
            profile = self.profiles.get(data["id"])
            if profile is None:
                raise VendorError(
                    404,
                    "not_found",
                    f"A profile with id {data['id']} does not exist.",
                    extra={"pointer": "/data/id"},
                )
            return profile
        if not any(attrs.get(k) for k in IDENTIFIERS):
            raise self.invalid(
                "One of email, phone_number, external_id or anonymous_id is required.",
                "/data/attributes",
            )
        return self.find_profile(attrs)

    @staticmethod
    def apply_patch(profile: Profile, patch: dict[str, Any]) -> None:
        for key, value in (patch.get("append") or {}).items():
            current = profile.properties.get(key)
            current = list(current) if isinstance(current, list) else ([] if current is None else [current])
            for v in value if isinstance(value, list) else [value]:
                if v not in current:
                    current.append(v)
            profile.properties[key] = current
        for key, value in (patch.get("unappend") or {}).items():
            current = profile.properties.get(key)
            if isinstance(current, list):
                drop = value if isinstance(value, list) else [value]
                profile.properties[key] = [v for v in current if v not in drop]
        unset = patch.get("unset") or []
        for key in [unset] if isinstance(unset, str) else unset:
            profile.properties.pop(key, None)

    def create_profile(self, request: Request) -> Response:
        data = self.resource(request, "profile", keys=("type", "attributes", "meta"))
        attrs = data["attributes"]
        self.check_profile_attributes(attrs, "/data/attributes")
        with self.lock:
            existing = self.find_profile(attrs)
            if existing is not None:
                raise VendorError(
                    409,
                    "duplicate_profile",
                    "A profile already exists with one of these identifiers.",
                    extra={
                        "pointer": "/data/attributes",
                        "title": "Conflict.",
                        "meta": {"duplicate_profile_id": existing.id},
                    },
                )
            profile = Profile(id=_ulid(), attributes={})
            self.apply(profile, attrs)
            self.profiles[profile.id] = profile
            return self.json({"data": self.profile_json(profile)}, 201, JSONAPI)

    def page_size(self, request: Request, default: int = 20, maximum: int = 100) -> int:
        raw = request.args.get("page[size]", str(default))
        if not raw.isdigit() or not 1 <= int(raw) <= maximum:
            raise VendorError(
                400, "invalid", f"page[size] must be between 1 and {maximum}.", extra={"pointer": None}
            )
        return int(raw)

    def page(self, request: Request, items: list[dict[str, Any]], size: int) -> dict[str, Any]:
        cursor = request.args.get("page[cursor]", "0")
        start = int(cursor) if cursor.isdigit() else 0
        chunk = items[start : start + size]
        next_url = None
        if start + size < len(items):
            next_url = f"{request.base_url}?page[size]={size}&page[cursor]={start + size}"
        return {"data": chunk, "links": {"self": request.url, "next": next_url, "prev": None}}

    def get_profiles(self, request: Request) -> Response:
        size = self.page_size(request)
        expression = request.args.get("filter")
        with self.lock:
            profiles = list(self.profiles.values())
            if expression:
                match = re.fullmatch(
                    r"(equals|any)\((email|external_id|phone_number|id),(.+)\)", expression.replace(", ", ",")
                )
                if match is None:
                    raise VendorError(
                        400, "invalid", f"Invalid filter: {expression}", extra={"pointer": None}
                    )
                op, key, raw = match.groups()
                try:
                    values = json.loads(raw)
                except ValueError as err:
                    raise VendorError(
                        400, "invalid", f"Invalid filter value: {raw}", extra={"pointer": None}
                    ) from err
                values = values if op == "any" else [values]
                if not isinstance(values, list):
                    raise VendorError(400, "invalid", "any() takes a list", extra={"pointer": None})
                wanted = {str(v).lower() for v in values}
                profiles = [
                    p
                    for p in profiles
                    if str(p.id if key == "id" else p.attributes.get(key, "")).lower() in wanted
                ]
            items = [self.profile_json(p) for p in profiles]
        return self.json(self.page(request, items, size), 200, JSONAPI)

    def get_profile(self, request: Request, profile_id: str) -> Response:
        with self.lock:
            p = self.profiles.get(profile_id)
            if p is None:
                raise VendorError(404, "not_found", f"A profile with id {profile_id} does not exist.")
            return self.json({"data": self.profile_json(p)}, 200, JSONAPI)

    def list_json(self, lst: KList) -> dict[str, Any]:
        return {
            "type": "list",
            "id": lst.id,
            "attributes": {"name": lst.name, "opt_in_process": "single_opt_in"},
        }

    def create_list(self, request: Request) -> Response:
        data = self.resource(request, "list")
        attrs = data["attributes"]
        if set(attrs) != {"name"} or not isinstance(attrs["name"], str) or not attrs["name"]:
            raise self.invalid("A list takes exactly one attribute, 'name'.", "/data/attributes")
        lst = self.add_list(attrs["name"])
        return self.json({"data": self.list_json(lst)}, 201, JSONAPI)

    def get_lists(self, request: Request) -> Response:
        expression = request.args.get("filter")
        with self.lock:
            lists = list(self.lists.values())
            if expression:
                match = re.fullmatch(r'equals\(name,"(.*)"\)', expression)
                if match is None:
                    raise VendorError(
                        400, "invalid", f"Invalid filter: {expression}", extra={"pointer": None}
                    )
                lists = [lst for lst in lists if lst.name == match.group(1)]
            items = [self.list_json(lst) for lst in lists]
        return self.json(self.page(request, items, 10), 200, JSONAPI)

    def the_list(self, list_id: str) -> KList:
        lst = self.lists.get(list_id)
        if lst is None:
            raise VendorError(404, "not_found", f"A list with id {list_id} does not exist.")
        return lst

    def get_list(self, request: Request, list_id: str) -> Response:
        with self.lock:
            return self.json({"data": self.list_json(self.the_list(list_id))}, 200, JSONAPI)

    def list_profiles(self, request: Request, list_id: str) -> Response:
        size = self.page_size(request, default=20, maximum=1000)
        with self.lock:
            items = [{"type": "profile", "id": pid} for pid in sorted(self.the_list(list_id).profiles)]
        return self.json(self.page(request, items, size), 200, JSONAPI)

    def relationship_ids(self, request: Request) -> list[str]:
        doc = self.document(request)
        if set(doc) != {"data"} or not isinstance(doc["data"], list):
            raise self.invalid("'data' must be an array of {type: 'profile', id}.", "/data")
        ids = []
        for i, item in enumerate(doc["data"]):
            if (
                not isinstance(item, dict)
                or set(item) != {"type", "id"}
                or item["type"] != "profile"
                or not isinstance(item["id"], str)
            ):
                raise self.invalid("Each item must be exactly {type: 'profile', id}.", f"/data/{i}")
            if self.reject_unknown_profile_ids and item["id"] not in self.profiles:
                raise VendorError(
                    404,
                    "not_found",
                    f"A profile with id {item['id']} does not exist.",
                    extra={"pointer": f"/data/{i}/id"},
                )
            ids.append(item["id"])
        self.record_items(request, len(ids))
        if len(ids) > RELATIONSHIP_LIMIT:
            raise self.invalid(f"At most {RELATIONSHIP_LIMIT} profiles per request.", "/data")
        return ids

    def add_to_list(self, request: Request, list_id: str) -> Response:
        with self.lock:
            lst = self.the_list(list_id)
            lst.profiles.update(self.relationship_ids(request))
        return Response(status=204)

    def remove_from_list(self, request: Request, list_id: str) -> Response:
        with self.lock:
            lst = self.the_list(list_id)
            lst.profiles.difference_update(self.relationship_ids(request))
        return Response(status=204)

    def job_lists(self, rel: Any) -> list[str]:
        """The list ids of a bulk import job's ``relationships`` (none without them)."""
        if rel is None:
            return []
        items = rel.get("lists", {}).get("data") if isinstance(rel, dict) and set(rel) == {"lists"} else None
        if not isinstance(items, list) or not all(
            isinstance(i, dict) and i.get("type") == "list" for i in items
        ):
            raise self.invalid(
                "relationships.lists.data must be an array of {type: 'list', id}.", "/data/relationships"
            )
        return [str(i.get("id")) for i in items]

    def check_job_profiles(self, profiles: list[Any]) -> None:
        for i, item in enumerate(profiles):
            pointer = f"/data/attributes/profiles/data/{i}/attributes"
            if (
                not isinstance(item, dict)
                or item.get("type") != "profile"
                or not isinstance(item.get("attributes"), dict)
            ):
                raise self.invalid(
                    "Each profile must be {type: 'profile', attributes}.",
                    f"/data/attributes/profiles/data/{i}",
                )
            self.check_profile_attributes(item["attributes"], pointer, allow_null=False)
            if not any(item["attributes"].get(k) for k in IDENTIFIERS):
                raise self.invalid("An identifier (email, phone_number, external_id) is required.", pointer)

    def bulk_import(self, request: Request) -> Response:
        if len(request.get_data(cache=True)) > BULK_IMPORT_BYTES:
            raise VendorError(413, "invalid", "The payload is larger than 5 MB.")
        data = self.resource(request, "profile-bulk-import-job", keys=("type", "attributes", "relationships"))
        attrs = data["attributes"]
        profiles = (
            (attrs.get("profiles") or {}).get("data") if isinstance(attrs.get("profiles"), dict) else None
        )
        if set(attrs) != {"profiles"} or not isinstance(profiles, list) or not profiles:
            raise self.invalid(
                "attributes.profiles.data must be a non-empty array of profiles.", "/data/attributes/profiles"
            )
        self.record_items(request, len(profiles))
        if len(profiles) > BULK_IMPORT_LIMIT:
            raise self.invalid(
                f"At most {BULK_IMPORT_LIMIT} profiles per job.", "/data/attributes/profiles/data"
            )
        lists = self.job_lists(data.get("relationships"))
        self.check_job_profiles(profiles)
        with self.lock:
            for list_id in lists:
                self.the_list(list_id)
            ids = []
            for item in profiles:
                profile = self.find_profile(item["attributes"])
                if profile is None:
                    profile = Profile(id=_ulid(), attributes={})
                    self.profiles[profile.id] = profile
                self.apply(profile, item["attributes"], clear_nulls=False)
                ids.append(profile.id)
                for list_id in lists:
                    self.lists[list_id].profiles.add(profile.id)
            job_id = uuid.uuid4().hex
            now = self.now_iso()
            self.jobs[job_id] = {
                "profiles": ids,
                "lists": lists,
                "attributes": {
                    "status": "complete",
                    "total_count": len(ids),
                    "completed_count": len(ids),
                    "failed_count": 0,
                    "created_at": now,
                    "started_at": now,
                    "completed_at": now,
                    "expires_at": None,
                },
            }
            body = {
                "data": {
                    "type": "profile-bulk-import-job",
                    "id": job_id,
                    "attributes": {**self.jobs[job_id]["attributes"], "status": "queued"},
                }
            }
        return self.json(body, 202, JSONAPI)

    def job(self, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(job_id)
        if job is None:
            raise VendorError(404, "not_found", f"A job with id {job_id} does not exist.")
        return job

    def get_job(self, request: Request, job_id: str) -> Response:
        with self.lock:
            job = self.job(job_id)
            return self.json(
                {"data": {"type": "profile-bulk-import-job", "id": job_id, "attributes": job["attributes"]}},
                200,
                JSONAPI,
            )

    def job_profiles(self, request: Request, job_id: str) -> Response:
        size = self.page_size(request, default=100, maximum=100)
        with self.lock:
            items = [{"type": "profile", "id": pid} for pid in self.job(job_id)["profiles"]]
        return self.json(self.page(request, items, size), 200, JSONAPI)

    def job_errors(self, request: Request, job_id: str) -> Response:
        with self.lock:
            self.job(job_id)
        return self.json({"data": [], "links": {"next": None}}, 200, JSONAPI)

    def _subscription_profiles(self, request: Request, type_: str, limit: int) -> list[dict[str, Any]]:
        data = self.resource(request, type_, keys=("type", "attributes", "relationships"))
        attrs = data["attributes"]
        profiles = (
            (attrs.get("profiles") or {}).get("data") if isinstance(attrs.get("profiles"), dict) else None
        )
        if not isinstance(profiles, list) or not profiles:
            raise self.invalid(
                "attributes.profiles.data must be a non-empty array.", "/data/attributes/profiles"
            )
        self.record_items(request, len(profiles))
        if len(profiles) > limit:
            raise self.invalid(f"At most {limit} profiles per job.", "/data/attributes/profiles/data")
        for i, p in enumerate(profiles):
            if (
                not isinstance(p, dict)
                or p.get("type") != "profile"
                or not isinstance(p.get("attributes"), dict)
            ):
                raise self.invalid(
                    "Each profile must be {type: 'profile', attributes}.",
                    f"/data/attributes/profiles/data/{i}",
                )
        return profiles

    def subscribe(self, request: Request) -> Response:
        profiles = self._subscription_profiles(request, "profile-subscription-bulk-create-job", 1000)
        with self.lock:
            for p in profiles:
                found = self.find_profile(p["attributes"])
                if found is None:
                    found = Profile(
                        id=_ulid(), attributes={k: v for k, v in p["attributes"].items() if k in IDENTIFIERS}
                    )
                    self.profiles[found.id] = found
                found.subscribed = True
        return Response(status=202)

    def unsubscribe(self, request: Request) -> Response:
        profiles = self._subscription_profiles(request, "profile-subscription-bulk-delete-job", 100)
        with self.lock:
            for p in profiles:
                found = self.find_profile(p["attributes"])
                if found is not None:
                    found.subscribed = False
        return Response(status=202)

    def create_event(self, request: Request) -> Response:
        data = self.resource(request, "event")
        attrs = data["attributes"]
        unknown = sorted(
            set(attrs) - {"properties", "time", "value", "value_currency", "unique_id", "metric", "profile"}
        )
        if unknown:
            raise self.invalid(f"Unexpected attribute(s): {unknown}", "/data/attributes")
        if not isinstance(attrs.get("properties"), dict):
            raise self.invalid("'properties' is required.", "/data/attributes/properties")
        try:
            metric = attrs["metric"]["data"]
            profile = attrs["profile"]["data"]
            ok = metric["type"] == "metric" and isinstance(metric["attributes"]["name"], str)
            ok = ok and profile["type"] == "profile" and isinstance(profile.get("attributes", {}), dict)
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise self.invalid(
                "metric.data {type: 'metric', attributes.name} and profile.data {type: 'profile'} "
                "are required.",
                "/data/attributes",
            )
        pattrs = profile.get("attributes", {})
        self.check_profile_attributes(pattrs, "/data/attributes/profile/data/attributes")
        with self.lock:
            unique = attrs.get("unique_id")
            if unique is None or not any(
                e["unique_id"] == unique and e["metric"] == metric["attributes"]["name"] for e in self.events
            ):
                self.events.append(
                    {
                        "metric": metric["attributes"]["name"],
                        "email": pattrs.get("email"),
                        "time": attrs.get("time"),
                        "unique_id": unique,
                        "properties": attrs["properties"],
                    }
                )
        return Response(status=202)

    def privacy_delete(self, request: Request) -> Response:
        data = self.resource(request, "data-privacy-deletion-job")
        try:
            target = data["attributes"]["profile"]["data"]
            assert target["type"] == "profile"
        except (KeyError, TypeError, AssertionError) as err:
            raise self.invalid(
                "attributes.profile.data {type: 'profile', id or attributes} is required.",
                "/data/attributes/profile",
            ) from err
        with self.lock:
            found = self.profiles.get(target.get("id", "")) or self.find_profile(
                target.get("attributes") or {}
            )
            if found is not None:
                del self.profiles[found.id]
                self._indexed.discard(found.id)
                for lst in self.lists.values():
                    lst.profiles.discard(found.id)
        return Response(status=202)
