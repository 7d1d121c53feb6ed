"""sum log f(y | u) with its mu-free part summed once per response vector."""

from __future__ import annotations

import numpy as np
import pytest

from hglm.families import response_family
from hglm.likelihood import conditional_loglik

RNG = np.random.default_rng(5)
N = 50
W = RNG.integers(1, 20, N).astype(float)
CASES = {
    "binomial": (RNG.integers(0, 20, N) % (W + 1)) / W,
    "poisson": RNG.poisson(3.0, N).astype(float),
    "gamma": RNG.gamma(2.0, 1.5, N),
    "gaussian": RNG.normal(size=N),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_equals_the_sum_of_the_densities(name) -> None:
    fam = response_family(name)
    y = CASES[name]
    w = W if name == "binomial" else np.ones(N)
    phi = np.full(N, 1.0 if fam.fixed_dispersion else 0.7)
    for mu in (
        (np.full(N, 0.3), np.clip(y, 0.05, 0.95))
        if name == "binomial"
        else (
            np.full(N, 2.0),
            np.abs(y) + 0.5,
        )
    ):
        expected = float(np.sum(fam.loglik(y, mu, phi, w)))
        assert conditional_loglik(fam, y, mu, phi, w) == pytest.approx(expected, rel=1e-13)


def test_a_new_response_is_not_served_from_the_cache() -> None:
    fam = response_family("poisson")
    mu, ones = np.full(N, 2.0), np.ones(N)
    y = CASES["poisson"]
    first = conditional_loglik(fam, y, mu, ones, ones)
    other = y + 1.0
    assert conditional_loglik(fam, other, mu, ones, ones) == pytest.approx(
        float(np.sum(fam.loglik(other, mu, ones, ones))), rel=1e-13
    )
    assert conditional_loglik(fam, y, mu, ones, ones) == first


def test_kernel_keeps_the_zero_log_zero_convention_at_the_boundary() -> None:
    """mu on the boundary (0 or 1) with no successes / failures there: 0 log 0 = 0."""
    fam = response_family("binomial")
    w = np.array([5.0, 5.0, 5.0])
    y = np.array([0.0, 1.0, 0.4])
    mu = np.array([0.0, 1.0, 0.4])
    ll = fam.loglik(y, mu, np.ones(3), w)
    assert np.all(np.isfinite(ll))
    inside = fam.loglik(y, np.array([1e-9, 1 - 1e-9, 0.4]), np.ones(3), w)
    np.testing.assert_allclose(ll, inside, atol=1e-7)
    poisson = response_family("poisson")
    assert np.isfinite(poisson.loglik(np.array([0.0]), np.array([0.0]), np.ones(1), np.ones(1))[0])
