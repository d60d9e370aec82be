"""The ledger's per-profile records are values: equal by their fields, shown with them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from connector.worker.ledger_codec import Diff, Entry, Stored

AT = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)


def test_ledger_records_are_equal_when_their_fields_are_and_show_them() -> None:
    entry = Entry("p1", frozenset({"vip"}), {"ltv": 12.5}, 3, "c0ffee", False, AT, "rules1")
    assert entry == Entry("p1", frozenset({"vip"}), {"ltv": 12.5}, 3, "c0ffee", False, AT, "rules1")
    assert entry != Entry("p1", frozenset({"vip"}), {"ltv": 12.5}, 4, "c0ffee", False, AT, "rules1")
    assert "profile_id='p1'" in repr(entry) and "revision=3" in repr(entry)
    assert Stored() == Stored(None, None, None, "", None, frozenset(), True)
    assert Stored(b"a", coded=False) != Stored(b"a")
    diff = Diff(2, frozenset({"vip"}), {}, entered=frozenset({"vip"}))
    assert diff == Diff(2, frozenset({"vip"}), {}, frozenset({"vip"}), frozenset(), {}, 0)
    assert diff.changed_traits == {} and "entered=frozenset({'vip'})" in repr(diff)
    with pytest.raises(TypeError):
        hash(diff)
