"""The mixed-model equations with a pattern-level term (the lot of a fab) eliminated in closed
form against the plain path that keeps it in the sparse factor, and against dense algebra; the
sums over row patterns whichever way their cells are found (counted or hashed), and with every
row its own pattern (chambers dealt per wafer)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import hglm.mme
import hglm.model
from hglm.design import build_design
from hglm.families import response_family
from hglm.formula import parse_formula
from hglm.gradient import Evaluation, criterion_gradient
from hglm.mme import (
    MixedModelEquations,
    _distinct_patterns,
    _distinct_patterns_exact,
    _nesting_groups,
    _PatternProducts,
)
from hglm.model import Model
from hglm.state import Dispersions

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
        patch.setattr(hglm.model, "MixedModelEquations", equations)
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


def check_against_dense_algebra(mme: MixedModelEquations, rng: np.random.Generator) -> None:
    """H, its log-determinant, H^{-1} b, diag(H^{-1}), z_i' H^{-1} z_i and the joint inverse's
    pieces against dense numpy, at random weights."""
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


def test_equations_match_dense_algebra(models):
    """H, its log-determinant, H^{-1} b, diag(H^{-1}) and z_i' H^{-1} z_i by dense numpy."""
    rng = np.random.default_rng(3)
    for model in models:
        check_against_dense_algebra(model.mme, rng)


def test_equations_with_every_row_its_own_pattern(monkeypatch):
    """Chambers dealt per wafer and the wafer's slot in its lot: no two rows share a pattern
    (the chained model of a fab), so the rows are taken as the patterns themselves."""
    data = fab_like(lots=30, ops=2, seed=9)
    rng = np.random.default_rng(10)
    for k in range(2):
        data[f"chamber{k}"] = data[f"tool{k}"] * 2 + rng.integers(0, 2, len(data))
    data["slot"] = np.tile(np.arange(5), 30)
    formula = fab_formula(ops=2) + " + (1 | slot)"
    mme = make_model(data, formula, True, monkeypatch).mme
    assert mme.n_patterns == mme.n and mme._rows_are_patterns
    check_against_dense_algebra(mme, rng)
    values = rng.normal(size=(mme.n, 3))
    Z = mme.Zd.toarray()[mme.pattern]
    np.testing.assert_allclose(mme.zt(values), Z.T @ values, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(mme.zt(values[:, 0]), Z.T @ values[:, 0], rtol=1e-12, atol=1e-12)
    v = rng.normal(size=mme.q)
    np.testing.assert_allclose(mme.eta_random(v), Z @ v, rtol=1e-12, atol=1e-12)


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
            patch.setattr(hglm.model, "MixedModelEquations", equations)
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


def nested_and_crossed_levels(seed: int = 4) -> tuple[list[np.ndarray], list[int]]:
    """Patterns of a fab whose chambers are dealt per wafer: a lot with two tools fixed by it,
    and per operation a chamber (fixing its tool) drawn per pattern; levels of every term."""
    rng = np.random.default_rng(seed)
    lots, per_lot = 30, 8
    lot = np.repeat(np.arange(lots), per_lot)
    tool_a, tool_b = rng.integers(0, 3, lots)[lot], rng.integers(0, 4, lots)[lot]
    chamber_a = tool_a * 2 + rng.integers(0, 2, len(lot))
    chamber_b = tool_b * 3 + rng.integers(0, 3, len(lot))
    other = rng.integers(0, 5, len(lot))
    levels = [tool_a, lot, chamber_a, tool_b, other, chamber_b]
    return levels, [3, lots, 6, 4, 5, 12]


def indicator(levels: list[np.ndarray], sizes: list[int]) -> np.ndarray:
    offsets = np.concatenate(([0], np.cumsum(sizes)))
    E = np.zeros((len(levels[0]), offsets[-1]))
    for k, lv in enumerate(levels):
        E[np.arange(len(lv)), offsets[k] + lv] = 1.0
    return E


@pytest.fixture(params=["counted", "counted_wide", "hashed"])
def ranges(request, monkeypatch):
    """Group and term pairs found by counting over their ranges (nothing kept per pattern or
    per cell; the indices in 16 bits, or all in 64 as for groups of many levels), or, with the
    bound forced to zero, by hashing (a cell per pattern kept)."""
    if request.param == "counted_wide":
        monkeypatch.setattr(hglm.mme, "_SMALL", 0)
    if request.param == "hashed":
        monkeypatch.setattr(hglm.mme, "_COUNT_RANGE_PER_KEY", 0)
        monkeypatch.setattr(hglm.mme, "_COUNT_RANGE_SLACK", 0)
    return request.param


def test_pattern_products_match_dense_algebra(ranges):
    """sum_p c_p e_p e_p' + diag(d) and e_p' R e_p against the dense indicator matrix, for
    groups holding terms on both sides of a pair (tools in the lot and in the chambers)."""
    levels, sizes = nested_and_crossed_levels()
    products = _PatternProducts(levels, sizes)
    small = [lv.dtype == np.int16 for lv in products.group_levels]
    assert not any(small) if ranges == "counted_wide" else all(small)
    if ranges == "hashed":
        assert all(pair.local is not None for pair in products.pairs)
        assert any(tp.entry is not None for pair in products.pairs for tp in pair.terms)
    else:
        assert all(pair.local is None for pair in products.pairs)
        assert all(tp.entry is None for pair in products.pairs for tp in pair.terms)
    E = indicator(levels, sizes)
    rng = np.random.default_rng(8)
    c, d = rng.uniform(0.5, 3.0, len(E)), rng.uniform(1.0, 2.0, E.shape[1])
    expected = E.T @ (c[:, None] * E) + np.diag(d)
    np.testing.assert_allclose(products.assemble(c, d).toarray(), expected, rtol=1e-13)
    np.testing.assert_allclose(products.assemble_dense(c, d), expected, rtol=1e-13)
    # every nonzero of the matrix is on the pattern
    assert np.count_nonzero(expected) <= len(products.keys)
    R = rng.normal(size=(E.shape[1], E.shape[1]))
    R = R + R.T
    forms = products.quadratic_forms(R.ravel()[products.keys])
    on_pattern = np.zeros(R.size)
    on_pattern[products.keys] = R.ravel()[products.keys]
    R_on = on_pattern.reshape(R.shape)
    np.testing.assert_allclose(forms, np.einsum("ij,jk,ik->i", E, R_on, E), rtol=1e-12)
    # e_p' R e_p reads only entries on the pattern, so it is the full R's form too
    np.testing.assert_allclose(forms, np.einsum("ij,jk,ik->i", E, R, E), rtol=1e-12)


def test_nothing_is_kept_per_pattern_and_group_pair():
    """Counting over the ranges, a group pair keeps no array as long as the patterns (the
    chained model of a year: 300,000 patterns x 700 group pairs)."""
    levels, sizes = nested_and_crossed_levels()
    products = _PatternProducts(levels, sizes)
    n = products.n_patterns
    assert len(products.pairs) >= 6
    held = [
        value
        for pair in products.pairs
        for obj in (pair, *pair.terms)
        for value in vars(obj).values()
        if isinstance(value, np.ndarray)
    ]
    assert not [a for a in held if len(a) == n]
    assert max(len(a) for a in held) < n


def test_counted_and_hashed_equations_agree(monkeypatch):
    """The fab's equations with the lot kept in the factor (chambers per wafer) built both
    ways: the same matrix, factor and leverages."""
    data = fab_like(lots=40, ops=3, seed=5)
    rng = np.random.default_rng(6)
    for k in range(3):  # deal the chambers per wafer: the lot fixes no pattern
        data[f"chamber{k}"] = data[f"tool{k}"] * 2 + rng.integers(0, 2, len(data))
    formula = fab_formula()
    counted = make_model(data, formula, True, monkeypatch, dense=False).mme
    with monkeypatch.context() as patch:
        patch.setattr(hglm.mme, "_COUNT_RANGE_PER_KEY", 0)
        patch.setattr(hglm.mme, "_COUNT_RANGE_SLACK", 0)
        hashed = make_model(data, formula, True, monkeypatch, dense=False).mme
    assert counted.elimination is None and counted.n_patterns > data["lot"].nunique()
    assert any(pair.local is not None for pair in hashed.products.pairs)
    a = rng.uniform(0.5, 5.0, counted.n)
    w_m = rng.uniform(1.0, 20.0, counted.q)
    r, z_m = rng.normal(size=counted.n), rng.normal(size=counted.q)
    sols = [mme.solve(a, r, w_m, z_m) for mme in (counted, hashed)]
    np.testing.assert_allclose(sols[0].v, sols[1].v, rtol=TOL, atol=TOL)
    assert sols[0].logdet_H == pytest.approx(sols[1].logdet_H, rel=1e-12)
    np.testing.assert_allclose(
        counted.row_variances(sols[0]), hashed.row_variances(sols[1]), rtol=TOL
    )
