"""The account's ``analytics:`` section (docs/analytics.md)::

    analytics:
      conversion_days: 7        # an order within this many days of entering a segment converts

Validated at load (:func:`check`, a ConfigError naming the file and path).
"""

from __future__ import annotations

from typing import Any

from marshmallow import RAISE, Schema, ValidationError, fields, validate

from connector.errors import ConfigError
from connector.suggest import unknown_field

DEFAULT_CONVERSION_DAYS = 7


class AnalyticsSchema(Schema):
    class Meta:
        unknown = RAISE

    conversion_days = fields.Integer(
        load_default=DEFAULT_CONVERSION_DAYS, validate=validate.Range(min=1, max=90)
    )


def load(raw: Any, file: str = "") -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError("must be a mapping", file=file, path="analytics")
    try:
        return dict(AnalyticsSchema().load(raw))
    except ValidationError as err:
        messages = err.normalized_messages()
        field = sorted(messages)[0] if isinstance(messages, dict) and messages else ""
        reason = messages.get(field, ["invalid"]) if isinstance(messages, dict) else ["invalid"]
        text = reason[0] if isinstance(reason, list) and reason else str(reason)
        if field and field not in AnalyticsSchema().fields:  # a mistyped key
            text = unknown_field(field, AnalyticsSchema().fields)
        raise ConfigError(str(text), file=file, path=f"analytics.{field}" if field else "analytics") from err


def conversion_days(account: Any) -> int:
    return int(load(getattr(account, "analytics", None), getattr(account, "file", ""))["conversion_days"])
