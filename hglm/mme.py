"""The sparse mixed-model equations of the augmented GLM, solved by a block (Schur) elimination.

Unknowns: beta (p, dense) and the levels of the random terms (q, sparse). With
data-row weights ``a`` and random-row weights ``W_M`` the coefficient matrix is

    C = [[X'AX, X'AZ], [Z'AX, H]],   H = Z'AZ + diag(W_M),

and beta comes from the p x p Schur complement S = X'AX - X'AZ H^{-1} Z'AX, so

    Var(beta) = S^{-1},   log det C = log det H + log det S.

Everything over the data rows goes through the distinct row patterns of Z (the rows of a fab
lot share their lot, tool and chamber levels): H is a sum over patterns, and the sums are taken
per pair of term *groups* (terms whose levels are functions of one of them, like the tool of an
operation is fixed by its chamber), so that a pattern is touched once per pair of groups.

Two terms are never put into the sparse factor:

* a term with one level per row (observation level) is eliminated row by row before
  (``ObservationElimination``);
* a term with one level per row pattern (the lot, which fixes the whole path through the fab)
  has a diagonal block in H, and its levels meet the other terms only through their own
  pattern; it is eliminated pattern by pattern (``PatternElimination``), leaving the other
  terms' Schur complement R = E' diag(a w / (a + w)) E + diag(W_M) (E: the patterns' levels of
  the other terms), the same pattern as their block of H, to CHOLMOD (fill-reducing order and
  symbolic analysis once; every later call refactors numerically).

Nothing in here is n x n or has q = n columns; the selected inverse of the factor gives the
leverages and prediction variances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from hglm.design import RandomTermDesign
from hglm.linalg import NotPositiveDefiniteError, SparseCholesky

# The factored terms' matrix goes to dense LAPACK when it is small and its pattern nearly full
# (a fab's tools and chambers all meet in some lot): CHOLMOD's factor would be one dense
# supernode anyway, and the selected inverse on its pattern the whole inverse.
_MAX_DENSE_ORDER = 3000
_MIN_DENSE_FILL = 0.3


@dataclass
class MMESolution:
    beta: np.ndarray  # (p,)
    v: np.ndarray  # (q,) levels of the sparse terms, concatenated
    cov_beta: np.ndarray  # (p, p) S^{-1}
    M: np.ndarray  # (q, p) H^{-1} Z'AX
    logdet_H: float
    logdet_S: float


def _first_rows(key: np.ndarray, n_keys: int) -> np.ndarray:
    first = np.full(n_keys, -1, dtype=np.int64)
    first[key[::-1]] = np.arange(len(key) - 1, -1, -1)
    return first


def _distinct_patterns(codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Distinct rows of the level matrix [codes_1 ... codes_K]: (each row's pattern, the
    (n_d, K) patterns), patterns numbered in order of first appearance.

    Rows of a lot share their lot, tool and chamber levels, so the patterns are few (one per
    lot) and every product over the rows is a product over the patterns. Rows are grouped by
    a 64-bit hash of their levels (one pass per column, no n x K array), and the grouping is
    confirmed column by column; should two patterns share a hash, the exact (slower) way of
    refining the grouping one column at a time is taken."""
    n = len(codes[0])
    mix = np.random.default_rng(0x5EED).integers(1, 2**63, len(codes), dtype=np.uint64)
    hashes = np.zeros(n, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k, c in enumerate(codes):
            x = (c.astype(np.uint64) + np.uint64(1)) * np.uint64(0x9E3779B97F4A7C15)
            x ^= x >> np.uint64(29)
            hashes += x * (mix[k] | np.uint64(1))
    key, uniques = pd.factorize(hashes)
    first = _first_rows(key, len(uniques))
    if not all(np.array_equal(c, c[first][key]) for c in codes):
        return _distinct_patterns_exact(codes)
    return key.astype(np.int64), np.column_stack([c[first] for c in codes])


def _distinct_patterns_exact(codes: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """``_distinct_patterns`` by refining the grouping one column at a time."""
    key = np.zeros(len(codes[0]), dtype=np.int64)
    n_keys = 1
    for c in codes:
        key, uniques = pd.factorize(key * (int(c.max()) + 1) + c)
        n_keys = len(uniques)
    first = _first_rows(key, n_keys)
    return key.astype(np.int64), np.column_stack([c[first] for c in codes])


def _nesting_groups(levels: list[np.ndarray], sizes: list[int]) -> list[list[int]]:
    """Partition terms into groups whose members' levels are functions of the first member's
    level over the patterns (finest term first). levels[j]: (n_d,) local level of term j."""
    present = [np.count_nonzero(np.bincount(lv, minlength=1)) for lv in levels]
    order = sorted(range(len(levels)), key=lambda j: -present[j])
    groups: list[list[int]] = []
    for j in order:
        for group in groups:
            finest = levels[group[0]]
            image = np.full(sizes[group[0]], -1, dtype=np.int64)
            image[finest] = levels[j]
            if np.array_equal(image[finest], levels[j]):
                group.append(j)
                break
        else:
            groups.append([j])
    return groups


def _cells(key: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(cell of each pattern, the distinct keys in the range 0..size-1, one per cell)."""
    if size <= 4 * len(key) + 1024:  # a small range: count instead of hashing
        present = np.bincount(key, minlength=size) > 0
        return (np.cumsum(present) - 1)[key], np.flatnonzero(present)
    local, uniq = pd.factorize(key)
    return local, np.asarray(uniq, dtype=np.int64)


@dataclass
class _GroupPair:
    """The cells of a pair of groups (g <= h): the distinct (level of g, level of h) pairs
    of the patterns; ``local`` maps each pattern to its cell, cells start at ``offset`` in
    the flat table of all pairs."""

    local: np.ndarray
    offset: int
    n_cells: int


class _PatternProducts:
    """Sums over patterns of c_p e_p e_p' (assembly) and e_p' R^{-1} e_p (quadratic forms),
    for the indicator rows e_p (n_d x m, K entries each) of a set of terms, grouped by nesting.

    A pattern adds its weight to one cell per pair of groups (a fab: one per pair of
    operations, the chambers fixing the tools), so the work per assembly is n_d times the
    number of group pairs; every term pair (k, l) of a group pair reads its entry of the
    m x m matrix off the cell's levels. Two fixed sparse maps take cell sums to the stored
    entries of the symmetric pattern (``keys``: col * m + row, sorted) and back."""

    def __init__(self, levels: list[np.ndarray], sizes: list[int]) -> None:
        self.m = m = int(sum(sizes))
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        n_d = len(levels[0]) if levels else 0
        groups = _nesting_groups(levels, sizes)
        maps = []  # per group: finest level -> column (in 0..m-1) of each member
        for group in groups:
            f = group[0]
            cols = {}
            for j in group:
                image = np.full(sizes[f], -1, dtype=np.int64)
                image[levels[f]] = levels[j] + offsets[j]
                cols[j] = image
            maps.append(cols)
        self.pairs: list[_GroupPair] = []
        rows, cols, cells, twice = [], [], [], []
        offset = 0
        for g, group_g in enumerate(groups):
            key_g = levels[group_g[0]]
            for h in range(g, len(groups)):
                group_h = groups[h]
                if g == h:
                    local, uniq = _cells(key_g, sizes[group_g[0]])
                    cg = ch = uniq
                    term_pairs = [(a, b) for i, a in enumerate(group_g) for b in group_g[i:]]
                else:
                    size_h = sizes[group_h[0]]
                    local, uniq = _cells(
                        key_g * size_h + levels[group_h[0]], sizes[group_g[0]] * size_h
                    )
                    cg, ch = uniq // size_h, uniq % size_h
                    term_pairs = [(a, b) for a in group_g for b in group_h]
                n_cells = len(uniq)
                self.pairs.append(_GroupPair(local.astype(np.intp), offset, n_cells))
                cell_ids = offset + np.arange(n_cells)
                for a, b in term_pairs:
                    rows.append(maps[g][a][cg])
                    cols.append(maps[h][b][ch])
                    cells.append(cell_ids)
                    twice.append(np.full(n_cells, a != b))
                offset += n_cells
        self.n_cells = offset
        self.n_patterns = n_d
        r = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
        c = np.concatenate(cols) if cols else np.zeros(0, dtype=np.int64)
        cell = np.concatenate(cells) if cells else np.zeros(0, dtype=np.int64)
        off = np.concatenate(twice) if twice else np.zeros(0, dtype=bool)
        diag = np.arange(m, dtype=np.int64)
        keys = np.sort(np.concatenate((c * m + r, r * m + c, diag * m + diag)))
        self.keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        lower = np.searchsorted(self.keys, c * m + r)  # entry (r, c)
        upper = np.searchsorted(self.keys, r * m + c)
        self.diag_pos = np.searchsorted(self.keys, diag * m + diag)
        # assembly: entries = cells_to_entries @ cell sums; each cell goes into (r, c) and,
        # for two different terms, into (c, r)
        n_keys = len(self.keys)
        self.cells_to_entries = sp.csr_matrix(
            (
                np.ones(len(cell) + int(off.sum())),
                (np.concatenate((lower, upper[off])), np.concatenate((cell, cell[off]))),
            ),
            shape=(n_keys, offset),
        )
        # quadratic forms: cell values = entries_to_cells @ entries of R; e' R e counts an
        # entry between two different terms twice
        self.entries_to_cells = sp.csr_matrix(
            (np.where(off, 2.0, 1.0), (cell, lower)), shape=(offset, n_keys)
        )
        self.indices = (self.keys % m).astype(np.int32)
        self.indptr = np.searchsorted(self.keys // m, np.arange(m + 1)).astype(np.int32)

    @property
    def fill(self) -> float:
        """Share of the m x m entries on the pattern."""
        return len(self.keys) / max(self.m * self.m, 1)

    def _entries(self, c: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
        table = np.empty(self.n_cells)
        for pair in self.pairs:
            table[pair.offset : pair.offset + pair.n_cells] = np.bincount(
                pair.local, weights=c, minlength=pair.n_cells
            )
        data = self.cells_to_entries @ table
        data[self.diag_pos] += diagonal
        if not np.all(np.isfinite(data)):
            raise ValueError("the mixed-model equations have non-finite entries")
        return data

    def assemble(self, c: np.ndarray, diagonal: np.ndarray) -> sp.csc_matrix:
        """sum_p c_p e_p e_p' + diag(diagonal), on the symmetric pattern."""
        data = self._entries(c, diagonal)
        return sp.csc_matrix((data, self.indices, self.indptr), shape=(self.m, self.m))

    def assemble_dense(self, c: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
        """The same as a dense (symmetric) array."""
        out = np.zeros(self.m * self.m)
        out[self.keys] = self._entries(c, diagonal)
        return out.reshape(self.m, self.m)

    def quadratic_forms(self, entries: np.ndarray) -> np.ndarray:
        """e_p' R e_p for every pattern, given R's entries on the symmetric pattern (keys)."""
        table = self.entries_to_cells @ entries
        out = np.zeros(self.n_patterns)
        for pair in self.pairs:
            out += table[pair.offset : pair.offset + pair.n_cells][pair.local]
        return out


class DenseCholesky:
    """LAPACK Cholesky of a small, nearly full symmetric positive definite matrix, with the
    interface of ``SparseCholesky`` the equations use (solve, logdet, the inverse)."""

    def __init__(self, A: np.ndarray) -> None:
        try:
            self.L = scipy.linalg.cholesky(A, lower=True, overwrite_a=True, check_finite=False)
        except np.linalg.LinAlgError as err:
            raise NotPositiveDefiniteError(f"matrix is not positive definite: {err}") from None
        self._inverse: np.ndarray | None = None

    def solve(self, b: np.ndarray) -> np.ndarray:
        return scipy.linalg.cho_solve((self.L, True), b, check_finite=False)

    def logdet(self) -> float:
        return 2.0 * float(np.sum(np.log(np.diag(self.L))))

    def inverse(self) -> np.ndarray:
        if self._inverse is None:
            inv, info = scipy.linalg.lapack.dpotri(self.L, lower=1)
            if info:  # pragma: no cover - L comes from a successful factorisation
                raise NotPositiveDefiniteError(f"potri failed (info {info})")
            self._inverse = np.tril(inv) + np.tril(inv, -1).T
        return self._inverse


@dataclass
class PatternElimination:
    """Where the pattern-level term sits: its levels' offset in v, each pattern's level
    (``level``), and the current weights: D = a + w per pattern and f = a / D."""

    term: int
    start: int
    stop: int
    level: np.ndarray  # (n_d,) local level of the term per pattern (a bijection)
    D: np.ndarray | None = None
    f: np.ndarray | None = None


def _pattern_level_term(cols_d: np.ndarray, offsets: np.ndarray) -> int | None:
    """A term with exactly one pattern per level (and more terms besides), if any."""
    n_d, K = cols_d.shape
    if K < 2:
        return None
    for k in range(K):
        size = int(offsets[k + 1] - offsets[k])
        if size == n_d and np.all(np.bincount(cols_d[:, k] - offsets[k], minlength=size) == 1):
            return k
    return None


class MixedModelEquations:
    """Pattern, factor and products of the mixed-model equations for one design.

    Everything over the data rows goes through the distinct row patterns of Z (``Zd``,
    with ``pattern`` mapping rows to them): H = Zd' diag(sum of a per pattern) Zd + W_M is
    assembled per pair of term groups, never from an n x K^2 array. ``eliminate=False``
    keeps a pattern-level term in the factor (the plain path the tests compare with);
    ``dense`` forces (True) or forbids (False) dense LAPACK for the factored terms."""

    def __init__(
        self,
        X: np.ndarray,
        terms: list[RandomTermDesign],
        eliminate: bool = True,
        dense: bool | None = None,
    ) -> None:
        self.X = X
        self.n, self.p = X.shape
        self.terms = terms
        sizes = [t.n_levels for t in terms]
        self.offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.q = int(self.offsets[-1])
        self._chol: SparseCholesky | None = None
        self._factor: SparseCholesky | DenseCholesky | None = None
        self._dense = False
        self._selinv: tuple[np.ndarray, np.ndarray] | None = None
        self._selinv_map: np.ndarray | None = None
        self._forms: np.ndarray | None = None
        self.elimination: PatternElimination | None = None
        # cumulative time per phase (seconds) and the number of numeric factorisations
        self.timings = dict.fromkeys(("assemble", "factorise", "selected_inverse"), 0.0)
        self.timings["factorisations"] = 0.0
        if self.q == 0:
            self.Zd = sp.csr_matrix((0, 0))
            self.pattern = np.zeros(self.n, dtype=np.int64)
            self.n_patterns = 1
            return
        K = len(terms)
        self.pattern, cols_d = _distinct_patterns([t.codes for t in terms])
        cols_d = cols_d + self.offsets[:-1]
        self.n_patterns = n_d = len(cols_d)
        self.Zd = sp.csr_matrix(
            (np.ones(n_d * K), cols_d.ravel(), np.arange(0, n_d * K + 1, K)),
            shape=(n_d, self.q),
        )
        k_elim = _pattern_level_term(cols_d, self.offsets) if eliminate else None
        kept = [k for k in range(K) if k != k_elim]
        # columns of v that go into the factor (all, or all but the eliminated term's)
        self.kept = np.concatenate(
            [np.arange(self.offsets[k], self.offsets[k + 1]) for k in kept]
        ).astype(np.int64)
        if k_elim is not None:
            level = (cols_d[:, k_elim] - self.offsets[k_elim]).astype(np.int64)
            self.elimination = PatternElimination(
                k_elim, int(self.offsets[k_elim]), int(self.offsets[k_elim + 1]), level
            )
            self.E = self.Zd[:, self.kept].tocsr()
        else:
            self.E = self.Zd
        self.products = _PatternProducts(
            [cols_d[:, k] - self.offsets[k] for k in kept], [sizes[k] for k in kept]
        )
        if dense is None:
            dense = self.products.m <= _MAX_DENSE_ORDER and self.products.fill >= _MIN_DENSE_FILL
        self._dense = dense

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
    def factor(self, a: np.ndarray, w_m: np.ndarray) -> None:
        """Factor H (or, with a pattern-level term, the other terms' Schur complement)."""
        t0 = time.perf_counter()
        a_d = self.per_pattern(a)
        el = self.elimination
        if el is not None:
            w = w_m[el.start : el.stop][el.level]
            el.D = a_d + w
            el.f = a_d / el.D
            c = a_d * w / el.D
        else:
            c = a_d
        if self._dense:
            R_dense = self.products.assemble_dense(c, w_m[self.kept])
            t1 = time.perf_counter()
            self._factor = DenseCholesky(R_dense)
        else:
            R = self.products.assemble(c, w_m[self.kept])
            t1 = time.perf_counter()
            if self._chol is None:
                self._chol = SparseCholesky(R)
            else:
                self._chol.refactor(R)  # numeric only: the symbolic analysis is kept
            self._factor = self._chol
        self._selinv = None
        self._forms = None
        self.timings["assemble"] += t1 - t0
        self.timings["factorise"] += time.perf_counter() - t1
        self.timings["factorisations"] += 1

    def _logdet_H(self) -> float:
        assert self._factor is not None
        el = self.elimination
        extra = float(np.sum(np.log(el.D))) if el is not None else 0.0
        return self._factor.logdet() + extra

    def solve_levels(self, b: np.ndarray) -> np.ndarray:
        """H^{-1} b with the current factor, b (q,) or (q, k)."""
        if not self.q or b.size == 0:
            return np.zeros(b.shape)
        assert self._factor is not None
        el = self.elimination
        if el is None:
            return self._factor.solve(b).reshape(b.shape)
        assert el.D is not None and el.f is not None
        D = el.D if b.ndim == 1 else el.D[:, None]
        f = el.f if b.ndim == 1 else el.f[:, None]
        b_el = b[el.start : el.stop][el.level]  # per pattern
        y = self._factor.solve(b[self.kept] - self.E.T @ (f * b_el)).reshape(
            (len(self.kept), *b.shape[1:])
        )
        x = np.empty(b.shape)
        x[self.kept] = y
        x[el.start : el.stop][el.level] = b_el / D - f * (self.E @ y)
        return x

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
            self.factor(a, w_m)
            ZtAX = self.zt(AX)
            bv = self.zt(ar) + w_m * z_m
            logdet_H = self._logdet_H()
            M = self.solve_levels(ZtAX) if self.p else np.zeros((self.q, 0))
            hbv = self.solve_levels(bv)
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
    def _selected_inverse(self) -> tuple[np.ndarray, np.ndarray]:
        """R^{-1} on R's pattern (in the order of ``products.keys``) and its diagonal."""
        if self._selinv is None:
            t0 = time.perf_counter()
            if isinstance(self._factor, DenseCholesky):
                inverse = self._factor.inverse()
                self._selinv = (inverse.ravel()[self.products.keys], np.diag(inverse).copy())
            else:
                assert self._chol is not None
                S = self._chol.selected_inverse()
                if self._selinv_map is None:
                    # the selected inverse lives on the factor's pattern, which holds R's: find
                    # R's entries in it once (the symbolic factorisation never changes)
                    m = self.products.m
                    cols = np.repeat(np.arange(m, dtype=np.int64), np.diff(S.indptr))
                    self._selinv_map = np.searchsorted(cols * m + S.indices, self.products.keys)
                self._selinv = (S.data[self._selinv_map], S.diagonal())
            self.timings["selected_inverse"] += time.perf_counter() - t0
        return self._selinv

    def _pattern_forms(self) -> np.ndarray:
        """e_p' R^{-1} e_p per pattern (e_p: the pattern's levels of the factored terms)."""
        if self._forms is None:
            entries, _ = self._selected_inverse()
            t0 = time.perf_counter()
            self._forms = self.products.quadratic_forms(entries)
            self.timings["selected_inverse"] += time.perf_counter() - t0
        return self._forms

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
        diag = self.level_inverse_diagonal()
        if self.p:
            diag = diag + np.einsum("ij,jk,ik->i", sol.M, sol.cov_beta, sol.M)
        return diag

    def level_row_variances(self) -> np.ndarray:
        """z_i' H^{-1} z_i for every data row (beta held fixed), from the selected inverse.

        With a pattern-level term (z = u + e, u its level): 1/D + (1 - f)^2 e' R^{-1} e."""
        if not self.q:
            return np.zeros(self.n)
        forms = self._pattern_forms()
        el = self.elimination
        if el is not None:
            assert el.D is not None and el.f is not None
            forms = 1.0 / el.D + (1.0 - el.f) ** 2 * forms
        return forms[self.pattern]

    def level_inverse_diagonal(self) -> np.ndarray:
        """diag(H^{-1}) (beta held fixed); an eliminated level: 1/D + f^2 e' R^{-1} e."""
        if not self.q:
            return np.zeros(0)
        out = np.empty(self.q)
        out[self.kept] = self._selected_inverse()[1]
        el = self.elimination
        if el is not None:
            assert el.D is not None and el.f is not None
            out[el.start : el.stop][el.level] = 1.0 / el.D + el.f**2 * self._pattern_forms()
        return out

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
