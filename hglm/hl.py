"""HL(0,1) / HL(1,1) of a general HGLM: the outer search over the log-dispersions.

The adjusted profile likelihoods are maximised exactly by a quasi-Newton search over the
log-dispersion parameters (and, for HL(1,1) with ML dispersions, beta by p_v(h) jointly),
started from a previous outcome (EQL, or an earlier fit) and scaled by the start's standard
errors; each inner IWLS starts from the last mode moved along its tangent (``hglm.criterion``).
``finish_hl`` computes the mode, likelihoods, leverages and Var(beta) at the estimates for
every HL route (this one and the profiled LMM route of ``hglm.lmm``); the SEs of the
log-dispersions are deferred (``hglm.dispersion_se``). Which route a model takes is decided
by ``hglm.dispatch.solve`` alone.

May import: ``hglm.state``, ``hglm.diagnostics``, ``hglm.control``, ``hglm.model``,
``hglm.criterion``, ``hglm.dispersion_se``.
"""

from __future__ import annotations

import time

import numpy as np
import scipy.optimize

from hglm.criterion import Criterion, is_stationary, maximise
from hglm.diagnostics import ConvergenceCode
from hglm.dispersion_se import DispersionSE
from hglm.model import Model
from hglm.state import LOG_LAMBDA_BOUNDS, Dispersions, FitOutcome


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


def fit_hl(
    model: Model, start: FitOutcome, mean_order: int, reml: bool, outer_max_iter: int = 500
) -> FitOutcome:
    """HL(mean_order, 1) of a general HGLM from ``start``: exact maximisation of p_beta,v(h)
    (``reml``) or p_v(h) over the log-dispersions (and beta for HL(1,1) with ML dispersions).

    Parameters
    ----------
    model : Model
        The model (any HGLM; linear mixed models are better served by ``hglm.lmm``).
    start : FitOutcome
        Where the search starts: its dispersions, mean fit and Var(beta) (the search's scale).
    mean_order : int
        1 for HL(1,1) (beta by p_v(h)), 0 for HL(0,1) (beta maximises h).
    reml : bool
        p_beta,v(h) (True) or p_v(h) (False) for the dispersions.
    outer_max_iter : int
        Iterations at most of each quasi-Newton search.

    Returns
    -------
    FitOutcome
        The fit at the estimates (``finish_hl``).
    """
    d = model.design
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
    codes: list[ConvergenceCode] = []
    if joint:
        crit = Criterion(model, disp, fit0, "p_v", beta_free=True)
        x0 = np.concatenate([fit0.beta, theta0])
        joint_bounds = [(None, None)] * d.p + theta_bounds
        res = maximise(
            crit, x0, joint_bounds, scale=_search_scale(start, joint=True), maxiter=outer_max_iter
        )
        res.success = is_stationary(crit, res, joint_bounds)
        x_hat = res.x
        beta_hat, disp_hat = crit.split(x_hat)
        theta_hat = x_hat[d.p :]
    else:
        crit = Criterion(model, disp, fit0, which, beta_free=False)
        if len(theta0):
            res = maximise(
                crit,
                theta0,
                theta_bounds,
                scale=_search_scale(start, joint=False),
                maxiter=outer_max_iter,
            )
            res.success = is_stationary(crit, res, theta_bounds)
        else:  # nothing to estimate (a binomial/Poisson GLM without random terms)
            crit(theta0)
            res = scipy.optimize.OptimizeResult(x=theta0, success=True, nit=0, message="")
        theta_hat = res.x
        disp_hat = disp.with_theta(theta_hat)
        beta_hat = None
    if not res.success:
        codes.append(ConvergenceCode.OPTIMISER_FAILED)
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
        bres = maximise(bcrit, crit.fit.beta.copy(), [(None, None)] * d.p, maxiter=outer_max_iter)
        bres.success = is_stationary(bcrit, bres, [(None, None)] * d.p)
        beta_hat = bres.x[: d.p]
        if not bres.success:
            codes.append(ConvergenceCode.OPTIMISER_FAILED)
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
        codes=codes,
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
    codes: list[ConvergenceCode],
    n_iter: int,
    messages: list[str],
    timings: dict[str, float],
    mme_before: dict[str, float],
) -> FitOutcome:
    """The mode, likelihoods, leverages and Var(beta) at the HL estimates of the dispersions
    (and of beta when ``beta_fixed``), with their SEs deferred (``DispersionSE``).

    ``codes`` and ``messages``: the problems the search met (one code per message, in order);
    the final IWLS may add one. Returns the ``FitOutcome`` of every HL route."""
    t2 = time.perf_counter()
    fit = model.iwls(beta, v, disp_hat, exact=True, beta_fixed=beta_fixed, tol=1e-14, max_iter=200)
    if not fit.converged:
        codes.append(ConvergenceCode.FINAL_IWLS_FAILED)
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
    outcome = FitOutcome(
        mean=fit,
        disp=disp_hat,
        likelihood=lik,
        leverages=lev,
        cov_beta=sol.cov_beta,
        disp_se=se,
        converged=not codes,
        n_iter=n_iter,
        messages=messages,
        code=codes[0] if codes else ConvergenceCode.CONVERGED,
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
