"""The mixed-model equations with a pattern-level term (the lot of a fab) eliminated in closed
form against the plain path that keeps it in the sparse factor, and against dense algebra."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hglm.fitting
from hglm.design import build_design
from hglm.families import response_family
from hglm.fitting import Dispersions, Model
from hglm.formula import parse_formula
from hglm.gradient import Evaluation, criterion_gradient
from hglm.mme import (
    MixedModelEquations,
    _distinct_patterns,
    _distinct_patterns_exact,
    _nesting_groups,
)

TOL = 1e-8


def fab_like(lots: int = 40, ops: int = 3, seed: int = 7) -> pd.DataFrame:
    """Lots of 5 wafers; per operation a tool (of 3) and a chamber (2 per tool) fix the path."""
    rng = np.random.default_rng(seed)
    tool = rng.integers(0, 3, (lots, ops))
    chamber = tool * 2 + rng.integers(0, 2, (lots, ops))
    lot = np.repeat(np.arange(lots), 5)
    n = len(lot)
    chamber_effect = rng.normal(0, 0.3, (ops, 6))[np.arange(ops), chamber].sum(axis=1)
    eta = 1.0 + rng.normal(0, 0.4, lots)[lot] + chamber_effect[lot] + rng.normal(0, 0.2, n)
    x = rng.normal(size=n)
    dies = rng.integers(50, 60, n)
    frame = {"good": rng.binomial(dies, 1 / (1 + np.exp(-eta - 0.2 * x))), "dies": dies, "x": x}
    frame.update({"lot": lot, "wafer": np.arange(n)})
    for k in range(ops):
        frame[f"tool{k}"] = tool[lot, k]
        frame[f"chamber{k}"] = chamber[lot, k]
    return pd.DataFrame(frame)


def fab_formula(ops: int = 3, wafer: bool = True) -> str:
    terms = ["lot"] + [f"tool{k}" for k in range(ops)] + [f"chamber{k}" for k in range(ops)]
    return "good ~ x + " + " + ".join(f"(1 | {t})" for t in terms + (["wafer"] if wafer else []))


def make_model(
    data: pd.DataFrame, formula: str, eliminate: bool, monkeypatch, dense: bool | None = None
) -> Model:
    design = build_design(parse_formula(formula), data, response_family("binomial"), trials="dies")

    def equations(X, terms):
        return MixedModelEquations(X, terms, eliminate=eliminate, dense=dense)

    with monkeypatch.context() as patch:
        patch.setattr(hglm.fitting, "MixedModelEquations", equations)
        return Model(design)


@pytest.fixture(params=[True, False], ids=["dense", "sparse"])
def models(request, monkeypatch):
    """The lot eliminated (tools and chambers factored dense or by CHOLMOD), and the plain path
    (everything in CHOLMOD's factor)."""
    data = fab_like()
    formula = fab_formula()
    return make_model(data, formula, True, monkeypatch, dense=request.param), make_model(
        data, formula, False, monkeypatch, dense=False
    )


def dispersions(model: Model) -> Dispersions:
    delta = [np.array([np.log(0.05 + 0.02 * k)]) for k in range(len(model.design.terms))]
    return Dispersions(np.zeros(0), delta, phi_fixed=True)


def test_the_lot_is_eliminated_and_tools_nest_in_chambers(models):
    eliminated, plain = models
    assert eliminated.mme.elimination is not None
    assert not plain.mme._dense
    assert eliminated.mme.terms[eliminated.mme.elimination.term].name == "lot"
    assert plain.mme.elimination is None
    # 3 chamber groups, each holding its operation's tool: 6 group pairs instead of 21
    assert len(eliminated.mme.products.pairs) == 6


def test_nesting_groups_put_a_coarser_term_with_the_term_that_fixes_it():
    chamber = np.array([0, 1, 2, 3, 0, 2])
    tool = chamber // 2
    other = np.array([0, 0, 1, 1, 1, 0])
    groups = _nesting_groups([tool, other, chamber], [2, 2, 4])
    assert sorted(map(sorted, groups)) == [[0, 2], [1]]


def test_hashed_row_patterns_equal_the_exact_grouping():
    rng = np.random.default_rng(5)
    lot = rng.integers(0, 50, 2000)
    codes = [lot, rng.integers(0, 4, 50)[lot], rng.integers(0, 3, 2000), np.zeros(2000, int)]
    pattern, patterns = _distinct_patterns(codes)
    exact_pattern, exact_patterns = _distinct_patterns_exact(codes)
    np.testing.assert_array_equal(pattern, exact_pattern)
    np.testing.assert_array_equal(patterns, exact_patterns)
    np.testing.assert_array_equal(patterns[pattern], np.column_stack(codes))
    assert len(np.unique(patterns, axis=0)) == len(patterns)


def test_equations_match_dense_algebra(models):
    """H, its log-determinant, H^{-1} b, diag(H^{-1}) and z_i' H^{-1} z_i by dense numpy."""
    rng = np.random.default_rng(3)
    for model in models:
        mme = model.mme
        n, q = mme.n, mme.q
        a = rng.uniform(0.5, 5.0, n)
        w_m = rng.uniform(1.0, 20.0, q)
        sol = mme.solve(a, rng.normal(size=n), w_m, rng.normal(size=q))
        Z = mme.Zd.toarray()[mme.pattern]
        H = Z.T @ (a[:, None] * Z) + np.diag(w_m)
        H_inv = np.linalg.inv(H)
        assert sol.logdet_H == pytest.approx(np.linalg.slogdet(H)[1], rel=1e-12)
        b = rng.normal(size=(q, 2))
        np.testing.assert_allclose(mme.solve_levels(b), H_inv @ b, rtol=TOL, atol=TOL)
        np.testing.assert_allclose(mme.level_inverse_diagonal(), np.diag(H_inv), rtol=TOL)
        np.testing.assert_allclose(
            mme.level_row_variances(), np.einsum("ij,jk,ik->i", Z, H_inv, Z), rtol=TOL
        )
        T = np.hstack([mme.X, Z])
        C = T.T @ (a[:, None] * T) + np.diag(np.r_[np.zeros(mme.p), w_m])
        C_inv = np.linalg.inv(C)
        np.testing.assert_allclose(sol.cov_beta, C_inv[: mme.p, : mme.p], rtol=TOL)
        np.testing.assert_allclose(
            mme.row_variances(sol), np.einsum("ij,jk,ik->i", T, C_inv, T), rtol=TOL
        )
        np.testing.assert_allclose(
            mme.level_variances(sol), np.diag(C_inv)[mme.p :], rtol=TOL, atol=1e-12
        )


def test_elimination_reproduces_the_plain_path_at_given_dispersions(models):
    """Same mode, p_v(h), p_beta,v(h), leverages, Var(beta), prediction variances, gradient."""
    out = []
    for model in models:
        disp = dispersions(model)
        beta0 = np.array([1.0, 0.0])
        fit = model.iwls(beta0, model.start_v(), disp, exact=True, tol=1e-14, max_iter=200)
        assert fit.converged
        lik, _, lev = model.likelihoods(fit, disp, exact=True, observed=True)
        sol, elim, a = model.evaluate(fit, disp, exact=True, observed=True)
        grad = criterion_gradient(model, fit, disp, Evaluation(sol, elim, a), "p_v", True)
        out.append((fit, lik, lev, sol, grad))
    (fit_e, lik_e, lev_e, sol_e, g_e), (fit_p, lik_p, lev_p, sol_p, g_p) = out
    np.testing.assert_allclose(fit_e.beta, fit_p.beta, rtol=TOL, atol=TOL)
    for v_e, v_p in zip(fit_e.v, fit_p.v, strict=True):
        np.testing.assert_allclose(v_e, v_p, rtol=TOL, atol=TOL)
    for field in ("h", "p_v", "p_beta_v", "caic"):
        assert getattr(lik_e, field) == pytest.approx(getattr(lik_p, field), rel=1e-10)
    np.testing.assert_allclose(sol_e.cov_beta, sol_p.cov_beta, rtol=TOL)
    for key in lev_p:
        np.testing.assert_allclose(lev_e[key], lev_p[key], rtol=TOL, atol=1e-12)
    np.testing.assert_allclose(g_e, g_p, rtol=1e-7, atol=1e-7)


# a tool whose effect the chambers carry is a singular fit; both paths must agree on it too
@pytest.mark.filterwarnings("ignore:singular fit")
def test_fit_with_elimination_equals_the_plain_fit(monkeypatch):
    """The whole HL(1,1) fit: same criterion, fixed effects, random effects and SEs."""
    data = fab_like(lots=30, ops=2, seed=11)
    formula = fab_formula(ops=2)
    results = []
    for eliminate in (True, False):

        def equations(X, terms, eliminate=eliminate):
            return MixedModelEquations(X, terms, eliminate=eliminate)

        with monkeypatch.context() as patch:
            patch.setattr(hglm.fitting, "MixedModelEquations", equations)
            results.append(hglm.fit(formula, data, family="binomial", reml=False, trials="dies"))
    with_elim, plain = results
    assert with_elim.likelihood["p_v"] == pytest.approx(plain.likelihood["p_v"], rel=1e-10)
    # the two searches take the same path up to rounding, so they stop at the same point
    columns = ["estimate", "se"]
    np.testing.assert_allclose(with_elim.fixef[columns], plain.fixef[columns], rtol=1e-6)
    for name, table in plain.ranef.items():
        np.testing.assert_allclose(
            with_elim.ranef[name].to_numpy(), table.to_numpy(), rtol=1e-5, atol=1e-6
        )


def test_row_guard_keeps_each_wafer_no_worse_than_before(monkeypatch):
    """The observation-level effects after a joint step that overshoots some rows: every row's
    own h term (given the rest of eta) is no worse than with its previous effect, and rows that
    moved by less than 1 keep the joint step."""
    model = make_model(fab_like(), fab_formula(), True, monkeypatch)
    d = model.design
    wafer = next(t for t in d.terms if t.observation_level)
    lam = np.full(wafer.n_levels, 0.5)
    rng = np.random.default_rng(2)
    rest = np.full(d.n, 1.0)
    e_old = rng.normal(0, 0.2, d.n)
    e_new = e_old + np.where(np.arange(d.n) % 3 == 0, rng.choice([-40.0, 40.0], d.n), 0.3)
    guarded = model._guard_rows(e_new, e_old, rest, wafer, np.ones(d.n), lam, True)

    def own_term(e):
        mu = model.family.link.inverse(rest + e)
        kernel = model.family.loglik_kernel(d.y, mu, np.ones(d.n), d.prior_weights)
        return kernel + wafer.family.logdensity(e, lam[wafer.codes])

    small = np.abs(e_new - e_old) <= 1.0
    before, after = own_term(e_old), own_term(guarded)
    assert np.all((after >= before - 1e-9 * np.abs(before))[~small])
    np.testing.assert_array_equal(guarded[small], e_new[small])
    assert np.all(np.abs(guarded[~small] - e_old[~small]) < 40.0)
