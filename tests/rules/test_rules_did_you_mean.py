"""The rule compiler names a mistyped name with the closest known one, at the path it is written at;
``connector rules validate FILE`` shows the same."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli.main import _register, cli
from rules import RulesError, compile_rules

COUNT = {"count": {"event": "order_completed", "gte": 1}}


def error_of(raw: Any) -> RulesError:
    with pytest.raises(RulesError) as caught:
        compile_rules(raw)
    return caught.value


@pytest.mark.parametrize(
    ("raw", "path", "reason"),
    [
        ({"segmnts": []}, "segmnts", "unknown field `segmnts` (did you mean `segments`?)"),
        ({"segments": [{"name": "a", "whn": COUNT}]},
         "segments[0].whn", "unknown field `whn` (did you mean `when`?)"),
        ({"segments": [{"name": "a", "when": {"cuont": COUNT["count"]}}]},
         "segments[0].when.cuont", "unknown condition `cuont` (did you mean `count`?); known: all, always, "),
        ({"segments": [{"name": "a", "when": {"count": {"event": "x", "gte": 1, "withn": "5m"}}}]},
         "segments[0].when.count.withn", "unknown field `withn` (did you mean `within`?)"),
        ({"segments": [{"name": "a", "when": {"count": {**COUNT["count"], "where": {"p": {"gtt": 1}}}}}]},
         "segments[0].when.count.where.p.gtt", "unknown field `gtt` (did you mean `gt`?)"),
        ({"traits": {"t": {"summ": {"event": "x", "property": "p"}}}},
         "traits.t.summ", "unknown computed trait kind `summ` (did you mean `sum`?); known: avg, "),
        ({"include": ["cart_abandonmnt"]},
         "include[0]", "unknown template `cart_abandonmnt` (did you mean `cart_abandonment`?); known: "),
        ({"include": [{"template": "vipp"}]},
         "include[0].template", "unknown template `vipp` (did you mean `vip`?)"),
        ({"include": [{"template": "vip", "parms": {}}]},
         "include[0].parms", "unknown field `parms` (did you mean `params`?)"),
        ({"segments": [{"name": "buyers", "when": COUNT}, {"name": "b", "when": {"in_segment": "buyer"}}]},
         "segments[1].when.in_segment", "unknown segment `buyer` (did you mean `buyers`?)"),
        ({"segments": [{"name": "buyers", "when": COUNT}], "groups": [{"name": "g", "segments": ["buyer"]}]},
         "groups[0].segments[0]", "unknown segment `buyer` (did you mean `buyers`?)"),
    ],
)  # fmt: skip
def test_a_typo_names_the_closest_known_name(raw: Any, path: str, reason: str) -> None:
    err = error_of(raw)
    assert err.path == path
    assert err.reason.startswith(reason), err.reason


def test_a_mistyped_required_key_is_reported_once() -> None:
    err = error_of({"segments": [{"name": "a", "when": {"count": {"evnt": "x", "gte": 1}}}]})
    assert (err.path, err.reason) == (
        "segments[0].when.count.evnt",
        "unknown field `evnt` (did you mean `event`?)",
    )


def test_a_name_far_from_any_known_one_lists_them_without_a_guess() -> None:
    err = error_of({"segments": [{"name": "a", "when": {"zzzzzz": 1}}]})
    assert err.reason.startswith("unknown condition `zzzzzz`; known: all, always, any")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("segmnts: []\n", "segmnts: unknown field `segmnts` (did you mean `segments`?)"),
        ("segments:\n  - name: x\n    when: {cuont: {event: a, within: 5m, gte: 1}}\n",
         "segments[0].when.cuont: unknown condition `cuont` (did you mean `count`?); known: "),
        ("segments:\n  - name: x\n    when: {count: {event: a, withn: 5m, gte: 1}}\n",
         "segments[0].when.count.withn: unknown field `withn` (did you mean `within`?)"),
        ("include: [cart_abandonmnt]\n",
         "include[0]: unknown template `cart_abandonmnt` (did you mean `cart_abandonment`?); known: "),
    ],
)  # fmt: skip
def test_cli_rules_validate_shows_the_path_and_the_closest_name(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(text, encoding="utf-8")
    _register()
    result = CliRunner().invoke(cli, ["rules", "validate", str(path)])
    assert result.exit_code == 1
    assert result.output.startswith(f"{path}: {expected}"), result.output


@pytest.mark.parametrize(
    ("written", "stored"),
    [
        ("Order_Completed", "order_completed"),
        ("orderCompleted", "order_completed"),
        ("Order Completed", "order_completed"),  # Segment's spec name
        ("Product Added", "add_to_cart"),
        ("page.viewed", "page_viewed"),
    ],
)
def test_an_event_name_that_could_never_match_names_the_stored_one(written: str, stored: str) -> None:
    # the receivers store every event under its canonical name: any other form never matches
    with pytest.raises(RulesError) as caught:
        compile_rules({"segments": [{"name": "s", "when": {"count": {"event": written, "gte": 1}}}]})
    assert caught.value.path == "segments[0].when.count.event"
    assert f"`{written}` would never match" in caught.value.reason
    assert caught.value.reason.endswith(f"did you mean `{stored}`?")


@pytest.mark.parametrize(
    ("when", "path", "reason"),
    [
        (
            {"count": {"event": "x", "within": "7d", "older_than": "30d", "gte": 1}},
            "segments[0].when.count.within",
            "nothing is less than 7d and at least 30d old: the window is empty; "
            "did you mean within: 30d, older_than: 7d?",
        ),
        (
            {"last": {"event": "x", "within": "7d", "older_than": "7d"}},
            "segments[0].when.last.within",
            "nothing is less than 7d and at least 7d old: the window is empty",
        ),
        (
            {"trait": {"name": "age", "between": [7, 4]}},
            "segments[0].when.trait.between",
            "nothing is between 7 and 4: the low end comes first; did you mean [4, 7]?",
        ),
        (
            {
                "sequence": {
                    "first": {"event": "add_to_cart"},
                    "then_not": {"event": "order_completed"},
                    "within": "48h",
                    "first_within": "1d",
                }
            },
            "segments[0].when.sequence.first_within",
            "a first event at most 1d old is never 2d old, so nobody could ever be in it: "
            "first_within must be longer than within (2d)",
        ),
        (
            {"count": {"event": "order_completed", "gte": float("nan")}},
            "segments[0].when.count.gte",
            "must be a finite number, not nan",
        ),
        (
            {"sum": {"event": "order_completed", "property": "revenue", "lt": float("inf")}},
            "segments[0].when.sum.lt",
            "must be a finite number, not inf",
        ),
        (
            {"trait": {"name": "score", "between": [0, float("-inf")]}},
            "segments[0].when.trait.between",
            "must be a finite number, not -inf",
        ),
        (
            {"trait": {"name": "plan", "equals": "pro"}},
            "segments[0].when.trait.equals",
            "unknown field `equals` (did you mean `eq`?)",
        ),
        (
            {"count": {"event": "x", "gte": 1, "within": date(2023, 1, 1)}},
            "segments[0].when.count.within",
            "2023-01-01 is a date, not a duration like 10m, 48h, 30d",
        ),
    ],
)
def test_a_range_nothing_is_ever_in_is_refused(when: dict[str, Any], path: str, reason: str) -> None:
    with pytest.raises(RulesError) as caught:
        compile_rules({"segments": [{"name": "s", "when": when}]})
    assert (caught.value.path, caught.value.reason) == (path, reason)


@pytest.mark.parametrize(
    "when",
    [
        {"count": {"event": "x", "within": "30d", "older_than": "7d", "gte": 1}},
        {"trait": {"name": "a", "within": "1mo", "older_than": "28d"}},  # empty in February only
        {"trait": {"name": "age", "between": [4, 4]}},
    ],
)
def test_ranges_something_can_be_in_are_taken(when: dict[str, Any]) -> None:
    compile_rules({"segments": [{"name": "s", "when": when}]})


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("a" * 129, "must be at most 128 characters long (this one has 129)"),
        ("vip\n", "must be a name of letters, digits and _ (then also . : -)"),
    ],
)
def test_a_segment_name_is_refused_saying_why(name: str, reason: str) -> None:
    with pytest.raises(RulesError) as caught:
        compile_rules({"segments": [{"name": name, "when": {"always": True}}]})
    assert (caught.value.path, caught.value.reason) == ("segments[0].name", reason)


def test_a_cart_template_whose_keep_for_ends_before_its_window_is_refused() -> None:
    # every cart abandoner would leave and nobody could enter: cart recovery silently off
    with pytest.raises(RulesError) as caught:
        compile_rules(
            {"include": [{"template": "cart_abandonment", "params": {"window": "48h", "keep_for": "1d"}}]}
        )
    assert "first_within must be longer than within (2d)" in caught.value.reason
    assert caught.value.path.startswith("include[0]")
