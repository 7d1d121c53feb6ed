"""EQL, R hglm's algorithm (Lee & Nelder 1996; Ronnegard et al. 2010).

Alternate the IWLS of the mean model (``Model.iwls``, its first step as hglm takes it) with
gamma GLMs (``hglm.glm``) for phi and each lambda on deviance components divided by
(1 - leverage), weights (1 - leverage) / 2, until eta settles. Also the start of the HL
search (``start_only``).

May import: ``hglm.state``, ``hglm.diagnostics``, ``hglm.model``, ``hglm.glm``,
``hglm.likelihood``, ``hglm.design``.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from hglm.design import RandomTermDesign
from hglm.diagnostics import ConvergenceCode
from hglm.glm import fit_gamma_log, fit_glm_start
from hglm.likelihood import Likelihoods
from hglm.model import Model
from hglm.state import Dispersions, FitOutcome, MeanFit


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
    code = ConvergenceCode.CONVERGED
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
                code = ConvergenceCode.MEAN_MODEL_FAILED
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
        if code is ConvergenceCode.CONVERGED:
            code = ConvergenceCode.MAX_ITERATIONS
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
        code=code,
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
