"""The admin API's rules validation warns about a ``trait:`` name close to a computed trait of the
rules that it is not (``lifetime_revenu``), with its path and the name meant: valid rules (a trait
senders set may have that name), a likely typo."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ops.api.conftest import Mint, bearer

URL = "/api/v1/accounts/acme/rules/validate"
RULES = (
    "traits:\n  lifetime_revenue:\n    sum: {event: order_completed, property: revenue}\n"
    "segments:\n"
    "  - name: vip\n    when: {trait: {name: lifetime_revenu, gte: 100}}\n"
    "  - name: cart_abandoner\n    when: {count: {event: checkout_started, gte: 1}}\n"
    "  - name: pro\n"
    "    when: {all: [{trait: {name: plan, eq: pro}}, {trait: {name: lifetime_revenue, gt: 0}}]}\n"
)


@pytest.fixture
def editor(mint: Mint) -> dict[str, str]:
    return bearer(mint("editor", "acme"))


def test_a_trait_name_close_to_a_computed_trait_is_a_warning_with_its_path(
    api: Any, editor: dict[str, str]
) -> None:
    checked = api.post(URL, json={"text": RULES}, headers=editor).get_json()
    assert checked["valid"] is True and checked["traits"] == ["lifetime_revenue"]
    assert checked["warnings"] == [
        {
            "path": "rules.segments[0].when.trait.name",
            "message": "trait `lifetime_revenu` is not a computed trait of acme's rules (did you mean "
            "`lifetime_revenue`?), so this reads only a trait that senders set on the profile as "
            "`lifetime_revenu`",
        }
    ]
    right = RULES.replace("lifetime_revenu,", "lifetime_revenue,")
    assert api.post(URL, json={"text": right}, headers=editor).get_json()["warnings"] == []
