"""Simulation with known truth: 95 % intervals of beta and lambda cover the truth.

One test per model class of the notes (normal-normal, binomial-beta, Poisson-gamma,
gamma-inverse-gamma and the binomial, Poisson and gamma GLMMs), alternating crossed
and nested random terms. Each test fits 50 simulated data sets with the default
method (HL(1,1), REML dispersions) and checks that the Wald intervals (beta: estimate
+- 1.96 SE; lambda: on the log scale) cover the truth 85-99 % of the time.
"""

from __future__ import annotations

import warnings
import zlib

import numpy as np
import pandas as pd
import pytest

import hglm
from hglm.families import random_family, response_family

N_REP = 50
BETA = (0.5, 0.4)
LAMBDA = (0.3, 0.2)
PHI = 0.5
Z95 = 1.959963984540054


def simulate(
    rng: np.random.Generator,
    family: str,
    rand: str,
    structure: str,
    n_a: int | None = None,
    n_b: int | None = None,
    reps: int | None = None,
) -> tuple[pd.DataFrame, str]:
    """Data from the HGLM with two random terms: crossed (1|a)+(1|b) or nested (1|a/b).

    Crossed: 15 x 10 cells, one observation each; nested: 12 groups x 5 subgroups x 2.
    (With 5 levels or fewer the log-scale Wald interval of lambda over-covers.)"""
    default = (15, 10, 1) if structure == "crossed" else (12, 5, 2)
    n_a = n_a or default[0]
    n_b = n_b or default[1]
    reps = reps or default[2]
    if structure == "crossed":
        a = np.repeat(np.arange(n_a), n_b * reps)
        b = np.tile(np.repeat(np.arange(n_b), reps), n_a)
        codes, sizes, terms = (a, b), (n_a, n_b), "(1|a) + (1|b)"
    else:
        a = np.repeat(np.arange(n_a), n_b * reps)
        ab = np.repeat(np.arange(n_a * n_b), reps)
        b = ab % n_b
        codes, sizes, terms = (a, ab), (n_a, n_a * n_b), "(1|a/b)"
    df = pd.DataFrame({"a": [f"a{i}" for i in a], "b": [f"b{i}" for i in b]})
    x = rng.normal(size=len(df))
    df["x"] = x
    rf = random_family(rand)
    eta = BETA[0] + BETA[1] * x
    for c, q, lam in zip(codes, sizes, LAMBDA, strict=True):
        u = rf.sample_u(lam, q, rng)
        v = u if rf.name == "normal" else rf.link.fun(u)
        eta = eta + v[c]
    fam = response_family(family)
    mu = fam.link.inverse(eta)
    if family == "gaussian":
        y = rng.normal(mu, np.sqrt(PHI))
    elif family == "poisson":
        y = rng.poisson(mu)
    elif family == "binomial":
        df["n"] = 10
        y = rng.binomial(10, mu)
    else:
        y = rng.gamma(1 / PHI, mu * PHI)
    df["y"] = y
    return df, f"y ~ x + {terms}"


CLASSES = [
    ("gaussian", "normal", "crossed"),
    ("binomial", "beta", "nested"),
    ("poisson", "gamma", "crossed"),
    ("gamma", "inverse_gamma(log)", "nested"),
    ("binomial", "normal", "crossed"),
    ("poisson", "normal", "nested"),
    ("gamma", "normal", "crossed"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "rand", "structure"), CLASSES)
def test_interval_coverage(family: str, rand: str, structure: str) -> None:
    rng = np.random.default_rng(zlib.crc32(f"{family}/{rand}/{structure}".encode()))
    beta_hits, lam_hits, n_fit = 0, 0, 0
    for _ in range(N_REP):
        df, formula = simulate(rng, family, rand, structure)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", hglm.ConvergenceWarning)
            res = hglm.fit(
                formula,
                df,
                family=family,
                rand_family=rand,
                trials="n" if family == "binomial" else None,
            )
        if not res.converged:
            continue
        n_fit += 1
        fx = res.fixef
        lo = fx["estimate"] - Z95 * fx["se"]
        hi = fx["estimate"] + Z95 * fx["se"]
        beta_hits += int(np.sum((lo.to_numpy() <= BETA) & (np.array(BETA) <= hi.to_numpy())))
        vc = res.varcomp
        for name, lam in zip(vc.index, LAMBDA, strict=True):
            log_lam, se = vc.loc[name, "log_lambda"], vc.loc[name, "se_log"]
            lam_hits += int(abs(log_lam - np.log(lam)) <= Z95 * se)
    assert n_fit >= 0.9 * N_REP, f"only {n_fit} of {N_REP} fits converged"
    beta_cov = beta_hits / (2 * n_fit)
    lam_cov = lam_hits / (2 * n_fit)
    assert 0.85 <= beta_cov <= 0.99, f"beta coverage {beta_cov:.3f}"
    assert 0.85 <= lam_cov <= 0.99, f"lambda coverage {lam_cov:.3f}"
