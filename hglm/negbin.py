"""The shape theta of a negative binomial (NB2) HGLM, by profiling the fit's criterion.

For a given theta the NB2 family is an ordinary response family (exact NB log-likelihood
in h, variance mu + mu^2 / theta, phi fixed at 1), so every method fits it unchanged.
theta is a dispersion-type parameter: it maximises the criterion the method uses for the
dispersions (HL with ``reml=False``: p_v(h), the Laplace marginal likelihood; REML and
EQL: p_beta,v(h)). Maximising the profile

    c(log theta) = max over (beta, lambda) of the criterion at theta

over log theta gives the joint maximum; the curvature of the profile at its maximum is
the observed information of log theta with the other parameters profiled out, whose
inverse is the variance of log theta-hat (the SE the result reports, a Wald interval on
the log scale).

Each profile evaluation is a whole fit, which is affordable for the model sizes NB is
used on here (hundreds to thousands of rows); theta inside the criterion's own search
would save the repeated starts.

May import: ``hglm.design`` (for annotations); the fits come in through ``fit_at``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from hglm.design import ModelDesign

# log theta between 1e-3 (extreme over-dispersion) and 1e6 (the Poisson limit)
LOG_THETA_BOUNDS = (np.log(1e-3), np.log(1e6))
_CURVATURE_STEP = 0.05


@dataclass(frozen=True)
class ThetaEstimate:
    """theta-hat of an NB2 fit: its SE on the log scale and how the profile search went."""

    theta: float
    se_log: float
    criterion: str  # "p_v" or "p_beta_v"
    evaluations: int
    at_bound: bool

    @property
    def se(self) -> float:
        """SE of theta-hat by the delta method (exp(log theta-hat) * SE(log theta-hat))."""
        return self.theta * self.se_log

    def interval(self, level: float = 0.95) -> tuple[float, float]:
        """Wald interval on the log scale, mapped back to theta."""
        from scipy import stats

        z = float(stats.norm.ppf(0.5 + level / 2))
        lo, hi = np.log(self.theta) - z * self.se_log, np.log(self.theta) + z * self.se_log
        return float(np.exp(lo)), float(np.exp(hi))


def start_theta(design: ModelDesign) -> float:
    """A moment start: the over-dispersion of y around a Poisson GLM of the fixed part,
    var = mu + mu^2 / theta solved for theta (clipped into the bounds)."""
    y = design.y
    mu = np.full(len(y), max(float(np.mean(y)), 1e-3))
    excess = float(np.mean((y - mu) ** 2 - mu))
    if excess <= 0:
        return float(np.exp(LOG_THETA_BOUNDS[1] - 1))
    theta = float(np.mean(mu**2)) / excess
    return float(np.clip(theta, np.exp(LOG_THETA_BOUNDS[0] + 1), np.exp(LOG_THETA_BOUNDS[1] - 1)))


def profile_theta(
    design: ModelDesign,
    fit_at: Callable[[ModelDesign, Any], tuple[Any, float]],
    criterion: str,
    start: float | None = None,
    xatol: float = 1e-5,
) -> tuple[ThetaEstimate, Any]:
    """Maximise the criterion of ``fit_at(design with theta, nearest fit)`` over log theta.

    ``fit_at`` fits the design at its family's theta, given the fit at the nearest theta
    evaluated so far (None at first: a warm start for the next search), and returns (the
    fit, the criterion's value). ``start``: a theta to start from (default: moments).
    Returns the estimate and the fit at theta-hat."""
    fits: dict[float, tuple[Any, float]] = {}

    def at(log_theta: float) -> tuple[Any, float]:
        key = float(log_theta)
        if key not in fits:
            nearest = min(fits, key=lambda k: abs(k - key)) if fits else None
            fam = design.family.with_theta(float(np.exp(key)))
            fits[key] = fit_at(
                dataclasses.replace(design, family=fam),
                fits[nearest][0] if nearest is not None else None,
            )
        return fits[key]

    def negative(log_theta: float) -> float:
        value = at(log_theta)[1]
        return -value if np.isfinite(value) else 1e300

    lo, hi = LOG_THETA_BOUNDS
    x0 = float(np.log(start if start is not None else start_theta(design)))
    x0 = float(np.clip(x0, lo + 0.5, hi - 0.5))
    # bracket around the start, then Brent; fall back to the bounded search
    try:
        res = scipy.optimize.minimize_scalar(
            negative, bracket=(x0 - 0.5, x0 + 0.5), method="brent", options={"xtol": xatol}
        )
        x_hat = float(res.x)
        if not (lo <= x_hat <= hi) or not res.success:
            raise ValueError("outside the bounds")
    except (ValueError, RuntimeError):
        res = scipy.optimize.minimize_scalar(
            negative, bounds=(lo, hi), method="bounded", options={"xatol": xatol}
        )
        x_hat = float(res.x)
    at_bound = x_hat - lo < 1e-2 or hi - x_hat < 1e-2
    h = _CURVATURE_STEP
    f0 = -negative(x_hat)
    curvature = (-negative(x_hat + h) - 2 * f0 - negative(x_hat - h)) / h**2
    se_log = float(np.sqrt(-1.0 / curvature)) if curvature < 0 else float("nan")
    estimate = ThetaEstimate(
        theta=float(np.exp(x_hat)),
        se_log=se_log,
        criterion=criterion,
        evaluations=len(fits),
        at_bound=at_bound,
    )
    return estimate, at(x_hat)[0]
