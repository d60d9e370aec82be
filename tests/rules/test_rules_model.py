"""The records rules read and return: values, compared and shown by their fields."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from rules.model import Evaluation, EventRecord, Profile

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


def test_a_profile_copy_with_other_traits_or_events_keeps_the_rest_and_indexes_its_own_events() -> None:
    viewed, ordered = EventRecord("viewed", AT), EventRecord("ordered", AT, {"total": 3})
    profile = Profile("acme", "p1", {"email": ("a@shop.test",)}, {"plan": "pro"}, (viewed, ordered), 7)
    assert profile.events_named("ordered") == [ordered]
    fewer = profile.replace(events=(viewed,))
    assert fewer.events_named("ordered") == [] and fewer.events_named("viewed") == [viewed]
    assert (fewer.account, fewer.profile_id, fewer.identities, fewer.traits, fewer.revision) == (
        "acme",
        "p1",
        {"email": ("a@shop.test",)},
        {"plan": "pro"},
        7,
    )
    richer = profile.replace(traits={"plan": "max"})
    assert richer.traits == {"plan": "max"} and richer.events == profile.events
    assert richer != profile and profile.replace() == profile
    assert Profile("acme", "p1").identities == {} and Profile("acme", "p1").traits == {}


def test_evaluations_are_equal_when_every_field_is() -> None:
    one = Evaluation(frozenset({"vip"}), {"score": 3}, AT)
    assert one == Evaluation(segments=frozenset({"vip"}), traits={"score": 3}, next_due=AT, explanations={})
    assert one != Evaluation(frozenset({"vip"}), {"score": 3}, None)
    assert one != Evaluation(frozenset(), {"score": 3}, AT)
    assert "next_due=" in repr(one) and one.explanations == {}
