"""The sparse mixed-model equations of the augmented GLM, solved by a block (Schur) elimination.

Unknowns: beta (p, dense) and the levels of the random terms (q, sparse). With
data-row weights ``a`` and random-row weights ``W_M`` the coefficient matrix is

    C = [[X'AX, X'AZ], [Z'AX, H]],   H = Z'AZ + diag(W_M),

and only H is factorised (CHOLMOD, fill-reducing order and symbolic analysis
done once; every later call refactors numerically). beta comes from the p x p
Schur complement S = X'AX - X'AZ H^{-1} Z'AX, so

    Var(beta) = S^{-1},   log det C = log det H + log det S.

A term with one level per row (observation level) is never put into H: its
block of C is diagonal, so it is eliminated row by row before (see
``eliminate_observation_term``): nothing in here is n x n or has q = n columns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from hglm.design import RandomTermDesign
from hglm.linalg import SparseCholesky, row_quadratic_forms


@dataclass
class MMESolution:
    beta: np.ndarray  # (p,)
    v: np.ndarray  # (q,) levels of the sparse terms, concatenated
    cov_beta: np.ndarray  # (p, p) S^{-1}
    M: np.ndarray  # (q, p) H^{-1} Z'AX
    logdet_H: float
    logdet_S: float


class MixedModelEquations:
    """Pattern, factor and products of the mixed-model equations for one design."""

    def __init__(self, X: np.ndarray, terms: list[RandomTermDesign]) -> None:
        self.X = X
        self.n, self.p = X.shape
        self.terms = terms
        sizes = [t.n_levels for t in terms]
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.q = int(self.offsets[-1])
        self._chol: SparseCholesky | None = None
        self._selinv: sp.csc_matrix | None = None
        if self.q == 0:
            self.Z = sp.csr_matrix((self.n, 0))
            return
        K = len(terms)
        cols = np.column_stack([t.codes + off for t, off in zip(terms, self.offsets, strict=False)])
        self.cols = cols  # (n, K), increasing along each row
        self.Z = sp.csr_matrix(
            (np.ones(self.n * K), cols.ravel(), np.arange(0, self.n * K + 1, K)),
            shape=(self.n, self.q),
        )
        # Pattern of Z'Z + I and, for every row, where its K*K products land in H.data
        pattern = (self.Z.T @ self.Z + sp.identity(self.q, format="csr")).tocsc()
        pattern.sum_duplicates()
        pattern.sort_indices()
        self._indptr = pattern.indptr
        self._indices = pattern.indices
        colidx = np.repeat(np.arange(self.q, dtype=np.int64), np.diff(pattern.indptr))
        keys = colidx * self.q + pattern.indices.astype(np.int64)
        r = np.repeat(cols, K, axis=1)  # (n, K*K) row index
        c = np.tile(cols, (1, K))  # (n, K*K) column index
        self._row_pos = np.searchsorted(keys, (c * self.q + r).ravel())
        self._diag_pos = np.searchsorted(keys, np.arange(self.q) * self.q + np.arange(self.q))
        self._nnz = len(keys)
        self._K = K

    # ------------------------------------------------------------------ assembly
    def _H(self, a: np.ndarray, w_m: np.ndarray) -> sp.csc_matrix:
        data = np.bincount(
            self._row_pos, weights=np.repeat(a, self._K * self._K), minlength=self._nnz
        )
        data[self._diag_pos] += w_m
        return sp.csc_matrix((data, self._indices, self._indptr), shape=(self.q, self.q))

    def factor(self, a: np.ndarray, w_m: np.ndarray) -> SparseCholesky:
        H = self._H(a, w_m)
        if self._chol is None:
            self._chol = SparseCholesky(H)
        else:
            self._chol.refactor(H)
        self._selinv = None
        return self._chol

    # --------------------------------------------------------------------- solve
    def solve(
        self,
        a: np.ndarray,
        r: np.ndarray,
        w_m: np.ndarray,
        z_m: np.ndarray,
        beta_fixed: np.ndarray | None = None,
    ) -> MMESolution:
        """Solve C [beta; v] = [X'A r; Z'A r + W_M z_m] (beta held at beta_fixed if given)."""
        X, Z = self.X, self.Z
        ar = a * r
        AX = X * a[:, None]
        XtAX = X.T @ AX
        if self.q:
            chol = self.factor(a, w_m)
            ZtAX = np.asarray(Z.T @ AX)
            bv = np.asarray(Z.T @ ar).ravel() + w_m * z_m
            logdet_H = chol.logdet()
            if self.p:
                M = chol.solve(ZtAX).reshape(self.q, self.p)
            else:
                M = np.zeros((self.q, 0))
            hbv = chol.solve(bv).ravel()
        else:
            ZtAX = np.zeros((0, self.p))
            bv = np.zeros(0)
            M = np.zeros((0, self.p))
            hbv = np.zeros(0)
            logdet_H = 0.0
        schur = XtAX - ZtAX.T @ M
        if self.p:
            try:
                cf = scipy.linalg.cho_factor(schur, lower=True)
            except np.linalg.LinAlgError as err:
                raise np.linalg.LinAlgError(
                    "the fixed-effects block of the mixed-model equations is singular"
                ) from err
            logdet_S = 2.0 * float(np.sum(np.log(np.diag(cf[0]))))
            cov_beta = scipy.linalg.cho_solve(cf, np.eye(self.p))
        else:
            logdet_S = 0.0
            cov_beta = np.zeros((0, 0))
        if beta_fixed is None:
            beta = cov_beta @ (X.T @ ar - M.T @ bv) if self.p else np.zeros(0)
        else:
            beta = np.asarray(beta_fixed, dtype=float)
        v = hbv - M @ beta if self.q else np.zeros(0)
        return MMESolution(beta, v, cov_beta, M, logdet_H, logdet_S)

    # ----------------------------------------------------------- inverse pieces
    def _selected_inverse(self) -> sp.csc_matrix:
        if self._selinv is None:
            assert self._chol is not None
            self._selinv = self._chol.selected_inverse()
        return self._selinv

    def row_variances(self, sol: MMESolution) -> np.ndarray:
        """t_i' C^{-1} t_i for every data row t_i = (x_i, z_i), without any n x n object."""
        Xt = self.X - (self.Z @ sol.M if self.q else 0.0)
        out = np.einsum("ij,jk,ik->i", Xt, sol.cov_beta, Xt) if self.p else np.zeros(self.n)
        if self.q:
            out = out + row_quadratic_forms(self.Z, self._selected_inverse())
        return out

    def level_variances(self, sol: MMESolution) -> np.ndarray:
        """diag of the v-block of C^{-1}: prediction variances of the random levels."""
        if not self.q:
            return np.zeros(0)
        S = self._selected_inverse()
        diag = S.diagonal()
        if self.p:
            diag = diag + np.einsum("ij,jk,ik->i", sol.M, sol.cov_beta, sol.M)
        return diag

    def level_row_variances(self) -> np.ndarray:
        """z_i' H^{-1} z_i for every data row (beta held fixed), from the selected inverse."""
        if not self.q:
            return np.zeros(self.n)
        return row_quadratic_forms(self.Z, self._selected_inverse())

    def level_inverse_diagonal(self) -> np.ndarray:
        """diag(H^{-1}) (beta held fixed)."""
        return self._selected_inverse().diagonal() if self.q else np.zeros(0)

    def solve_levels(self, b: np.ndarray) -> np.ndarray:
        """H^{-1} b with the current factor."""
        if not self.q:
            return np.zeros(0)
        assert self._chol is not None
        return self._chol.solve(b).ravel()

    def solve_joint(
        self, sol: MMESolution, b_beta: np.ndarray, b_v: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """C^{-1} [b_beta; b_v] by the Schur complement of the current factor."""
        hb = self.solve_levels(b_v)
        beta = sol.cov_beta @ (b_beta - sol.M.T @ b_v) if self.p else np.zeros(0)
        v = hb - sol.M @ beta if self.q else np.zeros(0)
        return beta, v

    def split(self, v: np.ndarray) -> list[np.ndarray]:
        return [v[self.offsets[k] : self.offsets[k + 1]] for k in range(len(self.terms))]

    def eta_random(self, v: np.ndarray) -> np.ndarray:
        return np.asarray(self.Z @ v).ravel() if self.q else np.zeros(self.n)


@dataclass
class ObservationElimination:
    """Data rows after a one-level-per-row term e was eliminated from the equations.

    For row i with data weight a, quasi-row weight m and working responses z
    (data) and z_e (quasi row): d = a + m, the reduced weight is a m / d and
    the reduced working response z - z_e; afterwards e = (a (z - t'theta) + m z_e) / d.
    """

    a: np.ndarray
    m: np.ndarray
    z: np.ndarray
    z_e: np.ndarray

    @property
    def d(self) -> np.ndarray:
        return self.a + self.m

    @property
    def reduced_weight(self) -> np.ndarray:
        return self.a * self.m / self.d

    @property
    def reduced_response(self) -> np.ndarray:
        return self.z - self.z_e

    def back_substitute(self, fitted_rest: np.ndarray) -> np.ndarray:
        return (self.a * (self.z - fitted_rest) + self.m * self.z_e) / self.d

    def data_leverage(self, r: np.ndarray) -> np.ndarray:
        d = self.d
        return self.a * ((self.m / d) ** 2 * r + 1 / d)

    def quasi_leverage(self, r: np.ndarray) -> np.ndarray:
        d = self.d
        return self.m * (1 / d + (self.a / d) ** 2 * r)

    def prediction_variance(self, r: np.ndarray) -> np.ndarray:
        d = self.d
        return 1 / d + (self.a / d) ** 2 * r
