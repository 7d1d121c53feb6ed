"""hglm: hierarchical generalized linear models by h-likelihood (Lee & Nelder 1996).

The modules, from the bottom of the import graph up (each may import only those below it;
every module's docstring says which):

* ``control`` (methods, ``FitControl``), ``diagnostics`` (``Diagnostics``, ``ConvergenceCode``,
  the singularity rule), ``families``, ``formula``, ``linalg``: nothing of ``hglm``;
  ``covariance`` (``CAR``, ``SAR``, ``Precision``, AR(1), unstructured Sigma as sparse
  precisions): ``linalg`` only.
* ``state``: the plain data of a fit (``Dispersions``, ``MeanFit``, ``FitOutcome``).
* ``design`` (formula + data -> matrices), ``likelihood``, ``mme`` (the sparse mixed-model
  equations).
* ``model``: ``Model`` and its IWLS (the mean step of every method).
* ``glm`` (gamma GLM, starting GLM), ``gradient``, ``criterion`` (the HL criterion and its
  search), ``dispersion_se``.
* ``eql``, ``hl`` (the general HL search, ``finish_hl``), ``lmm`` (the profiled LMM route);
  ``structured`` (random slopes and correlated random effects: the equations with Q(theta)
  and their search), ``spectral_eql`` (R hglm's EQL for CAR/SAR).
* ``negbin``: theta of a negative binomial by profiling (the fits are handed in).
* ``dispatch``: ``solve``, the one place that chooses between them.
* ``summary`` (the printed summary), ``results`` (``HGLMResult``), ``structured_results``
  (``StructuredResult``), ``api`` (``fit``).
* ``prediction`` (``predict(se=, interval=)``), ``simulate``, ``marginal``, ``inference``
  (refits, criteria, likelihood_ratio, intervals, resampling), ``plots``: built on a result.
"""

from hglm.api import fit
from hglm.control import FitControl
from hglm.covariance import CAR, SAR, Precision
from hglm.diagnostics import ConvergenceCode, ConvergenceWarning, Diagnostics
from hglm.dispatch import solve
from hglm.families import (
    RandomFamily,
    ResponseFamily,
    negative_binomial_family,
    random_family,
    response_family,
)
from hglm.inference import BootstrapResult, LRTResult, bootstrap, confint, lrt, profile_ci
from hglm.marginal import marginal_effect, marginal_predict
from hglm.results import HGLMResult, RanefGivenFixef
from hglm.simulate import simulate_responses
from hglm.structured_results import StructuredResult

__all__ = [
    "CAR",
    "SAR",
    "BootstrapResult",
    "ConvergenceCode",
    "ConvergenceWarning",
    "Diagnostics",
    "FitControl",
    "HGLMResult",
    "LRTResult",
    "Precision",
    "RandomFamily",
    "RanefGivenFixef",
    "ResponseFamily",
    "StructuredResult",
    "bootstrap",
    "confint",
    "fit",
    "lrt",
    "marginal_effect",
    "marginal_predict",
    "negative_binomial_family",
    "profile_ci",
    "random_family",
    "response_family",
    "simulate_responses",
    "solve",
]


def __getattr__(name: str) -> object:
    # hglm.plots imports matplotlib: load it on first use only
    if name == "plots":
        import importlib

        return importlib.import_module("hglm.plots")
    raise AttributeError(f"module 'hglm' has no attribute {name!r}")
