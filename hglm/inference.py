"""Inference on fitted HGLMs: likelihood-ratio tests, profile intervals, parametric bootstrap.

* ``lrt(smaller, larger)``: the likelihood-ratio test on the criterion the fits
  maximised: p_v(h) for fixed effects (Laplace ML: both fits HL(1,1), reml=False) and for
  ML-fitted variance components; p_beta,v(h) for REML-fitted variance components with the
  same fixed part. A variance component dropped by the smaller model sits on the boundary
  of the parameter space under H0, so the statistic follows a chi-bar-square mixture
  (Self & Liang 1987; Stram & Lee 1994): with k independent components on the boundary
  and m unconstrained extra parameters, sum_j C(k, j) 2^-k chi2_{m+j}; for one component
  and nothing else, 50:50 chi2_0 / chi2_1. Where the weights are not known (a dropped
  term with a dispersion model) the null distribution comes from a parametric bootstrap.
* ``profile_ci(res)``: intervals for lambda and phi from the profile of the same criterion
  on the log scale, the other dispersion parameters maximised out; a Wald interval on the
  log scale stands in (labelled so) where the profile cannot be traced.
* ``bootstrap(res, n, func)``: parametric bootstrap of any function of a fit: responses
  simulated from the fit (``hglm.simulate``), refitted warm-started from the estimates.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.optimize
from scipy import special, stats

from hglm.fitting import (
    LOG_LAMBDA_BOUNDS,
    ConvergenceWarning,
    Criterion,
    FitOutcome,
    Model,
    fit_eql,
    fit_hl,
)
from hglm.simulate import design_response, simulate_responses

if TYPE_CHECKING:
    from hglm.results import HGLMResult

_FIT_ERRORS = (
    np.linalg.LinAlgError,
    FloatingPointError,
    ValueError,
    ZeroDivisionError,
    RuntimeError,
)
_CRITERION_TEXT = {"p_v": "p_v(h)", "p_beta_v": "p_beta,v(h)"}


# ===================================================================== refits


def refit(res: HGLMResult, y: np.ndarray, warm_start: bool = True) -> HGLMResult:
    """The same model fitted to a new response vector (on the data column's scale).

    The design, its sparse symbolic factorisation and the method are reused. HL fits start
    from ``res``'s estimates (no EQL pass) and fall back to a cold start (EQL, then HL) if
    that does not converge; EQL fits always start cold, as R hglm does."""
    from hglm.results import HGLMResult

    if res.theta_estimate is not None:
        # a refit would hold theta at its estimate, which a bootstrap must not do
        raise NotImplementedError(
            "refits (bootstrap, simulation-based tests) of a negative binomial fit with "
            "theta estimated are not supported yet"
        )
    model = _model_with_response(res.model, design_response(res.design, y))
    t0 = time.perf_counter()
    outcome: FitOutcome | None = None
    mean_order = 1 if res.method == "HL(1,1)" else 0
    if res.method != "EQL" and warm_start:
        try:
            outcome = fit_hl(model, res.outcome, mean_order=mean_order, reml=res.reml)
        except _FIT_ERRORS:
            outcome = None
    if outcome is None or not outcome.converged:
        outcome = fit_eql(model)
        if res.method != "EQL" and outcome.converged:
            outcome = fit_hl(model, outcome, mean_order=mean_order, reml=res.reml)
    return HGLMResult(
        model=model,
        outcome=outcome,
        method=res.method,
        reml=res.reml,
        call=res.call,
        warnings=list(outcome.messages),
        timings={"total": time.perf_counter() - t0},
    )


def _model_with_response(model: Model, y: np.ndarray) -> Model:
    # Nothing in a Model but the design depends on y: the mixed-model equations (pattern,
    # symbolic factorisation) are shared, and every solve refactors numerically.
    clone = copy.copy(model)
    clone.design = dataclasses.replace(model.design, y=y)
    return clone


# ============================================================ criteria at a fit


@dataclass
class _Criteria:
    """The criterion a fit's dispersions maximise, as a function of its free parameters.

    ``x`` holds (beta, theta) when beta is a parameter of the criterion (HL(1,1) with ML
    dispersions: beta and theta jointly maximise p_v(h)), else theta alone (beta and v
    are solved inside). theta = (log-phi coefficients, log-lambda coefficients)."""

    res: HGLMResult
    which: str
    beta_free: bool
    crit: Criterion
    x_hat: np.ndarray
    bounds: list[tuple[float | None, float | None]]
    value_hat: float
    note: str = ""
    verified: bool = True  # x_hat is a stationary point (checked when it was searched again)

    @property
    def offset(self) -> int:
        return self.res.design.p if self.beta_free else 0


def _theta_bounds(res: HGLMResult) -> list[tuple[float | None, float | None]]:
    disp = res.outcome.disp
    bounds: list[tuple[float | None, float | None]] = (
        [] if disp.phi_fixed else [(-50.0, 50.0)] * len(disp.gamma)
    )
    for t, dk in zip(res.design.terms, disp.delta, strict=True):
        bounds += [LOG_LAMBDA_BOUNDS if t.X_disp.shape[1] == 1 else (None, None)] * len(dk)
    return bounds


def _criteria(res: HGLMResult) -> _Criteria:
    """The dispersion criterion of ``res`` and its maximum (re-located for EQL fits, whose
    estimates only approximate the maximiser of p_beta,v(h))."""
    which = "p_v" if (res.method != "EQL" and not res.reml) else "p_beta_v"
    beta_free = res.method == "HL(1,1)" and not res.reml
    out = res.outcome
    crit = Criterion(res.model, out.disp, out.mean, which, beta_free=beta_free)
    theta = out.disp.theta()
    bounds = _theta_bounds(res)
    lo = [b[0] if b[0] is not None else -np.inf for b in bounds]
    hi = [b[1] if b[1] is not None else np.inf for b in bounds]
    theta = np.clip(theta, lo, hi)
    if beta_free:
        x = np.concatenate([out.mean.beta, theta])
        bounds = [(None, None)] * res.design.p + bounds
    else:
        x = theta
    note = ""
    verified = True
    if res.method == "EQL" or not res.converged:
        x, verified = _remaximise(crit, x, bounds)
        note = (
            "EQL estimates do not maximise p_beta,v(h): its maximum is used"
            if res.method == "EQL"
            else f"the fit did not converge; {_CRITERION_TEXT[which]} was maximised again "
            "from its estimates"
        )
    value = crit(x)
    if not np.isfinite(value):
        raise FloatingPointError("the criterion is not finite at the estimates")
    return _Criteria(
        res, which, beta_free, crit, np.asarray(x, float), bounds, value, note, verified
    )


def _remaximise(
    crit: Criterion, x0: np.ndarray, bounds: list[tuple[float | None, float | None]]
) -> tuple[np.ndarray, bool]:
    """Maximise the criterion from x0 with central-difference gradients; report whether the
    result is stationary (projected gradient below 1e-3, parameters at a bound excepted)."""

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        f = crit(x)
        if not np.isfinite(f):
            return 1e300, np.zeros_like(x)
        return -f, -crit.gradient(x)

    opt = scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": 200, "ftol": 1e-12, "gtol": 1e-5},
    )
    x = np.asarray(opt.x, dtype=float)
    g = crit.gradient(x)
    free = np.ones(len(x), dtype=bool)
    for i, (lo, hi) in enumerate(bounds):
        at_lo = lo is not None and x[i] <= lo + 1e-6 and g[i] <= 0
        at_hi = hi is not None and x[i] >= hi - 1e-6 and g[i] >= 0
        free[i] = not (at_lo or at_hi)
    ok = bool(np.all(np.isfinite(g)) and np.all(np.abs(g[free]) < 1e-3))
    return x, ok


def _maximum(res: HGLMResult, which: str) -> tuple[float, str | None]:
    """The maximised criterion of a fit; for a fit that reports non-convergence, the
    criterion is maximised again from its estimates and used only if that converges."""
    if res.converged:
        return criterion_value(res, which), None
    problem = "; ".join(res.warnings) or "no reason given"
    try:
        c = _criteria(res)
    except _FIT_ERRORS as exc:
        c, problem = None, f"{problem}; maximising again failed: {exc}"
    if c is None or c.which != which or not c.verified:
        raise ValueError(
            f"the fit of {res.design.formula.response} ~ {res.design.formula.fixed} with "
            f"{len(res.design.terms)} random term(s) did not converge ({problem}); its "
            "likelihood cannot be tested"
        )
    return c.value_hat, c.note


def criterion_value(res: HGLMResult, which: str) -> float:
    """p_v(h) or p_beta,v(h) of a fit, evaluated as the criterion it maximises.

    p_beta,v(h) is taken at the (beta, v) maximising h for the fitted dispersions (for
    HL(1,1) the reported beta maximises p_v(h) instead, which would not be the REML
    criterion's maximum)."""
    if which == "p_v":
        return float(res.likelihood["p_v"])
    out = res.outcome
    crit = Criterion(res.model, out.disp, out.mean, "p_beta_v", beta_free=False)
    value = crit(out.disp.theta())
    if not np.isfinite(value):
        raise FloatingPointError("p_beta,v(h) is not finite at the estimates")
    return float(value)


# ================================================================== LRT


@dataclass(frozen=True)
class LRTResult:
    """A likelihood-ratio test between nested HGLM fits."""

    statistic: float
    df: int
    pvalue: float
    method: str  # how the p-value was obtained
    criterion: str  # "p_v" or "p_beta_v"
    n_boundary: int  # variance components set to their boundary (lambda = 0) by H0
    naive_pvalue: float  # chi2(df), ignoring the boundary
    weights: tuple[float, ...] | None = None  # chi-bar-square weights of chi2_{m}, ..., chi2_{m+k}
    n_boot: int | None = None
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [
            f"Likelihood-ratio test on {_CRITERION_TEXT[self.criterion]}",
            f"  statistic = {self.statistic:.4f}, df = {self.df}, p-value = {self.pvalue:.4g}",
            f"  null distribution: {self.method}",
        ]
        if self.n_boundary:
            lines.append(
                f"  (naive chi2({self.df}) p-value ignoring the boundary: {self.naive_pvalue:.4g})"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _same_data(a: HGLMResult, b: HGLMResult) -> None:
    da, db = a.design, b.design
    if str(da.family) != str(db.family):
        raise ValueError(
            f"the fits have different response families ({da.family} vs {db.family}); "
            "they are not nested"
        )
    if da.n != db.n:
        raise ValueError(f"the fits use different data ({da.n} vs {db.n} rows)")
    for what, xa, xb in (
        ("responses", da.y, db.y),
        ("prior weights / trials", da.prior_weights, db.prior_weights),
        ("offsets", da.offset, db.offset),
    ):
        if not np.allclose(xa, xb, rtol=1e-12, atol=1e-12):
            rows = np.flatnonzero(~np.isclose(xa, xb, rtol=1e-12, atol=1e-12))[:10].tolist()
            raise ValueError(
                f"the fits use different data: their {what} differ (rows {rows}); "
                "a likelihood-ratio test needs both models fitted to the same data"
            )


def _span_contains(big: np.ndarray, small: np.ndarray) -> bool:
    """Whether every column of ``small`` lies in the column space of ``big``."""
    if small.shape[1] == 0:
        return True
    if big.shape[1] == 0:
        return False
    coef, *_ = np.linalg.lstsq(big, small, rcond=None)
    resid = small - big @ coef
    return bool(np.all(np.linalg.norm(resid, axis=0) <= 1e-8 * (1 + np.linalg.norm(small, axis=0))))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    # two code vectors define the same grouping if the pairs (a_i, b_i) are one-to-one
    pairs = np.unique(np.column_stack([a, b]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _nesting(small: HGLMResult, large: HGLMResult) -> tuple[int, int, list[str], list[str]]:
    """Check that ``small`` is nested in ``large``; return (extra fixed, extra dispersion
    parameters, dropped intercept-only terms, dropped terms with a dispersion model)."""
    ds, dl = small.design, large.design
    if not _span_contains(dl.X, ds.X):
        raise ValueError(
            f"the fixed effects {ds.fixed_names} of the smaller model are not contained in "
            f"those of the larger model {dl.fixed_names}: the models are not nested"
        )
    extra_fixed = dl.p - ds.p
    if ds.family.fixed_dispersion != dl.family.fixed_dispersion:
        raise ValueError("one fit estimates phi and the other does not: not nested")
    if not ds.family.fixed_dispersion and not _span_contains(dl.X_disp, ds.X_disp):
        raise ValueError(
            f"the dispersion model of phi ({ds.disp_names}) of the smaller model is not "
            f"contained in the larger one's ({dl.disp_names})"
        )
    extra_disp = 0 if dl.family.fixed_dispersion else dl.X_disp.shape[1] - ds.X_disp.shape[1]
    matched: set[int] = set()
    for ts in ds.terms:
        hit = None
        for j, tl in enumerate(dl.terms):
            if j not in matched and _same_partition(ts.codes, tl.codes):
                hit = j
                break
        if hit is None:
            raise ValueError(
                f"the random term {ts.term.label} of the smaller model has no counterpart in "
                "the larger model: the models are not nested"
            )
        tl = dl.terms[hit]
        matched.add(hit)
        if str(ts.family) != str(tl.family):
            raise ValueError(
                f"the random term {ts.term.label} has family {ts.family} in the smaller model "
                f"and {tl.family} in the larger: the models are not nested"
            )
        # levels are sorted identically for identical partitions of the same rows
        if not _span_contains(tl.X_disp, ts.X_disp):
            raise ValueError(
                f"the dispersion model of {ts.term.label} in the smaller model is not "
                "contained in the larger one's"
            )
        extra_disp += tl.X_disp.shape[1] - ts.X_disp.shape[1]
    dropped_simple, dropped_modelled = [], []
    for j, tl in enumerate(dl.terms):
        if j in matched:
            continue
        extra_disp += tl.X_disp.shape[1]
        (dropped_simple if tl.X_disp.shape[1] == 1 else dropped_modelled).append(tl.term.label)
    if extra_fixed < 0 or extra_disp < 0 or extra_fixed + extra_disp == 0:
        raise ValueError(
            "the 'larger' model does not have more parameters than the 'smaller' one "
            f"({extra_fixed:+d} fixed, {extra_disp:+d} dispersion): pass the fits as "
            "lrt(smaller, larger) with the smaller model nested in the larger"
        )
    return extra_fixed, extra_disp, dropped_simple, dropped_modelled


def _method_free(res: HGLMResult) -> bool:
    # a GLM with phi fixed (binomial, Poisson) has no dispersion to estimate: every method
    # gives its maximum likelihood fit
    return not res.design.terms and res.design.family.fixed_dispersion


def _choose_criterion(small: HGLMResult, large: HGLMResult, fixed_differ: bool) -> str:
    if _method_free(small) and _method_free(large):
        return "p_v"
    if _method_free(small):
        small = large
    if small.method != large.method or small.reml != large.reml:
        raise ValueError(
            f"the fits use different methods ({small.method}, reml={small.reml} vs "
            f"{large.method}, reml={large.reml}); refit both the same way"
        )
    if small.method == "EQL":
        raise ValueError(
            "EQL estimates do not maximise a likelihood, so their likelihood ratio has no "
            "known distribution; refit both models with method='HL(1,1)' (reml=False to "
            "compare fixed effects)"
        )
    if fixed_differ:
        if small.reml:
            raise ValueError(
                "REML fits (reml=True) with different fixed effects cannot be compared: "
                "p_beta,v(h) depends on the fixed-effects design. Refit both with "
                "method='HL(1,1)', reml=False and test on p_v(h)"
            )
        exact_beta = small.method == "HL(1,1)" or (
            small.design.family.name == "gaussian"
            and small.design.family.link.name == "identity"
            and all(t.family.name == "normal" for t in large.design.terms)
        )
        if not exact_beta:
            raise ValueError(
                "HL(0,1) estimates beta by h, not by p_v(h), except in linear mixed models; "
                "refit both with method='HL(1,1)', reml=False to test fixed effects"
            )
        return "p_v"
    return "p_beta_v" if small.reml else "p_v"


def chibar_weights(n_boundary: int) -> np.ndarray:
    """Weights of chi2_m, ..., chi2_{m+k} for k independent boundary components: Binomial(k, 1/2)."""
    k = n_boundary
    return np.array([special.comb(k, j) / 2.0**k for j in range(k + 1)])


def chibar_pvalue(statistic: float, n_free: int, n_boundary: int) -> float:
    """P(T >= t) for T ~ sum_j C(k, j) 2^-k chi2_{m+j}; chi2_0 is a point mass at 0."""
    w = chibar_weights(n_boundary)
    p = 0.0
    for j, wj in enumerate(w):
        dof = n_free + j
        if dof == 0:
            p += wj * (1.0 if statistic <= 0 else 0.0)
        else:
            p += wj * float(stats.chi2.sf(statistic, dof))
    return min(p, 1.0)


def lrt(
    smaller: HGLMResult,
    larger: HGLMResult,
    boundary: str = "auto",
    n_boot: int = 199,
    seed: int | None = None,
    progress: bool | None = None,
) -> LRTResult:
    """Likelihood-ratio test of ``smaller`` (H0) against ``larger``, both fitted to the same data.

    ``boundary``: how to treat variance components that H0 sets to zero: ``"auto"`` (the
    chi-bar-square mixture when its weights are known, else a parametric bootstrap),
    ``"mixture"``, ``"bootstrap"`` (``n_boot`` refits of both models on responses simulated
    from ``smaller``) or ``"naive"`` (plain chi2, conservative)."""
    if boundary not in ("auto", "mixture", "bootstrap", "naive"):
        raise ValueError("boundary must be 'auto', 'mixture', 'bootstrap' or 'naive'")
    _same_data(smaller, larger)
    try:
        extra_fixed, extra_disp, dropped, dropped_modelled = _nesting(smaller, larger)
    except ValueError as exc:
        try:
            _nesting(larger, smaller)
        except ValueError:
            raise exc from None
        raise ValueError(
            "the arguments are the wrong way round: call lrt(smaller, larger) with the "
            "model under H0 first"
        ) from None
    fixed_differ = extra_fixed > 0 or not _span_contains(smaller.design.X, larger.design.X)
    which = _choose_criterion(smaller, larger, fixed_differ)
    statistic, notes = _statistic(smaller, larger, which)
    df = extra_fixed + extra_disp
    naive = float(stats.chi2.sf(statistic, df))
    k = len(dropped)
    mode = boundary
    if mode == "auto":
        mode = "bootstrap" if dropped_modelled else ("mixture" if k else "naive")
    if mode == "mixture" and dropped_modelled:
        raise ValueError(
            f"the mixture weights are not known when dropping {dropped_modelled} (a random "
            "term with a dispersion model); use boundary='bootstrap'"
        )
    if mode == "naive" or (mode == "mixture" and k == 0):
        what = f"chi2({df})"
        if k or dropped_modelled:
            what += " ignoring the boundary (conservative)"
        return LRTResult(statistic, df, naive, what, which, k, naive, notes=tuple(notes))
    if mode == "mixture":
        m = df - k
        w = chibar_weights(k)
        p = chibar_pvalue(statistic, m, k)
        parts = " + ".join(f"{wj:.4g} chi2_{m + j}" for j, wj in enumerate(w))
        what = f"chi-bar-square mixture {parts} ({k} variance component(s) on the boundary)"
        return LRTResult(statistic, df, p, what, which, k, naive, tuple(w), notes=tuple(notes))
    stats_boot, n_failed = _bootstrap_statistics(smaller, larger, which, n_boot, seed, progress)
    ok = stats_boot[np.isfinite(stats_boot)]
    if len(ok) == 0:
        raise ValueError("every bootstrap refit failed; no null distribution")
    p = (1 + int(np.sum(ok >= statistic - 1e-10))) / (len(ok) + 1)
    if n_failed:
        notes.append(f"{n_failed} of {n_boot} bootstrap replicates failed and were dropped")
    what = f"parametric bootstrap ({len(ok)} replicates simulated from the smaller model)"
    return LRTResult(
        statistic, df, p, what, which, k + len(dropped_modelled), naive, None, len(ok), tuple(notes)
    )


def _statistic(small: HGLMResult, large: HGLMResult, which: str) -> tuple[float, list[str]]:
    notes: list[str] = []
    (v_small, n_small), (v_large, n_large) = _maximum(small, which), _maximum(large, which)
    notes += [f"{name} model: {n}" for name, n in (("smaller", n_small), ("larger", n_large)) if n]
    stat = 2.0 * (v_large - v_small)
    if stat < 0:
        # the larger model contains the smaller one, so a negative value is optimisation
        # error; a clearly negative one means a fit missed its maximum
        if stat < -1e-3 * max(1.0, abs(v_small)):
            notes.append(
                f"the larger model's {_CRITERION_TEXT[which]} is below the smaller's by "
                f"{-stat / 2:.3g}: one fit did not reach its maximum"
            )
        stat = 0.0
    return float(stat), notes


def _bootstrap_statistics(
    small: HGLMResult,
    large: HGLMResult,
    which: str,
    n: int,
    seed: int | None,
    progress: bool | None,
) -> tuple[np.ndarray, int]:
    ys = simulate_responses(small, n, seed=seed, new_random_effects=True)
    out = np.full(n, np.nan)
    failed = 0
    with _Progress("LRT bootstrap", n, progress) as bar:
        for i, y in enumerate(ys):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[i], _ = _statistic(refit(small, y), refit(large, y), which)
            except _FIT_ERRORS:
                pass
            failed += int(not np.isfinite(out[i]))
            bar.advance(failed)
    return out, failed


# ======================================================== profile intervals


def _parameter_table(res: HGLMResult) -> list[tuple[str, str, int]]:
    """(label, scale, index into theta) of every dispersion parameter."""
    d = res.design
    disp = res.outcome.disp
    rows: list[tuple[str, str, int]] = []
    pos = 0
    if not disp.phi_fixed:
        if len(disp.gamma) == 1:
            rows.append(("phi", "phi", 0))
        else:
            rows += [(f"log phi: {n}", "log", i) for i, n in enumerate(d.disp_names)]
        pos = len(disp.gamma)
    for t, dk in zip(d.terms, disp.delta, strict=True):
        if len(dk) == 1:
            rows.append((f"lambda: {t.name}", "lambda", pos))
        else:
            rows += [
                (f"log lambda {t.name}: {n}", "log", pos + i) for i, n in enumerate(t.disp_names)
            ]
        pos += len(dk)
    return rows


def _wald_se(res: HGLMResult, index: int) -> float:
    se = np.concatenate(
        (
            []
            if res.outcome.disp.phi_fixed
            else [res.outcome.disp_se.get("phi", np.full(len(res.outcome.disp.gamma), np.nan))]
        )
        + [
            res.outcome.disp_se.get(t.name, np.full(len(dk), np.nan))
            for t, dk in zip(res.design.terms, res.outcome.disp.delta, strict=True)
        ]
    )
    return float(se[index]) if index < len(se) else math.nan


class _Profiler:
    """The profile of one parameter: the criterion maximised over the others.

    The maximiser moves smoothly along the profile, so each point starts from a linear
    extrapolation of the last two; with one other parameter a few Newton steps on a
    three-point stencil finish it, otherwise L-BFGS does."""

    def __init__(self, c: _Criteria, j: int) -> None:
        self.c = c
        self.j = j  # position in x
        self.free = [i for i in range(len(c.x_hat)) if i != j]
        self.trace: list[tuple[float, np.ndarray]] = [(float(c.x_hat[j]), c.x_hat[self.free])]

    def _start(self, t: float) -> np.ndarray:
        pts = sorted(self.trace, key=lambda p: abs(p[0] - t))[:2]
        if len(pts) < 2 or pts[0][0] == pts[1][0]:
            return pts[0][1].copy()
        (t0, z0), (t1, z1) = pts
        return z0 + (z1 - z0) * (t - t0) / (t1 - t0)

    def _clip(self, z: np.ndarray) -> np.ndarray:
        lo = [self.c.bounds[i][0] for i in self.free]
        hi = [self.c.bounds[i][1] for i in self.free]
        return np.clip(
            z, [-np.inf if b is None else b for b in lo], [np.inf if b is None else b for b in hi]
        )

    def __call__(self, t: float) -> float:
        c = self.c
        x = c.x_hat.copy()
        x[self.j] = t
        if not self.free:
            return c.crit(x)
        free = self.free

        def f(z: np.ndarray) -> float:
            xx = x.copy()
            xx[free] = z
            return c.crit(xx)

        z = self._clip(self._start(t))
        value = -math.inf
        if len(free) == 1:
            value, z = self._newton(f, z)
        if not np.isfinite(value):
            value, z = self._lbfgs(f, self._clip(self._start(t)))
        if np.isfinite(value):
            self.trace.append((t, z))
        return value

    def _newton(self, f: Callable[[np.ndarray], float], z: np.ndarray) -> tuple[float, np.ndarray]:
        h = 1e-3
        fz = f(z)
        for _ in range(8):
            fp, fm = f(z + h), f(z - h)
            grad, curv = (fp - fm) / (2 * h), (fp - 2 * fz + fm) / h**2
            if not (np.isfinite(grad) and np.isfinite(curv)) or curv >= 0:
                return -math.inf, z
            step = float(np.clip(-grad / curv, -1.0, 1.0))
            new = self._clip(z + step)
            f_new = f(new)
            while not (np.isfinite(f_new) and f_new >= fz - 1e-10) and abs(step) > 1e-6:
                step /= 2
                new = self._clip(z + step)
                f_new = f(new)
            if not np.isfinite(f_new):
                return -math.inf, z
            z, fz = new, max(f_new, fz)
            # the remaining gain is about grad^2 / (2 |curv|): stop when negligible
            if abs(step) < 1e-4 or grad**2 / (2 * abs(curv)) < 1e-7:
                break
        return fz, z

    def _lbfgs(self, f: Callable[[np.ndarray], float], z0: np.ndarray) -> tuple[float, np.ndarray]:
        bounds = [self.c.bounds[i] for i in self.free]

        def negf(z: np.ndarray) -> tuple[float, np.ndarray]:
            fz = f(z)
            if not np.isfinite(fz):
                return 1e300, np.zeros_like(z)
            g = np.zeros_like(z)
            for k in range(len(z)):
                e = np.zeros_like(z)
                e[k] = 1e-4
                g[k] = (f(z + e) - f(z - e)) / 2e-4
            return -fz, -g

        opt = scipy.optimize.minimize(
            negf,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 100, "ftol": 1e-10, "gtol": 1e-3},
        )
        value = -float(opt.fun)
        return (value if value > -1e299 else -math.inf), opt.x


def _profile_side(
    prof: _Profiler,
    t_hat: float,
    value_hat: float,
    z: float,
    step: float,
    sign: int,
    bound: float | None,
) -> tuple[float, bool]:
    """Where the signed root sqrt(2 (max - profile)) reaches z on one side of t_hat.

    The root is close to linear in the log-scale parameter, so a secant on it converges
    in a few steps; it is safeguarded by the bracket [inside, outside] once one exists.
    Returns (limit, at_boundary): ``at_boundary`` when the profile stays within the
    interval all the way to the parameter's bound."""

    def root(t: float) -> float:
        v = prof(t)
        if not np.isfinite(v):
            raise FloatingPointError(f"the profile criterion is not finite at {t:.4g}")
        return math.sqrt(max(2.0 * (value_hat - v), 0.0))

    inside = (t_hat, 0.0)
    outside: tuple[float, float] | None = None
    last = inside
    t = t_hat + sign * step
    for _ in range(40):
        if bound is not None and sign * (t - bound) >= 0:
            t = bound
        r = root(t)
        if abs(r - z) < 2e-3:
            return t, False
        if r < z:
            if bound is not None and t == bound:
                return bound, True
            inside = (t, r)
        else:
            outside = (t, r)
        prev, last = last, (t, r)
        # secant through the last two points
        cand = math.nan
        if last[1] != prev[1]:
            cand = last[0] + (z - last[1]) * (last[0] - prev[0]) / (last[1] - prev[1])
        if outside is None:
            dist = abs(t - t_hat)
            ok = math.isfinite(cand) and sign * (cand - t) > 0
            # move outward: the secant guess, at least 1.2x and at most 4x farther
            new_dist = abs(cand - t_hat) if ok else 2 * dist
            t = t_hat + sign * min(max(new_dist, 1.2 * dist), 4 * dist + 1.0)
            continue
        lo, hi = sorted((inside[0], outside[0]))
        if hi - lo < 1e-4:
            return 0.5 * (lo + hi), False
        if not (math.isfinite(cand) and lo < cand < hi):
            # regula falsi on the bracket, then bisection if it hugs an end
            cand = inside[0] + (z - inside[1]) * (outside[0] - inside[0]) / (outside[1] - inside[1])
            if not lo + 0.02 * (hi - lo) < cand < hi - 0.02 * (hi - lo):
                cand = 0.5 * (lo + hi)
        t = cand
    raise FloatingPointError("the profile search did not converge")


def profile_ci(res: HGLMResult, parm: list[str] | None = None, level: float = 0.95) -> pd.DataFrame:
    """Profile-likelihood intervals of the dispersion parameters, found on the log scale.

    One row per parameter (``"phi"``, ``"lambda: <term>"``, or the log-linear coefficients
    of a dispersion model): ``estimate``, ``lower``, ``upper`` on the natural scale
    (lambda, phi; coefficients as they are), the ``log_*`` columns, and ``method``. The
    criterion is the one the dispersions were estimated by (p_beta,v(h) for REML, p_v(h)
    for ML); where the profile cannot be traced the row falls back to the Wald interval
    on the log scale and ``method`` says so. A lower limit at lambda's bound is reported
    as 0."""
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    table = _parameter_table(res)
    if parm is not None:
        known = [r[0] for r in table]
        unknown = [p for p in parm if p not in known]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; choose from {known}")
        table = [r for r in table if r[0] in parm]
    z = float(stats.norm.ppf(0.5 + level / 2))
    try:
        c = _criteria(res)
        crit_error = None
    except _FIT_ERRORS as exc:
        c, crit_error = None, str(exc)
    rows = []
    for label, scale, idx in table:
        se = _wald_se(res, idx)
        t_fit = float(res.outcome.disp.theta()[idx])
        row: dict[str, Any] = {"parameter": label, "scale": scale}
        try:
            if c is None:
                raise FloatingPointError(crit_error or "no criterion")
            j = c.offset + idx
            t_hat = float(c.x_hat[j])
            bound = c.bounds[j]
            step = z * (se if np.isfinite(se) and se > 0 else 0.5)
            step = min(max(step, 0.05), 3.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lo_t, lo_b = _profile_side(
                    _Profiler(c, j), t_hat, c.value_hat, z, step, -1, bound[0]
                )
                hi_t, hi_b = _profile_side(
                    _Profiler(c, j), t_hat, c.value_hat, z, step, +1, bound[1]
                )
            row.update(log_estimate=t_hat, log_lower=lo_t, log_upper=hi_t)
            row["method"] = f"profile {_CRITERION_TEXT[c.which]}"
            if c.note:
                row["method"] += f" ({c.note})"
            if hi_b:
                row["method"] += "; upper limit at the parameter bound"
            lower_at_zero = lo_b and scale == "lambda"
        except _FIT_ERRORS as exc:
            if not (np.isfinite(se) and se > 0):
                raise ValueError(
                    f"no interval for {label}: the profile failed ({exc}) and there is no "
                    "standard error for a Wald interval"
                ) from exc
            row.update(log_estimate=t_fit, log_lower=t_fit - z * se, log_upper=t_fit + z * se)
            row["method"] = f"Wald (log scale; profile failed: {exc})"
            lower_at_zero = False
        if scale == "log":
            row.update(estimate=row["log_estimate"], lower=row["log_lower"], upper=row["log_upper"])
        else:
            row.update(
                estimate=math.exp(row["log_estimate"]),
                lower=0.0 if lower_at_zero else math.exp(row["log_lower"]),
                upper=math.exp(row["log_upper"]),
            )
        rows.append(row)
    cols = [
        "estimate",
        "lower",
        "upper",
        "log_estimate",
        "log_lower",
        "log_upper",
        "scale",
        "method",
    ]
    return pd.DataFrame(rows).set_index("parameter")[cols]


def confint(res: HGLMResult, level: float = 0.95, dispersion: str = "profile") -> pd.DataFrame:
    """Intervals for every parameter: Wald for the fixed effects (t or z as in ``fixef``),
    profile (``dispersion="profile"``) or Wald on the log scale (``"wald"``) for the
    dispersion parameters."""
    if dispersion not in ("profile", "wald"):
        raise ValueError("dispersion must be 'profile' or 'wald'")
    fx = res.fixef
    if "t" in fx.columns:
        q = float(stats.t.ppf(0.5 + level / 2, max(res.df_residual, 1)))
        how = f"Wald (t, {res.df_residual} df)"
    else:
        q = float(stats.norm.ppf(0.5 + level / 2))
        how = "Wald (z)"
    fixed = pd.DataFrame(
        {
            "estimate": fx["estimate"],
            "lower": fx["estimate"] - q * fx["se"],
            "upper": fx["estimate"] + q * fx["se"],
            "method": how,
        }
    )
    if dispersion == "profile":
        disp = profile_ci(res, level=level)[["estimate", "lower", "upper", "method"]]
    else:
        z = float(stats.norm.ppf(0.5 + level / 2))
        rows = []
        for label, scale, idx in _parameter_table(res):
            t = float(res.outcome.disp.theta()[idx])
            se = _wald_se(res, idx)
            lo, hi = t - z * se, t + z * se
            if scale != "log":
                t, lo, hi = math.exp(t), math.exp(lo), math.exp(hi)
            rows.append(
                {
                    "parameter": label,
                    "estimate": t,
                    "lower": lo,
                    "upper": hi,
                    "method": "Wald (log scale)",
                }
            )
        disp = pd.DataFrame(rows).set_index("parameter") if rows else None
    return pd.concat([fixed, disp]) if disp is not None else fixed


# ================================================================ bootstrap


def default_statistics(res: HGLMResult) -> pd.Series:
    """Fixed effects, lambda of every intercept-only term and phi when it is one number."""
    out = res.fixef["estimate"].copy()
    vc = res.varcomp
    for name, r in vc.iterrows():
        if np.isfinite(r["log_lambda"]):
            out[f"lambda: {name}"] = r["lambda"]
    if not res.design.family.fixed_dispersion and res.phi is not None:
        out["phi"] = res.phi
    return out.astype(float)


def _as_series(value: Any) -> pd.Series:
    if isinstance(value, pd.Series):
        return value.astype(float)
    if isinstance(value, dict):
        return pd.Series(value, dtype=float)
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    return pd.Series(arr, index=[f"stat{i}" for i in range(len(arr))] if len(arr) > 1 else ["stat"])


@dataclass
class BootstrapResult:
    """Replicates of ``func`` over parametric-bootstrap refits."""

    estimate: pd.Series  # func at the original fit
    replicates: pd.DataFrame  # one row per replicate; NaN where the refit failed
    converged: np.ndarray  # bool per replicate
    seed: int | None
    errors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        return len(self.converged)

    @property
    def n_failed(self) -> int:
        return int(np.sum(~self.converged))

    @property
    def failed_share(self) -> float:
        return self.n_failed / self.n if self.n else 0.0

    @property
    def se(self) -> pd.Series:
        return self.replicates[self.converged].std(ddof=1)

    @property
    def bias(self) -> pd.Series:
        return self.replicates[self.converged].mean() - self.estimate

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals from the converged replicates."""
        ok = self.replicates[self.converged]
        a = (1 - level) / 2
        return pd.DataFrame(
            {"estimate": self.estimate, "lower": ok.quantile(a), "upper": ok.quantile(1 - a)}
        )

    def summary(self) -> str:
        head = (
            f"Parametric bootstrap: {self.n} refits, {self.n_failed} failed to converge "
            f"({100 * self.failed_share:.1f} %)"
        )
        tab = pd.DataFrame({"estimate": self.estimate, "bias": self.bias, "se": self.se})
        return head + "\n" + tab.join(self.confint()[["lower", "upper"]]).to_string()

    def __str__(self) -> str:
        return self.summary()


def bootstrap(
    res: HGLMResult,
    n: int = 200,
    func: Callable[[HGLMResult], Any] | None = None,
    seed: int | None = None,
    new_random_effects: bool = True,
    progress: bool | None = None,
) -> BootstrapResult:
    """Parametric bootstrap of ``func(fit)`` (default: fixed effects, lambdas, phi).

    Each replicate refits the model, warm-started from ``res``, to responses simulated
    from it. Refits that fail or do not converge are kept as NaN rows and counted in
    ``failed_share``; a warning says how many. ``progress``: a live bar (default: when
    stderr is a terminal)."""
    if n < 2:
        raise ValueError(f"n must be at least 2 replicates, got {n}")
    func = func or default_statistics
    estimate = _as_series(func(res))
    ys = simulate_responses(res, n, seed=seed, new_random_effects=new_random_effects)
    reps = np.full((n, len(estimate)), np.nan)
    ok = np.zeros(n, dtype=bool)
    errors: list[str] = []
    with _Progress("bootstrap refits", n, progress) as bar:
        for i, y in enumerate(ys):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = refit(res, y)
                if r.converged:
                    s = _as_series(func(r)).reindex(estimate.index)
                    reps[i] = s.to_numpy()
                    ok[i] = bool(np.all(np.isfinite(reps[i])))
                else:
                    errors.append(
                        f"replicate {i}: " + "; ".join(r.warnings[:1] or ["not converged"])
                    )
            except _FIT_ERRORS as exc:
                errors.append(f"replicate {i}: {type(exc).__name__}: {exc}")
            bar.advance(i + 1 - int(ok[: i + 1].sum()))
    out = BootstrapResult(estimate, pd.DataFrame(reps, columns=estimate.index), ok, seed, errors)
    if out.n_failed:
        warnings.warn(
            f"{out.n_failed} of {n} bootstrap refits ({100 * out.failed_share:.1f} %) failed "
            "to converge; they are excluded from the bootstrap distribution",
            ConvergenceWarning,
            stacklevel=2,
        )
    return out


class _Progress:
    """A rich progress bar with the running count of failed refits (silent when off)."""

    def __init__(self, what: str, total: int, show: bool | None) -> None:
        self.show = sys.stderr.isatty() if show is None else show
        self.what, self.total = what, total
        self._p: Any = None

    def __enter__(self) -> _Progress:
        if self.show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("failed: {task.fields[failed]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.__enter__()
            self._task = self._p.add_task(self.what, total=self.total, failed=0)
        return self

    def advance(self, failed: int) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, failed=failed)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)


__all__ = [
    "BootstrapResult",
    "LRTResult",
    "bootstrap",
    "chibar_pvalue",
    "chibar_weights",
    "confint",
    "criterion_value",
    "lrt",
    "profile_ci",
    "refit",
]
