"""The SEs of the log-dispersion parameters are computed on first request, once, and agree with
the eager computation and with the curvature of the criterion itself."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import hglm
from hglm.criterion import Criterion
from hglm.dispersion_se import DispersionSE

from .conftest import load_dataset

SEMI = load_dataset("semiconductor")
SEMI_FORMULA = "y ~ x1 + x3 + x5 + x6 + (1|Device)"
CBPP = load_dataset("cbpp")


def _semi(**kw) -> hglm.HGLMResult:
    return hglm.fit(SEMI_FORMULA, SEMI, family="gamma", link="log", disp="~ x2 + x3", **kw)


def _cbpp(**kw) -> hglm.HGLMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(
            "incidence ~ period + (1|herd)", CBPP, family="binomial", trials="size", **kw
        )


@pytest.fixture
def count_hessians(monkeypatch) -> list[int]:
    """Counts the finite-difference Hessians evaluated (the real method still runs)."""
    calls: list[int] = []
    real = Criterion.hessian

    def counted(self, x, *args, **kwargs):
        calls.append(len(x))
        return real(self, x, *args, **kwargs)

    monkeypatch.setattr(Criterion, "hessian", counted)
    return calls


@pytest.mark.parametrize("reml", [True, False])
def test_fit_leaves_the_hessian_for_later_and_computes_it_once(count_hessians, reml) -> None:
    res = _semi(reml=reml)
    assert isinstance(res.outcome.disp_se, DispersionSE)
    assert not res.outcome.disp_se.computed and count_hessians == []
    assert res.timings["se_hessian"] == 0.0
    first = res.varcomp["se_log"].to_numpy()
    assert count_hessians == [len(res.outcome.disp.theta()) + (0 if reml else res.design.p)]
    spent = res.timings["se_hessian"]
    assert spent > 0.0
    # every later reader uses the same numbers without another Hessian
    np.testing.assert_array_equal(res.varcomp["se_log"].to_numpy(), first)
    assert np.all(np.isfinite(res.disp_coef["se"])) and "Device" in res.summary()
    res.to_dict()
    assert len(count_hessians) == 1 and res.timings["se_hessian"] == spent


@pytest.mark.parametrize("reml", [True, False])
def test_lazy_and_eager_standard_errors_are_the_same(count_hessians, reml) -> None:
    lazy = _semi(reml=reml)
    eager = _semi(reml=reml, dispersion_se=True)
    assert eager.outcome.disp_se.computed and len(count_hessians) == 1
    assert eager.timings["se_hessian"] > 0.0
    assert eager.timings["total"] >= eager.timings["se_hessian"]
    np.testing.assert_array_equal(lazy.varcomp["se_log"], eager.varcomp["se_log"])
    np.testing.assert_array_equal(lazy.disp_coef["se"], eager.disp_coef["se"])
    assert len(count_hessians) == 2


def test_standard_error_is_the_curvature_of_the_criterion() -> None:
    """One dispersion parameter (cbpp, HL(1,1) with REML dispersions): the SE of log lambda is
    1/sqrt of minus the second difference of p_beta,v(h) itself (values, not gradients)."""
    res = _cbpp(method="HL(1,1)", reml=True)
    theta = res.outcome.disp.theta()
    crit = Criterion(res.model, res.outcome.disp, res.outcome.mean, "p_beta_v", beta_free=False)
    step = 1e-2
    second = (crit(theta + step) - 2 * crit(theta) + crit(theta - step)) / step**2
    assert res.varcomp.loc["herd", "se_log"] == pytest.approx(1 / np.sqrt(-second), rel=1e-3)


def test_eql_standard_errors_come_with_the_fit() -> None:
    """EQL's SEs are the dispersion GLMs' own: nothing to defer."""
    res = _cbpp(method="EQL")
    assert not isinstance(res.outcome.disp_se, DispersionSE)
    assert res.varcomp.loc["herd", "se_log"] > 0 and "se_hessian" not in res.timings


def test_lambdas_need_no_hessian(count_hessians) -> None:
    res = _semi(reml=False)
    lam = res.lambdas
    assert count_hessians == [] and not res.outcome.disp_se.computed
    np.testing.assert_allclose(lam.to_numpy(), res.varcomp["lambda"].to_numpy(), rtol=1e-12)
    assert list(lam.index) == list(res.varcomp.index)
