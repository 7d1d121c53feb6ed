"""The mixed-model equations of structured random effects: H = Z'AZ + Q on a pattern fixed
once, and the Schur complement of beta.

H is factored by CHOLMOD (symbolic analysis once, numeric refactorisations after), or, when
its pattern allows, faster: equal dense diagonal blocks (one slope term: a stack of small
Cholesky factors) or tridiagonal blocks (an AR(1) term alone: recurrences over the times,
vectorised over the groups). The entries of H^{-1} on H's pattern (the selected inverse)
give the leverages, tr(H^{-1} dQ) and the prediction variances; nothing is q x q dense.

May import: ``hglm.linalg``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from hglm.linalg import NotPositiveDefiniteError, SparseCholesky, fixed_effects_block

# H made of equal diagonal blocks of at most this order (one slope term and nothing crossed)
# is factored as a stack of dense blocks, and H made of tridiagonal blocks (an AR(1) term alone)
# by a recurrence over the times, vectorised over the groups: CHOLMOD's supernodal selected
# inverse loops in Python over thousands of tiny supernodes.
_MAX_BLOCK = 32


def _block_order(keys: np.ndarray, q: int) -> int | None:
    """The order b if H's pattern lies within equal consecutive diagonal blocks of order b
    (b < q), else None."""
    col, row = keys // q, keys % q
    # a column starts a block when no earlier column reaches it
    first = np.zeros(q, dtype=bool)
    first[0] = True
    last_reach = np.full(q, -1, dtype=np.int64)
    np.maximum.at(last_reach, col, np.maximum(row, col))
    reach = np.maximum.accumulate(last_reach)
    first[1:] = reach[:-1] < np.arange(1, q)
    sizes = np.diff(np.append(np.flatnonzero(first), q))
    b = int(sizes[0])
    return b if np.all(sizes == b) and b < q else None


def _block_layout(keys: np.ndarray, q: int) -> tuple[str, int, np.ndarray] | None:
    """("dense", b, position of each pattern entry in a (q/b, b, b) stack) for blocks of order
    b <= _MAX_BLOCK; ("tridiagonal", b, keys) for tridiagonal blocks; else None."""
    b = _block_order(keys, q)
    if b is None:
        return None
    col, row = keys // q, keys % q
    if b > 2 and np.all(np.abs(row - col) <= 1):
        return "tridiagonal", b, keys
    if b > _MAX_BLOCK:
        return None
    g = col // b
    return "dense", b, g * b * b + (row % b) * b + (col % b)


class TridiagonalFactor:
    """H as G tridiagonal blocks of order b: Cholesky, solves and the inverse on the band by
    recurrences over the b positions, each step vectorised over the G blocks."""

    @classmethod
    def build(cls, data: np.ndarray, b: int, keys: np.ndarray, q: int) -> TridiagonalFactor:
        self = cls.__new__(cls)
        self.b, self.q = b, q
        col, row = keys // q, keys % q
        diag = np.zeros(q)
        sub = np.zeros(q)
        on = row == col
        diag[row[on]] = data[on]
        below = row == col + 1
        sub[col[below]] = data[below]
        G = q // b
        # positions first: every step of the recurrences reads contiguous rows
        a, e = diag.reshape(G, b).T.copy(), sub.reshape(G, b).T.copy()
        d = np.empty((b, G))
        lo = np.zeros((b, G))  # L[t + 1, t]
        with np.errstate(invalid="ignore"):
            d[0] = np.sqrt(a[0])
            for t in range(1, b):
                lo[t - 1] = e[t - 1] / d[t - 1]
                d[t] = np.sqrt(a[t] - lo[t - 1] ** 2)
        if not np.all(d > 0):
            raise NotPositiveDefiniteError("matrix is not positive definite (a tridiagonal block)")
        self.d, self.lo = d, lo
        self._diag_pos = np.minimum(row, col)
        self._is_diag = on
        return self

    def logdet(self) -> float:
        return 2.0 * float(np.sum(np.log(self.d)))

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        b, G = self.d.shape
        r = np.asarray(rhs, dtype=float).reshape(G, b, -1).transpose(1, 0, 2).copy()
        d, lo = self.d[:, :, None], self.lo[:, :, None]
        y = r  # forward, in place
        y[0] /= d[0]
        for t in range(1, b):
            y[t] -= lo[t - 1] * y[t - 1]
            y[t] /= d[t]
        x = y  # backward, in place
        x[b - 1] /= d[b - 1]
        for t in range(b - 2, -1, -1):
            x[t] -= lo[t] * x[t + 1]
            x[t] /= d[t]
        return x.transpose(1, 0, 2).reshape(rhs.shape)

    def inverse_entries(self) -> np.ndarray:
        """H^{-1} at every pattern entry (the band), by Takahashi's recurrence."""
        b, G = self.d.shape
        d, lo = self.d, self.lo
        zd = np.empty((b, G))
        zs = np.zeros((b, G))  # zs[t] = Z[t + 1, t]
        zd[b - 1] = 1.0 / d[b - 1] ** 2
        for t in range(b - 2, -1, -1):
            zs[t] = -(lo[t] / d[t]) * zd[t + 1]
            zd[t] = 1.0 / d[t] ** 2 - (lo[t] / d[t]) * zs[t]
        zd, zs = zd.T, zs.T  # back to group-major, as v is laid out
        zd_flat, zs_flat = zd.ravel(), zs.ravel()
        return np.where(self._is_diag, zd_flat[self._diag_pos], zs_flat[self._diag_pos])


class BlockFactor:
    """H as a stack of dense b x b diagonal blocks: batched LAPACK Cholesky, solves and inverse."""

    def __init__(self, data: np.ndarray, b: int, where: np.ndarray) -> None:
        self.b = b
        self._where = where
        blocks = np.zeros(where.max() // (b * b) * b * b + b * b)
        blocks[where] = data
        self.blocks = blocks.reshape(-1, b, b)
        try:
            self.L = np.linalg.cholesky(self.blocks)
        except np.linalg.LinAlgError as err:
            raise NotPositiveDefiniteError(
                "matrix is not positive definite (a diagonal block)"
            ) from err

    def logdet(self) -> float:
        return 2.0 * float(np.sum(np.log(np.diagonal(self.L, axis1=1, axis2=2))))

    def solve(self, rhs: np.ndarray) -> np.ndarray:
        G, b = self.blocks.shape[:2]
        r = np.asarray(rhs, dtype=float).reshape(G, b, -1)
        out = np.linalg.solve(self.blocks, r)
        return out.reshape(rhs.shape)

    def inverse_entries(self) -> np.ndarray:
        """H^{-1} at every pattern entry (blocks invert on their own)."""
        G, b = self.blocks.shape[:2]
        eye = np.broadcast_to(np.eye(b), (G, b, b))
        inv = np.linalg.solve(self.blocks, eye)
        return inv.reshape(-1)[self._where]


@dataclass
class Solution:
    beta: np.ndarray
    v: np.ndarray
    cov_beta: np.ndarray  # S^{-1}
    M: np.ndarray  # H^{-1} Z'AX
    logdet_H: float
    logdet_S: float


class SparseMME:
    """H = Z'AZ + Q on one fixed pattern; the Schur complement of beta."""

    def __init__(self, X: np.ndarray, Z: sp.csr_matrix, q_rows: np.ndarray, q_cols: np.ndarray):
        self.X = X
        self.Z = Z = Z.tocsr()
        Z.sort_indices()
        self.n, self.q = Z.shape
        self.p = X.shape[1]
        q = self.q
        # every ordered pair of non-zeros within a row of Z: Z'AZ = sum_i a_i z_i z_i'
        nnz_row = np.diff(Z.indptr)
        rows_l, a_l, b_l = [], [], []
        for m in np.unique(nnz_row):
            if m == 0:
                continue
            rows = np.flatnonzero(nnz_row == m)
            pos = Z.indptr[rows][:, None] + np.arange(m)[None, :]
            ia, ib = np.meshgrid(np.arange(m), np.arange(m), indexing="ij")
            rows_l.append(np.repeat(rows, m * m))
            a_l.append(pos[:, ia.ravel()].ravel())
            b_l.append(pos[:, ib.ravel()].ravel())
        self._pair_row = np.concatenate(rows_l) if rows_l else np.zeros(0, dtype=np.int64)
        pa = np.concatenate(a_l) if a_l else np.zeros(0, dtype=np.int64)
        pb = np.concatenate(b_l) if b_l else np.zeros(0, dtype=np.int64)
        self._pair_prod = Z.data[pa] * Z.data[pb]
        pair_keys = Z.indices[pb].astype(np.int64) * q + Z.indices[pa]  # col * q + row
        q_keys = q_cols.astype(np.int64) * q + q_rows
        diag = np.arange(q, dtype=np.int64) * (q + 1)
        keys = np.unique(np.concatenate([pair_keys, q_keys, diag]))
        self._keys = keys
        self._pair_pos = np.searchsorted(keys, pair_keys)
        self._q_pos = np.searchsorted(keys, q_keys)
        self._indices = (keys % q).astype(np.int32)
        self._indptr = np.searchsorted(keys // q, np.arange(q + 1)).astype(np.int32)
        self._chol: SparseCholesky | BlockFactor | TridiagonalFactor | None = None
        self._selected_map: np.ndarray | None = None
        self._inverse: np.ndarray | None = None
        self._block = _block_layout(keys, q)
        self.n_factor = 0

    def factor(
        self, a: np.ndarray, q_values: np.ndarray
    ) -> SparseCholesky | BlockFactor | TridiagonalFactor:
        nnz = len(self._keys)
        data = np.bincount(
            self._pair_pos, weights=a[self._pair_row] * self._pair_prod, minlength=nnz
        ) + np.bincount(self._q_pos, weights=q_values, minlength=nnz)
        self._inverse = None
        if self._block is not None and self._block[0] == "dense":
            self._chol = BlockFactor(data, *self._block[1:])
        elif self._block is not None:
            self._chol = TridiagonalFactor.build(data, self._block[1], self._keys, self.q)
        else:
            H = sp.csc_matrix((data, self._indices, self._indptr), shape=(self.q, self.q))
            if self._chol is None:
                self._chol = SparseCholesky(H)
            else:
                self._chol.refactor(H)
        self.n_factor += 1
        return self._chol

    @property
    def chol(self) -> SparseCholesky | BlockFactor | TridiagonalFactor:
        assert self._chol is not None
        return self._chol

    def _inverse_on_pattern(self) -> np.ndarray:
        """H^{-1} on H's pattern (``_keys`` order): the selected inverse of the factor."""
        if self._inverse is None:
            chol = self.chol
            if isinstance(chol, BlockFactor | TridiagonalFactor):
                self._inverse = chol.inverse_entries()
            else:
                S = chol.selected_inverse()
                if self._selected_map is None:
                    col = np.repeat(np.arange(self.q, dtype=np.int64), np.diff(S.indptr))
                    self._selected_map = np.searchsorted(col * self.q + S.indices, self._keys)
                self._inverse = S.data[self._selected_map]
        return self._inverse

    def inverse_entries(self, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        """Entries (rows, cols) of H^{-1}, all on H's pattern."""
        return self._inverse_on_pattern()[
            np.searchsorted(self._keys, cols.astype(np.int64) * self.q + rows)
        ]

    def row_forms(self) -> np.ndarray:
        """z_i' H^{-1} z_i per data row, from the pairs of Z's non-zeros within each row."""
        inv = self._inverse_on_pattern()
        return np.bincount(
            self._pair_row, weights=self._pair_prod * inv[self._pair_pos], minlength=self.n
        )

    def inverse_diagonal(self) -> np.ndarray:
        diag = np.arange(self.q, dtype=np.int64)
        return self.inverse_entries(diag, diag)

    def solve(
        self, a: np.ndarray, r: np.ndarray, q_values: np.ndarray, beta_fixed: np.ndarray | None
    ) -> Solution:
        """Solve the equations for working response r (data rows) and weights a."""
        X, Z = self.X, self.Z
        chol = self.factor(a, q_values)
        AX = X * a[:, None]
        ZtAX = np.asarray(Z.T @ AX)
        M = chol.solve(ZtAX) if self.p else np.zeros((self.q, 0))
        M = M.reshape(self.q, self.p)
        S = X.T @ AX - ZtAX.T @ M
        ar = a * r
        bz = np.asarray(Z.T @ ar).ravel()
        hb = chol.solve(bz)
        logdet_S, cov_beta = fixed_effects_block(S)
        if beta_fixed is None:
            beta = cov_beta @ (X.T @ ar - M.T @ bz) if self.p else np.zeros(0)
        else:
            beta = np.asarray(beta_fixed, dtype=float)
        v = hb - M @ beta
        return Solution(beta, v, cov_beta, M, chol.logdet(), logdet_S)

    def row_variances(self, sol: Solution) -> np.ndarray:
        """t_i' C^{-1} t_i per data row, from the selected inverse (no n x n or q x q)."""
        Xt = self.X - np.asarray(self.Z @ sol.M)
        out = np.einsum("ij,jk,ik->i", Xt, sol.cov_beta, Xt) if self.p else np.zeros(self.n)
        return out + self.row_forms()

    def level_variances(self, sol: Solution) -> np.ndarray:
        """diag of the v-block of C^{-1}."""
        diag = self.inverse_diagonal()
        if self.p:
            diag = diag + np.einsum("ij,jk,ik->i", sol.M, sol.cov_beta, sol.M)
        return diag
