"""The rule language at load: validation errors name the path and the reason; the CLI and account files."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from connector.cli.main import _register, cli
from connector.config import load_account_file
from connector.errors import ConfigError
from rules import RulesError, compile_rules, format_duration, parse_duration, parse_template_text
from rules.durations import DurationError


def error_of(raw: Any, **kwargs: Any) -> RulesError:
    with pytest.raises(RulesError) as caught:
        compile_rules(raw, **kwargs)
    return caught.value


def seg(name: str, when: dict[str, Any]) -> dict[str, Any]:
    return {"name": name, "when": when}


COUNT = {"count": {"event": "order_completed", "gte": 1}}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("48h", timedelta(hours=48)),
        ("30d", timedelta(days=30)),
        ("2w", timedelta(days=14)),
        ("1h30m", timedelta(minutes=90)),
    ],
)
def test_durations_parse(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


@pytest.mark.parametrize("text", ["10 minutes", "", "0m", "10", "m", "-1d", 10, None])
def test_bad_durations_are_refused_with_the_expected_shape(text: Any) -> None:
    with pytest.raises(DurationError, match="is not a duration like 10m, 48h, 30d"):
        parse_duration(text)


@pytest.mark.parametrize(
    "text", ["36526d", "5219w", "1201mo", "101y", "100y1d", "1200mo1s", "9" * 5000 + "d"]
)
def test_durations_past_a_hundred_years_are_refused(text: str) -> None:
    # longer spans pushed window edges past the last instant a datetime holds: every evaluation failed
    with pytest.raises(DurationError, match="is longer than 100 years, the longest span a rule may use"):
        parse_duration(text)


@pytest.mark.parametrize("text", ["36525d", "100y", "1200mo", "1199mo30d"])
def test_durations_up_to_a_hundred_years_are_taken(text: str) -> None:
    parse_duration(text)


def test_a_rule_with_a_span_past_a_hundred_years_is_refused_at_its_path() -> None:
    err = error_of({"segments": [seg("s", {"count": {"event": "x", "within": "100000000d", "gte": 1}})]})
    assert "segments[0].when.count.within" in str(err)
    assert "longer than 100 years" in str(err)


def test_durations_format() -> None:
    assert format_duration(timedelta(hours=48)) == "2d"
    assert format_duration(timedelta(minutes=90)) == "1h30m"


def test_error_names_the_path_inside_the_rules() -> None:
    segments = [seg(f"s{i}", COUNT) for i in range(3)]
    segments.append(seg("s3", {"count": {"event": "product_viewed", "within": "10 minutes", "gte": 3}}))
    err = error_of({"segments": segments})
    assert err.path == "segments[3].when.count.within"
    assert err.reason == '"10 minutes" is not a duration like 10m, 48h, 30d'
    assert str(err) == 'segments[3].when.count.within: "10 minutes" is not a duration like 10m, 48h, 30d'


def test_unknown_operator_is_refused() -> None:
    err = error_of({"segments": [seg("a", {"all": [COUNT, {"cnt": {"event": "x"}}]})]})
    assert err.path == "segments[0].when.all[1].cnt"
    assert err.reason.startswith("unknown condition `cnt` (did you mean `count`?); known: all, always, any")


def test_unknown_field_is_refused() -> None:
    err = error_of({"segments": [seg("a", {"count": {"event": "x", "gte": 1, "whithin": "1d"}})]})
    assert (err.path, err.reason) == (
        "segments[0].when.count.whithin",
        "unknown field `whithin` (did you mean `within`?)",
    )


def test_unknown_comparison_inside_where_is_refused() -> None:
    err = error_of(
        {"segments": [seg("a", {"count": {"event": "x", "gte": 1, "where": {"revenue": {"gtt": 1}}}})]}
    )
    assert err.path == "segments[0].when.count.where.revenue.gtt"


def test_aggregate_without_a_comparison_is_refused() -> None:
    err = error_of({"segments": [seg("a", {"count": {"event": "x", "within": "1d"}})]})
    assert err.path == "segments[0].when.count"
    assert "needs a comparison" in err.reason


def test_sequence_needs_exactly_one_follow_up() -> None:
    when = {
        "sequence": {
            "first": {"event": "a"},
            "then": {"event": "b"},
            "then_not": {"event": "c"},
            "within": "1h",
        }
    }
    err = error_of({"segments": [seg("a", when)]})
    assert err.path == "segments[0].when.sequence"


def test_unknown_segment_reference_is_refused() -> None:
    err = error_of({"segments": [seg("a", {"in_segment": "nope"})]})
    assert (err.path, err.reason) == ("segments[0].when.in_segment", "unknown segment `nope`")


def test_reference_cycle_is_refused_with_its_location() -> None:
    err = error_of(
        {
            "segments": [
                seg("a", {"all": [COUNT, {"in_segment": "b"}]}),
                seg("b", {"not_in_segment": "a"}),
            ]
        }
    )
    assert err.path == "segments[0].when.all[1].in_segment"
    assert err.reason == "reference cycle: a → b → a"


def test_self_reference_is_a_cycle() -> None:
    err = error_of({"segments": [seg("a", {"not_in_segment": "a"})]})
    assert "reference cycle: a → a" in err.reason


def test_cycle_through_an_exclusive_group_is_refused() -> None:
    # b comes after a in the group, so b depends on a's condition, which reads b
    err = error_of(
        {
            "segments": [seg("a", {"in_segment": "b"}), seg("b", COUNT)],
            "groups": [{"name": "g", "segments": ["a", "b"]}],
        }
    )
    assert "reference cycle" in err.reason


def test_segment_in_two_exclusive_groups_is_refused() -> None:
    err = error_of(
        {
            "segments": [seg("a", COUNT), seg("b", COUNT)],
            "groups": [{"name": "g1", "segments": ["a", "b"]}, {"name": "g2", "segments": ["b"]}],
        }
    )
    assert err.path == "groups[1].segments[0]"
    assert err.reason == "segment 'b' is already in exclusive group 'g1'"


def test_duplicate_segment_names_are_refused() -> None:
    err = error_of({"segments": [seg("a", COUNT), seg("a", COUNT)]})
    assert err.path == "segments[1].name"


def test_computed_trait_cycle_is_refused() -> None:
    err = error_of({"traits": {"x": {"trait": {"name": "y"}}, "y": {"trait": {"name": "x"}}}})
    assert err.path == "traits.x"
    assert "reference cycle: x → y → x" in err.reason


def test_unknown_computed_trait_kind_is_refused() -> None:
    err = error_of({"traits": {"x": {"median": {"event": "a", "property": "p"}}}})
    assert err.path == "traits.x.median"


def test_unknown_template_and_parameters_are_refused() -> None:
    err = error_of({"include": ["nope"]})
    assert err.path == "include[0]"
    assert "cart_abandonment" in err.reason
    err = error_of({"include": [{"template": "cart_abandonment", "params": {"windw": "24h"}}]})
    assert err.path == "include[0].params.windw"
    assert err.reason == (
        "unknown parameter of template cart_abandonment `windw` (did you mean `window`?); "
        "known: checkout_window, keep_for, window"
    )
    err = error_of({"include": [{"template": "cart_abandonment", "params": {"window": "24 hours"}}]})
    assert (err.path, err.reason) == (
        "include[0].params.window",
        '"24 hours" is not a duration like 10m, 48h, 30d',
    )
    err = error_of({"include": [{"template": "vip", "params": {"threshold": "lots"}}]})
    assert err.path == "include[0].params.threshold"


def test_template_and_account_defining_the_same_segment_is_refused() -> None:
    err = error_of({"include": ["vip"], "segments": [seg("vip", COUNT)]})
    assert (err.path, err.reason) == ("segments[0].name", "segment 'vip' is already defined")


def test_identical_traits_from_two_templates_merge_but_different_ones_do_not() -> None:
    rules = compile_rules({"include": ["vip", "purchase_behavior"]})
    assert rules.trait_names.count("lifetime_revenue") == 1
    err = error_of(
        {"include": ["vip"], "traits": {"lifetime_revenue": {"sum": {"event": "x", "property": "p"}}}}
    )
    assert err.path == "traits.lifetime_revenue"


def test_problem_inside_a_template_names_the_include_and_the_template() -> None:
    template = {
        "template": "mine",
        "params": {"w": "1d"},
        "segments": [seg("m", {"count": {"event": "x", "within": "$w", "gte": "$n"}})],
    }
    err = error_of({"include": ["mine"]}, templates={"mine": template})
    assert err.path == "include[0]"
    assert "template mine" in err.reason and "unknown parameter $n" in err.reason


def test_rules_must_be_a_mapping() -> None:
    assert error_of(["x"]).reason.startswith("rules must be a mapping")  # type: ignore[arg-type]


def test_ruleset_facts_for_the_connector() -> None:
    rules = compile_rules(
        {
            "traits": {"ltv": {"sum": {"event": "order_completed", "property": "revenue"}}},
            "segments": [
                seg(
                    "shoes",
                    {
                        "count": {
                            "event": "product_viewed",
                            "within": "10m",
                            "group_by": "category",
                            "where": {"brand": "acme"},
                            "gte": 3,
                        }
                    },
                ),
                seg(
                    "recent",
                    {"count": {"event": "email_opened", "within": "30d", "older_than": "2d", "gte": 1}},
                ),
            ],
        }
    )
    assert rules.segment_names == ("shoes", "recent")
    assert rules.referenced_properties() == {
        "order_completed": frozenset({"revenue"}),
        "product_viewed": frozenset({"category", "brand"}),
        "email_opened": frozenset(),
    }
    assert rules.max_lookback is None  # the lifetime sum reads all history
    windowed = compile_rules({"segments": [seg("r", {"count": {"event": "a", "within": "30d", "gte": 1}})]})
    assert windowed.max_lookback == timedelta(days=30)


# -- account files and the CLI ---------------------------------------------------------------------


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


BAD_ACCOUNT = """\
account: acme
rules:
  segments:
    - name: a
      when: {count: {event: x, gte: 1}}
    - name: b
      when: {count: {event: x, within: 10 minutes, gte: 1}}
"""


def test_account_file_rules_are_compiled_at_load(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.yaml", "account: acme\nrules:\n  include: [vip]\n")
    account = load_account_file(path, env={})
    assert account.ruleset.segment_names == ("vip",)
    assert account.rules == {"include": ["vip"]}


def test_account_without_rules_has_an_empty_ruleset(tmp_path: Path) -> None:
    account = load_account_file(write(tmp_path, "acme.yaml", "account: acme\n"), env={})
    assert account.ruleset.empty


def test_account_file_with_bad_rules_is_a_config_error(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.yaml", BAD_ACCOUNT)
    with pytest.raises(ConfigError) as caught:
        load_account_file(path, env={})
    assert caught.value.file == str(path)
    assert caught.value.path == "rules.segments[1].when.count.within"
    assert str(caught.value) == (
        f'{path}: rules.segments[1].when.count.within: "10 minutes" is not a duration like 10m, 48h, 30d'
    )


def run_cli(*args: str) -> Any:
    _register()
    return CliRunner().invoke(cli, list(args))


def test_cli_validate_accepts_a_good_rules_file(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.yaml", "include: [cart_abandonment, vip]\n")
    result = run_cli("rules", "validate", str(path))
    assert result.exit_code == 0, result.output
    assert "ok: 3 segments (cart_abandoner, checkout_abandoner, vip)" in result.output


def test_cli_validate_reports_file_path_and_reason(tmp_path: Path) -> None:
    path = write(tmp_path, "acme.yaml", BAD_ACCOUNT)
    result = run_cli("rules", "validate", str(path))
    assert result.exit_code == 1
    assert f'{path}: rules.segments[1].when.count.within: "10 minutes" is not a duration' in result.output
    assert "Traceback" not in result.output


def test_cli_validate_reports_yaml_syntax_errors_with_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "rules.yaml", "segments:\n  - name: a\n    when: {count: [\n")
    result = run_cli("rules", "validate", str(path))
    assert result.exit_code == 1
    assert f"{path}: line " in result.output and "not valid YAML" in result.output


def test_cli_validate_checks_a_template_file() -> None:
    template = Path(__file__).resolve().parents[2] / "rules" / "templates" / "lifecycle.yaml"
    result = run_cli("rules", "validate", str(template))
    assert result.exit_code == 0, result.output
    assert "7 segments" in result.output


def test_cli_validate_missing_file(tmp_path: Path) -> None:
    result = run_cli("rules", "validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 1
    assert "cannot read" in result.output


def test_a_template_cannot_include_another() -> None:
    template = {"template": "mine", "include": ["vip"], "segments": [seg("m", COUNT)]}
    err = error_of({"include": ["mine"]}, templates={"mine": template})
    assert err.path == "include[0]"
    assert "cannot include" in err.reason


ALIASED_RULES = (
    "segments:\n"
    "  - name: a\n"
    "    when: {trait: {name: t, in: &few [x, y]}}\n"
    "  - name: b\n"
    "    when: {trait: {name: u, in: *few}}\n"
)
TOO_MANY = "YAML aliases expand this document to more than 100,000 values"


def alias_bomb(indent: str = "") -> str:
    """Five lines whose aliases stand for 10 ** 6 values (the values on the fifth line)."""
    lists = ", ".join(
        ["&a0 [x, x, x, x, x, x, x, x, x, x]"]
        + [f"&a{n} [" + ", ".join([f"*a{n - 1}"] * 10) + "]" for n in range(1, 6)]
    )
    lines = ["segments:", "  - name: a", "    when:", "      trait:", f"        {{name: t, in: [{lists}]}}"]
    return "".join(f"{indent}{line}\n" for line in lines)


def test_cli_validate_takes_a_few_aliases_and_refuses_too_many_with_the_line(tmp_path: Path) -> None:
    fine = run_cli("rules", "validate", str(write(tmp_path, "rules.yaml", ALIASED_RULES)))
    assert fine.exit_code == 0, fine.output
    path = write(tmp_path, "bomb.yaml", alias_bomb())
    result = run_cli("rules", "validate", str(path))
    assert result.exit_code == 1
    assert result.output.startswith(f"{path}: line 5: not valid YAML: {TOO_MANY}")
    assert "Traceback" not in result.output


def test_an_account_file_and_a_template_are_held_to_the_same_bound(tmp_path: Path) -> None:
    account = "account: acme\nrules:\n" + "".join(f"  {line}\n" for line in ALIASED_RULES.splitlines())
    loaded = load_account_file(write(tmp_path, "acme.yaml", account), env={})
    assert {s.name for s in loaded.ruleset.segments} >= {"a", "b"}
    with pytest.raises(ConfigError) as caught:
        load_account_file(write(tmp_path, "acme.yaml", "account: acme\nrules:\n" + alias_bomb("  ")), env={})
    assert caught.value.path == "line 7" and caught.value.reason.startswith(f"not valid YAML: {TOO_MANY}")
    with pytest.raises(RulesError) as refused:
        parse_template_text("template: t\n" + alias_bomb(), "mine.yaml")
    assert refused.value.path == "mine.yaml" and TOO_MANY in refused.value.reason


def test_an_alias_to_a_value_that_holds_it_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, "loop.yaml", "segments:\n  - &me {name: a, when: {all: [*me]}}\n")
    result = run_cli("rules", "validate", str(path))
    assert result.exit_code == 1
    assert "YAML alias refers to a value that holds it: write the value out" in result.output
