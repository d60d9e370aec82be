"""``/api/v1/accounts/{id}/rules``: the rules in force, versions, validation, dry runs, publishing.

A version written here is a draft (:mod:`connector.rules_store`) until it is published: then it is
the account's rules in every process (each one's accounts provider looks at the pointer once a
second) and every profile is re-evaluated (:func:`connector.worker.publish.publish`), with a
progress key. Every change is in the audit log, with the rules in force before and after.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Callable
from typing import Any

import redis
from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate

from connector import clock, event_names, rules_store, trait_names
from connector.config import Account
from connector.ops import audit
from connector.ops.api import auth, errors
from connector.ops.api.schemas import ErrorSchema, body_integer
from connector.runtime import RulesInForce, shown_path
from connector.worker import publish
from rules import RuleSet
from rules.dependencies import fingerprint as rules_fingerprint

blp = Blueprint(
    "api_rules",
    __name__,
    url_prefix="/api/v1/accounts/<string:account_id>/rules",
    description="Rules: versions, validation, dry runs, publishing",
)
errors.install(blp)

DRY_RUN_DEFAULT = 1000
DRY_RUN_MAX = 10_000
SAMPLE_PEOPLE = 20
PROGRESS_KEY = re.compile(r"^[0-9a-f]{12}$")


# shapes


def _text_bytes(text: str) -> None:
    if len(text.encode("utf-8", "surrogatepass")) > rules_store.MAX_TEXT:
        raise ValidationError(rules_store.TEXT_TOO_LONG)


# a rules text: at most MAX_TEXT bytes of UTF-8 (so at most as many characters, which the contract says)
TEXT_LIMIT: list[Callable[[Any], Any]] = [
    validate.Length(max=rules_store.MAX_TEXT, error=rules_store.TEXT_TOO_LONG),
    _text_bytes,
]


class RulesTextSchema(Schema):
    text = fields.String(
        required=True,
        validate=TEXT_LIMIT,
        metadata={
            "description": "the rules: section as YAML or JSON (segments, traits, include ...), "
            f"at most {rules_store.MAX_TEXT} bytes of UTF-8"
        },
    )


class NewVersionSchema(RulesTextSchema):
    note = fields.String(load_default="", validate=validate.Length(max=500))


class DryRunBodySchema(Schema):
    text = fields.String(
        validate=TEXT_LIMIT,
        metadata={"description": "candidate rules (YAML or JSON); or give version"},
    )
    version = body_integer(validate=validate.Range(min=1), metadata={"description": "a stored version"})
    limit = body_integer(
        load_default=DRY_RUN_DEFAULT,
        validate=validate.Range(min=1, max=DRY_RUN_MAX),
        metadata={"description": "evaluate at most this many stored profiles"},
    )


class RulesInForceSchema(Schema):
    account = fields.String(required=True)
    source = fields.String(required=True, metadata={"description": "file or api"})
    version = fields.Integer(
        required=True, allow_none=True, metadata={"description": "the API version in force"}
    )
    file = fields.String(
        required=True,
        metadata={"description": "the account file's name in the config directory (like acme.yaml)"},
    )
    file_digest = fields.String(required=True)
    superseded_api_version = fields.Integer(
        required=True,
        allow_none=True,
        metadata={"description": "an API version the file's changed rules replaced"},
    )
    problem = fields.String(required=True, allow_none=True)
    text = fields.String(required=True)
    rules = fields.Dict(required=True)
    segments = fields.List(fields.String(), required=True)
    traits = fields.List(fields.String(), required=True)


class WarningSchema(Schema):
    path = fields.String(required=True)
    message = fields.String(required=True)


class ValidationSchema(Schema):
    valid = fields.Boolean(required=True)
    path = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True, allow_none=True)
    segments = fields.List(fields.String(), required=True)
    traits = fields.List(fields.String(), required=True)
    warnings = fields.List(
        fields.Nested(WarningSchema),
        required=True,
        metadata={
            "description": "valid rules on an event the account never received and no template uses "
            "(a likely typo, or a Segment spec name stored under another one), and `trait:` names "
            "close to a computed trait of the rules that they are not (a likely typo)"
        },
    )


class PublishedSchema(Schema):
    at = fields.String(required=True)
    by = fields.String(required=True)


class VersionSchema(Schema):
    version = fields.Integer(required=True)
    created_at = fields.String(required=True)
    created_by = fields.String(required=True)
    note = fields.String(required=True)
    based_on = fields.String(
        required=True, metadata={"description": "digest of the file's rules it was written against"}
    )
    status = fields.String(required=True, metadata={"description": "in_force, superseded, draft or earlier"})
    published = fields.List(fields.Nested(PublishedSchema), required=True)
    text = fields.String(required=True)


class VersionListSchema(Schema):
    items = fields.List(fields.Nested(VersionSchema), required=True)
    in_force = fields.Integer(required=True, allow_none=True)


class SegmentChangeSchema(Schema):
    name = fields.String(required=True)
    entering = fields.Integer(required=True)
    exiting = fields.Integer(required=True)
    entering_sample = fields.List(fields.String(), required=True)
    exiting_sample = fields.List(fields.String(), required=True)


class DryRunSchema(Schema):
    profiles = fields.Integer(required=True, metadata={"description": "profiles evaluated"})
    limit = fields.Integer(required=True)
    sampled = fields.Boolean(
        required=True, metadata={"description": "true: the account has more profiles than evaluated"}
    )
    segments = fields.List(fields.Nested(SegmentChangeSchema), required=True)


class PublishStartedSchema(Schema):
    version = fields.Integer(required=True)
    key = fields.String(required=True, metadata={"description": "GET .../rules/publish/{key} for progress"})
    total = fields.Integer(required=True)


class ProgressSchema(Schema):
    key = fields.String(required=True)
    done = fields.Integer(required=True)
    total = fields.Integer(required=True)
    percent = fields.Integer(required=True)
    finished = fields.Boolean(required=True)


# helpers


def _state(account: Account) -> RulesInForce:
    state = auth.runtime().provider.rules_in_force(account.id)
    return state if state is not None else RulesInForce("file", rules_store.digest(account.rules))


def _compile(account: Account, text: str) -> tuple[dict[str, Any], RuleSet]:
    """The parsed and compiled rules, or a 422 naming the path inside the rules and the reason."""
    try:
        raw = rules_store.parse_text(text)
        return raw, rules_store.compile_for(account, raw)
    except rules_store.InvalidRules as err:
        errors.fail(
            422, f"{err.path}: {err.reason}", errors={"rules": {"path": err.path, "reason": err.reason}}
        )


def file_name(account: Account) -> str:
    """The account file as answered: its name in the config directory (an account file is one of the
    directory's own files), never the server's path to it."""
    return shown_path(os.path.basename(account.file))


def _version_or_404(account_id: str, number: int) -> rules_store.Version:
    conn = auth.runtime().queue_redis
    found = rules_store.get(conn, account_id, number)
    if found is None and rules_store.dropped(conn, account_id, number):
        errors.fail(
            404,
            f"rules version {number} of account {account_id!r} is no longer kept: only the newest "
            f"{rules_store.MAX_VERSIONS} versions and the one in force are",
        )
    if found is None:
        errors.fail(404, f"no rules version {number} in account {account_id!r}")
    return found


def _status(version: rules_store.Version, pointer: rules_store.Pointer | None) -> str:
    if pointer is not None and pointer.version == version.number:
        return "superseded" if pointer.superseded else "in_force"
    return "earlier" if version.published else "draft"


def _describe(version: rules_store.Version, pointer: rules_store.Pointer | None) -> dict[str, Any]:
    return {
        "version": version.number,
        "created_at": version.created_at,
        "created_by": version.created_by,
        "note": version.note,
        "based_on": version.based_on,
        "status": _status(version, pointer),
        "published": list(version.published),
        "text": version.text,
    }


def _in_force(account: Account) -> dict[str, Any]:
    state = _state(account)
    return {
        "source": state.source,
        "version": state.version,
        "rules_digest": rules_store.digest(account.rules),
    }


def _record(action: str, account_id: str, before: Any, after: Any) -> None:
    audit.record(
        auth.runtime().queue_redis,
        auth.token().id,
        action,
        f"rules:{account_id}",
        [account_id],
        before,
        after,
        clock.now(),
    )


# resources


@blp.route("")
class Rules(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, RulesInForceSchema)
    def get(self, account_id: str) -> dict[str, Any]:
        """The rules in force: from the account file or an API version, with its text."""
        account = auth.account(account_id)
        state = _state(account)
        return {
            "account": account.id,
            "source": state.source,
            "version": state.version,
            "file": file_name(account),
            "file_digest": state.file_digest,
            "superseded_api_version": state.superseded_version,
            "problem": state.problem,
            "text": rules_store.to_text(account.rules),
            "rules": dict(account.rules or {}),
            "segments": list(account.ruleset.segment_names),
            "traits": list(account.ruleset.trait_names),
        }

    @auth.access(blp, "editor")
    @blp.arguments(NewVersionSchema)
    @blp.response(201, VersionSchema)
    @blp.alt_response(
        422, schema=ErrorSchema, description="Invalid rules: the path inside them and the reason."
    )
    def put(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """A new version of the rules, validated and stored as a draft (not in force until published).
        The newest ``MAX_VERSIONS`` versions and the one in force are kept; older ones are dropped."""
        account = auth.account(account_id)
        raw, _ = _compile(account, body["text"])
        conn = auth.runtime().queue_redis
        version = rules_store.create(
            conn,
            account.id,
            body["text"],
            raw,
            _state(account).file_digest,
            auth.token().id,
            clock.now(),
            body["note"],
        )
        # the text is in the version (kept or not): the entry names it by digest and size only
        _record(
            "rules.draft",
            account.id,
            _in_force(account),
            {"version": version.number, **audit.text_digest(version.text)},
        )
        return _describe(version, rules_store.pointer(conn, account.id))


@blp.route("/validate")
class Validate(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(RulesTextSchema)
    @blp.response(200, ValidationSchema)
    def post(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Check rules without storing them: valid, or the path inside them and the reason."""
        account = auth.account(account_id)
        try:
            raw = rules_store.parse_text(body["text"])
            ruleset = rules_store.compile_for(account, raw)
        except rules_store.InvalidRules as err:
            return {
                "valid": False,
                "path": err.path,
                "reason": err.reason,
                "segments": [],
                "traits": [],
                "warnings": [],
            }
        return {
            "valid": True,
            "path": None,
            "reason": None,
            "segments": list(ruleset.segment_names),
            "traits": list(ruleset.trait_names),
            "warnings": _event_warnings(account, raw) + _trait_warnings(account, raw, ruleset),
        }


def _event_warnings(account: Account, raw: Any) -> list[dict[str, str]]:
    try:
        seen = event_names.seen_names(auth.runtime().profile_redis, account.id)
    except redis.RedisError:
        return []  # the names seen are out of reach: no warning rather than every name warned
    return [
        {"path": path, "message": message} for path, message in event_names.warnings(raw, account.id, seen)
    ]


def _trait_warnings(account: Account, raw: Any, ruleset: RuleSet) -> list[dict[str, str]]:
    """``trait:`` names close to a computed trait of these rules that they are not."""
    return [
        {"path": path, "message": message}
        for path, message in trait_names.warnings(raw, account.id, ruleset.trait_names)
    ]


@blp.route("/dry-run")
class DryRun(MethodView):
    @auth.access(blp, "editor")
    @blp.arguments(DryRunBodySchema)
    @blp.response(200, DryRunSchema)
    @blp.alt_response(422, schema=ErrorSchema, description="Invalid rules, or neither text nor version.")
    def post(self, body: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Who would enter and exit each segment with these rules, over at most ``limit`` stored
        profiles (``sampled`` says when the account has more). Changes nothing."""
        account = auth.account(account_id)
        if ("text" in body) == ("version" in body):
            errors.fail(422, "give exactly one of text (rules) and version (a stored version)")
        text = body["text"] if "text" in body else _version_or_404(account.id, body["version"]).text
        _, candidate = _compile(account, text)
        now, limit = clock.now(), body["limit"]
        profiles = list(
            itertools.islice(
                publish.stored_profiles(auth.runtime().profile_redis, account.id, now), limit + 1
            )
        )
        report = publish.dry_run(account.ruleset, candidate, profiles[:limit], now)
        return {
            "profiles": report.profiles,
            "limit": limit,
            "sampled": len(profiles) > limit,
            "segments": [
                {
                    "name": name,
                    "entering": len(delta.entering),
                    "exiting": len(delta.exiting),
                    "entering_sample": delta.entering[:SAMPLE_PEOPLE],
                    "exiting_sample": delta.exiting[:SAMPLE_PEOPLE],
                }
                for name, delta in sorted(report.segments.items())
            ],
        }


@blp.route("/versions")
class Versions(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, VersionListSchema)
    def get(self, account_id: str) -> dict[str, Any]:
        """Every version, newest first, with who wrote and published it and when."""
        account = auth.account(account_id)
        conn = auth.runtime().queue_redis
        pointer = rules_store.pointer(conn, account.id)
        return {
            "items": [_describe(v, pointer) for v in rules_store.listing(conn, account.id)],
            "in_force": _state(account).version,
        }


@blp.route("/versions/<int:version>")
class VersionOne(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, VersionSchema)
    def get(self, account_id: str, version: int) -> dict[str, Any]:
        """One version with its text."""
        auth.account(account_id)
        found = _version_or_404(account_id, version)
        return _describe(found, rules_store.pointer(auth.runtime().queue_redis, account_id))


def _publish(account: Account, version: rules_store.Version, action: str) -> dict[str, Any]:
    state = _state(account)
    if version.based_on != state.file_digest:
        errors.fail(
            409,
            f"version {version.number} was written against other file rules than the account file's now "
            "(the file changed since): write a new version from the rules in force",
        )
    before = _in_force(account)
    rt = auth.runtime()
    # the rules every profile is about to be re-evaluated with, recorded before they are in force:
    # a scheduler that sees them in force meanwhile does not queue a second re-evaluation
    try:
        ruleset = rules_store.compile_for(account, version.rules)
    except rules_store.InvalidRules as err:
        errors.fail(409, f"version {version.number} does not compile with the account file now: {err}")
    rt.queue_redis.set(publish.rules_key(account.id), rules_fingerprint(ruleset))
    rules_store.publish(rt.queue_redis, version, auth.token().id, clock.now())
    rt.provider.refresh_rules()
    now_account = auth.account(account.id)
    key, total = publish.publish(now_account, rt.profile_redis, rt.queue_redis, clock.now())
    short = key.rsplit(":", 1)[-1]
    _record(action, account.id, before, {**_in_force(now_account), "progress": short, "profiles": total})
    return {"version": version.number, "key": short, "total": total}


@blp.route("/versions/<int:version>/publish")
class Publish(MethodView):
    @auth.access(blp, "editor")
    @blp.response(202, PublishStartedSchema)
    @blp.alt_response(409, schema=ErrorSchema, description="The version's base is not the file's rules now.")
    def post(self, account_id: str, version: int) -> dict[str, Any]:
        """Make the version the rules in force everywhere and re-evaluate every profile."""
        account = auth.account(account_id)
        return _publish(account, _version_or_404(account_id, version), "rules.publish")


@blp.route("/versions/<int:version>/rollback")
class Rollback(MethodView):
    @auth.access(blp, "editor")
    @blp.response(202, PublishStartedSchema)
    @blp.alt_response(
        409, schema=ErrorSchema, description="Not an earlier published version, or its base changed."
    )
    def post(self, account_id: str, version: int) -> dict[str, Any]:
        """Publish an earlier, once published version again."""
        account = auth.account(account_id)
        found = _version_or_404(account_id, version)
        current = _state(account).version
        if not found.published or (current is not None and found.number >= current):
            errors.fail(409, f"version {version} is not an earlier published version; publish it instead")
        return _publish(account, found, "rules.rollback")


@blp.route("/publish/<string:key>")
class Progress(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, ProgressSchema)
    def get(self, account_id: str, key: str) -> dict[str, Any]:
        """How far the re-evaluation started by a publish is."""
        auth.account(account_id)
        conn = auth.runtime().queue_redis
        full = f"publish:{account_id}:{key}"
        if not PROGRESS_KEY.match(key) or not conn.exists(full):
            errors.fail(404, f"no publish {key!r} in account {account_id!r}")
        done, total = publish.progress(conn, full)
        done = min(done, total)
        percent = 100 if total == 0 else done * 100 // total
        return {"key": key, "done": done, "total": total, "percent": percent, "finished": done >= total}
