"""Response and random-effect families: parsing, links, densities and their derivatives."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import integrate, stats

from hglm.families import random_family, response_family


@pytest.mark.parametrize(
    ("spec", "link", "name", "link_name"),
    [
        ("binomial(probit)", None, "binomial", "probit"),
        ("binomial", "cloglog", "binomial", "cloglog"),
        ("Gamma", None, "gamma", "log"),
        ("gamma(inverse)", None, "gamma", "inverse"),
        ("gaussian(log)", None, "gaussian", "log"),
        ("poisson", None, "poisson", "log"),
    ],
)
def test_response_family_names(spec: str, link: str | None, name: str, link_name: str) -> None:
    fam = response_family(spec, link)
    assert (fam.name, fam.link.name) == (name, link_name)


@pytest.mark.parametrize(
    ("spec", "name", "link_name"),
    [
        ("normal", "normal", "identity"),
        ("gaussian", "normal", "identity"),
        ("beta", "beta", "logit"),
        ("gamma(log)", "gamma", "log"),
        ("inverse_gamma", "inverse_gamma", "reciprocal"),
        ("inverse.gamma(log)", "inverse_gamma", "log"),
    ],
)
def test_random_family_names(spec: str, name: str, link_name: str) -> None:
    fam = random_family(spec)
    assert (fam.name, fam.link.name) == (name, link_name)


@pytest.mark.parametrize("spec", ["poisson(identity)", "tweedie", "binomial(log"])
def test_bad_response_families(spec: str) -> None:
    with pytest.raises(ValueError):
        response_family(spec)


@pytest.mark.parametrize("spec", ["beta(probit)", "lognormal", "normal(log)"])
def test_bad_random_families(spec: str) -> None:
    with pytest.raises(ValueError):
        random_family(spec)


@pytest.mark.parametrize("link", ["identity", "log", "logit", "probit", "cloglog", "inverse"])
def test_links_invert_and_differentiate(link: str) -> None:
    fam = {
        "identity": "gaussian",
        "log": "poisson",
        "logit": "binomial",
        "probit": "binomial",
        "cloglog": "binomial",
        "inverse": "gamma",
    }[link]
    lk = response_family(fam, link).link
    eta = np.linspace(0.2, 1.5, 7)
    np.testing.assert_allclose(lk.fun(lk.inverse(eta)), eta, rtol=1e-10)
    h = 1e-6
    numeric = (lk.inverse(eta + h) - lk.inverse(eta - h)) / (2 * h)
    np.testing.assert_allclose(lk.mu_eta(eta), numeric, rtol=1e-6)


@pytest.mark.parametrize(
    ("spec", "y", "w"),
    [
        ("gaussian", np.array([0.3, -1.2, 2.0]), np.array([1.0, 2.0, 1.0])),
        ("poisson", np.array([0.0, 3.0, 7.0]), np.ones(3)),
        ("binomial", np.array([0.0, 0.3, 1.0]), np.array([5.0, 10.0, 4.0])),
        ("gamma", np.array([0.5, 1.7, 3.2]), np.ones(3)),
    ],
)
def test_deviance_is_twice_the_loglik_drop_from_the_saturated_fit(spec, y, w) -> None:
    fam = response_family(spec)
    mu = np.array([0.4, 0.6, 2.5]) if spec != "binomial" else np.array([0.2, 0.5, 0.7])
    phi = np.ones(3)
    saturated_mu = {"gaussian": y, "binomial": np.clip(y, 1e-12, 1 - 1e-12)}.get(
        spec, np.clip(y, 1e-12, None)
    )
    sat = fam.loglik(y, saturated_mu, phi, w)
    expected = 2 * (sat - fam.loglik(y, mu, phi, w))
    np.testing.assert_allclose(fam.deviance(y, mu, w), expected, rtol=1e-6, atol=1e-8)


def test_loglik_matches_scipy() -> None:
    mu = np.array([0.5, 2.0])
    y = np.array([1.0, 3.0])
    np.testing.assert_allclose(
        response_family("poisson").loglik(y, mu, np.ones(2), np.ones(2)),
        stats.poisson.logpmf(y, mu),
    )
    phi = np.array([0.3, 0.3])
    np.testing.assert_allclose(
        response_family("gamma").loglik(y, mu, phi, np.ones(2)),
        stats.gamma.logpdf(y, a=1 / phi, scale=mu * phi),
    )
    np.testing.assert_allclose(
        response_family("binomial").loglik(
            np.array([0.3]), np.array([0.4]), np.ones(1), np.array([10.0])
        ),
        stats.binom.logpmf(3, 10, 0.4),
    )


@pytest.mark.parametrize("spec", ["normal", "beta", "gamma", "inverse_gamma(log)", "inverse_gamma"])
def test_random_density_of_v_integrates_to_one(spec: str) -> None:
    fam = random_family(spec)
    lam = np.array(0.4)
    lo, hi = (1e-6, 60.0) if fam.link.name == "reciprocal" else (-40.0, 40.0)
    total, _ = integrate.quad(
        lambda v: float(np.exp(fam.logdensity(np.array(v), lam))), lo, hi, limit=200
    )
    assert total == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("spec", ["normal", "beta", "gamma", "inverse_gamma(log)", "inverse_gamma"])
def test_exact_rows_are_newton_steps_of_the_density(spec: str) -> None:
    fam = random_family(spec)
    lam = np.full(3, 0.3)
    v = np.array([0.4, 0.9, 1.3]) if fam.link.name == "reciprocal" else np.array([-0.7, 0.1, 0.8])
    h = 1e-4
    f = lambda x: fam.logdensity(x, lam)  # noqa: E731
    score = (f(v + h) - f(v - h)) / (2 * h)
    curvature = -(f(v + h) - 2 * f(v) + f(v - h)) / h**2
    weight, z = fam.exact_rows(v, lam)
    np.testing.assert_allclose(weight, curvature, rtol=1e-4)
    np.testing.assert_allclose(z, v + score / curvature, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("spec", ["normal", "beta", "gamma", "inverse_gamma"])
def test_quasi_rows_equal_exact_rows_on_the_canonical_scale(spec: str) -> None:
    fam = random_family(spec)
    lam = np.full(2, 0.5)
    v = np.array([0.5, 1.2])
    np.testing.assert_allclose(fam.quasi_rows(v, lam), fam.exact_rows(v, lam))


@pytest.mark.parametrize("spec", ["normal", "beta", "gamma", "inverse_gamma(log)"])
def test_sampled_u_has_mean_psi(spec: str) -> None:
    fam = random_family(spec)
    u = fam.sample_u(0.2, 200_000, np.random.default_rng(3))
    assert u.mean() == pytest.approx(fam.psi, abs=0.01)


def test_observed_weight_is_the_curvature_of_the_loglik() -> None:
    fam = response_family("gamma", "log")
    y = np.array([0.5, 2.0, 4.0])
    eta = np.array([0.1, 0.4, 1.2])
    w = np.ones(3)
    h = 1e-4
    ll = lambda e: fam.loglik(y, fam.link.inverse(e), np.ones(3), w)  # noqa: E731
    curvature = -(ll(eta + h) - 2 * ll(eta) + ll(eta - h)) / h**2
    np.testing.assert_allclose(
        fam.observed_weight(y, eta, fam.link.inverse(eta), w), curvature, rtol=1e-5
    )
