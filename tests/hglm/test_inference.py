"""hglm.inference: likelihood-ratio tests, profile intervals and the parametric bootstrap.

The linear mixed model is the anchor: its REML and ML log-likelihoods have a dense closed
form (V = phi I + lambda Z Z'), computed here independently of the engine, so the LRT
statistics and the profile limits can be checked against it exactly."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.optimize
import statsmodels.api as sm
from scipy import stats

import hglm
from hglm.inference import chibar_pvalue, chibar_weights, intervals, lrt, profile_ci, resampling

CHI2_95 = float(stats.chi2.ppf(0.95, 1))


# ----------------------------------------------------------- dense LMM reference


def _dense_loglik(y, X, Z, phi, lam, reml):
    V = phi * np.eye(len(y)) + lam * Z @ Z.T
    Vi = np.linalg.inv(V)
    XtViX = X.T @ Vi @ X
    beta = np.linalg.solve(XtViX, X.T @ Vi @ y)
    r = y - X @ beta
    ll = -0.5 * (np.linalg.slogdet(V)[1] + r @ Vi @ r)
    if reml:
        return ll - 0.5 * ((len(y) - X.shape[1]) * np.log(2 * np.pi) + np.linalg.slogdet(XtViX)[1])
    return ll - 0.5 * len(y) * np.log(2 * np.pi)


def dense_max(y, X, Z, reml, log_lam=None):
    """Maximum of the (RE)ML log-likelihood over log phi (and log lambda unless given;
    Z=None: the linear model, lambda = 0)."""

    def negll(t):
        lam = 0.0 if Z is None else float(np.exp(t[1] if log_lam is None else log_lam))
        return -_dense_loglik(
            y, X, Z if Z is not None else np.zeros((len(y), 1)), np.exp(t[0]), lam, reml
        )

    x0 = [0.0] if (Z is None or log_lam is not None) else [0.0, 0.0]
    best = scipy.optimize.minimize(
        negll, x0, method="Nelder-Mead", options={"xatol": 1e-9, "fatol": 1e-12, "maxiter": 4000}
    )
    return -best.fun


def lmm_data(seed, n_groups=12, n_per=5, lam=1.0, slope=0.5):
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(n_groups), n_per)
    df = pd.DataFrame({"g": [f"g{i:02d}" for i in g], "x": rng.normal(size=len(g))})
    df["y"] = (
        1 + slope * df["x"] + rng.normal(0, np.sqrt(lam), n_groups)[g] + rng.normal(size=len(g))
    )
    Z = (g[:, None] == np.arange(n_groups)[None, :]).astype(float)
    return df, Z


def fit(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(*args, **kwargs)


@pytest.fixture(scope="module")
def lmm():
    df, Z = lmm_data(3)
    return df, Z, fit("y ~ x + (1|g)", df, method="HL(0,1)"), fit("y ~ x", df, method="HL(0,1)")


# ------------------------------------------------------------ chi-bar-square


def test_chibar_weights_are_binomial():
    assert chibar_weights(1).tolist() == [0.5, 0.5]
    assert chibar_weights(2).tolist() == [0.25, 0.5, 0.25]
    assert chibar_weights(3).sum() == pytest.approx(1.0)


def test_chibar_pvalue_one_component_halves_chi2_1():
    for t in (0.1, 1.0, 2.71, 5.0):
        assert chibar_pvalue(t, 0, 1) == pytest.approx(0.5 * stats.chi2.sf(t, 1))
    assert chibar_pvalue(0.0, 0, 1) == 1.0
    # one component plus two fixed effects: 0.5 chi2_2 + 0.5 chi2_3
    assert chibar_pvalue(4.0, 2, 1) == pytest.approx(
        0.5 * stats.chi2.sf(4, 2) + 0.5 * stats.chi2.sf(4, 3)
    )


# ------------------------------------------------------------------ LRT


@pytest.mark.parametrize(
    ("family", "sm_family"),
    [
        ("gamma(log)", sm.families.Gamma(sm.families.links.Log())),
        ("poisson", sm.families.Poisson()),
        ("binomial", sm.families.Binomial()),
    ],
)
def test_no_random_term_fits_the_plain_glm(family, sm_family):
    rng = np.random.default_rng(5)
    df = pd.DataFrame({"x": rng.normal(size=60)})
    mu = np.exp(0.3 + 0.4 * df["x"])
    df["y"] = {
        "gamma(log)": mu * rng.gamma(4, 1 / 4, 60),
        "poisson": rng.poisson(mu),
        "binomial": rng.binomial(1, mu / (1 + mu)),
    }[family]
    res = fit("y ~ x", df, family=family, method="HL(1,1)")
    assert res.converged
    ref = sm.GLM(df["y"], sm.add_constant(df["x"]), family=sm_family).fit()
    np.testing.assert_allclose(res.fixef["estimate"].to_numpy(), ref.params.to_numpy(), rtol=1e-5)


def test_lrt_variance_component_matches_dense_reml(lmm):
    df, Z, r1, r0 = lmm
    X = np.column_stack([np.ones(len(df)), df["x"]])
    y = df["y"].to_numpy()
    expected = 2 * (dense_max(y, X, Z, reml=True) - dense_max(y, X, None, reml=True))
    test = lrt(r0, r1)
    assert test.criterion == "p_beta_v"
    assert test.statistic == pytest.approx(expected, rel=1e-4, abs=1e-4)
    assert test.df == 1 and test.n_boundary == 1
    assert test.pvalue == pytest.approx(0.5 * stats.chi2.sf(expected, 1), rel=1e-3)
    assert test.naive_pvalue == pytest.approx(stats.chi2.sf(expected, 1), rel=1e-3)
    assert "chi-bar-square" in test.method and "0.5 chi2_0 + 0.5 chi2_1" in test.method


def test_lrt_fixed_effect_on_p_v_matches_dense_ml(lmm):
    df, Z, _, _ = lmm
    big = fit("y ~ x + (1|g)", df, method="HL(1,1)", reml=False)
    small = fit("y ~ 1 + (1|g)", df, method="HL(1,1)", reml=False)
    y = df["y"].to_numpy()
    X = np.column_stack([np.ones(len(df)), df["x"]])
    expected = 2 * (dense_max(y, X, Z, reml=False) - dense_max(y, X[:, :1], Z, reml=False))
    test = lrt(small, big)
    assert test.criterion == "p_v" and test.df == 1 and test.n_boundary == 0
    assert test.statistic == pytest.approx(expected, rel=1e-4)
    assert test.method == "chi2(1)"
    assert test.pvalue == pytest.approx(stats.chi2.sf(expected, 1), rel=1e-3)


def test_lrt_glmm_against_glm_binomial():
    rng = np.random.default_rng(8)
    g = np.repeat(np.arange(20), 4)
    df = pd.DataFrame({"g": g, "x": rng.normal(size=80), "m": 6})
    eta = -0.2 + 0.4 * df["x"] + rng.normal(0, 1.0, 20)[g]
    df["k"] = rng.binomial(6, 1 / (1 + np.exp(-eta)))
    glm = fit("k ~ x", df, family="binomial", trials="m", method="EQL")
    glmm = fit("k ~ x + (1|g)", df, family="binomial", trials="m")
    test = lrt(glm, glmm)
    assert test.statistic > 10 and test.pvalue < 1e-3
    assert test.pvalue == pytest.approx(0.5 * test.naive_pvalue)


def test_lrt_refuses_invalid_comparisons(lmm):
    df, _, r1, r0 = lmm
    with pytest.raises(ValueError, match="wrong way round"):
        lrt(r1, r0)
    with pytest.raises(ValueError, match=r"REML fits .* different fixed effects"):
        lrt(fit("y ~ 1 + (1|g)", df, method="HL(1,1)"), fit("y ~ x + (1|g)", df, method="HL(1,1)"))
    with pytest.raises(ValueError, match="EQL"):
        lrt(fit("y ~ x", df, method="EQL"), fit("y ~ x + (1|g)", df, method="EQL"))
    with pytest.raises(ValueError, match="different methods"):
        lrt(fit("y ~ x", df, method="HL(0,1)", reml=False), r1)
    other = df.assign(y=df["y"] + 0.1)
    with pytest.raises(ValueError, match="different data"):
        lrt(fit("y ~ x", other, method="HL(0,1)"), r1)
    df2 = df.assign(h=np.tile(["a", "b", "c"], len(df) // 3 + 1)[: len(df)])
    with pytest.raises(ValueError, match="not nested"):
        lrt(fit("y ~ x + (1|h)", df2, method="HL(0,1)"), r1)


def test_lrt_two_components_uses_binomial_weights():
    rng = np.random.default_rng(11)
    a = np.repeat(np.arange(10), 6)
    b = np.tile(np.arange(6), 10)
    df = pd.DataFrame({"a": a, "b": b})
    df["y"] = rng.normal(0, 1, 10)[a] + rng.normal(0, 1, 6)[b] + rng.normal(size=60)
    big = fit("y ~ 1 + (1|a) + (1|b)", df, method="HL(0,1)")
    small = fit("y ~ 1", df, method="HL(0,1)")
    test = lrt(small, big)
    assert test.df == 2 and test.n_boundary == 2
    assert test.weights == (0.25, 0.5, 0.25)
    assert test.pvalue == pytest.approx(chibar_pvalue(test.statistic, 0, 2))


def test_lrt_bootstrap_null(lmm):
    _, _, r1, r0 = lmm
    test = lrt(r0, r1, boundary="bootstrap", n_boot=19, seed=1, progress=False)
    assert "parametric bootstrap" in test.method
    assert test.n_boot is not None and test.n_boot >= 15
    # the observed statistic is large: no null replicate reaches it
    assert test.pvalue == pytest.approx(1 / (test.n_boot + 1))


# -------------------------------------------------------- profile intervals


def test_profile_limits_sit_at_the_chi2_cutoff_of_dense_reml(lmm):
    df, Z, r1, _ = lmm
    y = df["y"].to_numpy()
    X = np.column_stack([np.ones(len(df)), df["x"]])
    top = dense_max(y, X, Z, reml=True)
    ci = profile_ci(r1)
    row = ci.loc["lambda: g"]
    assert row["method"] == "profile p_beta,v(h)"
    assert row["lower"] < row["estimate"] < row["upper"]
    for lim in ("log_lower", "log_upper"):
        dev = 2 * (top - dense_max(y, X, Z, reml=True, log_lam=row[lim]))
        assert dev == pytest.approx(CHI2_95, abs=0.02)
    assert ci.loc["phi", "lower"] < r1.phi < ci.loc["phi", "upper"]
    # the result methods delegate
    pd.testing.assert_frame_equal(r1.profile_ci(), ci)
    both = r1.confint()
    assert list(both.index) == ["(Intercept)", "x", "phi", "lambda: g"]


def test_profile_lower_limit_zero_for_a_boundary_fit():
    rng = np.random.default_rng(0)
    g = np.repeat(np.arange(8), 5)
    df = pd.DataFrame({"g": g, "y": rng.normal(size=40)})
    res = fit("y ~ 1 + (1|g)", df, method="HL(0,1)")
    ci = profile_ci(res, parm=["lambda: g"])
    if res.varcomp["lambda"].iloc[0] < 1e-6:
        assert ci.loc["lambda: g", "lower"] == 0.0
    assert ci.loc["lambda: g", "upper"] > 0.01


def test_profile_falls_back_to_wald_and_says_so(lmm, monkeypatch):
    _, _, r1, _ = lmm

    def broken(res):
        raise FloatingPointError("criterion unavailable")

    monkeypatch.setattr(intervals, "fit_criteria", broken)
    ci = profile_ci(r1)
    assert ci["method"].str.startswith("Wald (log scale").all()
    se = r1.varcomp.loc["g", "se_log"]
    assert ci.loc["lambda: g", "log_upper"] - ci.loc["lambda: g", "log_estimate"] == pytest.approx(
        1.959964 * se, rel=1e-5
    )


def test_profile_rejects_unknown_parameter(lmm):
    with pytest.raises(ValueError, match="unknown parameter"):
        profile_ci(lmm[2], parm=["lambda: nope"])


# ----------------------------------------------------------------- bootstrap


def test_bootstrap_refits_and_reports(lmm):
    _, _, r1, _ = lmm
    boot = r1.bootstrap(12, seed=4, progress=False)
    assert boot.n == 12 and boot.failed_share == 0.0
    assert list(boot.replicates.columns) == ["(Intercept)", "x", "lambda: g", "phi"]
    assert boot.estimate["x"] == pytest.approx(r1.fixef.loc["x", "estimate"])
    # replicates vary around the estimate, at the scale of its standard error
    assert 0.3 * r1.fixef.loc["x", "se"] < boot.se["x"] < 3 * r1.fixef.loc["x", "se"]
    again = r1.bootstrap(12, seed=4, progress=False)
    pd.testing.assert_frame_equal(boot.replicates, again.replicates)
    assert "failed to converge (0.0 %)" in boot.summary()
    ci = boot.confint()
    assert (ci["lower"] <= ci["upper"]).all()


def test_bootstrap_any_function_and_failure_share(lmm, monkeypatch):
    _, _, r1, _ = lmm
    boot = hglm.bootstrap(r1, 6, func=lambda r: r.likelihood["p_beta_v"], seed=2, progress=False)
    assert boot.replicates.shape == (6, 1) and np.isfinite(boot.replicates.to_numpy()).all()

    calls = {"n": 0}
    real = resampling.refit

    def flaky(res, y, warm_start=True):
        calls["n"] += 1
        if calls["n"] % 3 == 0:
            raise FloatingPointError("diverged")
        return real(res, y, warm_start)

    monkeypatch.setattr(resampling, "refit", flaky)
    with pytest.warns(hglm.ConvergenceWarning, match="2 of 6 bootstrap refits"):
        boot = hglm.bootstrap(r1, 6, seed=2, progress=False)
    assert boot.n_failed == 2 and boot.failed_share == pytest.approx(1 / 3)
    assert boot.replicates.iloc[2].isna().all()


def test_refit_on_the_fitted_response_reproduces_the_fit(lmm):
    df, _, r1, _ = lmm
    again = hglm.inference.refit(r1, df["y"].to_numpy())
    assert again.converged
    np.testing.assert_allclose(again.fixef["estimate"], r1.fixef["estimate"], rtol=1e-5)
    assert again.varcomp["lambda"].iloc[0] == pytest.approx(r1.varcomp["lambda"].iloc[0], rel=1e-4)


def test_lrt_maximises_again_a_fit_that_did_not_converge(lmm):
    _, _, r1, r0 = lmm
    good = lrt(r0, r1)
    # the smaller fit stopped early: phi off its optimum and flagged as not converged
    disp = r0.outcome.disp.with_theta(r0.outcome.disp.theta() + 0.3)
    stalled = dataclasses.replace(
        r0,
        outcome=dataclasses.replace(r0.outcome, disp=disp, converged=False),
        warnings=["dispersion optimisation did not converge: ABNORMAL"],
    )
    test = lrt(stalled, r1)
    assert test.statistic == pytest.approx(good.statistic, abs=1e-5)
    assert any("maximised again" in n for n in test.notes)
