""" "Did you mean" for names a person typed: the closest known name, by :mod:`difflib`.

The rule compiler's messages use it, and so does everything in ``connector/`` (through
:mod:`connector.suggest`, which adds the helpers for marshmallow schemas).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

# the operators' names as people write them elsewhere (json-logic, SQL, other tools' segment builders)
SYNONYMS = {
    "equals": "eq",
    "equal": "eq",
    "is": "eq",
    "==": "eq",
    "=": "eq",
    "not_equals": "ne",
    "not_equal": "ne",
    "neq": "ne",
    "!=": "ne",
    "greater_than": "gt",
    ">": "gt",
    ">=": "gte",
    "less_than": "lt",
    "<": "lt",
    "<=": "lte",
    "one_of": "in",
    "not_one_of": "not_in",
    "starts": "starts_with",
    "begins_with": "starts_with",
}


def closest(name: str, known: Iterable[str]) -> str | None:
    """The known name closest to ``name``, when one is close enough to be a likely typo (or the
    operator it is another tool's word for: ``equals`` is ``eq``)."""
    names = sorted(set(known))
    synonym = SYNONYMS.get(name.strip().lower())
    if synonym is not None and synonym in names:
        return synonym
    matches = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
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


def unknown_field(name: str, known: Iterable[str]) -> str:
    """``unknown field `x` (did you mean `y`?)``: a key the mapping does not take."""
    return f"unknown field `{name}`{did_you_mean(name, known)}"
