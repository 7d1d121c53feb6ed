"""Structured normal random effects: random slopes, CAR/SAR, AR(1), user precisions.

A model with any term other than an independent random intercept goes this way. Every
term k is normal, v_k ~ N(0, Q_k(theta_k)^{-1}) (``hglm.covariance``), and its block of Z
holds the term's columns per level (slopes: the covariate values; AR(1): one indicator per
(group, time)). The mixed-model equations

    [ X'AX   X'AZ         ] [beta]   [X'A z]
    [ Z'AX   Z'AZ + Q(th) ] [ v  ] = [Z'A z]

have the random-effect precision Q = blockdiag(Q_k) in place of diag(W_M / lambda): a sparse
matrix on a pattern fixed once (Z'Z's pattern united with Q's), so CHOLMOD's symbolic
analysis is done once and every evaluation refactors numerically. beta goes through the
p x p Schur complement as in ``hglm.mme``. Nothing is q x q dense.

Criteria (the notes' definitions, with log f(v) = 1/2 log|Q| - q/2 log 2 pi - v'Qv/2):

* Gaussian identity response: phi and beta are profiled out as in lme4 (relative precisions
  Q_rel = phi Q), and theta maximises p_beta,v(h) (REML) or p_v(h) (ML) exactly;
* otherwise the Laplace criteria with an inner Newton iteration for the mode: HL(1,1) with
  ML maximises p_v(h) over (beta, theta) (glmmTMB's Laplace fit); with REML (and HL(0,1))
  theta maximises p_beta,v(h) with beta from h (HL(0,1)) or, at those theta, from p_v(h)
  (HL(1,1)).

The outer search is L-BFGS on the unconstrained theta with analytic gradients for the
profiled LMM and for p_v(h) with a canonical link and phi fixed (envelope theorem for h, the
weights' change along the mode's tangent for log|H|, tr(H^{-1} dQ) from the selected
inverse), central differences otherwise (the inner mode is solved to 1e-10). SEs of theta
come from a finite-difference Hessian at the optimum, profile intervals from
``StructuredResult.profile_ci``.

The terms (``hglm.structured_terms``) and the equations (``hglm.structured_mme``) live in
their own modules; this one holds the model, its criteria and their search. Why it is longer
than 600 lines: the criteria and their analytic gradients share the inner mode, the factor
and the selected inverse of one evaluation; split apart they would pass that state around.

May import: ``hglm.covariance``, ``hglm.design``, ``hglm.glm``, ``hglm.likelihood``,
``hglm.linalg``, ``hglm.model`` (the starting GLM), ``hglm.structured_terms``,
``hglm.structured_mme``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import scipy.linalg
import scipy.optimize
import scipy.sparse as sp

from hglm.design import ModelDesign
from hglm.glm import fit_glm_start
from hglm.likelihood import conditional_loglik
from hglm.linalg import NotPositiveDefiniteError
from hglm.model import Model
from hglm.structured_mme import Solution, SparseMME
from hglm.structured_terms import StructuredTerm

_LOG_2PI = float(np.log(2 * np.pi))
# a Newton step moving eta by less than this leaves the factor it was computed from at the mode
_REUSE_FACTOR = 1e-11


# ------------------------------------------------------------------------------ the model


@dataclass
class Mode:
    beta: np.ndarray
    v: np.ndarray
    eta: np.ndarray
    mu: np.ndarray
    solution: Solution
    a: np.ndarray  # data-row weights (with 1/phi) of the last factorisation
    iterations: int
    converged: bool
    factor_at_mode: bool = False  # the solution's factor is at (beta, v) itself


@dataclass
class Evaluation:
    """Criteria at one parameter value."""

    h: float
    p_v: float
    p_beta_v: float
    conditional: float
    mode: Mode


class StructuredModel:
    """Design + structured terms: Q(theta), h, the inner mode and the criteria."""

    def __init__(self, design: ModelDesign, terms: list[StructuredTerm]) -> None:
        self.design = design
        self.terms = terms
        self.family = design.family
        sizes = [t.q for t in terms]
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.q = int(self.offsets[-1])
        n_par = [t.structure.n_params for t in terms]
        self.theta_offsets = np.concatenate(([0], np.cumsum(n_par))).astype(np.int64)
        self.n_theta = int(self.theta_offsets[-1])
        self.Z = sp.hstack([t.Z for t in terms], format="csr")
        q_rows = np.concatenate(
            [t.structure.rows + o for t, o in zip(terms, self.offsets, strict=False)]
        )
        q_cols = np.concatenate(
            [t.structure.cols + o for t, o in zip(terms, self.offsets, strict=False)]
        )
        self.q_rows, self.q_cols = q_rows, q_cols
        self.q_spans = np.concatenate(([0], np.cumsum([len(t.structure.rows) for t in terms])))
        self.mme = SparseMME(design.X, self.Z, q_rows, q_cols)
        self.phi_fixed = self.family.fixed_dispersion
        self.n_gamma = 0 if self.phi_fixed else design.X_disp.shape[1]
        self.profiled = (
            self.family.name == "gaussian"
            and self.family.link.name == "identity"
            and (design.X_disp.shape[1] == 1 and bool(np.all(design.X_disp == design.X_disp[0, 0])))
        )

    # -- pieces ----------------------------------------------------------------------
    def theta_of(self, theta: np.ndarray, k: int) -> np.ndarray:
        return theta[self.theta_offsets[k] : self.theta_offsets[k + 1]]

    def q_values(self, theta: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [t.structure.values(self.theta_of(theta, k)) for k, t in enumerate(self.terms)]
        )

    def logdet_q(self, theta: np.ndarray) -> float:
        return float(
            sum(t.structure.logdet(self.theta_of(theta, k)) for k, t in enumerate(self.terms))
        )

    def quadratic(self, theta: np.ndarray, v: np.ndarray) -> float:
        return float(
            sum(
                t.structure.quadratic(
                    self.theta_of(theta, k), v[self.offsets[k] : self.offsets[k + 1]]
                )
                for k, t in enumerate(self.terms)
            )
        )

    def q_derivatives(self, theta: np.ndarray) -> list[tuple[slice, np.ndarray]]:
        """Per parameter: (its term's span of the Q pattern, dQ/dtheta there)."""
        out = []
        for k, t in enumerate(self.terms):
            span = slice(int(self.q_spans[k]), int(self.q_spans[k + 1]))
            out += [(span, dq) for dq in t.structure.derivatives(self.theta_of(theta, k))]
        return out

    def dlogdet_q(self, theta: np.ndarray) -> np.ndarray:
        return np.concatenate(
            [t.structure.dlogdet(self.theta_of(theta, k)) for k, t in enumerate(self.terms)]
        )

    def _dq_times(self, span: slice, dq: np.ndarray, v: np.ndarray) -> np.ndarray:
        """dQ v for one parameter (dQ on its span of the pattern)."""
        r, c = self.q_rows[span], self.q_cols[span]
        return np.bincount(r, weights=dq * v[c], minlength=self.q)

    def gradient_p_v(self, ev: Evaluation, theta: np.ndarray, beta_free: bool) -> np.ndarray:
        """Analytic gradient of p_v(h) in ([beta,] theta) at an evaluation whose factor is
        current (canonical link, phi fixed): the envelope theorem for h and, for log|H|, the
        change of the weights along the mode's tangent (dv/dtheta = -H^{-1} dQ v,
        dv/dbeta = -H^{-1} Z'AX)."""
        d, fam, m = self.design, self.family, ev.mode
        mme = self.mme
        v, eta = m.v, m.eta
        # derivative of the data weights in eta (numerically: any canonical family)
        step = 1e-6 * np.maximum(1.0, np.abs(eta))

        def weight(e: np.ndarray) -> np.ndarray:
            mu = fam.valid_mu(fam.link.inverse(e))
            return fam.working_weight(e, mu, d.prior_weights)

        da = (weight(eta + step) - weight(eta - step)) / (2 * step)
        rowq = mme.row_forms()
        c = da * rowq
        h_inv = mme.inverse_entries(self.q_rows, self.q_cols)
        dlog = self.dlogdet_q(theta)
        grad_theta = np.empty(self.n_theta)
        for j, (span, dq) in enumerate(self.q_derivatives(theta)):
            dqv = self._dq_times(span, dq, v)
            dv = -mme.chol.solve(dqv)
            dh = 0.5 * dlog[j] - 0.5 * float(v @ dqv)
            dlogdet_h = float(np.sum(h_inv[span] * dq)) + float(c @ (self.Z @ dv))
            grad_theta[j] = dh - 0.5 * dlogdet_h
        if not beta_free:
            return grad_theta
        score = d.prior_weights * (d.y - m.mu) * fam.link.mu_eta(eta) / fam.variance(m.mu)
        dh_beta = d.X.T @ score
        moved = d.X - np.asarray(self.Z @ m.solution.M)  # d eta / d beta along the mode
        grad_beta = dh_beta - 0.5 * (moved.T @ c)
        return np.concatenate([grad_beta, grad_theta])

    def split(self, v: np.ndarray) -> list[np.ndarray]:
        return [v[self.offsets[k] : self.offsets[k + 1]] for k in range(len(self.terms))]

    def phi(self, gamma: np.ndarray) -> np.ndarray:
        if self.phi_fixed:
            return np.ones(self.design.n)
        return np.exp(self.design.X_disp @ gamma)

    def theta_lower(self) -> np.ndarray:
        """Lower bounds of theta (``Structure.lower``)."""
        return np.concatenate([t.structure.lower() for t in self.terms])

    def singular_terms(self, theta: np.ndarray) -> list[StructuredTerm]:
        """Terms with a variance parameter at its lower bound."""
        out = []
        for k, t in enumerate(self.terms):
            lo = t.structure.lower()
            th = self.theta_of(theta, k)
            if np.any(np.isfinite(lo) & (th <= lo + 1e-6)):
                out.append(t)
        return out

    def start_theta(self, variance: float) -> np.ndarray:
        return np.concatenate([t.structure.start(variance) for t in self.terms])

    def rescale(self, theta: np.ndarray, log_c: float) -> np.ndarray:
        return np.concatenate(
            [t.structure.rescale(self.theta_of(theta, k), log_c) for k, t in enumerate(self.terms)]
        )

    def eta(self, beta: np.ndarray, v: np.ndarray) -> np.ndarray:
        d = self.design
        return d.offset + d.X @ beta + self.Z @ v

    def h(
        self, eta: np.ndarray, v: np.ndarray, theta: np.ndarray, phi: np.ndarray
    ) -> tuple[float, float]:
        """(h, log f(y | v)) at eta, v."""
        d, fam = self.design, self.family
        with np.errstate(all="ignore"):
            mu = fam.valid_mu(fam.link.inverse(eta))
            cond = conditional_loglik(fam, d.y, mu, phi, d.prior_weights)
        rand = 0.5 * (self.logdet_q(theta) - self.q * _LOG_2PI - self.quadratic(theta, v))
        value = cond + rand
        return (value if np.isfinite(value) else -np.inf), cond

    def _weights(
        self, eta: np.ndarray, mu: np.ndarray, phi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(data-row weights a, working response z - offset) at eta: Newton's where positive."""
        d, fam = self.design, self.family
        a = fam.working_weight(eta, mu, d.prior_weights) / phi
        if not fam.canonical:
            obs = fam.observed_weight(d.y, eta, mu, d.prior_weights) / phi
            if np.all(obs > 0):
                a = obs
        score = d.prior_weights * (d.y - mu) * fam.link.mu_eta(eta) / (fam.variance(mu) * phi)
        return a, eta - d.offset + score / a

    # -- the inner mode ------------------------------------------------------------------
    def mode(
        self,
        theta: np.ndarray,
        gamma: np.ndarray,
        beta: np.ndarray,
        v: np.ndarray,
        beta_fixed: bool,
        tol: float = 1e-10,
        max_iter: int = 100,
    ) -> Mode:
        """(beta, v) maximising h (v alone when ``beta_fixed``) by Newton steps with halving."""
        fam = self.family
        phi = self.phi(gamma)
        qv = self.q_values(theta)
        eta = self.eta(beta, v)
        h_old, _ = self.h(eta, v, theta, phi)
        converged = False
        iterations = 0
        change = np.inf
        sol = None
        a = np.zeros(self.design.n)
        for it in range(1, max_iter + 1):
            iterations = it
            mu = fam.valid_mu(fam.link.inverse(eta))
            a, r = self._weights(eta, mu, phi)
            sol = self.mme.solve(a, r, qv, beta if beta_fixed else None)
            new_beta, new_v = sol.beta, sol.v
            step = 1.0
            for _ in range(40):
                b_try = beta + step * (new_beta - beta)
                v_try = v + step * (new_v - v)
                eta_try = self.eta(b_try, v_try)
                h_new, _ = self.h(eta_try, v_try, theta, phi)
                if np.isfinite(h_new) and h_new >= h_old - 1e-12 * abs(h_old):
                    break
                step *= 0.5
            change = float(np.max(np.abs(eta_try - eta), initial=0.0))
            beta, v, eta = b_try, v_try, eta_try
            gain = h_new - h_old
            h_old = h_new
            if change < tol or (
                step == 1.0 and abs(gain) < 1e-13 * max(1.0, abs(h_new)) and change < 1e-6
            ):
                converged = True
                break
        assert sol is not None
        mu = fam.valid_mu(fam.link.inverse(eta))
        mode = Mode(beta, v, eta, mu, sol, a, iterations, converged)
        # the last factorisation is at the mode to rounding when Newton's last step vanished
        mode.factor_at_mode = converged and change < _REUSE_FACTOR
        return mode

    def evaluate(
        self,
        theta: np.ndarray,
        gamma: np.ndarray,
        beta: np.ndarray,
        v: np.ndarray,
        beta_fixed: bool,
    ) -> Evaluation:
        """The criteria at (theta, gamma[, beta]): the mode, then one factorisation there."""
        m = self.mode(theta, gamma, beta, v, beta_fixed)
        phi = self.phi(gamma)
        if not m.factor_at_mode:
            a, r = self._weights(m.eta, m.mu, phi)
            m.solution, m.a = self.mme.solve(a, r, self.q_values(theta), m.beta), a
        sol = m.solution
        h, cond = self.h(m.eta, m.v, theta, phi)
        p_v = h - 0.5 * (sol.logdet_H - self.q * _LOG_2PI)
        p_bv = p_v - 0.5 * (sol.logdet_S - self.design.p * _LOG_2PI)
        return Evaluation(h, p_v, p_bv, cond, m)


# ----------------------------------------------------------------- profiled Gaussian LMM


class ProfiledLMM:
    """p_v(h) / p_beta,v(h) of a linear mixed model over relative theta (Q_rel = phi Q):
    one factorisation per evaluation, phi = PRSS / m and beta at GLS (lme4's profiling)."""

    def __init__(self, model: StructuredModel, reml: bool) -> None:
        d = model.design
        self.model = model
        self.reml = reml
        self.y = d.y - d.offset
        self.w = d.prior_weights
        self.m = d.n - d.p if reml else d.n
        self.const = 0.5 * float(np.sum(np.log(self.w)))
        self.n_eval = 0

    def solve(self, theta_rel: np.ndarray) -> tuple[Solution, float]:
        mdl = self.model
        sol = mdl.mme.solve(self.w, self.y, mdl.q_values(theta_rel), None)
        resid = self.y - mdl.design.X @ sol.beta - mdl.Z @ sol.v
        prss = float(np.sum(self.w * resid**2)) + mdl.quadratic(theta_rel, sol.v)
        return sol, prss

    def __call__(self, theta_rel: np.ndarray) -> float:
        self.n_eval += 1
        try:
            sol, prss = self.solve(theta_rel)
        except (NotPositiveDefiniteError, np.linalg.LinAlgError):
            return -np.inf
        logdet = sol.logdet_H + (sol.logdet_S if self.reml else 0.0)
        m = self.m
        return float(
            -0.5 * m * (np.log(2 * np.pi * prss / m) + 1)
            + self.const
            + 0.5 * self.model.logdet_q(theta_rel)
            - 0.5 * logdet
        )

    def value_and_gradient(self, theta_rel: np.ndarray) -> tuple[float, np.ndarray]:
        """The criterion and its analytic gradient: -m/2 v'dQ v / PRSS + 1/2 dlog|Q| -
        1/2 tr(C_vv^{-1} dQ), C_vv^{-1} the v-block of the inverse (H^{-1} for ML; plus
        M S^{-1} M' for REML), read on Q's pattern from the selected inverse."""
        self.n_eval += 1
        mdl = self.model
        try:
            sol, prss = self.solve(theta_rel)
        except (NotPositiveDefiniteError, np.linalg.LinAlgError):
            return -np.inf, np.zeros_like(theta_rel)
        m = self.m
        logdet = sol.logdet_H + (sol.logdet_S if self.reml else 0.0)
        value = float(
            -0.5 * m * (np.log(2 * np.pi * prss / m) + 1)
            + self.const
            + 0.5 * mdl.logdet_q(theta_rel)
            - 0.5 * logdet
        )
        inv = mdl.mme.inverse_entries(mdl.q_rows, mdl.q_cols)
        if self.reml and mdl.design.p:
            MC = sol.M @ sol.cov_beta
            inv = inv + np.einsum("ij,ij->i", MC[mdl.q_rows], sol.M[mdl.q_cols])
        dlog = mdl.dlogdet_q(theta_rel)
        grad = np.empty(mdl.n_theta)
        v = sol.v
        for j, (span, dq) in enumerate(mdl.q_derivatives(theta_rel)):
            quad = float(np.sum(dq * v[mdl.q_rows[span]] * v[mdl.q_cols[span]]))
            grad[j] = -0.5 * m * quad / prss + 0.5 * dlog[j] - 0.5 * float(np.sum(inv[span] * dq))
        return value, grad

    def absolute(self, theta_rel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(theta, gamma) on the absolute scale: phi = PRSS / m."""
        _, prss = self.solve(theta_rel)
        log_phi = float(np.log(prss / self.m))
        d = self.model.design
        return self.model.rescale(theta_rel, log_phi), np.array([log_phi / d.X_disp[0, 0]])


# ------------------------------------------------------------------------ the outer search


def numeric_gradient(f, x: np.ndarray, step: float = 1e-5) -> np.ndarray:
    g = np.zeros_like(x)
    for i in range(len(x)):
        e = np.zeros_like(x)
        e[i] = step
        g[i] = (f(x + e) - f(x - e)) / (2 * step)
    return g


def numeric_hessian(f, x: np.ndarray, step: float = 1e-3) -> np.ndarray:
    m = len(x)
    H = np.zeros((m, m))
    f0 = f(x)
    for i in range(m):
        ei = np.zeros(m)
        ei[i] = step
        H[i, i] = (f(x + ei) - 2 * f0 + f(x - ei)) / step**2
        for j in range(i):
            ej = np.zeros(m)
            ej[j] = step
            H[i, j] = H[j, i] = (
                f(x + ei + ej) - f(x + ei - ej) - f(x - ei + ej) + f(x - ei - ej)
            ) / (4 * step**2)
    return H


def maximise(
    f,
    x0: np.ndarray,
    gtol: float = 1e-6,
    value_and_gradient=None,
    max_iter: int = 1000,
    lower: np.ndarray | None = None,
) -> scipy.optimize.OptimizeResult:
    """L-BFGS-B on -f with the given gradient, else central differences; ``lower``: lower
    bounds (-inf: none)."""

    def fun(x: np.ndarray) -> tuple[float, np.ndarray]:
        if value_and_gradient is not None:
            val, grad = value_and_gradient(x)
        else:
            val = f(x)
            grad = numeric_gradient(f, x) if np.isfinite(val) else None
        if not np.isfinite(val):
            return 1e300, np.zeros_like(x)
        return -val, -grad

    bounds = None
    if lower is not None:
        bounds = [(None if not np.isfinite(lo) else float(lo), None) for lo in lower]
        x0 = np.maximum(x0, lower)
    return scipy.optimize.minimize(
        fun,
        x0,
        jac=True,
        method="L-BFGS-B",
        bounds=bounds,
        options={"maxiter": max_iter, "ftol": 1e-15, "gtol": gtol, "maxcor": 20},
    )


@dataclass
class StructuredFit:
    """What the result needs: estimates, criteria, covariance of beta, the parameter vector
    of the criterion (for SEs and profiles) and how to evaluate it."""

    model: StructuredModel
    method: str
    reml: bool
    theta: np.ndarray
    gamma: np.ndarray
    evaluation: Evaluation
    leverages: np.ndarray
    level_var: np.ndarray
    criterion: Any  # x -> criterion value; x = [beta,] theta[, gamma]
    x_hat: np.ndarray
    n_beta_in_x: int
    converged: bool
    n_iter: int
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    criterion_gradient: Any = None  # x -> (value, gradient), where analytic
    quasi_gamma: np.ndarray | None = None  # log-linear phi of a quasi-likelihood EQL fit
    singular: list[str] = field(default_factory=list)  # terms with a variance at its bound


def fit_structured(
    model: StructuredModel,
    method: str,
    reml: bool,
    start: dict | None = None,
    outer_max_iter: int = 1000,
) -> StructuredFit:
    """HL(0,1) / HL(1,1) fit of a structured model (see the module docstring)."""
    fam_name = f"{model.family.name}({model.family.link.name})"
    if getattr(model.family, "quasi", False):
        raise ValueError(
            f"a quasi-likelihood {fam_name} has no likelihood for the HL methods to maximise; "
            "with random slopes or correlated terms use method='EQL' (CAR/SAR terms)"
        )
    if getattr(model.family, "estimates_theta", False):
        raise ValueError(
            "the negative binomial's theta is not estimated with random slopes or correlated "
            "terms; give theta, or use random intercepts"
        )
    t0 = time.perf_counter()
    d = model.design
    messages: list[str] = []
    if model.profiled:
        crit = ProfiledLMM(model, reml)
        x0 = model.start_theta(1.0) if start is None else start["theta_rel"]
        lower = model.theta_lower()  # relative to phi
        res = maximise(
            crit,
            x0,
            value_and_gradient=crit.value_and_gradient,
            max_iter=outer_max_iter,
            lower=lower,
        )
        singular = model.singular_terms(res.x)
        theta, gamma = crit.absolute(res.x)
        beta = model.mme.solve(crit.w, crit.y, model.q_values(res.x), None).beta
        ev = model.evaluate(theta, gamma, beta, np.zeros(model.q), beta_fixed=False)
        criterion, x_hat, n_beta = (
            _absolute_criterion(model, reml, ev),
            np.concatenate([theta, gamma]),
            0,
        )
        criterion_gradient = None
        converged, n_iter = bool(res.success) or _flat(crit, res.x, lower), int(res.nit)
        outer = crit.n_eval
    else:
        fam = model.family
        beta0, disp0 = fit_glm_start(Model(d))
        gamma0 = np.zeros(model.n_gamma)
        if model.n_gamma:
            gamma0 = np.linalg.lstsq(d.X_disp, np.full(d.n, np.log(max(disp0, 1e-3))), rcond=None)[
                0
            ]
        theta0 = model.start_theta(0.1 if fam.fixed_dispersion else max(0.1 * disp0, 1e-3))
        if start is not None:
            theta0 = start.get("theta", theta0)
        state = {"beta": beta0, "v": np.zeros(model.q)}
        joint = method == "HL(1,1)" and not reml
        which = "p_v" if not reml else "p_beta_v"
        p = d.p

        def split(x):
            if joint:
                return x[:p], x[p : p + model.n_theta], x[p + model.n_theta :]
            return None, x[: model.n_theta], x[model.n_theta :]

        n_eval = [0]

        def crit(x: np.ndarray) -> float:
            n_eval[0] += 1
            beta, theta, gamma = split(x)
            try:
                ev = model.evaluate(
                    theta,
                    gamma,
                    state["beta"] if beta is None else beta,
                    state["v"],
                    beta_fixed=joint,
                )
            except (NotPositiveDefiniteError, np.linalg.LinAlgError, FloatingPointError):
                return -np.inf
            if not np.isfinite(ev.p_v):
                return -np.inf
            state["v"] = ev.mode.v
            if not joint:
                state["beta"] = ev.mode.beta
            return ev.p_v if which == "p_v" else ev.p_beta_v

        analytic = joint and fam.canonical and model.phi_fixed

        def crit_and_grad(x: np.ndarray) -> tuple[float, np.ndarray]:
            n_eval[0] += 1
            beta, theta, gamma = split(x)
            try:
                ev = model.evaluate(theta, gamma, beta, state["v"], beta_fixed=True)
            except (NotPositiveDefiniteError, np.linalg.LinAlgError, FloatingPointError):
                return -np.inf, np.zeros_like(x)
            if not np.isfinite(ev.p_v):
                return -np.inf, np.zeros_like(x)
            state["v"] = ev.mode.v
            return ev.p_v, model.gradient_p_v(ev, theta, beta_free=True)

        x0 = np.concatenate(([beta0] if joint else []) + [theta0, gamma0])
        free = np.full(p if joint else 0, -np.inf)
        lower = np.concatenate([free, model.theta_lower(), np.full(model.n_gamma, -np.inf)])
        res = maximise(
            crit,
            x0,
            value_and_gradient=crit_and_grad if analytic else None,
            max_iter=outer_max_iter,
            lower=lower,
        )
        converged, n_iter = bool(res.success) or _flat(crit, res.x, lower), int(res.nit)
        beta_hat, theta, gamma = split(res.x)
        singular = model.singular_terms(theta)
        if beta_hat is None and method == "HL(1,1)":
            # REML dispersions, beta by p_v(h) at them
            ev0 = model.evaluate(theta, gamma, state["beta"], state["v"], beta_fixed=False)

            def crit_beta(b: np.ndarray) -> float:
                ev = model.evaluate(theta, gamma, b, state["v"], beta_fixed=True)
                state["v"] = ev.mode.v
                return ev.p_v

            bres = maximise(crit_beta, ev0.mode.beta, max_iter=outer_max_iter)
            beta_hat = bres.x
            n_iter += int(bres.nit)
        if beta_hat is None:
            ev = model.evaluate(theta, gamma, state["beta"], state["v"], beta_fixed=False)
        else:
            ev = model.evaluate(theta, gamma, beta_hat, state["v"], beta_fixed=True)
        criterion, x_hat, n_beta = crit, res.x.copy(), p if joint else 0
        criterion_gradient = crit_and_grad if analytic else None
        outer = n_eval[0]
        if not ev.mode.converged:
            messages.append("the final Newton iteration for the random effects did not converge")
    if not converged:
        messages.append(
            f"the optimisation over the variance parameters did not converge: {res.message}"
        )
    for t in singular:
        messages.append(
            f"singular fit: the covariance of {t.label} is at its boundary (a variance, or a "
            f"correlation at +-1: a Cholesky diagonal at its lower bound of 1e-4"
            + (" times sqrt(phi))" if model.profiled else ")")
        )
    lev = ev.mode.a * model.mme.row_variances(ev.mode.solution)
    level_var = model.mme.level_variances(ev.mode.solution)
    return StructuredFit(
        model=model,
        method=method,
        reml=reml,
        theta=theta,
        gamma=gamma,
        evaluation=ev,
        leverages=lev,
        level_var=level_var,
        criterion=criterion,
        criterion_gradient=criterion_gradient,
        x_hat=x_hat,
        n_beta_in_x=n_beta,
        converged=converged,
        n_iter=n_iter,
        messages=messages,
        timings={"outer": time.perf_counter() - t0, "outer_evaluations": float(outer)},
        singular=[t.name for t in singular],
    )


def _absolute_criterion(model: StructuredModel, reml: bool, ev: Evaluation):
    """The LMM's criterion over absolute (theta, log phi) for SEs and profiles: the mode of a
    linear model is one solve, exact at any parameter value."""
    state = {"beta": ev.mode.beta, "v": ev.mode.v}

    def crit(x: np.ndarray) -> float:
        theta, gamma = x[: model.n_theta], x[model.n_theta :]
        try:
            e = model.evaluate(theta, gamma, state["beta"], state["v"], beta_fixed=False)
        except (NotPositiveDefiniteError, np.linalg.LinAlgError):
            return -np.inf
        return e.p_beta_v if reml else e.p_v

    return crit


def _flat(crit, x: np.ndarray, lower: np.ndarray | None = None) -> bool:
    """L-BFGS-B can stop 'abnormally' where the criterion is flat to rounding: judge by the
    gradient, projected on the lower bounds."""
    g = numeric_gradient(crit, x)
    if lower is not None:
        g = np.where((x <= lower + 1e-8) & (g < 0), 0.0, g)
    return bool(np.all(np.isfinite(g)) and np.max(np.abs(g), initial=0.0) < 1e-3)
