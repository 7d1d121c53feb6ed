"""Linear mixed models: p_v(h) and p_beta,v(h) maximised over the variance ratios alone.

For a Gaussian response with the identity link and normal random intercepts the mean model is
linear: h is quadratic in (beta, v), the IWLS is one solve, and p_v(h) and p_beta,v(h) are the
exact ML and REML log-likelihoods. With the ratios gamma_k = lambda_k / phi,

    A    = Z'WZ + Gamma^{-1}                (W: prior weights; the v-block of D(h, v) times phi)
    PRSS = min over (beta, v) of |y - X beta - Z v|^2_W + v' Gamma^{-1} v,

both criteria have phi in closed form (phi = PRSS / m, m = n for p_v, n - p for p_beta,v) and
beta at the generalised least-squares solution, as in lme4:

    p_v(h)      = -n/2 (log(2 pi PRSS / n) + 1) + 1/2 sum log w - 1/2 sum_k q_k log gamma_k
                  - 1/2 log det A
    p_beta,v(h) = the same with n - p for n and log det A + log det S (S: the Schur complement
                  of the fixed effects) for log det A

The search runs over log gamma only (one factorisation per evaluation, no inner iteration), from
a moment estimate rather than an EQL fit, by Newton steps with the average information
(Gilmour, Thompson & Cullis 1995: K + 1 extra solves with the factor at hand; L-BFGS takes
over if they stall): five gradients on the InstEval-size case where L-BFGS took sixteen. The
gradient, by the envelope theorem, is

    d/d log gamma_k = m/2 sum_{j in k} v_j^2 / gamma_j / PRSS - q_k/2
                      + 1/2 sum_{j in k} (C^{-1})_jj / gamma_j,

C^{-1} the inverse of A (p_v) or of the full (beta, v) matrix (p_beta,v), from the selected
inverse of the factor. The estimates then go through the same final steps as every HL fit
(``hglm.hl.finish_hl``), so the reported criterion is computed the same way. Whether a model
takes this route is decided by ``hglm.dispatch.solve`` (``is_linear_mixed_model``).

May import: ``hglm.state``, ``hglm.diagnostics``, ``hglm.model``, ``hglm.hl``.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize

from hglm.diagnostics import ConvergenceCode
from hglm.hl import finish_hl
from hglm.model import Model
from hglm.state import LOG_LAMBDA_BOUNDS, Dispersions, FitOutcome


def log_ratio_bounds(model: Model) -> tuple[float, float]:
    """Bounds of log(lambda / phi) that keep lambda where the generic search keeps it
    (LOG_LAMBDA_BOUNDS) for any phi up to var(y): a vanishing variance component goes down to
    1e-8 at least, and is reported as a singular fit."""
    d = model.design
    log_var = float(np.log(max(float(np.var(d.y - d.offset)), 1e-300)))
    return LOG_LAMBDA_BOUNDS[0] - max(log_var, 0.0), LOG_LAMBDA_BOUNDS[1] - min(log_var, 0.0)


# longest Newton step in log gamma (a factor of e^3 = 20 in a variance ratio)
MAX_NEWTON_STEP = 3.0


def is_linear_mixed_model(model: Model) -> bool:
    """Gaussian identity response, normal(identity) random intercepts, constant phi and
    lambdas (no dispersion models), no observation-level term."""
    d = model.design
    fam = model.family

    def constant(X: np.ndarray) -> bool:
        return X.shape[1] == 1 and bool(np.all(X == X[0, 0])) and X[0, 0] != 0

    return (
        fam.name == "gaussian"
        and fam.link.name == "identity"
        and model.obs_term is None
        and len(d.terms) > 0
        and constant(d.X_disp)
        and all(
            t.family.name == "normal" and t.family.link.name == "identity" and constant(t.X_disp)
            for t in d.terms
        )
    )


class ProfiledCriterion:
    """p_v(h) or p_beta,v(h) of an LMM as a function of the log variance ratios."""

    def __init__(self, model: Model, reml: bool) -> None:
        d = model.design
        self.model = model
        self.reml = reml
        self.y = d.y - d.offset
        self.w = d.prior_weights
        self.m = d.n - d.p if reml else d.n
        self.sizes = np.array([t.n_levels for t in d.terms])
        self.blocks = np.repeat(np.arange(len(d.terms)), self.sizes)
        self.const = 0.5 * float(np.sum(np.log(self.w)))
        self.n_eval = 0
        self.n_grad = 0
        self.timings = {"factorise": 0.0, "gradient": 0.0}
        # (rho, value, gradient or None) of the last evaluation; _state: its solution
        self.last: tuple[np.ndarray, float, np.ndarray | None] | None = None

    def _solve(self, rho: np.ndarray):
        mme = self.model.mme
        inv_gamma = np.exp(-rho)[self.blocks]
        sol = mme.solve(self.w, self.y, inv_gamma, np.zeros(len(inv_gamma)))
        resid = self.y - self.model.design.X @ sol.beta - mme.eta_random(sol.v)
        prss = float(np.sum(self.w * resid**2) + np.sum(inv_gamma * sol.v**2))
        return sol, inv_gamma, prss

    def value(self, rho: np.ndarray) -> float:
        """The criterion at rho: one factorisation (its factor stays current for the gradient
        and the information at rho)."""
        rho = np.asarray(rho, dtype=float)
        if self.last is not None and np.array_equal(self.last[0], rho):
            return self.last[1]
        self.n_eval += 1
        t0 = time.perf_counter()
        sol, inv_gamma, prss = self._solve(rho)
        logdet = sol.logdet_H + (sol.logdet_S if self.reml else 0.0)
        m = self.m
        value = (
            -0.5 * m * (np.log(2 * np.pi * prss / m) + 1)
            + self.const
            - 0.5 * float(self.sizes @ rho)
            - 0.5 * logdet
        )
        self.timings["factorise"] += time.perf_counter() - t0
        self.last = (rho.copy(), float(value), None)
        self._state = (sol, inv_gamma, prss)
        return float(value)

    def value_and_gradient(self, rho: np.ndarray) -> tuple[float, np.ndarray]:
        rho = np.asarray(rho, dtype=float)
        value = self.value(rho)
        assert self.last is not None
        if self.last[2] is not None:
            return value, self.last[2]
        t1 = time.perf_counter()
        sol, inv_gamma, prss = self._state
        mme = self.model.mme
        diag = mme.level_variances(sol) if self.reml else mme.level_inverse_diagonal()
        per_block = np.bincount(self.blocks, weights=inv_gamma * (self.m * sol.v**2 / prss + diag))
        grad = 0.5 * (per_block - self.sizes)
        self.n_grad += 1
        self.timings["gradient"] += time.perf_counter() - t1
        self.last = (rho.copy(), value, grad)
        return value, grad

    def information(self, rho: np.ndarray) -> np.ndarray:
        """Average information (Gilmour, Thompson & Cullis 1995) of the profiled criterion in
        log gamma, at rho (evaluated last: its factor is current).

        In psi = (log phi, log lambda_k) it is AI_ij = 1/2 u_i' P u_j with u = dV/dpsi P y:
        u_phi = e (the residuals), u_k = Z_k v_k, and P u = W r / phi, r the residual of the
        mixed-model equations solved for u (v only for ML, (beta, v) for REML): K + 1 solves
        with the factor already made. Then psi = (s, s + rho) with s = log phi, and s is
        profiled out (a Schur complement)."""
        if self.last is None or not np.array_equal(self.last[0], rho):
            self.value_and_gradient(rho)
        sol, _, prss = self._state
        d = self.model.design
        mme = self.model.mme
        K = len(self.sizes)
        eta_v = mme.eta_random(sol.v)
        resid = self.y - d.X @ sol.beta - eta_v
        U = np.empty((d.n, K + 1))
        U[:, 0] = resid
        for k in range(K):
            vk = np.where(self.blocks == k, sol.v, 0.0)
            U[:, k + 1] = mme.eta_random(vk)
        WU = self.w[:, None] * U
        rhs_v = mme.zt(WU)
        if self.reml:
            b, v = mme.solve_joint(sol, d.X.T @ WU, rhs_v)
            fitted = d.X @ b + np.column_stack([mme.eta_random(v[:, j]) for j in range(K + 1)])
        else:
            v = mme.solve_levels(rhs_v)
            fitted = np.column_stack([mme.eta_random(v[:, j]) for j in range(K + 1)])
        phi = prss / self.m
        ai = 0.5 * (WU.T @ (U - fitted)) / phi
        ai = 0.5 * (ai + ai.T)
        J = np.zeros((K + 1, K + 1))
        J[:, 0] = 1.0
        J[1:, 1:] = np.eye(K)
        full = J.T @ ai @ J
        return full[1:, 1:] - np.outer(full[1:, 0], full[0, 1:]) / full[0, 0]

    def __call__(self, rho: np.ndarray) -> float:
        return self.value(rho)

    def gradient(self, rho: np.ndarray) -> np.ndarray:
        return self.value_and_gradient(rho)[1]

    def mode(self, rho: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(beta-hat, v-hat) at rho (v: the terms' levels concatenated); both are scale-free."""
        self.value(rho)
        sol = self._state[0]
        return sol.beta, sol.v

    def dispersions(self, rho: np.ndarray) -> Dispersions:
        """phi = PRSS / m and lambda_k = phi gamma_k as the coefficients of their log-linear
        models (intercept-only)."""
        d = self.model.design
        self.value(rho)
        prss = self._state[2]
        log_phi = np.log(prss / self.m)
        gamma = np.array([log_phi / d.X_disp[0, 0]])
        delta = [
            np.array([(log_phi + r) / t.X_disp[0, 0]]) for t, r in zip(d.terms, rho, strict=True)
        ]
        return Dispersions(gamma, delta, phi_fixed=False)


def moment_start(model: Model) -> np.ndarray:
    """log(lambda_k / phi) from one-way moments of the OLS residuals: per term, the variance
    of the level means less the part the residual variance explains. Crude (crossed terms
    share variance) but costs O(n) and lands near enough for the Newton search."""
    d = model.design
    y = d.y - d.offset
    beta, *_ = np.linalg.lstsq(d.X, y, rcond=None) if d.p else (np.zeros(0),)
    r = y - d.X @ beta if d.p else y
    total = float(np.var(r))
    lam = []
    for t in d.terms:
        counts = np.bincount(t.codes, minlength=t.n_levels).astype(float)
        means = np.bincount(t.codes, weights=r, minlength=t.n_levels) / np.maximum(counts, 1)
        between = float(np.var(means[counts > 0]))
        lam.append(max(between - total / max(float(np.mean(counts)), 1.0), 0.05 * total))
    phi = max(total - sum(lam), 0.1 * total)
    return np.clip(np.log(np.array(lam) / phi), *log_ratio_bounds(model))


def fit_lmm(
    model: Model,
    mean_order: int,
    reml: bool,
    start: np.ndarray | None = None,
    outer_max_iter: int = 500,
) -> FitOutcome:
    """HL(mean_order, 1) of a linear mixed model: ML (p_v(h)) or REML (p_beta,v(h)) for the
    dispersions; beta is the GLS estimate, which maximises h and p_v(h) alike.

    Parameters
    ----------
    model : Model
        A linear mixed model (``is_linear_mixed_model``).
    mean_order : int
        1 for HL(1,1), 0 for HL(0,1) (the same estimates; the SEs' criterion differs).
    reml : bool
        p_beta,v(h) (True) or p_v(h) (False).
    start : numpy.ndarray, optional
        log(lambda / phi) per term (default: ``moment_start``).
    outer_max_iter : int
        Iterations at most of the quasi-Newton fallback search.

    Returns
    -------
    FitOutcome
        The fit at the estimates (``hglm.hl.finish_hl``).
    """
    t0 = time.perf_counter()
    mme_before = dict(model.mme.timings)
    crit = ProfiledCriterion(model, reml)
    lo, hi = log_ratio_bounds(model)
    rho0 = moment_start(model) if start is None else np.clip(start, lo, hi)
    bounds = [(lo, hi)] * len(rho0)

    res = _newton_ai(crit, rho0, bounds)
    if not res.success:  # quasi-Newton from where Newton stopped
        newton_its = res.nit

        def fun(rho: np.ndarray) -> tuple[float, np.ndarray]:
            f, g = crit.value_and_gradient(rho)
            return (-f, -g) if np.isfinite(f) else (1e300, np.zeros_like(rho))

        res = scipy.optimize.minimize(
            fun,
            res.x,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": outer_max_iter, "ftol": 1e-13, "gtol": 1e-6},
        )
        res.nit += newton_its
    messages: list[str] = []
    codes: list[ConvergenceCode] = []
    if not (bool(res.success) or _stationary(crit, res.x, bounds)):
        codes.append(ConvergenceCode.OPTIMISER_FAILED)
        messages.append(f"dispersion optimisation did not converge: {res.message}")
    rho_hat = res.x
    disp_hat = crit.dispersions(rho_hat)
    beta_hat, v_hat = crit.mode(rho_hat)
    t1 = time.perf_counter()
    outer = {
        "outer": t1 - t0,
        "outer_iterations": float(res.nit),
        "outer_evaluations": float(crit.n_eval),
        "outer_gradients": float(crit.n_grad),
        "outer_iwls": 0.0,
        "outer_factorise_at_mode": crit.timings["factorise"],
        "outer_gradient": crit.timings["gradient"],
    }
    return finish_hl(
        model,
        disp_hat,
        beta_hat,
        model.mme.split(v_hat),
        beta_fixed=False,
        which="p_beta_v" if reml else "p_v",
        joint=mean_order == 1 and not reml,
        codes=codes,
        n_iter=int(res.nit),
        messages=messages,
        timings=outer,
        mme_before=mme_before,
    )


def _newton_ai(
    crit: ProfiledCriterion, rho0: np.ndarray, bounds: list, max_iter: int = 50
) -> scipy.optimize.OptimizeResult:
    """Newton steps with the average information, halved until the criterion increases
    (Armijo); coordinates at a bound with the gradient pointing out are held there. Stops when
    the Newton decrement g' I^{-1} g (twice the predicted gain) falls below 1e-10."""
    lo = np.array([b[0] for b in bounds])
    hi = np.array([b[1] for b in bounds])
    rho = np.clip(rho0, lo, hi)
    f, g = crit.value_and_gradient(rho)
    message = "maximum number of Newton iterations reached"
    success = False
    it = 0
    while it < max_iter:
        it += 1
        if not (np.isfinite(f) and np.all(np.isfinite(g))):
            message = "the criterion is not finite"
            break
        held = ((rho <= lo) & (g < 0)) | ((rho >= hi) & (g > 0))
        free = ~held
        step = np.zeros_like(rho)
        if np.any(free):
            info = crit.information(rho)[np.ix_(free, free)]
            # a ratio with no signal (v-hat = 0: all level means alike) has no information;
            # floor the eigenvalues so that it still moves, by capped steps, toward its bound
            values, vectors = np.linalg.eigh(info)
            floor = max(1e-8 * float(np.max(np.abs(values), initial=0.0)), 1e-12)
            values = np.maximum(values, floor)
            step[free] = vectors @ ((vectors.T @ g[free]) / values)
        largest = np.max(np.abs(step), initial=0.0)
        if largest > MAX_NEWTON_STEP:  # weakly identified ratios: no leaps across the range
            step *= MAX_NEWTON_STEP / largest
        decrement = float(g @ step)
        if decrement < 1e-10:
            success = decrement >= 0 or np.max(np.abs(g[free]), initial=0.0) < 1e-6
            message = "Newton decrement below 1e-10" if success else "not an ascent direction"
            break
        t = 1.0
        while True:
            trial = np.clip(rho + t * step, lo, hi)
            f_new = crit.value(trial)
            if np.isfinite(f_new) and f_new >= f + 1e-4 * t * decrement:
                break
            t *= 0.5
            if t < 1e-6:
                break
        if t < 1e-6:
            message = "the line search found no increase"
            break
        rho = trial
        f, g = crit.value_and_gradient(rho)  # the factor at rho is still current
    return scipy.optimize.OptimizeResult(x=rho, fun=f, success=success, nit=it, message=message)


def _stationary(crit: ProfiledCriterion, rho: np.ndarray, bounds: list) -> bool:
    """The projected gradient vanishes (L-BFGS-B can stop 'abnormally' where f is flat)."""
    g = crit.gradient(rho).copy()
    for i, (lo, hi) in enumerate(bounds):
        if (rho[i] <= lo + 1e-8 and g[i] < 0) or (rho[i] >= hi - 1e-8 and g[i] > 0):
            g[i] = 0.0
    return bool(np.all(np.isfinite(g)) and np.max(np.abs(g), initial=0.0) < 1e-3)
