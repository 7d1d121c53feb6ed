"""Population-averaged (marginal) predictions: E(y) averaged over the random effects.

A fitted HGLM predicts mu = g^-1(x'beta + v) for a given cluster; what happens to the
*average* wafer is E_v[g^-1(x'beta + v)], which differs from g^-1(x'beta) whenever g is
not the identity. The expectation is taken over the random-effect distributions with the
fitted lambdas (terms listed in ``average_over``; the other terms are held at their
predicted v):

* exactly, in closed form, where one exists:
  - identity link: x'beta + sum_k E(v_k);
  - log link: exp(x'beta) prod_k E(exp v_k) (normal: exp(lambda/2); gamma(log) and
    inverse-gamma(log): E(u) = 1; inverse-gamma(reciprocal): (a/(a-1))^(1+a); beta(logit):
    a/(a-1)), which covers the conjugate Poisson-gamma model;
  - logit link with one beta(logit) term and nothing else averaged (the conjugate
    binomial-beta model): with c = exp(x'beta) and u ~ Beta(a, a), a = 1/(2 lambda),
    E[c u / (1 - u + c u)] = c/2 2F1(1, a+1; 2a+1; 1-c) (Euler's integral);
* otherwise by Gaussian quadrature on the product of the terms' distributions: the normal
  terms collapse into one, v_1 + ... + v_k ~ N(0, lambda_1 + ... + lambda_k) (exact: the
  sum of independent normals is normal whatever the link), integrated by Gauss-Hermite;
  each beta, gamma or inverse-gamma term by Gauss-Jacobi / generalised Gauss-Laguerre on
  u, where the integrand is smooth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import special

from hglm.design import RandomTermDesign, new_fixed_matrix, new_term_codes, to_pandas
from hglm.families import RandomFamily

if TYPE_CHECKING:
    from hglm.results import HGLMResult

# Beyond this shape (lambda < 1e-5) the Laguerre / Jacobi rules lose accuracy; the random
# effect is then so concentrated that a normal with the same mean and variance of v is
# accurate to far below any sampling error.
_MAX_SHAPE = 1e5


@dataclass(frozen=True)
class _Rule:
    """Nodes (on the v scale) and weights (summing to 1) of one random-effect distribution."""

    v: np.ndarray
    w: np.ndarray


def _normal_rule(var: float, n: int) -> _Rule:
    x, w = np.polynomial.hermite_e.hermegauss(n)
    return _Rule(np.sqrt(max(var, 0.0)) * x, w / w.sum())


def _moments_of_v(fam: RandomFamily, lam: float) -> tuple[float, float]:
    """Mean and variance of v = v(u) (used for very concentrated u only)."""
    a = 1.0 / lam
    if fam.name == "beta":
        return 0.0, 2 * float(special.polygamma(1, a / 2))
    if fam.name == "gamma":
        return float(special.digamma(a) - np.log(a)), float(special.polygamma(1, a))
    # inverse gamma: 1/u ~ Gamma(1 + a, rate a)
    if fam.link.name == "log":
        return float(np.log(a) - special.digamma(1 + a)), float(special.polygamma(1, 1 + a))
    return (1 + a) / a, (1 + a) / a**2


def _family_rule(fam: RandomFamily, lam: float, n: int) -> _Rule:
    if fam.name == "normal":
        return _normal_rule(lam, n)
    a = 1.0 / lam
    shape = a / 2 if fam.name == "beta" else a
    if shape > _MAX_SHAPE:
        mean, var = _moments_of_v(fam, lam)
        r = _normal_rule(var, n)
        return _Rule(mean + r.v, r.w)
    if fam.name == "beta":
        # u ~ Beta(s, s), s = 1/(2 lambda): Gauss-Jacobi on t = 2u - 1
        t, w = special.roots_jacobi(n, shape - 1, shape - 1)
        u = (1 + t) / 2
        return _Rule(special.logit(u), w / w.sum())
    if fam.name == "gamma":
        # u ~ Gamma(a, scale 1/a): generalised Gauss-Laguerre on x = a u
        x, w = special.roots_genlaguerre(n, a - 1)
        return _Rule(np.log(x / a), w / w.sum())
    # inverse gamma: x = a / u ~ Gamma(1 + a, 1)
    x, w = special.roots_genlaguerre(n, a)
    inv_u = x / a
    v = -np.log(inv_u) if fam.link.name == "log" else inv_u
    return _Rule(v, w / w.sum())


def _mean_exp_v(fam: RandomFamily, lam: np.ndarray) -> np.ndarray | None:
    """E(exp v) in closed form, or None where it does not exist / is not known."""
    a = 1.0 / lam
    if fam.name == "normal":
        return np.exp(lam / 2)
    if fam.name == "gamma" or (fam.name == "inverse_gamma" and fam.link.name == "log"):
        return np.ones_like(lam)
    if np.any(a <= 1):
        return None  # infinite mean
    if fam.name == "beta":
        # exp(logit u) = u / (1 - u) ~ beta prime(s, s): mean s / (s - 1), s = a/2
        s = a / 2
        return s / (s - 1) if np.all(s > 1) else None
    # inverse gamma, reciprocal link: exp(1/u) with 1/u ~ Gamma(1 + a, rate a): its mgf at 1
    return (a / (a - 1)) ** (1 + a)


def _mean_v(fam: RandomFamily, lam: np.ndarray) -> np.ndarray:
    """E(v) in closed form."""
    a = 1.0 / lam
    if fam.name in ("normal", "beta"):
        return np.zeros_like(lam)
    if fam.name == "gamma":
        return special.digamma(a) - np.log(a)
    if fam.link.name == "log":
        return np.log(a) - special.digamma(1 + a)
    return (1 + a) / a


def _beta_logit_mean(eta: np.ndarray, lam: np.ndarray) -> np.ndarray:
    """E[expit(eta + logit u)], u ~ Beta(s, s), s = 1/(2 lambda), by Euler's integral."""
    s = 1.0 / (2 * lam)
    c = np.exp(eta)
    # c u / (1 - u + c u) = c u / (1 - z u) with z = 1 - c; for c > 1 use the symmetry
    # u -> 1 - u (Beta(s, s) is symmetric): expit(eta + logit u) = 1 - expit(-eta + logit u),
    # which keeps the hypergeometric argument in [0, 1) where it converges fast
    flip = c > 1
    cc = np.where(flip, 1 / c, c)
    val = cc / 2 * special.hyp2f1(1.0, s + 1, 2 * s + 1, 1 - cc)
    return np.where(flip, 1 - val, val)


@dataclass
class _Rows:
    """What the averaging needs per row: the fixed linear predictor (with the terms that
    are not averaged over) and each averaged term's lambda."""

    eta: np.ndarray
    terms: list[RandomTermDesign]
    lam: list[np.ndarray]


def _rows(res: HGLMResult, newdata: Any, average_over: list[str] | None, offset: Any) -> _Rows:
    d = res.design
    names = [t.name for t in d.terms]
    if average_over is None:
        avg = set(names)
    else:
        unknown = [a for a in average_over if a not in names]
        if unknown:
            raise ValueError(
                f"average_over names unknown random term(s) {unknown}; terms are {names}"
            )
        avg = set(average_over)
    lam_fit = res.outcome.disp.lam(d)
    if newdata is None:
        eta = d.offset + d.X @ res.outcome.mean.beta
        codes = [t.codes for t in d.terms]
    else:
        frame = to_pandas(newdata)
        eta = new_fixed_matrix(d.fixed_spec, frame) @ res.outcome.mean.beta
        if offset is not None:
            eta = eta + np.asarray(offset, dtype=float).reshape(-1)
        codes = []
        for t in d.terms:
            intercept_only = t.X_disp.shape[1] == 1
            if t.name in avg and intercept_only:
                codes.append(np.zeros(len(frame), dtype=np.int64))  # lambda is one number
            elif t.observation_level:
                codes.append(np.full(len(frame), -1, dtype=np.int64))
            else:
                codes.append(new_term_codes(t, frame))
    out_terms, out_lam = [], []
    for t, c, lk, vk in zip(d.terms, codes, lam_fit, res.outcome.mean.v, strict=True):
        if t.name in avg:
            if np.any(c < 0):
                raise ValueError(
                    f"lambda of {t.name!r} has a dispersion model; new levels of {t.name!r} "
                    "have no lambda to average over"
                )
            out_terms.append(t)
            out_lam.append(np.asarray(lk[c], dtype=float))
        else:
            eta = eta + np.where(c >= 0, vk[np.maximum(c, 0)], t.family.v_of_psi)
    return _Rows(np.asarray(eta, dtype=float), out_terms, out_lam)


def marginal_predict(
    res: HGLMResult,
    newdata: Any = None,
    *,
    average_over: list[str] | None = None,
    method: str = "auto",
    n_quad: int = 40,
    offset: Any = None,
) -> np.ndarray:
    """Population-averaged mean E(y) per row of ``newdata`` (default: the fitted data).

    ``average_over``: the random terms to average over (default all); the others enter
    with their predicted random effects (new levels: v(psi)). ``method``: ``"auto"``
    (closed form where one exists, else quadrature) or ``"quadrature"``. For binomial,
    the mean is a proportion. ``offset`` is added to the linear predictor of new data.

    Parameters
    ----------
    res : HGLMResult
        The fit.
    newdata : pandas.DataFrame, optional
        Rows to predict for (default: the fitted data).
    average_over : list of str, optional
        Random terms to average over (default: all).
    method : str
        ``"auto"`` or ``"quadrature"``.
    n_quad : int
        Quadrature nodes per term.
    offset : array-like, optional
        Added to the linear predictor of new data.

    Returns
    -------
    numpy.ndarray
        E(y) per row.
    """
    if method not in ("auto", "quadrature"):
        raise ValueError("method must be 'auto' or 'quadrature'")
    rows = _rows(res, newdata, average_over, offset)
    link = res.design.family.link
    if not rows.terms:
        return link.inverse(rows.eta)
    if method == "auto":
        exact = _closed_form(link.name, rows)
        if exact is not None:
            return exact
    return _quadrature(res, rows, n_quad)


def _closed_form(link: str, rows: _Rows) -> np.ndarray | None:
    fams = [t.family for t in rows.terms]
    if link == "identity":
        return rows.eta + sum((_mean_v(f, lk) for f, lk in zip(fams, rows.lam, strict=True)), 0.0)
    if link == "log":
        factor = np.ones_like(rows.eta)
        for f, lk in zip(fams, rows.lam, strict=True):
            m = _mean_exp_v(f, lk)
            if m is None:
                return None
            factor = factor * m
        return np.exp(rows.eta) * factor
    if link == "logit" and len(fams) == 1 and fams[0].name == "beta":
        return _beta_logit_mean(rows.eta, rows.lam[0])
    return None


def _quadrature(res: HGLMResult, rows: _Rows, n_quad: int) -> np.ndarray:
    link = res.design.family.link
    normal = [i for i, t in enumerate(rows.terms) if t.family.name == "normal"]
    other = [i for i, t in enumerate(rows.terms) if t.family.name != "normal"]
    n_dims = (1 if normal else 0) + len(other)
    # keep the tensor grid within ~1e5 nodes
    n = max(8, min(n_quad, round(1e5 ** (1 / max(n_dims, 1)))))
    keys = np.column_stack(rows.lam)
    uniq, inverse = np.unique(keys, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    out = np.empty_like(rows.eta)
    for g, lam_row in enumerate(uniq):
        rules = []
        if normal:
            rules.append(_normal_rule(float(sum(lam_row[i] for i in normal)), n))
        rules += [_family_rule(rows.terms[i].family, float(lam_row[i]), n) for i in other]
        v, w = rules[0].v, rules[0].w
        for r in rules[1:]:
            v = (v[:, None] + r.v[None, :]).ravel()
            w = (w[:, None] * r.w[None, :]).ravel()
        idx = np.flatnonzero(inverse == g)
        chunk = max(1, int(2e6 // len(v)))
        for s in range(0, len(idx), chunk):
            part = idx[s : s + chunk]
            out[part] = link.inverse(rows.eta[part, None] + v[None, :]) @ w
    return out


def marginal_effect(
    res: HGLMResult,
    newdata: Any,
    column: str,
    *,
    change: float = 1.0,
    to: Any = None,
    average_over: list[str] | None = None,
) -> pd.Series:
    """Average population-averaged effect of ``column`` on E(y).

    Numeric column: the average over the rows of [E(y | column + change) - E(y)] / change.
    ``to=level``: the average of E(y | column = level) - E(y) (a categorical contrast).

    Parameters
    ----------
    res : HGLMResult
        The fit.
    newdata : pandas.DataFrame
        The rows to average over.
    column : str
        The variable whose effect is wanted.
    change : float
        The step of a numeric column.
    to : optional
        A level of a categorical column to contrast with the rows' own levels.
    average_over : list of str, optional
        Random terms to average over (default: all).

    Returns
    -------
    pandas.Series
        The averaged marginal means before and after, and the effect.
    """
    frame = to_pandas(newdata).copy()
    if column not in frame.columns:
        raise ValueError(f"column {column!r} is not in the data")
    before = marginal_predict(res, frame, average_over=average_over)
    after_frame = frame.copy()
    if to is not None:
        after_frame[column] = pd.Series([to] * len(frame), index=frame.index).astype(
            frame[column].dtype
        )
        scale = 1.0
    else:
        if not pd.api.types.is_numeric_dtype(frame[column]):
            raise ValueError(
                f"column {column!r} is not numeric; give the level to compare with to="
            )
        after_frame[column] = frame[column] + change
        scale = change
    after = marginal_predict(res, after_frame, average_over=average_over)
    return pd.Series(
        {
            "mean_before": float(np.mean(before)),
            "mean_after": float(np.mean(after)),
            "effect": float(np.mean(after - before) / scale),
        }
    )
