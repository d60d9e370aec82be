"""Request and response shapes of the admin API (marshmallow; the OpenAPI document is built from
them). Every response is declared, so the document is the contract."""

from __future__ import annotations

import re
from typing import Any

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from connector.ops import tokens

MAX_PAGE = 500
INTEGER_TEXT = re.compile(r"-?[0-9]+")


class ErrorSchema(Schema):
    error = fields.String(required=True, metadata={"description": "machine-readable kind"})
    message = fields.String(required=True, metadata={"description": "what is wrong"})
    errors = fields.Dict(metadata={"description": "per location and field, for invalid input"})


class Query(Schema):
    class Meta:
        unknown = EXCLUDE


def body_integer(**kwargs: Any) -> fields.Integer:
    """An integer of a JSON body: a JSON integer only (``1.5``, ``"1"`` or ``true`` is refused, not
    read as 1)."""
    return fields.Integer(strict=True, **kwargs)


class QueryInteger(fields.Integer):
    """An integer of a query string: ASCII digits, after a minus sign for a negative one. Nothing
    else is read as one (``int()`` would also read `` 5``, ``+5``, ``1_0`` or another script's
    digits (U+0665 ARABIC-INDIC DIGIT FIVE) as a number)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, str) and INTEGER_TEXT.fullmatch(value):
            try:
                value = int(value)
            except ValueError:  # more digits than Python reads
                raise self.make_error("invalid", input=value) from None
        return super()._deserialize(value, attr, data, **kwargs)


def cursor(pattern: str, example: str) -> fields.String:
    return fields.String(
        validate=validate.Regexp(pattern, error="not a cursor: pass the next_cursor of the previous page"),
        metadata={"description": f"the next_cursor of the previous page (like {example})"},
    )


class PageQuery(Query):
    cursor = cursor(r"^[0-9]{1,9}$", "50")
    limit = QueryInteger(load_default=50, validate=validate.Range(min=1, max=MAX_PAGE))


def _page(item: type[Schema] | Schema, name: str) -> type[Schema]:
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item), required=True),
            "next_cursor": fields.String(
                required=True, allow_none=True, metadata={"description": "null on the last page"}
            ),
        },
        name=name,
    )


# accounts


class AccountSummarySchema(Schema):
    id = fields.String(required=True)
    senders = fields.List(fields.String(), required=True)
    destinations = fields.List(fields.String(), required=True)
    segments = fields.List(fields.String(), required=True)


AccountPageSchema = _page(AccountSummarySchema, "AccountPage")


class SenderSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True)
    options = fields.Dict(required=True, metadata={"description": "without secrets or their variables"})
    refusals = fields.Dict(
        keys=fields.String(),
        values=fields.Integer(),
        required=True,
        allow_none=True,
        metadata={
            "description": "refused requests by HTTP status for this sender type, counted across every "
            "account (the ingest side does not attribute refusals): shown to tokens of every account only"
        },
    )


class PauseSchema(Schema):
    reason = fields.String(required=True, allow_none=True)
    status = fields.Integer(required=True, allow_none=True)
    at = fields.String(required=True, allow_none=True)


class DestinationHealthSchema(Schema):
    paused = fields.Boolean(required=True)
    pause = fields.Nested(PauseSchema, required=True, allow_none=True)
    pending = fields.Integer(required=True, metadata={"description": "changes waiting to be sent"})
    dead_letters = fields.Integer(required=True)


class MappingSchema(Schema):
    tags = fields.List(fields.String(), required=True)
    lists = fields.List(fields.String(), required=True)


class DestinationSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True)
    enabled = fields.Boolean(required=True)
    segments = fields.Dict(keys=fields.String(), values=fields.Nested(MappingSchema), required=True)
    fields_ = fields.Dict(keys=fields.String(), values=fields.String(), required=True, data_key="fields")
    health = fields.Nested(DestinationHealthSchema, required=True)


class CountersSchema(Schema):
    ingest = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    worker = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    sync = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)


class FileErrorSchema(Schema):
    file = fields.String(required=True)
    path = fields.String(required=True, allow_none=True)
    reason = fields.String(required=True)


class AccountSchema(Schema):
    id = fields.String(required=True)
    senders = fields.List(fields.Nested(SenderSchema), required=True)
    destinations = fields.List(fields.Nested(DestinationSchema), required=True)
    segments = fields.List(fields.String(), required=True)
    traits = fields.List(fields.String(), required=True)
    counters = fields.Nested(CountersSchema, required=True)
    file_error = fields.Nested(
        FileErrorSchema,
        required=True,
        allow_none=True,
        metadata={"description": "why the account file on disk is refused; its last valid version serves"},
    )


# segments


class SegmentSchema(Schema):
    name = fields.String(required=True)
    description = fields.String(required=True)
    group = fields.String(required=True, allow_none=True)
    template = fields.String(required=True, allow_none=True)
    definition = fields.Raw(required=True, metadata={"description": "the rule as written"})
    size = fields.Integer(required=True)


SegmentPageSchema = _page(SegmentSchema, "SegmentPage")


class PeriodSchema(Schema):
    start = fields.String(required=True)
    size = fields.Integer(required=True, metadata={"description": "at the end of the period"})
    entered = fields.Integer(required=True)
    exited = fields.Integer(required=True)


class SegmentDetailSchema(SegmentSchema):
    hourly = fields.List(fields.Nested(PeriodSchema), required=True)
    daily = fields.List(fields.Nested(PeriodSchema), required=True)


class SegmentQuery(Query):
    hours = QueryInteger(load_default=24, validate=validate.Range(min=1, max=336))
    days = QueryInteger(load_default=30, validate=validate.Range(min=1, max=396))


class MembersQuery(PageQuery):
    cursor = cursor(r"^[A-Za-z0-9_-]{1,200}$", "WzAsIiJd")
    q = fields.String(
        validate=validate.Length(min=1, max=254), metadata={"description": "email prefix (case-insensitive)"}
    )


class MemberSchema(Schema):
    profile_id = fields.String(required=True)
    email = fields.String(required=True, allow_none=True)


MemberPageSchema = _page(MemberSchema, "MemberPage")


class MembershipSchema(Schema):
    segment = fields.String(required=True)
    profile_id = fields.String(required=True)
    member = fields.Boolean(required=True)


# people


class PeopleQuery(Query):
    email = fields.String(validate=validate.Length(min=1, max=320))
    user_id = fields.String(validate=validate.Length(min=1, max=320))
    anonymous_id = fields.String(validate=validate.Length(min=1, max=320))


class PersonRefSchema(Schema):
    profile_id = fields.String(required=True)


class PersonSchema(Schema):
    profile_id = fields.String(required=True)
    identities = fields.Dict(keys=fields.String(), values=fields.List(fields.String()), required=True)
    traits = fields.Dict(required=True)
    segments = fields.List(fields.String(), required=True, metadata={"description": "current memberships"})
    computed_traits = fields.Dict(required=True)
    version = fields.Integer(required=True, allow_none=True, metadata={"description": "ledger version"})
    event_count = fields.Integer(required=True)


class TimelineQuery(Query):
    limit = QueryInteger(load_default=100, validate=validate.Range(min=1, max=MAX_PAGE))


class EventSchema(Schema):
    name = fields.String(required=True)
    at = fields.String(required=True)
    properties = fields.Dict(required=True)


class TransitionSchema(Schema):
    version = fields.Integer(required=True)
    at = fields.String(required=True)
    entered = fields.List(fields.String(), required=True)
    exited = fields.List(fields.String(), required=True)
    traits = fields.Dict(required=True)


class EspStateSchema(Schema):
    destination = fields.String(required=True)
    type = fields.String(required=True)
    paused = fields.Boolean(required=True)
    pending = fields.Boolean(required=True, metadata={"description": "a change waits to be sent"})
    applied_version = fields.Integer(required=True, allow_none=True)
    owned = fields.Dict(
        required=True, allow_none=True, metadata={"description": "what the connector set there"}
    )


class TimelineSchema(Schema):
    profile_id = fields.String(required=True)
    events = fields.List(fields.Nested(EventSchema), required=True)
    transitions = fields.List(fields.Nested(TransitionSchema), required=True)
    destinations = fields.List(fields.Nested(EspStateSchema), required=True)


class ExplanationSchema(Schema):
    member = fields.Boolean(required=True)
    reasons = fields.List(fields.String(), required=True)
    next_change = fields.String(required=True, allow_none=True)
    detail = fields.Dict(required=True)


class ExplainSchema(Schema):
    profile_id = fields.String(required=True)
    now = fields.String(required=True)
    next_due = fields.String(required=True, allow_none=True)
    traits = fields.Dict(required=True)
    segments = fields.Dict(keys=fields.String(), values=fields.Nested(ExplanationSchema), required=True)
    text = fields.String(required=True, metadata={"description": "the same, readable"})


class ExportSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    profile_id = fields.String(required=True)
    document = fields.Dict(required=True, metadata={"description": "everything stored about the person"})


class EraseSchema(Schema):
    confirm = fields.String(required=True, metadata={"description": "the profile id, again"})


class ErasedSchema(Schema):
    profile_id = fields.String(required=True)
    erased = fields.Boolean(required=True)
    at = fields.String(required=True)


# dead letters


class DeadLetterQuery(PageQuery):
    cursor = cursor(r"^[0-9]{1,4}[.][0-9]{1,9}$", "0.50")
    kind = fields.String(
        validate=validate.Length(min=1, max=200), metadata={"description": "sync, sync:<dest>"}
    )
    filter = fields.String(
        validate=validate.Length(min=1, max=200), metadata={"description": "text in the item"}
    )


class DeadLetterSchema(Schema):
    id = fields.String(required=True)
    kind = fields.String(required=True)
    reason = fields.String(required=True)
    at = fields.String(required=True)
    account = fields.String(required=True, allow_none=True)


DeadLetterPageSchema = _page(DeadLetterSchema, "DeadLetterPage")


class DeadLetterDetailSchema(DeadLetterSchema):
    payload = fields.Raw(required=True, allow_none=True)


class JsonBoolean(fields.Boolean):
    """JSON ``true`` or ``false`` only: ``1``, ``1.0`` and ``"true"`` are refused (``1 == True`` in
    Python, so a set of truthy values would take them)."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> bool:
        if not isinstance(value, bool):
            raise self.make_error("invalid")
        return value


class DeadLetterSelectSchema(Schema):
    kind = fields.String(validate=validate.Length(min=1, max=200))
    filter = fields.String(validate=validate.Length(min=1, max=200))
    ids = fields.List(
        fields.String(validate=validate.Length(min=1, max=64)), validate=validate.Length(max=1000)
    )
    all = JsonBoolean(
        metadata={
            "description": "every dead letter of the account matching kind and filter (both optional), "
            "not only a page: acted on in batches, each answer's next_cursor going on"
        },
    )
    until = fields.Float(
        allow_nan=False,
        metadata={
            "description": "with all: only dead letters stored up to this instant (GET .../count's until)"
        },
    )
    cursor = fields.String(
        validate=validate.Length(min=1, max=600),
        metadata={"description": "with all: the next_cursor of the previous answer"},
    )


class DeadLetterOutcomeSchema(Schema):
    matched = fields.Integer(required=True)
    outcomes = fields.Dict(keys=fields.String(), values=fields.Integer(), required=True)
    next_cursor = fields.String(
        allow_none=True,
        metadata={"description": "with all: where to go on (send the same body with it), null once done"},
    )


class DeadLetterCountQuery(Query):
    kind = fields.String(
        validate=validate.Length(min=1, max=200), metadata={"description": "sync, sync:<dest>"}
    )
    filter = fields.String(
        validate=validate.Length(min=1, max=200), metadata={"description": "text in the item"}
    )


class DeadLetterCountSchema(Schema):
    matching = fields.Integer(required=True, metadata={"description": "dead letters matching"})
    complete = fields.Boolean(
        required=True, metadata={"description": "false when counting stopped (matching is a lower bound)"}
    )
    until = fields.Float(
        required=True,
        allow_none=True,
        metadata={
            "description": "when the newest dead letter of the kinds counted was stored (epoch seconds; "
            "null: none): pass it to replay or discard with all, so none stored later is acted on"
        },
    )


# tokens and audit


class TokenSchema(Schema):
    id = fields.String(required=True)
    role = fields.String(required=True)
    accounts = fields.List(fields.String(), required=True)
    created_at = fields.String(required=True)
    expires_at = fields.String(required=True)
    note = fields.String(required=True)


TokenPageSchema = _page(TokenSchema, "TokenPage")


def _expiry(text: str) -> None:
    """A duration (90d, 12h, 2w) of at most ten years, checked as the CLI checks it."""
    try:
        tokens.parse_expiry(text)
    except tokens.TokenError as err:
        raise ValidationError(str(err)) from None


class TokenCreateSchema(Schema):
    accounts = fields.List(fields.String(validate=validate.Length(min=1, max=64)), required=True)
    role = fields.String(required=True, validate=validate.OneOf(tokens.ROLES))
    # not given: 90d, or what is left of the creating token's life when that is shorter
    expires = fields.String(load_default=None, validate=_expiry)
    note = fields.String(load_default="", validate=validate.Length(max=200))


class TokenCreatedSchema(Schema):
    token = fields.Nested(TokenSchema, required=True)
    secret = fields.String(required=True, metadata={"description": "shown once: keep it now"})


class AuditEntrySchema(Schema):
    id = fields.String(required=True)
    at = fields.String(required=True)
    token = fields.String(required=True)
    action = fields.String(required=True)
    target = fields.String(required=True)
    accounts = fields.List(fields.String(), required=True)
    before = fields.Raw(required=True, allow_none=True)
    after = fields.Raw(required=True, allow_none=True)


class AuditQuery(PageQuery):
    cursor = cursor(r"^[0-9]{1,15}-[0-9]{1,10}$", "1709294400000-0")


AuditPageSchema = _page(AuditEntrySchema, "AuditPage")
