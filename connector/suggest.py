""" "Did you mean" for names a person typed: the closest known name, by :mod:`difflib`."""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from typing import Any

from marshmallow import Schema, fields


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, when one is close enough to be a likely typo."""
    matches = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return matches[0] if matches else None


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """`` (did you mean `x`?)`` or an empty string."""
    match = closest(name, known)
    return f" (did you mean `{match}`?)" if match else ""


def unknown(what: str, name: str, known: Iterable[str]) -> str:
    """``unknown account `demp` (did you mean `demo`?); known: demo, shop``."""
    names = sorted(set(known))
    listed = ", ".join(names) if names else "none"
    return f"unknown {what} `{name}`{did_you_mean(name, names)}; known: {listed}"


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
        match = closest(name, _field_names(holder)) if holder is not None else None
        if match:
            meant.add(path[: len(path) - len(name)] + match)
        hint = f" (did you mean `{match}`?)" if match else ""
        unknown_first.append((path, f"unknown field `{name}`{hint}"))
    # the right spelling of a mistyped key is reported missing: that is the same mistake
    return unknown_first + [(p, r) for p, r in others if p not in meant]
