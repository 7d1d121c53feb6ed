"""A fit's status as data: convergence code, singular terms, and the one singularity rule.

Code that needs to know whether a fit converged or which variance components collapsed reads
``res.diagnostics`` (a ``Diagnostics``), never the text of ``res.warnings``. The texts are kept
for people (and are what ``ConvergenceWarning`` carries).

The singularity rule (``singular_terms``), the same for EQL, HL and the LMM route: a term
without a dispersion model is singular when its lambda is below ``SINGULAR_LAMBDA`` times
max(1, the geometric mean of phi). Next to 1 for data on a small scale, next to phi for data on
a large scale: the criterion is flat as lambda -> 0, so the searches stop near zero on the
scale of phi rather than at the bound itself. This module imports nothing of ``hglm``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

SINGULAR_LAMBDA = 1e-6


class ConvergenceWarning(UserWarning):
    """A fit stopped before meeting its convergence criterion, or hit a boundary."""


class ConvergenceCode(enum.Enum):
    """Why a fit stopped (the first problem met)."""

    CONVERGED = "converged"
    MAX_ITERATIONS = "max_iterations"  # EQL used all its iterations
    MEAN_MODEL_FAILED = "mean_model_failed"  # EQL stopped: the IWLS of the mean model failed
    OPTIMISER_FAILED = "optimiser_failed"  # the outer search (dispersions, or beta) not stationary
    FINAL_IWLS_FAILED = "final_iwls_failed"  # the final IWLS for the random effects


@dataclass(frozen=True)
class SingularTerm:
    """A variance component at its lower bound."""

    name: str  # the term's name (the key of ``res.lambdas``)
    label: str  # as written in the formula, e.g. "(1 | tool)"
    lam: float

    @property
    def message(self) -> str:
        """The warning text (the wording ``res.warnings`` has always used)."""
        return f"singular fit: lambda of {self.label} is at its lower bound ({self.lam:.3g})"


@dataclass(frozen=True)
class Diagnostics:
    """The status of a fit.

    Attributes
    ----------
    converged : bool
        Whether every stage met its convergence criterion.
    code : ConvergenceCode
        ``CONVERGED`` or the first problem met.
    iterations : int
        The iterations of the fit's main loop (EQL rounds, or the outer search's steps).
    singular_terms : tuple of str
        Names of the random terms whose variance is at its lower bound (see the module's
        rule); a singular fit may still have converged.
    messages : tuple of str
        The convergence problems in words (no singularity text).
    singular : tuple of SingularTerm
        The singular terms with their labels and lambdas.
    """

    converged: bool
    code: ConvergenceCode
    iterations: int
    singular_terms: tuple[str, ...] = ()
    messages: tuple[str, ...] = ()
    singular: tuple[SingularTerm, ...] = ()

    @property
    def is_singular(self) -> bool:
        """Whether any variance component is at its lower bound."""
        return bool(self.singular_terms)


def singular_terms(
    terms: Sequence[tuple[str, str, bool, float]], phi: np.ndarray
) -> tuple[SingularTerm, ...]:
    """The singular terms of a fit by the one rule of this module.

    Parameters
    ----------
    terms : sequence of (name, label, intercept_only, lambda)
        Per random term: its name, its label, whether its dispersion model is intercept-only
        (terms with a dispersion model are never judged) and its (first) lambda.
    phi : numpy.ndarray
        phi per data row.

    Returns
    -------
    tuple of SingularTerm
        The terms with lambda below ``SINGULAR_LAMBDA * max(1, geometric mean of phi)``.
    """
    phi_scale = max(float(np.exp(np.mean(np.log(phi)))), 1.0) if len(phi) else 1.0
    return tuple(
        SingularTerm(name, label, lam)
        for name, label, intercept_only, lam in terms
        if intercept_only and lam < SINGULAR_LAMBDA * phi_scale
    )
