"""``/api/v1/accounts/{id}``: segment analytics (docs/analytics.md), the same figures as
``connector segments report``: a segment's report over a period, the migration matrix of an
exclusive group, the overlap of two segments with its freshness.

Everything is read from the counters :mod:`connector.analytics` keeps as memberships change and as
engagement arrives: a request reads a few hashes (one per day of the period), never the profiles,
so its time does not grow with the number of people.
"""

from __future__ import annotations

import math
from typing import Any

from flask.views import MethodView
from flask_smorest import Blueprint
from marshmallow import Schema, ValidationError, fields, validate

from connector import clock
from connector.analytics import movement, overlap, period
from connector.analytics.report import segment_report
from connector.ops.api import auth, errors
from connector.ops.api.schemas import PeriodSchema, Query
from connector.ops.api.segments import segment_or_404

blp = Blueprint(
    "api_analytics",
    __name__,
    url_prefix="/api/v1/accounts/<string:account_id>",
    description="Segment analytics",
)
errors.install(blp)


def _days(value: str) -> None:
    try:
        period.days(value)
    except ValueError as err:
        raise ValidationError(str(err)) from err


SINCE = fields.String(
    load_default="30d",
    validate=_days,  # one reason, naming the range and the value
    metadata={"description": "the period: days from 1d to 396d (like 30d)"},
)


class SinceQuery(Query):
    since = SINCE


class OverlapQuery(Query):
    a = fields.String(required=True, validate=validate.Length(min=1, max=200))
    b = fields.String(required=True, validate=validate.Length(min=1, max=200))


def _rate(description: str = "") -> fields.Float:
    meta = {"description": description} if description else {}
    return fields.Float(required=True, allow_none=True, metadata=meta)


class PerformanceSchema(Schema):
    members = fields.Integer(required=True, metadata={"description": "people who entered in the period"})
    deliveries = fields.Integer(required=True)
    open_rate = _rate("opens per delivery; null without deliveries")
    click_rate = _rate()
    unsubscribe_rate = _rate()
    conversions = fields.Integer(required=True)
    conversion_rate = _rate("conversions per member")
    revenue = fields.Float(required=True)
    revenue_per_member = _rate()


class IntervalSchema(Schema):
    estimate = fields.Float(required=True)
    low = fields.Float(required=True, allow_none=True, metadata={"description": "null: unbounded"})
    high = fields.Float(required=True, allow_none=True, metadata={"description": "null: unbounded"})


class ComparisonSchema(Schema):
    conversion_difference = fields.Nested(
        IntervalSchema, required=True, metadata={"description": "Newcombe's hybrid score, 95 %"}
    )
    conversion_difference_wald = fields.Nested(IntervalSchema, required=True)
    conversion_lift = _rate("relative to the baseline; null when the baseline is 0")
    revenue_per_member_difference = fields.Nested(
        IntervalSchema, required=True, metadata={"description": "Welch, 95 %"}
    )
    revenue_per_member_lift = _rate()
    warning = fields.String(
        required=True, allow_none=True, metadata={"description": "set while the samples are too small"}
    )


class ReportSchema(PerformanceSchema):
    account = fields.String(required=True)
    segment = fields.String(required=True)
    days = fields.Integer(required=True)
    size = fields.Integer(required=True, metadata={"description": "now"})
    entered = fields.Integer(required=True)
    exited = fields.Integer(required=True)
    daily = fields.List(fields.Nested(PeriodSchema), required=True)
    arms = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(PerformanceSchema),
        required=True,
        metadata={"description": "t treated, c control, a, b ... variants"},
    )
    baseline = fields.String(
        required=True, allow_none=True, metadata={"description": "the control, or the first variant"}
    )
    comparisons = fields.Dict(
        keys=fields.String(),
        values=fields.Nested(ComparisonSchema),
        required=True,
        metadata={"description": "each other arm against the baseline"},
    )
    not_compared = fields.Dict(
        keys=fields.String(),
        values=fields.String(),
        metadata={
            "description": "arms counted but not compared, and why (t: entries made while the segment "
            "had no variants, beside variant arms)"
        },
    )


class MoveSchema(Schema):
    from_ = fields.String(required=True, data_key="from", metadata={"description": "- : outside the group"})
    to = fields.String(required=True, metadata={"description": "- : outside the group"})
    count = fields.Integer(required=True)


class MigrationSchema(Schema):
    group = fields.String(required=True)
    days = fields.Integer(required=True)
    segments = fields.List(fields.String(), required=True, metadata={"description": "in the group's order"})
    moves = fields.List(fields.Nested(MoveSchema), required=True)


class OverlapSchema(Schema):
    a = fields.String(required=True)
    b = fields.String(required=True)
    both = fields.Integer(required=True, metadata={"description": "people in both"})
    computed_at = fields.String(
        required=True, allow_none=True, metadata={"description": "null until the overlap job ran"}
    )
    age_seconds = fields.Integer(required=True, allow_none=True, metadata={"description": "freshness"})


def finite(value: Any) -> Any:
    """JSON has no infinity: an unbounded interval end is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [finite(v) for v in value]
    return value


@blp.route("/segments/<string:name>/report")
class SegmentReport(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(SinceQuery, location="query")
    @blp.response(200, ReportSchema)
    def get(self, query: dict[str, Any], account_id: str, name: str) -> dict[str, Any]:
        """Size, entries and exits per day, engagement and conversion of the people who entered in the
        period, per arm, and each arm against the control (or the first variant)."""
        segment_or_404(auth.account(account_id), name)
        found = segment_report(
            auth.runtime().profile_redis, account_id, name, clock.now(), period.days(query["since"])
        )
        return finite({"baseline": None, "comparisons": {}, **found})


@blp.route("/groups/<string:group>/migration")
class GroupMigration(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(SinceQuery, location="query")
    @blp.response(200, MigrationSchema)
    def get(self, query: dict[str, Any], account_id: str, group: str) -> dict[str, Any]:
        """Moves between the members of an exclusive group over the period (``-``: entering or
        leaving the group)."""
        account = auth.account(account_id)
        members = account.ruleset.groups.get(group)
        if members is None:
            errors.fail(404, f"no exclusive group {group!r} in account {account_id!r}")
        days = period.days(query["since"])
        found = movement.migration(auth.runtime().profile_redis, account_id, group, clock.now(), days)
        moves = [{"from_": frm, "to": to, "count": n} for (frm, to), n in sorted(found.items())]
        return {"group": group, "days": days, "segments": list(members), "moves": moves}


@blp.route("/overlap")
class Overlap(MethodView):
    @auth.access(blp, "viewer")
    @blp.arguments(OverlapQuery, location="query")
    @blp.response(200, OverlapSchema)
    def get(self, query: dict[str, Any], account_id: str) -> dict[str, Any]:
        """People in both segments, as the overlap job last counted them (``computed_at``)."""
        known = auth.account(account_id).ruleset.by_name
        for param in ("a", "b"):
            if query[param] not in known:
                problem = f"no segment {query[param]!r} in account {account_id!r}"
                errors.fail(422, f"invalid query.{param}: {problem}", errors={"query": {param: [problem]}})
        found = overlap.read(auth.runtime().profile_redis, account_id, query["a"], query["b"])
        now = clock.now()
        age = int((now - found.computed_at).total_seconds()) if found.computed_at else None
        return {**found.to_dict(), "age_seconds": age}
