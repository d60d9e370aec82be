"""A fake HubSpot CRM API v3 (reference: esp-apis.md §2).

Contract enforced: ``Authorization: Bearer <token>``, JSON bodies (``Content-Type: application/json``),
contacts batch upsert/read by email with at most 100 inputs and unique ids, properties that exist
(custom ones created through the properties API, enumeration options checked), 207 with
``objectWriteTraceId`` for partial failures, 409 "Contact already exists. Existing ID: n" on create,
v3 lists (MANUAL only for membership writes, bare arrays of record id strings, ``recordIdsMissing``
for unknown records), the retired v1 lists API answering 404, and per-token rate limits (rolling
10 seconds, optional per second, daily reset at midnight UTC) with ``X-HubSpot-RateLimit-*`` headers
and ``policyName`` in 429 bodies.
"""

from __future__ import annotations

import json
import uuid
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

from werkzeug.wrappers import Request, Response

from connector.dev.sandbox.base import EMAIL, Clock, FakeESP, VendorError, is_invalid, parse_json

BATCH_LIMIT = 100
STANDARD_PROPERTIES = {
    name: {"type": "string", "fieldType": "text", "options": []}
    for name in (
        "email", "firstname", "lastname", "phone", "company", "website", "city", "country",
        "jobtitle", "lifecyclestage", "hs_object_id",
    )
}  # fmt: skip
PROPERTY_FIELDS = frozenset(
    {
        "name", "label", "type", "fieldType", "groupName", "description", "options", "displayOrder",
        "hasUniqueValue", "hidden", "formField", "calculationFormula", "externalOptions",
        "referencedObjectType", "dataSensitivity",
    }
)  # fmt: skip
LIST_FIELDS = frozenset(
    {
        "name",
        "objectTypeId",
        "processingType",
        "customProperties",
        "listFolderId",
        "filterBranch",
        "listPermissions",
    }
)
CATEGORY = {
    400: "VALIDATION_ERROR",
    401: "INVALID_AUTHENTICATION",
    403: "MISSING_SCOPES",
    404: "OBJECT_NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    409: "CONFLICT",
    415: "UNSUPPORTED_MEDIA_TYPE",
    429: "RATE_LIMIT",
}


@dataclass
class Contact:
    id: str
    properties: dict[str, str]
    created_at: str
    updated_at: str


@dataclass
class HubList:
    id: str
    name: str
    processing_type: str
    members: set[str] = field(default_factory=set)  # record ids


@dataclass
class HubSpotLimits:
    """Per token. Defaults: a Free/Starter private app (100 per rolling 10 s, 250,000 a day, reset at
    midnight in the account's ``timezone``). ``secondly`` is off unless set; 429s do not count."""

    per_ten_seconds: int | None = 100
    daily: int | None = 250_000
    secondly: int | None = None
    timezone: str = "UTC"
    whole_batch_400_without_trace_id: bool = True


class FakeHubSpot(FakeESP):
    name = "hubspot"

    def __init__(
        self,
        *,
        tokens: Iterable[str] = (),
        limits: HubSpotLimits | None = None,
        max_membership_ids: int = 100_000,
        clock: Clock | None = None,
    ) -> None:
        self.tokens = set(tokens)
        self.limits = limits or HubSpotLimits()
        self.max_membership_ids = max_membership_ids
        # emails HubSpot refuses as invalid (a per-item VALIDATION_ERROR: 207 in batches, else 400)
        self.invalid_emails: set[str] = set()
        # how a 207 error names its input (unconfirmed, esp-apis.md §2a/§5): "trace" (context
        # objectWriteTraceId when the input had one, else context ids), "ids" (context ids: the
        # email sent as id) or "none" (no context: only the message names it, when it does)
        self.error_context = "trace"
        # written, but left out of both results and errors of the batch upsert answer
        self.unreported_emails: set[str] = set()
        # membership calls report these contacts' record ids in recordIdsMissing (a record merged
        # away, or one the lists service does not see yet) and leave the list unchanged
        self.lists_missing_emails: set[str] = set()
        self.contacts: dict[str, Contact] = {}
        self.by_email: dict[str, str] = {}
        self.properties: dict[str, dict[str, Any]] = {}
        self.lists: dict[str, HubList] = {}
        self._next_id = 100
        self._window: dict[str, deque[float]] = {}
        self._daily: dict[str, tuple[int, int]] = {}  # token -> (day number, count)
        super().__init__(clock=clock)
        self.reset_state()

    # -- Python API --------------------------------------------------------------------------

    def contact_by_email(self, email: str) -> Contact | None:
        cid = self.by_email.get(email.lower())
        return self.contacts.get(cid) if cid else None

    def add_list(self, name: str, processing_type: str = "MANUAL") -> HubList:
        with self.lock:
            self._next_id += 1
            lst = HubList(id=str(self._next_id), name=name, processing_type=processing_type)
            self.lists[lst.id] = lst
        return lst

    def list_by_name(self, name: str) -> HubList | None:
        return next((lst for lst in self.lists.values() if lst.name == name), None)

    def emails_in_list(self, name: str) -> set[str]:
        lst = self.list_by_name(name)
        if lst is None:
            return set()
        return {self.contacts[i].properties["email"] for i in lst.members if i in self.contacts}

    def reset_state(self) -> None:
        self.contacts = {}
        self.by_email = {}
        self.properties = {k: dict(v) for k, v in STANDARD_PROPERTIES.items()}
        self.lists = {}
        self._window = {}
        self._daily = {}

    def snapshot(self) -> dict[str, Any]:
        lists_of: dict[str, list[str]] = {}
        for lst in self.lists.values():
            for cid in lst.members:
                lists_of.setdefault(cid, []).append(lst.name)
        return {
            "contacts": {
                c.properties.get("email", c.id): {
                    "id": c.id,
                    "properties": c.properties,
                    "lists": sorted(lists_of.get(c.id, [])),
                }
                for c in sorted(self.contacts.values(), key=lambda c: c.properties.get("email", ""))
            },
            "lists": {
                lst.name: {"listId": lst.id, "processingType": lst.processing_type, "size": len(lst.members)}
                for lst in self.lists.values()
            },
            "custom_properties": {
                name: [o["value"] for o in p.get("options", [])]
                for name, p in self.properties.items()
                if name not in STANDARD_PROPERTIES
            },
        }

    # -- vendor hooks ------------------------------------------------------------------------

    def error_response(self, err: VendorError) -> Response:
        body: dict[str, Any] = {
            "status": "error",
            "message": err.message,
            "correlationId": str(uuid.uuid4()),
        }
        if err.status == 429:
            body.update(errorType="RATE_LIMIT", requestId=str(uuid.uuid4()), policyName=err.code)
        else:
            body["category"] = err.code if err.code.isupper() else CATEGORY.get(err.status, "ERROR")
        body.update(err.extra)
        return self.json(body, err.status)

    def default_code(self, status: int) -> str:
        return "TEN_SECONDLY_ROLLING" if status == 429 else CATEGORY.get(status, "INTERNAL_ERROR")

    def default_message(self, status: int) -> str:
        if status == 429:
            return "You have reached your ten_secondly_rolling limit."
        return "internal error"

    def authenticate(self, request: Request) -> str:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        if scheme != "Bearer" or token.strip() not in self.tokens:
            if request.args.get("hapikey"):
                message = "API keys (hapikey) are no longer supported; use a private app token."
            else:
                message = (
                    "Authentication credentials not found. This API supports OAuth 2.0 authentication "
                    "and you can find more details at https://developers.hubspot.com/docs/methods/auth/oauth-overview"
                )
            raise VendorError(401, "INVALID_AUTHENTICATION", message)
        has_body = request.method in ("POST", "PUT", "PATCH") and request.get_data(cache=True)
        if has_body and request.mimetype != "application/json":
            raise VendorError(
                415, "UNSUPPORTED_MEDIA_TYPE", f"Content type '{request.mimetype}' not supported"
            )
        return token.strip()

    def normalize_path(self, path: str) -> str:
        if path.startswith("/contacts/v1/"):
            raise VendorError(
                404, "OBJECT_NOT_FOUND", "The v1 lists API was sunset on 2026-04-30; use /crm/v3/lists."
            )
        return path.rstrip("/") or "/"

    def _day(self, now: float) -> int:
        return datetime.fromtimestamp(now, ZoneInfo(self.limits.timezone)).date().toordinal()

    def before(self, request: Request, credential: str, path: str, now: float) -> Callable[[], None]:
        limits = self.limits
        with self.lock:
            window = self._window.setdefault(credential, deque())
            while window and window[0] <= now - 10:
                window.popleft()
            day, used = self._daily.get(credential, (self._day(now), 0))
            if day != self._day(now):
                day, used = self._day(now), 0
            if limits.daily is not None and used >= limits.daily:
                raise VendorError(429, "DAILY", "You have reached your daily limit.")
            if limits.per_ten_seconds is not None and len(window) >= limits.per_ten_seconds:
                raise VendorError(
                    429, "TEN_SECONDLY_ROLLING", "You have reached your ten_secondly_rolling limit."
                )
            if limits.secondly is not None and sum(1 for t in window if t > now - 1) >= limits.secondly:
                raise VendorError(429, "SECONDLY", "You have reached your secondly limit.")
            window.append(now)
            self._daily[credential] = (day, used + 1)
        return lambda: None

    def decorate(self, request: Request, response: Response, credential: str, path: str, now: float) -> None:
        limits = self.limits
        with self.lock:
            window = self._window.get(credential, deque())
            _, used = self._daily.get(credential, (0, 0))
            if limits.daily is not None:
                response.headers["X-HubSpot-RateLimit-Daily"] = str(limits.daily)
                response.headers["X-HubSpot-RateLimit-Daily-Remaining"] = str(max(0, limits.daily - used))
            if limits.per_ten_seconds is not None:
                response.headers["X-HubSpot-RateLimit-Interval-Milliseconds"] = "10000"
                response.headers["X-HubSpot-RateLimit-Max"] = str(limits.per_ten_seconds)
                response.headers["X-HubSpot-RateLimit-Remaining"] = str(
                    max(0, limits.per_ten_seconds - len(window))
                )
            if limits.secondly is not None:
                recent = sum(1 for t in window if t > now - 1)
                response.headers["X-HubSpot-RateLimit-Secondly"] = str(limits.secondly)
                response.headers["X-HubSpot-RateLimit-Secondly-Remaining"] = str(
                    max(0, limits.secondly - recent)
                )
        response.headers["X-HubSpot-Correlation-Id"] = str(uuid.uuid4())

    def add_routes(self) -> None:
        contacts = "/crm/v3/objects/contacts"
        self.route("POST", contacts + "/batch/upsert", self.batch_upsert)
        self.route("POST", contacts + "/batch/read", self.batch_read)
        self.route("POST", contacts + "/search", self.search)
        self.route("POST", contacts + "/gdpr-delete", self.gdpr_delete)
        self.route("POST", contacts, self.create_contact)
        self.route("GET", contacts + "/(?P<key>[^/]+)", self.get_contact)
        self.route("PATCH", contacts + "/(?P<key>[^/]+)", self.patch_contact)
        self.route("POST", "/crm/v3/properties/contacts", self.create_property)
        self.route("GET", "/crm/v3/properties/contacts", self.list_properties)
        self.route("GET", "/crm/v3/properties/contacts/(?P<name>[^/]+)", self.get_property)
        self.route("PATCH", "/crm/v3/properties/contacts/(?P<name>[^/]+)", self.patch_property)
        self.route("POST", "/crm/v3/lists", self.create_list)
        self.route("POST", "/crm/v3/lists/search", self.search_lists)
        self.route("GET", "/crm/v3/lists/object-type-id/0-1/name/(?P<name>[^/]+)", self.get_list_by_name)
        self.route("GET", r"/crm/v3/lists/(?P<list_id>\d+)", self.get_list)
        self.route("GET", r"/crm/v3/lists/(?P<list_id>\d+)/memberships", self.get_memberships)
        self.route("PUT", r"/crm/v3/lists/(?P<list_id>[^/]+)/memberships/add", self.add_members)
        self.route("PUT", r"/crm/v3/lists/(?P<list_id>[^/]+)/memberships/remove", self.remove_members)
        self.route("PUT", r"/crm/v3/lists/(?P<list_id>[^/]+)/memberships/add-and-remove", self.add_and_remove)

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def invalid(message: str, **context: Any) -> VendorError:
        extra = {"context": context} if context else {}
        return VendorError(400, "VALIDATION_ERROR", message, extra=extra)

    def body(self, request: Request) -> Any:
        data = parse_json(request)
        if data is None or is_invalid(data):
            raise self.invalid("Invalid input JSON on line 1: the body is not valid JSON.")
        return data

    def object_body(self, request: Request, allowed: Iterable[str]) -> dict[str, Any]:
        data = self.body(request)
        if not isinstance(data, dict):
            raise self.invalid("Invalid input JSON: expected an object.")
        unknown = sorted(set(data) - set(allowed))
        if unknown:
            raise self.invalid(f"Invalid input JSON: Unrecognized field(s) {unknown}")
        return data

    def property_errors(self, properties: Any) -> list[dict[str, Any]]:
        if not isinstance(properties, dict):
            return [
                {
                    "isValid": False,
                    "message": "properties must be an object",
                    "error": "INVALID_TYPE",
                    "name": "",
                }
            ]
        errors = []
        for name, value in properties.items():
            spec = self.properties.get(name)
            if spec is None:
                errors.append(
                    {
                        "isValid": False,
                        "message": f'Property "{name}" does not exist',
                        "error": "PROPERTY_DOESNT_EXIST",
                        "name": name,
                    }
                )
                continue
            if value is not None and not isinstance(value, str | int | float | bool):
                errors.append(
                    {
                        "isValid": False,
                        "message": f"{name} must be a scalar",
                        "error": "INVALID_TYPE",
                        "name": name,
                    }
                )
                continue
            invalid = not isinstance(value, str) or not EMAIL.match(value)
            if name == "email" and (invalid or str(value).lower() in self.invalid_emails):
                errors.append(
                    {
                        "isValid": False,
                        "message": f"Email address {value} is invalid",
                        "error": "INVALID_EMAIL",
                        "name": name,
                    }
                )
                continue
            if spec["type"] == "enumeration" and isinstance(value, str) and value != "":
                allowed = [o["value"] for o in spec.get("options", [])]
                for option in value.split(";"):
                    if option not in allowed:
                        errors.append(
                            {
                                "isValid": False,
                                "message": f"{option} was not one of the allowed options: {allowed}",
                                "error": "INVALID_OPTION",
                                "name": name,
                            }
                        )
                        break
        return errors

    def props_invalid(self, errors: list[dict[str, Any]]) -> VendorError:
        return self.invalid(f"Property values were not valid: {json.dumps(errors)}")

    def contact_json(
        self, c: Contact, *, new: bool | None = None, trace: str | None = None
    ) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": c.id,
            "properties": {**c.properties, "hs_object_id": c.id},
            "createdAt": c.created_at,
            "updatedAt": c.updated_at,
            "archived": False,
        }
        if new is not None:
            out["new"] = new
        if trace is not None:
            out["objectWriteTraceId"] = trace
        return out

    def write(self, email: str, properties: dict[str, Any]) -> tuple[Contact, bool]:
        values = {
            k: "" if v is None else (str(v).lower() if isinstance(v, bool) else str(v))
            for k, v in properties.items()
        }
        values["email"] = email
        cid = self.by_email.get(email.lower())
        now = self.now_iso()
        if cid is None:
            self._next_id += 1
            contact = Contact(id=str(self._next_id), properties=values, created_at=now, updated_at=now)
            self.contacts[contact.id] = contact
            self.by_email[email.lower()] = contact.id
            return contact, True
        contact = self.contacts[cid]
        contact.properties.update(values)
        contact.updated_at = now
        return contact, False

    def find(self, key: str, id_property: str | None) -> Contact | None:
        if id_property == "email":
            return self.contact_by_email(key)
        if id_property not in (None, "hs_object_id"):
            raise self.invalid(f"Unknown idProperty {id_property}")
        return self.contacts.get(key)

    def batch_times(self) -> dict[str, str]:
        now = self.now_iso()
        return {"requestedAt": now, "startedAt": now, "completedAt": now}

    # -- handlers ----------------------------------------------------------------------------

    def batch_upsert(self, request: Request) -> Response:
        data = self.object_body(request, {"inputs"})
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not inputs:
            raise self.invalid("inputs is required and must be a non-empty array")
        self.record_items(request, len(inputs))
        self.check_upsert_inputs(inputs)
        results, errors = [], []
        unreported = {e.lower() for e in self.unreported_emails}
        with self.lock:
            for item in inputs:
                result, error = self.upsert_item(item, unreported)
                if error is not None:
                    errors.append(error)
                elif result is not None:
                    results.append(result)
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, **self.batch_times()}
        if errors:
            body.update(errors=errors, numErrors=len(errors))
            return self.json(body, 207)
        return self.json(body)

    def check_upsert_inputs(self, inputs: list[Any]) -> None:
        """The whole-batch 400s: too many inputs, a malformed one, the same email twice."""
        if len(inputs) > BATCH_LIMIT:
            raise self.invalid(f"Batch input size {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
        for i, item in enumerate(inputs):
            if not isinstance(item, dict) or set(item) - {
                "id",
                "idProperty",
                "objectWriteTraceId",
                "properties",
            }:
                raise self.invalid(
                    f"Invalid input JSON at inputs[{i}]: allowed fields are id, idProperty, "
                    "objectWriteTraceId, properties"
                )
            if item.get("idProperty") != "email" or not isinstance(item.get("id"), str):
                raise self.invalid(
                    f"inputs[{i}]: upsert needs idProperty 'email' (a unique property) and a string id"
                )
            if not isinstance(item.get("properties"), dict):
                raise self.invalid(f"inputs[{i}].properties is required")
        ids = [item["id"].lower() for item in inputs]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise self.invalid(
                f"Duplicate IDs found in batch input: {duplicates}. IDs must be unique", ids=duplicates
            )

    def upsert_item(
        self, item: dict[str, Any], unreported: set[str]
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """One input of a batch upsert: (its result, or None when not reported; its error entry)."""
        props = dict(item["properties"])
        problems = self.property_errors({"email": item["id"], **props})
        trace = item.get("objectWriteTraceId")
        if problems:
            if trace is None and self.limits.whole_batch_400_without_trace_id:
                raise self.props_invalid(problems)
            error: dict[str, Any] = {
                "status": "error",
                "category": "VALIDATION_ERROR",
                "message": f"Property values were not valid: {json.dumps(problems)}",
            }
            if trace and self.error_context == "trace":
                error["context"] = {"objectWriteTraceId": [trace]}
            elif self.error_context != "none":
                error["context"] = {"ids": [item["id"]]}
            return None, error
        props.pop("email", None)
        contact, new = self.write(item["id"], props)
        if item["id"].lower() in unreported:
            return None, None
        return self.contact_json(contact, new=new, trace=trace), None

    def batch_read(self, request: Request) -> Response:
        data = self.object_body(request, {"idProperty", "inputs", "properties", "propertiesWithHistory"})
        inputs = data.get("inputs")
        if not isinstance(inputs, list) or not all(isinstance(i, dict) and set(i) == {"id"} for i in inputs):
            raise self.invalid("inputs must be an array of {id}")
        self.record_items(request, len(inputs))
        if len(inputs) > BATCH_LIMIT:
            raise self.invalid(f"Batch input size {len(inputs)} exceeds the limit of {BATCH_LIMIT}")
        wanted = data.get("properties") or []
        results, missing = [], []
        with self.lock:
            for item in inputs:
                contact = self.find(str(item["id"]), data.get("idProperty"))
                if contact is None:
                    missing.append(str(item["id"]))
                    continue
                out = self.contact_json(contact)
                out["properties"] = {
                    k: v for k, v in out["properties"].items() if k in wanted or k == "hs_object_id"
                }
                results.append(out)
        body: dict[str, Any] = {"status": "COMPLETE", "results": results, **self.batch_times()}
        if missing:
            body.update(
                errors=[
                    {
                        "status": "error",
                        "category": "OBJECT_NOT_FOUND",
                        "message": "Could not get some CONTACT objects, they may be deleted or not exist.",
                        "context": {"ids": missing},
                    }
                ],
                numErrors=1,
            )
            return self.json(body, 207)
        return self.json(body)

    def search(self, request: Request) -> Response:
        data = self.object_body(request, {"filterGroups", "properties", "limit", "after", "sorts", "query"})
        groups = data.get("filterGroups") or []
        if len(groups) > 5 or sum(len(g.get("filters", [])) for g in groups) > 25:
            raise self.invalid("Too many filters: at most 5 filterGroups and 25 filters")
        emails: set[str] = set()
        for group in groups:
            for f in group.get("filters", []):
                if f.get("propertyName") != "email" or f.get("operator") not in ("EQ", "IN"):
                    raise self.invalid("The sandbox supports only email EQ / IN filters")
                values = f.get("values") if f["operator"] == "IN" else [f.get("value")]
                emails.update(str(v).lower() for v in values or [])
        with self.lock:
            found = [self.contact_json(c) for e in sorted(emails) if (c := self.contact_by_email(e))]
        return self.json({"total": len(found), "results": found[: int(data.get("limit", 10))]})

    def gdpr_delete(self, request: Request) -> Response:
        data = self.object_body(request, {"objectId", "idProperty"})
        with self.lock:
            contact = self.find(str(data.get("objectId")), data.get("idProperty"))
            if contact is None:
                raise VendorError(404, "OBJECT_NOT_FOUND", "resource not found")
            del self.contacts[contact.id]
            self.by_email.pop(contact.properties.get("email", "").lower(), None)
            for lst in self.lists.values():
                lst.members.discard(contact.id)
        return Response(status=204)

    def create_contact(self, request: Request) -> Response:
        data = self.object_body(request, {"properties", "associations"})
        props = data.get("properties")
        with self.lock:
            problems = self.property_errors(props)
            if problems:
                raise self.props_invalid(problems)
            assert isinstance(props, dict)
            email = str(props.get("email", ""))
            if not email:
                raise self.invalid("The sandbox needs an email on every contact")
            existing = self.contact_by_email(email)
            if existing is not None:
                raise VendorError(409, "CONFLICT", f"Contact already exists. Existing ID: {existing.id}")
            contact, _ = self.write(email, {k: v for k, v in props.items() if k != "email"})
            return self.json(self.contact_json(contact), 201)

    def get_contact(self, request: Request, key: str) -> Response:
        with self.lock:
            contact = self.find(key, request.args.get("idProperty"))
            if contact is None:
                raise VendorError(404, "OBJECT_NOT_FOUND", "resource not found")
            return self.json(self.contact_json(contact))

    def patch_contact(self, request: Request, key: str) -> Response:
        data = self.object_body(request, {"properties"})
        with self.lock:
            contact = self.find(key, request.args.get("idProperty"))
            if contact is None:
                raise VendorError(404, "OBJECT_NOT_FOUND", "resource not found")
            problems = self.property_errors(data.get("properties"))
            if problems:
                raise self.props_invalid(problems)
            props = dict(data["properties"])
            email = str(props.pop("email", contact.properties["email"]))
            contact, _ = self.write(email, props)
            return self.json(self.contact_json(contact))

    def check_options(self, options: Any) -> list[dict[str, Any]]:
        if not isinstance(options, list) or not all(
            isinstance(o, dict) and isinstance(o.get("label"), str) and isinstance(o.get("value"), str)
            and not set(o) - {"label", "value", "description", "displayOrder", "hidden"}
            for o in options
        ):  # fmt: skip
            raise self.invalid("options must be an array of {label, value}")
        return [dict(o) for o in options]

    def property_json(self, name: str) -> dict[str, Any]:
        spec = self.properties[name]
        return {"name": name, **spec}

    def create_property(self, request: Request) -> Response:
        data = self.object_body(request, PROPERTY_FIELDS)
        missing = [k for k in ("name", "label", "type", "fieldType", "groupName") if not data.get(k)]
        if missing:
            raise self.invalid(f"Missing required field(s): {missing}")
        if data["type"] == "enumeration" and data["fieldType"] not in (
            "checkbox",
            "select",
            "radio",
            "booleancheckbox",
        ):
            raise self.invalid(
                "enumeration properties need fieldType checkbox, select, radio or booleancheckbox"
            )
        options = self.check_options(data.get("options", []))
        with self.lock:
            if data["name"] in self.properties:
                raise VendorError(
                    409, "OBJECT_ALREADY_EXISTS", f"Property named '{data['name']}' already exists."
                )
            self.properties[data["name"]] = {
                "label": data["label"],
                "type": data["type"],
                "fieldType": data["fieldType"],
                "groupName": data["groupName"],
                "description": str(data.get("description") or ""),
                "options": options,
            }
            return self.json(self.property_json(data["name"]), 201)

    def list_properties(self, request: Request) -> Response:
        """``GET /crm/v3/properties/contacts``: every contact property (``{"results": [...]}``)."""
        with self.lock:
            return self.json({"results": [self.property_json(name) for name in sorted(self.properties)]})

    def get_property(self, request: Request, name: str) -> Response:
        with self.lock:
            if name not in self.properties:
                raise VendorError(404, "OBJECT_NOT_FOUND", f"Unable to find property {name}")
            return self.json(self.property_json(name))

    def patch_property(self, request: Request, name: str) -> Response:
        data = self.object_body(request, PROPERTY_FIELDS - {"name"})
        with self.lock:
            if name not in self.properties:
                raise VendorError(404, "OBJECT_NOT_FOUND", f"Unable to find property {name}")
            if "options" in data:  # replaces the whole option list
                self.properties[name]["options"] = self.check_options(data["options"])
            for key in ("label", "type", "fieldType", "groupName", "description"):
                if key in data:
                    self.properties[name][key] = data[key]
            return self.json(self.property_json(name))

    def list_json(self, lst: HubList) -> dict[str, Any]:
        return {
            "listId": lst.id,
            "name": lst.name,
            "processingType": lst.processing_type,
            "objectTypeId": "0-1",
            "size": len(lst.members),
        }

    def create_list(self, request: Request) -> Response:
        data = self.object_body(request, LIST_FIELDS)
        if not isinstance(data.get("name"), str) or not data["name"]:
            raise self.invalid("name is required")
        if data.get("objectTypeId") != "0-1":
            raise self.invalid("objectTypeId is required ('0-1' for contacts)")
        if data.get("processingType") not in ("MANUAL", "DYNAMIC", "SNAPSHOT"):
            raise self.invalid("processingType must be MANUAL, DYNAMIC or SNAPSHOT")
        with self.lock:
            if self.list_by_name(data["name"]) is not None:
                raise self.invalid(f"A list named {data['name']} already exists.")
            self._next_id += 1
            lst = HubList(id=str(self._next_id), name=data["name"], processing_type=data["processingType"])
            self.lists[lst.id] = lst
            return self.json({"list": self.list_json(lst)})

    def search_lists(self, request: Request) -> Response:
        """``POST /crm/v3/lists/search`` (a read): lists whose name holds ``query``, ``count`` (≤ 500)
        from ``offset``; ``{"lists", "hasMore", "offset", "total"}``."""
        data = self.object_body(
            request,
            {"query", "count", "offset", "processingTypes", "listIds", "additionalProperties", "sort"},
        )
        count, offset = data.get("count", 20), data.get("offset", 0)
        if not isinstance(count, int) or not 0 < count <= 500 or not isinstance(offset, int) or offset < 0:
            raise self.invalid("count must be 1 to 500 and offset at least 0")
        query = str(data.get("query") or "").lower()
        types = data.get("processingTypes") or []
        with self.lock:
            found = [
                self.list_json(lst)
                for lst in sorted(self.lists.values(), key=lambda lst: int(lst.id))
                if query in lst.name.lower() and (not types or lst.processing_type in types)
            ]
        page = found[offset : offset + count]
        body = {"lists": page, "hasMore": offset + count < len(found), "offset": offset + len(page)}
        return self.json({**body, "total": len(found)})

    def get_list_by_name(self, request: Request, name: str) -> Response:
        with self.lock:
            lst = self.list_by_name(name)
            if lst is None:
                raise VendorError(404, "OBJECT_NOT_FOUND", f"List with name {name} does not exist")
            return self.json({"list": self.list_json(lst)})

    def the_list(self, list_id: str) -> HubList:
        lst = self.lists.get(list_id)
        if lst is None:
            raise VendorError(404, "OBJECT_NOT_FOUND", f"List {list_id} does not exist")
        return lst

    def get_list(self, request: Request, list_id: str) -> Response:
        with self.lock:
            return self.json({"list": self.list_json(self.the_list(list_id))})

    def get_memberships(self, request: Request, list_id: str) -> Response:
        limit = int(request.args.get("limit", "100"))
        if limit > 250:
            raise self.invalid("limit must be at most 250")
        after = int(request.args.get("after", "0") or 0)
        with self.lock:
            ids = sorted(self.the_list(list_id).members, key=int)
        page = ids[after : after + limit]
        body: dict[str, Any] = {"results": [{"recordId": i} for i in page]}
        if after + limit < len(ids):
            body["paging"] = {"next": {"after": str(after + limit)}}
        return self.json(body)

    def record_ids(self, value: Any, where: str) -> list[str]:
        if not isinstance(value, list) or not all(isinstance(i, str) and i.isdigit() for i in value):
            raise self.invalid(f'{where} must be a JSON array of record id strings (e.g. ["123"])')
        if len(value) > self.max_membership_ids:
            raise self.invalid(f"{where}: at most {self.max_membership_ids} record ids per call")
        return value

    def membership_list(self, list_id: str) -> HubList:
        lst = self.the_list(list_id)
        if lst.processing_type not in ("MANUAL", "SNAPSHOT"):
            raise self.invalid(
                f"List {list_id} is {lst.processing_type}; only MANUAL and SNAPSHOT lists accept "
                "membership changes"
            )
        return lst

    def change(self, lst: HubList, add: list[str], remove: list[str]) -> dict[str, Any]:
        added, removed, missing = [], [], []
        hidden = {self.by_email[e.lower()] for e in self.lists_missing_emails if e.lower() in self.by_email}
        for rid in add:
            if rid not in self.contacts or rid in hidden:
                missing.append(rid)
            elif rid not in lst.members:
                lst.members.add(rid)
                added.append(rid)
        for rid in remove:
            if rid not in self.contacts or rid in hidden:
                missing.append(rid)
            elif rid in lst.members:
                lst.members.discard(rid)
                removed.append(rid)
        return {"recordIdsMissing": missing, "recordIdsRemoved": removed, "recordsIdsAdded": added}

    def add_members(self, request: Request, list_id: str) -> Response:
        ids = self.record_ids(self.body(request), "body")
        self.record_items(request, len(ids))
        with self.lock:
            return self.json(self.change(self.membership_list(list_id), ids, []))

    def remove_members(self, request: Request, list_id: str) -> Response:
        ids = self.record_ids(self.body(request), "body")
        self.record_items(request, len(ids))
        with self.lock:
            return self.json(self.change(self.membership_list(list_id), [], ids))

    def add_and_remove(self, request: Request, list_id: str) -> Response:
        data = self.object_body(request, {"recordIdsToAdd", "recordIdsToRemove"})
        add = self.record_ids(data.get("recordIdsToAdd", []), "recordIdsToAdd")
        remove = self.record_ids(data.get("recordIdsToRemove", []), "recordIdsToRemove")
        self.record_items(request, len(add) + len(remove))
        with self.lock:
            return self.json(self.change(self.membership_list(list_id), add, remove))
