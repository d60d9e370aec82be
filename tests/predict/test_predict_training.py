"""Training on an account's stored orders (real Redis): traits stored compactly with the model version,
merged into the profile rules see, ranks, explain, the minimum of data, the backtest and the CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from connector import clock
from connector.cli.main import _register, cli
from connector.config import Accounts
from connector.predict import backtest, explain, predicted_traits, store, with_predictions
from connector.predict.models import BgNbd
from connector.predict.train import Minimum, train_account
from connector.profiles import iter_profile_ids, load_profile
from rules import compile_rules, evaluate
from tests.predict.simulate import simulate_bgnbd
from tests.profile_helpers import apply, ev

START = datetime(2023, 1, 1, tzinfo=UTC)
NOW = datetime(2024, 7, 1, tzinfo=UTC)
SMALL = Minimum(repeat_customers=20, history_days=180)


def _store_customers(conn: redis.Redis, accounts: Accounts, n: int, seed: int) -> None:
    sim = simulate_bgnbd(BgNbd(r=0.8, alpha=30.0, a=0.7, b=2.5), n=n, max_age=330.0, seed=seed, horizon=0.0)
    rng = np.random.default_rng(seed)
    events = []
    for i in range(n):
        first = NOW - timedelta(days=float(sim.T[i]))
        spend = float(rng.gamma(4.0, 10.0))
        for k, t in enumerate([0.0, *sim.purchases[i][sim.purchases[i] <= sim.T[i]].tolist()]):
            events.append(
                ev(
                    f"o-{i}-{k}",
                    "order_completed",
                    at=first + timedelta(days=t),
                    user_id=f"user-{i}",
                    props={"order_id": f"{i}-{k}", "revenue": round(spend * float(rng.uniform(0.8, 1.2)), 2)},
                )
            )
    for start in range(0, len(events), 500):
        apply(conn, accounts, *events[start : start + 500], now=NOW)


@pytest.fixture
def trained(redis_client: redis.Redis, accounts: Accounts) -> redis.Redis:
    _store_customers(redis_client, accounts, 300, seed=5)
    result = train_account(redis_client, "acme", NOW, minimum=SMALL)
    assert result.trained, result.missing
    return redis_client


def test_training_stores_every_customer_compactly_with_the_model_version(trained: redis.Redis) -> None:
    ids = list(iter_profile_ids(trained, "acme"))
    assert trained.hlen(store.values_key("acme")) == len(ids) == 300
    raw = trained.hget(store.values_key("acme"), ids[0])
    assert len(raw) == store.RECORD.size == 64
    meta = store.current_meta(trained, "acme")
    assert meta is not None and meta["model_version"].startswith("bgnbd-gg/1@2024-07-01T00:00:00Z#")
    assert set(meta["params"]) == {"bgnbd", "gamma_gamma"}
    dist = store.distributions(trained, "acme")["predicted_clv"]
    assert dist["n"] == 300 and len(dist["quantiles"]) == 101


def test_predicted_traits_reach_rules_and_ranks_split_the_account(trained: redis.Redis) -> None:
    ids = list(iter_profile_ids(trained, "acme"))
    traits = predicted_traits(trained, "acme", ids, NOW)
    one = traits[ids[0]]
    assert 0 <= one["predicted.churn_risk"] <= 1
    assert len(one["predicted.rfm_score"]) == 3
    assert one["predicted.predicted_clv"] >= 0
    rules = compile_rules({"include": ["value_tiers"]})
    tiers: dict[str, int] = {}
    for pid in ids:
        profile = with_predictions(load_profile(trained, "acme", pid, NOW), traits[pid])
        for seg in evaluate(profile, rules, NOW).segments:
            tiers[seg] = tiers.get(seg, 0) + 1
    assert sum(tiers.values()) == 300  # every scored customer in exactly one tier
    assert 20 <= tiers["value_tier_top"] <= 40
    assert 40 <= tiers["value_tier_bottom"] <= 70


def test_an_order_after_the_training_withdraws_the_expected_next_order_date(
    trained: redis.Redis, accounts: Accounts
) -> None:
    pid = next(iter(iter_profile_ids(trained, "acme")))
    before = predicted_traits(trained, "acme", [pid], NOW)[pid]
    assert (
        "predicted.expected_next_order_at"
        in with_predictions(load_profile(trained, "acme", pid, NOW), before).traits
    )
    user = load_profile(trained, "acme", pid, NOW).identities["user_id"][0]
    later = NOW + timedelta(days=2)
    apply(
        trained,
        accounts,
        ev("late-order", "order_completed", at=later, user_id=user, props={"revenue": 5.0}),
        now=later,
    )
    merged = with_predictions(load_profile(trained, "acme", pid, later), before)
    assert "predicted.expected_next_order_at" not in merged.traits
    assert merged.traits["predicted.churn_risk"] == before["predicted.churn_risk"]


def test_explain_shows_the_inputs_and_the_model_version(trained: redis.Redis) -> None:
    pid = next(iter(iter_profile_ids(trained, "acme")))
    found = explain(trained, "acme", pid, NOW)
    assert found is not None
    assert set(found["inputs"]) >= {"recency_days", "frequency", "age_days", "monetary_total"}
    assert found["model_version"] == store.current_meta(trained, "acme")["model_version"]
    assert explain(trained, "acme", "no-such-profile", NOW) is None


def test_below_the_minimum_nothing_is_predicted_and_the_reason_is_given(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    _store_customers(redis_client, accounts, 30, seed=9)
    result = train_account(redis_client, "acme", NOW)
    assert not result.trained
    assert any("customers with a repeat order" in m and "at least 100 needed" in m for m in result.missing)
    assert redis_client.exists(store.values_key("acme")) == 0


def test_backtest_reports_churn_auc_value_error_and_date_error(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    _store_customers(redis_client, accounts, 300, seed=21)
    found = backtest.report(redis_client, "acme", NOW, holdout_days=90, minimum=SMALL)
    assert found.missing == []
    m = found.metrics
    assert 0 <= m["churn_auc"] <= 1 and 0 <= m["churn_auc_baseline_days_since_last_order"] <= 1
    assert m["value_mae"] >= 0 and len(m["value_deciles"]) == 10
    assert m["next_order_customers"] > 0


def test_cli_train_and_report(redis_client: redis.Redis, accounts: Accounts) -> None:
    _register()
    _store_customers(redis_client, accounts, 120, seed=33)
    runner = CliRunner()
    with clock.frozen(NOW):
        refused = runner.invoke(cli, ["predict", "train", "--account", "acme"])
        assert refused.exit_code == 1 and "at least 100 needed" in refused.output
        done = runner.invoke(cli, ["predict", "train", "--account", "acme", "--min-repeat-customers", "10"])
        assert done.exit_code == 0, done.output
        assert "trained bgnbd-gg/1@" in done.output
        report = runner.invoke(cli, ["predict", "report", "--account", "acme", "--min-repeat-customers", "5"])
        assert report.exit_code == 0, report.output
        assert "churn_auc_baseline_days_since_last_order" in report.output
        unknown = runner.invoke(cli, ["predict", "train", "--account", "nope"])
        assert unknown.exit_code == 1 and "unknown account" in unknown.output


def test_the_daily_task_enqueues_each_account_once_a_day(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    from rq import Queue

    from connector.predict import jobs

    jobs._last_check[0] = None
    start = NOW
    assert jobs.daily(start) == 0  # the first check comes a minute after the scheduler starts
    first = jobs.daily(start + timedelta(seconds=61))
    assert first == len(list(accounts)) >= 1
    assert jobs.daily(start + timedelta(seconds=130)) == 0  # the day is claimed
    queued = Queue(jobs.PREDICT_QUEUE, connection=redis_client).jobs
    assert sorted(j.args[0] for j in queued) == sorted(a.id for a in accounts)
