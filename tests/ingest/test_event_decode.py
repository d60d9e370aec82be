"""The worker's fast decoder accepts only what EventSchema accepts, and decodes it identically."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import ValidationError

from connector.errors import UndecodableItem
from connector.event import EVENT_TYPES, Event, EventSchema, _fast, load_event

scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=5))
times = st.one_of(
    st.datetimes(min_value=datetime(1970, 1, 2), max_value=datetime(2199, 1, 1), timezones=st.just(UTC)).map(
        lambda d: d.isoformat()
    ),
    st.sampled_from(["2024-01-01T00:00:00Z", "2024-01-01 00:00:00", "2024-13-01T00:00:00Z", "", "yesterday"]),
    scalars,
)
field_values: dict[str, Any] = {
    "account": st.one_of(st.text(min_size=0, max_size=3), st.just("a" * 101), scalars),
    "source": st.one_of(st.sampled_from(["segment", "shopify"]), scalars),
    "source_event_id": st.one_of(st.text(min_size=0, max_size=4), scalars),
    "type": st.one_of(st.sampled_from([*EVENT_TYPES, "TRACK", "bogus"]), scalars),
    "name": st.one_of(st.text(min_size=0, max_size=4), scalars),
    "original_name": st.one_of(st.none(), st.text(max_size=3), st.integers()),
    "occurred_at": times,
    "received_at": times,
    "identities": st.one_of(
        st.dictionaries(st.text(max_size=3), st.one_of(st.text(max_size=3), scalars)), scalars
    ),
    "properties": st.one_of(st.dictionaries(st.text(max_size=3), scalars), scalars),
    "traits": st.one_of(st.dictionaries(st.text(max_size=3), scalars), scalars),
}


valid_values: dict[str, Any] = {
    "account": st.just("acme"),
    "source": st.just("segment"),
    "source_event_id": st.text(min_size=1, max_size=8),
    "type": st.sampled_from(EVENT_TYPES),
    "name": st.just("add_to_cart"),
    "original_name": st.none(),
    "occurred_at": st.just("2024-01-01T00:00:00Z"),
    "received_at": st.just("2024-01-01T00:00:01+00:00"),
    "identities": st.just({"email": "a@example.com"}),
    "properties": st.just({"sku": "x"}),
    "traits": st.just({}),
}
# mostly valid fields, each sometimes replaced by an arbitrary value
mixed = {
    key: st.one_of(valid_values[key], valid_values[key], strategy) for key, strategy in field_values.items()
}


@settings(max_examples=500, deadline=None)
@given(st.fixed_dictionaries({}, optional=mixed))
def test_fast_path_agrees_with_the_schema(data: dict[str, Any]) -> None:
    fast = _fast(data)
    if fast is None:
        return
    assert EventSchema().load(data) == fast


@settings(max_examples=50, deadline=None)
@given(st.fixed_dictionaries(valid_values))
def test_valid_items_take_the_fast_path(data: dict[str, Any]) -> None:
    fast = _fast(data)
    assert fast is not None
    assert EventSchema().load(data) == fast


def test_a_bad_item_still_gets_the_schema_reason() -> None:
    with pytest.raises(UndecodableItem, match="occurred_at"):
        load_event({"account": "a", "source": "s", "source_event_id": "1", "type": "track", "name": "x",
                    "occurred_at": "not a time", "received_at": "2024-01-01T00:00:00Z"})  # fmt: skip


def test_round_trip() -> None:
    at = datetime(2024, 1, 1, tzinfo=UTC)
    event = Event(
        "acme", "segment", "m1", "track", "add_to_cart", at, at, {"email": "a@example.com"}, {"sku": "x"}
    )
    assert load_event(event.to_json()) == event
    with pytest.raises(ValidationError):
        EventSchema().load({"type": "track"})
