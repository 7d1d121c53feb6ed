"""Yield impact, its interval, layer p-values and the ranking written back to the fab.

The quantities are defined once, here, and quoted in the README:

YIELD_IMPACT_DEFINITION is the paragraph an engineer reads; `LayerEffects` and
`yield_impact` are that paragraph in code. Everything in this module is plain numpy on
numbers the fitted models hand over, so it is testable without fitting anything.
"""

from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import special, stats

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
    "close to zero and may be slightly negative. The 95 % interval comes from drawing the "
    "layer's effects from their joint prediction distribution given the data; the p-value "
    "is a likelihood-ratio test of the layer's terms (Bonferroni over its terms), adjusted "
    "across layers by Holm's method."
)

INTERVAL_METHOD = (
    "prediction-distribution simulation: tool and chamber effects drawn from N(v-hat, "
    "prediction variance), metrology coefficients from N(beta-hat, cov(beta-hat)); 95 % "
    "percentile interval of the recomputed yield impact"
)
P_VALUE_ADJUSTMENT = "holm"


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
    # joint prediction distribution: v - v-hat = -M (beta - beta-hat) + e, e ~ N(0, diag(cond_se^2))
    m_rows: np.ndarray | None = None  # (n_levels, p) rows of H^-1 Z'AX, or None if unknown
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
    if len(estimate) == 0:
        return 0.0
    if len(estimate) == 2:
        return float(np.max(estimate))
    return float(np.median(estimate))


def _group_parts(group: RandomGroup, estimate: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wafer contribution, wafer shift to the typical level) for one random term."""
    gain = typical_level(estimate) - estimate
    has = group.index >= 0
    at = np.maximum(group.index, 0)
    contrib = np.where(has, estimate[at], 0.0)
    shift = np.where(has, gain[at], 0.0)
    return contrib, shift


def _metrology_parts(term: MetrologyTerm, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Every wafer's parameter brought to the typical tool's level of it.

    The typical level is that of the measuring operation's typical tool (the median of the
    tools' mean values; of two tools, the better one), so a tool that shifts the parameter
    for half the wafers or more is still measured against its healthy peer; without tools,
    the median wafer.
    """
    contrib = beta * term.z
    has = term.tool_index is not None and bool(np.any(term.tool_index >= 0))
    if not has:
        return contrib, np.median(contrib) - contrib
    assert term.tool_index is not None
    idx = term.tool_index
    ok = idx >= 0
    sums = np.bincount(idx[ok], weights=contrib[ok])
    counts = np.bincount(idx[ok])
    means = sums[counts > 0] / counts[counts > 0]
    return contrib, typical_level(means) - contrib


def _mean_gain(eta: np.ndarray, shift: np.ndarray) -> float:
    return float(100.0 * np.mean(special.expit(eta + shift) - special.expit(eta)))


def _layer_eta_and_shift(
    eff: LayerEffects, estimates: list[np.ndarray], beta: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray]]:
    part = np.zeros_like(eff.eta_other)
    shifts: list[np.ndarray] = []
    for group, est in zip(eff.groups, estimates, strict=True):
        c, s = _group_parts(group, est)
        part += c
        shifts.append(s)
    for j, term in enumerate(eff.metrology):
        c, s = _metrology_parts(term, float(beta[j]))
        part += c
        shifts.append(s)
    return eff.eta_other + part, part, shifts


def yield_impact(eff: LayerEffects) -> float:
    """The layer's yield impact in percentage points (see YIELD_IMPACT_DEFINITION)."""
    eta, _, shifts = _layer_eta_and_shift(eff, [g.estimate for g in eff.groups], eff.beta)
    return _mean_gain(eta, np.sum(shifts, axis=0) if shifts else np.zeros_like(eta))


@dataclass
class ImpactDraws:
    """Point estimates and simulated draws of the layer's impact and of each candidate finding."""

    layer: float
    layer_draws: np.ndarray
    # one entry per (group or metrology term, level): point value and draws
    items: list[tuple[str, int, float, np.ndarray]]  # (term name, level index, point, draws)


def _item_impacts(
    eff: LayerEffects, estimates: list[np.ndarray], beta: np.ndarray
) -> tuple[float, list[tuple[str, int, float]]]:
    eta, _, shifts = _layer_eta_and_shift(eff, estimates, beta)
    n = len(eta)
    base = special.expit(eta)
    total = _mean_gain(eta, np.sum(shifts, axis=0) if shifts else np.zeros_like(eta))
    items: list[tuple[str, int, float]] = []
    for g_i, group in enumerate(eff.groups):
        # each wafer met one level of the term: a level's gain is the sum over its wafers
        gain = special.expit(eta + shifts[g_i]) - base
        has = group.index >= 0
        per_level = np.bincount(group.index[has], weights=gain[has], minlength=len(group.levels))
        items.extend(
            (group.term, lev, float(100.0 * per_level[lev] / n)) for lev in range(len(group.levels))
        )
    for j, term in enumerate(eff.metrology):
        items.append((term.name, 0, _mean_gain(eta, shifts[len(eff.groups) + j])))
    return total, items


def simulate_impacts(eff: LayerEffects, n_draws: int = 400, seed: int = 0) -> ImpactDraws:
    """Point impacts plus draws from the joint prediction distribution (see INTERVAL_METHOD).

    beta* ~ N(beta-hat, cov(beta-hat)); each term's levels v* = v-hat - M (beta* - beta-hat)
    + e with e independent N(0, Var(v | beta)). This keeps the shared intercept uncertainty
    shared (it cancels in the comparison with the typical level) and ignores only the small
    conditional covariances between levels; a shift common to all levels of a term is taken
    out (see `_same_mean`). Without M (engine did not expose it) levels are
    drawn independently with their full prediction SE, which errs wide. The dispersion
    parameters are held at their estimates.
    """
    rng = np.random.default_rng(seed)
    point_total, point_items = _item_impacts(eff, [g.estimate for g in eff.groups], eff.beta)
    layer_draws = np.empty(n_draws)
    item_draws = np.empty((n_draws, len(point_items)))
    p = len(eff.beta_all)
    chol = np.linalg.cholesky(eff.beta_cov + 1e-12 * np.eye(p)) if p else np.zeros((0, 0))
    for d in range(n_draws):
        dbeta = chol @ rng.standard_normal(p) if p else np.zeros(0)
        ests = []
        for g in eff.groups:
            if g.m_rows is not None and g.cond_se is not None and p:
                e = g.estimate - g.m_rows @ dbeta + g.cond_se * rng.standard_normal(len(g.estimate))
            else:
                e = g.estimate + g.se * rng.standard_normal(len(g.estimate))
            ests.append(_same_mean(g, e))
        beta = (eff.beta_all + dbeta)[eff.beta_index] if eff.beta_index else np.zeros(0)
        total, items = _item_impacts(eff, ests, beta)
        layer_draws[d] = total
        item_draws[d] = [v for _, _, v in items]
    return ImpactDraws(
        layer=point_total,
        layer_draws=layer_draws,
        items=[(t, k, v, item_draws[:, i]) for i, (t, k, v) in enumerate(point_items)],
    )


def _same_mean(group: RandomGroup, drawn: np.ndarray) -> np.ndarray:
    """Remove the common shift of a term's levels from a draw.

    A shift shared by every level of a term is the intercept's business (the fixed
    effects absorb it and the wafers' fitted logits stay where the data put them); left
    in, it would move every wafer along the logistic curve and widen the interval for
    nothing. Only the differences between levels carry the layer's impact.
    """
    has = group.index >= 0
    if not has.any():
        return drawn
    at = group.index[has]
    return drawn - (np.mean(drawn[at]) - np.mean(group.estimate[at]))


def percentile_interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    a = (1 - level) / 2
    lo, hi = np.quantile(draws, [a, 1 - a])
    return float(lo), float(hi)


def variance_share(eff: LayerEffects, eta_total: np.ndarray) -> float:
    """Share of the wafer-to-wafer variance of the final-yield logit carried by the layer's terms."""
    _, part, _ = _layer_eta_and_shift(eff, [g.estimate for g in eff.groups], eff.beta)
    total = float(np.var(eta_total))
    return float(np.var(part) / total) if total > 0 else 0.0


# --------------------------------------------------------------------------- tests


def chibar_lrt_pvalue(statistic: float, n_variance: int, n_fixed: int = 0) -> float:
    """Likelihood-ratio p-value when `n_variance` components sit on their boundary under H0.

    PRIVATE STAND-IN, to be replaced by `hglm.lrt` (issue 9) once it exists. The null
    distribution is the chi-bar-square mixture sum_j C(k, j) 2^-k chi2(n_fixed + j)
    (Self & Liang 1987; exact for k asymptotically independent components).
    """
    if not math.isfinite(statistic):
        return float("nan")
    stat = max(statistic, 0.0)
    k = n_variance
    p = 0.0
    for j in range(k + 1):
        w = math.comb(k, j) / 2**k
        df = n_fixed + j
        p += w * (float(stats.chi2.sf(stat, df)) if df > 0 else float(stat <= 0))
    return min(max(p, 0.0), 1.0)


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
    order = {r.layer: i for i, r in enumerate(ranking)}
    findings = [f for fit in ranked for f in fit.findings]
    findings.sort(key=lambda f: (order[f.layer], -_finite_or(f.yield_impact, -np.inf)))
    return ranking, findings


def _finite_or(x: float | None, default: float) -> float:
    return x if x is not None and math.isfinite(x) else default


def sort_findings(findings: list[Finding]) -> list[Finding]:
    """Largest yield impact first; findings without a yield impact (dispersion) last."""
    return sorted(findings, key=lambda f: -_finite_or(f.yield_impact, -np.inf))


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
    from flows.db import connect

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
