"""The criterion a fit's dispersions maximise, re-evaluated at (and around) the fit.

Shared by the likelihood-ratio tests and the profile intervals.

May import: ``hglm.criterion``, ``hglm.state``, ``hglm.dispatch`` (``hglm.results`` for annotations).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import scipy.optimize

from hglm.criterion import Criterion
from hglm.dispatch import FIT_ERRORS
from hglm.state import LOG_LAMBDA_BOUNDS

if TYPE_CHECKING:
    from hglm.results import HGLMResult


CRITERION_TEXT = {"p_v": "p_v(h)", "p_beta_v": "p_beta,v(h)"}


@dataclass
class FitCriteria:
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


def fit_criteria(res: HGLMResult) -> FitCriteria:
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
            else f"the fit did not converge; {CRITERION_TEXT[which]} was maximised again "
            "from its estimates"
        )
    value = crit(x)
    if not np.isfinite(value):
        raise FloatingPointError("the criterion is not finite at the estimates")
    return FitCriteria(
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


def maximum_at(res: HGLMResult, which: str) -> tuple[float, str | None]:
    """The maximised criterion of a fit; for a fit that reports non-convergence, the
    criterion is maximised again from its estimates and used only if that converges."""
    if res.converged:
        return criterion_value(res, which), None
    problem = "; ".join(res.warnings) or "no reason given"
    try:
        c = fit_criteria(res)
    except FIT_ERRORS as exc:
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
