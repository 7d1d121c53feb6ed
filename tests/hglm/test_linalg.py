"""hglm.linalg against dense numpy on the matrices the engine builds: A = T'WT + D."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from hglm.linalg import NotPositiveDefiniteError, SparseCholesky, row_quadratic_forms
from hglm.linalg import _ColumnBatch as ColumnBatch

TOL = 1e-8


def crossed_design(rng: np.random.Generator, n: int, levels: tuple[int, ...], p: int = 3):
    """T = [X | Z_1 | ... | Z_k]: dense X (intercept + covariates), crossed indicator factors."""
    x = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    blocks = [sp.csr_matrix(x)]
    for n_levels in levels:
        g = rng.integers(0, n_levels, n)
        blocks.append(sp.csr_matrix((np.ones(n), (np.arange(n), g)), shape=(n, n_levels)))
    return sp.hstack(blocks, format="csr"), p


def nested_design(rng: np.random.Generator, lots: int, ops: int, tools_per_op: int, p: int = 2):
    """Fab-like T: every row's lot follows one tool path (one tool per operation)."""
    wafers = 4
    n = lots * wafers
    lot = np.repeat(np.arange(lots), wafers)
    path = np.arange(ops) * tools_per_op + rng.integers(0, tools_per_op, (lots, ops))
    x = np.column_stack([np.ones(n), rng.normal(size=(n, p - 1))])
    z_lot = sp.csr_matrix((np.ones(n), (np.arange(n), lot)), shape=(n, lots))
    rows = np.repeat(np.arange(n), ops)
    z_tool = sp.csr_matrix(
        (np.ones(n * ops), (rows, path[lot].ravel())), shape=(n, ops * tools_per_op)
    )
    return sp.hstack([sp.csr_matrix(x), z_lot, z_tool], format="csr"), p


def mixed_model_matrix(rng: np.random.Generator, T: sp.csr_matrix, p: int):
    """A = T' W T + D with positive weights and a ridge on the random-effect block only."""
    w = rng.uniform(0.2, 3.0, T.shape[0])
    ridge = np.concatenate([np.zeros(p), rng.uniform(0.5, 2.0, T.shape[1] - p)])
    return sp.csc_matrix(T.T @ sp.diags(w) @ T + sp.diags(ridge)), w


@pytest.fixture(params=["crossed", "nested"])
def system(request):
    rng = np.random.default_rng(20261126)
    if request.param == "crossed":
        T, p = crossed_design(rng, 600, (25, 15, 7))
    else:
        T, p = nested_design(rng, lots=60, ops=5, tools_per_op=3)
    A, w = mixed_model_matrix(rng, T, p)
    return T, A, w, p


def test_factor_reproduces_the_permuted_matrix(system):
    _, A, _, _ = system
    chol = SparseCholesky(A)
    factor, perm = chol._factor_csc()
    dense = factor.toarray()
    assert np.allclose(np.triu(dense, 1), 0.0)
    assert np.allclose(dense @ dense.T, A.toarray()[np.ix_(perm, perm)], atol=TOL)
    assert np.array_equal(np.sort(chol.perm), np.arange(chol.n))


def test_solve_and_logdet_match_dense(system):
    _, A, _, _ = system
    rng = np.random.default_rng(1)
    dense = A.toarray()
    chol = SparseCholesky(A)
    assert chol.n == A.shape[0]
    b = rng.normal(size=chol.n)
    B = rng.normal(size=(chol.n, 4))
    np.testing.assert_allclose(chol.solve(b), np.linalg.solve(dense, b), atol=TOL)
    np.testing.assert_allclose(chol.solve(B), np.linalg.solve(dense, B), atol=TOL)
    assert chol.solve(b).shape == b.shape
    sign, logdet = np.linalg.slogdet(dense)
    assert sign == 1.0
    assert chol.logdet() == pytest.approx(logdet, abs=TOL)


def test_selected_inverse_entries_on_the_pattern(system):
    _, A, _, _ = system
    chol = SparseCholesky(A)
    inverse = np.linalg.inv(A.toarray())
    selected = chol.selected_inverse()
    assert isinstance(selected, sp.csc_matrix)
    pattern = np.zeros(A.shape, dtype=bool)
    pattern[selected.tocoo().row, selected.tocoo().col] = True
    # every non-zero of A is present; the pattern is symmetric
    assert pattern[A.toarray() != 0].all()
    assert (pattern == pattern.T).all()
    np.testing.assert_allclose(selected.toarray()[pattern], inverse[pattern], atol=TOL)
    np.testing.assert_allclose(chol.inverse_diagonal(), np.diag(inverse), atol=TOL)
    idx = np.array([0, 1, 2, A.shape[0] - 1, 7])
    np.testing.assert_allclose(chol.inverse_block(idx), inverse[np.ix_(idx, idx)], atol=TOL)


def test_nested_structure_takes_the_batched_path():
    rng = np.random.default_rng(5)
    T, p = nested_design(rng, lots=60, ops=5, tools_per_op=3)
    A, _ = mixed_model_matrix(rng, T, p)
    chol = SparseCholesky(A)
    chol.inverse_diagonal()
    assert any(isinstance(step, ColumnBatch) for step in chol._pattern.schedule)


def test_row_quadratic_forms_give_the_hat_diagonal(system):
    T, A, _, _ = system
    chol = SparseCholesky(A)
    dense_t = T.toarray()
    expected = np.einsum("ij,jk,ik->i", dense_t, np.linalg.inv(A.toarray()), dense_t)
    np.testing.assert_allclose(row_quadratic_forms(T, chol.selected_inverse()), expected, atol=TOL)


def test_cached_row_quadratic_forms_follow_refactors(system):
    """SparseCholesky.row_quadratic_forms keeps its set-up for one T across refactors."""
    T, A, _, p = system
    rng = np.random.default_rng(3)
    chol = SparseCholesky(A)
    dense_t = T.toarray()
    for _ in range(3):
        expected = np.einsum("ij,jk,ik->i", dense_t, np.linalg.inv(A.toarray()), dense_t)
        np.testing.assert_allclose(chol.row_quadratic_forms(T), expected, atol=TOL)
        np.testing.assert_allclose(
            chol.row_quadratic_forms(T), row_quadratic_forms(T, chol.selected_inverse())
        )
        A, _ = mixed_model_matrix(rng, T, p)
        chol.refactor(A)
    other = T[: T.shape[0] // 2]
    dense_o = other.toarray()
    expected = np.einsum("ij,jk,ik->i", dense_o, np.linalg.inv(A.toarray()), dense_o)
    np.testing.assert_allclose(chol.row_quadratic_forms(other), expected, atol=TOL)
    with pytest.raises(ValueError, match="columns"):
        chol.row_quadratic_forms(T[:, 1:])


def test_row_quadratic_forms_reject_a_pattern_without_the_needed_entries():
    T = sp.csr_matrix(np.array([[1.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    diagonal_only = sp.csc_matrix(np.eye(3))
    with pytest.raises(ValueError, match="lacks entry"):
        row_quadratic_forms(T, diagonal_only)
    # the same with columns used by many rows (read from the dense block of S)
    many = sp.csr_matrix(
        np.tile([[1.0, 1.0, 0.0], [0.0, 1.0, 2.0]], (5, 1)) * np.arange(1, 11)[:, None]
    )
    with pytest.raises(ValueError, match="lacks entry"):
        row_quadratic_forms(many, diagonal_only)
    with pytest.raises(ValueError, match="not finite"):
        row_quadratic_forms(many, sp.csc_matrix(np.full((3, 3), np.nan)))
    with pytest.raises(ValueError, match="3 x 3"):
        row_quadratic_forms(T, sp.csc_matrix(np.eye(2)))


def test_refactor_reuses_the_analysis_for_new_values(system):
    T, A, _, p = system
    rng = np.random.default_rng(2)
    chol = SparseCholesky(A)
    symbolic, perm = chol._factor, chol.perm.copy()
    chol.selected_inverse()
    for _ in range(2):
        A_new, _ = mixed_model_matrix(rng, T, p)
        chol.refactor(A_new)
        assert chol._factor is symbolic
        assert np.array_equal(chol.perm, perm)
        dense = A_new.toarray()
        assert chol.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], abs=TOL)
        np.testing.assert_allclose(chol.inverse_diagonal(), np.diag(np.linalg.inv(dense)), atol=TOL)
        b = rng.normal(size=chol.n)
        np.testing.assert_allclose(chol.solve(b), np.linalg.solve(dense, b), atol=TOL)


def test_refactor_accepts_csr_and_rejects_a_new_pattern(system):
    _, A, _, _ = system
    chol = SparseCholesky(A)
    chol.refactor(sp.csr_matrix(A * 2.0))
    assert chol.logdet() == pytest.approx(np.linalg.slogdet(2.0 * A.toarray())[1], abs=TOL)
    empty = np.argwhere(np.tril(A.toarray() == 0))
    i, j = empty[0]
    extra = A.tolil()
    extra[i, j] = extra[j, i] = 1e-3
    with pytest.raises(ValueError, match="sparsity pattern"):
        chol.refactor(extra.tocsc())
    with pytest.raises(ValueError, match="sparsity pattern"):
        chol.refactor(sp.eye(3, format="csc"))


def test_not_positive_definite_raises():
    indefinite = sp.csc_matrix(np.array([[1.0, 2.0, 0.0], [2.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))
    with pytest.raises(NotPositiveDefiniteError, match="not positive definite"):
        SparseCholesky(indefinite)
    chol = SparseCholesky(sp.csc_matrix(np.array([[4.0, 1.0], [1.0, 3.0]])))
    with pytest.raises(NotPositiveDefiniteError, match="of A"):
        chol.refactor(sp.csc_matrix(np.array([[1.0, 3.0], [3.0, 1.0]])))
    # a negative variance on one level: the error names that row of A
    diagonal = sp.diags([1.0, 2.0, -1.0, 3.0], format="csc")
    chol = SparseCholesky(sp.diags([1.0, 2.0, 1.0, 3.0], format="csc"))
    with pytest.raises(NotPositiveDefiniteError, match="row/column 2 of A"):
        chol.refactor(diagonal)
    assert isinstance(NotPositiveDefiniteError(), np.linalg.LinAlgError)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="square"):
        SparseCholesky(sp.csc_matrix(np.ones((2, 3))))
    with pytest.raises(ValueError, match="non-finite"):
        SparseCholesky(sp.csc_matrix(np.array([[np.nan, 0.0], [0.0, 1.0]])))
    with pytest.raises(TypeError, match=r"scipy\.sparse"):
        SparseCholesky(np.eye(2))
    chol = SparseCholesky(sp.eye(3, format="csc"))
    with pytest.raises(ValueError, match="shape"):
        chol.solve(np.ones(4))


def test_mid_sized_crossed_model_matches_dense_leverages_logdets_and_ses():
    """The issue's accuracy check at the linear-algebra level: augmented GLM of a crossed model
    (p = 3, three crossed terms, a few hundred unknowns), everything against dense numpy."""
    rng = np.random.default_rng(7)
    n, levels, p = 1500, (120, 80, 40), 3
    T_data, _ = crossed_design(rng, n, levels, p)
    q = sum(levels)
    # augmented design [[X, Z], [0, I]] with weights [W/phi, W_M/lambda]
    T_aug = sp.vstack([T_data, sp.hstack([sp.csr_matrix((q, p)), sp.eye(q)])], format="csr")
    lambdas = np.repeat([0.7, 0.3, 1.5], levels)
    w_aug = np.concatenate([rng.uniform(0.1, 0.25, n), 1.0 / lambdas])
    A = sp.csc_matrix(T_aug.T @ sp.diags(w_aug) @ T_aug)
    dense_a = A.toarray()
    dense_t = T_aug.toarray()

    chol = SparseCholesky(A)
    leverages = w_aug * row_quadratic_forms(T_aug, chol.selected_inverse())
    hat = dense_t @ np.linalg.solve(dense_a, dense_t.T * w_aug)
    np.testing.assert_allclose(leverages, np.diag(hat), atol=TOL)
    assert leverages.sum() == pytest.approx(A.shape[0], abs=1e-6)  # trace of a projection

    # log det D(h, (beta, v)) and log det D(h, v): the whole matrix and its v block
    assert chol.logdet() == pytest.approx(np.linalg.slogdet(dense_a)[1], abs=TOL)
    v_block = SparseCholesky(A[p:, p:])
    assert v_block.logdet() == pytest.approx(np.linalg.slogdet(dense_a[p:, p:])[1], abs=TOL)

    # SEs of beta and prediction SEs of v
    inverse = np.linalg.inv(dense_a)
    se_beta = np.sqrt(np.diag(chol.inverse_block(np.arange(p))))
    np.testing.assert_allclose(se_beta, np.sqrt(np.diag(inverse)[:p]), atol=TOL)
    np.testing.assert_allclose(
        np.sqrt(chol.inverse_diagonal()[p:]), np.sqrt(np.diag(inverse)[p:]), atol=TOL
    )


@st.composite
def spd_matrices(draw):
    """Random sparse SPD matrices: random symmetric pattern, diagonally dominant values."""
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.floats(0.0, 0.5))
    rng = np.random.default_rng(seed)
    off = sp.random(n, n, density=density, random_state=rng, data_rvs=rng.standard_normal)
    sym = sp.triu(off, 1) + sp.triu(off, 1).T
    dominance = np.asarray(abs(sym).sum(axis=1)).ravel() + rng.uniform(0.1, 2.0, n)
    return sp.csc_matrix(sym + sp.diags(dominance))


@settings(max_examples=60, deadline=None)
@given(spd_matrices())
def test_property_selected_inverse_and_logdet(A):
    chol = SparseCholesky(A)
    dense = A.toarray()
    inverse = np.linalg.inv(dense)
    selected = chol.selected_inverse().tocoo()
    np.testing.assert_allclose(selected.data, inverse[selected.row, selected.col], atol=TOL)
    assert chol.logdet() == pytest.approx(np.linalg.slogdet(dense)[1], abs=TOL)
    np.testing.assert_allclose(chol.inverse_diagonal(), np.diag(inverse), atol=TOL)


def test_row_quadratic_forms_with_repeated_rows_and_values():
    """Repeated rows are evaluated once; rows with equal columns but other values are not."""
    rng = np.random.default_rng(11)
    T, p = nested_design(rng, lots=30, ops=4, tools_per_op=3)
    A, _ = mixed_model_matrix(rng, T, p)
    T = T.tolil()
    T[5, 0] = 2.5  # same columns as its lot mates, another value
    T = sp.vstack([T.tocsr(), T.tocsr()[::3]], format="csr")
    S = SparseCholesky(A).selected_inverse()
    dense_t = T.toarray()
    expected = np.einsum("ij,jk,ik->i", dense_t, np.linalg.inv(A.toarray()), dense_t)
    np.testing.assert_allclose(row_quadratic_forms(T, S), expected, atol=TOL)
    np.testing.assert_allclose(row_quadratic_forms(T[:0], S), np.zeros(0))


def test_row_quadratic_forms_survive_a_hash_collision(monkeypatch):
    """Rows that collide in the first hash are compared entry by entry, not merged."""
    import hglm.linalg as linalg

    rng = np.random.default_rng(12)
    T, p = crossed_design(rng, 200, (9, 7))
    A, _ = mixed_model_matrix(rng, T, p)
    S = SparseCholesky(A).selected_inverse()
    T = sp.vstack([T, T[:50]], format="csr")
    real = linalg._row_hashes
    monkeypatch.setattr(
        linalg,
        "_row_hashes",
        lambda M, seed: np.zeros(M.shape[0], np.uint64) if seed == 0x5EED else real(M, seed),
    )
    dense_t = T.toarray()
    expected = np.einsum("ij,jk,ik->i", dense_t, np.linalg.inv(A.toarray()), dense_t)
    np.testing.assert_allclose(row_quadratic_forms(T, S), expected, atol=TOL)


def test_a_diagonal_matrix_is_its_own_factor():
    """One random term: H is diagonal and everything comes without CHOLMOD; the answers are
    those of the dense matrix."""
    rng = np.random.default_rng(8)
    d = rng.uniform(0.5, 3.0, 40)
    chol = SparseCholesky(sp.diags(d, format="csc"))
    b = rng.normal(size=(40, 3))
    np.testing.assert_allclose(chol.solve(b), b / d[:, None])
    np.testing.assert_allclose(chol.solve(b[:, 0]), b[:, 0] / d)
    assert chol.logdet() == pytest.approx(float(np.sum(np.log(d))))
    np.testing.assert_allclose(chol.inverse_diagonal(), 1 / d)
    np.testing.assert_allclose(chol.selected_inverse().toarray(), np.diag(1 / d))
    factor, perm = chol._factor_csc()
    np.testing.assert_allclose((factor @ factor.T).toarray()[np.ix_(perm, perm)], np.diag(d))
    # one level per row (T'WT is diagonal): the forms are t^2 / d of that level
    levels = rng.integers(0, 40, 12)
    t = rng.normal(size=12)
    T = sp.csr_matrix((t, levels, np.arange(13)), shape=(12, 40))
    np.testing.assert_allclose(chol.row_quadratic_forms(T), t**2 / d[levels])
    chol.refactor(sp.diags(2 * d, format="csc"))
    assert chol.logdet() == pytest.approx(float(np.sum(np.log(2 * d))))
    np.testing.assert_allclose(chol.inverse_diagonal(), 0.5 / d)
    with pytest.raises(NotPositiveDefiniteError, match="row/column 3 of A"):
        chol.refactor(sp.diags(np.where(np.arange(40) == 3, -1.0, d), format="csc"))


def test_refactor_on_the_same_symmetric_pattern_gathers_the_lower_triangle(system):
    """Repeated refactors with new values on one full symmetric CSC pattern (the IWLS) take
    the lower triangle by a gather; the factor is that of the new matrix."""
    _, A, _, _ = system
    A = sp.csc_matrix(A)
    A.sort_indices()
    chol = SparseCholesky(A)
    for scale in (1.5, 0.7):
        B = A.copy()
        B.data = B.data * scale
        B.setdiag(B.diagonal() + scale)
        B = sp.csc_matrix(B)
        B.sort_indices()
        assert B.nnz == A.nnz
        chol.refactor(B)
        assert chol.logdet() == pytest.approx(np.linalg.slogdet(B.toarray())[1], rel=1e-10)
    assert chol._gather is not None


def test_fully_crossed_leaves_share_their_ancestors():
    """Every level of the first term meets every level of the second (VerbAgg's persons x
    items): the leaves' R are all the same; the selected inverse is still the dense one."""
    rng = np.random.default_rng(12)
    n1, n2 = 40, 6
    rows = np.arange(n1 * n2)
    Z = sp.csr_matrix(
        (
            np.ones(2 * len(rows)),
            np.column_stack([rows // n2, n1 + rows % n2]).ravel(),
            np.arange(0, 2 * len(rows) + 1, 2),
        ),
        shape=(len(rows), n1 + n2),
    )
    w = rng.uniform(0.2, 1.0, len(rows))
    A = (Z.T @ sp.diags(w) @ Z + sp.diags(rng.uniform(0.5, 2.0, n1 + n2))).tocsc()
    chol = SparseCholesky(A)
    inverse = np.linalg.inv(A.toarray())
    np.testing.assert_allclose(chol.inverse_diagonal(), np.diag(inverse), rtol=1e-10)
    S = chol.selected_inverse()
    coo = S.tocoo()
    np.testing.assert_allclose(coo.data, inverse[coo.row, coo.col], rtol=1e-9, atol=1e-14)
    assert any(isinstance(step, ColumnBatch) for step in chol._pattern.schedule)
