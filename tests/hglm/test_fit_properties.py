"""Invariants: row order and level labels do not matter; the optimum is an optimum."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hglm
from hglm.criterion import Criterion

from .conftest import load_dataset

CBPP = load_dataset("cbpp")
FORMULA = "incidence ~ period + (1|herd)"
SETTINGS = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _fit(data: pd.DataFrame, method: str = "EQL", **kw) -> hglm.HGLMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(FORMULA, data, family="binomial", trials="size", method=method, **kw)


@pytest.fixture(scope="module")
def base() -> hglm.HGLMResult:
    return _fit(CBPP)


@pytest.fixture(scope="module")
def laplace() -> hglm.HGLMResult:
    return _fit(CBPP, method="HL(1,1)", reml=False)


def _assert_same_fit(a: hglm.HGLMResult, b: hglm.HGLMResult, rtol: float = 1e-7) -> None:
    np.testing.assert_allclose(a.fixef.to_numpy(), b.fixef.to_numpy(), rtol=rtol)
    np.testing.assert_allclose(a.varcomp["lambda"], b.varcomp["lambda"], rtol=rtol)
    np.testing.assert_allclose(a.varcomp["se_log"], b.varcomp["se_log"], rtol=rtol)
    for key, value in a.likelihood.items():
        assert b.likelihood[key] == pytest.approx(value, rel=rtol)


@SETTINGS
@given(st.permutations(range(len(CBPP))))
def test_row_order_does_not_matter(base: hglm.HGLMResult, order: list[int]) -> None:
    shuffled = CBPP.iloc[order].reset_index(drop=True)
    res = _fit(shuffled)
    _assert_same_fit(base, res)
    # fitted values follow their rows
    np.testing.assert_allclose(res.fitted, base.fitted[np.asarray(order)], rtol=1e-7)


@SETTINGS
@given(st.lists(st.text("abcdefgh", min_size=1, max_size=6), min_size=15, max_size=15, unique=True))
def test_level_labels_do_not_matter(base: hglm.HGLMResult, names: list[str]) -> None:
    old = sorted(CBPP["herd"].unique())
    mapping = dict(zip(old, names, strict=True))
    relabelled = CBPP.assign(herd=CBPP["herd"].map(mapping))
    res = _fit(relabelled)
    _assert_same_fit(base, res)
    new_ranef = res.ranef["herd"]
    for label, row in base.ranef["herd"].iterrows():
        assert new_ranef.loc[mapping[label], "v"] == pytest.approx(row["v"], rel=1e-6, abs=1e-9)


def test_row_order_does_not_matter_for_hl() -> None:
    order = np.random.default_rng(2).permutation(len(CBPP))
    a = _fit(CBPP, method="HL(1,1)", reml=False)
    b = _fit(CBPP.iloc[order].reset_index(drop=True), method="HL(1,1)", reml=False)
    _assert_same_fit(a, b, rtol=1e-5)


def _laplace_criterion(laplace: hglm.HGLMResult) -> tuple[Criterion, np.ndarray, float]:
    out = laplace.outcome
    crit = Criterion(laplace.model, out.disp, out.mean, "p_v", beta_free=True)
    x_hat = np.concatenate([out.mean.beta, out.disp.theta()])
    return crit, x_hat, crit(x_hat)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(st.floats(-0.05, 0.05, allow_nan=False), min_size=5, max_size=5).filter(
        lambda d: max(abs(x) for x in d) > 1e-4
    )
)
def test_p_v_is_not_improved_by_perturbing_the_estimates(
    laplace: hglm.HGLMResult, delta: list[float]
) -> None:
    crit, x_hat, best = _laplace_criterion(laplace)
    assert best == pytest.approx(laplace.likelihood["p_v"], abs=1e-8)
    assert crit(x_hat + np.asarray(delta)) <= best + 1e-7


def test_gradient_of_p_v_vanishes_at_the_optimum(laplace: hglm.HGLMResult) -> None:
    crit, x_hat, _ = _laplace_criterion(laplace)
    assert np.max(np.abs(crit.gradient(x_hat))) < 1e-3
