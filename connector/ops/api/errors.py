"""Errors of the admin API: always JSON ``{"error", "message"}`` (and ``errors`` per field for
invalid input), never a 500 for bad input; Redis out of reach is a 503.

Request bodies are parsed here too (:data:`PARSER`, the parser of every API blueprint): a JSON
body whose strings are not valid Unicode (a lone surrogate escape such as ``\\ud800``) is a 422 (the
answer every operation with a body declares for invalid input) before any schema sees it, so no
such string is validated, stored or echoed."""

from __future__ import annotations

import json
from typing import Any, NoReturn

import redis
from flask import Request, Response, jsonify
from flask_smorest import Blueprint, abort
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException

from connector import unicode_text

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


LONE_SURROGATE = "(a \\ud800-\\udfff escape that is not half of a pair)"


class Parser(FlaskParser):
    """webargs' Flask parser, refusing with a 422 a JSON body that holds a lone surrogate (saying
    where) or that is nested too deep for Python's JSON reader."""

    def _raw_load_json(self, req: Request) -> Any:
        try:
            data = super()._raw_load_json(req)
        except RecursionError:
            fail(422, "the JSON body is nested too deep to read")
        except json.JSONDecodeError:
            raise  # webargs answers it: a 400 saying the body is not JSON
        except ValueError as err:  # a number past Python's 4,300 digits, a value JSON cannot hold
            fail(422, f"the JSON body cannot be read: {str(err).split(';')[0]}")
        found = unicode_text.first_in(data)
        if found is not None:
            where, code = found
            reason = f"{where} holds the lone surrogate {code} {LONE_SURROGATE}"
            fail(422, f"the JSON body is not valid Unicode: {reason}", errors={"json": {where: [reason]}})
        return data


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
