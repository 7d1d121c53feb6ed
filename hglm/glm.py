"""Plain GLMs by IRLS: the gamma GLM of EQL's dispersion steps and EQL's starting GLM.

* ``fit_gamma_log``: gamma GLM with log link and prior weights (R's glm; SEs with dispersion
  1): EQL fits phi and each lambda this way, on deviance components divided by
  (1 - leverage) with weights (1 - leverage) / 2.
* ``fit_glm_start``: the GLM of the fixed part alone, R hglm's start.

May import: ``hglm.model`` (for its type only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from hglm.model import Model


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
