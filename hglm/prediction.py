"""Predictions with standard errors, confidence and prediction intervals.

The estimation error of a row's linear predictor eta = x'beta + z'v (z: indicators of the
row's levels that the fit has seen) is c'C^{-1}c, c = (x, z), C = T'W_aT the matrix of the
mixed-model equations at the fit: the joint covariance of (beta-hat, v-hat - v). By the
Schur complement (S^{-1} = Var(beta-hat), M = H^{-1} Z'AX, H the random-effect block),

    c'C^{-1}c = (x - M'z)' S^{-1} (x - M'z) + z' H^{-1} z,

where z'H^{-1}z is one entry of diag(H^{-1}) (the selected inverse) for a row with one seen
level, and a sparse solve with H's factor per distinct combination of levels otherwise:
nothing of size q x q is formed.

What the intervals cover (``interval=``), on the link scale:

* ``"confidence"``: the row's conditional linear predictor x'beta + sum of the v of its
  levels. A level the fit has not seen enters at v = v(psi) (0 for a normal random
  effect) without variance: the interval is then for the typical group of that term. An
  observation-level term is left at v(psi) likewise.
* ``"prediction"``: the linear predictor of a new observation of the row. Unseen levels
  of a (normal) term are drawn from the term, adding lambda; an observation-level term
  adds its lambda (a new observation has a new level); for a Gaussian response with the
  identity link the residual variance phi is added as well, so the interval covers the new
  response itself (exact for a linear mixed model, apart from the estimation of the
  variances).

On the response scale the ``"confidence"`` interval is the link-scale one mapped through
the inverse link (it covers the conditional mean mu). The ``"prediction"`` interval covers
a new response y: its bounds are the alpha/2 and 1 - alpha/2 quantiles of the response
distribution mixed over eta ~ N(eta-hat, prediction variance) (Gauss-Hermite), so for
counts (integer quantiles) it covers at least the nominal level. New rows have prior
weight 1 (and binomial trials from the fit's ``trials`` column when there was one, else
1); y is a proportion for binomial, like the fitted values.

Unseen levels or observation-level terms of non-normal random-effect families are refused
in ``"prediction"`` intervals: their v is not normal, and a normal interval would mislead.

May import: ``hglm.design`` (``hglm.results`` for annotations).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import stats

from hglm.design import new_fixed_matrix, new_term_codes, to_pandas

if TYPE_CHECKING:
    from hglm.results import HGLMResult

INTERVALS = ("confidence", "prediction")
_QUADRATURE_NODES = 40
_BATCH_ENTRIES = 20_000_000  # q x batch doubles per block of sparse solves


def predict_with_uncertainty(
    res: HGLMResult,
    newdata: Any,
    type: str,
    interval: str | None,
    level: float,
    offset: Any = None,
) -> pd.DataFrame:
    """Columns ``fit`` (on the ``type`` scale), ``se`` (link scale: the SD of the error the
    interval accounts for) and, with an interval, ``lower`` and ``upper``.

    Parameters
    ----------
    res : the fit.
    newdata : rows to predict (None: the fit's own rows).
    type : "link" or "response".
    interval : None, "confidence" or "prediction".
    level : coverage of the interval.
    offset : the new rows' offset when the fit was given ``offset=`` as an array.

    Returns
    -------
    pandas.DataFrame, one row per row of ``newdata``.
    """
    if interval is not None and interval not in INTERVALS:
        raise ValueError(f"interval must be one of {INTERVALS} or None, got {interval!r}")
    if not 0 < level < 1:
        raise ValueError(f"level must lie between 0 and 1, got {level}")
    d = res.design
    model = res.model
    if newdata is None and model.obs_term is not None:
        raise ValueError(
            f"intervals for the fit's own rows with the observation-level term "
            f"{model.obs_term.term.label}: pass the rows as newdata (a new observation gets a "
            "new level of that term)"
        )
    frame = _frame_of(res, newdata)
    eta = res.predict(newdata, type="link", offset=offset)
    X = new_fixed_matrix(d.fixed_spec, frame) if newdata is not None else d.X
    codes = []
    for t in model.sparse_terms:
        codes.append(new_term_codes(t, frame) if newdata is not None else t.codes)
    var_conf = _estimation_variance(res, X, codes)
    var = var_conf
    if interval == "prediction":
        var = var_conf + _new_effect_variance(res, codes, len(eta))
        fam = d.family
        if fam.name == "gaussian" and fam.link.name == "identity":
            var = var + _row_phi(res, len(eta))
    se = np.sqrt(np.maximum(var, 0.0))
    out = pd.DataFrame({"fit": eta, "se": se})
    if interval is None:
        if type == "response":
            out["fit"] = d.family.link.inverse(eta)
        return out
    z = float(stats.norm.ppf(0.5 + level / 2))
    lo, hi = eta - z * se, eta + z * se
    if type == "link":
        out["lower"], out["upper"] = lo, hi
        return out
    fam = d.family
    out["fit"] = fam.link.inverse(eta)
    if interval == "confidence" or (fam.name == "gaussian" and fam.link.name == "identity"):
        a, b = fam.link.inverse(lo), fam.link.inverse(hi)
        out["lower"], out["upper"] = np.minimum(a, b), np.maximum(a, b)
        return out
    trials = _new_trials(res, frame, len(eta))
    alpha = 1 - level
    out["lower"] = _mixture_quantile(res, eta, se, trials, alpha / 2)
    out["upper"] = _mixture_quantile(res, eta, se, trials, 1 - alpha / 2)
    return out


def _frame_of(res: HGLMResult, newdata: Any) -> pd.DataFrame | None:
    return None if newdata is None else to_pandas(newdata)


def _estimation_variance(res: HGLMResult, X: np.ndarray, codes: list[np.ndarray]) -> np.ndarray:
    """c'C^{-1}c per row for c = (x, indicators of the row's seen levels)."""
    model = res.model
    mme = model.mme
    fit = res.outcome.mean
    sol, _, _ = model.evaluate(fit, res.outcome.disp, exact=res.method != "EQL", observed=False)
    cov_beta = res.outcome.cov_beta
    n = X.shape[0]
    if not mme.q:
        return np.einsum("ij,jk,ik->i", X, cov_beta, X)
    seen = np.column_stack(
        [np.where(c >= 0, c + mme.offsets[k], -1) for k, c in enumerate(codes)]
    )  # (n, K) global level index or -1
    # x - M'z
    Xt = X.copy()
    for k in range(seen.shape[1]):
        ok = seen[:, k] >= 0
        Xt[ok] -= sol.M[seen[ok, k]]
    out = np.einsum("ij,jk,ik->i", Xt, cov_beta, Xt)
    n_seen = np.sum(seen >= 0, axis=1)
    one = n_seen == 1
    if one.any():
        diag = mme.level_inverse_diagonal()
        out[one] += diag[np.max(seen[one], axis=1)]
    many = np.flatnonzero(n_seen > 1)
    if len(many):
        combos, inverse = np.unique(seen[many], axis=0, return_inverse=True)
        forms = np.full(len(combos), np.nan)
        # combinations that some data row has: their form is in the selected inverse
        if np.all(combos >= 0, axis=1).any():
            levels, pattern_forms = mme.pattern_level_variances()
            known = pd.Index(pd.MultiIndex.from_arrays(list(np.sort(levels, axis=1).T)))
            full = np.flatnonzero(np.all(combos >= 0, axis=1))
            where = known.get_indexer(pd.MultiIndex.from_arrays(list(combos[full].T)))
            forms[full[where >= 0]] = pattern_forms[where[where >= 0]]
        todo = np.flatnonzero(np.isnan(forms))
        combos_todo = combos[todo]
        # the others: sparse solves with H's factor, a block of combinations at a time
        batch = max(1, min(len(todo), _BATCH_ENTRIES // max(mme.q, 1)))
        for start in range(0, len(todo), batch):
            block = combos_todo[start : start + batch]
            rhs = np.zeros((mme.q, len(block)))
            for j, row in enumerate(block):
                rhs[row[row >= 0], j] = 1.0
            sol_block = mme.solve_levels(rhs)
            forms[todo[start : start + len(block)]] = np.einsum("ij,ij->j", rhs, sol_block)
        out[many] += forms[np.ravel(inverse)]
    assert out.shape == (n,)
    return out


def _new_effect_variance(res: HGLMResult, codes: list[np.ndarray], n: int) -> np.ndarray:
    """Variance a new observation adds on the link scale: lambda of every unseen level and of
    an observation-level term (normal random effects only)."""
    d = res.design
    out = np.zeros(n)
    for t, lk in zip(d.terms, res.outcome.disp.lam(d), strict=True):
        if t.observation_level:
            new = np.ones(n, dtype=bool)  # every new row is a new level
        else:
            new = codes[res.model.sparse_terms.index(t)] < 0
            if not new.any():
                continue
        if t.family.name != "normal":
            raise ValueError(
                f"prediction intervals for new levels of {t.term.label} need a normal random "
                f"effect; it is {t.family}"
            )
        if not np.allclose(lk, lk[0]):
            raise ValueError(
                f"{t.term.label} has a dispersion model: the lambda of a new level is unknown"
            )
        out = out + float(lk[0]) * new
    return out


def _row_phi(res: HGLMResult, n: int) -> np.ndarray:
    if res.phi is None:
        raise ValueError("prediction intervals need one phi; this fit has a dispersion model")
    return np.full(n, float(res.phi))


def _new_trials(res: HGLMResult, frame: pd.DataFrame | None, n: int) -> np.ndarray:
    d = res.design
    if d.family.name != "binomial":
        return np.ones(n)
    if frame is None:
        return d.trials if d.trials is not None else np.ones(n)
    if d.trials is None:
        return np.ones(n)
    name = d.extras.get("trials_column")
    if name is None or name not in frame.columns:
        raise ValueError(
            "a binomial prediction interval for new rows needs their number of trials: "
            f"newdata lacks the trials column {name!r}"
        )
    return frame[name].to_numpy(dtype=float)


def _conditional_cdf(res: HGLMResult, y: np.ndarray, mu: np.ndarray, trials: np.ndarray):
    fam = res.design.family
    if fam.name == "poisson":
        return stats.poisson.cdf(y, mu)
    if fam.name == "negative_binomial":
        th = float(fam.theta)  # type: ignore[arg-type]
        return stats.nbinom.cdf(y, th, th / (th + mu))
    if fam.name == "binomial":
        return stats.binom.cdf(y, trials, mu)
    phi = float(res.phi) if res.phi is not None else np.nan
    if fam.name == "gaussian":
        return stats.norm.cdf(y, mu, np.sqrt(phi))
    return stats.gamma.cdf(y, 1 / phi, scale=mu * phi)


def _mixture_quantile(
    res: HGLMResult, eta: np.ndarray, sd: np.ndarray, trials: np.ndarray, p: float
) -> np.ndarray:
    """The p-quantile of y when y | eta follows the family and eta ~ N(eta-hat, sd^2)."""
    fam = res.design.family
    if fam.name not in ("poisson", "negative_binomial", "binomial") and res.phi is None:
        raise ValueError("prediction intervals need one phi; this fit has a dispersion model")
    x, w = np.polynomial.hermite_e.hermegauss(_QUADRATURE_NODES)
    w = w / w.sum()
    nodes = eta[:, None] + sd[:, None] * x[None, :]
    mu = fam.valid_mu(fam.link.inverse(nodes))
    tr = trials[:, None]

    def cdf(y: np.ndarray) -> np.ndarray:
        return np.sum(w * _conditional_cdf(res, y[:, None], mu, tr), axis=1)

    discrete = fam.name in ("poisson", "negative_binomial", "binomial")
    # the mixture's quantile lies between its components' quantiles
    if fam.name == "poisson":
        comp = stats.poisson.ppf(p, mu)
    elif fam.name == "negative_binomial":
        th = float(fam.theta)  # type: ignore[arg-type]
        comp = stats.nbinom.ppf(p, th, th / (th + mu))
    elif fam.name == "binomial":
        comp = stats.binom.ppf(p, tr, mu)
    elif fam.name == "gaussian":
        comp = stats.norm.ppf(p, mu, np.sqrt(float(res.phi)))
    else:
        phi = float(res.phi)
        comp = stats.gamma.ppf(p, 1 / phi, scale=mu * phi)
    lo, hi = np.min(comp, axis=1), np.max(comp, axis=1)
    if discrete:
        lo = lo - 1  # F(lo) < p is needed: the search keeps F(lo) < p <= F(hi)
        while True:
            open_ = hi - lo > 1
            if not open_.any():
                break
            mid = np.floor((lo + hi) / 2)
            below = cdf(mid) < p
            lo = np.where(open_ & below, mid, lo)
            hi = np.where(open_ & ~below, mid, hi)
        return hi / trials if fam.name == "binomial" else hi
    for _ in range(80):
        mid = 0.5 * (lo + hi)
        below = cdf(mid) < p
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return 0.5 * (lo + hi)
