"""Parametric bootstrap of any function of a fit (``bootstrap``).

May import: ``hglm.inference.refits``, ``hglm.dispatch``, ``hglm.diagnostics``, ``hglm.simulate``
(``hglm.results`` for annotations).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from hglm.diagnostics import ConvergenceWarning
from hglm.dispatch import FIT_ERRORS
from hglm.inference.refits import RefitProgress, refit
from hglm.simulate import simulate_responses

if TYPE_CHECKING:
    from hglm.results import HGLMResult


def default_statistics(res: HGLMResult) -> pd.Series:
    """Fixed effects, lambda of every intercept-only term and phi when it is one number."""
    out = res.fixef["estimate"].copy()
    vc = res.varcomp
    for name, r in vc.iterrows():
        if np.isfinite(r["log_lambda"]):
            out[f"lambda: {name}"] = r["lambda"]
    if not res.design.family.fixed_dispersion and res.phi is not None:
        out["phi"] = res.phi
    return out.astype(float)


def _as_series(value: Any) -> pd.Series:
    if isinstance(value, pd.Series):
        return value.astype(float)
    if isinstance(value, dict):
        return pd.Series(value, dtype=float)
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    return pd.Series(arr, index=[f"stat{i}" for i in range(len(arr))] if len(arr) > 1 else ["stat"])


@dataclass
class BootstrapResult:
    """Replicates of ``func`` over parametric-bootstrap refits."""

    estimate: pd.Series  # func at the original fit
    replicates: pd.DataFrame  # one row per replicate; NaN where the refit failed
    converged: np.ndarray  # bool per replicate
    seed: int | None
    errors: list[str] = field(default_factory=list)

    @property
    def n(self) -> int:
        """Replicates drawn."""
        return len(self.converged)

    @property
    def n_failed(self) -> int:
        """Replicates whose refit failed or did not converge."""
        return int(np.sum(~self.converged))

    @property
    def failed_share(self) -> float:
        """The share of failed replicates."""
        return self.n_failed / self.n if self.n else 0.0

    @property
    def se(self) -> pd.Series:
        """Bootstrap standard errors from the converged replicates."""
        return self.replicates[self.converged].std(ddof=1)

    @property
    def bias(self) -> pd.Series:
        """Mean of the converged replicates less the estimate."""
        return self.replicates[self.converged].mean() - self.estimate

    def confint(self, level: float = 0.95) -> pd.DataFrame:
        """Percentile intervals from the converged replicates."""
        ok = self.replicates[self.converged]
        a = (1 - level) / 2
        return pd.DataFrame(
            {"estimate": self.estimate, "lower": ok.quantile(a), "upper": ok.quantile(1 - a)}
        )

    def summary(self) -> str:
        """A text table: estimate, bias, SE and percentile interval.

        Returns
        -------
        str
            The table with a heading line.
        """
        head = (
            f"Parametric bootstrap: {self.n} refits, {self.n_failed} failed to converge "
            f"({100 * self.failed_share:.1f} %)"
        )
        tab = pd.DataFrame({"estimate": self.estimate, "bias": self.bias, "se": self.se})
        return head + "\n" + tab.join(self.confint()[["lower", "upper"]]).to_string()

    def __str__(self) -> str:
        return self.summary()


def bootstrap(
    res: HGLMResult,
    n: int = 200,
    *,
    func: Callable[[HGLMResult], Any] | None = None,
    seed: int | None = None,
    new_random_effects: bool = True,
    progress: bool | None = None,
) -> BootstrapResult:
    """Parametric bootstrap of ``func(fit)`` (default: fixed effects, lambdas, phi).

    Each replicate refits the model, warm-started from ``res``, to responses simulated
    from it. Refits that fail or do not converge are kept as NaN rows and counted in
    ``failed_share``; a warning says how many. ``progress``: a live bar (default: when
    stderr is a terminal).

    Parameters
    ----------
    res : HGLMResult
        The fit to simulate from and refit.
    n : int
        Replicates (at least 2).
    func : callable, optional
        ``func(fit)`` -> a number, a mapping or a Series of statistics (default:
        ``default_statistics``).
    seed : int, optional
        Seed of the simulations.
    new_random_effects : bool
        Draw new random effects per replicate (True) or keep the predicted ones.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).

    Returns
    -------
    BootstrapResult
        The statistic at ``res``, the replicates and which of them converged.
    """
    if n < 2:
        raise ValueError(f"n must be at least 2 replicates, got {n}")
    func = func or default_statistics
    estimate = _as_series(func(res))
    ys = simulate_responses(res, n, seed=seed, new_random_effects=new_random_effects)
    reps = np.full((n, len(estimate)), np.nan)
    ok = np.zeros(n, dtype=bool)
    errors: list[str] = []
    with RefitProgress("bootstrap refits", n, progress) as bar:
        for i, y in enumerate(ys):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    r = refit(res, y)
                if r.converged:
                    s = _as_series(func(r)).reindex(estimate.index)
                    reps[i] = s.to_numpy()
                    ok[i] = bool(np.all(np.isfinite(reps[i])))
                else:
                    errors.append(
                        f"replicate {i}: " + "; ".join(r.warnings[:1] or ["not converged"])
                    )
            except FIT_ERRORS as exc:
                errors.append(f"replicate {i}: {type(exc).__name__}: {exc}")
            bar.advance(i + 1 - int(ok[: i + 1].sum()))
    out = BootstrapResult(estimate, pd.DataFrame(reps, columns=estimate.index), ok, seed, errors)
    if out.n_failed:
        warnings.warn(
            f"{out.n_failed} of {n} bootstrap refits ({100 * out.failed_share:.1f} %) failed "
            "to converge; they are excluded from the bootstrap distribution",
            ConvergenceWarning,
            stacklevel=2,
        )
    return out
