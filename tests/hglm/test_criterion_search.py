"""The outer search of the HL fits: the predicted start of the inner IWLS and the scaled
quasi-Newton search change how fast the optimum is reached, not where it is."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hglm
from hglm.criterion import Criterion, is_stationary, maximise
from hglm.eql import fit_eql

from .conftest import load_dataset

CBPP = load_dataset("cbpp")


def _fit(data, formula, family, **kw) -> hglm.HGLMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(formula, data, family=family, method="HL(1,1)", **kw)


@pytest.fixture(scope="module")
def poisson_fit() -> hglm.HGLMResult:
    rng = np.random.default_rng(3)
    g = np.repeat(np.arange(40), 6)
    x = rng.normal(size=len(g))
    y = rng.poisson(np.exp(0.3 + 0.4 * x + rng.normal(0, 0.6, 40)[g]))
    data = pd.DataFrame({"y": y, "x": x, "g": g.astype(str)})
    return _fit(data, "y ~ x + (1|g)", "poisson", reml=False)


@pytest.fixture(scope="module")
def gamma_fit() -> hglm.HGLMResult:
    semi = load_dataset("semiconductor")
    return _fit(semi, "y ~ x1 + x3 + (1|Device)", "gamma", link="log", reml=True)


def _criterion(res: hglm.HGLMResult) -> tuple[Criterion, np.ndarray]:
    joint = not res.reml
    crit = Criterion(
        res.model,
        res.outcome.disp,
        res.outcome.mean,
        "p_v" if joint else "p_beta_v",
        beta_free=joint,
    )
    theta = res.outcome.disp.theta()
    x = np.concatenate([res.outcome.mean.beta, theta]) if joint else theta
    return crit, x


@pytest.mark.parametrize("which", ["poisson_fit", "gamma_fit"])
def test_tangent_is_the_derivative_of_the_mode(which, request) -> None:
    res = request.getfixturevalue(which)
    crit, x = _criterion(res)
    crit.value_and_gradient(x)
    _, t_beta, t_v = crit._tangent
    h = 1e-5
    for j in range(len(x)):
        e = np.zeros(len(x))
        e[j] = h
        up, down = (
            Criterion(crit.model, crit.base, crit.fit, crit.which, crit.beta_free) for _ in range(2)
        )
        fit_up, _ = up.solve(x + e)
        fit_down, _ = down.solve(x - e)
        dv = (np.concatenate(fit_up.v) - np.concatenate(fit_down.v)) / (2 * h)
        np.testing.assert_allclose(t_v[:, j], dv, rtol=1e-4, atol=1e-6)
        if t_beta is not None:
            np.testing.assert_allclose(
                t_beta[:, j], (fit_up.beta - fit_down.beta) / (2 * h), rtol=1e-4, atol=1e-6
            )


@pytest.mark.parametrize("which", ["poisson_fit", "gamma_fit"])
def test_a_predicted_start_gives_the_same_criterion(which, request) -> None:
    res = request.getfixturevalue(which)
    crit, x = _criterion(res)
    crit.value_and_gradient(x)
    step = np.full(len(x), 0.05)
    warm = crit.value_and_gradient(x + step)
    cold_crit, _ = _criterion(res)
    cold = cold_crit.value_and_gradient(x + step)
    assert warm[0] == pytest.approx(cold[0], abs=1e-9)
    np.testing.assert_allclose(warm[1], cold[1], rtol=1e-6, atol=1e-8)


def test_scaled_search_finds_the_unscaled_optimum() -> None:
    res = _fit(CBPP, "incidence ~ period + (1|herd)", "binomial", trials="size", reml=False)
    crit, x_hat = _criterion(res)
    bounds = [(None, None)] * len(x_hat)
    start = x_hat + 0.3
    plain = maximise(crit, start, bounds)
    assert is_stationary(crit, plain, bounds)
    scaled = maximise(crit, start, bounds, scale=np.array([0.2, 0.3, 0.3, 0.3, 0.5]))
    assert is_stationary(crit, scaled, bounds)
    assert crit(scaled.x) == pytest.approx(crit(plain.x), abs=1e-7)
    assert crit(scaled.x) == pytest.approx(res.likelihood["p_v"], abs=1e-7)


def test_an_eql_start_skips_only_the_final_likelihoods() -> None:
    res = _fit(CBPP, "incidence ~ period + (1|herd)", "binomial", trials="size", reml=False)
    full = fit_eql(res.model)
    start = fit_eql(res.model, start_only=True)
    np.testing.assert_array_equal(start.mean.beta, full.mean.beta)
    np.testing.assert_array_equal(start.disp.theta(), full.disp.theta())
    np.testing.assert_array_equal(start.cov_beta, full.cov_beta)
    assert np.isnan(start.likelihood.p_v) and np.isfinite(full.likelihood.p_v)
