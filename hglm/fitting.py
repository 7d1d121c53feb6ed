"""Fitting HGLMs by h-likelihood: the augmented-GLM IWLS and the dispersion steps.

* ``iwls``: for given dispersions, (beta, v) maximising h (or v only, beta held),
  by IWLS on the augmented GLM = sparse mixed-model equations (``hglm.mme``).
* ``fit_eql``: R hglm's EQL algorithm (Lee & Nelder 1996; Ronnegard et al.
  2010): alternate the IWLS with gamma GLMs for phi and each lambda on
  deviance components divided by (1 - leverage), weights (1 - leverage)/2.
* ``fit_hl``: HL(0,1) / HL(1,1): the adjusted profile likelihoods maximised
  exactly by a quasi-Newton search over the log-dispersion parameters (and,
  for HL(1,1), beta by p_v(h)), started from EQL and scaled by the start's
  standard errors; each inner IWLS starts from the last mode moved along its
  tangent. The Hessian of the criterion at the optimum gives standard errors
  on the log scale, computed when first read (``DispersionSE``). Linear mixed
  models take the profiled route of ``hglm.lmm`` instead.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
import scipy.optimize

from hglm.design import ModelDesign, RandomTermDesign
from hglm.gradient import (
    Evaluation,
    GradientUnavailable,
    criterion_gradient,
    random_derivatives,
)
from hglm.likelihood import Likelihoods, combine, conditional_loglik, random_loglik
from hglm.mme import MixedModelEquations, MMESolution, ObservationElimination

LOG_LAMBDA_BOUNDS = (np.log(1e-8), np.log(1e8))
SINGULAR_LAMBDA = 1e-6


class ConvergenceWarning(UserWarning):
    """A fit stopped before meeting its convergence criterion, or hit a boundary."""


# ------------------------------------------------------------------ dispersions


@dataclass
class Dispersions:
    """phi per row (log-linear model X_disp gamma) and lambda per level of each term."""

    gamma: np.ndarray  # coefficients of log phi ([] when phi is fixed at 1)
    delta: list[np.ndarray]  # coefficients of log lambda, per term
    phi_fixed: bool

    def phi(self, design: ModelDesign) -> np.ndarray:
        if self.phi_fixed:
            return np.ones(design.n)
        return np.exp(design.X_disp @ self.gamma)

    def lam(self, design: ModelDesign) -> list[np.ndarray]:
        return [np.exp(t.X_disp @ d) for t, d in zip(design.terms, self.delta, strict=True)]

    def theta(self) -> np.ndarray:
        parts = ([] if self.phi_fixed else [self.gamma]) + list(self.delta)
        return np.concatenate(parts) if parts else np.zeros(0)

    def with_theta(self, theta: np.ndarray) -> Dispersions:
        pos = 0
        gamma = self.gamma
        if not self.phi_fixed:
            gamma = theta[: len(self.gamma)].copy()
            pos = len(self.gamma)
        delta = []
        for d in self.delta:
            delta.append(theta[pos : pos + len(d)].copy())
            pos += len(d)
        return Dispersions(gamma, delta, self.phi_fixed)


# ------------------------------------------------------------------ mean fit


@dataclass
class MeanFit:
    beta: np.ndarray
    v: list[np.ndarray]  # per term, in design order (observation-level term included)
    eta: np.ndarray
    mu: np.ndarray
    solution: MMESolution
    elimination: ObservationElimination | None
    a: np.ndarray  # data-row weights (with 1/phi) used in the last solve
    w_m: list[np.ndarray]  # random-row weights per term used in the last solve
    iterations: int
    converged: bool


class Model:
    """A design, its mixed-model equations and the response/random families."""

    def __init__(self, design: ModelDesign) -> None:
        self.design = design
        obs = [t for t in design.terms if t.observation_level]
        if len(obs) > 1:
            raise ValueError(
                f"terms {[t.name for t in obs]} each have one level per row; at most one "
                "observation-level term is identifiable"
            )
        self.obs_term: RandomTermDesign | None = obs[0] if obs else None
        self.sparse_terms = [t for t in design.terms if not t.observation_level]
        self.mme = MixedModelEquations(design.X, self.sparse_terms)
        self.family = design.family
        self.n_random = sum(t.n_levels for t in design.terms)

    # -- helpers -----------------------------------------------------------------------
    def _term_index(self, term: RandomTermDesign) -> int:
        return next(i for i, t in enumerate(self.design.terms) if t is term)

    def start_v(self) -> list[np.ndarray]:
        return [np.full(t.n_levels, t.family.v_of_psi) for t in self.design.terms]

    def linear_predictor(self, beta: np.ndarray, v: list[np.ndarray]) -> np.ndarray:
        d = self.design
        eta = d.offset + d.X @ beta
        sparse = [vk for t, vk in zip(d.terms, v, strict=True) if not t.observation_level]
        if sparse:
            eta = eta + self.mme.eta_random(np.concatenate(sparse))
        if self.obs_term is not None:
            eta = eta + v[self._term_index(self.obs_term)][self.obs_term.codes]
        return eta

    def _random_rows(
        self, term: RandomTermDesign, v: np.ndarray, lam: np.ndarray, exact: bool
    ) -> tuple[np.ndarray, np.ndarray]:
        return term.family.exact_rows(v, lam) if exact else term.family.quasi_rows(v, lam)

    def system(
        self,
        eta: np.ndarray,
        v: list[np.ndarray],
        phi: np.ndarray,
        lam: list[np.ndarray],
        exact: bool,
        observed: bool = False,
    ) -> tuple[
        np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray, ObservationElimination | None
    ]:
        """Weights and working responses of the augmented GLM at (eta, v).

        Returns (a, z, reduced weight, reduced response, W_M, z_M) for the sparse system.
        ``observed`` uses the observed instead of the expected information of the data rows
        (exact Laplace log-determinants)."""
        d = self.design
        fam = self.family
        mu = fam.valid_mu(fam.link.inverse(eta))
        dmu = fam.link.mu_eta(eta)
        if observed:
            a = fam.observed_weight(d.y, eta, mu, d.prior_weights) / phi
        else:
            a = fam.working_weight(eta, mu, d.prior_weights) / phi
            if exact and not fam.canonical:
                # Newton (observed) weights converge quadratically; use them when positive
                obs = fam.observed_weight(d.y, eta, mu, d.prior_weights) / phi
                if np.all(obs > 0):
                    a = obs
        # working response = eta + score / weight (the weight may be observed or expected)
        score = d.prior_weights * (d.y - mu) * dmu / (fam.variance(mu) * phi)
        z = eta - d.offset + score / a
        rows = [
            (t, *self._random_rows(t, vk, lk, exact))
            for t, vk, lk in zip(d.terms, v, lam, strict=True)
        ]
        return _augmented_system(a, z, rows)  # type: ignore[return-value]

    def hglm_first_system(
        self,
        beta: np.ndarray,
        v: list[np.ndarray] | None,
        eta_prev: np.ndarray | None,
        phi: np.ndarray,
        lam: list[np.ndarray],
    ):
        """The first IWLS step of an EQL round exactly as R hglm 2.2 takes it.

        hglm's GLM.MME builds its first working response from eta = X beta + Z u(v) (u,
        not v) and z_M = v + (psi - u) / (du/dv at u); its weights come from the previous
        round (at the very start: from eta = X beta + offset and the quasi rows at psi, with
        v = linkinv(0)). The fixed point does not depend on this, but hglm stops EQL
        early (relative change of eta below 1e-6 in squares), so its reported numbers
        do; mimicking the step makes EQL reproduce hglm to several digits. Returns the
        system and the eta the first convergence check compares against."""
        d = self.design
        fam = self.family
        first = v is None
        if first:
            eta_w = d.offset + d.X @ beta
            mu_w = fam.valid_mu(fam.link.inverse(eta_w))
            a = fam.working_weight(eta_w, mu_w, d.prior_weights) / phi
        else:
            assert eta_prev is not None
            mu_w = fam.valid_mu(fam.link.inverse(eta_prev))
            a = fam.working_weight(eta_prev, mu_w, d.prior_weights) / phi
        rows = []
        added = []  # per term, what its levels add to eta_z
        for k, (t, lk) in enumerate(zip(d.terms, lam, strict=True)):
            f = t.family
            if f.link.name == "reciprocal":
                v0 = np.full(t.n_levels, f.v_of_psi) if first else v[k]  # type: ignore[index]
                rows.append((t, *f.quasi_rows(v0, lk)))
                added.append(v0)
                continue
            if first:
                v0 = np.full(t.n_levels, float(f.link.inverse(np.array(0.0))))
                psi = np.full(t.n_levels, f.psi)
                wk = f.du_dv(psi) ** 2 / f.variance(psi) / lk
            else:
                v0 = v[k]  # type: ignore[index]
                wk = f.quasi_rows(v0, lk)[0]
            u0 = f.link.inverse(v0)
            added.append(u0)
            zk = v0 + (f.psi - u0) / f.du_dv(u0)
            rows.append((t, wk, zk))
        # through the row patterns, like eta (not one gather over the rows per term)
        eta_z = self.linear_predictor(beta, added)
        mu_z = fam.valid_mu(fam.link.inverse(eta_z))
        z = eta_z - d.offset + (d.y - mu_z) / fam.link.mu_eta(eta_z)
        return _augmented_system(a, z, rows), eta_z

    # -- IWLS --------------------------------------------------------------------------
    def iwls(
        self,
        beta: np.ndarray,
        v: list[np.ndarray],
        disp: Dispersions,
        exact: bool,
        beta_fixed: bool = False,
        tol: float = 1e-7,
        max_iter: int = 50,
        min_iter: int = 1,
        hglm_start: bool = False,
        hglm_previous: tuple[list[np.ndarray], np.ndarray] | None = None,
    ) -> MeanFit:
        d = self.design
        phi = disp.phi(d)
        lam = disp.lam(d)
        v = [vk.copy() for vk in v]
        eta = self.linear_predictor(beta, v)
        converged = False
        it = 0
        sol = None
        elim = None
        a = np.zeros(d.n)
        w_m = np.zeros(0)
        h_current: float | None = None  # h at (eta, v), carried over from the last step
        for it in range(1, max_iter + 1):
            if hglm_start and it == 1:
                prev_v, prev_eta = hglm_previous if hglm_previous else (None, None)
                system, eta = self.hglm_first_system(beta, prev_v, prev_eta, phi, lam)
                a, _z, a_red, r, w_m, z_m, elim = system
            else:
                a, _z, a_red, r, w_m, z_m, elim = self.system(eta, v, phi, lam, exact)
            sol = self.mme.solve(a_red, r, w_m, z_m, beta_fixed=beta if beta_fixed else None)
            beta_old, v_old = beta, v
            beta = sol.beta
            v_sparse = self.mme.split(sol.v)
            rest = d.X @ beta + self.mme.eta_random(sol.v)
            new_v: list[np.ndarray] = []
            it_sparse = iter(v_sparse)
            for k, t in enumerate(d.terms):
                if t.observation_level:
                    assert elim is not None
                    e_rows = elim.back_substitute(rest)
                    if not (hglm_start and it == 1):
                        e_rows = self._guard_rows(
                            e_rows, v_old[k][t.codes], rest, t, phi, lam[k], exact
                        )
                    e = np.empty(t.n_levels)
                    e[t.codes] = e_rows
                    new_v.append(e)
                else:
                    new_v.append(next(it_sparse))
            v = new_v
            eta_new = self.linear_predictor(beta, v)
            halved = False
            if not (hglm_start and it == 1):
                # step halving: a Fisher step may overshoot where the curvature of log f
                # decays (beta and gamma random effects far from psi, binary data)
                h_old = h_current if h_current is not None else self._h(eta, v_old, phi, lam, exact)
                for _ in range(30):
                    h_new = self._h(eta_new, v, phi, lam, exact)
                    if np.isfinite(h_new) and h_new >= h_old - 1e-10 * abs(h_old):
                        break
                    halved = True
                    beta = 0.5 * (beta + beta_old)
                    v = [0.5 * (vn + vo) for vn, vo in zip(v, v_old, strict=True)]
                    eta_new = self.linear_predictor(beta, v)
                h_current = h_new
            if not np.all(np.isfinite(eta_new)):
                raise FloatingPointError("the IWLS of the mean model diverged (non-finite eta)")
            change = float(np.sum((eta_new - eta) ** 2))
            scale = float(np.sum(eta_new**2))
            eta = eta_new
            # relative change, with a floor so that eta near 0 can still converge
            if it >= min_iter and not halved and change <= tol * max(scale, 1e-6 * d.n):
                converged = True
                break
        assert sol is not None
        mu = self.family.valid_mu(self.family.link.inverse(eta))
        wm_list = []
        for t, lk, vk in zip(d.terms, lam, v, strict=True):
            wm_list.append(self._random_rows(t, vk, lk, exact)[0])
        return MeanFit(beta, v, eta, mu, sol, elim, a, wm_list, it, converged)

    def _guard_rows(
        self,
        e_new: np.ndarray,
        e_old: np.ndarray,
        rest: np.ndarray,
        term: RandomTermDesign,
        phi: np.ndarray,
        lam: np.ndarray,
        exact: bool,
    ) -> np.ndarray:
        """Step-halve the observation-level effects row by row (values in row order).

        Given the rest of the linear predictor, h is a sum of one concave function per row of
        the row's own effect, so each row can be held to no worse than its previous effect.
        The joint step can overshoot one row badly (a binomial wafer far in the tail: the
        Fisher step of a logit from mu near 0 or 1) while the rows together still gain, which
        the global halving of ``iwls`` does not catch. Rows that moved little are left as
        they are; the fixed point is the same either way."""
        moved = np.flatnonzero(np.abs(e_new - e_old) > 1.0)
        if not len(moved):
            return e_new
        d = self.design
        fam, f = self.family, term.family
        y, w, ph = d.y[moved], d.prior_weights[moved], phi[moved]
        base_eta = d.offset[moved] + rest[moved]
        lam_rows = lam[term.codes[moved]]
        density = f.logdensity if exact else f.quasi_logdensity

        def contribution(e: np.ndarray) -> np.ndarray:
            with np.errstate(all="ignore"):
                mu = fam.valid_mu(fam.link.inverse(base_eta + e))
                return fam.loglik_kernel(y, mu, ph, w) + density(e, lam_rows)

        start, step = e_old[moved], e_new[moved] - e_old[moved]
        base = contribution(start)
        t = np.ones(len(moved))
        for _ in range(30):
            worse = ~(contribution(start + t * step) >= base - 1e-10 * np.abs(base))
            if not worse.any():
                break
            t[worse] *= 0.5
        else:
            t[worse] = 0.0
        out = e_new.copy()
        out[moved] = start + t * step
        return out

    def _h(
        self,
        eta: np.ndarray,
        v: list[np.ndarray],
        phi: np.ndarray,
        lam: list[np.ndarray],
        exact: bool,
    ) -> float:
        """The function the IWLS maximises: h (exact) or its quasi version (EQL rows)."""
        d = self.design
        with np.errstate(all="ignore"):
            mu = self.family.valid_mu(self.family.link.inverse(eta))
            value = conditional_loglik(self.family, d.y, mu, phi, d.prior_weights)
            for t, vk, lk in zip(d.terms, v, lam, strict=True):
                f = t.family
                value += float(
                    np.sum(f.logdensity(vk, lk) if exact else f.quasi_logdensity(vk, lk))
                )
        return value if np.isfinite(value) else -np.inf

    # -- quantities at a fit ---------------------------------------------------------------
    def evaluate(
        self, fit: MeanFit, disp: Dispersions, exact: bool, observed: bool
    ) -> tuple[MMESolution, ObservationElimination | None, np.ndarray]:
        """Factor the equations at the fit (for given dispersions) without moving it.

        Returns the solution pieces (covariance, log-determinants), the elimination and
        the data-row weights a."""
        d = self.design
        phi = disp.phi(d)
        lam = disp.lam(d)
        a, _z, a_red, r, w_m, z_m, elim = self.system(fit.eta, fit.v, phi, lam, exact, observed)
        if observed and (np.any(a_red <= 0) or (elim is not None and np.any(elim.d <= 0))):
            raise np.linalg.LinAlgError("observed information is not positive")
        sol = self.mme.solve(a_red, r, w_m, z_m, beta_fixed=fit.beta)
        return sol, elim, a

    def likelihoods(
        self,
        fit: MeanFit,
        disp: Dispersions,
        exact: bool,
        observed: bool,
        with_leverages: bool = True,
    ) -> tuple[Likelihoods, np.ndarray, dict[str, np.ndarray]]:
        """h, p_v(h), p_beta,v(h), cAIC at a fit; also the leverages (cAIC is NaN without)."""
        d = self.design
        try:
            sol, elim, a = self.evaluate(fit, disp, exact, observed)
        except np.linalg.LinAlgError:
            sol, elim, a = self.evaluate(fit, disp, exact, observed=False)
        if with_leverages:
            lev = self.leverages(sol, elim, a, disp)
        else:
            lev = {"data": np.full(d.n, np.nan)}
        lik = self.combine_likelihoods(fit, disp, sol, elim, float(np.sum(lev["data"])))
        return lik, lev["data"], lev

    def combine_likelihoods(
        self,
        fit: MeanFit,
        disp: Dispersions,
        sol: MMESolution,
        elim: ObservationElimination | None,
        leverage_sum: float = np.nan,
    ) -> Likelihoods:
        """h, p_v(h), p_beta,v(h) (and cAIC given the leverage sum) from a factored system."""
        d = self.design
        cond = conditional_loglik(self.family, d.y, fit.mu, disp.phi(d), d.prior_weights)
        rand = random_loglik([t.family for t in d.terms], fit.v, disp.lam(d))
        logdet_v = sol.logdet_H + (float(np.sum(np.log(elim.d))) if elim is not None else 0.0)
        return combine(
            cond, rand, logdet_v, logdet_v + sol.logdet_S, self.n_random, d.p, leverage_sum
        )

    def leverages(
        self,
        sol: MMESolution,
        elim: ObservationElimination | None,
        a: np.ndarray,
        disp: Dispersions,
    ) -> dict[str, np.ndarray]:
        """Diagonal of the augmented hat matrix: data rows and each term's quasi rows."""
        d = self.design
        r = self.mme.row_variances(sol)
        out: dict[str, np.ndarray] = {}
        out["data"] = elim.data_leverage(r) if elim is not None else a * r
        level_var = self.mme.level_variances(sol)
        pos = 0
        for t in d.terms:
            if t.observation_level:
                assert elim is not None
                quasi = np.empty(t.n_levels)
                quasi[t.codes] = elim.quasi_leverage(r)
                var = np.empty(t.n_levels)
                var[t.codes] = elim.prediction_variance(r)
                out[t.name] = quasi
                out[f"var:{t.name}"] = var
            else:
                var = level_var[pos : pos + t.n_levels]
                out[f"var:{t.name}"] = var
                pos += t.n_levels
        return out


# ------------------------------------------------------------ gamma GLM (dispersions)


@dataclass
class GammaGLM:
    coef: np.ndarray
    se: np.ndarray
    fitted: np.ndarray


def fit_gamma_log(y: np.ndarray, w: np.ndarray, X: np.ndarray, max_iter: int = 100) -> GammaGLM:
    """Gamma GLM with log link and prior weights, by IRLS (R's glm; SEs with dispersion 1).

    With the log link the IRLS weights are the prior weights themselves."""
    if X.shape[1] == 1 and np.allclose(X, X[0, 0]):
        # intercept only: the ML fit is the weighted mean
        mean = float(np.sum(w * y) / np.sum(w))
        coef = np.array([np.log(mean) / X[0, 0]])
        se = np.array([np.sqrt(1.0 / np.sum(w * X[:, 0] ** 2))])
        return GammaGLM(coef, se, np.full(len(y), mean))
    mu = y.copy()
    eta = np.log(mu)
    dev_old = np.inf
    sw = np.sqrt(w)
    coef = np.zeros(X.shape[1])
    for _ in range(max_iter):
        z = eta + (y - mu) / mu
        coef, *_ = np.linalg.lstsq(X * sw[:, None], z * sw, rcond=None)
        eta = X @ coef
        mu = np.exp(eta)
        dev = float(np.sum(-2 * w * (np.log(y / mu) - (y - mu) / mu)))
        if abs(dev - dev_old) / (abs(dev) + 0.1) < 1e-10:
            break
        dev_old = dev
    cov = np.linalg.inv(X.T @ (X * w[:, None]))
    return GammaGLM(coef, np.sqrt(np.diag(cov)), mu)


def fit_glm_start(model: Model) -> tuple[np.ndarray, float]:
    """GLM of the fixed part alone (R hglm's start): beta and 0.6 * deviance / df."""
    d = model.design
    fam = model.family
    y = d.y
    if fam.name == "binomial":
        mu = (d.prior_weights * y + 0.5) / (d.prior_weights + 1)
    elif fam.name in ("poisson", "gamma", "negative_binomial"):
        mu = y + (0.0 if fam.name == "gamma" else 0.1)
    else:
        mu = y.copy()
    if fam.link.name == "log":
        mu = np.maximum(mu, 1e-8)
    eta = fam.link.fun(mu)
    beta = np.zeros(d.p)
    dev_old = np.inf
    for _ in range(100):
        dmu = fam.link.mu_eta(eta)
        w = fam.working_weight(eta, mu, d.prior_weights)
        z = eta - d.offset + (y - mu) / dmu
        sw = np.sqrt(w)
        beta, *_ = np.linalg.lstsq(d.X * sw[:, None], z * sw, rcond=None)
        eta = d.offset + d.X @ beta
        mu = fam.valid_mu(fam.link.inverse(eta))
        dev = float(np.sum(fam.deviance(y, mu, d.prior_weights)))
        if abs(dev - dev_old) / (abs(dev) + 0.1) < 1e-10:
            break
        dev_old = dev
    df = max(d.n - d.p, 1)
    return beta, 0.6 * dev / df


# --------------------------------------------------------------------------- EQL


@dataclass
class FitOutcome:
    """Everything the result object needs from an algorithm."""

    mean: MeanFit
    disp: Dispersions
    likelihood: Likelihoods
    leverages: dict[str, np.ndarray]
    cov_beta: np.ndarray
    # "phi" and each term name -> SE of the log-scale coefficients (lazy after HL fits)
    disp_se: Mapping[str, np.ndarray]
    converged: bool
    n_iter: int
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    dev_data: np.ndarray | None = None


def fit_eql(
    model: Model, max_iter: int = 50, conv: float = 1e-6, start_only: bool = False
) -> FitOutcome:
    """R hglm's EQL: IWLS for (beta, v), gamma GLMs for the dispersions, until eta settles.

    ``start_only``: the fit only starts an HL search, which needs its estimates and Var(beta)
    but not its likelihoods (left NaN) or final leverages (those of the last IWLS)."""
    d = model.design
    fam = model.family
    t0 = time.perf_counter()
    beta, disp0 = fit_glm_start(model)
    k = len(d.terms)
    lam0 = disp0 * 0.66 / max(k, 1)
    if lam0 < 1e-4:
        lam0 = 0.1
    phi0 = 1.0 if fam.fixed_dispersion else max(disp0, 0.1 if disp0 < 1e-4 else disp0)
    gamma = np.zeros(d.X_disp.shape[1])
    if not fam.fixed_dispersion:
        gamma = np.linalg.lstsq(d.X_disp, np.full(d.n, np.log(phi0)), rcond=None)[0]
    delta = [
        np.linalg.lstsq(t.X_disp, np.full(t.n_levels, np.log(lam0)), rcond=None)[0] for t in d.terms
    ]
    disp = Dispersions(gamma, delta, fam.fixed_dispersion)
    v = model.start_v()
    eta0 = d.offset + d.X @ beta
    converged = False
    messages: list[str] = []
    se: dict[str, np.ndarray] = {}
    fit: MeanFit | None = None
    last_lev: dict[str, np.ndarray] = {}
    it = 0
    for it in range(1, max_iter + 1):
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
                new_fit = model.iwls(
                    beta,
                    v,
                    disp,
                    exact=False,
                    tol=1e-7,
                    max_iter=max_iter,
                    hglm_start=True,
                    hglm_previous=None if fit is None else (fit.v, fit.eta),
                )
            if not np.all(np.isfinite(new_fit.eta)):
                raise FloatingPointError("non-finite linear predictor")
            if not new_fit.converged:
                raise FloatingPointError("inner IWLS did not converge")
        except (np.linalg.LinAlgError, FloatingPointError, ValueError):
            # hglm's unguarded first step can overshoot; fall back to the guarded IWLS
            try:
                new_fit = model.iwls(beta, v, disp, exact=False, tol=1e-7, max_iter=4 * max_iter)
            except (np.linalg.LinAlgError, FloatingPointError) as err:
                if fit is None:
                    raise RuntimeError(f"the mean model could not be fitted: {err}") from err
                messages.append(f"EQL stopped at iteration {it}: {err}")
                break
        fit = new_fit
        beta, v = fit.beta, fit.v
        lev = model.leverages(fit.solution, fit.elimination, fit.a, disp)
        last_lev = lev
        new_gamma, new_delta = disp.gamma, []
        if not fam.fixed_dispersion:
            dev = np.maximum(fam.deviance(d.y, fit.mu, d.prior_weights), 1e-8)
            q = np.minimum(lev["data"], 1 - 1e-8)
            g = fit_gamma_log(dev / (1 - q), (1 - q) / 2, d.X_disp)
            new_gamma = g.coef
            se["phi"] = g.se
        for t, vk in zip(d.terms, v, strict=True):
            u = t.family.u(vk)
            dev_m = np.maximum(t.family.deviance(u), 1e-8)
            q = _term_leverage(model, t, fit, disp, lev)
            q = np.minimum(q, 1 - 1e-8)
            g = fit_gamma_log(dev_m / (1 - q), (1 - q) / 2, t.X_disp)
            new_delta.append(g.coef)
            se[t.name] = g.se
        disp = Dispersions(np.asarray(new_gamma), new_delta, fam.fixed_dispersion)
        change = float(np.sum((eta0 - fit.eta) ** 2))
        if it > 1 and change < conv * max(float(np.sum(fit.eta**2)), 1e-6 * d.n):
            converged = True
            break
        eta0 = fit.eta
    assert fit is not None
    if not converged:
        messages.append(f"EQL did not converge in {max_iter} iterations")
    t1 = time.perf_counter()
    if start_only:
        lik = Likelihoods(np.nan, np.nan, np.nan, np.nan, np.nan)
        lev = last_lev
    else:
        lik, _, lev = model.likelihoods(fit, disp, exact=False, observed=False)
        # R hglm's cAIC counts the leverages of the last IWLS (before the final dispersion
        # update); keep that so EQL reproduces it
        lik = dataclasses.replace(
            lik, caic=-2.0 * lik.conditional + 2.0 * float(np.sum(last_lev["data"]))
        )
    return FitOutcome(
        mean=fit,
        disp=disp,
        likelihood=lik,
        leverages=lev,
        cov_beta=fit.solution.cov_beta,
        disp_se=se,
        converged=converged,
        n_iter=it,
        messages=messages,
        timings={"eql": t1 - t0, "likelihood": time.perf_counter() - t1},
    )


def _term_leverage(
    model: Model,
    term: RandomTermDesign,
    fit: MeanFit,
    disp: Dispersions,
    lev: dict[str, np.ndarray],
) -> np.ndarray:
    if term.observation_level:
        return lev[term.name]
    k = model._term_index(term)
    return fit.w_m[k] * lev[f"var:{term.name}"]


# ------------------------------------------------------------------------ HL(., 1)


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


def _maximise(
    crit: Criterion,
    x0: np.ndarray,
    bounds: list[tuple[float | None, float | None]],
    scale: np.ndarray | None = None,
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
        options={"maxiter": 500, "ftol": 1e-13, "gtol": 1e-6 * float(np.min(s, initial=1.0))},
    )
    res.x = R @ res.x
    return res


def _stationary(crit: Criterion, res: scipy.optimize.OptimizeResult, bounds: list) -> bool:
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


class DispersionSE(Mapping[str, np.ndarray]):
    """SEs of the log-dispersion coefficients from the observed information of the criterion.

    The information is a finite-difference Hessian of the HL criterion, which costs many
    criterion evaluations (as much as the whole search on the larger models), so it is
    computed when an SE is first read, then kept. Keys: "phi" (if estimated) and each term's
    name. Its time is added to ``timings["se_hessian"]`` (the fit's timings once the result
    is built; see ``record_timings_in``)."""

    def __init__(
        self,
        model: Model,
        disp: Dispersions,
        fit: MeanFit,
        x_hat: np.ndarray,
        which: str,
        joint: bool,
    ) -> None:
        self._model, self._disp, self._fit = model, disp, fit
        self._x_hat, self._which, self._joint = x_hat, which, joint
        self._se: dict[str, np.ndarray] | None = None
        self.timings: dict[str, float] = {}

    def record_timings_in(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @property
    def computed(self) -> bool:
        return self._se is not None

    def compute(self) -> dict[str, np.ndarray]:
        if self._se is None:
            t0 = time.perf_counter()
            self._se = self._standard_errors()
            self.timings["se_hessian"] = self.timings.get("se_hessian", 0.0) + (
                time.perf_counter() - t0
            )
        return self._se

    def _standard_errors(self) -> dict[str, np.ndarray]:
        model, disp = self._model, self._disp
        d = model.design
        p = d.p if self._joint else 0
        try:
            crit = Criterion(model, disp, self._fit, self._which, beta_free=self._joint)
            cov = np.linalg.inv(-crit.hessian(self._x_hat))[p:, p:]
            var = np.diag(cov)
            sd = np.sqrt(np.where(var > 0, var, np.nan))
        except np.linalg.LinAlgError:
            sd = np.full(len(self._x_hat) - p, np.nan)
        se: dict[str, np.ndarray] = {}
        pos = 0
        if not disp.phi_fixed:
            se["phi"] = sd[: len(disp.gamma)]
            pos = len(disp.gamma)
        for t, dk in zip(d.terms, disp.delta, strict=True):
            se[t.name] = sd[pos : pos + len(dk)]
            pos += len(dk)
        return se

    def __getitem__(self, key: str) -> np.ndarray:
        return self.compute()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.compute())

    def __len__(self) -> int:
        return len(self.compute())


def _search_scale(start: FitOutcome, joint: bool) -> np.ndarray:
    """A rough square root of the covariance of ([beta,] theta) at the start: beta's block from
    the Cholesky factor of its covariance, sqrt(2 / m) for a log-dispersion estimated from m
    deviance components (phi: n rows; lambda_k: q_k levels)."""
    design_n = len(start.mean.eta)
    parts = []
    if not start.disp.phi_fixed:
        parts.append(np.full(len(start.disp.gamma), np.sqrt(2.0 / design_n)))
    for vk, dk in zip(start.mean.v, start.disp.delta, strict=True):
        parts.append(np.full(len(dk), np.sqrt(2.0 / max(len(vk), 1))))
    theta_scale = np.concatenate(parts) if parts else np.zeros(0)
    if not joint:
        return np.diag(theta_scale)
    p = start.cov_beta.shape[0]
    R = np.zeros((p + len(theta_scale),) * 2)
    try:
        R[:p, :p] = np.linalg.cholesky(start.cov_beta)
    except np.linalg.LinAlgError:
        R[:p, :p] = np.diag(np.sqrt(np.maximum(np.diag(start.cov_beta), 1e-12)))
    R[p:, p:] = np.diag(theta_scale)
    return R


def fit_hl(model: Model, start: FitOutcome, mean_order: int, reml: bool) -> FitOutcome:
    """HL(mean_order, 1): exact maximisation of p_beta,v(h) (reml) or p_v(h) for the dispersions."""
    from hglm.lmm import fit_lmm, is_linear_mixed_model  # builds on this module

    d = model.design
    if is_linear_mixed_model(model):
        # variance ratios from the start (the profiled search needs nothing else)
        log_phi = start.disp.gamma[0] * d.X_disp[0, 0]
        ratios = [
            dk[0] * t.X_disp[0, 0] - log_phi
            for t, dk in zip(d.terms, start.disp.delta, strict=True)
        ]
        return fit_lmm(model, mean_order, reml, start=np.array(ratios))
    t0 = time.perf_counter()
    mme_before = dict(model.mme.timings)
    disp = start.disp
    theta0 = disp.theta()
    messages: list[str] = []
    n_gamma = 0 if disp.phi_fixed else len(disp.gamma)
    theta_bounds: list[tuple[float | None, float | None]] = [(-50.0, 50.0)] * n_gamma
    for t, dk in zip(d.terms, disp.delta, strict=True):
        intercept_only = t.X_disp.shape[1] == 1
        theta_bounds += [LOG_LAMBDA_BOUNDS if intercept_only else (None, None)] * len(dk)
    theta0 = np.clip(
        theta0,
        [b[0] if b[0] is not None else -np.inf for b in theta_bounds],
        [b[1] if b[1] is not None else np.inf for b in theta_bounds],
    )
    fit0 = start.mean
    joint = mean_order == 1 and not reml  # Laplace ML: (beta, theta) maximise p_v(h)
    which = "p_beta_v" if reml else "p_v"
    converged = True
    if joint:
        crit = Criterion(model, disp, fit0, "p_v", beta_free=True)
        x0 = np.concatenate([fit0.beta, theta0])
        joint_bounds = [(None, None)] * d.p + theta_bounds
        res = _maximise(crit, x0, joint_bounds, scale=_search_scale(start, joint=True))
        res.success = _stationary(crit, res, joint_bounds)
        x_hat = res.x
        beta_hat, disp_hat = crit.split(x_hat)
        theta_hat = x_hat[d.p :]
    else:
        crit = Criterion(model, disp, fit0, which, beta_free=False)
        if len(theta0):
            res = _maximise(crit, theta0, theta_bounds, scale=_search_scale(start, joint=False))
            res.success = _stationary(crit, res, theta_bounds)
        else:  # nothing to estimate (a binomial/Poisson GLM without random terms)
            crit(theta0)
            res = scipy.optimize.OptimizeResult(x=theta0, success=True, nit=0, message="")
        theta_hat = res.x
        disp_hat = disp.with_theta(theta_hat)
        beta_hat = None
    if not res.success:
        converged = False
        messages.append(f"dispersion optimisation did not converge: {res.message}")
    n_iter = int(res.nit)
    outer = {
        "outer_iterations": float(res.nit),
        "outer_evaluations": float(crit.n_eval),
        "outer_gradients": float(crit.n_grad),
        "outer_iwls": crit.timings["iwls"],
        "outer_factorise_at_mode": crit.timings["factorise"],
        "outer_gradient": crit.timings["gradient"],
    }
    t1 = time.perf_counter()
    if mean_order == 1 and reml:
        # beta maximises p_v(h) at the REML dispersions
        bcrit = Criterion(model, disp_hat, crit.fit, "p_v", beta_free=True, theta_fixed=True)
        bres = _maximise(bcrit, crit.fit.beta.copy(), [(None, None)] * d.p)
        bres.success = _stationary(bcrit, bres, [(None, None)] * d.p)
        beta_hat = bres.x[: d.p]
        if not bres.success:
            converged = False
            messages.append(f"p_v(h) maximisation over beta did not converge: {bres.message}")
        n_iter += int(bres.nit)
        crit = bcrit
    timings = {"outer": t1 - t0, **outer, "beta": time.perf_counter() - t1}
    return finish_hl(
        model,
        disp_hat,
        beta_hat if beta_hat is not None else crit.fit.beta,
        crit.fit.v,
        beta_fixed=beta_hat is not None,
        which=which,
        joint=joint,
        converged=converged,
        n_iter=n_iter,
        messages=messages,
        timings=timings,
        mme_before=mme_before,
    )


def finish_hl(
    model: Model,
    disp_hat: Dispersions,
    beta: np.ndarray,
    v: list[np.ndarray],
    beta_fixed: bool,
    which: str,
    joint: bool,
    converged: bool,
    n_iter: int,
    messages: list[str],
    timings: dict[str, float],
    mme_before: dict[str, float],
) -> FitOutcome:
    """The mode, likelihoods, leverages and Var(beta) at the HL estimates of the dispersions
    (and of beta when ``beta_fixed``), with their SEs deferred (``DispersionSE``)."""
    d = model.design
    t2 = time.perf_counter()
    fit = model.iwls(beta, v, disp_hat, exact=True, beta_fixed=beta_fixed, tol=1e-14, max_iter=200)
    if not fit.converged:
        converged = False
        messages.append("the final IWLS for the random effects did not converge")
    # likelihoods and leverages from the observed information, Var(beta) from the expected
    # one: the same system for a canonical link
    observed = True
    try:
        sol, elim, a = model.evaluate(fit, disp_hat, exact=True, observed=True)
    except np.linalg.LinAlgError:
        observed = False
        sol, elim, a = model.evaluate(fit, disp_hat, exact=True, observed=False)
    lev = model.leverages(sol, elim, a, disp_hat)
    lik = model.combine_likelihoods(fit, disp_hat, sol, elim, float(np.sum(lev["data"])))
    if observed and not model.family.canonical:
        sol, _, _ = model.evaluate(fit, disp_hat, exact=True, observed=False)
    # SEs of the log-dispersion parameters from the curvature of the criterion: on request
    theta_hat = disp_hat.theta()
    x_se = np.concatenate([fit.beta, theta_hat]) if joint else theta_hat
    se = DispersionSE(model, disp_hat, fit, x_se, which, joint)
    # singular fits: a variance component at its lower bound, i.e. negligible next to 1 or,
    # for data on a large scale, next to phi (the criterion is flat as lambda -> 0, so the
    # search stops near zero on the scale of phi rather than at the bound itself)
    phi_scale = max(float(np.exp(np.mean(np.log(disp_hat.phi(d))))), 1.0)
    for t, lk in zip(d.terms, disp_hat.lam(d), strict=True):
        if t.X_disp.shape[1] == 1 and float(lk[0]) < SINGULAR_LAMBDA * phi_scale:
            messages.append(
                f"singular fit: lambda of {t.term.label} is at its lower bound ({float(lk[0]):.3g})"
            )
    outcome = FitOutcome(
        mean=fit,
        disp=disp_hat,
        likelihood=lik,
        leverages=lev,
        cov_beta=sol.cov_beta,
        disp_se=se,
        converged=converged,
        n_iter=n_iter,
        messages=messages,
        timings={
            **timings,
            "inference": time.perf_counter() - t2,
            "se_hessian": 0.0,
            **{
                f"hl_{k}": model.mme.timings[k] - mme_before[k]
                for k in ("assemble", "factorise", "selected_inverse", "factorisations")
            },
        },
    )
    se.record_timings_in(outcome.timings)
    return outcome


def _augmented_system(a: np.ndarray, z: np.ndarray, rows: list[tuple]) -> tuple:
    """(a, z, reduced weight, reduced response, W_M, z_M, elimination) of the augmented GLM.

    `rows` holds (term, quasi-row weights, quasi-row working responses) per random term. An
    observation-level term (one level per row) is eliminated in closed form: its quantities are
    put in row order and folded into the data rows' weight and response; the other terms'
    quasi-rows are stacked in term order."""
    w_parts, z_parts = [], []
    elim = None
    for t, wk, zk in rows:
        if t.observation_level:
            elim = ObservationElimination(a=a, m=wk[t.codes], z=z, z_e=zk[t.codes])
        else:
            w_parts.append(wk)
            z_parts.append(zk)
    w_m = np.concatenate(w_parts) if w_parts else np.zeros(0)
    z_m = np.concatenate(z_parts) if z_parts else np.zeros(0)
    if elim is not None:
        return a, z, elim.reduced_weight, elim.reduced_response, w_m, z_m, elim
    return a, z, a, z, w_m, z_m, None
