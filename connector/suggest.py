""" "Did you mean" for names a person typed: the closest known name (:mod:`rules.suggest`, which
the rule compiler shares), and the same for the problems marshmallow reports."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from marshmallow import Schema, ValidationError, fields

from rules.suggest import closest, did_you_mean, unknown, unknown_field

__all__ = [
    "UNKNOWN_FIELD",
    "NamedDict",
    "closest",
    "did_you_mean",
    "schema_problems",
    "unknown",
    "unknown_field",
]


UNKNOWN_FIELD = ("unknown field", "unknown field.")


def _field_names(schema: Schema) -> list[str]:
    return [f.data_key or name for name, f in schema.fields.items()]


def _nested_schema(field: fields.Field[Any]) -> tuple[Schema | None, bool]:
    """The schema a field holds, and whether a mapping key comes before it in a path."""
    if isinstance(field, fields.Nested) and isinstance(field.schema, Schema):
        return field.schema, False
    if isinstance(field, fields.Dict) and isinstance(field.value_field, fields.Nested):
        return _nested_schema(field.value_field)[0], True
    if isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
        return _nested_schema(field.inner)[0], False
    return None, False


def _schema_at(schema: Schema, parts: list[str]) -> Schema | None:
    """The schema that holds the last element of ``parts`` (a path below ``schema``)."""
    current: Schema | None = schema
    index = 0
    while current is not None and index < len(parts) - 1:
        by_key = {f.data_key or name: f for name, f in current.fields.items()}
        field = by_key.get(parts[index])
        if field is None:
            return None
        current, keyed = _nested_schema(field)
        index += 2 if keyed else 1
    return current if index == len(parts) - 1 else None


def schema_problems(schema: Schema, problems: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Marshmallow's problems (path, reason) with unknown fields first, each as ``unknown field
    `x` (did you mean `y`?)``: a typo in a key otherwise shows as its right spelling missing."""
    unknown_first: list[tuple[str, str]] = []
    others: list[tuple[str, str]] = []
    meant: set[str] = set()
    for path, reason in problems:
        if reason.strip().lower() not in UNKNOWN_FIELD:
            others.append((path, reason))
            continue
        parts = [p for p in re.split(r"\.|\[\d+\]", path) if p]
        holder = _schema_at(schema, parts) if parts else None
        name = parts[-1] if parts else path
        known = _field_names(holder) if holder is not None else []
        match = closest(name, known)
        if match:
            meant.add(path[: len(path) - len(name)] + match)
        unknown_first.append((path, unknown_field(name, known)))
    # the right spelling of a mistyped key is reported missing: that is the same mistake
    return unknown_first + [(p, r) for p, r in others if p not in meant]


class NamedDict(fields.Dict):
    """A mapping whose keys are names from a known list (``senders: {segment: ...}``): an unknown
    key is refused at its own path, ``unknown <what> `x` (did you mean `y`?); known: ...``, rather
    than as marshmallow's ``x.key: Must be one of ...``."""

    def __init__(self, what: str, known: Iterable[str], **kwargs: Any) -> None:
        super().__init__(keys=fields.String(), **kwargs)
        self.what = what
        self.known = tuple(known)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> Any:
        if isinstance(value, Mapping):
            wrong = {str(k): [unknown(self.what, str(k), self.known)] for k in value if k not in self.known}
            if wrong:
                raise ValidationError(wrong)
        return super()._deserialize(value, attr, data, **kwargs)
