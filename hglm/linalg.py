"""Sparse symmetric positive definite linear algebra for the mixed-model equations.

CHOLMOD (bundled with cvxopt) does the ordering and the factorisation: a fill-reducing
permutation P and the symbolic analysis are computed once per sparsity pattern, and every
IWLS iteration only refactors numerically, P A P' = L L'.

On top of the factor this module computes the *selected inverse*: the entries of A^{-1} on the
pattern of L + L' (Takahashi, Fagan & Chin 1973; Erisman & Tinney 1975). With Z = A^{-1} (in
the permuted order) and one supernode S (a run of columns sharing their row structure R below
the diagonal block), Z L = L^{-T} gives, block column by block column from the last one back,

    U    = L_RS L_SS^{-1}
    Z_RS = -Z_RR U
    Z_SS = (L_SS L_SS')^{-1} - U' Z_RS

and Z_RR is already known because R lies inside the pattern of the ancestors of S (the
pattern of a Cholesky factor is closed along its elimination tree). Leverages, the
log-determinants of p_v(h) and p_beta,v(h) and standard errors all come from here without a
dense inverse.

Why this module is longer than 600 lines: it is one numerical kernel (the factor, its
supernodal selected inverse and the batched row quadratic forms all walk the same supernode
structure and share its index arrays and the CHOLMOD handle's thread-safety rules); a split
would put one data structure's invariants in several files. It imports nothing of ``hglm``.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import cvxopt
import cvxopt.cholmod
import numpy as np
import scipy.linalg
import scipy.linalg.lapack
import scipy.sparse as sp

__all__ = ["NotPositiveDefiniteError", "SparseCholesky", "row_quadratic_forms"]


class NotPositiveDefiniteError(np.linalg.LinAlgError):
    """CHOLMOD met a non-positive pivot: the matrix is not (numerically) positive definite."""


_CHOLMOD_LOCK = threading.RLock()


@contextlib.contextmanager
def _cholmod_options(**options: object) -> Iterator[None]:
    """Set cvxopt.cholmod.options for one call and restore whatever was there before.

    The options dictionary is module-global in cvxopt, so other code may have changed it, and
    fits running in threads (the pipeline's per-layer tasks) must not see each other's options:
    the whole call holds one process-wide lock."""
    with _CHOLMOD_LOCK:
        saved = dict(cvxopt.cholmod.options)
        cvxopt.cholmod.options.clear()
        cvxopt.cholmod.options.update(options)
        try:
            yield
        finally:
            cvxopt.cholmod.options.clear()
            cvxopt.cholmod.options.update(saved)


# CHOLMOD's own choice: supernodal LL' (BLAS-3 on dense blocks) where the factor has dense
# blocks, simplicial LDL' otherwise (small or very sparse systems: 3x faster to factor and 5x
# faster to solve with than many tiny supernodes); postordering keeps supernodes contiguous.
_FACTOR_OPTIONS = {"supernodal": 1, "postorder": True}
# The same with a given (already postordered) permutation used as it is.
_TWIN_OPTIONS = {"supernodal": 2, "postorder": True, "nmethods": 1}


def _major_index(indptr: np.ndarray) -> np.ndarray:
    """Row (CSR) or column (CSC) of every stored entry; a cumulative sum is much faster than
    np.repeat with per-row counts."""
    nnz = int(indptr[-1])
    steps = np.zeros(nnz + 1, dtype=np.int64)
    np.add.at(steps, indptr[1:-1], 1)
    return np.cumsum(steps[:nnz])


def _canonical(M: sp.spmatrix | sp.sparray, fmt: str) -> sp.csr_matrix | sp.csc_matrix:
    """Float64 CSR/CSC with sorted indices and no duplicates, copying only when needed."""
    M = sp.csr_matrix(M, dtype=np.float64) if fmt == "csr" else sp.csc_matrix(M, dtype=np.float64)
    if not M.has_canonical_format:
        M = M.copy()
        M.sum_duplicates()
    return M


def _lower_csc(A: sp.spmatrix | sp.sparray) -> sp.csc_matrix:
    """Lower triangle of a square sparse matrix as canonical CSC (sorted, no duplicates)."""
    if not sp.issparse(A):
        raise TypeError(f"expected a scipy.sparse matrix, got {type(A).__name__}")
    if A.shape[0] != A.shape[1]:
        raise ValueError(f"matrix must be square, got shape {A.shape}")
    lower = sp.csc_matrix(sp.tril(A, format="csc"), dtype=np.float64)
    lower.sum_duplicates()
    lower.sort_indices()
    if not np.all(np.isfinite(lower.data)):
        bad = np.flatnonzero(~np.isfinite(lower.data))[:5]
        cols = np.searchsorted(lower.indptr, bad, side="right") - 1
        where = ", ".join(f"({r}, {c})" for r, c in zip(lower.indices[bad], cols, strict=True))
        raise ValueError(f"matrix has non-finite entries, e.g. at {where}")
    return lower


def _to_cvxopt(lower: sp.csc_matrix) -> cvxopt.spmatrix:
    """scipy CSC -> cvxopt spmatrix through array buffers (Python lists cost seconds at scale)."""
    n = lower.shape[0]
    cols = _major_index(lower.indptr)
    return cvxopt.spmatrix(
        cvxopt.matrix(lower.data),
        cvxopt.matrix(lower.indices.astype(np.int64)),
        cvxopt.matrix(cols),
        (n, n),
    )


def _numeric(matrix: cvxopt.spmatrix, factor: object, options: dict) -> None:
    with _cholmod_options(**options):
        try:
            cvxopt.cholmod.numeric(matrix, factor)
        except ArithmeticError as err:
            column = err.args[0] if err.args and isinstance(err.args[0], int) else None
            raise NotPositiveDefiniteError(
                f"matrix is not positive definite: CHOLMOD found a non-positive pivot at "
                f"column {column} of the fill-reducing permutation of A",
                column,
            ) from None


def _permutation(factor: object, n: int) -> np.ndarray:
    """The permutation p with P A P' = L L', as an index array: (P A P')[i, j] = A[p[i], p[j]].

    cvxopt does not expose CHOLMOD's Perm; applying the permutation (solve with sys=8) to
    0..n-1 reveals it. That solve scatters (x[p[i]] = b[i]) rather than gathers, hence the
    argsort; tests check L L' against the permuted dense matrix."""
    probe = cvxopt.matrix(np.arange(n, dtype=np.float64))
    cvxopt.cholmod.solve(factor, probe, sys=8)
    return np.argsort(np.rint(np.asarray(probe).ravel()).astype(np.int64))


@dataclass(frozen=True)
class _Gather:
    """Z_RR[a:, a:b] = block(ancestor)[rows][:, cols]: the part of Z_RR held by one ancestor."""

    a: int
    b: int
    ancestor: int
    rows: np.ndarray
    cols: np.ndarray


@dataclass(frozen=True)
class _Supernode:
    """Columns start:stop of the permuted factor sharing one row structure.

    rows: the block's row indices (start..stop-1, then R below the diagonal block); offset:
    where its dense (len(rows) x width, row-major) block starts in the flat buffer."""

    start: int
    stop: int
    rows: np.ndarray
    offset: int
    gathers: tuple[_Gather, ...]

    @property
    def width(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True)
class _ColumnBatch:
    """Single-column leaves of the elimination tree with |R| = r, processed together after all
    other supernodes (nothing depends on a leaf): typically the lots below the dense block of
    tools and chambers, or the students of a crossed design. offsets (B,): their blocks in the
    flat buffer; cols (B, r): R as positions in the dense set D (see _DenseAncestors)."""

    offsets: np.ndarray
    cols: np.ndarray


@dataclass(frozen=True)
class _DenseAncestors:
    """D, the union of the leaves' R, small enough for a dense |D| x |D| copy of Z_DD.

    Only entries on the factor's pattern are known; they are all a leaf needs (its R is a
    clique of the pattern). pieces: (supernode, block rows, block cols, rows in D, cols in D)
    to copy Z_DD out of the computed blocks."""

    size: int
    pieces: tuple[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray], ...]

    def assemble(self, z_blocks: dict[int, np.ndarray]) -> np.ndarray:
        dense = np.full((self.size, self.size), np.nan)
        for k, block_rows, block_cols, d_rows, d_cols in self.pieces:
            part = z_blocks[k][_grid(block_rows, block_cols)]
            dense[_grid(d_rows, d_cols)] = part
            dense[_grid(d_cols, d_rows)] = part.T
        return dense


def _grid(rows: np.ndarray, cols: np.ndarray) -> tuple:
    """Index of the rows x cols sub-block, with slices where the indices are runs (a whole
    supernode inside D, the usual case: a copy instead of a gather of |D|^2 entries)."""
    r, c = _run(rows), _run(cols)
    if r is None and c is None:
        return rows[:, None], cols[None, :]
    return (rows if r is None else r), (cols if c is None else c)


def _run(index: np.ndarray) -> slice | None:
    if len(index) and index[-1] - index[0] == len(index) - 1 and np.all(np.diff(index) == 1):
        return slice(int(index[0]), int(index[-1]) + 1)
    return None


# Largest dense Z_DD used for batching leaves (8 * 3000^2 bytes = 72 MB).
_MAX_DENSE_ANCESTORS = 3000


class _SupernodalPattern:
    """The supernode partition of a factor pattern and the index maps selected inversion needs.

    Depends only on the pattern of L, so it is built once per symbolic analysis. Batched leaves
    are described by arrays only; every other supernode gets a _Supernode with its gathers."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray) -> None:
        n = len(indptr) - 1
        counts = np.diff(indptr)
        if np.any(counts < 1) or np.any(indices[indptr[:-1]] != np.arange(n)):
            raise ValueError("factor pattern lacks a diagonal entry")
        parent = np.full(n, -1, dtype=np.int64)
        has_parent = counts > 1
        parent[has_parent] = indices[indptr[:-1][has_parent] + 1]
        # j+1 continues j's supernode when struct(L_j) = {j} U struct(L_{j+1}).
        merge = (parent[:-1] == np.arange(1, n)) & (counts[1:] == counts[:-1] - 1)
        starts = np.concatenate(([0], np.flatnonzero(~merge) + 1))
        stops = np.append(starts[1:], n)
        heights = counts[starts]
        widths = stops - starts
        offsets = np.concatenate(([0], np.cumsum(heights * widths)))
        self.n = n
        self.buffer_size = int(offsets[-1])
        self.offsets, self.heights, self.widths = offsets[:-1], heights, widths
        supernode_of = np.repeat(np.arange(len(starts)), widths)

        # Flat buffer position of every entry of L (CSC order): column j = start + c of a
        # supernode holds block rows c.. of column c.
        col = _major_index(indptr)
        sn = supernode_of[col]
        c = col - starts[sn]
        t = np.arange(len(indices)) - indptr[col]
        self.dest = offsets[sn] + (c + t) * widths[sn] + c
        self.diag_dest = self.dest[indptr[:-1]]

        # Leaves: supernodes none of whose columns appears below the diagonal block of another.
        elsewhere = sn != supernode_of[indices]
        has_descendant = np.zeros(len(starts), dtype=bool)
        has_descendant[supernode_of[indices[elsewhere]]] = True
        leaf = (widths == 1) & ~has_descendant
        below = heights - widths
        dense_set = np.unique(indices[np.isin(sn, np.flatnonzero(leaf)) & (col != indices)])
        if len(dense_set) > _MAX_DENSE_ANCESTORS:
            leaf[:] = False
            dense_set = dense_set[:0]

        self.supernodes: dict[int, _Supernode] = {}
        for k in np.flatnonzero(~leaf):
            s, e = int(starts[k]), int(stops[k])
            rows = indices[indptr[s] : indptr[s + 1]]
            below_rows = rows[e - s :]
            gathers = []
            a = 0
            while a < len(below_rows):
                anc = int(supernode_of[below_rows[a]])
                b = int(np.searchsorted(below_rows, stops[anc], side="left"))
                anc_rows = indices[indptr[starts[anc]] : indptr[starts[anc] + 1]]
                pos = np.searchsorted(anc_rows, below_rows[a:])
                if np.any(anc_rows[np.minimum(pos, len(anc_rows) - 1)] != below_rows[a:]):
                    raise ValueError("factor pattern is not closed along its elimination tree")
                gathers.append(_Gather(a, b, anc, pos, below_rows[a:b] - starts[anc]))
                a = b
            self.supernodes[int(k)] = _Supernode(s, e, rows, int(offsets[k]), tuple(gathers))
        self.schedule: list[int | _ColumnBatch] = sorted(self.supernodes, reverse=True)

        position = np.full(n, -1, dtype=np.int64)
        position[dense_set] = np.arange(len(dense_set))
        pieces = []
        for k in np.unique(supernode_of[dense_set]):
            block_rows_all = indices[indptr[starts[k]] : indptr[starts[k] + 1]]
            in_d = np.flatnonzero(position[block_rows_all] >= 0)
            cols_all = np.arange(starts[k], stops[k])
            cols_in = np.flatnonzero(position[cols_all] >= 0)
            pieces.append(
                (
                    int(k),
                    in_d,
                    cols_in,
                    position[block_rows_all[in_d]],
                    position[cols_all[cols_in]],
                )
            )
        self.dense_ancestors = _DenseAncestors(len(dense_set), tuple(pieces))
        leaves = np.flatnonzero(leaf)
        for r in np.unique(below[leaves]):
            chosen = leaves[below[leaves] == r]
            rows = indices[(indptr[starts[chosen]] + 1)[:, None] + np.arange(r)]
            self.schedule.append(_ColumnBatch(offsets[chosen], position[rows]))

    def blocks(self, buffer: np.ndarray) -> dict[int, np.ndarray]:
        """Views of the flat buffer as (height x width) dense blocks, for the supernodes that
        are not batched leaves (nothing reads a leaf's block)."""
        return {
            k: buffer[sn.offset : sn.offset + len(sn.rows) * sn.width].reshape(
                len(sn.rows), sn.width
            )
            for k, sn in self.supernodes.items()
        }


# Gathered entries of Z_RR per batch step: bounds the memory of a batch to ~32 MB.
_BATCH_ENTRIES = 4_000_000


def _invert_supernode(
    sn: _Supernode, lblk: np.ndarray, zblk: np.ndarray, z_blocks: dict[int, np.ndarray]
) -> None:
    width = sn.width
    r = len(sn.rows) - width
    if r:
        z_rr = np.empty((r, r))
        for g in sn.gathers:
            part = z_blocks[g.ancestor][g.rows[:, None], g.cols[None, :]]
            z_rr[g.a :, g.a : g.b] = part
            z_rr[g.a : g.b, g.a :] = part.T
    if width == 1:
        pivot = lblk[0, 0]
        if r:
            u = lblk[1:, 0] / pivot
            z_rs = -(z_rr @ u)
            zblk[1:, 0] = z_rs
            zblk[0, 0] = 1.0 / pivot**2 - u @ z_rs
        else:
            zblk[0, 0] = 1.0 / pivot**2
        return
    # L_SS is lower triangular in the buffer (nothing is ever written above the diagonal)
    l_ss = lblk[:width]
    if r:
        # U' = L_SS^{-T} L_RS'
        u = scipy.linalg.solve_triangular(
            l_ss, lblk[width:].T, lower=True, trans="T", check_finite=False
        ).T
        z_rs = -(z_rr @ u)
        zblk[width:] = z_rs
    # (L_SS L_SS')^{-1}: potri fills the lower triangle of a copy whose upper part stays zero,
    # so adding the transpose completes it (with the diagonal counted twice)
    z_ss, info = scipy.linalg.lapack.dpotri(l_ss, lower=1)
    if info:  # pragma: no cover - L_SS comes from a successful factorisation
        raise NotPositiveDefiniteError(f"potri failed on a diagonal block (info {info})")
    z_ss += z_ss.T
    z_ss.flat[:: width + 1] *= 0.5
    if r:
        z_ss -= u.T @ z_rs
        zblk[:width] = 0.5 * (z_ss + z_ss.T)
    else:
        zblk[:width] = z_ss


def _invert_batch(
    batch: _ColumnBatch, l_buffer: np.ndarray, z_buffer: np.ndarray, z_dense: np.ndarray
) -> None:
    """The single-column recurrence for many leaves at once (see _ColumnBatch)."""
    r = batch.cols.shape[1]
    step = max(1, _BATCH_ENTRIES // max(r * r, 1))
    within = np.arange(r + 1)
    for first in range(0, len(batch.offsets), step):
        where = batch.offsets[first : first + step, None] + within
        cols = batch.cols[first : first + step]
        lcol = l_buffer[where]
        u = lcol[:, 1:] / lcol[:, :1]
        if np.all(cols == cols[:1]):
            # one R for all (a fully crossed design: every student rated every item): one
            # product with the shared, symmetric Z_RR instead of a gathered copy per leaf
            z_rs = -(u @ z_dense[cols[0][:, None], cols[0][None, :]])
        else:
            z_rr = z_dense[cols[:, :, None], cols[:, None, :]]
            z_rs = -np.matmul(z_rr, u[:, :, None])[:, :, 0]
        z_ss = 1.0 / lcol[:, 0] ** 2 - np.einsum("ij,ij->i", u, z_rs)
        if not np.all(np.isfinite(z_rs)):  # pragma: no cover - R is a clique of the pattern
            raise RuntimeError("selected inversion read an entry outside the factor's pattern")
        z_buffer[where] = np.column_stack((z_ss, z_rs))


def _selected_inverse_buffer(pattern: _SupernodalPattern, l_data: np.ndarray) -> np.ndarray:
    """Z = (L L')^{-1} on the supernodal blocks of L, from the last supernode back (module doc);
    the batched leaves last."""
    l_buffer = np.zeros(pattern.buffer_size)
    l_buffer[pattern.dest] = l_data
    z_buffer = np.zeros(pattern.buffer_size)
    l_blocks = pattern.blocks(l_buffer)
    z_blocks = pattern.blocks(z_buffer)
    z_dense = None
    for step in pattern.schedule:
        if isinstance(step, _ColumnBatch):
            if z_dense is None:
                z_dense = pattern.dense_ancestors.assemble(z_blocks)
            _invert_batch(step, l_buffer, z_buffer, z_dense)
        else:
            _invert_supernode(pattern.supernodes[step], l_blocks[step], z_blocks[step], z_blocks)
    return z_buffer


@dataclass(frozen=True)
class _LowerGather:
    """Where the lower triangle of a canonical CSC pattern sits in its data array."""

    indptr: np.ndarray  # of the full pattern
    indices: np.ndarray
    source: np.ndarray  # positions in the full data of the lower triangle's entries
    lower_indptr: np.ndarray
    lower_indices: np.ndarray

    @classmethod
    def of(cls, A: sp.spmatrix | sp.sparray) -> _LowerGather | None:
        if not (sp.issparse(A) and A.format == "csc" and A.has_canonical_format):
            return None
        if A.shape[0] != A.shape[1]:
            return None
        positions = sp.csc_matrix(
            (np.arange(1, A.nnz + 1, dtype=np.float64), A.indices, A.indptr), shape=A.shape
        )
        lower = sp.tril(positions, format="csc")
        lower.sort_indices()
        return cls(
            A.indptr.copy(),
            A.indices.copy(),
            np.rint(lower.data).astype(np.int64) - 1,
            lower.indptr.copy(),
            lower.indices.copy(),
        )

    def matches(self, A: sp.spmatrix | sp.sparray) -> bool:
        if not (sp.issparse(A) and A.format == "csc" and A.has_canonical_format):
            return False
        return np.array_equal(A.indptr, self.indptr) and np.array_equal(A.indices, self.indices)

    def values(self, A: sp.csc_matrix) -> np.ndarray | None:
        """The lower triangle's values (None if some are not finite)."""
        data = np.asarray(A.data, dtype=np.float64)[self.source]
        return data if np.all(np.isfinite(data)) else None


class SparseCholesky:
    """Cholesky factor of a symmetric positive definite scipy.sparse matrix A (CSC or CSR; the full
    symmetric matrix is passed, only its lower triangle is used). The fill-reducing ordering and
    symbolic analysis happen once in __init__; refactor() reuses them for new values on the same
    pattern (raises ValueError if the pattern differs)."""

    def __init__(self, A: sp.spmatrix | sp.sparray) -> None:
        lower = _lower_csc(A)
        self._gather: _LowerGather | None = None
        self._n = lower.shape[0]
        self._indptr = lower.indptr.copy()
        self._indices = lower.indices.copy()
        self._quadratic_form_plan: tuple | None = None
        self._supernodal: bool | None = None  # which factor CHOLMOD chose
        # A diagonal A (one random term) is its own factor: CHOLMOD's supernodal solve spends
        # ~0.4 ms on 2,000 one-column supernodes where a division takes microseconds
        self._diagonal: np.ndarray | None = None
        if lower.nnz == self._n and np.array_equal(self._indices, np.arange(self._n)):
            self._perm = np.arange(self._n)
            self._set_diagonal(lower.data)
            return
        matrix = _to_cvxopt(lower)
        with _cholmod_options(**_FACTOR_OPTIONS):
            self._factor = cvxopt.cholmod.symbolic(matrix, uplo="L")
        self._pattern: _SupernodalPattern | None = None
        self._l_indptr = self._l_indices = np.zeros(0, dtype=np.int64)
        self._factorise(matrix)
        self._perm = _permutation(self._factor, self._n)

    def _set_diagonal(self, values: np.ndarray) -> None:
        bad = np.flatnonzero(~(values > 0))
        if len(bad):
            raise NotPositiveDefiniteError(
                f"matrix is not positive definite: non-positive diagonal entry at row/column "
                f"{bad[0]} of A (a diagonal matrix)",
                int(bad[0]),
            )
        self._diagonal = np.array(values, dtype=np.float64)
        self._selinv_csc = None
        self._full_pattern = (self._indptr, self._indices)

    def _lower_values(self, A: sp.spmatrix | sp.sparray) -> np.ndarray:
        """The values of A's lower triangle on this factor's pattern (ValueError otherwise).

        When A is canonical CSC on the pattern of the previous call (every IWLS step) they are
        one gather: scipy's tril costs as much as the factorisation on small systems."""
        gather = self._gather
        if gather is None or not gather.matches(A):
            gather = _LowerGather.of(A)
            if gather is not None and not (
                np.array_equal(gather.lower_indptr, self._indptr)
                and np.array_equal(gather.lower_indices, self._indices)
            ):
                gather = None  # a new pattern: _lower_csc and the check below say so
            self._gather = gather
        data = gather.values(A) if gather is not None else None
        if data is not None:
            return data
        lower = _lower_csc(A)  # raises on non-finite values, naming an entry
        if (
            lower.shape[0] != self._n
            or not np.array_equal(lower.indptr, self._indptr)
            or not np.array_equal(lower.indices, self._indices)
        ):
            raise ValueError(
                "refactor() needs the sparsity pattern of the matrix given to SparseCholesky(); "
                "build a new SparseCholesky for a new pattern"
            )
        return lower.data

    def refactor(self, A: sp.spmatrix | sp.sparray) -> None:
        """New values on the same pattern: numeric factorisation only."""
        data = self._lower_values(A)
        if self._diagonal is not None:
            self._set_diagonal(data)
            return
        if len(self._matrix.V) == len(data):
            # Same pattern: overwrite the values (cvxopt keeps them in sorted CSC order, as
            # scipy does) instead of rebuilding the matrix from triplets.
            self._matrix.V = cvxopt.matrix(data)
            self._factorise(self._matrix)
        else:  # pragma: no cover - cvxopt dropped explicit zeros of the pattern
            lower = sp.csc_matrix((data, self._indices, self._indptr), shape=(self._n, self._n))
            self._factorise(_to_cvxopt(lower))

    def _factorise(self, matrix: cvxopt.spmatrix) -> None:
        self._matrix = matrix
        self._selinv: np.ndarray | None = None
        self._selinv_csc: sp.csc_matrix | None = None
        self._logdet: float | None = None
        try:
            _numeric(matrix, self._factor, _FACTOR_OPTIONS)
        except NotPositiveDefiniteError as err:
            column = err.args[1] if len(err.args) > 1 else None
            if column is None or not hasattr(self, "_perm"):
                raise
            raise NotPositiveDefiniteError(
                f"matrix is not positive definite: CHOLMOD found a non-positive pivot at row/column "
                f"{self._perm[column]} of A",
                self._perm[column],
            ) from None
        if self._supernodal is None:
            try:
                cvxopt.cholmod.diag(self._factor)  # reads supernodal factors only
                self._supernodal = True
            except ValueError:
                self._supernodal = False
        if not self._supernodal:
            self._check_pivots()

    def _check_pivots(self) -> None:
        """A simplicial LDL' goes through an indefinite matrix: D must be positive."""
        inverse_d = cvxopt.matrix(np.ones(self._n))
        cvxopt.cholmod.solve(self._factor, inverse_d, sys=6)  # D x = 1
        d = 1.0 / np.asarray(inverse_d).ravel()
        bad = np.flatnonzero(~(np.isfinite(d) & (d > 0)))
        if len(bad):
            if not hasattr(self, "_perm"):
                self._perm = _permutation(self._factor, self._n)
            row = int(self._perm[bad[0]])
            raise NotPositiveDefiniteError(
                f"matrix is not positive definite: non-positive pivot at row/column {row} of A",
                row,
            )
        self._logdet = float(np.sum(np.log(d)))

    @property
    def n(self) -> int:
        return self._n

    @property
    def perm(self) -> np.ndarray:
        """Fill-reducing permutation: (P A P')[i, j] = A[perm[i], perm[j]]."""
        return self._perm

    def solve(self, b: np.ndarray) -> np.ndarray:
        """A^{-1} b for b of shape (n,) or (n, k)."""
        b = np.asarray(b, dtype=np.float64)
        if b.ndim not in (1, 2) or b.shape[0] != self._n:
            raise ValueError(f"right-hand side must have shape ({self._n},) or ({self._n}, k)")
        if b.size == 0:
            return b.copy()
        if self._diagonal is not None:
            return b / (self._diagonal if b.ndim == 1 else self._diagonal[:, None])
        rhs = cvxopt.matrix(np.asfortranarray(b.reshape(self._n, -1)))
        cvxopt.cholmod.solve(self._factor, rhs)
        return np.asarray(rhs).reshape(b.shape)

    def logdet(self) -> float:
        """log det A = 2 sum log diag(L) (supernodal LL'), or sum log D (simplicial LDL')."""
        if self._diagonal is not None:
            return float(np.sum(np.log(self._diagonal)))
        if self._logdet is None:
            self._logdet = 2.0 * float(
                np.sum(np.log(np.asarray(cvxopt.cholmod.diag(self._factor))))
            )
        return self._logdet

    def _factor_csc(self) -> tuple[sp.csc_matrix, np.ndarray]:
        """L of P A P' = L L' as scipy CSC (permuted order), with its permutation.

        cvxopt.cholmod.getfactor turns its argument back into a symbolic factor, so L is taken
        from a twin factorisation, leaving the solver intact; the twin is told to keep our
        ordering (no second AMD), which makes its pattern the same on every call."""
        if self._diagonal is not None:
            root = sp.csc_matrix(
                (np.sqrt(self._diagonal), self._indices.copy(), self._indptr.copy()),
                shape=(self._n, self._n),
            )
            return root, self._perm.copy()
        with _cholmod_options(**_TWIN_OPTIONS):
            twin = cvxopt.cholmod.symbolic(self._matrix, p=cvxopt.matrix(self._perm), uplo="L")
        _numeric(self._matrix, twin, _TWIN_OPTIONS)
        perm = _permutation(twin, self._n)
        if not np.array_equal(perm, self._perm):  # pragma: no cover - CHOLMOD keeps a given order
            raise RuntimeError("CHOLMOD did not keep the given permutation for the factor copy")
        colptr, rowind, values = cvxopt.cholmod.getfactor(twin).CCS
        factor = sp.csc_matrix(
            (np.asarray(values).ravel(), np.asarray(rowind).ravel(), np.asarray(colptr).ravel()),
            shape=(self._n, self._n),
        )
        factor.sort_indices()
        return factor, perm

    def _selected_inverse_buffer(self) -> np.ndarray:
        if self._selinv is None:
            factor, self._l_perm = self._factor_csc()
            if self._pattern is None or not (
                np.array_equal(factor.indptr, self._l_indptr)
                and np.array_equal(factor.indices, self._l_indices)
            ):  # the pattern of L depends on the symbolic analysis only: built once
                self._pattern = _SupernodalPattern(factor.indptr, factor.indices)
                self._l_indptr, self._l_indices = factor.indptr, factor.indices
                self._full_pattern = self._symmetric_pattern()
            self._selinv = _selected_inverse_buffer(self._pattern, factor.data)
        return self._selinv

    def _symmetric_pattern(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """CSC structure of L + L' in the original ordering, and where each of its entries sits
        in the selected-inverse buffer (so that every later call is a single gather)."""
        col = _major_index(self._l_indptr)
        row = self._l_indices
        off = row != col
        rows = self._l_perm[np.concatenate((row, col[off]))]
        cols = self._l_perm[np.concatenate((col, row[off]))]
        source = np.concatenate((self._pattern.dest, self._pattern.dest[off]))
        # integer data survive the conversion exactly: they carry each entry's buffer position
        order = sp.csc_matrix(
            (np.arange(1, len(rows) + 1, dtype=np.int64), (rows, cols)), shape=(self._n, self._n)
        )
        order.sort_indices()
        return order.indptr, order.indices, source[order.data - 1]

    def selected_inverse(self) -> sp.csc_matrix:
        """Entries of A^{-1} on the pattern of L + L' (symmetric, full, original ordering).

        Every entry where A is non-zero is present (explicit zeros of the pattern are kept)."""
        if self._selinv_csc is None and self._diagonal is not None:
            self._selinv_csc = sp.csc_matrix(
                (1.0 / self._diagonal, self._indices.copy(), self._indptr.copy()),
                shape=(self._n, self._n),
            )
        if self._selinv_csc is None:
            buffer = self._selected_inverse_buffer()
            indptr, indices, where = self._full_pattern
            self._selinv_csc = sp.csc_matrix(
                (buffer[where], indices.copy(), indptr.copy()), shape=(self._n, self._n)
            )
        return self._selinv_csc

    def row_quadratic_forms(self, T: sp.spmatrix | sp.sparray) -> np.ndarray:
        """diag(T A^{-1} T') from the selected inverse, as the module function
        row_quadratic_forms(T, self.selected_inverse()) computes it, but the set-up that depends
        only on T and the pattern (distinct rows, where each pair sits in S) is kept for the
        next call with the same T object: an IWLS or outer iteration then pays only the
        gathers and sums. (An addition to the agreed interface.)"""
        if T.shape[1] != self._n:
            raise ValueError(f"T must have {self._n} columns to match A, got {T.shape[1]}")
        S = self.selected_inverse()
        cached = self._quadratic_form_plan
        if cached is None or cached[0] is not T or cached[1] is not self._full_pattern:
            plan = _QuadraticFormPlan(_canonical(T, "csr"), S.indptr, S.indices)
            self._quadratic_form_plan = cached = (T, self._full_pattern, plan)
        return cached[2](S.data)

    def inverse_diagonal(self) -> np.ndarray:
        """diag(A^{-1}), from the selected inverse."""
        if self._diagonal is not None:
            return 1.0 / self._diagonal
        buffer = self._selected_inverse_buffer()
        diagonal = np.empty(self._n)
        diagonal[self._l_perm] = buffer[self._pattern.diag_dest]
        return diagonal

    def inverse_block(self, idx: np.ndarray) -> np.ndarray:
        """Dense A^{-1}[idx][:, idx] for a small index set, by solves with unit vectors."""
        idx = np.asarray(idx, dtype=np.int64).ravel()
        if idx.size and (idx.min() < -self._n or idx.max() >= self._n):
            raise IndexError(f"indices out of range for a matrix of order {self._n}")
        units = np.zeros((self._n, idx.size))
        units[idx, np.arange(idx.size)] = 1.0
        block = self.solve(units)[idx]
        return 0.5 * (block + block.T)


def fixed_effects_block(S: np.ndarray) -> tuple[float, np.ndarray]:
    """log det and inverse of the p x p Schur complement of the mixed-model equations.

    Parameters
    ----------
    S : numpy.ndarray
        The fixed-effects block after eliminating the random effects (symmetric, p x p).

    Returns
    -------
    (float, numpy.ndarray)
        log det S and S^-1 (= Var(beta-hat)); 0 and a 0 x 0 matrix when p = 0.

    Raises
    ------
    numpy.linalg.LinAlgError
        If S is not positive definite (the fixed effects are not identified).
    """
    p = S.shape[0]
    if p == 0:
        return 0.0, np.zeros((0, 0))
    try:
        cf = scipy.linalg.cho_factor(S, lower=True)
    except np.linalg.LinAlgError as err:
        raise np.linalg.LinAlgError(
            "the fixed-effects block of the mixed-model equations is singular"
        ) from err
    return 2.0 * float(np.sum(np.log(np.diag(cf[0])))), scipy.linalg.cho_solve(cf, np.eye(p))


def row_quadratic_forms(T: sp.spmatrix | sp.sparray, S: sp.spmatrix | sp.sparray) -> np.ndarray:
    """diag(T S T') for a sparse (n x m) T (CSR) and a selected inverse S (m x m) whose pattern
    contains every pair of columns that share a row of T; vectorised, O(sum over rows of nnz(row)^2),
    never forms an n x n or a dense m x m matrix. Raises ValueError if a needed entry is missing.

    Identical rows (all wafers of a lot in a nested design) are evaluated once, and entries
    between frequently used columns are read from a small dense block of S instead of being
    searched for. For repeated calls with one T and one pattern of S, see
    SparseCholesky.row_quadratic_forms, which keeps this set-up."""
    T = _canonical(T, "csr")
    S = _canonical(S, "csc")
    m = T.shape[1]
    if S.shape != (m, m):
        raise ValueError(f"S must be {m} x {m} to match T's {m} columns, got {S.shape}")
    return _QuadraticFormPlan(T, S.indptr, S.indices)(S.data)


# Entries of S gathered per step: bounds the temporaries to a few tens of MB.
_PAIRS_PER_STEP = 4_000_000


class _QuadraticFormPlan:
    """Everything about diag(T S T') that depends on T and the pattern of S only.

    Rows of T are reduced to distinct rows. Pairs of entries that both lie in the most used
    columns ("dense" columns) are read from a dense copy of that block of S, bucketed by how
    many such entries a row has; the remaining pairs (at least one entry outside) are located
    in S's data once, here."""

    _MAX_DENSE = 3000

    def __init__(self, T: sp.csr_matrix, s_indptr: np.ndarray, s_indices: np.ndarray) -> None:
        n_rows, m = T.shape
        self.n_rows = n_rows
        representative, self.group = _distinct_rows(T)
        unique = T[representative]
        n = unique.shape[0]
        self.n_unique = n
        s_col = _major_index(s_indptr)
        keys = s_col * m + s_indices

        # The dense block pays when it is small next to the pairs it serves: at most a quarter
        # of all pairs (fab designs: ~800 tool and chamber columns against ~10^8 pairs; crossed
        # designs with a few entries per row get a small block or none).
        counts = np.diff(unique.indptr).astype(np.int64)
        usage = np.bincount(unique.indices, minlength=m)
        size = min(self._MAX_DENSE, int(np.sqrt(np.sum(counts**2) / 4)))
        frequent = np.argsort(-usage, kind="stable")[:size]
        frequent = np.sort(frequent[usage[frequent] >= 4])
        self.dense_columns = frequent
        nd = len(frequent)
        self.nd = nd
        position = np.full(m, -1, dtype=np.int64)
        position[frequent] = np.arange(nd)
        in_block = (position[s_indices] >= 0) & (position[s_col] >= 0)
        self.block_source = np.flatnonzero(in_block)
        self.block_target = position[s_indices[in_block]] * nd + position[s_col[in_block]]

        # dense part: per bucket of rows with k dense entries, their positions and values
        entry_position = position[unique.indices]
        keep = entry_position >= 0
        row_of = _major_index(unique.indptr)
        dense_counts = np.bincount(row_of[keep], minlength=n)
        dense_starts = np.concatenate(([0], np.cumsum(dense_counts)[:-1]))
        kept_position, kept_value = entry_position[keep], unique.data[keep]
        self.buckets = []
        for k in np.unique(dense_counts[dense_counts > 0]):
            rows = np.flatnonzero(dense_counts == k)
            entries = dense_starts[rows, None] + np.arange(k)
            self.buckets.append((rows, kept_position[entries], kept_value[entries]))
        self.original_rows = representative

        # sparse part: each outside entry a meets every entry b of its row; a pair (a, b) with
        # b inside the dense block stands for (b, a) too, two outside entries meet both ways
        outside = np.flatnonzero(~keep)
        reps = counts[row_of[outside]]
        a = np.repeat(outside, reps)
        starts = np.repeat(unique.indptr[row_of[outside]], reps)
        b = starts + (np.arange(len(a)) - np.repeat(np.cumsum(reps) - reps, reps))
        cols = unique.indices.astype(np.int64)
        pair_keys = cols[b] * m + cols[a]
        # sorted queries make the binary searches cache-friendly (several times faster)
        order = np.argsort(pair_keys, kind="stable")
        found_at = np.empty(len(pair_keys), dtype=np.int64)
        found_at[order] = np.searchsorted(keys, pair_keys[order])
        found_at = np.minimum(found_at, max(len(keys) - 1, 0))
        hit = keys[found_at] == pair_keys if len(keys) else np.zeros(len(a), dtype=bool)
        if not hit.all():
            miss = np.flatnonzero(~hit)[0]
            raise ValueError(
                f"S lacks entry ({cols[a[miss]]}, {cols[b[miss]]}) needed by row "
                f"{representative[row_of[a[miss]]]} of T: is S the selected inverse of T'WT?"
            )
        twice = np.where(position[cols[b]] >= 0, 2.0, 1.0)
        self.pair_source = found_at
        self.pair_row = row_of[a]
        self.pair_weight = twice * unique.data[a] * unique.data[b]

    def __call__(self, s_data: np.ndarray) -> np.ndarray:
        """diag(T S T') for the values of S (in the order of the pattern given)."""
        forms = np.zeros(self.n_unique)
        if len(self.pair_row):
            weights = self.pair_weight * s_data[self.pair_source]
            forms += np.bincount(self.pair_row, weights=weights, minlength=self.n_unique)
        if self.buckets:
            block = np.full(self.nd * self.nd, np.nan)  # entries missing from S stay NaN
            block[self.block_target] = s_data[self.block_source]
            block = block.reshape(self.nd, self.nd)
            for rows, position, value in self.buckets:
                forms[rows] += self._dense_forms(block, rows, position, value)
        return forms[self.group]

    def _dense_forms(
        self, block: np.ndarray, rows: np.ndarray, position: np.ndarray, value: np.ndarray
    ) -> np.ndarray:
        k = position.shape[1]
        upper_i, upper_j = np.triu_indices(k)
        off_diagonal = upper_i != upper_j
        out = np.empty(len(rows))
        step = max(1, _PAIRS_PER_STEP // (k * k))
        for first in range(0, len(rows), step):
            pos, val = position[first : first + step], value[first : first + step]
            # S is symmetric: the pairs i < j count twice, the diagonal once
            rows_i, cols_j = pos[:, upper_i], pos[:, upper_j]
            products = val[:, upper_i] * val[:, upper_j]
            products[:, off_diagonal] *= 2.0
            part = np.einsum("rp,rp->r", products, block[rows_i, cols_j])
            if np.isnan(part).any():
                r, p = np.argwhere(np.isnan(block[rows_i, cols_j]))[0]
                a, b = self.dense_columns[rows_i[r, p]], self.dense_columns[cols_j[r, p]]
                raise ValueError(
                    f"S lacks entry ({a}, {b}) (or it is not finite) needed by row "
                    f"{self.original_rows[rows[first + r]]} of T: is S the selected inverse "
                    "of T'WT?"
                )
            out[first : first + step] = part
        return out


def _row_hashes(T: sp.csr_matrix, seed: int) -> np.ndarray:
    """A 64-bit hash of every row's (column, value) entries: random weights per column, mixed
    with the bits of the values, summed (wrapping) over the row."""
    n, m = T.shape
    counts = np.diff(T.indptr)
    weights = np.random.default_rng(seed).integers(1, 2**63, m, dtype=np.uint64) | np.uint64(1)
    mixed = weights[T.indices]
    if not np.all(T.data == 1.0):  # indicator rows (Z of the random terms) skip this pass
        mixed *= np.ascontiguousarray(T.data).view(np.uint64) ^ np.uint64(0x9E3779B97F4A7C15)
    hashes = np.zeros(n, dtype=np.uint64)
    nonempty = counts > 0
    if mixed.size:
        hashes[nonempty] = np.add.reduceat(mixed, T.indptr[:-1][nonempty])
    return hashes ^ counts.astype(np.uint64) * np.uint64(0xBF58476D1CE4E5B9)


def _distinct_rows(T: sp.csr_matrix) -> tuple[np.ndarray, np.ndarray]:
    """Indices of one representative per distinct row of T and each row's group.

    Rows are grouped by one 64-bit hash and confirmed by a second, independent one; only if the
    two disagree somewhere (a collision) are rows compared entry by entry, and rows that differ
    are kept apart."""
    n = T.shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    _, first, group = np.unique(_row_hashes(T, 0x5EED), return_index=True, return_inverse=True)
    representative = first[group]
    check = _row_hashes(T, 0xC0FFEE)
    if np.array_equal(check, check[representative]):
        return first, group
    counts = np.diff(T.indptr)
    same = counts == counts[representative]
    row_of = _major_index(T.indptr)
    rep_entry = (T.indptr[representative] - T.indptr[:-1])[row_of] + np.arange(T.nnz)
    rep_entry = np.minimum(rep_entry, max(T.nnz - 1, 0))
    mismatch = (T.indices != T.indices[rep_entry]) | (T.data != T.data[rep_entry])
    same &= np.bincount(row_of[mismatch], minlength=n) == 0
    representative = np.where(same, representative, np.arange(n))
    distinct, group = np.unique(representative, return_inverse=True)
    return distinct, group
