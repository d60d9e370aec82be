"""Errors of the admin API: always JSON ``{"error", "message"}`` (and ``errors`` per field for
invalid input), never a 500 for bad input; Redis out of reach is a 503.

Request bodies are parsed here too (:data:`PARSER`, the parser of every API blueprint), by the
webhooks' JSON reader: a body holding what no store can take (a lone surrogate escape such as
``\\ud800``, nesting past its depth, an integer too long to read) is a 422 (the answer every
operation with a body declares for invalid input) before any schema sees it."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import redis
from flask import Request, Response, jsonify
from flask_smorest import Blueprint, abort
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request
from werkzeug.exceptions import HTTPException

from connector.errors import MalformedPayload
from connector.ingest.receivers.base import parse_json

NAMES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "too_many_requests",
    503: "unavailable",
}


def _first(messages: Any, path: str = "") -> str:
    """The first field error as ``where.field: reason``."""
    if isinstance(messages, dict) and messages:
        key, value = next(iter(messages.items()))
        where = f"{path}.{key}" if path else str(key)
        return _first(value, where)
    if isinstance(messages, list) and messages:
        return _first(messages[0], path)
    return f"{path}: {messages}" if path else str(messages)


def error_body(code: int, message: str, errors: Any = None) -> dict[str, Any]:
    body: dict[str, Any] = {"error": NAMES.get(code, "error"), "message": message}
    if errors:
        body["errors"] = errors
    return body


def answer(code: int, message: str, errors: Any = None, headers: dict[str, str] | None = None) -> Response:
    response = jsonify(error_body(code, message, errors))
    response.status_code = code
    for name, value in (headers or {}).items():
        response.headers[name] = value
    return response


def http_error(err: HTTPException) -> Response:
    data = getattr(err, "data", None) or {}
    code = err.code or 400
    errors = data.get("errors") or data.get("messages")
    if isinstance(errors, dict) and set(errors) <= {"query", "json", "path", "headers", "view_args"}:
        errors = {k: v for k, v in errors.items() if v}  # webargs nests by location
    message = data.get("message")
    if not message:
        message = f"invalid {_first(errors)}" if errors else (err.description or err.name)
    return answer(code, message, errors, data.get("headers"))


def redis_error(err: redis.RedisError) -> Response:
    return answer(503, f"state store unavailable ({type(err).__name__}); try again")


class Parser(FlaskParser):
    """webargs' Flask parser, reading a JSON body as the webhooks' bodies are read
    (:func:`connector.ingest.receivers.base.parse_json`): a body that is not JSON stays webargs' 400;
    one nested too deep, holding an integer too long to read, a number out of range or a lone
    surrogate escape is a 422 naming the problem and where it is."""

    def _raw_load_json(self, req: Request) -> Any:
        if not is_json_request(req):
            return core.missing
        try:
            return parse_json(req.get_data(cache=True), "body")
        except MalformedPayload as err:
            if isinstance(err.__cause__, json.JSONDecodeError | UnicodeDecodeError):
                raise err.__cause__ from None  # webargs answers it: a 400 saying the body is not JSON
            fail(422, f"the JSON body cannot be taken: {err}")


PARSER = Parser()


def install(blp: Blueprint) -> None:
    """Answer ``blp``'s errors as JSON and parse its arguments with :data:`PARSER` (call it before
    the blueprint's routes are declared: their arguments take the parser then)."""
    blp.ARGUMENTS_PARSER = PARSER
    blp.register_error_handler(HTTPException, http_error)
    blp.register_error_handler(redis.RedisError, redis_error)


def fail(code: int, message: str, **extra: Any) -> NoReturn:
    """Stop the request with a JSON error (``errors=``, ``headers=`` as flask-smorest's abort)."""
    abort(code, message=message, **extra)
    raise AssertionError("abort returned")  # abort always raises
