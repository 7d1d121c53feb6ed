"""Yield impact, its interval, layer p-values and the ranking written back to the fab.

The quantities are defined once, here, and quoted in the README:

YIELD_IMPACT_DEFINITION is the paragraph an engineer reads; `LayerEffects` and
`yield_impact` are that paragraph in code. Everything in this module is plain numpy on
numbers the fitted models hand over, so it is testable without fitting anything.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from scipy import sparse, special

from flows.analysis.results import AnalysisResult, Finding, LayerFit, LayerRanking

YIELD_IMPACT_DEFINITION = (
    "**Yield impact** of a sub-process (layer) is how many percentage points of final yield "
    "(good dies of all dies, averaged over the sorted wafers) the fab would have gained if "
    "every tool and chamber of the layer had performed like the typical one of its "
    "operation, and the layer's metrology had sat at the typical tool's level. Typical means "
    "the median (of two, the better one): the median tool of the operation; the median "
    "chamber of the operation, a chamber being measured against its own tool; for a "
    "metrology parameter, the median of the tools' average values at the measuring "
    "operation (the analysis does not know the parameter's target). Nothing else changes: "
    "every wafer keeps its own lot, its own wafer-to-wafer variation and what the other "
    "layers did to it. One bad tool therefore counts in full (the median is a healthy tool, "
    "not the layer's average, which the bad tool drags down), while equipment that is "
    "better than typical counts against the layer, so chance differences between healthy "
    "tools cancel instead of piling up; the impact of a layer without a real effect is "
    "close to zero (in the validation's 520 such layers: median 0.06 points, nine in ten "
    "below 0.4) and may be negative. The 95 % interval comes from drawing the layer's "
    "effects from their joint prediction distribution given the data, with the variances "
    "of the tool and chamber terms held at their estimates, recomputing the impact on each "
    "draw and setting the spread of those impacts around their median around the estimate, "
    "so that the interval always contains it. It can exclude zero for a layer without a "
    "real effect (14 of the validation's 180 such layers in its seeds 1-20 and 1001-1010), "
    "so whether a layer matters at all is the p-value's question; the p-value "
    "is the likelihood-ratio test of all the layer's terms together (the yield model with and "
    "without them, chi-bar-square null distribution for the variance components on their "
    "boundary), adjusted across layers by Holm's method."
)

N_DRAWS = 200  # draws behind each interval: the 2.5 % quantile rests on about 5 of them
# The draws of a larger layer are evaluated on a seeded sample of this many wafers (see
# `simulate_impacts`); the point impacts always use every wafer.
DRAW_WAFERS = 25_000

INTERVAL_METHOD = (
    "simulation from the joint prediction distribution of the layer's effects in its fitted "
    "yield model: metrology coefficients beta* ~ N(beta-hat, cov(beta-hat)), tool and chamber "
    "effects v* = v-hat + L (beta* - beta-hat) + e with e ~ N(0, Var(v | beta)) (L and "
    "Var(v | beta) from the engine's ranef_given_fixef), the dispersion "
    "parameters (lambda) held at their estimates; the yield impact is recomputed on each of "
    f"{N_DRAWS} draws (not a parametric bootstrap: the models are not refitted) and the 2.5 % "
    "and 97.5 % quantiles of the draws, taken as distances from the draws' median, are set "
    "around the point impact (so the interval contains it by construction); on layers of "
    f"more than {DRAW_WAFERS:,} wafers the draws are evaluated on a seeded random sample of "
    "that many wafers (only their spread is used; the point impact is that of all wafers)"
)
P_VALUE_ADJUSTMENT = "holm"
RANKING_RULE = (
    "layers whose Holm-adjusted p-value is below 0.05 first, then the others, each group by "
    "yield impact; a significant layer's impact and interval come from the chained model (all "
    "layers' terms in one yield model), so that lots sharing equipment across layers are not "
    "counted twice; other layers keep their own model's numbers; the variance share is always "
    "the chained model's; layers that could not be modelled follow, unranked, with the reason. "
    "Within a layer the findings follow the same rule: those whose p-value is below 0.05 after "
    "Holm's adjustment over the layer's yield findings first, then the others, each group by "
    "yield impact; dispersion findings (no yield impact) last"
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
    fits: list[LayerFit], chained: LayerFit | None
) -> tuple[list[LayerRanking], list[Finding]]:
    """Order the layers by yield impact; unranked layers follow with their reason.

    Layers whose adjusted p-value is below 0.05 come first (by impact), then the others (by
    impact).

    p-values are the per-layer likelihood-ratio tests, Holm-adjusted across the ranked layers.
    For a layer whose adjusted p is below 0.05 and which the chained model (all layers in one
    model) covers, impact and interval come from the chained model, so that an effect carried
    by lots that shared tools across layers is not counted twice; the variance share always
    comes from the chained model when it converged (it is a share of the final-yield logit's
    variance). Other layers keep their own model's numbers.
    """
    use_chained = chained is not None and chained.status == "ranked"
    joint = chained.layer_effects if use_chained and chained is not None else {}
    ranked = [f for f in fits if f.status == "ranked"]
    unranked = [f for f in fits if f.status != "ranked"]
    raw = [f.p_value_raw if f.p_value_raw is not None else 1.0 for f in ranked]
    adjusted = holm_adjust(raw) if ranked else []
    rows = []
    for fit, p_adj in zip(ranked, adjusted, strict=True):
        impact, lo, hi, share = fit.yield_impact, fit.ci_low, fit.ci_high, fit.variance_share
        if fit.layer in joint:
            e = joint[fit.layer]
            share = e["variance_share"]
            if p_adj < SIGNIFICANCE:
                impact, lo, hi = e["yield_impact"], e["ci_low"], e["ci_high"]
        rows.append((fit, impact, lo, hi, share, p_adj))
    # Layers with an established effect (adjusted p < 0.05) first, each tier by impact: a
    # layer whose effect cannot be told from chance does not outrank one that can.
    rows.sort(key=lambda r: (r[5] >= SIGNIFICANCE, -_finite_or(r[1], -np.inf), r[5], r[0].layer))
    ranking = [
        LayerRanking(
            layer=fit.layer,
            rank=i + 1,
            yield_impact=impact,
            ci_low=lo,
            ci_high=hi,
            p_value=p_adj,
            variance_share=share,
        )
        for i, (fit, impact, lo, hi, share, p_adj) in enumerate(rows)
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


def _finite_or(x: float | None, default: float) -> float:
    return x if x is not None and math.isfinite(x) else default


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """One layer's findings in the order an engineer should look at them.

    The rule of the layers, one level down: findings whose yield effect is established
    (p-value below 0.05 after Holm's adjustment over the layer's yield findings) first, then
    the others, each group by yield impact; findings without a yield impact (dispersion) last.
    A tool spread over many wafers can carry a large point impact from a difference that
    cannot be told from chance; it does not outrank a chamber whose effect is clear.
    """
    with_impact = {
        i
        for i, f in enumerate(findings)
        if f.yield_impact is not None and math.isfinite(f.yield_impact)
    }
    tested = {i: p for i in sorted(with_impact) if (p := findings[i].p_value) is not None}
    adjusted = dict(zip(tested, holm_adjust(list(tested.values())), strict=True)) if tested else {}

    def key(i: int) -> tuple[bool, bool, float]:
        f = findings[i]
        has_impact = i in with_impact
        established = adjusted.get(i, 1.0) < SIGNIFICANCE
        return (not has_impact, not established, -_finite_or(f.yield_impact, -np.inf))

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
