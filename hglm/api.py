"""``hglm.fit``: formula + data -> fitted HGLM.

Builds the design and the model, then hands them to ``hglm.dispatch.solve`` (which chooses the
algorithm) with the options of a ``FitControl``.

May import: ``hglm.control``, ``hglm.diagnostics``, ``hglm.design``, ``hglm.families``,
``hglm.formula``, ``hglm.model``, ``hglm.dispatch``, ``hglm.results``.
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
) -> HGLMResult:
    """Fit a hierarchical GLM by h-likelihood.

    Parameters
    ----------
    formula : str
        lme4 syntax with random intercepts, e.g. ``"y ~ x1 + x2 + (1|lot/wafer) + (1|tool)"``;
        a formula without random terms fits the plain GLM. ``offset(expr)`` terms (e.g.
        ``offset(log(E))``) enter the linear predictor with coefficient 1, added to ``offset=``.
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

    Returns
    -------
    HGLMResult
        The fitted model; ``res.diagnostics`` holds its status. A fit that did not converge,
        or has a variance component at its lower bound, also warns (``ConvergenceWarning``).
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
    model = Model(design)
    t1 = time.perf_counter()
    outcome = solve(model, meth, reml=reml, start=start, control=control)
    timings = {"design": t1 - t0, **outcome.timings}
    if control.dispersion_se and isinstance(outcome.disp_se, DispersionSE):
        outcome.disp_se.record_timings_in(timings)
        outcome.disp_se.compute()
    timings["total"] = time.perf_counter() - t0
    call = _call_text(formula, fam, rand_family, disp, meth, reml)
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
