"""Quasi-likelihood phi for Poisson and binomial responses (disp=, as R hglm; issue 17).

R hglm estimates phi by a gamma GLM (log link) of d_i / (1 - q_i) with prior weights
(1 - q_i) / 2 (d_i: unit deviances, q_i: leverages of the data rows in the augmented GLM).
With an intercept only, the gamma GLM's ML mean is the weighted mean

    phi = sum_i (1 - q_i)/2 * d_i/(1 - q_i) / sum_i (1 - q_i)/2 = D / (n - sum_i q_i),

the deviance over its effective residual degrees of freedom. Without random effects the
leverages are the GLM's hat values (sum p), so phi = D / (n - p): statsmodels' GLM scale
with scale="dev".
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import special

import hglm


def _overdispersed_counts(
    seed: int, n_groups: int = 30, per: int = 10, phi: float = 2.0, intercept: float = 1.2
):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), per)
    x = rng.normal(size=n_groups * per)
    mu = np.exp(intercept + 0.4 * x + rng.normal(0, 0.4, n_groups)[g])
    # phi * Poisson(mu / phi): mean mu, variance phi * mu
    y = phi * rng.poisson(mu / phi)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def test_no_random_effect_limit_is_deviance_over_residual_df() -> None:
    df = _overdispersed_counts(1)
    res = hglm.fit("y ~ x", df, family="poisson", disp="~ 1", method="EQL")
    glm = sm.GLM(df["y"], sm.add_constant(df["x"]), family=sm.families.Poisson()).fit(scale="dev")
    assert res.phi == pytest.approx(glm.scale, rel=1e-6)
    np.testing.assert_allclose(res.fixef["estimate"], glm.params, rtol=1e-6)
    np.testing.assert_allclose(res.fixef["se"], glm.bse, rtol=1e-5)


def test_quasibinomial_no_random_effect_limit() -> None:
    rng = np.random.default_rng(2)
    n = 200
    x = rng.normal(size=n)
    m = rng.integers(5, 30, n)
    p = special.expit(-0.3 + 0.8 * x + rng.normal(0, 0.5, n))  # extra-binomial variation
    k = rng.binomial(m, p)
    df = pd.DataFrame({"k": k, "m": m, "x": x})
    res = hglm.fit("k ~ x", df, family="quasibinomial", trials="m", method="EQL")
    glm = sm.GLM(
        np.column_stack([k, m - k]), sm.add_constant(x), family=sm.families.Binomial()
    ).fit(scale="dev")
    assert res.phi == pytest.approx(glm.scale, rel=1e-6)
    assert res.phi > 1.2


def test_phi_with_random_effects_is_deviance_over_effective_df() -> None:
    df = _overdispersed_counts(3)
    res = hglm.fit("y ~ x + (1|g)", df, family="poisson", disp="~ 1", method="EQL")
    assert res.converged
    d = res.design
    dev = d.family.deviance(d.y, res.fitted, d.prior_weights)
    hand = float(np.sum(dev) / np.sum(1 - res.leverages))
    # EQL stops when eta settles (1e-6); phi then agrees with its fixed point to about that
    assert res.phi == pytest.approx(hand, rel=1e-4)
    assert 1.5 < res.phi < 2.6  # simulated with phi = 2
    # no likelihoods, like R
    assert all(np.isnan(v) for v in res.likelihood.values())
    assert all(v is None for v in res.to_dict()["likelihood"].values())
    assert "not available" in res.summary()
    assert res.to_dict()["likelihood_note"]


def test_phi_recovers_simulated_overdispersion() -> None:
    # deviance-based phi is unbiased only for means well above 1 (the counts here are 3 x
    # Poisson(mu / 3) with mu around 20)
    estimates = []
    for seed in range(5):
        df = _overdispersed_counts(100 + seed, n_groups=60, per=20, phi=3.0, intercept=3.0)
        res = hglm.fit("y ~ x + (1|g)", df, family="quasipoisson", method="EQL")
        estimates.append(res.phi)
    assert np.mean(estimates) == pytest.approx(3.0, rel=0.08)


def test_quasi_needs_eql_and_nb_refuses_disp() -> None:
    df = _overdispersed_counts(4)
    with pytest.raises(ValueError, match="EQL"):
        hglm.fit("y ~ x + (1|g)", df, family="poisson", disp="~ 1")
    with pytest.raises(ValueError, match="theta"):
        hglm.fit("y ~ x + (1|g)", df, family="nbinom2", disp="~ 1")


def test_solve_refuses_hl_for_a_quasi_model() -> None:
    res = hglm.fit("y ~ x + (1|g)", _overdispersed_counts(5), family="quasipoisson", method="EQL")
    with pytest.raises(ValueError, match="EQL only"):
        hglm.solve(res.model, "HL(1,1)")
    again = hglm.solve(res.model, "EQL")
    assert again.disp.gamma[0] == pytest.approx(np.log(res.phi), rel=1e-10)


def test_summary_of_models_without_random_terms() -> None:
    """A GLM (no random terms) has a summary too (it raised KeyError before)."""
    df = _overdispersed_counts(6)
    quasi = hglm.fit("y ~ x", df, family="quasipoisson", method="EQL")
    text = quasi.summary()
    assert "not available" in text and "random effects" not in text
    plain = hglm.fit("y ~ x", df, family="poisson")
    assert "p_v(h) = " in plain.summary()
    assert plain.varcomp.empty
