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

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from hglm.design import RandomTermDesign
from hglm.linalg import SparseCholesky


@dataclass
class MMESolution:
    beta: np.ndarray  # (p,)
    v: np.ndarray  # (q,) levels of the sparse terms, concatenated
    cov_beta: np.ndarray  # (p, p) S^{-1}
    M: np.ndarray  # (q, p) H^{-1} Z'AX
    logdet_H: float
    logdet_S: float


@dataclass
class _TermPair:
    """Where the products of terms k and l land in H: the rows sharing a row pattern add
    their weights into one cell; ``local`` maps each pattern to its cell, ``lower`` and
    ``upper`` are the cells' positions in H.data (the same for a diagonal block)."""

    local: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    n_cells: int
    diagonal: bool  # k == l: each cell once in z_i' S z_i, off-diagonal blocks twice


def _distinct_patterns(cols: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the (n, K) level matrix: (index of each row's pattern, patterns).

    Rows of a lot share their lot, tool and chamber levels, so the patterns are few (one per
    lot) and every product over the rows is a product over the patterns."""
    key = np.zeros(len(cols), dtype=np.int64)
    n_keys = 1
    for k in range(cols.shape[1]):
        key, uniques = pd.factorize(key * (int(cols[:, k].max()) + 1) + cols[:, k])
        n_keys = len(uniques)
    first = np.full(n_keys, -1, dtype=np.int64)
    first[key[::-1]] = np.arange(len(key) - 1, -1, -1)
    return key.astype(np.int64), cols[first]


class MixedModelEquations:
    """Pattern, factor and products of the mixed-model equations for one design.

    Everything over the data rows goes through the distinct row patterns of Z (``Zd``,
    with ``pattern`` mapping rows to them): H = Zd' diag(sum of a per pattern) Zd is
    assembled block by block per pair of terms, never from an n x K^2 array."""

    def __init__(self, X: np.ndarray, terms: list[RandomTermDesign]) -> None:
        self.X = X
        self.n, self.p = X.shape
        self.terms = terms
        sizes = [t.n_levels for t in terms]
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.q = int(self.offsets[-1])
        self._chol: SparseCholesky | None = None
        self._selinv: sp.csc_matrix | None = None
        self._selinv_map: np.ndarray | None = None
        # cumulative time per phase (seconds) and the number of numeric factorisations
        self.timings = dict.fromkeys(("assemble", "factorise", "selected_inverse"), 0.0)
        self.timings["factorisations"] = 0.0
        if self.q == 0:
            self.Zd = sp.csr_matrix((0, 0))
            self.pattern = np.zeros(self.n, dtype=np.int64)
            return
        K = len(terms)
        cols = np.column_stack([t.codes + off for t, off in zip(terms, self.offsets, strict=False)])
        self.pattern, cols_d = _distinct_patterns(cols)
        self.n_patterns = n_d = len(cols_d)
        self.Zd = sp.csr_matrix(
            (np.ones(n_d * K), cols_d.ravel(), np.arange(0, n_d * K + 1, K)),
            shape=(n_d, self.q),
        )
        pattern = (self.Zd.T @ self.Zd + sp.identity(self.q, format="csr")).tocsc()
        pattern.sum_duplicates()
        pattern.sort_indices()
        self._indptr = pattern.indptr
        self._indices = pattern.indices
        colidx = np.repeat(np.arange(self.q, dtype=np.int64), np.diff(pattern.indptr))
        self._keys = keys = colidx * self.q + pattern.indices.astype(np.int64)
        self._diag_pos = np.searchsorted(keys, np.arange(self.q) * self.q + np.arange(self.q))
        self._nnz = len(keys)
        self._pairs: list[_TermPair] = []
        for k in range(K):
            for m in range(k, K):
                r, c = cols_d[:, k], cols_d[:, m]
                local, cells = pd.factorize(r * self.q + c)
                cr, cc = cells // self.q, cells % self.q
                lower = np.searchsorted(keys, cc * self.q + cr)
                upper = np.searchsorted(keys, cr * self.q + cc)
                self._pairs.append(
                    _TermPair(local.astype(np.intp), lower, upper, len(cells), k == m)
                )

    # ------------------------------------------------------------- row products
    def per_pattern(self, values: np.ndarray) -> np.ndarray:
        """Sum of per-row values (n,) or (n, k) over the rows of each pattern."""
        if values.ndim == 1:
            return np.bincount(self.pattern, weights=values, minlength=self.n_patterns)
        return np.column_stack([self.per_pattern(values[:, j]) for j in range(values.shape[1])])

    def zt(self, values: np.ndarray) -> np.ndarray:
        """Z' values for per-row values (n,) or (n, k)."""
        out = self.Zd.T @ self.per_pattern(values)
        return np.asarray(out)

    # ------------------------------------------------------------------ assembly
    def _H(self, a: np.ndarray, w_m: np.ndarray) -> sp.csc_matrix:
        a_d = self.per_pattern(a)
        data = np.zeros(self._nnz)
        for pair in self._pairs:
            s = np.bincount(pair.local, weights=a_d, minlength=pair.n_cells)
            data[pair.lower] = s
            data[pair.upper] = s
        data[self._diag_pos] += w_m
        return sp.csc_matrix((data, self._indices, self._indptr), shape=(self.q, self.q))

    def factor(self, a: np.ndarray, w_m: np.ndarray) -> SparseCholesky:
        t0 = time.perf_counter()
        H = self._H(a, w_m)
        t1 = time.perf_counter()
        if self._chol is None:
            self._chol = SparseCholesky(H)
        else:
            self._chol.refactor(H)  # numeric only: the symbolic analysis is kept
        self._selinv = None
        self.timings["assemble"] += t1 - t0
        self.timings["factorise"] += time.perf_counter() - t1
        self.timings["factorisations"] += 1
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
        X = self.X
        ar = a * r
        AX = X * a[:, None]
        XtAX = X.T @ AX
        if self.q:
            chol = self.factor(a, w_m)
            ZtAX = self.zt(AX)
            bv = self.zt(ar) + w_m * z_m
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
            t0 = time.perf_counter()
            self._selinv = self._chol.selected_inverse()
            self.timings["selected_inverse"] += time.perf_counter() - t0
        return self._selinv

    def row_variances(self, sol: MMESolution) -> np.ndarray:
        """t_i' C^{-1} t_i for every data row t_i = (x_i, z_i), without any n x n object."""
        Xt = self.X - ((self.Zd @ sol.M)[self.pattern] if self.q else 0.0)
        out = np.einsum("ij,jk,ik->i", Xt, sol.cov_beta, Xt) if self.p else np.zeros(self.n)
        if self.q:
            out = out + self.level_row_variances()
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
        S = self._selected_inverse()
        if self._selinv_map is None or len(self._selinv_map) != self._nnz:
            # the selected inverse lives on the factor's pattern, which holds H's: find H's
            # entries in it once (the symbolic factorisation never changes)
            cols = np.repeat(np.arange(self.q, dtype=np.int64), np.diff(S.indptr))
            self._selinv_map = np.searchsorted(cols * self.q + S.indices, self._keys)
        s_h = S.data[self._selinv_map]
        q_d = np.zeros(self.n_patterns)
        for pair in self._pairs:
            cell = s_h[pair.lower]
            q_d += cell[pair.local] if pair.diagonal else 2.0 * cell[pair.local]
        return q_d[self.pattern]

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
        return (self.Zd @ v)[self.pattern] if self.q else np.zeros(self.n)


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
