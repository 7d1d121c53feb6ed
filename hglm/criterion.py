"""The HL criterion: an adjusted profile likelihood as a function of the log-dispersions.

``Criterion`` evaluates p_v(h) or p_beta,v(h) (re-solving the inner IWLS for v, and beta
unless beta is a parameter) with its analytic gradient (``hglm.gradient``); ``maximise`` runs
the scaled L-BFGS-B search on it and ``is_stationary`` judges where that search stopped.

May import: ``hglm.state``, ``hglm.model``, ``hglm.gradient``, ``hglm.mme``.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize

from hglm.gradient import (
    Evaluation,
    GradientUnavailable,
    criterion_gradient,
    random_derivatives,
)
from hglm.mme import MMESolution
from hglm.model import Model
from hglm.state import Dispersions, MeanFit


class Criterion:
    """An adjusted profile likelihood as a function of (beta, log-dispersions).

    Each evaluation re-solves the IWLS for v (and beta unless it is a parameter),
    warm-started from the last solution, then factors the equations with the
    observed information for the exact Laplace log-determinant. The gradient is
    analytic (``hglm.gradient``) and reuses that factor; central differences
    remain as ``numeric_gradient`` (the test oracle, and the fallback where the
    observed information is not positive)."""

    def __init__(
        self,
        model: Model,
        disp: Dispersions,
        fit: MeanFit,
        which: str,
        beta_free: bool,
        theta_fixed: bool = False,
    ):
        self.model = model
        self.theta_fixed = theta_fixed  # only beta varies (HL(1,1) with REML dispersions)
        self.base = disp
        self.which = which  # "p_v" or "p_beta_v"
        self.beta_free = beta_free  # beta is a parameter of the criterion (HL(1,1))
        self.fit = fit
        self.n_eval = 0
        self.n_grad = 0
        self.p = model.design.p
        self.timings = {"iwls": 0.0, "factorise": 0.0, "gradient": 0.0}
        self._last: tuple[np.ndarray, float, np.ndarray | None] | None = None
        self._tangent: tuple[np.ndarray, np.ndarray | None, np.ndarray] | None = None

    # the inner IWLS: relative change of eta below 1e-7 (1e-14 in squares); from the predicted
    # mode one step may already be enough
    inner_tol = 1e-14
    inner_min_iter = 1

    def _predicted_mode(self, x: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """Start of the inner IWLS: the last mode moved along its tangent to x (first order),
        so that Newton needs a step or two less than from the last mode itself."""
        fit = self.fit
        if self._tangent is None:
            return fit.beta, fit.v
        x_mode, t_beta, t_v = self._tangent
        dx = x - x_mode
        if len(dx) != t_v.shape[1] or not np.all(np.isfinite(dx)) or np.max(np.abs(dx)) > 1.0:
            return fit.beta, fit.v
        dv = iter(self.model.mme.split(t_v @ dx))
        v = [
            vk if t.observation_level else vk + next(dv)
            for t, vk in zip(self.model.design.terms, fit.v, strict=True)
        ]
        beta = fit.beta + t_beta @ dx if t_beta is not None else fit.beta
        return beta, v

    def _mode_tangent(
        self, x: np.ndarray, fit: MeanFit, disp: Dispersions, sol: MMESolution
    ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray] | None:
        """d(beta, v)/dx at the mode, J^{-1} d2h/d(beta, v) dx, from the factor just made there
        (J: the information of the unknowns the IWLS moves). Observation-level terms and the
        phi coefficients under an elimination are left out (zero): only a start depends on it."""
        model = self.model
        d, mme = model.design, model.mme
        if not mme.q or model.obs_term is not None:
            return None
        cols_b: list[np.ndarray] = []
        cols_v: list[np.ndarray] = []
        if not self.theta_fixed:
            if not disp.phi_fixed:
                fam = model.family
                phi = disp.phi(d)
                score = (
                    d.prior_weights
                    * (d.y - fit.mu)
                    * fam.link.mu_eta(fit.eta)
                    / (fam.variance(fit.mu) * phi)
                )
                for j in range(d.X_disp.shape[1]):
                    c = -score * d.X_disp[:, j]
                    cols_b.append(d.X.T @ c)
                    cols_v.append(mme.zt(c))
            lam = disp.lam(d)
            for k, t in enumerate(d.terms):
                score_l = random_derivatives(t.family, fit.v[k], lam[k]).score_l
                for j in range(t.X_disp.shape[1]):
                    c = np.zeros(mme.q)
                    c[mme.offsets[k] : mme.offsets[k + 1]] = score_l * t.X_disp[:, j]
                    cols_b.append(np.zeros(d.p))
                    cols_v.append(c)
        n_theta = len(cols_v)
        if self.beta_free:
            # beta is held in the IWLS: only v moves, dv/dbeta = -H^{-1} Z'AX = -M
            t_theta = mme.solve_levels(np.column_stack(cols_v)) if n_theta else np.zeros((mme.q, 0))
            t_v = np.hstack([-sol.M, t_theta])
            return x.copy(), None, t_v
        if not n_theta:
            return None
        t_beta, t_v = mme.solve_joint(sol, np.column_stack(cols_b), np.column_stack(cols_v))
        return x.copy(), t_beta, t_v

    def split(self, x: np.ndarray) -> tuple[np.ndarray | None, Dispersions]:
        if self.theta_fixed:
            return x, self.base
        if self.beta_free:
            return x[: self.p], self.base.with_theta(x[self.p :])
        return None, self.base.with_theta(x)

    def solve(self, x: np.ndarray) -> tuple[MeanFit, Dispersions]:
        beta, disp = self.split(x)
        predicted_beta, predicted_v = self._predicted_mode(x)
        start_beta = beta if beta is not None else predicted_beta
        fit = self.model.iwls(
            start_beta,
            predicted_v,
            disp,
            exact=True,
            beta_fixed=beta is not None,
            tol=self.inner_tol,
            max_iter=200,
            min_iter=self.inner_min_iter,
        )
        if not fit.converged:
            fit = self.model.iwls(
                start_beta,
                self.model.start_v(),
                disp,
                exact=True,
                beta_fixed=beta is not None,
                tol=1e-14,
                max_iter=400,
                min_iter=2,
            )
        return fit, disp

    def _evaluate(self, x: np.ndarray, with_gradient: bool) -> tuple[float, np.ndarray | None]:
        """The criterion at x and, if asked and available, its analytic gradient."""
        self.n_eval += 1
        t0 = time.perf_counter()
        try:
            fit, disp = self.solve(x)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            self.timings["iwls"] += time.perf_counter() - t0
            return -np.inf, None
        t1 = time.perf_counter()
        self.timings["iwls"] += t1 - t0
        observed = True
        try:
            try:
                sol, elim, a = self.model.evaluate(fit, disp, exact=True, observed=True)
            except np.linalg.LinAlgError:
                observed = False
                sol, elim, a = self.model.evaluate(fit, disp, exact=True, observed=False)
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            self.timings["factorise"] += time.perf_counter() - t1
            return -np.inf, None
        lik = self.model.combine_likelihoods(fit, disp, sol, elim)
        t2 = time.perf_counter()
        self.timings["factorise"] += t2 - t1
        value = float(lik.p_v if self.which == "p_v" else lik.p_beta_v)
        if not (np.isfinite(value) and fit.converged):
            return value, None
        self.fit = fit
        self._tangent = self._mode_tangent(x, fit, disp, sol) if observed else None
        grad = None
        if with_gradient and observed:
            try:
                grad = criterion_gradient(
                    self.model,
                    fit,
                    disp,
                    Evaluation(sol, elim, a),
                    self.which,
                    self.beta_free,
                    theta_free=not self.theta_fixed,
                )
                self.n_grad += 1
            except GradientUnavailable:
                grad = None
            if grad is not None and not np.all(np.isfinite(grad)):
                grad = None
        self.timings["gradient"] += time.perf_counter() - t2
        return value, grad

    def __call__(self, x: np.ndarray) -> float:
        return self._evaluate(x, with_gradient=False)[0]

    def value_and_gradient(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        """f(x) and its gradient (analytic; central differences where unavailable)."""
        x = np.asarray(x, dtype=float)
        if self._last is not None and np.array_equal(self._last[0], x):
            f, g = self._last[1], self._last[2]
        else:
            f, g = self._evaluate(x, with_gradient=True)
        if g is None and np.isfinite(f):
            g = self.numeric_gradient(x)
        if g is None:
            g = np.zeros_like(x)
        self._last = (x.copy(), f, g)
        return f, g

    def gradient(self, x: np.ndarray) -> np.ndarray:
        return self.value_and_gradient(x)[1]

    def numeric_gradient(self, x: np.ndarray, step: float = 1e-4) -> np.ndarray:
        """Central differences: the oracle the analytic gradient is tested against.

        The inner IWLS converges to ~1e-7 in eta, so f is accurate to ~1e-12 (it is
        stationary in v)."""
        g = np.zeros_like(x)
        for i in range(len(x)):
            e = np.zeros_like(x)
            e[i] = step
            g[i] = (self(x + e) - self(x - e)) / (2 * step)
        return g

    def hessian(self, x: np.ndarray, step: float = 1e-3) -> np.ndarray:
        """Differences of the gradient: central for a few parameters, forward (from the
        stationary point, step/10) for many, where 2m evaluations would dominate a fit."""
        m = len(x)
        H = np.zeros((m, m))
        central = m <= 12
        g0 = None if central else self.gradient(x)
        for i in range(m):
            e = np.zeros(m)
            if central:
                e[i] = step
                H[:, i] = (self.gradient(x + e) - self.gradient(x - e)) / (2 * step)
            else:
                e[i] = step / 10
                H[:, i] = (self.gradient(x + e) - g0) / (step / 10)
        return 0.5 * (H + H.T)


def maximise(
    crit: Criterion,
    x0: np.ndarray,
    bounds: list[tuple[float | None, float | None]],
    scale: np.ndarray | None = None,
    maxiter: int = 500,
):
    """L-BFGS-B on -crit. ``scale``: rough standard errors of x (a vector), or a square root R
    of a rough covariance (x = R y; rows of bounded coordinates must be diagonal): the search
    runs on y, where the curvature is near the identity L-BFGS starts from (fewer iterations)."""
    m = len(x0)
    if scale is None:
        R = np.eye(m)
    else:
        scale = np.asarray(scale, dtype=float)
        R = np.diag(scale) if scale.ndim == 1 else scale
    R_inv = np.linalg.inv(R) if m else R
    s = np.diag(R)

    def fun(y: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = crit.value_and_gradient(R @ y)
        if not np.isfinite(f):
            return 1e300, np.zeros_like(y)
        return -f, -(R.T @ g)

    scaled_bounds = [
        (None if lo is None else lo / si, None if hi is None else hi / si)
        for (lo, hi), si in zip(bounds, s, strict=True)
    ]
    res = scipy.optimize.minimize(
        fun,
        R_inv @ x0,
        jac=True,
        method="L-BFGS-B",
        bounds=scaled_bounds,
        options={"maxiter": maxiter, "ftol": 1e-13, "gtol": 1e-6 * float(np.min(s, initial=1.0))},
    )
    res.x = R @ res.x
    return res


def is_stationary(crit: Criterion, res: scipy.optimize.OptimizeResult, bounds: list) -> bool:
    """Did the search stop at a stationary point even if L-BFGS-B reports otherwise?

    The line search can end 'abnormally' right at the optimum, where the criterion is flat
    to rounding; judge by the gradient, projected on the bounds."""
    if res.success:
        return True
    g = crit.gradient(res.x)
    for i, (lo, hi) in enumerate(bounds):
        at_lo = lo is not None and res.x[i] <= lo + 1e-8 and g[i] < 0
        at_hi = hi is not None and res.x[i] >= hi - 1e-8 and g[i] > 0
        if at_lo or at_hi:
            g[i] = 0.0
    return bool(np.all(np.isfinite(g)) and np.max(np.abs(g), initial=0.0) < 1e-3)
