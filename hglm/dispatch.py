"""``solve`` (exported as ``hglm.solve``): the one place that chooses the algorithm.

* ``"EQL"``: R hglm's EQL (``hglm.eql``), always from its own start, as R hglm does.
* ``"HL(0,1)"`` / ``"HL(1,1)"`` of a linear mixed model (``hglm.lmm.is_linear_mixed_model``):
  the profiled search over the variance ratios (``hglm.lmm``), from moment estimates or
  from the variance ratios of ``start``.
* ``"HL(0,1)"`` / ``"HL(1,1)"`` of any other HGLM: the outer search of ``hglm.hl``, from an
  EQL pass settled to ``FitControl.eql_start_tol``, or from ``start``.

Two families add a step around these routes, here so that refits get it too:

* a negative binomial whose theta is free (``ResponseFamily.estimates_theta``): theta by
  profiling the route's dispersion criterion over log theta (``hglm.negbin``), each
  evaluation warm-started from the fit at the nearest theta; ``solve`` then sets the
  model's family to theta-hat and records the estimate in ``FitOutcome.theta``;
* a quasi-likelihood binomial/Poisson (phi estimated, EQL only): no likelihoods (NaN),
  as R hglm.

``hglm.fit`` and the refits of ``hglm.inference`` (likelihood-ratio bootstrap, parametric
bootstrap) both come here. The singularity rule (``hglm.diagnostics.singular_terms``) is
applied here, to every route alike.

* A ``hglm.structured.StructuredModel`` (random slopes, correlated random effects): the HL
  methods by ``hglm.structured.fit_structured``, EQL (CAR/SAR terms) by
  ``hglm.spectral_eql``.

May import: ``hglm.state``, ``hglm.diagnostics``, ``hglm.control``, ``hglm.model``,
``hglm.likelihood``, ``hglm.negbin``, ``hglm.eql``, ``hglm.hl``, ``hglm.lmm``,
``hglm.structured``, ``hglm.spectral_eql``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from hglm.control import FitControl, normalise_method
from hglm.diagnostics import singular_terms
from hglm.eql import fit_eql
from hglm.hl import fit_hl
from hglm.likelihood import Likelihoods
from hglm.lmm import fit_lmm, is_linear_mixed_model
from hglm.model import Model
from hglm.negbin import profile_theta
from hglm.spectral_eql import fit_spectral_eql
from hglm.state import FitOutcome
from hglm.structured import StructuredFit, StructuredModel, fit_structured

# what a fit may raise on hard data (a warm start falls back to the cold start on them;
# the bootstrap counts them as failed refits)
FIT_ERRORS = (
    np.linalg.LinAlgError,
    FloatingPointError,
    ValueError,
    ZeroDivisionError,
    RuntimeError,
)


def solve(
    model: Model | StructuredModel,
    method: str,
    *,
    reml: bool = True,
    start: Any = None,
    control: FitControl | None = None,
) -> FitOutcome | StructuredFit:
    """Fit a model by a method, choosing the algorithm (EQL, the HL search, or the LMM route).

    Parameters
    ----------
    model : Model or StructuredModel
        The model (a design with its mixed-model equations); a ``StructuredModel`` (slopes,
        CAR/SAR/AR(1)/Precision terms) gives a ``StructuredFit`` and takes no ``start``.
    method : str
        ``"EQL"``, ``"HL(0,1)"`` or ``"HL(1,1)"`` (any spelling ``normalise_method`` takes).
    reml : bool
        For the HL methods: p_beta,v(h) (True) or p_v(h) (False) for the dispersions.
        Ignored by EQL.
    start : FitOutcome or HGLMResult, optional
        A previous fit of a model with the same structure (the same data or, for a refit,
        a new response): the HL methods start their search from its estimates instead of
        from EQL (or from moment estimates for a linear mixed model), and fall back to that
        cold start if the warm search raises or does not converge. EQL always starts cold.
    control : FitControl, optional
        Iteration limits and tolerances (default ``FitControl()``).

    Returns
    -------
    FitOutcome or StructuredFit
        The estimates, likelihoods, leverages, ``converged``/``code``/``messages`` and the
        singular terms (``singular``).
    """
    meth = normalise_method(method)
    control = FitControl() if control is None else control
    if not isinstance(control, FitControl):
        raise TypeError(f"control must be a FitControl, got {type(control).__name__}")
    if model.family.quasi and meth != "EQL":
        raise ValueError(
            "a quasi-likelihood phi (binomial/poisson with disp=) is estimated by EQL only"
        )
    if isinstance(model, StructuredModel):
        if start is not None:
            raise ValueError("start= is not available for models with structured random effects")
        if meth == "EQL":
            return fit_spectral_eql(model, max_iter=control.max_iter)
        return fit_structured(model, meth, reml, outer_max_iter=control.outer_max_iter)
    warm = _start_outcome(model, start)
    if model.family.estimates_theta:
        return _solve_negative_binomial(model, meth, reml, warm, control)
    outcome = _solve_given_family(model, meth, reml, warm, control)
    if model.family.quasi:
        nan = float("nan")
        outcome.likelihood = Likelihoods(nan, nan, nan, nan, nan)
    return outcome


def _solve_negative_binomial(
    model: Model, meth: str, reml: bool, warm: FitOutcome | None, control: FitControl
) -> FitOutcome:
    """theta-hat by the profile of the method's dispersion criterion (``hglm.negbin``)."""
    which = "p_v" if meth != "EQL" and not reml else "p_beta_v"

    def fit_at(design: Any, nearest: Any) -> tuple[tuple[Model, FitOutcome], float]:
        m = model.with_design(design)
        out = _solve_given_family(m, meth, reml, nearest[1] if nearest else warm, control)
        return (m, out), float(getattr(out.likelihood, which))

    if warm is not None and warm.theta is not None:
        theta0: float | None = warm.theta.theta
    else:
        theta0 = model.family.theta
    estimate, (fitted, outcome) = profile_theta(model.design, fit_at, which, start=theta0)
    # the caller's model becomes the model at theta-hat (its result reads the family there)
    model.design, model.family = fitted.design, fitted.family
    outcome.theta = estimate
    outcome.timings["theta_profile_fits"] = float(estimate.evaluations)
    if estimate.at_bound:
        outcome.messages.append(
            f"theta of the negative binomial is at a bound of its search "
            f"({estimate.theta:.3g}); a Poisson model may fit as well"
        )
    return outcome


def _solve_given_family(
    model: Model, meth: str, reml: bool, warm: FitOutcome | None, control: FitControl
) -> FitOutcome:
    """The route of ``meth`` for the model's family as it is (theta, if any, held)."""
    outcome: FitOutcome | None = None
    if meth != "EQL" and warm is not None:
        try:
            outcome = _hl(model, meth, reml, warm, control)
        except FIT_ERRORS:
            outcome = None
        if outcome is not None and not outcome.converged:
            outcome = None
    if outcome is None:
        if meth == "EQL":
            outcome = fit_eql(model, max_iter=control.max_iter, conv=control.eql_tol)
        else:
            outcome = _hl(model, meth, reml, None, control)
    d = model.design
    lam = outcome.disp.lam(d)
    outcome.singular = singular_terms(
        [
            (t.name, t.term.label, t.X_disp.shape[1] == 1, float(lk[0]))
            for t, lk in zip(d.terms, lam, strict=True)
        ],
        outcome.disp.phi(d),
    )
    return outcome


def _hl(
    model: Model, method: str, reml: bool, start: FitOutcome | None, control: FitControl
) -> FitOutcome:
    """One HL fit by the route the model takes, from ``start`` or cold."""
    mean_order = 1 if method == "HL(1,1)" else 0
    if is_linear_mixed_model(model):
        # the profiled search needs only the variance ratios (no EQL start)
        return fit_lmm(
            model,
            mean_order,
            reml,
            start=None if start is None else _variance_ratios(model, start),
            outer_max_iter=control.outer_max_iter,
        )
    if start is not None:
        return fit_hl(model, start, mean_order, reml, outer_max_iter=control.outer_max_iter)
    eql = fit_eql(model, max_iter=control.max_iter, conv=control.eql_start_tol, start_only=True)
    outcome = fit_hl(model, eql, mean_order, reml, outer_max_iter=control.outer_max_iter)
    outcome.timings = {**eql.timings, **outcome.timings, "iterations_eql": float(eql.n_iter)}
    return outcome


def _variance_ratios(model: Model, start: FitOutcome) -> np.ndarray:
    """log(lambda_k / phi) per term of a linear mixed model, from a previous outcome."""
    d = model.design
    log_phi = start.disp.gamma[0] * d.X_disp[0, 0]
    return np.array(
        [dk[0] * t.X_disp[0, 0] - log_phi for t, dk in zip(d.terms, start.disp.delta, strict=True)]
    )


def _start_outcome(model: Model, start: Any) -> FitOutcome | None:
    """The outcome inside ``start`` (a FitOutcome or a result holding one), checked against
    the model's structure."""
    if start is None:
        return None
    outcome = getattr(start, "outcome", start)
    if not isinstance(outcome, FitOutcome):
        raise TypeError(
            f"start must be a previous fit (HGLMResult or FitOutcome), got {type(start).__name__}"
        )
    d = model.design
    same = (
        len(outcome.mean.beta) == d.p
        and len(outcome.disp.delta) == len(d.terms)
        and all(
            len(dk) == t.X_disp.shape[1] and len(vk) == t.n_levels
            for t, dk, vk in zip(d.terms, outcome.disp.delta, outcome.mean.v, strict=True)
        )
        and (outcome.disp.phi_fixed or len(outcome.disp.gamma) == d.X_disp.shape[1])
    )
    if not same:
        raise ValueError(
            "start= is a fit of a model with another structure (fixed effects, random terms "
            "or dispersion models differ); start from a fit of the same model"
        )
    return outcome
