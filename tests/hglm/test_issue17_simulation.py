"""Slow simulations with known truth for issue 17: prediction intervals for new levels, and
the negative binomial theta interval.

* Gaussian LMM: the prediction interval of a new observation (of a new group, and of a
  group seen in the fit) covers the simulated new observation 93-97 % of the time.
* Poisson and binomial GLMMs: the link-scale prediction interval for a new group covers
  that group's linear predictor x'beta + v_new 93-97 % of the time.
* NB2 with a normal random intercept: the 95 % Wald interval of log theta covers the true
  theta 85-99 % of the time (>= 50 replicates).

Coverage is counted over replicates x rows; every new row has its own new group, so rows
are independent given the fit.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import special

import hglm

pytestmark = pytest.mark.slow

BETA = (1.0, 0.5)


def _grouped(rng: np.random.Generator, n_groups: int, per: int, lam: float) -> pd.DataFrame:
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=n_groups * per)
    v = rng.normal(0, np.sqrt(lam), n_groups)
    return pd.DataFrame({"g": g, "x": x, "eta": BETA[0] + BETA[1] * x + v[g]}), v


def test_lmm_prediction_intervals_cover_new_observations() -> None:
    rng = np.random.default_rng(17)
    lam, phi, n_new = 0.8, 1.0, 20
    hits_new, hits_seen = [], []
    for _ in range(300):
        df, v = _grouped(rng, 30, 6, lam)
        df["y"] = df["eta"] + rng.normal(0, np.sqrt(phi), len(df))
        res = hglm.fit("y ~ x + (1|g)", df)
        x_new = rng.normal(size=n_new)
        new_groups = pd.DataFrame({"x": x_new, "g": 1000 + np.arange(n_new)})
        y_new = (
            BETA[0]
            + BETA[1] * x_new
            + rng.normal(0, np.sqrt(lam), n_new)
            + rng.normal(0, np.sqrt(phi), n_new)
        )
        pred = res.predict(new_groups, interval="prediction")
        hits_new.append((pred["lower"] <= y_new) & (y_new <= pred["upper"]))
        seen = rng.integers(0, 30, n_new)
        seen_rows = pd.DataFrame({"x": x_new, "g": seen})
        y_seen = BETA[0] + BETA[1] * x_new + v[seen] + rng.normal(0, np.sqrt(phi), n_new)
        pred = res.predict(seen_rows, interval="prediction")
        hits_seen.append((pred["lower"] <= y_seen) & (y_seen <= pred["upper"]))
    cover_new = float(np.mean(np.concatenate(hits_new)))
    cover_seen = float(np.mean(np.concatenate(hits_seen)))
    print(f"LMM prediction intervals: new groups {cover_new:.4f}, seen groups {cover_seen:.4f}")
    assert 0.93 <= cover_new <= 0.97, cover_new
    assert 0.93 <= cover_seen <= 0.97, cover_seen


@pytest.mark.parametrize("family", ["poisson", "binomial"])
def test_link_interval_covers_new_group_mean(family: str) -> None:
    rng = np.random.default_rng(18 if family == "poisson" else 20)
    lam, n_new = 0.5, 20
    hits = []
    for _ in range(150):
        df, _ = _grouped(rng, 40, 8, lam)
        if family == "poisson":
            df["y"] = rng.poisson(np.exp(df["eta"]))
            kw: dict = {}
        else:
            df["m"] = 20
            df["y"] = rng.binomial(20, special.expit(df["eta"] - 1.0))
            kw = {"trials": "m"}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = hglm.fit("y ~ x + (1|g)", df, family=family, **kw)
        x_new = rng.normal(size=n_new)
        eta_new = BETA[0] + BETA[1] * x_new + rng.normal(0, np.sqrt(lam), n_new)
        if family == "binomial":
            eta_new = eta_new - 1.0
        new = pd.DataFrame({"x": x_new, "g": 1000 + np.arange(n_new), "m": 20})
        pred = res.predict(new, type="link", interval="prediction")
        hits.append((pred["lower"] <= eta_new) & (eta_new <= pred["upper"]))
    cover = float(np.mean(np.concatenate(hits)))
    print(f"{family} link-scale prediction intervals, new groups: {cover:.4f}")
    assert 0.93 <= cover <= 0.97, cover


def test_negative_binomial_theta_interval_coverage() -> None:
    rng = np.random.default_rng(19)
    theta, lam = 2.0, 0.3
    hits = []
    for _ in range(60):
        df, _ = _grouped(rng, 30, 10, lam)
        mu = np.exp(df["eta"])
        df["y"] = rng.poisson(rng.gamma(theta, mu / theta))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = hglm.fit("y ~ x + (1|g)", df, family="nbinom2", reml=False)
        hits.append(res.theta["lower"] <= theta <= res.theta["upper"])
    cover = float(np.mean(hits))
    print(f"NB theta 95 % intervals: {cover:.3f} of {len(hits)}")
    assert 0.85 <= cover <= 0.99, cover
