"""Yield impact, its interval, layer p-values and the ranking written back to the fab.

The quantities are defined once, here, and quoted in the README:

YIELD_IMPACT_DEFINITION is the paragraph an engineer reads; `LayerEffects` and
`yield_impact` are that paragraph in code. Everything in this module is plain numpy on
numbers the fitted models hand over, so it is testable without fitting anything.

A little past 600 lines: the method texts (issue 14) are quoted whole in the README and the
report, and the impact draws still serve the metrology rule of one-tool parameters; the
ranking and writing part moves out when the draws of `simulate_impacts` retire.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import sparse, special

from flows.analysis.results import (
    DEFAULT_MATERIALITY,
    AnalysisResult,
    Finding,
    LayerFit,
    LayerRanking,
    OperationTest,
)

YIELD_IMPACT_DEFINITION = (
    "**Loss** of a finding (a tool or a chamber at one operation, or a metrology parameter) "
    "is how many percentage points of final fab yield (good dies of all dies, averaged over "
    "the sorted wafers) the fab would have gained if that tool, chamber or parameter had "
    "performed like the typical one of its operation on its own wafers, everything else as "
    "it was: every wafer keeps its lot, its wafer-to-wafer variation and what every other "
    "operation did to it. Typical means the median (of two, the better one): a tool's level "
    "is its typical chamber, the operation's typical level is the typical tool level, a "
    "chamber is measured against its own tool's typical chamber (so a tool's and its "
    "chamber's losses add up and are never counted twice); for a metrology parameter, each "
    "tool of the measuring operation whose wafers' average value sits on the costly side of "
    "the typical tool's is moved there (each wafer keeps its deviation from its tool's "
    "average), and only those tools count: a tool that moves the parameter the good way "
    "does not pay for one that moves it the bad way; the finding's tool_id names the tool "
    "that carries most of that loss. The numbers come from a fit "
    "conditional on the chained model (all layers' terms in one final-yield model): the "
    "operation's tool:chamber cells as fixed effects, with an offset holding the product, "
    "the metrology and the equipment of the operations the screening found (below) at their "
    "chained-model estimates, lot and wafer effects refitted (for a parameter: its "
    "coefficient refitted the same way). "
    "`loss_on_wafers` is the same gain in points of yield on the finding's own wafers. "
    "A **layer's loss** is the sum of the losses of its findings that are significant "
    '(adjusted p < 0.05); a layer without one shows "no loss found" (0, never negative). '
    "A finding or layer is **material** when it is significant and the lower end of its "
    "95 % interval exceeds the materiality threshold (a minimum-effect test at one-sided "
    "2.5 %)."
)

N_DRAWS = 200  # draws behind each interval: the 2.5 % quantile rests on about 5 of them
# The draws of a larger layer are evaluated on a seeded sample of this many wafers (see
# `simulate_impacts`); the point impacts always use every wafer.
DRAW_WAFERS = 25_000

INTERVAL_METHOD = (
    "a finding's 95 % interval: its operation's cell effects drawn from N(theta-hat, Wald "
    "covariance) of the conditional fixed-effect fit (a parameter's coefficient from its "
    "conditional fit's), the loss recomputed on each of "
    f"{N_DRAWS} draws (the typical level recomputed too), and the 2.5 % and 97.5 % quantiles "
    "of the draws, taken as distances from the draws' median, set around the point loss (so "
    "the interval contains it); on more than "
    f"{DRAW_WAFERS:,} wafers the draws are evaluated on a seeded random sample of them. The "
    "effects are unshrunk fixed effects, so the interval is a confidence interval of the "
    "loss given the chained model's other terms (their own uncertainty is not propagated). "
    "A layer's interval: the same draws of its significant findings summed; without a "
    "significant finding, from 0 to the 97.5 % quantile of the largest drawn loss among its "
    "loss-direction levels (how much one of its tools, chambers or parameters may still "
    "lose, given the data)"
)
P_VALUE_ADJUSTMENT = "holm"
P_VALUE_METHOD = (
    "per operation, a likelihood-ratio test of its tool and chamber variance components "
    "(HL(1,1), ML dispersions, chi-bar-square null distribution, hglm.lrt; lot and wafer "
    "effects refitted) in two stages: screening, given the chained model's fixed part "
    "(product, metrology) only; then, for the operations the screening found (Holm < 0.05), "
    "again given the chained-model effects of the other operations it found, so that a "
    "shadow is judged given its source (all other operations keep their screening test; "
    "holding every operation's chained effects fixed instead would leak lot-to-lot noise "
    "into the tests of small fabs). Per metrology parameter the same test of its "
    "coefficient (chi2(1)), given the operations found. Holm's adjustment over "
    "all these tests of the run (the family is the whole fab); a layer's adjusted p-value is "
    "the smallest adjusted p of its tests (closed testing with Bonferroni local tests: "
    "family-wise error 5 % across the fab, and one bad tool is not diluted by the layer's "
    "healthy operations). A finding's p-value is the two-sided Wald test of its level against "
    "the wafer-weighted mean of the other levels of its operation (a chamber: of the other "
    "chambers of its tool) in the conditional fixed-effect fit. Findings are tested "
    "hierarchically: a metrology finding is its parameter's test (its adjusted p-value is "
    "that test's); the tool and chamber findings of the operations whose test is significant "
    "are Holm-adjusted together, and each keeps at least its operation's adjusted p (a "
    "finding cannot be significant when its operation is not); in a fab without any effect a "
    "significant finding needs a significant test, so the family-wise error is 5 %. Holm "
    "rather than a false-discovery rate "
    "because the promise to the engineer is family-wise: in a fab without a real effect, "
    "any significant finding at all should be rare (5 %)"
)
RANKING_RULE = (
    "layers with a significant loss (a finding with adjusted p < 0.05 and a positive loss) "
    "first, by loss; then the others, by adjusted p-value; layers that could not be modelled "
    "follow, unranked, with the reason. The chart and the table use this order. Within a "
    "layer the findings follow the same rule: significant losses first by loss, then the "
    "other loss findings by adjusted p, dispersion findings (no yield loss of their own) last"
)


# --------------------------------------------------------------------------- impact


@dataclass
class RandomGroup:
    """The predicted effects of one random term of a layer and which wafer met which level."""

    term: str
    kind: str  # "tool" or "chamber"
    operation: str
    levels: list[str]  # level labels, e.g. "ETCH03" or "ETCH03:CH2"
    index: np.ndarray  # (n_wafers,) level of each wafer, -1 when the wafer has none
    estimate: np.ndarray  # (n_levels,) v-hat on the logit scale
    se: np.ndarray  # (n_levels,) prediction SE of v-hat - v (used for the findings' p-values)
    # joint prediction distribution (hglm's `ranef_given_fixef`):
    # v - v-hat = loading @ (beta - beta-hat) + e, e ~ N(0, diag(cond_se^2))
    loading: np.ndarray | None = None  # (n_levels, p), or None if unknown
    cond_se: np.ndarray | None = None  # (n_levels,) SE of v given beta


@dataclass
class MetrologyTerm:
    """One standardised metrology summary used as a fixed effect."""

    name: str  # the fixed-effect name in the model
    param: str
    operation: str | None
    z: np.ndarray  # (n_wafers,) standardised value each wafer entered the model with
    # (n_wafers,) tool of each wafer at the measuring operation (-1 unknown), or None
    tool_index: np.ndarray | None = None


@dataclass
class LayerEffects:
    """Everything `yield_impact` needs: a layer's terms inside one fitted yield model.

    `eta_other` is each wafer's fitted logit with the layer's terms taken out (intercept,
    lot, wafer and the other layers' terms stay). `beta_all` / `beta_cov` are all fixed
    effects of the model and their covariance; `beta_index` picks the metrology coefficients
    (in the order of `metrology`).
    """

    eta_other: np.ndarray
    groups: list[RandomGroup] = field(default_factory=list)
    metrology: list[MetrologyTerm] = field(default_factory=list)
    beta_all: np.ndarray = field(default_factory=lambda: np.zeros(0))
    beta_cov: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    beta_index: list[int] = field(default_factory=list)

    @property
    def beta(self) -> np.ndarray:
        return self.beta_all[self.beta_index] if self.beta_index else np.zeros(0)


def typical_level(estimate: np.ndarray) -> float:
    """The yardstick of an operation: its median level; of two levels, the better one.

    With two tools a median would sit half-way and call both "half bad"; the convention
    that most equipment is healthy makes the better one the reference.
    """
    return float(_typical_rows(np.asarray(estimate, dtype=float)[None, :])[0])


def _typical_rows(estimates: np.ndarray) -> np.ndarray:
    """`typical_level` of each row of a (draws, levels) array."""
    n_levels = estimates.shape[1]
    if n_levels == 0:
        return np.zeros(len(estimates))
    if n_levels == 2:
        return estimates.max(axis=1)
    return np.median(estimates, axis=1)


# Draws are evaluated in blocks of about this many (draw, wafer) cells: a year of wafers
# times 200 draws would not fit in memory at once.
_CELLS_PER_BLOCK = 500_000


def _layer_eta_and_shift(
    eff: LayerEffects, estimates: list[np.ndarray], beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    """Per draw (rows): the wafers' logit, the layer's part of it, and each term's shift.

    `estimates` holds one (draws, levels) array per random group, `beta` the (draws, terms)
    metrology coefficients. A term's shift moves each wafer from its level to the typical one:
    for a tool or chamber, the typical level of the term; for a metrology parameter, the level
    of the measuring operation's typical tool (the median of the tools' mean values, of two
    tools the better one), so that a tool shifting the parameter for half the wafers or more
    is still measured against its healthy peer; without tools, the median wafer.
    """
    n_draws = len(beta)
    part = np.zeros((n_draws, len(eff.eta_other)))
    shifts: list[np.ndarray] = []
    for group, est in zip(eff.groups, estimates, strict=True):
        has = group.index >= 0
        at = np.maximum(group.index, 0)
        gain = _typical_rows(est)[:, None] - est
        part += np.where(has, est[:, at], 0.0)
        shifts.append(np.where(has, gain[:, at], 0.0))
    for j, term in enumerate(eff.metrology):
        b = beta[:, j, None]
        contrib = b * term.z
        part += contrib
        idx = term.tool_index
        if idx is not None and bool(np.any(idx >= 0)):
            ok = idx >= 0
            counts = np.bincount(idx[ok])
            sums = np.bincount(idx[ok], weights=term.z[ok])
            z_tool = sums[counts > 0] / counts[counts > 0]
            typical = _typical_rows(b * z_tool)[:, None]
        else:
            typical = b * float(np.median(term.z))  # the median wafer: median(b z) = b median(z)
        shifts.append(typical - contrib)
    return eff.eta_other + part, part, shifts


def _impacts(
    eff: LayerEffects, estimates: list[np.ndarray], beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: the layer's yield impact and each item's (level of a term, metrology term).

    Items are in the order of `_item_labels`. A level's gain is the sum over the wafers that
    met it, so the items of one term add up to that term's impact on its own.
    """
    eta, _, shifts = _layer_eta_and_shift(eff, estimates, beta)
    n = eta.shape[1]
    base = special.expit(eta)
    total_shift = np.sum(shifts, axis=0) if shifts else np.zeros_like(eta)
    total = 100.0 * np.mean(special.expit(eta + total_shift) - base, axis=1)
    items: list[np.ndarray] = []
    for group, shift in zip(eff.groups, shifts, strict=False):  # metrology shifts follow
        gain = special.expit(eta + shift) - base
        items.append(100.0 / n * (gain @ _level_indicator(group)))
    for shift in shifts[len(eff.groups) :]:
        items.append(100.0 * np.mean(special.expit(eta + shift) - base, axis=1)[:, None])
    return total, np.hstack(items) if items else np.zeros((len(eta), 0))


def _level_indicator(group: RandomGroup) -> sparse.csr_matrix:
    """(wafers, levels) 0/1 matrix: which level of the term each wafer met."""
    has = np.flatnonzero(group.index >= 0)
    return sparse.csr_matrix(
        (np.ones(len(has)), (has, group.index[has])), shape=(len(group.index), len(group.levels))
    )


def _item_labels(eff: LayerEffects) -> list[tuple[str, int]]:
    labels = [(g.term, lev) for g in eff.groups for lev in range(len(g.levels))]
    return labels + [(t.name, 0) for t in eff.metrology]


def _point(eff: LayerEffects) -> tuple[list[np.ndarray], np.ndarray]:
    return [g.estimate[None, :] for g in eff.groups], eff.beta[None, :]


def yield_impact(eff: LayerEffects) -> float:
    """The layer's yield impact in percentage points (see YIELD_IMPACT_DEFINITION)."""
    estimates, beta = _point(eff)
    eta, _, shifts = _layer_eta_and_shift(eff, estimates, beta)
    total_shift = np.sum(shifts, axis=0) if shifts else np.zeros_like(eta)
    return float(100.0 * np.mean(special.expit(eta + total_shift) - special.expit(eta)))


@dataclass
class ImpactDraws:
    """Point estimates and simulated draws of the layer's impact and of each candidate finding."""

    layer: float
    layer_draws: np.ndarray  # their spread gives the interval, not their location
    # one entry per (group or metrology term, level): point value and draws
    items: list[tuple[str, int, float, np.ndarray]]  # (term name, level index, point, draws)

    def layer_interval(self, level: float = 0.95) -> tuple[float, float]:
        """The interval of the layer's impact at `level` (see `impact_interval`)."""
        return impact_interval(self.layer, self.layer_draws, level)


def simulate_impacts(eff: LayerEffects, n_draws: int = 400, seed: int = 0) -> ImpactDraws:
    """Point impacts plus draws from the joint prediction distribution (see INTERVAL_METHOD).

    beta* ~ N(beta-hat, cov(beta-hat)); each term's levels v* = v-hat + L (beta* - beta-hat)
    + e with e independent N(0, Var(v | beta)) (L and Var(v | beta) from hglm's
    `ranef_given_fixef`). This keeps the shared intercept uncertainty
    shared (it cancels in the comparison with the typical level) and ignores only the small
    conditional covariances between levels; a shift common to all levels of a term is taken
    out (see `_same_mean`). Without L (no joint distribution given) levels are
    drawn independently with their full prediction SE, which errs wide. The dispersion
    parameters are held at their estimates.

    The draws are not centred on the point impacts: the yardstick of an operation is the
    median of its levels or the better of two, and the better of two noisy levels is on
    average better than the better of their estimates, so a drawn impact of two tools that
    hardly differ lies above the point impact almost always. Intervals are therefore built
    from the draws' spread around their own median (`impact_interval`), never from their
    raw quantiles. That spread comes from the effects' uncertainty, which a sample of wafers
    carries as well as all of them: on a layer of more than DRAW_WAFERS wafers the draws are
    evaluated on a seeded random sample of DRAW_WAFERS of them (a year of 300,000 wafers: 12
    times less work), while the point impacts always use every wafer.
    """
    rng = np.random.default_rng(seed)
    p = len(eff.beta_all)
    chol = np.linalg.cholesky(eff.beta_cov + 1e-12 * np.eye(p)) if p else np.zeros((0, 0))
    dbeta = rng.standard_normal((n_draws, p)) @ chol.T
    drawn: list[np.ndarray] = []
    for g in eff.groups:
        noise = rng.standard_normal((n_draws, len(g.estimate)))
        if g.loading is not None and g.cond_se is not None and p:
            e = g.estimate + dbeta @ g.loading.T + g.cond_se * noise
        else:
            e = g.estimate + g.se * noise
        drawn.append(_same_mean(g, e))
    beta = (eff.beta_all + dbeta)[:, eff.beta_index] if eff.beta_index else np.zeros((n_draws, 0))
    point_total, point_items = _impacts(eff, *_point(eff))
    sample = _wafer_sample(eff, np.random.default_rng([seed, len(eff.eta_other)]))
    block = max(1, _CELLS_PER_BLOCK // max(1, len(sample.eta_other)))
    totals, items = [], []
    for s in range(0, n_draws, block):
        t, i = _impacts(sample, [e[s : s + block] for e in drawn], beta[s : s + block])
        totals.append(t)
        items.append(i)
    layer_draws = np.concatenate(totals) if totals else np.zeros(0)
    item_draws = np.vstack(items) if items else np.zeros((0, point_items.shape[1]))
    return ImpactDraws(
        layer=float(point_total[0]),
        layer_draws=layer_draws,
        items=[
            (term, lev, float(point_items[0, k]), item_draws[:, k])
            for k, (term, lev) in enumerate(_item_labels(eff))
        ],
    )


def _wafer_sample(eff: LayerEffects, rng: np.random.Generator) -> LayerEffects:
    """The layer's effects on DRAW_WAFERS wafers drawn at random, or `eff` if it has no more."""
    n = len(eff.eta_other)
    if n <= DRAW_WAFERS:
        return eff
    keep = np.sort(rng.choice(n, size=DRAW_WAFERS, replace=False))
    return replace(
        eff,
        eta_other=eff.eta_other[keep],
        groups=[replace(g, index=g.index[keep]) for g in eff.groups],
        metrology=[
            replace(t, z=t.z[keep], tool_index=None if t.tool_index is None else t.tool_index[keep])
            for t in eff.metrology
        ],
    )


def _same_mean(group: RandomGroup, drawn: np.ndarray) -> np.ndarray:
    """Remove the common shift of a term's levels from each draw (row).

    A shift shared by every level of a term is the intercept's business (the fixed
    effects absorb it and the wafers' fitted logits stay where the data put them); left
    in, it would move every wafer along the logistic curve and widen the interval for
    nothing. Only the differences between levels carry the layer's impact. The shift is
    the wafer-weighted mean of the levels' deviations from their estimates.
    """
    has = group.index >= 0
    if not has.any():
        return drawn
    weights = np.bincount(group.index[has], minlength=len(group.estimate)) / int(has.sum())
    return drawn - ((drawn - group.estimate) @ weights)[:, None]


def impact_interval(point: float, draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The interval of an impact: the draws' spread around their median, set around `point`.

    Parameters
    ----------
    point : the impact at the estimated effects (a layer's or a finding's).
    draws : the impact recomputed on draws of the effects (`simulate_impacts`).
    level : the coverage aimed at.

    Returns
    -------
    (low, high) with low <= point <= high: point + (q_a - median) and point + (q_1-a - median)
    of the draws, a = (1 - level) / 2. The raw quantiles would be an interval for the draws'
    own centre, which the non-linear yardstick (median, better of two) moves away from the
    point impact; by its distances from the median the interval keeps the draws' width and
    skew and contains the point impact by construction. Without draws (or NaN), (NaN, NaN).
    """
    draws = np.asarray(draws, dtype=float)
    if draws.size == 0 or not math.isfinite(point) or not np.isfinite(draws).all():
        return math.nan, math.nan
    a = (1 - level) / 2
    q_low, median, q_high = np.quantile(draws, [a, 0.5, 1 - a])
    # Quantiles are monotone in their level; min/max only absorb a rounding of the last digit.
    return point + min(0.0, float(q_low - median)), point + max(0.0, float(q_high - median))


def variance_share(eff: LayerEffects, eta_total: np.ndarray) -> float:
    """Share of the wafer-to-wafer variance of the final-yield logit carried by the layer's terms."""
    _, part, _ = _layer_eta_and_shift(eff, *_point(eff))
    total = float(np.var(eta_total))
    return float(np.var(part[0]) / total) if total > 0 else 0.0


# --------------------------------------------------------------------------- tests


def holm_adjust(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjustment (controls the family-wise error rate)."""
    p = np.asarray(pvalues, dtype=float)
    order = np.argsort(p)
    m = len(p)
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


# --------------------------------------------------------------------------- ranking


SIGNIFICANCE = 0.05


def rank_layers(
    fits: list[LayerFit],
    chained: LayerFit | None = None,
    operation_tests: list[OperationTest] | None = None,
    materiality: float = DEFAULT_MATERIALITY,
) -> tuple[list[LayerRanking], list[Finding]]:
    """Order the layers (RANKING_RULE); unranked layers follow with their reason.

    Parameters
    ----------
    fits : the layers' records with their losses and findings filled from the chained model
        (`flows.analysis.findings.apply_to_layers`)
    chained : the chained model's record (unused by the order; kept for the callers' symmetry)
    operation_tests : the run's adjusted tests; a layer's p-value is the smallest adjusted p
        of its tests. Without them (records of older runs) the layers' `p_value_raw` are
        Holm-adjusted across the layers instead.
    materiality : points of fab yield a significant loss's interval must clear

    Returns
    -------
    (ranking, findings) : one row per layer, and every layer's findings in ranking order.
    """
    ranked = [f for f in fits if f.status == "ranked"]
    unranked = [f for f in fits if f.status != "ranked"]
    if operation_tests is not None:
        layer_p: dict[str, float | None] = {f.layer: None for f in ranked}
        for t in operation_tests:
            if t.p_adjusted is not None and t.layer in layer_p:
                layer_p[t.layer] = min(layer_p[t.layer] or 1.0, t.p_adjusted)
    else:
        raw = [f.p_value_raw if f.p_value_raw is not None else 1.0 for f in ranked]
        layer_p = dict(zip([f.layer for f in ranked], holm_adjust(raw) if raw else [], strict=True))
    rows = []
    for fit in ranked:
        significant = any(_is_significant_loss(f) for f in fit.findings)
        loss = fit.yield_impact if significant else (0.0 if fit.yield_impact is not None else None)
        lo = fit.ci_low
        material = bool(significant and lo is not None and lo > materiality)
        rows.append((fit, loss, lo, fit.ci_high, layer_p.get(fit.layer), significant, material))
    rows.sort(
        key=lambda r: (
            not r[5],
            -_finite_or(r[1], -np.inf) if r[5] else _finite_or(r[4], 1.0),
            r[0].layer,
        )
    )
    ranking = [
        LayerRanking(
            layer=fit.layer,
            rank=i + 1,
            yield_impact=loss,
            ci_low=lo,
            ci_high=hi,
            p_value=p,
            variance_share=fit.variance_share,
            significant=significant,
            material=material,
            loss_label=None if significant else "no loss found",
        )
        for i, (fit, loss, lo, hi, p, significant, material) in enumerate(rows)
    ]
    for fit in sorted(unranked, key=lambda f: f.layer):
        ranking.append(
            LayerRanking(
                layer=fit.layer,
                rank=None,
                yield_impact=None,
                ci_low=None,
                ci_high=None,
                p_value=None,
                variance_share=None,
                status=fit.status,
                reason=fit.reason,
            )
        )
    by_layer = {fit.layer: fit for fit in ranked}
    findings = [
        f for r in ranking if r.layer in by_layer for f in sort_findings(by_layer[r.layer].findings)
    ]
    return ranking, findings


def _is_significant_loss(f: Finding) -> bool:
    return (
        f.effect in ("tool", "chamber", "metrology")
        and f.p_adjusted is not None
        and f.p_adjusted < SIGNIFICANCE
        and f.yield_impact is not None
        and math.isfinite(f.yield_impact)
        and f.yield_impact > 0
    )


def _finite_or(x: float | None, default: float) -> float:
    return x if x is not None and math.isfinite(x) else default


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """One layer's findings in the order an engineer should look at them.

    The rule of the layers, one level down: significant losses (adjusted p < 0.05) first by
    loss, then the other findings with a yield loss by adjusted p (their raw p when not
    adjusted), findings without a yield loss (dispersion) last. A shadow of a bad tool (a
    tool elsewhere that ran the same lots) has, given the source in the chained model, a
    small conditional loss and comes after it.
    """

    def key(i: int) -> tuple[int, float, float]:
        f = findings[i]
        loss = -_finite_or(f.yield_impact, -np.inf)  # ties: the larger loss first
        if _is_significant_loss(f):
            return (0, loss, 0.0)
        p = _finite_or(f.p_adjusted if f.p_adjusted is not None else f.p_value, 1.0)
        return (1 if f.effect in ("tool", "chamber", "metrology") else 2, p, loss)

    return [findings[i] for i in sorted(range(len(findings)), key=key)]


# --------------------------------------------------------------------------- writing

_RANKING_COLUMNS = [
    "run_id",
    "rank",
    "layer",
    "yield_impact",
    "ci_low",
    "ci_high",
    "p_value",
    "variance_share",
    "status",
    "reason",
    "significant",
    "material",
    "loss_label",
]
_FINDING_COLUMNS = [
    "run_id",
    "layer",
    "operation",
    "tool_id",
    "chamber_id",
    "param",
    "effect",
    "estimate",
    "yield_impact",
    "ci_low",
    "ci_high",
    "p_value",
    "p_adjusted",
    "material",
    "loss_on_wafers",
    "n_wafers",
    "n_lots",
    "aliased_with",
    "model",
    "onset_ts",
    "onset_low",
    "onset_high",
    "end_ts",
    "active",
    "event",
    "zone",
    "bin",
]


def _clean(value: object) -> object:
    """NaN becomes NULL: a missing number is missing, not a number."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _ranking_rows(result: AnalysisResult) -> list[tuple]:
    return [
        tuple(_clean(v) for v in (result.run_id, *(asdict(r)[c] for c in _RANKING_COLUMNS[1:])))
        for r in result.ranking
    ]


def _finding_rows(result: AnalysisResult) -> list[tuple]:
    return [
        tuple(_clean(v) for v in (result.run_id, *(asdict(f)[c] for c in _FINDING_COLUMNS[1:])))
        for f in result.findings
    ]


def write_results(db_path: str | Path, result: AnalysisResult, out_dir: str | Path) -> Path:
    """Write the run's ranking and findings to DuckDB (one transaction), CSV and JSON.

    A re-run with the same run_id replaces that run's rows; other runs are untouched. The
    tables are the contract's (`sql/analysis`) plus each layer's status and reason, so that an
    unranked layer is recorded with rank NULL rather than dropped. Returns the output folder.
    """
    from flows.warehouse.db import connect

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ranking_rows = _ranking_rows(result)
    finding_rows = _finding_rows(result)
    con = connect(db_path)
    try:
        con.execute("BEGIN TRANSACTION")
        try:
            for table, cols, rows in (
                ("subprocess_ranking", _RANKING_COLUMNS, ranking_rows),
                ("findings", _FINDING_COLUMNS, finding_rows),
            ):
                con.execute(f"DELETE FROM {table} WHERE run_id = ?", [result.run_id])
                if rows:
                    names = ", ".join(cols)
                    marks = ", ".join("?" for _ in cols)
                    con.executemany(f"INSERT INTO {table} ({names}) VALUES ({marks})", rows)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
    finally:
        con.close()
    for name, cols, rows in (
        ("subprocess_ranking.csv", _RANKING_COLUMNS, ranking_rows),
        ("findings.csv", _FINDING_COLUMNS, finding_rows),
    ):
        with (out / name).open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(cols)
            writer.writerows(["" if v is None else v for v in row] for row in rows)
    result.to_json(out / "analysis.json")
    return out
