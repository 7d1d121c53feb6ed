"""Covariance structures of normal random effects, as sparse precision matrices Q(theta).

A structured term has v ~ N(0, Q(theta)^{-1}) over its q unknowns. Every structure gives,
on a pattern fixed at construction (so that the mixed-model equations keep one symbolic
factorisation), the entries of Q(theta), their derivatives in theta, log det Q(theta) and
its derivatives. theta is unconstrained (the outer search needs no bounds):

* ``Unstructured`` (``(x | g)``, one k x k Sigma per level of g; v level-major): theta the
  lower triangle of Sigma's Cholesky factor L, row by row, with log L_ii on the diagonal
  (lme4's theta, with the diagonal on the log scale). Q = I (x) Sigma^{-1}.
* ``CAR(W)``: Q = (I - rho W) / tau (R hglm's parameterisation), theta = (log tau,
  logit of rho's position in (1/omega_min, 1/omega_max)), omega the eigenvalues of W.
* ``SAR(W)``: Q = (I - rho W)'(I - rho W) / tau, theta as for CAR.
* ``AR1``: per level of g an AR(1) over T ordered times with marginal variance s2 and
  correlation rho (glmmTMB's parameterisation), theta = (log s2, atanh rho); Q is
  tridiagonal per group.
* ``Precision(Q0)``: Q = Q0 / tau, theta = (log tau); log det Q0 by a sparse Cholesky, once.

``CAR``, ``SAR`` and ``Precision`` are what users pass (``correlation={"area": hglm.CAR(W)}``);
they are bound to a term's levels by ``bind``. log det Q comes from W's eigenvalues (computed
once) or from a closed form; nothing here inverts a q x q matrix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy.special import expit

# rho of CAR/SAR stays this far (relatively) inside its open interval
_RHO_MARGIN = 1e-9
# the smallest variance a search goes to (the engine's lambdas stop there too)
LOG_VARIANCE_FLOOR = float(np.log(1e-8))


class Structure:
    """A bound structure over ``q`` unknowns (see the module docstring).

    Subclasses set ``q``, ``rows``/``cols`` (the pattern of Q, both triangles) and
    ``param_names``, and implement ``values``, ``derivatives``, ``logdet``, ``dlogdet``,
    ``start``, ``rescale`` and ``natural``."""

    q: int
    rows: np.ndarray
    cols: np.ndarray
    param_names: list[str]

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    def values(self, theta: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def derivatives(self, theta: np.ndarray) -> list[np.ndarray]:  # pragma: no cover
        raise NotImplementedError

    def logdet(self, theta: np.ndarray) -> float:  # pragma: no cover
        raise NotImplementedError

    def dlogdet(self, theta: np.ndarray) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def start(self, variance: float) -> np.ndarray:  # pragma: no cover
        """theta for independent effects of the given variance (and no correlation)."""
        raise NotImplementedError

    def lower(self) -> np.ndarray:
        """Lower bounds of theta: a variance (tau, Sigma's diagonal) stops at 1e-8 (on the
        scale of phi in a profiled Gaussian model), as the engine's lambdas do; a fit there is
        singular. Correlation parameters are free."""
        return np.full(self.n_params, -np.inf)

    def rescale(self, theta: np.ndarray, log_c: float) -> np.ndarray:  # pragma: no cover
        """theta of the covariance multiplied by exp(log_c) (Q divided by it)."""
        raise NotImplementedError

    def natural(self, theta: np.ndarray) -> dict[str, Any]:  # pragma: no cover
        """The parameters as users read them (variances, SDs, correlations, rho, tau)."""
        raise NotImplementedError

    def precision(self, theta: np.ndarray) -> sp.csc_matrix:
        """Q(theta) as a sparse matrix (the fixed pattern, explicit zeros included)."""
        Q = sp.coo_matrix((self.values(theta), (self.rows, self.cols)), shape=(self.q, self.q))
        return Q.tocsc()

    def quadratic(self, theta: np.ndarray, v: np.ndarray) -> float:
        """v' Q(theta) v."""
        return float(np.sum(self.values(theta) * v[self.rows] * v[self.cols]))

    def logdensity(self, theta: np.ndarray, v: np.ndarray) -> float:
        """log of the N(0, Q^{-1}) density at v."""
        return 0.5 * (self.logdet(theta) - self.q * np.log(2 * np.pi) - self.quadratic(theta, v))


# ----------------------------------------------------------------------------- unstructured


class Unstructured(Structure):
    """k x k Sigma per level of a grouping with ``n_groups`` levels; v is level-major
    (v[g * k + j]: column j of level g)."""

    def __init__(self, n_cols: int, n_groups: int, columns: list[str] | None = None) -> None:
        self.k = k = n_cols
        self.n_groups = n_groups
        self.q = k * n_groups
        self.columns = columns or [f"x{j}" for j in range(k)]
        self._tril = np.tril_indices(k)
        r, c = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
        base = np.arange(n_groups)[:, None] * k
        self.rows = (base + r.ravel()[None, :]).ravel()
        self.cols = (base + c.ravel()[None, :]).ravel()
        self.param_names = [
            f"log_L[{i},{j}]" if i == j else f"L[{i},{j}]" for i, j in zip(*self._tril, strict=True)
        ]

    def cholesky(self, theta: np.ndarray) -> np.ndarray:
        L = np.zeros((self.k, self.k))
        i, j = self._tril
        L[i, j] = np.where(i == j, np.exp(theta), theta)
        return L

    def sigma(self, theta: np.ndarray) -> np.ndarray:
        L = self.cholesky(theta)
        return L @ L.T

    def _sigma_inverse(self, theta: np.ndarray) -> np.ndarray:
        L = self.cholesky(theta)
        L_inv = np.linalg.solve(L, np.eye(self.k))  # k x k: the per-level block only
        return L_inv.T @ L_inv

    def values(self, theta: np.ndarray) -> np.ndarray:
        return np.tile(self._sigma_inverse(theta).ravel(), self.n_groups)

    def derivatives(self, theta: np.ndarray) -> list[np.ndarray]:
        L = self.cholesky(theta)
        S_inv = self._sigma_inverse(theta)
        out = []
        for m, (i, j) in enumerate(zip(*self._tril, strict=True)):
            dL = np.zeros((self.k, self.k))
            dL[i, j] = L[i, j] if i == j else 1.0
            dS = dL @ L.T + L @ dL.T
            out.append(np.tile((-S_inv @ dS @ S_inv).ravel(), self.n_groups))
            del m
        return out

    def logdet(self, theta: np.ndarray) -> float:
        i, j = self._tril
        return -2.0 * self.n_groups * float(np.sum(theta[i == j]))

    def dlogdet(self, theta: np.ndarray) -> np.ndarray:
        i, j = self._tril
        return np.where(i == j, -2.0 * self.n_groups, 0.0)

    def start(self, variance: float) -> np.ndarray:
        i, j = self._tril
        return np.where(i == j, 0.5 * np.log(variance), 0.0)

    def lower(self) -> np.ndarray:
        i, j = self._tril
        return np.where(i == j, 0.5 * LOG_VARIANCE_FLOOR, -np.inf)

    def rescale(self, theta: np.ndarray, log_c: float) -> np.ndarray:
        i, j = self._tril
        return np.where(i == j, theta + 0.5 * log_c, theta * np.exp(0.5 * log_c))

    def natural(self, theta: np.ndarray) -> dict[str, Any]:
        S = self.sigma(theta)
        sd = np.sqrt(np.diag(S))
        return {"cov": S, "variance": np.diag(S), "sd": sd, "corr": S / np.outer(sd, sd)}


# ---------------------------------------------------------------------------------- AR(1)


class AR1(Structure):
    """AR(1) over ``n_times`` ordered times within each of ``n_groups`` levels; v is
    group-major (v[g * T + t])."""

    param_names: ClassVar[list[str]] = ["log_variance", "atanh_rho"]

    def __init__(self, n_times: int, n_groups: int) -> None:
        T = self.T = n_times
        self.n_groups = n_groups
        self.q = T * n_groups
        base = (np.arange(n_groups) * T)[:, None]
        diag = (base + np.arange(T)).ravel()
        lo = (base + np.arange(T - 1)).ravel()
        self.rows = np.concatenate([diag, lo + 1, lo])
        self.cols = np.concatenate([diag, lo, lo + 1])
        self._n_diag = len(diag)
        end = np.zeros(T, dtype=bool)
        end[[0, T - 1]] = True
        self._end = np.tile(end, n_groups)  # the first and last time of every group

    def _parts(self, rho: float) -> tuple[np.ndarray, np.ndarray]:
        """(diagonal, off-diagonal) of (1 - rho^2) s2 Q."""
        diag = np.where(self._end, 1.0, 1.0 + rho**2)
        if self.T == 1:
            diag = np.full(self._n_diag, 1.0 - rho**2)
        off = np.full(len(self.rows) - self._n_diag, -rho)
        return diag, off

    def values(self, theta: np.ndarray) -> np.ndarray:
        s2, rho = np.exp(theta[0]), np.tanh(theta[1])
        diag, off = self._parts(rho)
        return np.concatenate([diag, off]) / (s2 * (1 - rho**2))

    def derivatives(self, theta: np.ndarray) -> list[np.ndarray]:
        s2, rho = np.exp(theta[0]), np.tanh(theta[1])
        c = 1 - rho**2
        diag, off = self._parts(rho)
        val = np.concatenate([diag, off])
        # d/d rho of val / (s2 c); d rho / d atanh = c
        if self.T == 1:
            d_val = np.concatenate([np.full(self._n_diag, -2 * rho), np.zeros(len(off))])
        else:
            d_val = np.concatenate([np.where(self._end, 0.0, 2 * rho), np.full(len(off), -1.0)])
        d_rho = (d_val / c + val * 2 * rho / c**2) / s2
        return [-val / (s2 * c), d_rho * c]

    def logdet(self, theta: np.ndarray) -> float:
        rho = np.tanh(theta[1])
        return -self.n_groups * (self.T * theta[0] + (self.T - 1) * np.log1p(-(rho**2)))

    def dlogdet(self, theta: np.ndarray) -> np.ndarray:
        rho = np.tanh(theta[1])
        # d/d atanh of -(T-1) log(1 - rho^2) = (T-1) 2 rho
        return np.array([-self.n_groups * self.T, self.n_groups * (self.T - 1) * 2 * rho])

    def start(self, variance: float) -> np.ndarray:
        return np.array([np.log(variance), 0.0])

    def lower(self) -> np.ndarray:
        return np.array([LOG_VARIANCE_FLOOR, -np.inf])

    def rescale(self, theta: np.ndarray, log_c: float) -> np.ndarray:
        return np.array([theta[0] + log_c, theta[1]])

    def natural(self, theta: np.ndarray) -> dict[str, Any]:
        return {"variance": float(np.exp(theta[0])), "rho": float(np.tanh(theta[1]))}


# ------------------------------------------------------------------- neighbour structures


def _neighbours(W: Any, what: str) -> tuple[sp.csr_matrix, list[str] | None]:
    """W as sparse CSR with its level names (a DataFrame's index), checked."""
    names = None
    if isinstance(W, pd.DataFrame):
        names = [str(x) for x in W.index]
        if [str(c) for c in W.columns] != names and W.shape[0] == W.shape[1]:
            # columns named otherwise (V1..Vq): taken in the order of the rows
            pass
        W = W.to_numpy(dtype=float)
    M = sp.csr_matrix(W, dtype=float)
    if M.shape[0] != M.shape[1]:
        raise ValueError(f"the neighbour matrix of {what} must be square, got {M.shape}")
    if M.shape[0] < 2:
        raise ValueError(f"the neighbour matrix of {what} needs at least two areas")
    if not np.all(np.isfinite(M.data)):
        raise ValueError(f"the neighbour matrix of {what} has missing or infinite entries")
    if M.diagonal().any():
        raise ValueError(f"the neighbour matrix of {what} must have a zero diagonal")
    M.eliminate_zeros()
    M.sort_indices()
    return M, names


def _rho_range(omega: np.ndarray, what: str) -> tuple[float, float]:
    lo, hi = 1.0 / float(np.min(omega)), 1.0 / float(np.max(omega))
    if not (lo < 0 < hi):
        raise ValueError(f"the neighbour matrix of {what} has no admissible rho range")
    width = hi - lo
    return lo + _RHO_MARGIN * width, hi - _RHO_MARGIN * width


@dataclass
class _SpatialSpec:
    """What users pass: W (sparse, dense or a DataFrame whose index names the levels)."""

    W: Any
    kind: str = field(init=False, default="")

    def bind(self, levels: np.ndarray, term: str) -> Structure:
        M, names = _neighbours(self.W, f"{self.kind}({term})")
        q = M.shape[0]
        if q != len(levels):
            raise ValueError(
                f"{self.kind}: the neighbour matrix has {q} rows, the term {term} has "
                f"{len(levels)} levels"
            )
        if names is not None:
            want = [str(x) for x in levels]
            if sorted(names) != sorted(want):
                missing = sorted(set(want) - set(names))[:5]
                raise ValueError(
                    f"{self.kind}: the neighbour matrix's index does not name the levels of "
                    f"{term} (e.g. missing {missing})"
                )
            order = pd.Index(names).get_indexer(want)
            M = M[order][:, order].tocsr()
        if (abs(M - M.T) > 1e-12).nnz:
            raise ValueError(f"{self.kind}: the neighbour matrix of {term} must be symmetric")
        return _Spatial(M, self.kind)


class CAR(_SpatialSpec):
    """Conditional autoregression over a neighbour matrix W: Q = (I - rho W) / tau."""

    def __init__(self, W: Any) -> None:
        super().__init__(W)
        self.kind = "CAR"


class SAR(_SpatialSpec):
    """Simultaneous autoregression over W: Q = (I - rho W)'(I - rho W) / tau."""

    def __init__(self, W: Any) -> None:
        super().__init__(W)
        self.kind = "SAR"


class _Spatial(Structure):
    param_names: ClassVar[list[str]] = ["log_tau", "logit_rho"]

    def __init__(self, W: sp.csr_matrix, kind: str) -> None:
        self.kind = kind
        self.q = q = W.shape[0]
        self.W = W
        # eigenvalues once (W symmetric): log det and rho's range without any factorisation
        self.omega = np.linalg.eigvalsh(W.toarray()) if q <= 5000 else _eigvals_sparse(W)
        self.rho_lo, self.rho_hi = _rho_range(self.omega, kind)
        eye = sp.identity(q, format="csr")
        if kind == "CAR":
            parts = [eye, W]
        else:
            WtW = (W.T @ W).tocsr()
            parts = [eye, W, WtW]
        pattern = abs(parts[0])
        for extra in parts[1:]:
            pattern = pattern + abs(extra)
        pattern = pattern.tocoo()
        self.rows, self.cols = pattern.row.astype(np.int64), pattern.col.astype(np.int64)
        self._parts = [np.asarray(p[self.rows, self.cols]).ravel() for p in parts]

    def rho(self, theta: np.ndarray) -> float:
        return self.rho_lo + (self.rho_hi - self.rho_lo) * float(expit(theta[1]))

    def _drho(self, theta: np.ndarray) -> float:
        e = float(expit(theta[1]))
        return (self.rho_hi - self.rho_lo) * e * (1 - e)

    def _unscaled(self, rho: float) -> tuple[np.ndarray, np.ndarray]:
        """(tau Q, d(tau Q)/d rho) on the pattern."""
        if self.kind == "CAR":
            eye, W = self._parts
            return eye - rho * W, -W
        eye, W, WtW = self._parts
        return eye - 2 * rho * W + rho**2 * WtW, -2 * W + 2 * rho * WtW

    def values(self, theta: np.ndarray) -> np.ndarray:
        return self._unscaled(self.rho(theta))[0] / np.exp(theta[0])

    def derivatives(self, theta: np.ndarray) -> list[np.ndarray]:
        tau = np.exp(theta[0])
        val, dval = self._unscaled(self.rho(theta))
        return [-val / tau, dval * self._drho(theta) / tau]

    def _power(self) -> int:
        return 1 if self.kind == "CAR" else 2

    def logdet(self, theta: np.ndarray) -> float:
        rho = self.rho(theta)
        return self._power() * float(np.sum(np.log(1 - rho * self.omega))) - self.q * theta[0]

    def dlogdet(self, theta: np.ndarray) -> np.ndarray:
        rho = self.rho(theta)
        d_rho = -self._power() * float(np.sum(self.omega / (1 - rho * self.omega)))
        return np.array([-float(self.q), d_rho * self._drho(theta)])

    def start(self, variance: float) -> np.ndarray:
        # rho = 0: the logit of 0's position in (lo, hi)
        pos = -self.rho_lo / (self.rho_hi - self.rho_lo)
        return np.array([np.log(variance), float(np.log(pos / (1 - pos)))])

    def lower(self) -> np.ndarray:
        return np.array([LOG_VARIANCE_FLOOR, -np.inf])

    def theta_of(self, tau: float, rho: float) -> np.ndarray:
        pos = (rho - self.rho_lo) / (self.rho_hi - self.rho_lo)
        return np.array([np.log(tau), float(np.log(pos / (1 - pos)))])

    def rescale(self, theta: np.ndarray, log_c: float) -> np.ndarray:
        return np.array([theta[0] + log_c, theta[1]])

    def natural(self, theta: np.ndarray) -> dict[str, Any]:
        return {"tau": float(np.exp(theta[0])), "rho": self.rho(theta)}


def _eigvals_sparse(W: sp.csr_matrix) -> np.ndarray:  # pragma: no cover - large W only
    """All eigenvalues of a large symmetric W (dense LAPACK is the robust way; this is the
    one-off cost R hglm pays too)."""
    return np.linalg.eigvalsh(W.toarray())


class Precision(Structure):
    """A user-supplied precision matrix Q0 (sparse or dense, symmetric positive definite, or a
    DataFrame whose index names the levels): v ~ N(0, tau Q0^{-1}), tau estimated."""

    param_names: ClassVar[list[str]] = ["log_tau"]

    def __init__(self, Q: Any) -> None:
        self.Q_given = Q
        self.q = 0

    def bind(self, levels: np.ndarray, term: str) -> Precision:
        from hglm.linalg import NotPositiveDefiniteError, SparseCholesky

        Q = self.Q_given
        names = [str(x) for x in Q.index] if isinstance(Q, pd.DataFrame) else None
        M = sp.csc_matrix(Q.to_numpy(dtype=float) if names is not None else Q, dtype=float)
        if M.shape != (len(levels), len(levels)):
            raise ValueError(
                f"Precision: the matrix is {M.shape}, the term {term} has {len(levels)} levels"
            )
        if names is not None:
            want = [str(x) for x in levels]
            if sorted(names) != sorted(want):
                raise ValueError(
                    f"Precision: the matrix's index does not name the levels of {term}"
                )
            order = pd.Index(names).get_indexer(want)
            M = M[order][:, order].tocsc()
        if (abs(M - M.T) > 1e-10 * max(abs(M).max(), 1.0)).nnz:
            raise ValueError(f"Precision: the matrix of {term} must be symmetric")
        try:
            logdet0 = SparseCholesky(M).logdet()
        except NotPositiveDefiniteError as err:
            raise ValueError(f"Precision: the matrix of {term} is not positive definite") from err
        bound = Precision(self.Q_given)
        bound.q = M.shape[0]
        coo = M.tocoo()
        bound.rows, bound.cols = coo.row.astype(np.int64), coo.col.astype(np.int64)
        bound._data = coo.data.copy()
        bound._logdet0 = float(logdet0)
        return bound

    def values(self, theta: np.ndarray) -> np.ndarray:
        return self._data / np.exp(theta[0])

    def derivatives(self, theta: np.ndarray) -> list[np.ndarray]:
        return [-self._data / np.exp(theta[0])]

    def logdet(self, theta: np.ndarray) -> float:
        return self._logdet0 - self.q * float(theta[0])

    def dlogdet(self, theta: np.ndarray) -> np.ndarray:
        return np.array([-float(self.q)])

    def start(self, variance: float) -> np.ndarray:
        return np.array([np.log(variance)])

    def lower(self) -> np.ndarray:
        return np.array([LOG_VARIANCE_FLOOR])

    def rescale(self, theta: np.ndarray, log_c: float) -> np.ndarray:
        return np.array([theta[0] + log_c])

    def natural(self, theta: np.ndarray) -> dict[str, Any]:
        return {"tau": float(np.exp(theta[0]))}


CorrelationSpec = CAR | SAR | Precision
