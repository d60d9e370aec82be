"""The event record rules read: a value, compared by its fields, never changed once made."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rules.model import EventRecord

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_an_event_record_equals_another_with_the_same_fields_only() -> None:
    record = EventRecord("order_completed", AT, {"total": 12}, "ab12")
    assert record == EventRecord(
        name="order_completed", occurred_at=AT, properties={"total": 12}, event_id="ab12"
    )
    assert record != EventRecord("order_completed", AT, {"total": 13}, "ab12")
    assert record != EventRecord("order_completed", AT, {"total": 12}, "ab13")
    assert record != ("order_completed", AT, {"total": 12}, "ab12")


def test_an_event_record_defaults_to_no_properties_and_no_id_and_says_what_it_holds() -> None:
    record = EventRecord("page", AT)
    assert record.properties == {} and record.event_id == ""
    assert repr(record) == f"EventRecord(name='page', occurred_at={AT!r}, properties={{}}, event_id='')"
    assert EventRecord("page", AT).properties is not record.properties  # not one shared dict


def test_an_event_record_is_not_hashable_as_its_properties_are_a_dict() -> None:
    with pytest.raises(TypeError):
        hash(EventRecord("page", AT))
