"""Responses drawn from a fitted HGLM (R's ``simulate``): the engine of the parametric bootstrap.

Given the fitted beta, dispersions phi and lambda, each draw

1. takes random effects either new, u_j ~ the term's distribution with its fitted lambda
   mapped to v_j = v(u_j) (``new_random_effects=True``: the unconditional model, what
   a parametric bootstrap of the variance components needs), or the predicted v-hat
   (``False``: conditional on the clusters at hand);
2. forms eta = offset + X beta + sum_k v_k[level] and mu = g^-1(eta);
3. draws y | u from the response family with the row's phi and prior weight.

Responses come back on the scale of the data column: successes (not proportions) for a
binomial fit with ``trials=``, 0/1 for a binary one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from hglm.design import ModelDesign, RandomTermDesign

if TYPE_CHECKING:
    from hglm.results import HGLMResult


def draw_random_effects(
    term: RandomTermDesign, lam: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """v for every level of ``term``: u from its family with the level's lambda, mapped by v(u)."""
    fam = term.family
    u = fam.sample_u(lam, term.n_levels, rng)
    if fam.name == "normal":
        return u
    # u at the edge of its support (beta draws of exactly 0 or 1 for large lambda) would
    # give an infinite v; nudge it inside
    if fam.name == "beta":
        u = np.clip(u, 1e-12, 1 - 1e-12)
    else:
        u = np.maximum(u, 1e-300)
    return np.asarray(fam.link.fun(u), dtype=float)


def draw_response(
    design: ModelDesign, mu: np.ndarray, phi: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """y | u on the data column's scale (successes for binomial with trials)."""
    fam = design.family
    w = design.prior_weights
    if fam.name == "gaussian":
        return rng.normal(mu, np.sqrt(phi / w))
    if fam.name == "poisson":
        return rng.poisson(mu).astype(float)
    if fam.name == "negative_binomial":  # NB2: a Poisson with a gamma(theta, mu/theta) mean
        theta = float(fam.theta)  # type: ignore[arg-type]
        return rng.poisson(rng.gamma(theta, mu / theta)).astype(float)
    if fam.name == "binomial":
        trials = design.trials if design.trials is not None else np.ones(design.n)
        return rng.binomial(np.rint(trials).astype(np.int64), mu).astype(float)
    # gamma with mean mu and variance phi mu^2 / w; a draw that underflows to 0 would be
    # rejected by the fit, so keep it positive
    shape = w / phi
    return np.maximum(rng.gamma(shape, mu / shape), np.finfo(float).tiny)


def simulate_responses(
    res: HGLMResult,
    n: int = 1,
    *,
    seed: int | np.random.Generator | None = None,
    new_random_effects: bool = True,
) -> np.ndarray:
    """``n`` response vectors drawn from the fitted model, as an (n, nobs) array.

    ``new_random_effects=True`` draws fresh random effects from their fitted
    distributions for every replicate; ``False`` keeps the predicted random effects, so
    only y | v varies.

    Parameters
    ----------
    res : HGLMResult
        The fit to simulate from.
    n : int
        Replicates.
    seed : int or numpy.random.Generator, optional
        The random source.
    new_random_effects : bool
        Draw new random effects (True) or keep the predicted ones.

    Returns
    -------
    numpy.ndarray
        (n, nobs) responses on the scale of the data column (counts for binomial).
    """
    if n < 1:
        raise ValueError(f"n must be a positive number of replicates, got {n}")
    rng = np.random.default_rng(seed)
    d = res.design
    fixed_eta = d.offset + d.X @ res.outcome.mean.beta
    phi = res.outcome.disp.phi(d)
    lam = res.outcome.disp.lam(d)
    out = np.empty((n, d.n))
    for i in range(n):
        eta = fixed_eta.copy()
        for t, lk, vk in zip(d.terms, lam, res.outcome.mean.v, strict=True):
            v = draw_random_effects(t, lk, rng) if new_random_effects else vk
            eta += v[t.codes]
        mu = d.family.valid_mu(d.family.link.inverse(eta))
        out[i] = draw_response(d, mu, phi, rng)
    return out


def design_response(design: ModelDesign, y: np.ndarray) -> np.ndarray:
    """A response on the data column's scale -> the scale the design holds (proportions for
    binomial with trials), checked like the data of a fit."""
    y = np.asarray(y, dtype=float).reshape(-1)
    if y.shape[0] != design.n:
        raise ValueError(f"the response has {y.shape[0]} values, the model has {design.n} rows")
    if not np.all(np.isfinite(y)):
        raise ValueError("the response has missing or infinite values")
    fam = design.family
    if fam.name == "binomial":
        trials = design.trials if design.trials is not None else np.ones(design.n)
        if np.any((y < 0) | (y > trials)):
            raise ValueError("binomial responses must lie between 0 and the number of trials")
        return y / trials
    if fam.name == "poisson" and np.any(y < 0):
        raise ValueError("Poisson responses must be non-negative counts")
    if fam.name == "gamma" and np.any(y <= 0):
        raise ValueError("gamma responses must be positive")
    return y
