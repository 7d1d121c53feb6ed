"""Simulation with known truth for structured random effects (``slow``): 95 % intervals
of slope variances and their correlation (Wald, ``varcomp_ci``), of a CAR rho and of an
AR(1) rho (profile likelihood, ``profile_ci``) cover the truth in 85-99 % of the replicates.

The designs are small so that a replicate costs well under a second (a profile interval a
few seconds)."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest

import hglm
from tests.hglm.lattices import rook_neighbours

pytestmark = pytest.mark.slow

N_REP = 50


def _fit(formula, df, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return hglm.fit(formula, df, **kwargs)


def _covered(hits: list[bool]) -> float:
    return float(np.mean(hits))


def test_slope_variance_and_correlation_intervals_cover(record_property) -> None:
    rng = np.random.default_rng(20261206)
    groups, per = 40, 8
    g = np.repeat(np.arange(groups), per)
    x = np.tile(np.arange(per, dtype=float), groups)
    sd, corr = np.array([1.0, 0.5]), 0.3
    cov = np.outer(sd, sd) * np.array([[1, corr], [corr, 1]])
    hits: dict[str, list[bool]] = {"(Intercept)": [], "x": [], "corr": []}
    for _ in range(N_REP):
        b = rng.multivariate_normal([0, 0], cov, groups)
        y = 2.0 + 0.5 * x + b[g, 0] + b[g, 1] * x + rng.normal(0, 1.0, len(g))
        res = _fit("y ~ x + (x | g)", pd.DataFrame({"y": y, "x": x, "g": g}))
        ci = res.varcomp_ci()
        var = ci[ci["var2"].isna()].set_index("var1")
        hits["(Intercept)"].append(
            var.loc["(Intercept)", "lower"] < 1.0 < var.loc["(Intercept)", "upper"]
        )
        hits["x"].append(var.loc["x", "lower"] < 0.25 < var.loc["x", "upper"])
        c = ci[ci["var2"].notna()].iloc[0]
        hits["corr"].append(c["lower"] < corr < c["upper"])
    for key, h in hits.items():
        record_property(f"coverage {key}", _covered(h))
        assert 0.85 <= _covered(h) <= 0.99, (key, _covered(h))


def test_car_rho_profile_intervals_cover(record_property) -> None:
    rng = np.random.default_rng(20261207)
    n, per, tau, rho = 8, 3, 1.0, 0.2
    W = rook_neighbours(n)
    q = n * n
    L = np.linalg.cholesky(np.linalg.inv((np.eye(q) - rho * W) / tau))
    area = np.repeat(np.arange(q), per)
    hits = []
    for _ in range(N_REP):
        v = L @ rng.normal(size=q)
        y = 1.0 + v[area] + rng.normal(0, 0.7, len(area))
        res = _fit(
            "y ~ 1 + (1|area)",
            pd.DataFrame({"y": y, "area": area}),
            correlation={"area": hglm.CAR(W)},
            reml=False,
        )
        lo, hi = res.profile_ci("area", "rho")
        hits.append(lo < rho < hi)
    record_property("coverage CAR rho", _covered(hits))
    assert 0.85 <= _covered(hits) <= 0.99, _covered(hits)


def test_ar1_rho_profile_intervals_cover(record_property) -> None:
    rng = np.random.default_rng(20261208)
    tools, weeks, rho, sd = 12, 30, 0.7, 0.4
    tool = np.repeat(np.arange(tools), weeks)
    week = np.tile(np.arange(weeks), tools)
    hits = []
    for _ in range(N_REP):
        e = np.empty((tools, weeks))
        e[:, 0] = rng.normal(0, sd, tools)
        for t in range(1, weeks):
            e[:, t] = rho * e[:, t - 1] + rng.normal(0, sd * np.sqrt(1 - rho**2), tools)
        x = rng.normal(size=tools * weeks)
        p = 1 / (1 + np.exp(-(1.0 + 0.2 * x + e.ravel())))
        good = rng.binomial(200, p)
        df = pd.DataFrame({"good": good, "dies": 200, "x": x, "tool": tool, "week": week})
        res = _fit(
            "good ~ x + ar1(week | tool)",
            df,
            family="binomial",
            trials="dies",
            method="HL(1,1)",
            reml=False,
        )
        lo, hi = res.profile_ci("tool", "rho")
        hits.append(lo < rho < hi)
    record_property("coverage AR(1) rho", _covered(hits))
    assert 0.85 <= _covered(hits) <= 0.99, _covered(hits)
