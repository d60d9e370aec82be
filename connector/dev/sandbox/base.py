"""What the three fake ESPs share: routing, the request log, fault injection, the injectable clock and
the ``/_sandbox/*`` control endpoints.

A fake is a plain WSGI application (werkzeug request/response objects) that holds its state in memory.
Each vendor module supplies its routes, its authentication check and its own error body shape; this
module never answers with a shape of its own on a vendor path.

Control endpoints (no authentication, loopback only):

- ``GET /_sandbox/state``: JSON snapshot of what the fake holds (``connector sandbox show``).
- ``GET /_sandbox/requests``: the request log (time, method, path, status, credential fingerprint).
- ``POST /_sandbox/faults``: schedule a fault (body: the keyword arguments of :meth:`Faults.add`,
  with ``start``/``end`` as ISO instants); ``DELETE /_sandbox/faults`` clears them.
- ``POST /_sandbox/reset``: forget all state, requests and faults.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

from werkzeug.wrappers import Request, Response

from connector import clock as connector_clock

Clock = Callable[[], datetime]
Handler = Callable[..., Response]


class VendorError(Exception):
    """Raised inside a handler to answer with the vendor's error shape."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        *,
        headers: Mapping[str, str] | None = None,
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = dict(headers or {})
        self.extra = dict(extra or {})


@dataclass
class RequestRecord:
    """One request as the fake saw it. ``at`` is the fake's clock (POSIX seconds, simulated in tests)."""

    at: float
    method: str
    path: str
    status: int
    credential: str  # a short fingerprint of the key/token, never the secret
    items: int = 0  # batch size where the endpoint takes a batch
    fault: bool = False  # answered by an injected fault

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Fault:
    """An injected failure. It applies to requests that match ``method``/``path``/``email`` while
    the fake's clock is inside ``[start, end)`` and ``count`` (if set) is not used up."""

    status: int
    code: str = ""
    message: str = ""
    start: float | None = None
    end: float | None = None
    count: int | None = None
    method: str | None = None
    path: str | None = None  # regular expression searched in the path
    email: str | None = None  # applies only when the raw body mentions this email
    # the Retry-After header sent with the fault, as given: seconds, or any text (an HTTP date,
    # "inf", "1e309") for an ESP that sends something unexpected
    retry_after: int | float | str | None = None
    # answer ``status`` with this body (and ``content_type``) instead of carrying the request out:
    # a 200 that is not JSON or lacks the documented fields, while nothing was stored
    body: str | None = None
    content_type: str = "application/json"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def matches(self, now: float, method: str, path: str, body: bytes) -> bool:
        if self.count is not None and self.count <= 0:
            return False
        if self.start is not None and now < self.start:
            return False
        if self.end is not None and now >= self.end:
            return False
        if self.method is not None and self.method.upper() != method:
            return False
        if self.path is not None and not re.search(self.path, path):
            return False
        return not (self.email is not None and self.email.lower().encode() not in body.lower())


def _instant(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, datetime):
        return connector_clock.to_utc(value).timestamp()
    if isinstance(value, int | float):
        return float(value)
    return connector_clock.to_utc(datetime.fromisoformat(str(value).replace("Z", "+00:00"))).timestamp()


class Faults:
    """The scheduled faults of one fake. Thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._faults: list[Fault] = []

    def add(
        self,
        status: int,
        *,
        code: str = "",
        message: str = "",
        start: datetime | float | str | None = None,
        end: datetime | float | str | None = None,
        count: int | None = None,
        method: str | None = None,
        path: str | None = None,
        email: str | None = None,
        retry_after: int | float | str | None = None,
        body: str | None = None,
        content_type: str = "application/json",
    ) -> Fault:
        """Schedule a fault. ``status`` 5xx is an outage, 429 a rate-limit storm (with ``retry_after``
        or without), 4xx with ``code``/``message`` a permanent error (e.g. Mailchimp's
        ``Member In Compliance State`` for one ``email``). With ``body`` the fake answers ``status``
        with that body and does nothing (e.g. a 200 whose body is not the documented answer)."""
        fault = Fault(
            status=status,
            code=code,
            message=message,
            start=_instant(start),
            end=_instant(end),
            count=count,
            method=method,
            path=path,
            email=email,
            retry_after=retry_after,
            body=body,
            content_type=content_type,
        )
        with self._lock:
            self._faults.append(fault)
        return fault

    def outage(self, *, start: Any = None, end: Any = None, status: int = 503, **kw: Any) -> Fault:
        return self.add(status, start=start, end=end, **kw)

    def storm(
        self, *, start: Any = None, end: Any = None, retry_after: int | float | str | None = None, **kw: Any
    ) -> Fault:
        return self.add(429, start=start, end=end, retry_after=retry_after, **kw)

    def remove(self, fault_id: str) -> None:
        with self._lock:
            self._faults = [f for f in self._faults if f.id != fault_id]

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    def take(self, now: float, method: str, path: str, body: bytes) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.matches(now, method, path, body):
                    if fault.count is not None:
                        fault.count -= 1
                    return fault
        return None

    def as_list(self) -> list[dict[str, Any]]:
        with self._lock:
            return [asdict(f) for f in self._faults]


def fingerprint(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()[:8]


class Route:
    def __init__(self, method: str, pattern: str, handler: Handler) -> None:
        self.method = method
        self.regex = re.compile(f"^{pattern}$")
        self.handler = handler


class FakeESP:
    """Base of the three fakes. Subclasses fill :attr:`routes` and implement the vendor hooks."""

    name = "esp"

    def __init__(self, *, clock: Clock | None = None) -> None:
        self.clock: Clock = clock or connector_clock.now
        self.lock = threading.RLock()
        self.faults = Faults()
        self.requests: list[RequestRecord] = []
        self._log_lock = threading.Lock()
        self.routes: list[Route] = []
        self.add_routes()

    # -- vendor hooks -------------------------------------------------------------------------

    def add_routes(self) -> None:
        raise NotImplementedError

    def error_response(self, err: VendorError) -> Response:
        raise NotImplementedError

    def authenticate(self, request: Request) -> str:
        """Return the credential (the key or token) or raise the vendor's 401."""
        raise NotImplementedError

    def normalize_path(self, path: str) -> str:
        return path

    def before(self, request: Request, credential: str, path: str, now: float) -> Callable[[], None]:
        """Rate limits. Raise a 429 VendorError, or return a callable run after the request."""
        return lambda: None

    def decorate(self, request: Request, response: Response, credential: str, path: str, now: float) -> None:
        """Add the vendor's rate-limit headers to a non-error response."""

    def snapshot(self) -> dict[str, Any]:
        raise NotImplementedError

    def reset_state(self) -> None:
        raise NotImplementedError

    # -- helpers for subclasses ---------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler) -> None:
        self.routes.append(Route(method, pattern, handler))

    def now(self) -> float:
        return connector_clock.to_utc(self.clock()).timestamp()

    def now_iso(self) -> str:
        return connector_clock.isoformat(self.clock())

    @staticmethod
    def json(data: Any, status: int = 200, content_type: str = "application/json") -> Response:
        return Response(json.dumps(data), status=status, content_type=content_type)

    def fault_error(self, fault: Fault) -> VendorError:
        headers = {"Retry-After": str(fault.retry_after)} if fault.retry_after is not None else {}
        return VendorError(
            fault.status,
            fault.code or self.default_code(fault.status),
            fault.message or self.default_message(fault.status),
            headers=headers,
        )

    def default_code(self, status: int) -> str:
        return str(status)

    def default_message(self, status: int) -> str:
        return "Injected failure."

    def record_items(self, request: Request, count: int) -> None:
        request.environ["sandbox.items"] = count

    # -- WSGI ----------------------------------------------------------------------------------

    def reset(self) -> None:
        with self.lock:
            self.reset_state()
        self.faults.clear()
        with self._log_lock:
            self.requests.clear()

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        request = Request(environ)
        response = self.dispatch(request)
        return response(environ, start_response)

    def dispatch(self, request: Request) -> Response:
        if request.path.startswith("/_sandbox/"):
            return self.control(request)
        now = self.now()
        credential = ""
        fault_hit = False
        try:
            credential = self.authenticate(request)
            path = self.normalize_path(request.path)
            handler, params = self.resolve(request.method, path)
            after = self.before(request, credential, path, now)
            try:
                fault = self.faults.take(now, request.method, path, request.get_data(cache=True))
                if fault is not None:
                    fault_hit = True
                    if fault.body is None:
                        raise self.fault_error(fault)
                    response = Response(fault.body, status=fault.status, content_type=fault.content_type)
                else:
                    response = handler(request, **params)
                    self.decorate(request, response, credential, path, now)
            finally:
                after()
        except VendorError as err:
            response = self.error_response(err)
            for name, value in err.headers.items():
                response.headers[name] = value
        with self._log_lock:
            self.requests.append(
                RequestRecord(
                    at=now,
                    method=request.method,
                    path=request.path,
                    status=response.status_code,
                    credential=fingerprint(credential) if credential else "",
                    items=int(request.environ.get("sandbox.items", 0)),
                    fault=fault_hit,
                )
            )
        return response

    def resolve(self, method: str, path: str) -> tuple[Handler, dict[str, str]]:
        allowed = False
        for route in self.routes:
            match = route.regex.match(path)
            if match is None:
                continue
            if route.method == method:
                return route.handler, match.groupdict()
            allowed = True
        if allowed:
            raise VendorError(405, "method_not_allowed", f"Method {method} is not allowed on {path}.")
        raise VendorError(404, "not_found", f"No resource at {path}.")

    # -- control endpoints ---------------------------------------------------------------------

    def control(self, request: Request) -> Response:
        path = request.path
        if path == "/_sandbox/state" and request.method == "GET":
            with self.lock:
                return self.json({"esp": self.name, **self.snapshot()})
        if path == "/_sandbox/requests" and request.method == "GET":
            with self._log_lock:
                return self.json([r.as_dict() for r in self.requests])
        if path == "/_sandbox/faults":
            if request.method == "GET":
                return self.json(self.faults.as_list())
            if request.method == "DELETE":
                self.faults.clear()
                return Response(status=204)
            if request.method == "POST":
                try:
                    spec = json.loads(request.get_data() or b"{}")
                    fault = self.faults.add(int(spec.pop("status")), **spec)
                except (ValueError, KeyError, TypeError) as err:
                    return self.json({"error": f"bad fault: {err}"}, 400)
                return self.json(asdict(fault), 201)
        if path == "/_sandbox/reset" and request.method == "POST":
            self.reset()
            return Response(status=204)
        return self.json({"error": f"no control endpoint {request.method} {path}"}, 404)


def parse_json(request: Request) -> Any:
    """The decoded JSON body, or ``None`` when it is not JSON (the caller raises the vendor error)."""
    raw = request.get_data(cache=True)
    if not raw:
        return None
    try:
        return json.loads(raw)
    except ValueError:
        return _INVALID


class _Invalid:
    pass


_INVALID = _Invalid()


def is_invalid(value: Any) -> bool:
    return isinstance(value, _Invalid)


EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
