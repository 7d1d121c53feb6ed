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

Why this module is longer than 600 lines: the pattern sums, the two eliminations and the
Schur-complement solve are one kernel over one representation (the distinct row patterns and
their term groups); each piece needs the others' index layout. May import ``hglm.design`` and
``hglm.linalg`` only.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import scipy.linalg
import scipy.sparse as sp

from hglm.design import RandomTermDesign
from hglm.linalg import NotPositiveDefiniteError, SparseCholesky, fixed_effects_block

# The factored terms' matrix goes to dense LAPACK when it is small and its pattern nearly full
# (a fab's tools and chambers all meet in some lot): CHOLMOD's factor would be one dense
# supernode anyway, and the selected inverse on its pattern the whole inverse.
_MAX_DENSE_ORDER = 3000
_MIN_DENSE_FILL = 0.3
# keys (the levels of two terms as one index) are grouped by counting over their range when
# it is at most this many times as long as the list of keys, plus the slack; else hashed
_COUNT_RANGE_PER_KEY = 4
_COUNT_RANGE_SLACK = 1024
# levels and indices below this are computed in 16 bits
_SMALL = np.iinfo(np.int16).max


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


def _countable(size: int, n: int) -> bool:
    """Whether n keys in the range 0..size-1 are grouped by counting over the range (nothing
    kept per key: the keys are recomputed on every pass) rather than by hashing (the group of
    every key kept)."""
    return size <= _COUNT_RANGE_PER_KEY * n + _COUNT_RANGE_SLACK


@dataclass
class _TermPair:
    """Where the cells of a group pair go for one pair of its terms (a, b): to the entries
    (level of a, level of b) of the m x m matrix, at ``lower`` in keys and, for two different
    terms, mirrored at ``upper``.

    A cell's entry is found from its index in the range of (level of a, level of b): for the
    groups' finest terms the cells are the entries (``present`` and ``entry`` None); else the
    cells are counted over that range (``present``: the occurring indices, in order) or, for a
    large range, each cell's entry is kept (``entry``)."""

    a: int
    b: int
    rows: np.ndarray  # finest level of g -> level of a
    cols: np.ndarray | None  # finest level of h -> level of b; None: b is h's finest term
    width: int  # levels of b
    n_range: int
    present: np.ndarray | None = None
    entry: np.ndarray | None = None
    lower: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))
    upper: np.ndarray | None = None

    @property
    def weight(self) -> float:
        """e' R e counts an entry between two different terms twice."""
        return 1.0 if self.a == self.b else 2.0

    def index(self, cg: np.ndarray, ch: np.ndarray) -> np.ndarray:
        """Each cell's (level of a, level of b) as one index into the range."""
        if self.a == self.b:  # a diagonal block: the cell is one level of a
            return self.rows[cg]
        rows = self.rows[cg] * self.width
        return rows + (ch if self.cols is None else self.cols[ch])

    def levels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(level of a, level of b) of indices into the range."""
        if self.a == self.b:
            return index, index
        return index // self.width, index % self.width

    def sums(self, table: np.ndarray, cg: np.ndarray, ch: np.ndarray) -> np.ndarray:
        """The entries' sums of the cells' values, each over its cells in order."""
        if self.entry is not None:
            return np.bincount(self.entry, weights=table, minlength=len(self.lower))
        if self.present is None:
            return table
        counts = np.bincount(self.index(cg, ch), weights=table, minlength=self.n_range)
        return counts[self.present]

    def per_cell(self, values: np.ndarray, cg: np.ndarray, ch: np.ndarray) -> np.ndarray:
        """The value of each cell's entry, given the entries' values (in ``lower`` order)."""
        if self.entry is not None:
            return values[self.entry]
        if self.present is None:
            return values
        full = np.zeros(self.n_range)
        full[self.present] = values
        return full[self.index(cg, ch)]


@dataclass
class _GroupPair:
    """The cells of a pair of groups (g <= h): the distinct (level of g, level of h) of the
    patterns (the finest terms' levels ``cg``, ``ch``), and the term pairs they feed.

    A pattern's cell is counted afresh on every pass over the range of (level of g, level of
    h), ``present`` holding the occurring indices in order, or, for a large range, kept per
    pattern (``local``)."""

    g: int
    h: int
    width: int  # levels of h's finest term: the index is level_g * width + level_h
    cg: np.ndarray
    ch: np.ndarray
    present: np.ndarray | None
    local: np.ndarray | None
    terms: list[_TermPair]

    @property
    def n_cells(self) -> int:
        return len(self.cg)

    @property
    def n_range(self) -> int:
        """The indices' range as far as it occurs."""
        assert self.present is not None
        return int(self.present[-1]) + 1 if len(self.present) else 0


class _PatternProducts:
    """Sums over patterns of c_p e_p e_p' (assembly) and e_p' R^{-1} e_p (quadratic forms),
    for the indicator rows e_p (n_d x m, K entries each) of a set of terms, grouped by nesting.

    A pattern adds its weight to one cell per pair of groups (a fab: one per pair of
    operations, the chambers fixing the tools), so the work per assembly is n_d times the
    number of group pairs; every term pair (a, b) of a group pair then sums the cells into its
    entries of the m x m matrix (``keys``: col * m + row, sorted). The cells and entries are
    found afresh on every pass from the groups' levels, so nothing is kept per pattern and
    group pair, nor per cell and term pair, unless a range is too large to count over (the
    chained model of a fab's year: 300,000 patterns in 741 group pairs, whose 1.3 million cells
    feed term pairs 82 million times). Every sum runs over the patterns, and then over the
    cells, in a fixed order."""

    def __init__(self, levels: list[np.ndarray], sizes: list[int]) -> None:
        self.m = m = int(sum(sizes))
        offsets = np.concatenate(([0], np.cumsum(sizes))).astype(np.int64)
        self.n_patterns = len(levels[0]) if levels else 0
        groups = _nesting_groups(levels, sizes)
        # per group: its finest term's level of each pattern, and the map from that level to
        # each member's level
        self.widths = [sizes[group[0]] for group in groups]
        self.group_levels = [
            levels[group[0]].astype(np.int16 if width <= _SMALL else np.intp)
            for group, width in zip(groups, self.widths, strict=True)
        ]
        maps = []
        for group in groups:
            members = {}
            for j in group:
                image = np.zeros(sizes[group[0]], dtype=np.intp)
                image[levels[group[0]]] = levels[j]
                members[j] = image
            maps.append(members)
        self.pairs: list[_GroupPair] = []
        entries = []  # each term pair's entries as (row, col) in 0..m-1
        for g, group_g in enumerate(groups):
            for h in range(g, len(groups)):
                pair = self._group_pair(g, h)
                term_pairs = (
                    [(a, b) for i, a in enumerate(group_g) for b in group_g[i:]]
                    if g == h
                    else [(a, b) for a in group_g for b in groups[h]]
                )
                for a, b in term_pairs:
                    cols = None if b == groups[h][0] else maps[h][b]
                    n_range = sizes[a] if a == b else sizes[a] * sizes[b]
                    tp = _TermPair(a, b, maps[g][a], cols, sizes[b], n_range)
                    found = self._find_entries(tp, pair, (a, b) == (group_g[0], groups[h][0]))
                    row, col = tp.levels(found)
                    entries.append((row + offsets[a], col + offsets[b]))
                    pair.terms.append(tp)
                self.pairs.append(pair)
        # the symmetric pattern: every term pair's entries, mirrored, and the whole diagonal
        diag = np.arange(m, dtype=np.int64)
        parts = [diag * m + diag]
        parts += [col * m + row for row, col in entries]
        parts += [row * m + col for row, col in entries]
        keys = np.sort(np.concatenate(parts))
        self.keys = keys[np.concatenate(([True], keys[1:] != keys[:-1]))]
        term_pairs = (tp for pair in self.pairs for tp in pair.terms)
        for tp, (row, col) in zip(term_pairs, entries, strict=True):
            tp.lower = np.searchsorted(self.keys, col * m + row)
            if tp.a != tp.b:
                tp.upper = np.searchsorted(self.keys, row * m + col)
        for pair in self.pairs:
            # e' R e adds up a cell's entries in the order of their keys: by the column's
            # term, then the row's
            pair.terms.sort(key=lambda tp: (tp.b, tp.a))
        self.diag_pos = np.searchsorted(self.keys, diag * m + diag)
        self.indices = (self.keys % m).astype(np.int32)
        self.indptr = np.searchsorted(self.keys // m, np.arange(m + 1)).astype(np.int32)

    def _index(self, g: int, h: int, width: int, out: np.ndarray | None = None) -> np.ndarray:
        """Each pattern's (level of g, level of h) as one index, level_g * width + level_h
        (in ``out`` if given)."""
        if out is None:
            out = np.empty(self.n_patterns, dtype=np.intp)
        level_g, level_h = self.group_levels[g], self.group_levels[h]
        if g == h:
            if level_g.dtype == np.intp:
                return level_g
            np.copyto(out, level_g)
        elif level_g.dtype == level_h.dtype == np.int16 and self.widths[g] * width <= _SMALL:
            # two small groups (a fab's chambers): 16-bit arithmetic is several times faster
            small = np.multiply(level_g, width)
            np.copyto(out, np.add(small, level_h, out=small))
        else:
            np.multiply(level_g, width, out=out, dtype=np.intp)
            np.add(out, level_h, out=out)
        return out

    def _group_pair(self, g: int, h: int) -> _GroupPair:
        """The cells of groups g and h, counted over the range of their index or hashed."""
        width = self.widths[h]
        index = self._index(g, h, width)
        n_range = int(index.max()) + 1 if len(index) else 0
        if _countable(n_range, len(index)):
            present = np.flatnonzero(np.bincount(index, minlength=n_range))
            cells, local = present, None
        else:
            codes, uniques = pd.factorize(index)
            present, local = None, codes.astype(np.intp)
            cells = np.asarray(uniques, dtype=np.int64)
        cg, ch = (cells, cells) if g == h else (cells // width, cells % width)
        return _GroupPair(g, h, width, cg, ch, present, local, [])

    @staticmethod
    def _find_entries(tp: _TermPair, pair: _GroupPair, finest: bool) -> np.ndarray:
        """The term pair's entries as indices into its range (the order of its sums), and how
        the cells find them."""
        if finest:  # the groups' finest terms: the cells are the entries
            return pair.cg if tp.a == tp.b else pair.cg * tp.width + pair.ch
        index = tp.index(pair.cg, pair.ch)
        if _countable(tp.n_range, len(index)):
            tp.present = np.flatnonzero(np.bincount(index, minlength=tp.n_range))
            return tp.present
        found, entry = np.unique(index, return_inverse=True)
        tp.entry = entry.astype(np.intp)
        return found

    @property
    def fill(self) -> float:
        """Share of the m x m entries on the pattern."""
        return len(self.keys) / max(self.m * self.m, 1)

    def _cell_sums(self, pair: _GroupPair, c: np.ndarray, buffer: np.ndarray) -> np.ndarray:
        if pair.local is not None:
            return np.bincount(pair.local, weights=c, minlength=pair.n_cells)
        index = self._index(pair.g, pair.h, pair.width, buffer)
        return np.bincount(index, weights=c, minlength=pair.n_range)[pair.present]

    def _entries(self, c: np.ndarray, diagonal: np.ndarray) -> np.ndarray:
        data = np.zeros(len(self.keys))
        buffer = np.empty(self.n_patterns, dtype=np.intp)
        for pair in self.pairs:
            table = self._cell_sums(pair, c, buffer)
            for tp in pair.terms:
                sums = tp.sums(table, pair.cg, pair.ch)
                data[tp.lower] = sums
                if tp.upper is not None:
                    data[tp.upper] = sums
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
        out = np.zeros(self.n_patterns)
        buffer = np.empty(self.n_patterns, dtype=np.intp)
        for pair in self.pairs:
            table = np.zeros(pair.n_cells)
            for tp in pair.terms:
                table += tp.weight * tp.per_cell(entries[tp.lower], pair.cg, pair.ch)
            if pair.local is not None:
                out += table[pair.local]
            else:
                full = np.zeros(pair.n_range)
                full[pair.present] = table
                out += full[self._index(pair.g, pair.h, pair.width, buffer)]
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
            self._rows_are_patterns = False
            return
        K = len(terms)
        self.pattern, cols_d = _distinct_patterns([t.codes for t in terms])
        cols_d = cols_d.astype(np.int64, copy=False)  # a fresh array: shifted in place
        cols_d += self.offsets[:-1]
        self.n_patterns = n_d = len(cols_d)
        # every row its own pattern (a fab whose chambers are dealt per wafer): patterns are
        # numbered by first appearance, so the rows are the patterns in order
        self._rows_are_patterns = n_d == self.n
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
        if self._rows_are_patterns:
            return values + 0.0  # a sum over one row, -0.0 included
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
        logdet_S, cov_beta = fixed_effects_block(schur)
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
        Xt = self.X - (self._to_rows(self.Zd @ sol.M) if self.q else 0.0)
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
        elif self._rows_are_patterns:
            forms = forms.copy()  # not the cached array itself
        return self._to_rows(forms)

    def pattern_level_variances(self) -> tuple[np.ndarray, np.ndarray]:
        """(levels, forms): each distinct row pattern's global level indices (n_d, K) and
        z'H^{-1}z for it (beta held fixed), from the selected inverse: what a new row with
        the same levels as some data row needs (``hglm.prediction``)."""
        K = len(self.terms)
        levels = self.Zd.indices.reshape(self.n_patterns, K)
        forms = self._pattern_forms()
        el = self.elimination
        if el is not None:
            assert el.D is not None and el.f is not None
            forms = 1.0 / el.D + (1.0 - el.f) ** 2 * forms
        return levels, np.array(forms, dtype=float)

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
        return self._to_rows(self.Zd @ v) if self.q else np.zeros(self.n)

    def _to_rows(self, per_pattern: np.ndarray) -> np.ndarray:
        """Per-pattern values (n_d,) or (n_d, k) repeated to the rows of each pattern."""
        return per_pattern if self._rows_are_patterns else per_pattern[self.pattern]


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
