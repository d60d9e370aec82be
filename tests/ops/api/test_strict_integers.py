"""An integer of a request is an integer: a JSON body's ``1.5``, ``"1"`` or ``true`` and a query
string's `` 5``, ``+5``, ``1_0`` or another script's digits are a 422 naming the field, never read as
the integer they resemble."""

from __future__ import annotations

from typing import Any

import pytest

from tests.ops.api.conftest import Mint, bearer

V1 = "/api/v1/accounts/acme"
RAISED = "include:\n  - cart_abandonment\n  - template: vip\n    params: {threshold: 300}\n"


@pytest.fixture
def editor(mint: Mint) -> dict[str, str]:
    return bearer(mint("editor", "acme"))


def draft(api: Any, headers: dict[str, str]) -> int:
    answer = api.put(f"{V1}/rules", json={"text": RAISED}, headers=headers)
    assert answer.status_code == 201, answer.get_json()
    return int(answer.get_json()["version"])


@pytest.mark.parametrize("version", [1.5, 1.0, "1", True, [1], {"v": 1}])
def test_a_dry_run_version_that_is_no_json_integer_is_422(
    api: Any, editor: dict[str, str], people: dict[str, str], version: Any
) -> None:
    assert draft(api, editor) == 1
    answer = api.post(f"{V1}/rules/dry-run", json={"version": version}, headers=editor)
    assert answer.status_code == 422, (version, answer.get_json())
    body = answer.get_json()
    assert body["error"] == "invalid_request"
    assert body["errors"] == {"json": {"version": ["Not a valid integer."]}}
    assert body["message"] == "invalid json.version: Not a valid integer."


@pytest.mark.parametrize("limit", [10.0, 2.5, "10"])
def test_a_dry_run_limit_that_is_no_json_integer_is_422(
    api: Any, editor: dict[str, str], people: dict[str, str], limit: Any
) -> None:
    answer = api.post(f"{V1}/rules/dry-run", json={"text": RAISED, "limit": limit}, headers=editor)
    assert answer.status_code == 422, (limit, answer.get_json())
    assert answer.get_json()["errors"] == {"json": {"limit": ["Not a valid integer."]}}


def test_json_integers_still_run(api: Any, editor: dict[str, str], people: dict[str, str]) -> None:
    number = draft(api, editor)
    answer = api.post(f"{V1}/rules/dry-run", json={"version": number, "limit": 2}, headers=editor)
    assert answer.status_code == 200, answer.get_json()
    assert answer.get_json()["limit"] == 2


QUERIES = [
    ("/segments", "limit"),
    ("/segments/vip", "hours"),
    ("/segments/vip", "days"),
    ("/segments/vip/members", "limit"),
    ("/deadletters", "limit"),
]


@pytest.mark.parametrize(("path", "name"), QUERIES)
@pytest.mark.parametrize("text", [" 5", "5 ", "+5", "1_0", "\u0665", "\uff15", "5.0", "0x5", "5e0", ""])
def test_a_query_integer_that_is_not_ascii_digits_is_422(
    api: Any, mint: Mint, api_accounts: Any, path: str, name: str, text: str
) -> None:
    answer = api.get(f"{V1}{path}", query_string={name: text}, headers=bearer(mint("viewer", "acme")))
    assert answer.status_code == 422, (path, name, text, answer.get_json())
    assert answer.get_json()["errors"] == {"query": {name: ["Not a valid integer."]}}


def test_a_timeline_limit_is_ascii_digits(api: Any, mint: Mint, people: dict[str, str]) -> None:
    viewer = bearer(mint("viewer", "acme"))
    timeline = f"{V1}/people/{people['ann@example.com']}/timeline"
    assert api.get(timeline, query_string={"limit": "1_0"}, headers=viewer).status_code == 422
    assert api.get(timeline, query_string={"limit": "10"}, headers=viewer).status_code == 200


@pytest.mark.parametrize(("path", "name"), QUERIES)
def test_digits_are_read_and_ranges_still_named(
    api: Any, mint: Mint, api_accounts: Any, path: str, name: str
) -> None:
    viewer = bearer(mint("viewer", "acme"))
    assert api.get(f"{V1}{path}", query_string={name: "5"}, headers=viewer).status_code == 200
    low = api.get(f"{V1}{path}", query_string={name: "-1"}, headers=viewer)
    assert low.status_code == 422 and "greater than or equal to 1" in low.get_json()["message"]
    huge = api.get(f"{V1}{path}", query_string={name: "9" * 5000}, headers=viewer)
    assert huge.status_code == 422
