"""Covariance structures: Q(theta), log det Q and their derivatives against dense numpy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from hglm.covariance import AR1, CAR, SAR, Precision, Unstructured
from tests.hglm.conftest import DATA
from tests.hglm.lattices import rook_neighbours


def _check_derivatives(s, theta: np.ndarray) -> None:
    eps = 1e-6
    derivs = s.derivatives(theta)
    dlog = s.dlogdet(theta)
    for i in range(len(theta)):
        e = np.zeros_like(theta)
        e[i] = eps
        num = (s.values(theta + e) - s.values(theta - e)) / (2 * eps)
        np.testing.assert_allclose(derivs[i], num, rtol=1e-5, atol=1e-7)
        num_ld = (s.logdet(theta + e) - s.logdet(theta - e)) / (2 * eps)
        assert dlog[i] == pytest.approx(num_ld, rel=1e-5, abs=1e-6)


def _check_logdet(s, theta: np.ndarray) -> None:
    Q = s.precision(theta).toarray()
    np.testing.assert_allclose(Q, Q.T, atol=1e-12)
    sign, ld = np.linalg.slogdet(Q)
    assert sign > 0
    assert s.logdet(theta) == pytest.approx(ld, rel=1e-9, abs=1e-9)


def test_unstructured_is_block_diagonal_sigma_inverse() -> None:
    s = Unstructured(3, 4)
    theta = np.array([0.3, 0.5, -0.2, -0.4, 0.1, 0.2])
    L = np.array([[np.exp(0.3), 0, 0], [0.5, np.exp(-0.2), 0], [-0.4, 0.1, np.exp(0.2)]])
    Sigma = L @ L.T
    dense = np.kron(np.eye(4), np.linalg.inv(Sigma))
    np.testing.assert_allclose(s.precision(theta).toarray(), dense, atol=1e-12)
    np.testing.assert_allclose(s.sigma(theta), Sigma)
    _check_logdet(s, theta)
    _check_derivatives(s, theta)
    # rescaling the covariance by c divides Q by c
    c = 2.5
    np.testing.assert_allclose(s.sigma(s.rescale(theta, np.log(c))), c * Sigma, rtol=1e-12)
    nat = s.natural(theta)
    assert nat["corr"][0, 1] == pytest.approx(Sigma[0, 1] / np.sqrt(Sigma[0, 0] * Sigma[1, 1]))


def test_ar1_matches_the_dense_covariance() -> None:
    T, G = 6, 3
    s = AR1(T, G)
    s2, rho = 0.7, 0.6
    theta = np.array([np.log(s2), np.arctanh(rho)])
    t = np.arange(T)
    cov = s2 * rho ** np.abs(t[:, None] - t[None, :])
    dense = np.kron(np.eye(G), np.linalg.inv(cov))
    np.testing.assert_allclose(s.precision(theta).toarray(), dense, atol=1e-10)
    _check_logdet(s, theta)
    _check_derivatives(s, theta)
    assert s.natural(theta) == pytest.approx({"variance": s2, "rho": rho})
    one = AR1(1, 2)
    np.testing.assert_allclose(one.precision(theta).toarray(), np.eye(2) / s2)
    _check_derivatives(one, theta)


@pytest.mark.parametrize("kind", [CAR, SAR])
def test_car_and_sar_match_dense_formulas(kind) -> None:
    W = rook_neighbours(4)
    levels = np.arange(16)
    s = kind(W).bind(levels, "area")
    tau, rho = 0.4, 0.2
    theta = s.theta_of(tau, rho)
    A = np.eye(16) - rho * W
    dense = (A if kind is CAR else A.T @ A) / tau
    np.testing.assert_allclose(s.precision(theta).toarray(), dense, atol=1e-12)
    assert s.natural(theta) == pytest.approx({"tau": tau, "rho": rho})
    _check_logdet(s, theta)
    _check_derivatives(s, theta)
    omega = np.linalg.eigvalsh(W)
    assert s.rho_lo == pytest.approx(1 / omega.min(), rel=1e-6)
    assert s.rho_hi == pytest.approx(1 / omega.max(), rel=1e-6)
    # rho = 0 at the start
    assert s.natural(s.start(0.3))["rho"] == pytest.approx(0.0, abs=1e-12)


def test_neighbour_dataframe_is_reordered_to_the_levels() -> None:
    W = rook_neighbours(3)
    names = [f"a{i}" for i in range(9)]
    order = np.random.default_rng(1).permutation(9)
    frame = pd.DataFrame(W[order][:, order], index=[names[i] for i in order])
    s = CAR(frame).bind(np.array(names, dtype=object), "area")
    np.testing.assert_allclose(s.W.toarray(), W)


def test_cancer_neighbours_bind_and_have_a_valid_rho_range() -> None:
    W = pd.read_csv(DATA / "cancer_nbr.csv").to_numpy()
    s = CAR(sp.csr_matrix(W)).bind(np.arange(1, 57), "area")
    assert s.rho_lo < 0 < 0.174 < s.rho_hi


@pytest.mark.parametrize(
    ("W", "message"),
    [
        (np.ones((3, 3)), "zero diagonal"),
        (np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]]), "symmetric"),
        (np.zeros((2, 3)), "square"),
        (np.array([[0, np.nan], [np.nan, 0]]), "missing"),
    ],
)
def test_bad_neighbour_matrices_are_rejected(W, message) -> None:
    with pytest.raises(ValueError, match=message):
        CAR(W).bind(np.arange(W.shape[0]), "area")


def test_wrong_number_of_levels_is_rejected() -> None:
    with pytest.raises(ValueError, match="has 9 rows, the term area has 4 levels"):
        CAR(rook_neighbours(3)).bind(np.arange(4), "area")


def test_precision_scales_a_given_matrix() -> None:
    W = rook_neighbours(3)
    Q0 = sp.csc_matrix(np.eye(9) * 4 - W)
    s = Precision(Q0).bind(np.arange(9), "site")
    theta = np.array([np.log(0.5)])
    np.testing.assert_allclose(s.precision(theta).toarray(), Q0.toarray() / 0.5)
    _check_logdet(s, theta)
    _check_derivatives(s, theta)
    with pytest.raises(ValueError, match="not positive definite"):
        Precision(sp.csc_matrix(np.eye(9) - W)).bind(np.arange(9), "site")
