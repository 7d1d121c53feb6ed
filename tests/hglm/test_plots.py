"""hglm.plots: every diagnostic plot renders, returns a Figure and saves as a PNG."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure

import hglm
from hglm import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def fitted():
    rng = np.random.default_rng(7)
    a = np.repeat(np.arange(8), 6)
    b = np.tile(np.arange(6), 8)
    df = pd.DataFrame({"a": a, "b": b, "x": rng.normal(size=48)})
    df["y"] = np.exp(0.5 + 0.3 * df["x"] + rng.normal(0, 0.4, 8)[a] + rng.normal(0, 0.3, 6)[b])
    df["y"] *= rng.gamma(6, 1 / 6, 48)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", hglm.ConvergenceWarning)
        return hglm.fit("y ~ x + (1|a) + (1|b)", df, family="gamma(log)", method="EQL")


PLOTS = [
    ("residuals_vs_fitted", lambda r: plots.residuals_vs_fitted(r), 1),
    ("qq_random_effects", lambda r: plots.qq_random_effects(r), 2),
    ("halfnormal_random_effects", lambda r: plots.halfnormal_random_effects(r), 2),
    ("gamma_qq_dispersion", lambda r: plots.gamma_qq_dispersion(r), 1),
    ("leverage_plot", lambda r: plots.leverage_plot(r), 1),
    ("caterpillar", lambda r: plots.caterpillar(r), 2),
    ("caterpillar_one_term", lambda r: plots.caterpillar(r, term="a", level=0.9), 1),
]


@pytest.mark.parametrize(("name", "draw", "n_axes"), PLOTS, ids=[p[0] for p in PLOTS])
def test_plot_saves_a_png(fitted, tmp_path, name, draw, n_axes):
    fig = draw(fitted)
    assert isinstance(fig, Figure)
    assert len(fig.axes) == n_axes
    for ax in fig.axes:
        assert ax.get_title() and (ax.collections or ax.lines)
    path = tmp_path / f"{name}.png"
    fig.savefig(path)
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC


def test_caterpillar_intervals_are_the_prediction_intervals(fitted):
    fig = plots.caterpillar(fitted, term="a", level=0.95)
    bars = fig.axes[0].collections[-1].get_segments()
    tab = fitted.ranef["a"].sort_values("v")
    half = np.array([(s[1, 0] - s[0, 0]) / 2 for s in bars])
    np.testing.assert_allclose(half, 1.959964 * tab["se"].to_numpy(), rtol=1e-5)


def test_qq_points_are_the_standardised_random_effects(fitted):
    fig = plots.qq_random_effects(fitted, term="b")
    pts = fig.axes[0].collections[0].get_offsets()
    lam = fitted.varcomp.loc["b", "lambda"]
    np.testing.assert_allclose(np.sort(pts[:, 1]), np.sort(fitted.ranef["b"]["v"] / np.sqrt(lam)))


def test_diagnostics_returns_every_plot(fitted, tmp_path):
    figs = plots.diagnostics(fitted)
    assert set(figs) == {
        "residuals_vs_fitted",
        "gamma_qq_dispersion",
        "leverages",
        "qq_random_effects",
        "halfnormal_random_effects",
        "caterpillar",
    }
    for name, fig in figs.items():
        fig.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 0


def test_unknown_term_is_named(fitted):
    with pytest.raises(ValueError, match="unknown random term 'zz'"):
        plots.caterpillar(fitted, term="zz")
