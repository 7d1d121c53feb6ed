"""Inference on fitted HGLMs: likelihood-ratio tests, profile intervals, parametric bootstrap.

* ``lrt(smaller, larger)``: the likelihood-ratio test on the criterion the fits
  maximised: p_v(h) for fixed effects (Laplace ML: both fits HL(1,1), reml=False) and for
  ML-fitted variance components; p_beta,v(h) for REML-fitted variance components with the
  same fixed part. A variance component dropped by the smaller model sits on the boundary
  of the parameter space under H0, so the statistic follows a chi-bar-square mixture
  (Self & Liang 1987; Stram & Lee 1994): with k independent components on the boundary
  and m unconstrained extra parameters, sum_j C(k, j) 2^-k chi2_{m+j}; for one component
  and nothing else, 50:50 chi2_0 / chi2_1. Where the weights are not known (a dropped
  term with a dispersion model) the null distribution comes from a parametric bootstrap.
* ``profile_ci(res)``: intervals for lambda and phi from the profile of the same criterion
  on the log scale, the other dispersion parameters maximised out; a Wald interval on the
  log scale stands in (labelled so) where the profile cannot be traced.
* ``bootstrap(res, n, func)``: parametric bootstrap of any function of a fit: responses
  simulated from the fit (``hglm.simulate``), refitted warm-started from the estimates.

The modules: ``refits`` (a fitted model refitted to new responses), ``criteria`` (the
criterion of a fit, re-evaluated), ``likelihood_ratio``, ``intervals``, ``resampling``.
"""

from hglm.inference.criteria import criterion_value
from hglm.inference.intervals import confint, profile_ci
from hglm.inference.likelihood_ratio import LRTResult, chibar_pvalue, chibar_weights, lrt
from hglm.inference.refits import refit
from hglm.inference.resampling import BootstrapResult, bootstrap, default_statistics

__all__ = [
    "BootstrapResult",
    "LRTResult",
    "bootstrap",
    "chibar_pvalue",
    "chibar_weights",
    "confint",
    "criterion_value",
    "default_statistics",
    "lrt",
    "profile_ci",
    "refit",
]
