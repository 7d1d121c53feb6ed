"""Random slopes and correlated random effects against lme4, glmmTMB and R hglm
(``references_v2.json``), and the Laplace optimum against a dense computation."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

import hglm
from tests.hglm.conftest import DATA
from tests.hglm.lattices import rook_neighbours


def _refs() -> dict:
    return json.loads((DATA / "references_v2.json").read_text())


def _sig(x: float, digits: int) -> float:
    return float(f"{x:.{digits - 1}e}")


@pytest.fixture(scope="module")
def sleepstudy() -> pd.DataFrame:
    return pd.read_csv(DATA / "sleepstudy.csv")


@pytest.fixture(scope="module")
def cancer() -> tuple[pd.DataFrame, np.ndarray]:
    return pd.read_csv(DATA / "cancer.csv"), pd.read_csv(DATA / "cancer_nbr.csv").to_numpy()


# ----------------------------------------------------------------------------- sleepstudy


@pytest.mark.parametrize(
    ("formula", "key"),
    [
        ("Reaction ~ Days + (Days | Subject)", "sleepstudy_corr_slope_REML"),
        ("Reaction ~ Days + (Days || Subject)", "sleepstudy_uncorr_slope_REML"),
    ],
)
def test_sleepstudy_slopes_match_lme4_reml(sleepstudy, formula: str, key: str) -> None:
    ref = _refs()[key]["results"]
    res = hglm.fit(formula, sleepstudy, reml=True)
    assert res.converged
    assert res.likelihood["p_beta_v"] == pytest.approx(ref["logLik"], abs=1e-3)
    fx = res.fixef
    for row in ref["fixed_effects"]:
        assert _sig(fx.loc[row["name"], "estimate"], 4) == _sig(row["estimate"], 4)
        assert _sig(fx.loc[row["name"], "se"], 4) == _sig(row["se"], 4)
    vc = res.varcomp
    for row in ref["varcorr"]:
        grp = row["grp"].replace("Subject.1", "Subject.Days")
        sel = vc[(vc["grp"] == grp) & (vc["var1"].fillna("") == (row["var1"] or ""))]
        sel = sel[sel["var2"].isna()] if row["var2"] is None else sel[sel["var2"] == row["var2"]]
        assert len(sel) == 1, row
        got = sel.iloc[0]
        if row["var2"] is None:  # a variance
            assert got["vcov"] == pytest.approx(row["vcov"], rel=5e-3)
        else:  # a correlation
            assert got["sdcor"] == pytest.approx(row["sdcor"], rel=5e-3)


def test_slopes_result_reports_covariance_matrices(sleepstudy) -> None:
    res = hglm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    entry = res.to_dict()["varcomp"]["Subject"]
    cov = np.array(entry["cov"])
    assert cov.shape == (2, 2) and cov[0, 1] == pytest.approx(cov[1, 0])
    assert entry["columns"] == ["(Intercept)", "Days"]
    assert entry["corr"][0][1] == pytest.approx(cov[0, 1] / np.sqrt(cov[0, 0] * cov[1, 1]))
    json.dumps(res.to_dict())
    text = str(res.summary())
    assert "Subject" in text and "Days" in text and "Residual" in text
    re = res.ranef["Subject"]
    assert list(re.columns[:2]) == ["(Intercept)", "Days"] and len(re) == 18
    # predictions on the fitting data reproduce the fitted values
    np.testing.assert_allclose(res.predict(sleepstudy), res.fitted, rtol=1e-10)
    with pytest.raises(ValueError, match="not available for random slopes"):
        res.predict(sleepstudy, se=True)


# -------------------------------------------------------------------------------- cancer


def _cancer_fit(cancer, method: str, **kw):
    df, W = cancer
    return hglm.fit(
        "O ~ Paff + (1|area)",
        df,
        family="poisson",
        offset="np.log(E)",
        correlation={"area": hglm.CAR(sp.csr_matrix(W))},
        method=method,
        **kw,
    )


def test_cancer_car_eql_matches_r_hglm(cancer) -> None:
    ref = _refs()["cancer_CAR_phi1"]["results"]
    res = _cancer_fit(cancer, "EQL")
    assert res.converged
    fx = res.fixef
    for row in ref["fixed_effects"]:
        assert _sig(fx.loc[row["name"], "estimate"], 3) == _sig(row["estimate"], 3)
        assert _sig(fx.loc[row["name"], "se"], 3) == _sig(row["se"], 3)
    params = res.structure_params.set_index("parameter")["estimate"]
    assert _sig(params["tau"], 3) == _sig(ref["CAR_tau"], 3)
    assert _sig(params["rho"], 3) == _sig(ref["CAR_rho"], 3)
    extras = res.fit.extras["area"]
    for got, want in zip(extras["coef"], ref["rand_disp_coef"], strict=True):
        assert _sig(got, 3) == _sig(want, 3)
    for got, want in zip(extras["se"], ref["rand_disp_se"], strict=True):
        assert _sig(got, 3) == _sig(want, 3)
    lik = res.likelihood
    for ours, theirs in (("h", "hlik"), ("p_v", "pvh"), ("p_beta_v", "pbvh"), ("caic", "cAIC")):
        assert _sig(lik[ours], 3) == _sig(ref["likelihood"][theirs], 3)


def _dense_laplace(df, W, beta, tau, rho) -> float:
    """p_v(h) of the Poisson CAR model by dense numpy: Newton for the mode, then Laplace."""
    y = df["O"].to_numpy(float)
    off = np.log(df["E"].to_numpy(float))
    X = np.column_stack([np.ones(len(y)), df["Paff"].to_numpy(float)])
    Q = (np.eye(len(y)) - rho * W) / tau
    v = np.zeros(len(y))
    for _ in range(100):
        mu = np.exp(off + X @ beta + v)
        step = np.linalg.solve(np.diag(mu) + Q, (y - mu) - Q @ v)
        v = v + step
        if np.max(np.abs(step)) < 1e-12:
            break
    mu = np.exp(off + X @ beta + v)
    from scipy.special import gammaln

    cond = float(np.sum(y * np.log(mu) - mu - gammaln(y + 1)))
    logdet_q = np.linalg.slogdet(Q)[1]
    h = cond + 0.5 * (logdet_q - len(y) * np.log(2 * np.pi) - v @ Q @ v)
    return h - 0.5 * (np.linalg.slogdet(np.diag(mu) + Q)[1] - len(y) * np.log(2 * np.pi))


def test_cancer_car_laplace_optimum_checked_densely(cancer) -> None:
    df, W = cancer
    res = _cancer_fit(cancer, "HL(1,1)", reml=False)
    assert res.converged
    beta = res.fixef["estimate"].to_numpy()
    params = res.structure_params.set_index("parameter")["estimate"]
    tau, rho = float(params["tau"]), float(params["rho"])
    best = _dense_laplace(df, W, beta, tau, rho)
    assert res.likelihood["p_v"] == pytest.approx(best, abs=1e-6)
    # the optimum: no coordinate move improves the dense Laplace likelihood
    for which, step in (("b0", 1e-3), ("b1", 1e-4), ("tau", 1e-3), ("rho", 1e-4)):
        for sign in (-1, 1):
            b, t, r = beta.copy(), tau, rho
            if which == "b0":
                b[0] += sign * step
            elif which == "b1":
                b[1] += sign * step
            elif which == "tau":
                t *= 1 + sign * step
            else:
                r += sign * step * 0.5 * (0.175 - rho) / 0.175
            assert _dense_laplace(df, W, b, t, r) <= best + 1e-7, (which, sign)


def test_car_rho_has_an_se_and_a_profile_interval(cancer) -> None:
    res = _cancer_fit(cancer, "HL(1,1)", reml=False)
    sp_ = res.structure_params.set_index("parameter")
    rho, se = sp_.loc["rho", "estimate"], sp_.loc["rho", "se"]
    assert np.isfinite(se) and se > 0
    lo, hi = res.profile_ci("area", "rho")
    assert lo < rho < hi
    hi_bound = res.terms[0].structure.rho_hi
    assert hi <= hi_bound


# ------------------------------------------------------------------------------ tooldrift


def test_tooldrift_ar1_matches_glmmtmb() -> None:
    ref = _refs()["tooldrift_binomial_ar1_ML"]["results"]
    df = pd.read_csv(DATA / "tooldrift.csv")
    res = hglm.fit(
        "good ~ x + ar1(factor(week) + 0 | tool)",
        df,
        family="binomial",
        trials="dies",
        method="HL(1,1)",
        reml=False,
    )
    assert res.converged
    assert res.likelihood["p_v"] == pytest.approx(ref["logLik"], abs=0.01)
    params = res.structure_params.set_index("parameter")
    assert params.loc["variance", "estimate"] == pytest.approx(ref["ar1_var"], rel=0.01)
    assert params.loc["rho", "estimate"] == pytest.approx(ref["ar1_rho"], rel=0.01)
    for row in ref["fixed_effects"]:
        assert res.fixef.loc[row["name"], "estimate"] == pytest.approx(row["estimate"], abs=1e-3)
    assert np.isfinite(params.loc["rho", "se"])
    assert res.ranef["tool"].shape[0] == 24 * 40


# --------------------------------------------------------------------------------- errors


def test_conjugate_families_stay_intercept_only(sleepstudy) -> None:
    with pytest.raises(ValueError, match=r"conjugate families .* stay intercept-only"):
        hglm.fit(
            "Reaction ~ Days + (Days | Subject)", sleepstudy, family="gamma", rand_family="gamma"
        )


def test_correlation_names_must_be_terms(cancer) -> None:
    df, W = cancer
    with pytest.raises(ValueError, match="unknown random term"):
        hglm.fit("O ~ Paff + (1|area)", df, family="poisson", correlation={"zone": hglm.CAR(W)})
    with pytest.raises(ValueError, match="has 56 rows, the term area has 10 levels"):
        hglm.fit(
            "O ~ Paff + (1|area)", df.iloc[:10], family="poisson", correlation={"area": hglm.CAR(W)}
        )


def test_eql_is_for_car_and_intercepts(sleepstudy) -> None:
    with pytest.raises(ValueError, match="supports CAR/SAR terms and random intercepts"):
        hglm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy, method="EQL")
    # a Gaussian response with a CAR term: phi by EQL's gamma GLM, likelihoods reported
    chain = hglm.CAR(sp.diags([np.ones(17), np.ones(17)], [-1, 1]))
    res = hglm.fit(
        "Reaction ~ Days + (1 | Subject)",
        sleepstudy,
        method="EQL",
        correlation={"Subject": chain},
    )
    assert res.converged and res.phi > 0 and np.isfinite(res.likelihood["p_beta_v"])
    assert np.all(np.isfinite(res.structure_params["se"]))


# ---------------------------------------------------------------------------- invariants


def test_analytic_gradients_match_central_differences(sleepstudy) -> None:
    from hglm.design import build_design
    from hglm.families import response_family
    from hglm.formula import parse_formula
    from hglm.structured import ProfiledLMM, StructuredModel, numeric_gradient
    from hglm.structured_terms import build_terms

    for reml in (True, False):
        f = parse_formula("Reaction ~ Days + (Days | Subject)")
        d = build_design(f, sleepstudy, response_family("gaussian"))
        crit = ProfiledLMM(StructuredModel(d, build_terms(d, sleepstudy)), reml)
        x = np.array([0.1, 0.05, -1.2])
        np.testing.assert_allclose(
            crit.value_and_gradient(x)[1], numeric_gradient(crit, x), rtol=1e-6
        )
    drift = pd.read_csv(DATA / "tooldrift.csv")
    f = parse_formula("good ~ x + ar1(week | tool)")
    d = build_design(f, drift, response_family("binomial"), trials="dies")
    m = StructuredModel(d, build_terms(d, drift))
    x = np.array([1.5, 0.2, np.log(0.1), 1.0])

    def p_v(x: np.ndarray) -> float:
        return m.evaluate(x[2:], np.zeros(0), x[:2], np.zeros(m.q), True).p_v

    ev = m.evaluate(x[2:], np.zeros(0), x[:2], np.zeros(m.q), True)
    np.testing.assert_allclose(m.gradient_p_v(ev, x[2:], True), numeric_gradient(p_v, x), rtol=1e-5)


def test_identity_precision_reproduces_the_intercept_engine() -> None:
    """A random intercept with Precision(I) is the plain (1 | herd) model: same Laplace fit as
    the engine's own path (and glmmTMB's logLik on cbpp)."""
    cbpp = pd.read_csv(DATA / "cbpp.csv", dtype={"herd": str, "period": str})
    args = dict(family="binomial", trials="size", method="HL(1,1)", reml=False)
    plain = hglm.fit("incidence ~ period + (1|herd)", cbpp, **args)
    structured = hglm.fit(
        "incidence ~ period + (1|herd)",
        cbpp,
        correlation={"herd": hglm.Precision(sp.identity(15, format="csc"))},
        **args,
    )
    assert structured.likelihood["p_v"] == pytest.approx(plain.likelihood["p_v"], abs=1e-6)
    assert structured.likelihood["p_v"] == pytest.approx(-92.02628, abs=1e-4)
    np.testing.assert_allclose(
        structured.fixef["estimate"], plain.fixef["estimate"], rtol=1e-5, atol=1e-6
    )
    tau = structured.structure_params.set_index("parameter").loc["tau", "estimate"]
    assert tau == pytest.approx(plain.lambdas["herd"], rel=1e-4)


def test_slopes_without_intercept_and_the_uncorrelated_split(sleepstudy) -> None:
    only = hglm.fit("Reaction ~ Days + (1 | Subject) + (0 + Days | Subject)", sleepstudy)
    split = hglm.fit("Reaction ~ Days + (Days || Subject)", sleepstudy)
    assert only.likelihood["p_beta_v"] == pytest.approx(split.likelihood["p_beta_v"], abs=1e-8)
    assert list(only.ranef["Subject.Days"].columns) == ["Days", "se:Days"]


def test_sar_criteria_equal_a_dense_computation() -> None:
    rng = np.random.default_rng(7)
    n = 5
    W = rook_neighbours(n)
    area = np.repeat(np.arange(n * n), 4)
    y = rng.normal(size=len(area)) + rng.normal(size=n * n)[area]
    df = pd.DataFrame({"y": y, "area": area})
    res = hglm.fit("y ~ 1 + (1|area)", df, correlation={"area": hglm.SAR(W)}, reml=False)
    params = res.structure_params.set_index("parameter")["estimate"]
    tau, rho, phi = params["tau"], params["rho"], res.phi
    Z = np.eye(n * n)[area]
    A = np.eye(n * n) - rho * W
    V = phi * np.eye(len(y)) + tau * Z @ np.linalg.inv(A.T @ A) @ Z.T
    r = y - res.fixef["estimate"].iloc[0]
    loglik = -0.5 * (np.linalg.slogdet(2 * np.pi * V)[1] + r @ np.linalg.solve(V, r))
    assert res.likelihood["p_v"] == pytest.approx(loglik, abs=1e-6)


def test_solve_dispatches_structured_models_and_inference_says_what_applies(sleepstudy) -> None:
    from hglm.design import build_design
    from hglm.dispatch import solve
    from hglm.families import response_family
    from hglm.formula import parse_formula
    from hglm.structured import StructuredFit, StructuredModel
    from hglm.structured_terms import build_terms

    f = parse_formula("Reaction ~ Days + (Days | Subject)")
    d = build_design(f, sleepstudy, response_family("gaussian"))
    model = StructuredModel(d, build_terms(d, sleepstudy))
    fit = solve(model, "HL(1,1)", reml=True, control=hglm.FitControl(outer_max_iter=200))
    assert isinstance(fit, StructuredFit) and fit.converged
    with pytest.raises(ValueError, match="start= is not available"):
        solve(model, "HL(1,1)", start=fit)
    res = hglm.fit("Reaction ~ Days + (Days | Subject)", sleepstudy)
    assert res.diagnostics.converged and res.diagnostics.code.value == "converged"
    for call in (lambda: hglm.lrt(res, res), lambda: hglm.confint(res)):
        with pytest.raises(TypeError, match="random-intercept models"):
            call()


def test_block_and_tridiagonal_factors_match_dense_algebra() -> None:
    from hglm.structured_mme import BlockFactor, TridiagonalFactor, _block_layout

    rng = np.random.default_rng(3)
    G, b = 4, 6
    q = G * b
    # tridiagonal blocks (an AR(1) term): diagonal dominant, so positive definite
    H = np.zeros((q, q))
    for g in range(G):
        s = slice(g * b, (g + 1) * b)
        off = rng.uniform(-1, 1, b - 1)
        H[s, s] = np.diag(rng.uniform(2.5, 4, b)) + np.diag(off, 1) + np.diag(off, -1)
    rows, cols = np.nonzero(H)
    keys = np.sort(cols.astype(np.int64) * q + rows)
    data = H[keys % q, keys // q]
    kind, order, _ = _block_layout(keys, q)
    assert (kind, order) == ("tridiagonal", b)
    f = TridiagonalFactor.build(data, b, keys, q)
    rhs = rng.normal(size=(q, 3))
    np.testing.assert_allclose(f.solve(rhs), np.linalg.solve(H, rhs), rtol=1e-10)
    assert f.logdet() == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-12)
    inv = np.linalg.inv(H)
    np.testing.assert_allclose(f.inverse_entries(), inv[keys % q, keys // q], rtol=1e-10)
    # dense 2 x 2 blocks (one slope term)
    B = rng.normal(size=(G * 3, 2, 2))
    H2 = np.zeros((2 * G * 3,) * 2)
    for g in range(G * 3):
        H2[2 * g : 2 * g + 2, 2 * g : 2 * g + 2] = B[g] @ B[g].T + np.eye(2)
    rows, cols = np.nonzero(H2)
    q2 = H2.shape[0]
    keys2 = np.sort(cols.astype(np.int64) * q2 + rows)
    kind, order, where = _block_layout(keys2, q2)
    assert (kind, order) == ("dense", 2)
    f2 = BlockFactor(H2[keys2 % q2, keys2 // q2], order, where)
    rhs2 = rng.normal(size=q2)
    np.testing.assert_allclose(f2.solve(rhs2), np.linalg.solve(H2, rhs2), rtol=1e-10)
    assert f2.logdet() == pytest.approx(np.linalg.slogdet(H2)[1], rel=1e-12)
    inv2 = np.linalg.inv(H2)
    np.testing.assert_allclose(f2.inverse_entries(), inv2[keys2 % q2, keys2 // q2], rtol=1e-10)


def test_three_column_slopes_crossed_with_an_intercept_equal_the_dense_likelihood() -> None:
    """(x + z | g) + (1 | h), Gaussian ML: p_v(h) at the estimates equals the marginal
    log-likelihood computed densely, and the 3 x 3 covariance is reported."""
    rng = np.random.default_rng(11)
    n, G, Hn = 240, 20, 8
    g = rng.integers(0, G, n)
    h = rng.integers(0, Hn, n)
    x, z = rng.normal(size=n), rng.normal(size=n)
    b = rng.normal(size=(G, 3)) * [0.8, 0.5, 0.3]
    y = 1 + 0.5 * x - 0.2 * z + b[g, 0] + b[g, 1] * x + b[g, 2] * z
    y = y + rng.normal(0, 0.6, Hn)[h] + rng.normal(0, 1, n)
    df = pd.DataFrame({"y": y, "x": x, "z": z, "g": g, "h": h})
    res = hglm.fit("y ~ x + z + (x + z | g) + (1 | h)", df, reml=False)
    assert res.converged
    entry = res.to_dict()["varcomp"]["g"]
    S = np.array(entry["cov"])
    assert S.shape == (3, 3) and np.all(np.linalg.eigvalsh(S) > 0)
    lam_h = res.varcomp.set_index(["grp", "var1"]).loc[("h", "(Intercept)"), "vcov"]
    Zg = np.zeros((n, 3 * G))
    for j, col in enumerate([np.ones(n), x, z]):
        Zg[np.arange(n), 3 * g + j] = col
    Zh = np.eye(Hn)[h]
    V = res.phi * np.eye(n) + Zg @ np.kron(np.eye(G), S) @ Zg.T + lam_h * Zh @ Zh.T
    X = np.column_stack([np.ones(n), x, z])
    r = y - X @ res.fixef["estimate"].to_numpy()
    loglik = -0.5 * (np.linalg.slogdet(2 * np.pi * V)[1] + r @ np.linalg.solve(V, r))
    assert res.likelihood["p_v"] == pytest.approx(loglik, abs=1e-6)


def test_cancer_car_eql_with_quasi_poisson_phi_matches_r_hglm(cancer) -> None:
    """R hglm without fix.disp: phi estimated by EQL (quasi-Poisson), no likelihoods; the
    offset written in the formula."""
    ref = _refs()["cancer_CAR_phi_est"]["results"]
    df, W = cancer
    res = hglm.fit(
        "O ~ Paff + offset(log(E)) + (1|area)",
        df,
        family="quasipoisson",
        correlation={"area": hglm.CAR(W)},
        method="EQL",
    )
    fit = res.fit
    assert fit.converged and fit.n_iter == ref["iter"]
    for row, (_, got) in zip(ref["fixed_effects"], res.fixef.iterrows(), strict=True):
        assert _sig(got["estimate"], 3) == _sig(row["estimate"], 3)
        assert _sig(got["se"], 3) == _sig(row["se"], 3)
    assert _sig(res.phi, 3) == _sig(ref["phi"], 3)
    params = res.structure_params.set_index("parameter")["estimate"]
    assert _sig(params["tau"], 3) == _sig(ref["CAR_tau"], 3)
    assert _sig(params["rho"], 3) == _sig(ref["CAR_rho"], 3)
    for got, want in zip(fit.extras["area"]["coef"], ref["rand_disp_coef"], strict=True):
        assert _sig(got, 3) == _sig(want, 3)
    assert all(np.isnan(v) for v in res.likelihood.values())


def test_singular_covariance_is_reported_not_a_failure() -> None:
    """No slope variance in the data: the search stops at the bound (correlation 1, as lme4's
    boundary fit), converged, and the term is named singular."""
    rng = np.random.default_rng(1)
    g = np.repeat(np.arange(30), 10)
    x = rng.normal(size=300)
    y = 1 + 0.5 * x + rng.normal(0, 1, 30)[g] + rng.normal(size=300)
    df = pd.DataFrame({"y": y, "x": x, "g": g})
    with pytest.warns(hglm.ConvergenceWarning, match="singular fit"):
        res = hglm.fit("y ~ x + (x | g)", df)
    assert res.converged and res.diagnostics.singular_terms == ("g",)
    corr = res.varcomp.dropna(subset=["var2"])["sdcor"].iloc[0]
    assert abs(corr) > 0.999
