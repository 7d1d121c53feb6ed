"""hglm.solve (the one dispatcher), FitControl, the diagnostics record, keyword-only options."""

from __future__ import annotations

import dataclasses
import warnings

import numpy as np
import pandas as pd
import pytest

import hglm
import hglm.dispatch
import hglm.inference.refits
from hglm.design import build_design
from hglm.families import response_family
from hglm.formula import parse_formula
from hglm.model import Model

from .conftest import load_dataset

CBPP = load_dataset("cbpp")
CBPP_FORMULA = "incidence ~ period + (1|herd)"


def _quiet_fit(*args, **kwargs) -> hglm.HGLMResult:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit(*args, **kwargs)


def _cbpp_model() -> Model:
    design = build_design(
        parse_formula(CBPP_FORMULA), CBPP, response_family("binomial"), trials="size"
    )
    return Model(design)


def _lmm_data(seed: int = 3) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    g = np.repeat(np.arange(12), 6)
    x = rng.normal(size=len(g))
    y = 1.0 + 0.5 * x + rng.normal(0, 0.8, 12)[g] + rng.normal(0, 1.0, len(g))
    return pd.DataFrame({"g": g.astype(str), "x": x, "y": y})


def _lmm_model(df: pd.DataFrame) -> Model:
    return Model(build_design(parse_formula("y ~ x + (1|g)"), df, response_family("gaussian")))


def _zero_variance_data() -> pd.DataFrame:
    # every group holds the same values, so the group means are identical: lambda-hat = 0
    rng = np.random.default_rng(7)
    values = np.array([-2.0, -0.5, 0.0, 1.0, 1.5])
    return pd.DataFrame(
        {
            "g": np.repeat(np.arange(10), 5).astype(str),
            "y": np.concatenate([rng.permutation(values) for _ in range(10)]),
        }
    )


@pytest.fixture
def calls(monkeypatch) -> list[str]:
    """The algorithms ``solve`` calls, in order (the real ones run)."""
    seen: list[str] = []
    for name in ("fit_eql", "fit_hl", "fit_lmm"):
        real = getattr(hglm.dispatch, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            seen.append(_name + (":start" if kwargs.get("start_only") else ""))
            return _real(*args, **kwargs)

        monkeypatch.setattr(hglm.dispatch, name, spy)
    return seen


# ------------------------------------------------------------------- dispatch


def test_eql_route_runs_eql_alone(calls) -> None:
    out = hglm.solve(_cbpp_model(), "EQL")
    assert calls == ["fit_eql"]
    assert out.converged and "eql" in out.timings
    ref = _quiet_fit(CBPP_FORMULA, CBPP, family="binomial", trials="size", method="EQL")
    np.testing.assert_array_equal(out.mean.beta, ref.outcome.mean.beta)


def test_hl_route_of_a_glmm_starts_from_eql(calls) -> None:
    out = hglm.solve(_cbpp_model(), "HL(1,1)", reml=False)
    assert calls == ["fit_eql:start", "fit_hl"]
    assert out.converged and out.timings["iterations_eql"] >= 1
    ref = _quiet_fit(
        CBPP_FORMULA, CBPP, family="binomial", trials="size", method="HL(1,1)", reml=False
    )
    np.testing.assert_array_equal(out.mean.beta, ref.outcome.mean.beta)
    assert out.likelihood.p_v == ref.likelihood["p_v"]


@pytest.mark.parametrize("method", ["HL(0,1)", "HL(1,1)"])
def test_linear_mixed_models_take_the_profiled_route(calls, method: str) -> None:
    out = hglm.solve(_lmm_model(_lmm_data()), method)
    assert calls == ["fit_lmm"]
    assert out.converged and "iterations_eql" not in out.timings


def test_method_spellings_and_unknown_method() -> None:
    model = _lmm_model(_lmm_data())
    a = hglm.solve(model, "hl11")
    b = hglm.solve(model, "HL(1, 1)")
    np.testing.assert_array_equal(a.mean.beta, b.mean.beta)
    with pytest.raises(ValueError, match="method must be one of"):
        hglm.solve(model, "REML")


def test_refits_go_through_solve_with_the_fit_as_start(monkeypatch) -> None:
    df = _lmm_data()
    res = hglm.fit("y ~ x + (1|g)", df, method="HL(0,1)")
    seen = []
    real = hglm.inference.refits.solve

    def spy(model, method, **kwargs):
        seen.append((method, kwargs["start"], kwargs["control"]))
        return real(model, method, **kwargs)

    monkeypatch.setattr(hglm.inference.refits, "solve", spy)
    again = hglm.inference.refit(res, df["y"].to_numpy())
    assert seen == [("HL(0,1)", res, res.control)]
    assert again.converged and again.control is res.control


# ---------------------------------------------------------------------- start=


def test_start_from_a_glmm_fit_reaches_its_optimum_in_fewer_iterations() -> None:
    kw = dict(family="binomial", trials="size", method="HL(1,1)", reml=False)
    cold = _quiet_fit(CBPP_FORMULA, CBPP, **kw)
    warm = _quiet_fit(CBPP_FORMULA, CBPP, start=cold, **kw)
    assert warm.converged
    assert warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.fixef["estimate"], cold.fixef["estimate"], rtol=1e-5)
    np.testing.assert_allclose(warm.varcomp["lambda"], cold.varcomp["lambda"], rtol=1e-4)
    assert warm.likelihood["p_v"] == pytest.approx(cold.likelihood["p_v"], abs=1e-6)


def test_start_from_an_lmm_fit_reaches_its_optimum_in_fewer_iterations() -> None:
    df = _lmm_data()
    cold = hglm.fit("y ~ x + (1|g)", df, method="HL(0,1)")
    warm = hglm.solve(cold.model, "HL(0,1)", start=cold.outcome)
    assert warm.converged and warm.n_iter < cold.n_iter
    np.testing.assert_allclose(warm.mean.beta, cold.outcome.mean.beta, rtol=1e-6)
    assert warm.likelihood.p_beta_v == pytest.approx(cold.likelihood["p_beta_v"], abs=1e-8)


def test_start_must_be_a_fit_of_the_same_model() -> None:
    df = _lmm_data()
    other = hglm.fit("y ~ 1 + (1|g)", df, method="HL(0,1)")
    with pytest.raises(ValueError, match="another structure"):
        hglm.fit("y ~ x + (1|g)", df, method="HL(0,1)", start=other)
    with pytest.raises(TypeError, match="previous fit"):
        hglm.fit("y ~ x + (1|g)", df, method="HL(0,1)", start={"beta": [0.0]})


# ------------------------------------------------------------------ FitControl


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_iter", 0),
        ("max_iter", 2.5),
        ("max_iter", True),
        ("outer_max_iter", -1),
        ("eql_tol", 0.0),
        ("eql_tol", 1.5),
        ("eql_start_tol", "small"),
        ("dispersion_se", "yes"),
    ],
)
def test_fit_control_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=f"FitControl.{field} must be"):
        hglm.FitControl(**{field: value})


def test_fit_control_is_frozen_and_validated_on_replace() -> None:
    control = hglm.FitControl()
    with pytest.raises(dataclasses.FrozenInstanceError):
        control.max_iter = 3  # type: ignore[misc]
    with pytest.raises(ValueError, match="max_iter"):
        dataclasses.replace(control, max_iter=0)


def test_control_and_the_shorthand_keywords_agree() -> None:
    semi = load_dataset("semiconductor")
    args = ("y ~ x1 + x3 + (1|Device)", semi)
    kw = dict(family="gamma", method="EQL")
    by_keyword = _quiet_fit(*args, max_iter=1, **kw)
    by_control = _quiet_fit(*args, control=hglm.FitControl(max_iter=1), **kw)
    assert by_keyword.control == by_control.control == hglm.FitControl(max_iter=1)
    assert not by_control.converged
    np.testing.assert_array_equal(by_keyword.outcome.mean.beta, by_control.outcome.mean.beta)
    with pytest.raises(TypeError, match="FitControl"):
        hglm.fit(*args, control={"max_iter": 1}, **kw)


# ----------------------------------------------------------------- diagnostics


@pytest.mark.parametrize("method", ["HL(0,1)", "HL(1,1)"])
def test_diagnostics_name_the_singular_term(method: str) -> None:
    with pytest.warns(hglm.ConvergenceWarning, match="singular fit"):
        res = hglm.fit("y ~ 1 + (1|g)", _zero_variance_data(), method=method)
    diag = res.diagnostics
    assert isinstance(diag, hglm.Diagnostics)
    assert diag.singular_terms == ("g",) and diag.is_singular
    assert diag.singular[0].lam == pytest.approx(float(res.lambdas["g"]))
    # singular is not non-convergence, and the status texts hold no singularity text
    assert diag.converged and diag.code is hglm.ConvergenceCode.CONVERGED
    assert diag.messages == ()
    assert res.warnings == [s.message for s in diag.singular] == res.singular


def test_diagnostics_of_a_regular_fit() -> None:
    res = hglm.fit("y ~ x + (1|g)", _lmm_data(), method="HL(1,1)")
    diag = res.diagnostics
    assert diag.converged and diag.code is hglm.ConvergenceCode.CONVERGED
    assert diag.singular_terms == () and diag.messages == () and res.warnings == []
    assert diag.iterations == res.n_iter


def test_diagnostics_of_a_fit_that_ran_out_of_iterations() -> None:
    semi = load_dataset("semiconductor")
    with pytest.warns(hglm.ConvergenceWarning, match="did not converge"):
        res = hglm.fit("y ~ x1 + x3 + (1|Device)", semi, family="gamma", method="EQL", max_iter=1)
    diag = res.diagnostics
    assert not diag.converged and diag.code is hglm.ConvergenceCode.MAX_ITERATIONS
    assert diag.messages == ("EQL did not converge in 1 iterations",)
    assert list(diag.messages) == res.warnings[: len(diag.messages)]


# ---------------------------------------------------------------- keyword-only


def test_options_are_keyword_only() -> None:
    df = _lmm_data()
    with pytest.raises(TypeError):
        hglm.fit("y ~ x + (1|g)", df, "gaussian")  # type: ignore[misc]
    res = hglm.fit("y ~ x + (1|g)", df, method="HL(0,1)")
    small = hglm.fit("y ~ x", df, method="HL(0,1)")
    with pytest.raises(TypeError):
        hglm.lrt(small, res, "naive")  # type: ignore[misc]
    with pytest.raises(TypeError):
        hglm.profile_ci(res, ["lambda: g"])  # type: ignore[misc]
    with pytest.raises(TypeError):
        res.predict(None, "link")  # type: ignore[misc]
    with pytest.raises(TypeError):
        hglm.solve(res.model, "HL(0,1)", False)  # type: ignore[misc]
