"""The rules in force name the account file by its name in the config directory, for every role:
the server's path to it is no one's business but its operator's (it is in the logs)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.ops.api.conftest import Mint, bearer

URL = "/api/v1/accounts/acme/rules"


@pytest.mark.parametrize("role", ["viewer", "editor", "admin"])
def test_the_account_file_is_named_not_located(api: Any, mint: Mint, api_accounts: Path, role: str) -> None:
    answer = api.get(URL, headers=bearer(mint(role, "acme")))
    assert answer.status_code == 200
    assert answer.get_json()["file"] == "acme.yaml"
    text = answer.get_data(as_text=True)
    assert str(api_accounts) not in text and str(api_accounts.resolve()) not in text


def test_the_openapi_document_describes_the_field(api: Any) -> None:
    document = api.get("/api/v1/openapi.json").get_json()
    field = document["components"]["schemas"]["RulesInForce"]["properties"]["file"]
    assert "config directory" in field["description"]
