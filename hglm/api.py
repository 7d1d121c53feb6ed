"""``hglm.fit``: formula + data -> fitted HGLM."""

from __future__ import annotations

import re
import time
import warnings
from typing import Any

import numpy as np

from hglm.design import ModelDesign, build_design
from hglm.families import RandomFamily, ResponseFamily, quasi_family, response_family
from hglm.fitting import ConvergenceWarning, DispersionSE, FitOutcome, Model, fit_eql, fit_hl
from hglm.formula import parse_formula
from hglm.likelihood import Likelihoods
from hglm.lmm import fit_lmm, is_linear_mixed_model
from hglm.negbin import ThetaEstimate, profile_theta
from hglm.results import HGLMResult

METHODS = ("EQL", "HL(0,1)", "HL(1,1)")


def _method(method: str) -> str:
    m = re.sub(r"\s+", "", method).upper()
    if m in ("HL01",):
        m = "HL(0,1)"
    if m in ("HL11",):
        m = "HL(1,1)"
    if m not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    return m


def fit(
    formula: str,
    data: Any,
    family: str | ResponseFamily = "gaussian",
    link: str | None = None,
    rand_family: str | RandomFamily | dict[str, str | RandomFamily] = "normal",
    disp: str | None = None,
    rand_disp: dict[str, str] | None = None,
    method: str = "HL(1,1)",
    reml: bool = True,
    trials: str | None = None,
    weights: Any = None,
    offset: Any = None,
    max_iter: int = 50,
    dispersion_se: bool = False,
    na_action: str = "raise",
) -> HGLMResult:
    """Fit a hierarchical GLM by h-likelihood.

    ``formula`` uses lme4 syntax for random intercepts, e.g.
    ``"y ~ x1 + x2 + (1|lot/wafer) + (1|tool)"``; a formula without random terms
    fits the plain GLM; ``offset(expr)`` terms (e.g. ``offset(log(E))``) enter the linear
    predictor with coefficient 1, added to ``offset=``. ``method``: ``"EQL"`` (R hglm's algorithm),
    ``"HL(0,1)"`` or ``"HL(1,1)"`` (exact adjusted profile likelihoods;
    ``reml`` chooses p_beta,v(h) or p_v(h) for the dispersions).

    ``na_action="raise"`` (default) refuses missing values in the columns the model uses;
    ``"omit"`` leaves those rows out (counted in ``res.n_omitted``, listed in
    ``res.design.omitted``).

    The HL methods' standard errors of the log-dispersion parameters come from a
    finite-difference Hessian of the criterion, computed when first read (``varcomp``,
    ``disp_coef``, ``summary()``, ...); ``dispersion_se=True`` computes them within the fit.
    """
    t0 = time.perf_counter()
    meth = _method(method)
    fam = response_family(family, link)
    mf = parse_formula(formula)
    if disp is not None and fam.name in ("binomial", "poisson"):
        fam = quasi_family(fam)
    if disp is not None and fam.fixed_dispersion:
        raise ValueError(
            f"disp= needs an estimated dispersion; {fam.name} has phi fixed at 1"
            + (" (its over-dispersion is theta)" if fam.name == "negative_binomial" else "")
        )
    if fam.quasi and meth != "EQL":
        raise ValueError(
            f"a quasi-likelihood phi for {fam.name} (disp=) is estimated by method='EQL' only, "
            "as in R hglm: the HL methods maximise likelihoods, and a quasi-likelihood has none"
        )
    design = build_design(
        mf,
        data,
        fam,
        rand_family=rand_family,
        disp=disp,
        rand_disp=rand_disp,
        trials=trials,
        weights=weights,
        offset=offset,
        na_action=na_action,
    )
    theta_estimate: ThetaEstimate | None = None
    if fam.estimates_theta:
        which = "p_v" if meth != "EQL" and not reml else "p_beta_v"

        def fit_at(d: ModelDesign, _nearest: Any) -> tuple[tuple, float]:
            m = Model(d)
            out, tim = _run(m, meth, reml, max_iter, t0)
            return (m, out, tim), float(getattr(out.likelihood, which))

        theta_estimate, (model, outcome, timings) = profile_theta(design, fit_at, which)
        design = model.design
        timings["theta_profile_fits"] = float(theta_estimate.evaluations)
        if theta_estimate.at_bound:
            outcome.messages.append(
                f"theta of the negative binomial is at a bound of its search "
                f"({theta_estimate.theta:.3g}); a Poisson model may fit as well"
            )
    else:
        model = Model(design)
        outcome, timings = _run(model, meth, reml, max_iter, t0)
    if fam.quasi:
        # R hglm reports no likelihood for a quasi-likelihood phi: neither do we
        outcome.likelihood = Likelihoods(np.nan, np.nan, np.nan, np.nan, np.nan)
    if dispersion_se and isinstance(outcome.disp_se, DispersionSE):
        outcome.disp_se.record_timings_in(timings)
        outcome.disp_se.compute()
    timings["total"] = time.perf_counter() - t0
    call = _call_text(formula, fam, rand_family, disp, meth, reml)
    for msg in outcome.messages:
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    return HGLMResult(
        model=model,
        outcome=outcome,
        method=meth,
        reml=reml,
        call=call,
        warnings=list(outcome.messages),
        timings=timings,
        theta_estimate=theta_estimate,
    )


def _run(
    model: Model, meth: str, reml: bool, max_iter: int, t0: float
) -> tuple[FitOutcome, dict[str, float]]:
    """Fit ``model`` by ``meth``: the outcome and the timings (from ``t0``, the call's start)."""
    design = model.design
    t1 = time.perf_counter()
    if meth != "EQL" and is_linear_mixed_model(model):
        # the profiled LMM search needs no EQL start
        outcome = fit_lmm(model, mean_order=1 if meth == "HL(1,1)" else 0, reml=reml)
        timings = {"design": t1 - t0, **outcome.timings}
    elif meth != "EQL":
        # EQL only starts the HL search: settled to 1e-4 (not hglm's 1e-6) is close enough
        # (the search takes as many steps from there, measured on benchmark cases 1-5)
        start = fit_eql(model, max_iter=max_iter, conv=1e-4, start_only=True)
        timings = {"design": t1 - t0, **start.timings}
        outcome = fit_hl(model, start, mean_order=1 if meth == "HL(1,1)" else 0, reml=reml)
        outcome.messages = [m for m in start.messages if "singular" in m] + outcome.messages
        timings.update(outcome.timings)
        timings["iterations_eql"] = float(start.n_iter)
    else:
        outcome = fit_eql(model, max_iter=max_iter)
        timings = {"design": t1 - t0, **outcome.timings}
        lam = outcome.disp.lam(design)
        for t, lk in zip(design.terms, lam, strict=True):
            if t.X_disp.shape[1] == 1 and float(lk[0]) < 1e-6:
                outcome.messages.append(
                    f"singular fit: lambda of {t.term.label} is at its lower bound "
                    f"({float(lk[0]):.3g})"
                )
    return outcome, timings


def _call_text(
    formula: str, fam: ResponseFamily, rand_family: Any, disp: Any, method: str, reml: bool
) -> str:
    rf = (
        "{" + ", ".join(f"{k}: {v}" for k, v in rand_family.items()) + "}"
        if isinstance(rand_family, dict)
        else str(rand_family)
    )
    parts = [f'"{formula}"', f'family="{fam}"', f'rand_family="{rf}"']
    if disp:
        parts.append(f'disp="{disp}"')
    parts.append(f'method="{method}"')
    if method != "EQL":
        parts.append(f"reml={reml}")
    return ", ".join(parts)
