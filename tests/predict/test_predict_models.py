"""The models reproduce the published CDNOW estimates and recover known parameters from simulations."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from connector.predict import models
from tests.predict.simulate import simulate_bgnbd

DATA = Path(__file__).parent / "data" / "cdnow_summary.csv"


@pytest.fixture(scope="module")
def cdnow() -> dict[str, np.ndarray]:
    with DATA.open() as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in ("x", "t_x", "T", "zbar")}


def test_cdnow_data_is_the_published_sample(cdnow: dict[str, np.ndarray]) -> None:
    assert len(cdnow["x"]) == 2357
    assert cdnow["x"].sum() == 2457
    assert (cdnow["x"] > 0).sum() == 946


def test_bgnbd_reproduces_fader_hardie_lee_on_cdnow(cdnow: dict[str, np.ndarray]) -> None:
    fit = models.BgNbd.fit(cdnow["x"], cdnow["t_x"], cdnow["T"])
    # FHL 2005: r = 0.243, alpha = 4.414, a = 0.793, b = 2.426 (rounded to 3 decimals)
    assert fit.r == pytest.approx(0.243, abs=0.0005)
    assert fit.alpha == pytest.approx(4.414, abs=0.0005)
    assert fit.a == pytest.approx(0.793, abs=0.0005)
    assert fit.b == pytest.approx(2.426, abs=0.0005)
    # the worked example of the BG/NBD literature (customer 1: x=2, t_x=30.43, T=38.86): 1.226 expected
    # purchases in the next 39 weeks
    one = fit.expected_purchases(39, np.array([2.0]), np.array([30.43]), np.array([38.86]))
    assert one[0] == pytest.approx(1.226, abs=0.001)


def test_gamma_gamma_reproduces_the_published_cdnow_estimates(cdnow: dict[str, np.ndarray]) -> None:
    fit = models.GammaGamma.fit(cdnow["x"], cdnow["zbar"])
    # Fader & Hardie's Gamma-Gamma note: p = 6.25, q = 3.74, gamma = 15.44
    assert fit.p == pytest.approx(6.25, abs=0.005)
    assert fit.q == pytest.approx(3.74, abs=0.005)
    assert fit.gamma == pytest.approx(15.44, abs=0.01)
    keep = cdnow["x"] > 0
    ours = models.GammaGamma.log_likelihood(
        np.array([fit.p, fit.q, fit.gamma]), cdnow["x"][keep], cdnow["zbar"][keep]
    )
    theirs = models.GammaGamma.log_likelihood(
        np.array([6.25, 3.74, 15.44]), cdnow["x"][keep], cdnow["zbar"][keep]
    )
    assert ours.sum() >= theirs.sum()
    # the note's population mean spend p*gamma/(q-1) = 35.1
    assert fit.expected_spend(np.array([0.0]), np.array([0.0]))[0] == pytest.approx(35.1, abs=0.1)


def test_bgnbd_recovers_the_parameters_it_was_simulated_with() -> None:
    truth = models.BgNbd(r=0.5, alpha=20.0, a=0.8, b=3.0)
    sim = simulate_bgnbd(truth, n=20000, max_age=365.0, seed=7)
    fit = models.BgNbd.fit(sim.x, sim.t_x, sim.T)
    assert fit.r == pytest.approx(truth.r, rel=0.1)
    assert fit.alpha == pytest.approx(truth.alpha, rel=0.15)
    assert fit.a == pytest.approx(truth.a, rel=0.2)
    assert fit.b == pytest.approx(truth.b, rel=0.25)


def test_gamma_gamma_recovers_the_parameters_it_was_simulated_with() -> None:
    rng = np.random.default_rng(11)
    p, q, gamma = 6.0, 4.0, 15.0
    x = rng.integers(1, 8, size=20000).astype(float)
    nu = rng.gamma(q, 1.0 / gamma, size=x.size)
    mbar = np.array([rng.gamma(p, 1.0 / v, size=int(k)).mean() for v, k in zip(nu, x, strict=True)])
    fit = models.GammaGamma.fit(x, mbar)
    assert fit.p == pytest.approx(p, rel=0.1)
    assert fit.q == pytest.approx(q, rel=0.1)
    assert fit.gamma == pytest.approx(gamma, rel=0.15)


def test_churn_risk_beats_days_since_last_order_on_simulated_known_churn() -> None:
    truth = models.BgNbd(r=0.5, alpha=20.0, a=0.8, b=3.0)
    sim = simulate_bgnbd(truth, n=20000, max_age=365.0, seed=3)
    fit = models.BgNbd.fit(sim.x, sim.t_x, sim.T)
    churned = ~sim.alive
    model_auc = models.auc(1.0 - fit.p_alive(sim.x, sim.t_x, sim.T), churned)
    baseline_auc = models.auc(sim.T - sim.t_x, churned)
    assert model_auc is not None and baseline_auc is not None
    assert model_auc >= baseline_auc + 0.05


def test_rfm_scores_and_top_shares() -> None:
    scores = models.rfm(
        np.array([1.0, 400.0, 30.0, 90.0, 10.0]),
        np.array([9.0, 1, 3, 2, 5]),
        np.array([900.0, 10, 50, 20, 300]),
    )
    assert scores[0] == "555"  # most recent, most orders, most money
    assert scores[1] == "111"
    shares = models.top_share(np.array([10.0, 50.0, 50.0, 1.0]))
    assert shares.tolist() == [0.75, 0.25, 0.25, 1.0]


def test_auc_counts_ties_half_and_needs_both_classes() -> None:
    assert models.auc(np.array([0.1, 0.9, 0.5, 0.5]), np.array([False, True, True, False])) == pytest.approx(
        0.875
    )
    assert models.auc(np.array([0.1, 0.2]), np.array([True, True])) is None
