"""The OpenAPI document served at /api/v1/openapi.json is the contract: schemathesis generates
requests for every operation (in-process, through WSGI) with an admin token of every account, and
every answer must be declared and match its schema; no 5xx; invalid input refused. Rules across
fields (exactly one of email, user_id, anonymous_id; an erasure's confirm repeating the path's
profile id) are not expressible in the schema, so the "schema-valid data is accepted" check is
not among the checks."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.ops.api.conftest import Mint, bearer

EXAMPLES = 12
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


def test_every_operation_answers_as_its_schema_says(api_app: Any, mint: Mint, people: dict[str, str]) -> None:
    schema = schemathesis.openapi.from_wsgi("/api/v1/openapi.json", api_app)
    headers = bearer(mint("admin", "*"))
    rules_text = "include: [cart_abandonment, {template: vip, params: {threshold: 300}}]"
    stored = api_app.test_client().put(
        "/api/v1/accounts/acme/rules", json={"text": rules_text}, headers=headers
    )
    assert stored.status_code == 201  # a rules version, so the version operations answer 200 too
    real = {
        "version": stored.get_json()["version"],
        "account_id": "acme",
        "profile_id": people["ann@example.com"],
        "name": "vip",
        "kind": "sync:mailchimp",
    }
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    for operation in operations:

        @given(case=operation.as_strategy(), use_real=st.booleans())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,  # the same requests on every run: CI answers for the code, not the draw
        )
        def check(case: Any, use_real: bool) -> None:
            if use_real:  # half the cases name things that exist, so the 200 answers are checked too
                for name, value in real.items():
                    if case.path_parameters and name in case.path_parameters:
                        case.path_parameters[name] = value
            response = case.call_and_validate(headers=headers, checks=CHECKS)
            assert response.status_code < 500

        check()
