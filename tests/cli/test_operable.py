"""Commands that cannot run away: unknown names refused with a did-you-mean, a flush job for an
unknown destination ends, dead letters discarded with replay's filters, erasure asks first and
reports the ESP erasures; the export holds everything kept about the person."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from click.testing import CliRunner
from rq import Queue

from connector import clock, sync
from connector.cli.main import _register, cli
from connector.config import Accounts, load_accounts
from connector.profiles import lookup
from connector.sync.deadletters import DeadLetters
from tests.conftest import fresh_runtime
from tests.profile_helpers import NOW, apply, ev
from tests.sync.test_sync_dlq_cmd import dead_change
from tests.sync.test_sync_worker import RecordingEsp

SHOP = {
    "account": "shop",
    "rules": {
        "segments": [
            {"name": "buyers", "when": {"count": {"event": "order_completed", "within": "365d", "gte": 1}}}
        ]
    },
    "destinations": {
        "mailchimp": {
            "api_key_env": "SHOP_MC_KEY",
            "list_id": "aud1",
            "base_url": "http://127.0.0.1:9/3.0",
            "sandbox": True,
            "segments": {"buyers": {"tags": ["Buyer"]}},
        },
        "klaviyo": {
            "api_key_env": "SHOP_KL_KEY",
            "base_url": "http://127.0.0.1:9",
            "sandbox": True,
            "segments": {"buyers": {"lists": ["L1"]}},
        },
    },
}


def install_shop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *others: str) -> Accounts:
    """The account ``shop`` (and copies of it named ``others``) as the CLI's configuration."""
    directory = tmp_path / "accounts"
    directory.mkdir()
    for name in ("shop", *others):
        (directory / f"{name}.yaml").write_text(yaml.safe_dump({**SHOP, "account": name}))
    monkeypatch.setenv("CONNECTOR_CONFIG_DIR", str(directory))
    monkeypatch.setenv("SHOP_MC_KEY", "mc-key-us1")
    monkeypatch.setenv("SHOP_KL_KEY", "pk_test")
    fresh_runtime()
    return load_accounts(directory)


@pytest.fixture
def shop(redis_client: redis.Redis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Accounts:
    return install_shop(tmp_path, monkeypatch)


@pytest.fixture
def runner() -> CliRunner:
    _register()
    return CliRunner()


def _buyer(conn: redis.Redis, accounts: Accounts) -> str:
    apply(
        conn,
        accounts,
        ev("o1", "order_completed", account="shop", email="bo@example.com", props={"total": 9}),
    )
    pid = lookup(conn, "shop", "email", "bo@example.com")
    assert pid is not None
    return pid


def test_resume_refuses_an_unknown_destination_with_did_you_mean(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    result = runner.invoke(cli, ["dlq", "resume", "shop", "klavyio"])
    assert result.exit_code == 2
    assert "unknown destination of shop `klavyio` (did you mean `klaviyo`?)" in result.output
    assert not redis_client.exists(sync.key("shop", "klavyio", "armed"))
    assert redis_client.zcard("sync:due") == 0
    wrong_account = runner.invoke(cli, ["dlq", "resume", "shp", "klaviyo"])
    assert wrong_account.exit_code == 2 and "(did you mean `shop`?)" in wrong_account.output
    ok = runner.invoke(cli, ["dlq", "resume", "shop", "klaviyo"])
    assert ok.exit_code == 0, ok.output


def test_account_options_refuse_unknown_names(runner: CliRunner, shop: Accounts) -> None:
    for args in (
        ["profiles", "show", "--account", "shpo", "--email", "a@example.com"],
        ["segments", "history", "--account", "shpo", "--email", "a@example.com"],
        ["events", "rejected", "--account", "shpo"],
        ["dlq", "replay", "--account", "shpo"],
        ["dlq", "discard", "--account", "shpo", "--yes"],
    ):
        result = runner.invoke(cli, args)
        assert result.exit_code != 0, args
        assert "unknown account `shpo` (did you mean `shop`?)" in result.output, (args, result.output)


def test_a_flush_job_for_an_unknown_destination_ends_without_re_arming(
    shop: Accounts, redis_client: redis.Redis
) -> None:
    from adapters.change import Change

    change = Change("shop", "removed", "p1", 1, "p1@example.com", tags=frozenset({"x"}))
    with clock.frozen(NOW):
        assert sync.enqueue_change(redis_client, change, NOW.timestamp())
        assert sync.flush_job("shop", "removed") == {}
        assert not redis_client.exists(sync.key("shop", "removed", "armed"))
        queue = Queue(sync.SYNC_QUEUE, connection=redis_client)
        queue.empty()
        # the scheduler's next ticks arm nothing for it
        for step in range(3):
            assert sync.fire_due(redis_client, NOW + timedelta(seconds=step)) == 0
        assert queue.count == 0


def test_discard_takes_replays_filters_and_asks_first(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    dead_change(redis_client, "p1", account="shop", text="Invalid Resource")
    dead_change(redis_client, "p2", account="shop", text="Member In Compliance State")
    DeadLetters(redis_client).put("events", "undecodable", "raw", NOW)
    declined = runner.invoke(cli, ["dlq", "discard", "--kind", "sync"], input="n\n")
    assert declined.exit_code == 1 and DeadLetters(redis_client).count("sync:mailchimp") == 2
    typo = runner.invoke(cli, ["dlq", "discard", "--kind", "snyc", "--yes"])
    assert typo.exit_code == 2 and "(did you mean `sync`?)" in typo.output
    result = runner.invoke(
        cli,
        ["dlq", "discard", "--kind", "sync", "--account", "shop", "--filter", "invalid resource", "--yes"],
    )
    assert result.exit_code == 0, result.output
    assert "1 removed" in result.output
    left = [item.payload["change"]["profile_id"] for item in DeadLetters(redis_client).list("sync:mailchimp")]
    assert left == ["p2"]
    assert DeadLetters(redis_client).count("events") == 1


def test_export_holds_memberships_history_traits_and_what_each_esp_was_sent(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    pid = _buyer(redis_client, shop)
    esp = RecordingEsp()
    with clock.frozen(NOW + timedelta(seconds=5)) as frozen:
        totals = sync.flush_job(
            "shop", "mailchimp", factory=lambda d: esp, sleep=lambda s: frozen.advance(timedelta(seconds=s))
        )
    assert totals.get("applied") == 1
    result = runner.invoke(cli, ["profiles", "export", "--account", "shop", "--email", "bo@example.com"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)
    assert document["memberships"]["segments"] == ["buyers"]
    assert [entry["entered"] for entry in document["segment_history"]] == [["buyers"]]
    assert document["computed_traits"] == {}
    mailchimp: dict[str, Any] = document["destinations"]["mailchimp"]
    assert mailchimp["applied_version"] == document["memberships"]["version"]
    assert mailchimp["owned"]["tags"] == ["Buyer"]
    assert document["destinations"]["klaviyo"] == {"applied_version": None, "owned": None}
    assert pid in result.stdout


def test_delete_asks_first_and_reports_the_esp_erasures_it_queued(
    runner: CliRunner, shop: Accounts, redis_client: redis.Redis
) -> None:
    pid = _buyer(redis_client, shop)
    args = ["profiles", "delete", "--account", "shop", "--email", "bo@example.com"]
    declined = runner.invoke(cli, args, input="n\n")
    assert declined.exit_code == 1
    assert "ask klaviyo, mailchimp to erase them" in declined.output
    assert lookup(redis_client, "shop", "email", "bo@example.com") == pid
    confirmed = runner.invoke(cli, args, input="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert f"erased profile {pid}" in confirmed.output
    assert "ESP erasures queued: klaviyo, mailchimp" in confirmed.output
    assert lookup(redis_client, "shop", "email", "bo@example.com") is None


def test_a_worker_serves_only_the_queues_it_is_given(redis_client: redis.Redis) -> None:
    """A dedicated prediction worker (--queues predict) leaves event work to the others, and a
    worker started without predict never takes a training."""
    from connector.cli.run_cmd import worker

    Queue("predict", connection=redis_client).enqueue("connector.predict.jobs.train", "nobody")
    Queue("events", connection=redis_client).enqueue("connector.worker.jobs.drain_events", 0)
    runner = CliRunner()
    result = runner.invoke(worker, ["--burst", "--queues", "reevaluate,sync,events,backfill"])
    assert result.exit_code == 0, result.output
    assert Queue("events", connection=redis_client).count == 0
    assert Queue("predict", connection=redis_client).count == 1  # left for the prediction worker


def test_an_unknown_queue_is_refused_naming_the_known_ones(redis_client: redis.Redis) -> None:
    from connector.cli.run_cmd import worker

    result = CliRunner().invoke(worker, ["--burst", "--queues", "events,predictions"])
    assert result.exit_code == 2
    assert "unknown queue predictions" in result.output and "predict" in result.output
