"""Customers simulated from a BG/NBD process (numpy, fixed seed): the summary and who is still active."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from connector.predict.models import BgNbd


@dataclass
class Simulated:
    x: np.ndarray
    t_x: np.ndarray
    T: np.ndarray
    alive: np.ndarray  # still active at T (the known churn)
    purchases: list[np.ndarray]  # each customer's purchase times after the first (0 = the first)


def simulate_bgnbd(model: BgNbd, n: int, max_age: float, seed: int, horizon: float = 0.0) -> Simulated:
    """Ages uniform in [max_age/4, max_age]; purchases up to T + ``horizon`` (for hold-out tests)."""
    rng = np.random.default_rng(seed)
    lam = rng.gamma(model.r, 1.0 / model.alpha, size=n)
    p = rng.beta(model.a, model.b, size=n)
    T = rng.uniform(max_age / 4, max_age, size=n)
    x = np.zeros(n)
    t_x = np.zeros(n)
    alive = np.ones(n, dtype=bool)
    purchases: list[np.ndarray] = []
    for i in range(n):
        t, times, active = 0.0, [], True
        end = T[i] + horizon
        while True:
            t += rng.exponential(1.0 / lam[i])
            if t > end:
                break
            times.append(t)
            if rng.random() < p[i]:
                active = False
                break
        own = np.array(times)
        purchases.append(own)
        seen = own[own <= T[i]]
        x[i] = len(seen)
        t_x[i] = seen[-1] if len(seen) else 0.0
        alive[i] = active or len(own) > len(seen)  # dropped only after a purchase within T
    return Simulated(x, t_x, T, alive, purchases)
