"""res.simulate: responses drawn from a fitted HGLM have the model's moments.

Each model is fitted to data, then 2000 response vectors are drawn from the fit; the mean,
variance (and within-group covariance) of the draws are compared with the values the
fitted parameters imply, computed here in closed form or by numerical integration. A
statistic s_r computed per replicate is iid over replicates, so its Monte Carlo standard
error is std(s_r) / sqrt(R)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import integrate, special, stats

import hglm
from hglm.families import random_family

R = 2000
N_GROUPS, N_PER = 12, 4


def _fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(*args, **kwargs)


def _data(seed, family, rand, lam=0.3, trials=None):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(N_GROUPS), N_PER)
    df = pd.DataFrame({"g": g})
    rf = random_family(rand)
    u = rf.sample_u(lam, N_GROUPS, rng)
    v = u if rf.name == "normal" else rf.link.fun(u)
    eta = 0.4 + v[g]
    if family == "gaussian":
        df["y"] = eta + rng.normal(0, 0.7, len(g))
    elif family == "poisson":
        df["y"] = rng.poisson(np.exp(eta))
    elif family == "binomial":
        df["m"] = trials
        df["y"] = rng.binomial(trials, special.expit(eta))
    else:
        df["y"] = np.exp(eta) * rng.gamma(3, 1 / 3, len(g))
    return df


def _close(draws_stat: np.ndarray, expected: float, k: float = 4.0) -> None:
    se = draws_stat.std(ddof=1) / np.sqrt(len(draws_stat))
    assert abs(draws_stat.mean() - expected) < k * se + 1e-12, (draws_stat.mean(), expected, se)


def _params(res):
    return float(res.fixef["estimate"].iloc[0]), float(res.varcomp["lambda"].iloc[0]), res.phi


def _check_moments(sims: np.ndarray, mean: float, var: float) -> None:
    _close(sims.mean(axis=1), mean)
    _close(((sims - mean) ** 2).mean(axis=1), var)


def test_normal_normal_moments_and_within_group_covariance():
    res = _fit("y ~ 1 + (1|g)", _data(1, "gaussian", "normal"), method="HL(0,1)")
    b0, lam, phi = _params(res)
    sims = res.simulate(R, seed=10)
    assert sims.shape == (R, N_GROUPS * N_PER)
    _check_moments(sims, b0, phi + lam)
    dev = sims - b0
    # rows 0 and 1 share group 0: their covariance is lambda; rows 0 and 4 do not
    _close(dev[:, 0] * dev[:, 1], lam)
    _close(dev[:, 0] * dev[:, N_PER], 0.0)


def test_poisson_gamma_is_negative_binomial():
    res = _fit("y ~ 1 + (1|g)", _data(2, "poisson", "gamma"), family="poisson", rand_family="gamma")
    b0, lam, _ = _params(res)
    sims = res.simulate(R, seed=11)
    assert np.all(sims >= 0) and np.all(sims == np.round(sims))
    mu = np.exp(b0)
    _check_moments(sims, mu, mu + lam * mu**2)


def test_binomial_beta_draws_counts_with_beta_binomial_moments():
    trials = 7
    res = _fit(
        "y ~ 1 + (1|g)",
        _data(3, "binomial", "beta", trials=trials),
        family="binomial",
        trials="m",
        rand_family="beta",
    )
    b0, lam, _ = _params(res)
    s = 1 / (2 * lam)

    def moment(k):
        return integrate.quad(
            lambda u: special.expit(b0 + special.logit(u)) ** k * stats.beta.pdf(u, s, s), 0, 1
        )[0]

    p1, p2 = moment(1), moment(2)
    sims = res.simulate(R, seed=12)
    assert np.all((sims >= 0) & (sims <= trials)) and np.all(sims == np.round(sims))
    # Var(k) = m E[p(1-p)] + m^2 Var(p)
    _check_moments(sims, trials * p1, trials * (p1 - p2) + trials**2 * (p2 - p1**2))


def test_gamma_inverse_gamma_moments():
    df = _data(4, "gamma", "inverse_gamma(log)", lam=0.15)
    res = _fit("y ~ 1 + (1|g)", df, family="gamma(log)", rand_family="inverse_gamma(log)")
    b0, lam, phi = _params(res)
    a = 1 / lam
    assert a > 4  # finite fourth moment: the variance check is meaningful
    sims = res.simulate(R, seed=13)
    assert np.all(sims > 0)
    mu = np.exp(b0)
    eu2 = a / (a - 1)  # E u^2 for u ~ IG(1 + a, a)
    _check_moments(sims, mu, mu**2 * (eu2 * (1 + phi) - 1))


def test_gamma_glmm_with_normal_random_effects():
    res = _fit("y ~ 1 + (1|g)", _data(5, "gamma", "normal"), family="gamma(log)")
    b0, lam, _ = _params(res)
    sims = res.simulate(R, seed=14)
    _close(sims.mean(axis=1), np.exp(b0 + lam / 2))


def test_binary_binomial_gives_zeros_and_ones():
    res = _fit("y ~ 1 + (1|g)", _data(6, "binomial", "normal", trials=1), family="binomial")
    sims = res.simulate(50, seed=15)
    assert set(np.unique(sims)) <= {0.0, 1.0}


def test_conditional_draws_centre_on_the_fitted_means():
    trials = 5
    res = _fit(
        "y ~ 1 + (1|g)",
        _data(7, "binomial", "normal", trials=trials),
        family="binomial",
        trials="m",
    )
    sims = hglm.simulate_responses(res, R, seed=16, new_random_effects=False)
    for i in (0, 5, 17):
        _close(sims[:, i], trials * res.fitted[i])


def test_seed_reproducibility_and_bad_n():
    res = _fit("y ~ 1 + (1|g)", _data(8, "gaussian", "normal"), method="HL(0,1)")
    np.testing.assert_array_equal(res.simulate(3, seed=1), res.simulate(3, seed=1))
    assert not np.array_equal(res.simulate(3, seed=1), res.simulate(3, seed=2))
    with pytest.raises(ValueError, match="positive number of replicates"):
        res.simulate(0)
