"""The state of a fit, as plain data: dispersions, the mean fit, and what an algorithm returns.

These types sit at the bottom of the engine's import graph: every algorithm (``hglm.eql``,
``hglm.hl``, ``hglm.lmm``) produces them and ``hglm.results`` reads them, so they import
nothing of ``hglm`` at run time (the types they mention are for annotations only).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

from hglm.diagnostics import ConvergenceCode, Diagnostics, SingularTerm

if TYPE_CHECKING:
    from hglm.design import ModelDesign
    from hglm.likelihood import Likelihoods
    from hglm.mme import MMESolution, ObservationElimination
    from hglm.negbin import ThetaEstimate

# log lambda of a term without a dispersion model stays within these (the HL and LMM searches)
LOG_LAMBDA_BOUNDS = (np.log(1e-8), np.log(1e8))


@dataclass
class Dispersions:
    """phi per row (log-linear model X_disp gamma) and lambda per level of each term."""

    gamma: np.ndarray  # coefficients of log phi ([] when phi is fixed at 1)
    delta: list[np.ndarray]  # coefficients of log lambda, per term
    phi_fixed: bool

    def phi(self, design: ModelDesign) -> np.ndarray:
        """phi of each data row (ones when phi is fixed)."""
        if self.phi_fixed:
            return np.ones(design.n)
        return np.exp(design.X_disp @ self.gamma)

    def lam(self, design: ModelDesign) -> list[np.ndarray]:
        """lambda of each level, per random term."""
        return [np.exp(t.X_disp @ d) for t, d in zip(design.terms, self.delta, strict=True)]

    def theta(self) -> np.ndarray:
        """All log-dispersion coefficients in one vector: (gamma unless fixed, delta_1, ...)."""
        parts = ([] if self.phi_fixed else [self.gamma]) + list(self.delta)
        return np.concatenate(parts) if parts else np.zeros(0)

    def with_theta(self, theta: np.ndarray) -> Dispersions:
        """The same structure with the coefficients of ``theta`` (the layout of ``theta()``)."""
        pos = 0
        gamma = self.gamma
        if not self.phi_fixed:
            gamma = theta[: len(self.gamma)].copy()
            pos = len(self.gamma)
        delta = []
        for d in self.delta:
            delta.append(theta[pos : pos + len(d)].copy())
            pos += len(d)
        return Dispersions(gamma, delta, self.phi_fixed)


@dataclass
class MeanFit:
    """(beta, v) at given dispersions, with the factored system of the last IWLS step."""

    beta: np.ndarray
    v: list[np.ndarray]  # per term, in design order (observation-level term included)
    eta: np.ndarray
    mu: np.ndarray
    solution: MMESolution
    elimination: ObservationElimination | None
    a: np.ndarray  # data-row weights (with 1/phi) used in the last solve
    w_m: list[np.ndarray]  # random-row weights per term used in the last solve
    iterations: int
    converged: bool


@dataclass
class FitOutcome:
    """Everything the result object needs from an algorithm.

    ``messages`` holds the convergence problems in words (empty when converged) and ``code``
    the first of them as a ``ConvergenceCode``; ``singular`` the variance components at their
    lower bound (``hglm.diagnostics.singular_terms``), set by ``hglm.dispatch.solve``."""

    mean: MeanFit
    disp: Dispersions
    likelihood: Likelihoods
    leverages: dict[str, np.ndarray]
    cov_beta: np.ndarray
    # "phi" and each term name -> SE of the log-scale coefficients (lazy after HL fits)
    disp_se: Mapping[str, np.ndarray]
    converged: bool
    n_iter: int
    messages: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    dev_data: np.ndarray | None = None
    code: ConvergenceCode = ConvergenceCode.CONVERGED
    singular: tuple[SingularTerm, ...] = ()
    theta: ThetaEstimate | None = None  # a negative binomial's estimated theta (hglm.negbin)

    @property
    def warnings(self) -> list[str]:
        """The convergence messages, then one line per singular term (``res.warnings``)."""
        return list(self.messages) + [s.message for s in self.singular]

    @property
    def diagnostics(self) -> Diagnostics:
        """The typed status record of this outcome."""
        return Diagnostics(
            converged=bool(self.converged),
            code=self.code,
            iterations=int(self.n_iter),
            singular_terms=tuple(s.name for s in self.singular),
            messages=tuple(self.messages),
            singular=self.singular,
        )
