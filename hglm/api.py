"""``hglm.fit``: formula + data -> fitted HGLM.

Builds the design and the model, then hands them to ``hglm.dispatch.solve`` (which chooses the
algorithm) with the options of a ``FitControl``.

Random slopes and correlated random effects build a ``hglm.structured.StructuredModel``
instead, which ``solve`` fits the same way, and give a ``StructuredResult``.

May import: ``hglm.control``, ``hglm.diagnostics``, ``hglm.design``, ``hglm.families``,
``hglm.formula``, ``hglm.model``, ``hglm.structured``, ``hglm.structured_terms``,
``hglm.dispatch``, ``hglm.results``, ``hglm.structured_results``.
"""

from __future__ import annotations

import dataclasses
import time
import warnings
from typing import Any

from hglm.control import FitControl, normalise_method
from hglm.design import build_design
from hglm.diagnostics import ConvergenceWarning
from hglm.dispatch import solve
from hglm.dispersion_se import DispersionSE
from hglm.families import RandomFamily, ResponseFamily, quasi_family, response_family
from hglm.formula import parse_formula
from hglm.model import Model
from hglm.results import HGLMResult
from hglm.structured import StructuredModel
from hglm.structured_results import StructuredResult
from hglm.structured_terms import build_terms


def fit(
    formula: str,
    data: Any,
    *,
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
    control: FitControl | None = None,
    max_iter: int | None = None,
    dispersion_se: bool | None = None,
    start: Any = None,
    na_action: str = "raise",
    correlation: dict[str, Any] | None = None,
) -> HGLMResult | StructuredResult:
    """Fit a hierarchical GLM by h-likelihood.

    Parameters
    ----------
    formula : str
        lme4 syntax, e.g. ``"y ~ x1 + x2 + (1|lot/wafer) + (1|tool)"``; a formula without
        random terms fits the plain GLM. Random slopes ``(x | g)``, ``(0 + x | g)``,
        ``(x || g)`` and ``ar1(time | g)`` are normal random effects with a structured
        covariance (``hglm.structured``). ``offset(expr)`` terms (e.g. ``offset(log(E))``)
        enter the linear predictor with coefficient 1, added to ``offset=``.
    data : pandas.DataFrame or mapping of columns
        The data the formula's names refer to.
    family : str or ResponseFamily
        The response family: ``"gaussian"``, ``"binomial"``, ``"poisson"``, ``"gamma"`` or
        ``"negative_binomial"`` (``"nbinom2"``: NB2, theta estimated unless given with
        ``hglm.negative_binomial_family(theta)``); ``"quasipoisson"``, ``"quasibinomial"``:
        phi estimated (method ``"EQL"``, as R hglm; no likelihoods).
    link : str, optional
        The response link (default: the family's canonical one).
    rand_family : str, RandomFamily or dict
        The distribution of the random effects, for all terms or per grouping factor:
        ``"normal"``, ``"beta"``, ``"gamma"``, ``"inverse_gamma"``, optionally with a link,
        e.g. ``"gamma(log)"``.
    disp : str, optional
        A model for log phi, e.g. ``"~ x2 + x3"`` (families with an estimated phi; for
        binomial and Poisson it asks for a quasi-likelihood phi, method ``"EQL"`` only).
    rand_disp : dict, optional
        Per grouping factor, a model for log lambda over its levels' variables.
    method : str
        ``"EQL"`` (R hglm's algorithm), ``"HL(0,1)"`` or ``"HL(1,1)"`` (the exact adjusted
        profile likelihoods).
    reml : bool
        For the HL methods: p_beta,v(h) (True) or p_v(h) (False) for the dispersions.
    trials : str, optional
        The column of binomial trials (the response then counts successes).
    weights, offset : str or array-like, optional
        Prior weights and an offset of the linear predictor (a column name, an expression
        such as ``"np.log(t)"``, or values).
    control : FitControl, optional
        Iteration limits, tolerances, ``dispersion_se`` (default ``FitControl()``).
    max_iter : int, optional
        Shorthand for ``control=FitControl(max_iter=...)`` (overrides ``control``'s).
    dispersion_se : bool, optional
        Shorthand for ``FitControl(dispersion_se=...)``: compute the HL standard errors of
        the log-dispersion parameters within the fit. By default they come from a
        finite-difference Hessian of the criterion when first read (``varcomp``,
        ``disp_coef``, ``summary()``, ...).
    start : HGLMResult, optional
        A previous fit of the same model to start the HL search from (see ``hglm.dispatch.solve``).
    na_action : str
        ``"raise"`` (default) refuses missing values in the columns the model uses;
        ``"omit"`` leaves those rows out (``res.n_omitted``, ``res.design.omitted``).
    correlation : dict, optional
        Per random intercept, a correlation structure of its levels: ``hglm.CAR(W)``,
        ``hglm.SAR(W)`` or ``hglm.Precision(Q)`` (e.g. ``{"area": hglm.CAR(W)}``).

    Returns
    -------
    HGLMResult or StructuredResult
        The fitted model; ``res.diagnostics`` holds its status. A fit that did not converge,
        or has a variance component at its lower bound, also warns (``ConvergenceWarning``).
        Models with slopes or correlated terms give a ``StructuredResult`` (``method="EQL"``
        there: CAR/SAR terms, R hglm's spectral algorithm).
    """
    t0 = time.perf_counter()
    meth = normalise_method(method)
    control = _control(control, max_iter, dispersion_se)
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
    call = _call_text(formula, fam, rand_family, disp, meth, reml)
    if correlation or any(not t.intercept_only for t in mf.random):
        return _fit_structured(design, data, correlation, meth, reml, control, call, t0)
    model = Model(design)
    t1 = time.perf_counter()
    outcome = solve(model, meth, reml=reml, start=start, control=control)
    timings = {"design": t1 - t0, **outcome.timings}
    if control.dispersion_se and isinstance(outcome.disp_se, DispersionSE):
        outcome.disp_se.record_timings_in(timings)
        outcome.disp_se.compute()
    timings["total"] = time.perf_counter() - t0
    for msg in outcome.warnings:
        warnings.warn(msg, ConvergenceWarning, stacklevel=2)
    return HGLMResult(
        model=model,
        outcome=outcome,
        method=meth,
        reml=reml,
        call=call,
        warnings=outcome.warnings,
        timings=timings,
        control=control,
    )


def _fit_structured(
    design: Any,
    data: Any,
    correlation: dict[str, Any] | None,
    method: str,
    reml: bool,
    control: FitControl,
    call: str,
    t0: float,
) -> StructuredResult:
    """The route of random slopes and correlated random effects."""
    model = StructuredModel(design, build_terms(design, data, correlation))
    if correlation:
        call += (
            ", correlation={"
            + ", ".join(f"{k}: {type(v).__name__}" for k, v in correlation.items())
            + "}"
        )
    t1 = time.perf_counter()
    fit = solve(model, method, reml=reml, control=control)
    timings = {"design": t1 - t0, **fit.timings, "total": time.perf_counter() - t0}
    for msg in fit.messages:
        warnings.warn(msg, ConvergenceWarning, stacklevel=3)
    return StructuredResult(
        fit=fit, method=method, reml=reml, call=call, warnings=list(fit.messages), timings=timings
    )


def _control(
    control: FitControl | None, max_iter: int | None, dispersion_se: bool | None
) -> FitControl:
    """``control`` with the shorthand keywords applied."""
    if control is None:
        control = FitControl()
    elif not isinstance(control, FitControl):
        raise TypeError(f"control must be a FitControl, got {type(control).__name__}")
    changes: dict[str, Any] = {}
    if max_iter is not None:
        changes["max_iter"] = max_iter
    if dispersion_se is not None:
        changes["dispersion_se"] = dispersion_se
    return dataclasses.replace(control, **changes) if changes else control


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
