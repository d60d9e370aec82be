"""``/api/v1/accounts/{id}/segments``: definitions, sizes now and over time, members.

Sizes, counts per hour and day, and members come from :mod:`connector.worker.sizes`, kept as
memberships change: a request reads a few hashes, never the profiles.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint

import rules
from connector import clock
from connector.clock import isoformat
from connector.config import Account
from connector.ops.api import auth, errors
from connector.ops.api.accounts import page
from connector.ops.api.schemas import (
    MemberPageSchema,
    MembershipSchema,
    MembersQuery,
    PageQuery,
    SegmentDetailSchema,
    SegmentPageSchema,
    SegmentQuery,
)
from connector.profiles import load_profile
from connector.worker import sizes
from rules.compile import substitute, template_params

blp = Blueprint(
    "api_segments",
    __name__,
    url_prefix="/api/v1/accounts/<string:account_id>/segments",
    description="Segments",
)
errors.install(blp)
SCAN_PER_PAGE = 10  # members looked at per result asked for when searching by email prefix


@functools.cache
def _templates() -> dict[str, dict[str, Any]]:
    return rules.builtin_templates()


def _included_params(account: Account, template: str) -> dict[str, Any]:
    for item in (account.rules or {}).get("include") or ():
        if isinstance(item, dict) and item.get("template") == template:
            return dict(item.get("params") or {})
    return {}


def _definition(account: Account, segment: rules.Segment) -> Any:
    if segment.origin:
        written = next(
            (
                s
                for s in _templates().get(segment.origin, {}).get("segments", ())
                if s.get("name") == segment.name
            ),
            None,
        )
        template = _templates().get(segment.origin, {})
        params = _included_params(account, segment.origin)
        try:  # the segment as it is evaluated: the template's defaults and the account's parameters in
            in_force = substitute(written, template_params(template.get("params") or {}, params))
        except rules.RulesError:
            in_force = None
        return {"template": segment.origin, "params": params, "segment": written, "in_force": in_force}
    return next(
        (s for s in (account.rules or {}).get("segments") or () if s.get("name") == segment.name), None
    )


def segment_or_404(account: Account, name: str) -> rules.Segment:
    found = account.ruleset.by_name.get(name)
    if found is None:
        errors.fail(404, f"no segment {name!r} in account {account.id!r}")
    return found


def describe(account: Account, segment: rules.Segment, size: int) -> dict[str, Any]:
    return {
        "name": segment.name,
        "description": segment.description,
        "group": segment.group,
        "template": segment.origin or None,
        "definition": _definition(account, segment),
        "size": size,
    }


def _period(p: sizes.Period) -> dict[str, Any]:
    return {"start": isoformat(p.start), "size": p.size, "entered": p.entered, "exited": p.exited}


@blp.route("")
class Segments(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(PageQuery, location="query")
    @blp.response(200, SegmentPageSchema)
    def get(self, query: dict[str, Any], account_id: str) -> dict[str, Any]:
        """Every segment with its definition and its size now."""
        account = auth.account(account_id)
        now_sizes = sizes.sizes(auth.runtime().profile_redis, account_id)
        items = [describe(account, s, now_sizes.get(s.name, 0)) for s in account.ruleset.segments]
        return page(items, query.get("cursor"), query["limit"])


@blp.route("/<string:name>")
class SegmentOne(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(SegmentQuery, location="query")
    @blp.response(200, SegmentDetailSchema)
    def get(self, query: dict[str, Any], account_id: str, name: str) -> dict[str, Any]:
        """Definition, size now, size with entries and exits per hour (14 days) and per day (13 months)."""
        account = auth.account(account_id)
        segment = segment_or_404(account, name)
        conn, now = auth.runtime().profile_redis, clock.now()
        hourly = sizes.hourly(conn, account_id, name, now, query["hours"])
        daily = sizes.daily(conn, account_id, name, now, query["days"])
        out = describe(account, segment, hourly[-1].size if hourly else 0)
        out["size"] = int(sizes.sizes(conn, account_id).get(name, 0))
        out["hourly"] = [_period(p) for p in hourly]
        out["daily"] = [_period(p) for p in daily]
        return out


# A member as a page returns it from a bucket: the connector's profile ids are 16 hex digits, stored
# as the decimal signed 64-bit integer of their bits (connector.buckets.pack_pid).
_STORED_MEMBER = re.compile(r"0|-?[1-9][0-9]{0,18}")
# SSCAN's cursor in the set of the earlier layout: a page passes it on only while it is not 0.
_SCAN_CURSOR = re.compile(r"[1-9][0-9]{0,19}")


def _could_be_given(bucket: object, after: object) -> bool:
    """Whether ``[bucket, after]`` is a position a page could have ended at: in a bucket (0 and up),
    its start ('') or a member as stored; in the set of the earlier layout (-1), SSCAN's cursor."""
    if type(bucket) is not int or not isinstance(after, str):
        return False
    if bucket == -1:
        return _SCAN_CURSOR.fullmatch(after) is not None and int(after) < 2**64
    if after and (_STORED_MEMBER.fullmatch(after) is None or not -(2**63) <= int(after) < 2**63):
        return False
    return sizes.Position(bucket, after).valid()


def _cursor(text: str | None) -> sizes.Position | None:
    """The position an opaque cursor names (``next_cursor`` of a page: base64 of ``[bucket, after]``)."""
    if text is None:
        return None
    try:
        if len(text) > 200:
            raise ValueError(text)
        bucket, after = json.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode())
        if not _could_be_given(bucket, after):
            raise ValueError(text)
    except (ValueError, TypeError, UnicodeDecodeError, binascii.Error):
        errors.fail(422, f"invalid cursor {text[:40]!r}: pass the next_cursor of the previous page")
    return sizes.Position(bucket, after)


def _cursor_text(position: sizes.Position | None) -> str | None:
    if position is None:
        return None
    raw = json.dumps([position.bucket, position.after], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _emails(account_id: str, pids: list[str]) -> dict[str, str | None]:
    conn, now = auth.runtime().profile_redis, clock.now()
    out: dict[str, str | None] = {}
    for pid in pids:
        profile = load_profile(conn, account_id, pid, now)
        emails = list(profile.identities.get("email", ())) if profile else []
        out[pid] = emails[0] if emails else None
    return out


def _member(pid: str, email: str | None) -> dict[str, Any]:
    return {"profile_id": pid, "email": email}


class _Search:
    """The members from a position whose email starts with ``prefix``: at most ``limit``, looking at
    up to ``limit`` times :data:`SCAN_PER_PAGE` members."""

    def __init__(self, account_id: str, name: str, prefix: str, limit: int) -> None:
        self.account_id, self.name, self.prefix, self.limit = account_id, name, prefix, limit
        self.emails: dict[str, str | None] = {}  # read once per request, even when a slice is read again

    def _slice(self, start: sizes.Position | None, count: int) -> tuple[sizes.Position | None, list[str]]:
        after, pids = sizes.members(auth.runtime().profile_redis, self.account_id, self.name, start, count)
        self.emails.update(_emails(self.account_id, [p for p in pids if p not in self.emails]))
        return after, pids

    def _matches(self, pids: list[str], taken: list[str]) -> list[str]:
        """The matches among ``pids``, each once, but those already ``taken``."""
        found = dict.fromkeys(p for p in pids if (self.emails[p] or "").startswith(self.prefix))
        return [p for p in found if p not in taken]

    def page(self, start: sizes.Position | None) -> tuple[sizes.Position | None, list[dict[str, Any]]]:
        """(where the next page starts, None at the end; the matches). A full page ends at its last
        match: a slice holding more matches than the page has room for is read again up to the one
        that fills it, so the next page starts right after it."""
        out: list[str] = []
        position, looked, budget = start, 0, self.limit * SCAN_PER_PAGE
        while len(out) < self.limit and looked < budget:
            want = min(self.limit, budget - looked)
            after, pids = self._slice(position, want)
            found = self._matches(pids, out)
            room = self.limit - len(out)
            if len(found) > room:
                after, pids = self._slice(position, pids.index(found[room - 1]) + 1)
                found = self._matches(pids, out)  # a set of the earlier layout (SSCAN) may give a few more
            out += found
            looked += len(pids)
            position = after
            if after is None or not pids:  # the end, or a stretch of empty buckets: the next page goes on
                break
        return position, [_member(pid, self.emails[pid]) for pid in out]


@blp.route("/<string:name>/members")
class Members(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(MembersQuery, location="query")
    @blp.response(200, MemberPageSchema)
    def get(self, query: dict[str, Any], account_id: str, name: str) -> dict[str, Any]:
        """One page of the segment's members. With ``q``, only those whose email starts with it, at
        most ``limit``, the next page starting after the last one returned: each page looks at a
        bounded slice of the members, so a page may be short or empty while next_cursor is not
        null; follow it until null."""
        segment_or_404(auth.account(account_id), name)
        limit, prefix = query["limit"], (query.get("q") or "").strip().lower()
        start = _cursor(query.get("cursor"))
        if prefix:
            cursor, items = _Search(account_id, name, prefix, limit).page(start)
            return {"items": items, "next_cursor": _cursor_text(cursor)}
        cursor, pids = sizes.members(auth.runtime().profile_redis, account_id, name, start, limit)
        items = [_member(pid, email) for pid, email in _emails(account_id, pids).items()]
        return {"items": items, "next_cursor": _cursor_text(cursor)}


@blp.route("/<string:name>/members/<string:profile_id>")
class Member(MethodView):
    @auth.access(blp, "viewer")
    @blp.response(200, MembershipSchema)
    def get(self, account_id: str, name: str, profile_id: str) -> dict[str, Any]:
        """Is this person in the segment now."""
        segment_or_404(auth.account(account_id), name)
        member = sizes.is_member(auth.runtime().profile_redis, account_id, name, profile_id)
        return {"segment": name, "profile_id": profile_id, "member": member}
