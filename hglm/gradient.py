"""Analytic gradients of the adjusted profile likelihoods p_v(h) and p_beta,v(h).

At the mode u-hat(x) of h (u: the random effects, with beta when beta is solved
inside), for parameters x (log-dispersion coefficients, and beta when it is a
parameter of p_v(h)),

    d p / dx = dh/dx|_u - 1/2 d log det L / dx,

where L is D(h, v) (p_v) or D(h, (beta, v)) (p_beta,v). h is stationary in u,
so only log det L needs the implicit derivative du/dx = J^{-1} d2h/du dx, J
the negative Hessian of h in the unknowns that move (v, or (beta, v)). log det L
depends on x directly and on u through the data weights a(eta) and the
random-effect weights W(v):

    d log det L = sum_i Q_i da_i + sum_j D_j dW_j,
    Q_i = t_i' L^{-1} t_i (full row, observation-level column included),
    D_j = (L^{-1})_jj,

so one adjoint solve zeta = J^{-1} g, g = T'(Q a') + D W', turns every
implicit term into a product with d2h/du dx. Q and D come from the selected
inverse of the sparse factor; an observation-level term is carried in closed
form through its elimination (``hglm.mme.ObservationElimination``). Nothing is
dense in n or in the number of levels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special

from hglm.families import RandomFamily, ResponseFamily
from hglm.mme import MMESolution, ObservationElimination

if TYPE_CHECKING:
    from hglm.model import Model
    from hglm.state import Dispersions, MeanFit


class GradientUnavailable(ValueError):
    """The analytic gradient does not cover this evaluation (use differences instead)."""


# ------------------------------------------------------------ family derivatives


def data_weight_derivative(
    family: ResponseFamily,
    y: np.ndarray,
    eta: np.ndarray,
    w: np.ndarray,
    phi: np.ndarray,
) -> np.ndarray:
    """d a / d eta of the observed data weight a = -d2 log f(y | eta) / d eta2."""
    mu = family.valid_mu(family.link.inverse(eta))
    link = family.link.name
    a = family.observed_weight(y, eta, mu, w) / phi
    if family.name == "binomial" and link == "logit":
        return a * (1 - 2 * mu)
    if family.name == "poisson" and link == "log":
        return a
    if family.name == "negative_binomial" and link == "log":
        # a = w th (th + y) mu / (mu + th)^2
        theta = float(family.theta)  # type: ignore[arg-type]
        return a * (theta - mu) / (theta + mu)
    if family.name == "gaussian" and link == "identity":
        return np.zeros_like(eta)
    if family.name == "gaussian" and link == "log":
        return w * (4 * mu**2 - y * mu) / phi
    if family.name == "gamma" and link == "log":
        return -a
    if family.name == "gamma" and link == "inverse":
        return -2 * a * mu
    # other links (probit, cloglog): central differences of the observed weight
    h = 1e-4 * np.maximum(1.0, np.abs(eta))

    def weight(e: np.ndarray) -> np.ndarray:
        m = family.valid_mu(family.link.inverse(e))
        return family.observed_weight(y, e, m, w) / phi

    return (weight(eta + h) - weight(eta - h)) / (2 * h)


def loglik_log_phi(
    family: ResponseFamily, y: np.ndarray, mu: np.ndarray, phi: np.ndarray, w: np.ndarray
) -> np.ndarray:
    """d log f(y | mu; phi) / d log phi per row."""
    if family.name == "gaussian":
        return -0.5 + 0.5 * w * (y - mu) ** 2 / phi
    if family.name == "gamma":
        shape = w / phi
        return -shape * (np.log(shape * y / mu) + 1 - y / mu - special.digamma(shape))
    raise GradientUnavailable(f"{family.name} has no dispersion parameter")


@dataclass
class RandomDerivatives:
    """Per level: W = -d2 log f(v)/dv2 and the derivatives the gradient needs."""

    weight: np.ndarray  # W
    weight_v: np.ndarray  # dW/dv
    weight_l: np.ndarray  # dW/d log lambda
    loglik_l: np.ndarray  # d log f / d log lambda
    score_l: np.ndarray  # d2 log f / dv d log lambda


def random_derivatives(family: RandomFamily, v: np.ndarray, lam: np.ndarray) -> RandomDerivatives:
    """Exact derivatives of log f(v; lambda) for each random-effect family (canonical v)."""
    weight, z = family.exact_rows(v, lam)
    score = (z - v) * weight
    a = 1 / lam
    name, link = family.name, family.link.name
    if name == "normal":
        return RandomDerivatives(weight, np.zeros_like(v), -weight, 0.5 * v**2 / lam - 0.5, v / lam)
    if name == "beta":
        u = family.u(v)
        half = a / 2
        d_half = np.log(u) + np.log1p(-u) - 2 * special.digamma(half) + 2 * special.digamma(a)
        return RandomDerivatives(weight, weight * (1 - 2 * u), -weight, -half * d_half, -score)
    if name == "gamma":
        d_a = v - np.exp(v) + np.log(a) + 1 - special.digamma(a)
        return RandomDerivatives(weight, weight, -weight, -a * d_a, -score)
    # inverse gamma
    d_norm = np.log(a) + (1 + a) / a - special.digamma(1 + a)
    if link == "log":
        d_a = d_norm - v - np.exp(-v)
        return RandomDerivatives(weight, -weight, -weight, -a * d_a, -(score + 1))
    d_a = d_norm + np.log(v) - v
    return RandomDerivatives(weight, -2 * weight / v, -weight, -a * d_a, -score)


# ------------------------------------------------------------------ the gradient


@dataclass
class Evaluation:
    """The equations factored at the mode (observed information), for one criterion value."""

    solution: MMESolution
    elimination: ObservationElimination | None
    a: np.ndarray  # observed data weights (with 1/phi)


def criterion_gradient(
    model: Model,
    fit: MeanFit,
    disp: Dispersions,
    ev: Evaluation,
    which: str,
    beta_free: bool,
    theta_free: bool = True,
) -> np.ndarray:
    """Gradient of p_v(h) ("p_v") or p_beta,v(h) ("p_beta_v") in x = ([beta,] theta).

    ``beta_free``: beta is a parameter (held in the IWLS); otherwise it moves with v.
    Must be called right after ``ev`` was factored (it uses the current factor)."""
    d = model.design
    mme = model.mme
    fam = model.family
    if which == "p_beta_v" and beta_free:
        raise GradientUnavailable("p_beta,v(h) with beta as a parameter is not a criterion")
    beta_moves = not beta_free
    sol, elim, a = ev.solution, ev.elimination, ev.a
    phi = disp.phi(d)
    lam = disp.lam(d)
    eta, mu = fit.eta, fit.mu
    X = d.X
    a_prime = data_weight_derivative(fam, d.y, eta, d.prior_weights, phi)
    score = d.prior_weights * (d.y - mu) * fam.link.mu_eta(eta) / (fam.variance(mu) * phi)

    # Q and D of the log-determinant's matrix, for the sparse (reduced) rows
    if which == "p_beta_v":
        r = mme.row_variances(sol)
        diag_v = mme.level_variances(sol)
    else:
        r = mme.level_row_variances()
        diag_v = mme.level_inverse_diagonal()

    sparse_terms = [(k, t) for k, t in enumerate(d.terms) if not t.observation_level]
    derivs = [random_derivatives(t.family, fit.v[k], lam[k]) for k, t in enumerate(d.terms)]
    sparse_der = [derivs[k] for k, _ in sparse_terms]

    def cat(field: str) -> np.ndarray:
        parts = [getattr(dv, field) for dv in sparse_der]
        return np.concatenate(parts) if parts else np.zeros(0)

    obs_k = next((k for k, t in enumerate(d.terms) if t.observation_level), None)
    if elim is not None:
        assert obs_k is not None
        codes = d.terms[obs_k].codes
        dd = elim.d
        m = elim.m
        Q = r * (m / dd) ** 2 + 1 / dd
        diag_e = 1 / dd + (a / dd) ** 2 * r
        e_der = derivs[obs_k]
        g_e = Q * a_prime + diag_e * e_der.weight_v[codes]
    else:
        Q = r
    c = Q * a_prime

    # adjoint: zeta = J^{-1} g, J the Hessian of the moving unknowns
    g_v = mme.zt(c) + diag_v * cat("weight_v") if mme.q else np.zeros(0)
    g_b = X.T @ c if beta_moves else np.zeros(0)
    if elim is not None:
        shift = a / dd * g_e
        g_v = g_v - (mme.zt(shift) if mme.q else 0.0)
        if beta_moves:
            g_b = g_b - X.T @ shift
    if beta_moves:
        zeta_b, zeta_v = mme.solve_joint(sol, g_b, g_v)
        t_zeta = X @ zeta_b + mme.eta_random(zeta_v)
    else:
        zeta_b = np.zeros(0)
        zeta_v = mme.solve_levels(g_v)
        t_zeta = mme.eta_random(zeta_v)
    if elim is not None:
        zeta_e = (g_e - a * t_zeta) / dd
        t_zeta = t_zeta + zeta_e  # the full row t_i' zeta, observation column included

    parts: list[np.ndarray] = []
    if beta_free:
        dlogdet = X.T @ c - X.T @ (a * t_zeta)
        parts.append(X.T @ score - 0.5 * dlogdet)
    if not theta_free:
        return np.concatenate(parts)
    if not disp.phi_fixed:
        dlogdet_phi = -a * Q - score * t_zeta
        g_row = loglik_log_phi(fam, d.y, mu, phi, d.prior_weights) - 0.5 * dlogdet_phi
        parts.append(d.X_disp.T @ g_row)
    pos = 0
    for k, t in enumerate(d.terms):
        dv = derivs[k]
        if t.observation_level:
            assert elim is not None
            diag_k = np.empty(t.n_levels)
            diag_k[t.codes] = diag_e
            zeta_k = np.empty(t.n_levels)
            zeta_k[t.codes] = zeta_e
        else:
            diag_k = diag_v[pos : pos + t.n_levels]
            zeta_k = zeta_v[pos : pos + t.n_levels]
            pos += t.n_levels
        g_level = dv.loglik_l - 0.5 * (diag_k * dv.weight_l + zeta_k * dv.score_l)
        parts.append(t.X_disp.T @ g_level)
    return np.concatenate(parts) if parts else np.zeros(0)
