"""Likelihood-ratio tests between nested fits (``lrt``) and the chi-bar-square mixtures.

See ``hglm.inference`` for the criteria and the null distributions.

May import: ``hglm.inference.criteria``, ``hglm.inference.refits``, ``hglm.dispatch``,
``hglm.simulate`` (``hglm.results`` for annotations).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from scipy import special, stats

from hglm.dispatch import FIT_ERRORS
from hglm.inference.criteria import CRITERION_TEXT, maximum_at
from hglm.inference.refits import RefitProgress, refit
from hglm.simulate import simulate_responses

if TYPE_CHECKING:
    from hglm.results import HGLMResult


@dataclass(frozen=True)
class LRTResult:
    """A likelihood-ratio test between nested HGLM fits."""

    statistic: float
    df: int
    pvalue: float
    method: str  # how the p-value was obtained
    criterion: str  # "p_v" or "p_beta_v"
    n_boundary: int  # variance components set to their boundary (lambda = 0) by H0
    naive_pvalue: float  # chi2(df), ignoring the boundary
    weights: tuple[float, ...] | None = None  # chi-bar-square weights of chi2_{m}, ..., chi2_{m+k}
    n_boot: int | None = None
    notes: tuple[str, ...] = ()

    def __str__(self) -> str:
        lines = [
            f"Likelihood-ratio test on {CRITERION_TEXT[self.criterion]}",
            f"  statistic = {self.statistic:.4f}, df = {self.df}, p-value = {self.pvalue:.4g}",
            f"  null distribution: {self.method}",
        ]
        if self.n_boundary:
            lines.append(
                f"  (naive chi2({self.df}) p-value ignoring the boundary: {self.naive_pvalue:.4g})"
            )
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


def _same_data(a: HGLMResult, b: HGLMResult) -> None:
    da, db = a.design, b.design
    if str(da.family) != str(db.family):
        raise ValueError(
            f"the fits have different response families ({da.family} vs {db.family}); "
            "they are not nested"
        )
    if da.n != db.n:
        raise ValueError(f"the fits use different data ({da.n} vs {db.n} rows)")
    for what, xa, xb in (
        ("responses", da.y, db.y),
        ("prior weights / trials", da.prior_weights, db.prior_weights),
        ("offsets", da.offset, db.offset),
    ):
        if not np.allclose(xa, xb, rtol=1e-12, atol=1e-12):
            rows = np.flatnonzero(~np.isclose(xa, xb, rtol=1e-12, atol=1e-12))[:10].tolist()
            raise ValueError(
                f"the fits use different data: their {what} differ (rows {rows}); "
                "a likelihood-ratio test needs both models fitted to the same data"
            )


def _span_contains(big: np.ndarray, small: np.ndarray) -> bool:
    """Whether every column of ``small`` lies in the column space of ``big``."""
    if small.shape[1] == 0:
        return True
    if big.shape[1] == 0:
        return False
    coef, *_ = np.linalg.lstsq(big, small, rcond=None)
    resid = small - big @ coef
    return bool(np.all(np.linalg.norm(resid, axis=0) <= 1e-8 * (1 + np.linalg.norm(small, axis=0))))


def _same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    # two code vectors define the same grouping if the pairs (a_i, b_i) are one-to-one
    pairs = np.unique(np.column_stack([a, b]), axis=0)
    return len(pairs) == len(np.unique(a)) == len(np.unique(b))


def _nesting(small: HGLMResult, large: HGLMResult) -> tuple[int, int, list[str], list[str]]:
    """Check that ``small`` is nested in ``large``; return (extra fixed, extra dispersion
    parameters, dropped intercept-only terms, dropped terms with a dispersion model)."""
    ds, dl = small.design, large.design
    if not _span_contains(dl.X, ds.X):
        raise ValueError(
            f"the fixed effects {ds.fixed_names} of the smaller model are not contained in "
            f"those of the larger model {dl.fixed_names}: the models are not nested"
        )
    extra_fixed = dl.p - ds.p
    if ds.family.fixed_dispersion != dl.family.fixed_dispersion:
        raise ValueError("one fit estimates phi and the other does not: not nested")
    if not ds.family.fixed_dispersion and not _span_contains(dl.X_disp, ds.X_disp):
        raise ValueError(
            f"the dispersion model of phi ({ds.disp_names}) of the smaller model is not "
            f"contained in the larger one's ({dl.disp_names})"
        )
    extra_disp = 0 if dl.family.fixed_dispersion else dl.X_disp.shape[1] - ds.X_disp.shape[1]
    matched: set[int] = set()
    for ts in ds.terms:
        hit = None
        for j, tl in enumerate(dl.terms):
            if j not in matched and _same_partition(ts.codes, tl.codes):
                hit = j
                break
        if hit is None:
            raise ValueError(
                f"the random term {ts.term.label} of the smaller model has no counterpart in "
                "the larger model: the models are not nested"
            )
        tl = dl.terms[hit]
        matched.add(hit)
        if str(ts.family) != str(tl.family):
            raise ValueError(
                f"the random term {ts.term.label} has family {ts.family} in the smaller model "
                f"and {tl.family} in the larger: the models are not nested"
            )
        # levels are sorted identically for identical partitions of the same rows
        if not _span_contains(tl.X_disp, ts.X_disp):
            raise ValueError(
                f"the dispersion model of {ts.term.label} in the smaller model is not "
                "contained in the larger one's"
            )
        extra_disp += tl.X_disp.shape[1] - ts.X_disp.shape[1]
    dropped_simple, dropped_modelled = [], []
    for j, tl in enumerate(dl.terms):
        if j in matched:
            continue
        extra_disp += tl.X_disp.shape[1]
        (dropped_simple if tl.X_disp.shape[1] == 1 else dropped_modelled).append(tl.term.label)
    if extra_fixed < 0 or extra_disp < 0 or extra_fixed + extra_disp == 0:
        raise ValueError(
            "the 'larger' model does not have more parameters than the 'smaller' one "
            f"({extra_fixed:+d} fixed, {extra_disp:+d} dispersion): pass the fits as "
            "lrt(smaller, larger) with the smaller model nested in the larger"
        )
    return extra_fixed, extra_disp, dropped_simple, dropped_modelled


def _method_free(res: HGLMResult) -> bool:
    # a GLM with phi fixed (binomial, Poisson) has no dispersion to estimate: every method
    # gives its maximum likelihood fit
    return not res.design.terms and res.design.family.fixed_dispersion


def _choose_criterion(small: HGLMResult, large: HGLMResult, fixed_differ: bool) -> str:
    if _method_free(small) and _method_free(large):
        return "p_v"
    if _method_free(small):
        small = large
    if small.method != large.method or small.reml != large.reml:
        raise ValueError(
            f"the fits use different methods ({small.method}, reml={small.reml} vs "
            f"{large.method}, reml={large.reml}); refit both the same way"
        )
    if small.method == "EQL":
        raise ValueError(
            "EQL estimates do not maximise a likelihood, so their likelihood ratio has no "
            "known distribution; refit both models with method='HL(1,1)' (reml=False to "
            "compare fixed effects)"
        )
    if fixed_differ:
        if small.reml:
            raise ValueError(
                "REML fits (reml=True) with different fixed effects cannot be compared: "
                "p_beta,v(h) depends on the fixed-effects design. Refit both with "
                "method='HL(1,1)', reml=False and test on p_v(h)"
            )
        exact_beta = small.method == "HL(1,1)" or (
            small.design.family.name == "gaussian"
            and small.design.family.link.name == "identity"
            and all(t.family.name == "normal" for t in large.design.terms)
        )
        if not exact_beta:
            raise ValueError(
                "HL(0,1) estimates beta by h, not by p_v(h), except in linear mixed models; "
                "refit both with method='HL(1,1)', reml=False to test fixed effects"
            )
        return "p_v"
    return "p_beta_v" if small.reml else "p_v"


def chibar_weights(n_boundary: int) -> np.ndarray:
    """Weights of chi2_m, ..., chi2_{m+k} for k independent boundary components: Binomial(k, 1/2)."""
    k = n_boundary
    return np.array([special.comb(k, j) / 2.0**k for j in range(k + 1)])


def chibar_pvalue(statistic: float, n_free: int, n_boundary: int) -> float:
    """P(T >= t) for T ~ sum_j C(k, j) 2^-k chi2_{m+j}; chi2_0 is a point mass at 0."""
    w = chibar_weights(n_boundary)
    p = 0.0
    for j, wj in enumerate(w):
        dof = n_free + j
        if dof == 0:
            p += wj * (1.0 if statistic <= 0 else 0.0)
        else:
            p += wj * float(stats.chi2.sf(statistic, dof))
    return min(p, 1.0)


def lrt(
    smaller: HGLMResult,
    larger: HGLMResult,
    *,
    boundary: str = "auto",
    n_boot: int = 199,
    seed: int | None = None,
    progress: bool | None = None,
) -> LRTResult:
    """Likelihood-ratio test of ``smaller`` (H0) against ``larger``, both fitted to the same data.

    ``boundary``: how to treat variance components that H0 sets to zero: ``"auto"`` (the
    chi-bar-square mixture when its weights are known, else a parametric bootstrap),
    ``"mixture"``, ``"bootstrap"`` (``n_boot`` refits of both models on responses simulated
    from ``smaller``) or ``"naive"`` (plain chi2, conservative).

    Parameters
    ----------
    smaller, larger : HGLMResult
        The fits under H0 and H1, the smaller nested in the larger, on the same data.
    boundary : str
        ``"auto"``, ``"mixture"``, ``"bootstrap"`` or ``"naive"`` (above).
    n_boot : int
        Bootstrap replicates when the bootstrap gives the null distribution.
    seed : int, optional
        Seed of the bootstrap's simulations.
    progress : bool, optional
        Show a progress bar for the bootstrap (default: when stderr is a terminal).

    Returns
    -------
    LRTResult
        The statistic, its degrees of freedom, the p-value and how it was obtained.
    """
    if boundary not in ("auto", "mixture", "bootstrap", "naive"):
        raise ValueError("boundary must be 'auto', 'mixture', 'bootstrap' or 'naive'")
    _same_data(smaller, larger)
    try:
        extra_fixed, extra_disp, dropped, dropped_modelled = _nesting(smaller, larger)
    except ValueError as exc:
        try:
            _nesting(larger, smaller)
        except ValueError:
            raise exc from None
        raise ValueError(
            "the arguments are the wrong way round: call lrt(smaller, larger) with the "
            "model under H0 first"
        ) from None
    fixed_differ = extra_fixed > 0 or not _span_contains(smaller.design.X, larger.design.X)
    which = _choose_criterion(smaller, larger, fixed_differ)
    statistic, notes = _statistic(smaller, larger, which)
    df = extra_fixed + extra_disp
    naive = float(stats.chi2.sf(statistic, df))
    k = len(dropped)
    mode = boundary
    if mode == "auto":
        mode = "bootstrap" if dropped_modelled else ("mixture" if k else "naive")
    if mode == "mixture" and dropped_modelled:
        raise ValueError(
            f"the mixture weights are not known when dropping {dropped_modelled} (a random "
            "term with a dispersion model); use boundary='bootstrap'"
        )
    if mode == "naive" or (mode == "mixture" and k == 0):
        what = f"chi2({df})"
        if k or dropped_modelled:
            what += " ignoring the boundary (conservative)"
        return LRTResult(statistic, df, naive, what, which, k, naive, notes=tuple(notes))
    if mode == "mixture":
        m = df - k
        w = chibar_weights(k)
        p = chibar_pvalue(statistic, m, k)
        parts = " + ".join(f"{wj:.4g} chi2_{m + j}" for j, wj in enumerate(w))
        what = f"chi-bar-square mixture {parts} ({k} variance component(s) on the boundary)"
        return LRTResult(statistic, df, p, what, which, k, naive, tuple(w), notes=tuple(notes))
    stats_boot, n_failed = _bootstrap_statistics(smaller, larger, which, n_boot, seed, progress)
    ok = stats_boot[np.isfinite(stats_boot)]
    if len(ok) == 0:
        raise ValueError("every bootstrap refit failed; no null distribution")
    p = (1 + int(np.sum(ok >= statistic - 1e-10))) / (len(ok) + 1)
    if n_failed:
        notes.append(f"{n_failed} of {n_boot} bootstrap replicates failed and were dropped")
    what = f"parametric bootstrap ({len(ok)} replicates simulated from the smaller model)"
    return LRTResult(
        statistic, df, p, what, which, k + len(dropped_modelled), naive, None, len(ok), tuple(notes)
    )


def _statistic(small: HGLMResult, large: HGLMResult, which: str) -> tuple[float, list[str]]:
    notes: list[str] = []
    (v_small, n_small), (v_large, n_large) = maximum_at(small, which), maximum_at(large, which)
    notes += [f"{name} model: {n}" for name, n in (("smaller", n_small), ("larger", n_large)) if n]
    stat = 2.0 * (v_large - v_small)
    if stat < 0:
        # the larger model contains the smaller one, so a negative value is optimisation
        # error; a clearly negative one means a fit missed its maximum
        if stat < -1e-3 * max(1.0, abs(v_small)):
            notes.append(
                f"the larger model's {CRITERION_TEXT[which]} is below the smaller's by "
                f"{-stat / 2:.3g}: one fit did not reach its maximum"
            )
        stat = 0.0
    return float(stat), notes


def _bootstrap_statistics(
    small: HGLMResult,
    large: HGLMResult,
    which: str,
    n: int,
    seed: int | None,
    progress: bool | None,
) -> tuple[np.ndarray, int]:
    ys = simulate_responses(small, n, seed=seed, new_random_effects=True)
    out = np.full(n, np.nan)
    failed = 0
    with RefitProgress("LRT bootstrap", n, progress) as bar:
        for i, y in enumerate(ys):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out[i], _ = _statistic(refit(small, y), refit(large, y), which)
            except FIT_ERRORS:
                pass
            failed += int(not np.isfinite(out[i]))
            bar.advance(failed)
    return out, failed
