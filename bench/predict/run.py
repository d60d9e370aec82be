"""bench/predict: training and scoring time on simulated customers, and churn AUC against the
"days since last order" baseline on simulated data with known churn.

    .venv/bin/python -m bench.predict.run [--customers 100000]

Training fits BG/NBD and Gamma-Gamma on the customers' sufficient statistics (2 years of orders);
scoring computes every trait and packs the stored records for the same customers (one core).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from connector.predict import models, train
from connector.predict.features import DAY, Summary
from tests.predict.simulate import simulate_bgnbd


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=100_000)
    args = parser.parse_args()
    n = args.customers
    truth = models.BgNbd(r=0.6, alpha=40.0, a=0.8, b=2.5)
    sim = simulate_bgnbd(truth, n=n, max_age=730.0, seed=1)
    rng = np.random.default_rng(2)
    mbar = np.where(sim.x > 0, rng.gamma(5.0, 8.0, size=n), 0.0)
    now = 1_700_000_000.0
    first = now - sim.T * DAY
    summary = Summary(
        [f"p{i}" for i in range(n)],
        first,
        first + sim.t_x * DAY,
        sim.x,
        sim.t_x,
        sim.T,
        mbar,
        mbar * (sim.x + 1),
        sim.x + 1,
    )
    t0 = time.perf_counter()
    fitted = train.fit(summary)
    t1 = time.perf_counter()
    scores = train.score(fitted, summary)
    records = train.pack_records(1, summary, scores)
    t2 = time.perf_counter()
    churned = ~sim.alive
    model_auc = models.auc(1.0 - scores.p_active, churned)
    base_auc = models.auc(sim.T - sim.t_x, churned)
    distinct = len(np.unique(np.column_stack([sim.x, sim.t_x, sim.T]), axis=0))
    print(f"customers: {n}, distinct (x, t_x, T) rows: {distinct}")
    print(f"fitted: {fitted.params()}")
    print(f"training (fit on sufficient statistics): {t1 - t0:.2f} s")
    per_million = (t2 - t1) * 1e6 / n
    print(f"scoring + packing {len(records)} records: {t2 - t1:.2f} s -> 1,000,000 ~ {per_million:.0f} s")
    print(
        f"churn AUC: model {model_auc:.3f}, baseline days since last order {base_auc:.3f}, "
        f"difference {model_auc - base_auc:+.3f} (true churn rate {churned.mean():.3f})"
    )


if __name__ == "__main__":
    main()
