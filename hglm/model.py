"""``Model``: a design with its mixed-model equations, and the mean step of every method.

* ``Model.iwls``: for given dispersions, (beta, v) maximising h (or v only, beta held), by
  IWLS on the augmented GLM = sparse mixed-model equations (``hglm.mme``), with step halving
  (and row-wise halving of an observation-level term).
* ``Model.hglm_first_system``: R hglm's first IWLS step of an EQL round, reproduced.
* quantities at a fit: ``evaluate`` (factor without moving), ``likelihoods``,
  ``combine_likelihoods`` (h, p_v(h), p_beta,v(h), cAIC) and ``leverages``.

May import: ``hglm.state``, ``hglm.design``, ``hglm.mme``, ``hglm.likelihood``.
"""

from __future__ import annotations

import copy

import numpy as np

from hglm.design import ModelDesign, RandomTermDesign
from hglm.likelihood import Likelihoods, combine, conditional_loglik, random_loglik
from hglm.mme import MixedModelEquations, MMESolution, ObservationElimination
from hglm.state import Dispersions, MeanFit


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

    def with_design(self, design: ModelDesign) -> Model:
        """The model of another design of the same structure (a new response, or a negative
        binomial at another theta), sharing these mixed-model equations: their pattern and
        symbolic factorisation depend on the random terms only."""
        clone = copy.copy(self)
        clone.design = design
        clone.family = design.family
        return clone

    # -- helpers -----------------------------------------------------------------------
    def _term_index(self, term: RandomTermDesign) -> int:
        return next(i for i, t in enumerate(self.design.terms) if t is term)

    def start_v(self) -> list[np.ndarray]:
        """The random effects at their mean scale v(psi), per term: the IWLS's cold start."""
        return [np.full(t.n_levels, t.family.v_of_psi) for t in self.design.terms]

    def linear_predictor(self, beta: np.ndarray, v: list[np.ndarray]) -> np.ndarray:
        """eta = offset + X beta + the random terms' contributions."""
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
        """(beta, v) maximising h (``exact``) or its quasi version (EQL) at given dispersions.

        Parameters
        ----------
        beta, v : numpy.ndarray, list of numpy.ndarray
            The start (v per term, in design order).
        disp : Dispersions
            The dispersions held fixed.
        exact : bool
            The exact random-effect rows of h (HL) or the quasi rows (EQL).
        beta_fixed : bool
            Hold beta at its start (only v moves).
        tol, max_iter, min_iter
            Stop when the relative squared change of eta is below ``tol`` (after ``min_iter``
            steps), or after ``max_iter`` steps.
        hglm_start, hglm_previous
            Take R hglm's first step of an EQL round (``hglm_first_system``).

        Returns
        -------
        MeanFit
            The mode, its factored system and whether the IWLS converged.
        """
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
