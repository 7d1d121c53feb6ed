"""hglm: hierarchical generalized linear models by h-likelihood (Lee & Nelder 1996)."""

from hglm.api import fit
from hglm.families import (
    RandomFamily,
    ResponseFamily,
    negative_binomial_family,
    random_family,
    response_family,
)
from hglm.fitting import ConvergenceWarning
from hglm.inference import BootstrapResult, LRTResult, bootstrap, confint, lrt, profile_ci
from hglm.marginal import marginal_effect, marginal_predict
from hglm.results import HGLMResult, RanefGivenFixef
from hglm.simulate import simulate_responses

__all__ = [
    "BootstrapResult",
    "ConvergenceWarning",
    "HGLMResult",
    "LRTResult",
    "RandomFamily",
    "RanefGivenFixef",
    "ResponseFamily",
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
]


def __getattr__(name: str) -> object:
    # hglm.plots imports matplotlib: load it on first use only
    if name == "plots":
        import importlib

        return importlib.import_module("hglm.plots")
    raise AttributeError(f"module 'hglm' has no attribute {name!r}")
