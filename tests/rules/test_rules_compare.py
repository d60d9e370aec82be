"""The comparison semantics conditions rely on: three-valued results across kinds of values."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from rules.conditions import Compare
from rules.values import Aggregate, Missing, ProfileTrait, Selector, Window, compare

NOW = datetime(2024, 6, 1, tzinfo=UTC)
DAY = timedelta(days=1)


@pytest.mark.parametrize(
    ("op", "actual", "arg", "expected"),
    [
        ("eq", 1, "1.0", True),
        ("eq", "1.0", 1, True),  # a number sent as text compares as the number, both ways
        ("eq", "1.0", "1", False),  # a text is equal only to the same text
        ("ne", "42", 42, False),
        ("in", "2", [1, 2], True),
        ("eq", "a", "a", True),
        ("ne", 2, 1, True),
        ("ne", 1, 1.0, False),
        ("in", 2, [1, "2"], True),
        ("in", 3, [1, 2], False),
        ("not_in", 3, [1, 2], True),
        ("not_in", 2, [1, 2.0], False),
        ("contains", "shoes and hats", "hats", True),
        ("contains", "shoes", 1, False),
        ("contains", ["a", 2], 2.0, True),
        ("contains", ("a",), "b", False),
        ("contains", 12, 1, None),
        ("starts_with", "premium-gold", "premium", True),
        ("starts_with", "gold", "premium", False),
        ("starts_with", 12, "1", None),
        ("between", 5, [1, 10], True),
        ("between", 11, [1, 10], False),
        ("between", "x", [1, 10], None),
        ("between", NOW, ["2024-01-01T00:00:00Z", "2024-12-31T00:00:00Z"], True),
        ("gt", 2, 1, True),
        ("gt", "10", 9, True),
        ("gt", "b", "a", True),
        ("gt", "abc", 1, None),
        ("gte", 1, 1, True),
        ("lt", NOW, "2024-07-01T00:00:00+00:00", True),
        ("lt", 2, 1, False),
        ("lte", 1.0, 1, True),
        ("lte", None, 1, None),
    ],
)
def test_compare(op: str, actual: Any, arg: Any, expected: bool | None) -> None:
    assert compare(op, actual, arg) is expected


def test_compare_refuses_an_unknown_operator() -> None:
    with pytest.raises(KeyError):
        compare("resembles", 1, 1)


def _truth(ops: list[tuple[str, Any]], value: Any) -> bool | None:
    return Compare(ProfileTrait("x"), ops).truth(value, NOW)


@pytest.mark.parametrize(
    ("ops", "value", "expected"),
    [
        # numbers, through the fast path and not
        ([("gte", 3)], 3, True),
        ([("gte", 3), ("lt", 5)], 5, False),
        ([("between", [1, 3])], 2.5, True),
        ([("gt", 1)], float("nan"), None),
        ([("gt", 1)], "abc", None),
        ([("gt", 1), ("eq", "xyz")], "abc", False),  # one false comparison decides over an unknown one
        # missing values: unknown, unless the absence is a fact
        ([("gt", 1)], Missing("no trait"), None),
        ([("gt", 1)], Missing("never", definite=True), False),
        ([("exists", True)], Missing("no trait"), False),
        ([("exists", False)], Missing("no trait"), True),
        ([("exists", False)], 3, False),
        ([("exists", True), ("gt", 1)], 3, True),
        ([("exists", True), ("gt", 5)], 3, False),
        # an object (Segment's `address` trait) is one value: not a number, equal only to itself
        ([("gt", 3)], {"shoes": 5, "hats": 1}, None),
        ([("eq", 5)], {"shoes": 5}, False),
        ([("exists", True)], {}, True),
        # instants against ages
        ([("older_than", DAY)], NOW - 2 * DAY, True),
        ([("older_than", DAY)], NOW - DAY / 2, False),
        ([("within", DAY)], (NOW - DAY / 2).isoformat(), True),
        ([("within", DAY)], NOW - 2 * DAY, False),
        ([("within", DAY), ("older_than", DAY / 4)], NOW - DAY / 2, True),
        ([("within", DAY)], "not a date", None),
        ([("within", DAY), ("gt", 1)], NOW - DAY / 2, None),  # an instant against a number: unknown
        ([("within", DAY), ("gt", 1)], NOW - 2 * DAY, False),
        ([("older_than", DAY), ("exists", True)], Missing("never", definite=True), False),
    ],
)
def test_condition_truth(ops: list[tuple[str, Any]], value: Any, expected: bool | None) -> None:
    assert _truth(ops, value) is expected


@pytest.mark.parametrize(
    ("ops", "value", "expected"),
    [
        ([("gt", 3)], {"shoes": 5, "hats": 1}, True),
        ([("gt", 3)], {"shoes": 1, "hats": Missing("no price")}, None),
        ([("gt", 3)], {"shoes": 1, "hats": 2}, False),
        ([("gt", 3)], {}, False),
    ],
)
def test_per_group_values_hold_when_some_group_does(
    ops: list[tuple[str, Any]], value: Any, expected: bool | None
) -> None:
    per_category = Aggregate("sum", Selector("order_completed", None), Window(), "revenue", "category")
    assert Compare(per_category, ops).truth(value, NOW) is expected
