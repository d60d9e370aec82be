"""``/api/v1/accounts/{id}/people``: lookup, profile, timeline, explanation, export, erasure."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import redis
from flask.views import MethodView
from flask_smorest import Blueprint

import rules
from connector import clock, sync
from connector.clock import isoformat
from connector.destinations import destinations
from connector.ops import audit
from connector.ops.api import auth, errors
from connector.ops.api.schemas import (
    ErasedSchema,
    EraseSchema,
    ErrorSchema,
    ExplainSchema,
    ExportSchema,
    PeopleQuery,
    PersonRefSchema,
    PersonSchema,
    TimelineQuery,
    TimelineSchema,
)
from connector.profiles import export_profile, identity, load_profile, lookup
from connector.sync.keys import key as sync_key
from connector.sync.keys import profile_digest
from connector.worker.access import kept_beyond_profile
from connector.worker.erasure import erase_person
from connector.worker.ledger import Ledger

blp = Blueprint(
    "api_people", __name__, url_prefix="/api/v1/accounts/<string:account_id>/people", description="People"
)
errors.install(blp)
KINDS = ("email", "user_id", "anonymous_id")
# access exports one token may make per minute (a fixed window of the clock's minute): an access
# request is a person's, answered one at a time; a flood of them, each an audit entry of the
# account, would push the account's earlier entries out of its audit stream
EXPORTS_PER_MINUTE = 30


def _find_profile(account_id: str, profile_id: str) -> dict[str, Any]:
    document = export_profile(auth.runtime().profile_redis, account_id, profile_id)
    if document is None:
        errors.fail(
            404, f"no profile {profile_id!r} in account {account_id!r} (erased, merged or never seen)"
        )
    return document


@blp.route("")
class People(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(PeopleQuery, location="query")
    @blp.response(200, PersonRefSchema)
    def get(self, query: dict[str, Any], account_id: str) -> dict[str, Any]:
        """The profile id of one identity: exactly one of email, user_id, anonymous_id."""
        account = auth.account(account_id)
        given = [(k, query[k]) for k in KINDS if query.get(k)]
        if len(given) != 1:
            errors.fail(422, "give exactly one of email, user_id, anonymous_id")
        kind, raw = given[0]
        value = identity.clean_value(kind, raw, account.blocked_identity_values)
        pid = lookup(auth.runtime().profile_redis, account_id, kind, value) if value else None
        if pid is None:
            errors.fail(404, f"no profile with that {kind.replace('_', ' ')} in account {account_id!r}")
        return {"profile_id": pid}


@blp.route("/<string:profile_id>")
class Person(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, PersonSchema)
    def get(self, account_id: str, profile_id: str) -> dict[str, Any]:
        """Identities, traits, current segments and computed traits."""
        document = _find_profile(account_id, profile_id)
        state = Ledger(auth.runtime().profile_redis).state(account_id, profile_id)
        return {
            "profile_id": profile_id,
            "identities": document["identities"],
            "traits": document["traits"],
            "segments": sorted(state.segments) if state else [],
            "computed_traits": dict(state.traits) if state else {},
            "version": state.version if state else None,
            "event_count": len(document["events"]),
        }


def _esp_states(account_id: str, profile_id: str) -> list[dict[str, Any]]:
    conn = auth.runtime().queue_redis
    out = []
    for name, dest in sorted(destinations(auth.account(account_id)).items()):
        owned = sync.owned_state(conn, account_id, name, profile_id)
        out.append(
            {
                "destination": name,
                "type": dest.type,
                "paused": sync.is_paused(conn, account_id, name),
                "pending": bool(conn.hexists(sync_key(account_id, name, "pending"), profile_id)),
                "applied_version": sync.applied_version(conn, account_id, name, profile_id),
                "owned": owned.to_dict() if owned else None,
            }
        )
    return out


@blp.route("/<string:profile_id>/timeline")
class Timeline(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(TimelineQuery, location="query")
    @blp.response(200, TimelineSchema)
    def get(self, query: dict[str, Any], account_id: str, profile_id: str) -> dict[str, Any]:
        """Latest events, segment entries and exits from the ledger, and the state per destination."""
        document = _find_profile(account_id, profile_id)
        limit = query["limit"]
        events = [
            {"name": e["name"], "at": e["occurred_at"], "properties": e["properties"]}
            for e in document["events"][-limit:]
        ]
        transitions = Ledger(auth.runtime().profile_redis).history(account_id, profile_id, count=limit)
        return {
            "profile_id": profile_id,
            "events": events,
            "transitions": transitions,
            "destinations": _esp_states(account_id, profile_id),
        }


def _iso(value: Any) -> str | None:
    return isoformat(value) if value is not None else None


@blp.route("/<string:profile_id>/explain")
class Explain(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, ExplainSchema)
    def get(self, account_id: str, profile_id: str) -> dict[str, Any]:
        """Per segment: in or out and why, and when it next changes."""
        account = auth.account(account_id)
        now = clock.now()
        profile = load_profile(auth.runtime().profile_redis, account_id, profile_id, now)
        if profile is None:
            errors.fail(
                404,
                f"no profile {profile_id!r} in account {account_id!r} (erased, merged or never seen)",
            )
        evaluation = rules.evaluate(profile, account.ruleset, now, explain=True)
        return {
            "profile_id": profile_id,
            "now": isoformat(now),
            "next_due": _iso(evaluation.next_due),
            "traits": dict(evaluation.traits),
            "segments": {
                name: {
                    "member": e.member,
                    "reasons": list(e.reasons),
                    "next_change": _iso(e.next_change),
                    "detail": dict(e.detail),
                }
                for name, e in evaluation.explanations.items()
            },
            "text": rules.render_evaluation(evaluation, list(account.ruleset.segment_names)),
        }


def export_key(token_id: str, now: datetime) -> str:
    return f"api:exports:{token_id}:{int(now.timestamp()) // 60}"


def _count_export(conn: redis.Redis, token_id: str, now: datetime) -> None:
    """Count one access export of the token in this minute; a 429 with Retry-After (the seconds
    left of the minute) past :data:`EXPORTS_PER_MINUTE`."""
    key = export_key(token_id, now)
    pipe = conn.pipeline(transaction=True)
    pipe.incr(key)
    pipe.expire(key, 120)
    made, _ = pipe.execute()
    if int(made) > EXPORTS_PER_MINUTE:
        wait = 60 - int(now.timestamp()) % 60
        errors.fail(
            429,
            f"more than {EXPORTS_PER_MINUTE} access exports a minute by this token: try again in {wait} s",
            headers={"Retry-After": str(wait)},
        )


@blp.route("/<string:profile_id>/export")
class Export(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, ExportSchema)
    @blp.alt_response(
        429,
        schema=ErrorSchema,
        description=f"More than {EXPORTS_PER_MINUTE} access exports a minute by the token (Retry-After).",
    )
    def get(self, account_id: str, profile_id: str) -> dict[str, Any]:
        """Everything stored about the person (an access request): the profile, and what the worker and
        the sync keep about them (memberships, computed traits, segment history, destinations).
        Recorded in the audit log (``person.export``) with a digest of the profile id. At most
        ``EXPORTS_PER_MINUTE`` per token and minute (then a 429 with Retry-After)."""
        document = _find_profile(account_id, profile_id)
        rt = auth.runtime()
        _count_export(rt.queue_redis, auth.token().id, clock.now())
        document.update(
            kept_beyond_profile(rt.profile_redis, rt.queue_redis, auth.account(account_id), profile_id)
        )
        digest = profile_digest(account_id, profile_id)
        audit.person_exported(rt.queue_redis, auth.token().id, account_id, digest, clock.now())
        return {"profile_id": profile_id, "document": document}


@blp.route("/<string:profile_id>/erase")
class Erase(MethodView):
    @auth.access(blp, "admin")
    @blp.arguments(EraseSchema)
    @blp.response(200, ErasedSchema)
    def post(self, body: dict[str, Any], account_id: str, profile_id: str) -> dict[str, Any]:
        """Erase the person from everything the connector keeps and from every destination. The body
        repeats the profile id: ``{"confirm": "<profile id>"}``. Recorded in the audit log with a
        digest of the profile id."""
        account = auth.account(account_id)
        if body["confirm"] != profile_id:
            errors.fail(
                422,
                "confirm must repeat the profile id of the path",
                errors={"json": {"confirm": ["does not match"]}},
            )
        rt, now = auth.runtime(), clock.now()
        state = Ledger(rt.profile_redis).state(account_id, profile_id)
        if not erase_person(rt.profile_redis, rt.queue_redis, account, profile_id, now, "api"):
            errors.fail(
                404,
                f"no profile {profile_id!r} in account {account_id!r} (erased, merged or never seen)",
            )
        segments = state.segments if state else ()
        audit.person_erased(
            rt.queue_redis, auth.token().id, account_id, profile_digest(account_id, profile_id), segments, now
        )
        return {"profile_id": profile_id, "erased": True, "at": isoformat(now)}
