"""``connector tokens create|list|revoke`` and the worker path feeding segment sizes."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from click.testing import CliRunner

from connector import clock
from connector.cli import tokens_cmd
from connector.cli.main import cli
from connector.config import load_accounts
from connector.ops import audit, tokens
from connector.profiles import lookup
from connector.worker import sizes
from tests.ops.api.conftest import bearer
from tests.profile_helpers import apply, ev


@pytest.fixture
def runner(api_accounts: Path, redis_client: redis.Redis) -> CliRunner:
    if "tokens" not in cli.commands:
        tokens_cmd.register(cli)
    return CliRunner()


def test_create_shows_the_token_once_list_hides_it_revoke_stops_it(
    runner: CliRunner, redis_client: redis.Redis, api: Any
) -> None:
    made = runner.invoke(
        cli, ["tokens", "create", "--account", "acme", "--role", "viewer", "--expires", "7d"]
    )
    assert made.exit_code == 0, made.output
    secret = made.output.strip().splitlines()[-1]
    assert secret.startswith("sc_")
    assert api.get("/api/v1/accounts/acme", headers=bearer(secret)).status_code == 200
    listed = runner.invoke(cli, ["tokens", "list"])
    token_id = secret.split("_")[1]
    assert token_id in listed.output and secret.split("_", 2)[2] not in listed.output
    assert runner.invoke(cli, ["tokens", "revoke", token_id]).exit_code == 0
    assert api.get("/api/v1/accounts/acme", headers=bearer(secret)).status_code == 401
    assert runner.invoke(cli, ["tokens", "revoke", token_id]).exit_code != 0
    entries, _ = audit.read(redis_client, ("*",))
    actor = audit.cli_actor()  # the real user of the process, whatever LOGNAME says
    assert [(e.token, e.action) for e in entries] == [(actor, "token.revoke"), (actor, "token.create")]


def test_a_mistyped_account_names_the_closest(runner: CliRunner, redis_client: redis.Redis) -> None:
    answer = runner.invoke(cli, ["tokens", "create", "--account", "acmee", "--role", "viewer"])
    assert answer.exit_code == 2
    assert "unknown account `acmee` (did you mean `acme`?)" in answer.output
    assert tokens.tokens(redis_client) == []


@pytest.mark.parametrize(
    "args",
    [
        ["--account", "acme", "--account", "globex", "--role", "viewer"],
        ["--account", "*", "--role", "editor"],
        ["--account", "nope", "--role", "viewer"],
        ["--account", "acme", "--role", "viewer", "--expires", "forever"],
        ["--account", "acme", "--role", "viewer", "--expires", "99999999999999999999d"],
        ["--account", "acme", "--role", "viewer", "--expires", "\u0665d"],
        ["--account", "acme", "--role", "viewer", "--note", "ops \udce9"],
    ],
)
def test_refused_requests_say_why(runner: CliRunner, redis_client: redis.Redis, args: list[str]) -> None:
    answer = runner.invoke(cli, ["tokens", "create", *args])
    assert answer.exit_code == 2 and "Error" in answer.output, answer.output
    assert answer.exception is None or isinstance(answer.exception, SystemExit)
    assert tokens.tokens(redis_client) == []


@pytest.mark.parametrize(
    ("expires", "reason"),
    [
        ("99999999999999999999d", "expiry '99999999999999999999d' is longer than ten years"),
        ("\u0665d", "expiry '\u0665d' is not a duration like 90d, 12h or 2w"),
    ],
)
def test_an_expiry_is_judged_alike_by_the_cli_and_the_api(expires: str, reason: str) -> None:
    with pytest.raises(tokens.TokenError, match="^" + re.escape(reason) + "$"):
        tokens.parse_expiry(expires)


def test_admin_token_for_several_accounts(runner: CliRunner, redis_client: redis.Redis) -> None:
    answer = runner.invoke(
        cli, ["tokens", "create", "--account", "acme", "--account", "globex", "--role", "admin"]
    )
    assert answer.exit_code == 0, answer.output
    (token,) = tokens.tokens(redis_client)
    assert token.accounts == ("acme", "globex") and token.role == "admin"


def test_the_worker_pipeline_keeps_segment_sizes(api_accounts: Path, redis_client: redis.Redis) -> None:
    accounts = load_accounts(api_accounts)
    apply(
        redis_client, accounts, ev("w1", "order_completed", props={"revenue": 500.0}, email="w@example.com")
    )
    assert sizes.sizes(redis_client, "acme").get("vip") == 1
    pid = lookup(redis_client, "acme", "email", "w@example.com")
    assert pid is not None and sizes.is_member(redis_client, "acme", "vip", pid)


def test_list_shows_a_note_stored_with_a_lone_surrogate_replaced(
    runner: CliRunner, redis_client: redis.Redis
) -> None:
    token, _ = tokens.create(redis_client, ["acme"], "viewer", timedelta(days=1), clock.now(), "ci \udcff")
    listed = runner.invoke(cli, ["tokens", "list"])
    assert listed.exit_code == 0, listed.output
    first = listed.output.splitlines()[0]
    assert first.startswith(f"{token.id}  viewer") and first.endswith("ci \ufffd")
    as_json = runner.invoke(cli, ["tokens", "list", "--json"])
    assert as_json.exit_code == 0 and json.loads(as_json.output)[0]["note"] == "ci \ufffd"
