"""h-likelihood, adjusted profile likelihoods p_v(h), p_beta,v(h) and the conditional AIC.

    h          = sum_i log f(y_i | v) + sum_j log f(v_j)
    p_v(h)     = h - 1/2 log det(D(h, v) / 2 pi)
    p_beta,v(h) = h - 1/2 log det(D(h, (beta, v)) / 2 pi)
    cAIC       = -2 sum_i log f(y_i | v) + 2 sum_i q_i     (q_i: data-row leverages)

The log-determinants come from the sparse factor of the mixed-model equations
(``hglm.mme``); this module only combines the pieces.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np

from hglm.families import RandomFamily, ResponseFamily

_LOG_2PI = float(np.log(2 * np.pi))


@dataclass(frozen=True)
class Likelihoods:
    h: float
    p_v: float
    p_beta_v: float
    caic: float
    conditional: float  # sum_i log f(y_i | v)

    def as_dict(self) -> dict[str, float]:
        return {"h": self.h, "p_v": self.p_v, "p_beta_v": self.p_beta_v, "caic": self.caic}


def conditional_loglik(
    family: ResponseFamily, y: np.ndarray, mu: np.ndarray, phi: np.ndarray, w: np.ndarray
) -> float:
    """sum_i log f(y_i | u); the mu- and phi-free part is summed once per (y, w)."""
    return float(np.sum(family.loglik_kernel(y, mu, phi, w))) + _normaliser_sum(family, y, w)


# (family, id(y), id(w)) -> (weak references to y and w, sum of the log normaliser). The IWLS
# and the outer search evaluate log f(y | u) hundreds of times for one y; its gammaln part
# costs as much as the rest of an evaluation. Weak references make a reused id a miss.
_NORMALISERS: dict[tuple[str, int, int], tuple[weakref.ref, weakref.ref, float]] = {}
_MAX_NORMALISERS = 64


def _normaliser_sum(family: ResponseFamily, y: np.ndarray, w: np.ndarray) -> float:
    if not (isinstance(y, np.ndarray) and isinstance(w, np.ndarray)):
        return float(np.sum(family.log_normaliser(y, w)))
    key = (family.name, id(y), id(w))
    hit = _NORMALISERS.get(key)
    if hit is not None and hit[0]() is y and hit[1]() is w:
        return hit[2]
    value = float(np.sum(family.log_normaliser(y, w)))
    if len(_NORMALISERS) >= _MAX_NORMALISERS:
        _NORMALISERS.clear()
    _NORMALISERS[key] = (weakref.ref(y), weakref.ref(w), value)
    return value


def random_loglik(
    families: list[RandomFamily], v: list[np.ndarray], lam: list[np.ndarray]
) -> float:
    return float(
        sum(np.sum(f.logdensity(vk, lk)) for f, vk, lk in zip(families, v, lam, strict=True))
    )


def combine(
    conditional: float,
    random: float,
    logdet_v: float,
    logdet_beta_v: float,
    n_random: int,
    n_fixed: int,
    leverage_sum: float,
) -> Likelihoods:
    """Assemble the criteria from log f(y|v), log f(v) and the two log-determinants."""
    h = conditional + random
    p_v = h - 0.5 * (logdet_v - n_random * _LOG_2PI)
    p_beta_v = h - 0.5 * (logdet_beta_v - (n_random + n_fixed) * _LOG_2PI)
    caic = -2.0 * conditional + 2.0 * leverage_sum
    return Likelihoods(h=h, p_v=p_v, p_beta_v=p_beta_v, caic=caic, conditional=conditional)
