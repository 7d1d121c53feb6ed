"""Diagnostic plots of a fitted HGLM (the equivalent of R hglm's ``plot.hglm``).

One function per plot, each returning a ``matplotlib.figure.Figure``. Figures are built
without pyplot, so nothing here touches the user's backend or global figure state: save
with ``fig.savefig("x.png")`` (rendered by Agg) or display it in a notebook.

* ``residuals_vs_fitted``: standardised deviance residuals against fitted means, the
  check of the mean model (trend: wrong link or missing covariate; funnel: wrong
  variance function);
* ``qq_random_effects`` / ``halfnormal_random_effects``: normal and half-normal QQ plots
  of the predicted random effects, standardised by sqrt(lambda);
* ``gamma_qq_dispersion``: the dispersion model's responses d_i / (phi_i (1 - q_i))
  against chi2_1 = gamma(1/2, 2) quantiles, the distribution the dispersion GLM assumes;
* ``leverage_plot``: data-row leverages by observation, with the 2 mean(q) guide line;
* ``caterpillar``: random effects sorted, with prediction intervals v-hat +- z se.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from matplotlib.figure import Figure
from scipy import stats

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from hglm.results import HGLMResult

_POINT = {"s": 14, "alpha": 0.7, "edgecolors": "none"}


def _terms(res: HGLMResult, term: str | None) -> list[str]:
    names = list(res.ranef)
    if not names:
        raise ValueError("the model has no random terms to plot")
    if term is None:
        return names
    if term not in names:
        raise ValueError(f"unknown random term {term!r}; terms are {names}")
    return [term]


def _panels(n: int, width: float = 4.2, height: float = 3.6) -> tuple[Figure, list[Axes]]:
    cols = min(n, 3)
    rows = -(-n // cols)
    fig = Figure(figsize=(width * cols, height * rows), layout="constrained")
    axes = [fig.add_subplot(rows, cols, i + 1) for i in range(n)]
    return fig, axes


def _qq(ax: Axes, theoretical: np.ndarray, sample: np.ndarray, xlabel: str, ylabel: str) -> None:
    ax.scatter(theoretical, sample, **_POINT)
    lo = float(min(theoretical.min(), sample.min()))
    hi = float(max(theoretical.max(), sample.max()))
    ax.plot([lo, hi], [lo, hi], color="0.4", lw=1, ls="--")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)


def _standardised_v(res: HGLMResult, name: str) -> np.ndarray:
    tab = res.ranef[name]
    t = next(t for t in res.design.terms if t.name == name)
    lam = res.outcome.disp.lam(res.design)[res.design.terms.index(t)]
    return (tab["v"].to_numpy() - t.family.v_of_psi) / np.sqrt(lam)


def residuals_vs_fitted(res: HGLMResult) -> Figure:
    """Standardised deviance residuals against fitted values, with a running mean."""
    fig, (ax,) = _panels(1, 5.5, 4.2)
    mu = res.fitted
    r = res.standardized_residuals
    ax.scatter(mu, r, **_POINT)
    ax.axhline(0, color="0.4", lw=1, ls="--")
    order = np.argsort(mu)
    k = max(5, len(mu) // 10)
    if len(mu) > k:
        smooth = np.convolve(r[order], np.ones(k) / k, mode="valid")
        ax.plot(mu[order][k // 2 : k // 2 + len(smooth)], smooth, color="C3", lw=1.5)
    ax.set_xlabel("fitted values (mu)")
    ax.set_ylabel("standardised deviance residuals")
    ax.set_title("Mean model: residuals vs fitted")
    return fig


def qq_random_effects(res: HGLMResult, term: str | None = None) -> Figure:
    """Normal QQ plot of the random effects v / sqrt(lambda), one panel per term."""
    names = _terms(res, term)
    fig, axes = _panels(len(names))
    for ax, name in zip(axes, names, strict=True):
        z = np.sort(_standardised_v(res, name))
        p = (np.arange(1, len(z) + 1) - 0.5) / len(z)
        _qq(ax, stats.norm.ppf(p), z, "normal quantiles", "v / sqrt(lambda)")
        ax.set_title(f"Random effects {name}: normal QQ")
    return fig


def halfnormal_random_effects(res: HGLMResult, term: str | None = None) -> Figure:
    """Half-normal QQ plot of |v| / sqrt(lambda), one panel per term."""
    names = _terms(res, term)
    fig, axes = _panels(len(names))
    for ax, name in zip(axes, names, strict=True):
        a = np.sort(np.abs(_standardised_v(res, name)))
        p = (np.arange(1, len(a) + 1) - 0.5) / len(a)
        _qq(ax, stats.halfnorm.ppf(p), a, "half-normal quantiles", "|v| / sqrt(lambda)")
        ax.set_title(f"Random effects {name}: half-normal QQ")
    return fig


def gamma_qq_dispersion(res: HGLMResult) -> Figure:
    """Gamma QQ plot of the dispersion residuals d_i / (phi_i (1 - q_i)) against chi2_1."""
    fig, (ax,) = _panels(1, 5.5, 4.2)
    q = np.minimum(res.leverages, 1 - 1e-8)
    d = res.deviance_components / (res.phi_fitted * (1 - q))
    s = np.sort(d)
    p = (np.arange(1, len(s) + 1) - 0.5) / len(s)
    _qq(ax, stats.gamma.ppf(p, a=0.5, scale=2.0), s, "gamma(1/2, 2) quantiles", "d / (phi (1 - q))")
    ax.set_title("Dispersion model: gamma QQ of deviance components")
    return fig


def leverage_plot(res: HGLMResult) -> Figure:
    """Leverages (diagonal of the augmented hat matrix, data rows) by observation."""
    fig, (ax,) = _panels(1, 5.5, 4.2)
    q = res.leverages
    ax.scatter(np.arange(1, len(q) + 1), q, **_POINT)
    ax.axhline(2 * float(np.mean(q)), color="C3", lw=1, ls="--", label="2 x mean leverage")
    ax.set_xlabel("observation")
    ax.set_ylabel("leverage q")
    ax.set_title("Leverages")
    ax.legend(loc="upper right", frameon=False)
    return fig


def caterpillar(res: HGLMResult, term: str | None = None, level: float = 0.95) -> Figure:
    """Random effects v sorted, with prediction intervals v +- z se, one panel per term."""
    names = _terms(res, term)
    z = float(stats.norm.ppf(0.5 + level / 2))
    fig, axes = _panels(len(names), 4.5, 5.0)
    for ax, name in zip(axes, names, strict=True):
        tab = res.ranef[name].sort_values("v")
        y = np.arange(len(tab))
        ax.errorbar(
            tab["v"], y, xerr=z * tab["se"], fmt="o", ms=3, lw=0.8, color="C0", ecolor="0.5"
        )
        t = next(t for t in res.design.terms if t.name == name)
        ax.axvline(t.family.v_of_psi, color="0.4", lw=1, ls="--")
        if len(tab) <= 40:
            ax.set_yticks(y, [str(i) for i in tab.index], fontsize=7)
        else:
            ax.set_yticks([])
        ax.set_xlabel(f"v ({100 * level:.0f} % prediction interval)")
        ax.set_title(f"Random effects {name}")
    return fig


def diagnostics(res: HGLMResult) -> dict[str, Figure]:
    """Every diagnostic plot of ``res`` (plot.hglm's set), by name."""
    figs = {
        "residuals_vs_fitted": residuals_vs_fitted(res),
        "gamma_qq_dispersion": gamma_qq_dispersion(res),
        "leverages": leverage_plot(res),
    }
    if res.design.terms:
        figs["qq_random_effects"] = qq_random_effects(res)
        figs["halfnormal_random_effects"] = halfnormal_random_effects(res)
        figs["caterpillar"] = caterpillar(res)
    return figs
