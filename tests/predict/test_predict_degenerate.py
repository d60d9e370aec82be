"""Fits that must not become predictions, and values that must not be ranked: a degenerate training set
is refused with the reason and the previous predictions stay; a value that is not finite is no
prediction, takes no rank and leaves the tiers to split the others as documented."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
import redis
from click.testing import CliRunner

from connector import clock
from connector.cli.main import _register, cli
from connector.config import Accounts
from connector.predict import (
    backtest,
    explain,
    features,
    models,
    predicted_traits,
    store,
    train,
    with_predictions,
)
from connector.predict.features import DAY, Summary
from connector.predict.train import train_account
from connector.profiles import iter_profile_ids, load_profile
from rules import compile_rules, evaluate
from tests.predict.test_predict_training import NOW, SMALL, _store_customers
from tests.profile_helpers import apply, ev

TIERS = {  # value_tiers: (a, b] of the share from the top
    "value_tier_top": (0.0, 0.1),
    "value_tier_high": (0.1, 0.4),
    "value_tier_middle": (0.4, 0.8),
    "value_tier_bottom": (0.8, 1.0),
}


def _store_regular(conn: redis.Redis, accounts: Accounts, customers: int = 160, interval: int = 30) -> int:
    """Generated-looking orders: every customer ordering at the same interval, 4 orders each (5 for one
    customer in twelve), first orders spread over 130 to 329 days ago, one price per customer."""
    events = []
    for i in range(customers):
        first = NOW - timedelta(days=130 + (i * 37) % 200, hours=-10)
        for k in range(4 + (1 if i % 12 == 0 else 0)):
            events.append(
                ev(
                    f"r-{i}-{k}",
                    "order_completed",
                    at=first + timedelta(days=k * interval),
                    user_id=f"regular-{i}",
                    props={"order_id": f"r{i}-{k}", "revenue": 39.0 + 10 * (i % 5)},
                )
            )
    for start in range(0, len(events), 500):
        apply(conn, accounts, *events[start : start + 500], now=NOW)
    return len(events)


def _tiers(conn: redis.Redis, ids: list[str]) -> dict[str, set[str]]:
    traits = predicted_traits(conn, "acme", ids, NOW)
    rules = compile_rules({"include": ["value_tiers"]})
    out: dict[str, set[str]] = {name: set() for name in TIERS}
    for pid in ids:
        profile = load_profile(conn, "acme", pid, NOW)
        for seg in evaluate(with_predictions(profile, traits.get(pid)), rules, NOW).segments:
            out[seg].add(pid)
    return out


def _expected_split(n: int) -> dict[str, int]:
    """Tier sizes for n customers with distinct values: rank k (1 = largest) has share k / n."""
    return {name: sum(1 for k in range(1, n + 1) if a < k / n <= b) for name, (a, b) in TIERS.items()}


def _documented_tiers(conn: redis.Redis) -> dict[str, set[str]]:
    """The tiers as docs/predict.md defines them, computed here the slow way over the customers with a
    finite CLV: share = (1 + customers with a strictly larger CLV) / customers."""
    summary = train.load_summary(conn, "acme", NOW)
    clv = train.score(train.fit(summary), summary).clv
    finite = np.isfinite(clv)
    n = int(finite.sum())
    share = {
        pid: (1 + int((clv[finite] > clv[i]).sum())) / n for i, pid in enumerate(summary.ids) if finite[i]
    }
    return {name: {pid for pid, s in share.items() if a < s <= b} for name, (a, b) in TIERS.items()}


# -- refused fits ---------------------------------------------------------------------------------


def test_orders_at_the_same_interval_for_every_customer_are_refused_with_the_reason(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    orders = _store_regular(redis_client, accounts)
    assert orders == 654
    result = train_account(redis_client, "acme", NOW)  # the default minimum: 160 repeat customers, 329 days
    assert not result.trained
    assert "degenerate" in result.missing[0] and "same interval" in result.missing[0]
    assert result.missing[-1] == "no predictions are stored"
    assert redis_client.exists(store.values_key("acme"), store.meta_key("acme"), store.dist_key("acme")) == 0
    for pid in iter_profile_ids(redis_client, "acme"):
        assert explain(redis_client, "acme", pid, NOW) is None


@pytest.mark.parametrize("interval", [21, 45])
def test_the_refusal_does_not_depend_on_the_interval(
    redis_client: redis.Redis, accounts: Accounts, interval: int
) -> None:
    _store_regular(redis_client, accounts, interval=interval)
    result = train_account(redis_client, "acme", NOW)
    assert not result.trained and "degenerate" in result.missing[0]
    assert redis_client.exists(store.values_key("acme")) == 0


def test_a_refused_fit_leaves_the_previous_predictions_in_force(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    _store_regular(redis_client, accounts)
    ids = list(iter_profile_ids(redis_client, "acme"))
    previous = store.Record(
        generation=1,
        first=int((NOW - timedelta(days=200)).timestamp()),
        last=int((NOW - timedelta(days=20)).timestamp()),
        next_order=int((NOW + timedelta(days=10)).timestamp()),
        orders=4,
        x=3,
        rfm="444",
        p_active=0.9,
        expected_orders_90d=2.5,
        expected_order_value=40.0,
        predicted_clv=300.0,
        age_days=200.0,
        total=160.0,
        shares=(0.05, 0.5, 0.1, 0.3),
    ).pack()
    meta = {"model_version": "bgnbd-gg/1@2024-06-30T00:00:00Z#1", "generation": 1, "params": {}}
    store.write_training(redis_client, "acme", 1, meta, {ids[0]: previous}, {})
    redis_client.hset(store.meta_key("acme"), "generations", "1")

    result = train_account(redis_client, "acme", NOW)
    assert not result.trained
    assert result.missing[-1] == (
        "nothing new is stored: the predictions of bgnbd-gg/1@2024-06-30T00:00:00Z#1 stay in use"
    )
    assert store.current_meta(redis_client, "acme") == meta
    assert redis_client.hget(store.values_key("acme"), ids[0]) == previous
    assert redis_client.hlen(store.values_key("acme")) == 1
    assert predicted_traits(redis_client, "acme", ids, NOW)[ids[0]]["predicted.predicted_clv"] == 300.0


def test_cli_train_says_why_it_refused_and_what_to_do(redis_client: redis.Redis, accounts: Accounts) -> None:
    _register()
    _store_regular(redis_client, accounts)
    with clock.frozen(NOW):
        refused = CliRunner().invoke(cli, ["predict", "train", "--account", "acme"])
    assert refused.exit_code == 1
    assert "degenerate" in refused.output and "r = " in refused.output
    assert "real orders" in refused.output and "no predictions are stored" in refused.output
    assert "trained" not in refused.output


def test_the_backtest_refuses_the_same_fit(redis_client: redis.Redis, accounts: Accounts) -> None:
    _store_regular(redis_client, accounts)
    found = backtest.report(redis_client, "acme", NOW, holdout_days=30, minimum=SMALL)
    assert found.metrics == {}
    assert len(found.missing) == 1 and "degenerate" in found.missing[0]


def test_a_fit_that_cannot_score_its_own_customers_is_refused(
    trained_customers: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    _nan_clv_for(monkeypatch, lambda n: np.arange(n) % 10 == 0)  # 30 of 300: more than 1 %
    result = train_account(trained_customers, "acme", NOW, minimum=SMALL)
    assert not result.trained
    assert result.missing[0].startswith("the fitted model gives no finite prediction for 30 of 300 customers")


def test_non_finite_parameters_are_refused() -> None:
    summary = _summary([0.0, 2.0, 5.0], [0.0, 40.0, 100.0], [120.0, 150.0, 200.0])
    broken = train.Fitted(models.BgNbd(r=float("nan"), alpha=1.0, a=1.0, b=1.0), None)
    refused = train.refusal(broken, summary, train.score(broken, summary))
    assert refused is not None and refused.startswith("the purchase model could not be fitted")
    overflow = train.Fitted(models.BgNbd(r=float("inf"), alpha=float("inf"), a=1.0, b=1.0), None)
    assert train.refusal(overflow, summary, train.score(overflow, summary)) is not None


# -- values that are not finite -------------------------------------------------------------------


def test_top_share_ranks_finite_values_only_and_never_puts_nan_on_top() -> None:
    shares = models.top_share(np.array([np.nan, 1.0, 2.0, np.inf, 3.0, -np.inf]))
    assert np.isnan(shares[[0, 3, 5]]).all()
    assert shares[[1, 2, 4]].tolist() == pytest.approx([1.0, 2 / 3, 1 / 3])
    assert np.isnan(models.top_share(np.array([np.nan, np.nan]))).all()
    assert models.top_share(np.array([])).tolist() == []


def test_auc_leaves_out_scores_that_are_not_finite() -> None:
    labels = np.array([False, True, True, False, True])
    scores = np.array([0.1, 0.9, np.nan, 0.5, np.inf])
    assert models.auc(scores, labels) == pytest.approx(1.0)


@pytest.fixture
def trained_customers(redis_client: redis.Redis, accounts: Accounts) -> redis.Redis:
    _store_customers(redis_client, accounts, 300, seed=5)
    return redis_client


def _nan_clv_for(monkeypatch: pytest.MonkeyPatch, which: Any) -> None:
    """Make the CLV of the customers ``which(n)`` selects NaN, as a numerical breakdown would."""
    original = models.clv

    def clv(*args: Any, **kwargs: Any) -> np.ndarray:
        values = original(*args, **kwargs).copy()
        values[which(len(values))] = np.nan
        return values

    monkeypatch.setattr(models, "clv", clv)


def test_a_customer_without_a_finite_prediction_is_not_stored_or_ranked(
    trained_customers: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    conn = trained_customers
    _nan_clv_for(monkeypatch, lambda n: np.isin(np.arange(n), [0, 7]))  # 2 of 300: within 1 %
    result = train_account(conn, "acme", NOW, minimum=SMALL)
    assert result.trained, result.missing
    ids = list(iter_profile_ids(conn, "acme"))
    stored = {k.decode() for k in conn.hkeys(store.values_key("acme"))}
    unscored = [pid for pid in ids if pid not in stored]
    assert len(unscored) == 2 and len(stored) == 298
    traits = predicted_traits(conn, "acme", ids, NOW)
    assert all(pid not in traits for pid in unscored)
    assert all(explain(conn, "acme", pid, NOW) is None for pid in unscored)
    # ranks over the 298 scored customers: the best has 1/298, nobody shares it
    clv_shares = sorted(t["predicted.rank.predicted_clv"] for t in traits.values())
    assert clv_shares[0] == pytest.approx(1 / 298, abs=1e-6) and clv_shares[1] > clv_shares[0]
    assert clv_shares[-1] == pytest.approx(1.0)
    dist = store.distributions(conn, "acme")["predicted_clv"]
    assert dist["n"] == 298 and all(np.isfinite(dist["quantiles"]))
    tiers = _tiers(conn, ids)
    assert not any(pid in members for pid in unscored for members in tiers.values())
    assert tiers == _documented_tiers(conn)  # the model still gives those two NaN here
    assert sum(len(m) for m in tiers.values()) == 298
    sizes = {name: len(members) for name, members in tiers.items()}
    for name, size in _expected_split(298).items():
        assert abs(sizes[name] - size) <= 5, sizes
    assert result.meta is not None and result.meta["customers"] == 300 and result.meta["scored"] == 298


def test_tiers_split_as_documented_on_a_healthy_fit(trained_customers: redis.Redis) -> None:
    conn = trained_customers
    result = train_account(conn, "acme", NOW, minimum=SMALL)
    assert result.trained, result.missing
    ids = list(iter_profile_ids(conn, "acme"))
    tiers = _tiers(conn, ids)
    assert tiers == _documented_tiers(conn)
    assert sum(len(m) for m in tiers.values()) == 300 and set().union(*tiers.values()) == set(ids)
    # close to the exact 30 / 90 / 120 / 60 (ties in CLV, e.g. one-time buyers of the same age, move a few)
    sizes = {name: len(members) for name, members in tiers.items()}
    for name, size in _expected_split(300).items():
        assert abs(sizes[name] - size) <= 5, sizes


def test_a_stored_record_with_values_that_are_not_finite_is_no_prediction(
    redis_client: redis.Redis, accounts: Accounts
) -> None:
    """Records a degenerate training stored before such fits were refused: NaN values, rank 1/190."""
    apply(
        redis_client,
        accounts,
        ev("o-1", "order_completed", at=NOW - timedelta(days=3), user_id="u-1"),
        now=NOW,
    )
    pid = next(iter(iter_profile_ids(redis_client, "acme")))
    nan = float("nan")
    record = store.Record(
        generation=1,
        first=int((NOW - timedelta(days=3)).timestamp()),
        last=int((NOW - timedelta(days=3)).timestamp()),
        next_order=0,
        orders=1,
        x=0,
        rfm="511",
        p_active=1.0,
        expected_orders_90d=nan,
        expected_order_value=39.0,
        predicted_clv=nan,
        age_days=3.0,
        total=39.0,
        shares=(1 / 190, 1 / 190, 1 / 190, 1 / 190),
    )
    meta = {"model_version": "bgnbd-gg/1@2024-06-30T00:00:00Z#1", "generation": 1, "params": {}}
    store.write_training(redis_client, "acme", 1, meta, {pid: record.pack()}, {})
    assert predicted_traits(redis_client, "acme", [pid], NOW) == {}
    assert explain(redis_client, "acme", pid, NOW) is None
    assert not any(_tiers(redis_client, [pid]).values())


# -- values the record cannot hold ----------------------------------------------------------------


def _summary(x: list[float], t_x: list[float], T: list[float], mbar: float = 40.0) -> Summary:
    end = NOW.timestamp()
    xs, txs, Ts = np.array(x), np.array(t_x), np.array(T)
    first = end - Ts * DAY
    m = np.where(xs > 0, mbar, 0.0)
    return Summary(
        [f"p{i}" for i in range(len(x))], first, first + txs * DAY, xs, txs, Ts, m, m * (xs + 1), xs + 1
    )


def test_an_expected_next_order_date_past_what_the_record_holds_is_none() -> None:
    # a small r (customers very unlike each other): a one-time buyer's median gap is thousands of years
    summary = _summary([0.0, 3.0], [0.0, 90.0], [400.0, 400.0])
    fitted = train.Fitted(models.BgNbd(r=0.05, alpha=5.0, a=0.8, b=2.5), None)
    scores = train.score(fitted, summary)
    assert scores.next_order[0] > 2**32
    records = {pid: store.Record.unpack(raw) for pid, raw in train.pack_records(1, summary, scores).items()}
    assert records["p0"].next_order == 0 and records["p0"].traits()["expected_next_order_at"] is None
    assert records["p1"].next_order == int(scores.next_order[1])


def test_a_degenerate_spend_fit_falls_back_to_each_customers_own_mean() -> None:
    # every repeat order at one price: the spend model's shapes run off (q ~ 1e15)
    summary = _summary([1.0, 2.0, 3.0] * 20 + [0.0] * 10, [30.0, 60.0, 90.0] * 20 + [0.0] * 10, [200.0] * 70)
    fitted = train.fit(summary)
    assert fitted.spend is None and "gamma_gamma" not in fitted.params()
    assert train.score(fitted, summary).spend[:3].tolist() == pytest.approx([40.0, 40.0, 40.0])


def test_a_revenue_that_is_not_finite_counts_as_zero() -> None:
    assert features._value({"revenue": float("inf")}) == 0.0
    assert features._value({"revenue": float("-inf")}) == 0.0
    assert features._value({"revenue": 12.5}) == 12.5


def test_the_meta_of_a_training_is_plain_json(trained_customers: redis.Redis) -> None:
    train_account(trained_customers, "acme", NOW, minimum=SMALL)
    raw = trained_customers.hget(store.meta_key("acme"), "g:1")
    json.loads(raw, parse_constant=lambda name: pytest.fail(f"{name} in the meta"))
