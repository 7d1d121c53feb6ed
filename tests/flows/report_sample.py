"""A simulated fab in a real DuckDB file and an analysis run over it, for the report tests.

The fab has a planted bad tool in GATE (named `<script>alert(1)</script>`, so every place
that prints a tool id is also an escaping test), a bad chamber in M1, a metrology parameter
(GATE_CD) that drives yield and a noisy chamber. The `AnalysisResult` is built from the
simulated data by simple, transparent estimates (tool means on the logit scale, their
binomial SEs): it is realistic in shape and size, it is not the statistics of
`flows.analysis`, and the report must not care which produced it.

`attributed_result` adds what issue 14's attribution records (adjusted p per finding, the
lots, the aliases, the metrology cause, materiality, the per-operation tests) under the names
of the lead's design; until flows/analysis/results.py carries them, the sample subclasses
today's records. (This module runs past 600 lines because the fab, its database and both
kinds of result belong together: the report tests read them side by side.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from scipy import special, stats

from flows.analysis.ranking import holm_adjust
from flows.analysis.results import AnalysisResult, Finding, LayerFit, LayerRanking, RandomEffect
from flows.warehouse import db

XSS_TOOL = "<script>alert(1)</script>"
XSS_OPERATION = '"><img src=x onerror=alert(2)>'
NASTY_LAYER = "M3 & <b>co</b>"
MATH_TOOL = "$\\frac{a}{b}$ 室4 {{ 7*7 }}"  # mathtext, a CJK glyph, a template expression
PLANTED_LAYER = "GATE"

ROUTE: dict[str, list[str]] = {
    "STI": ["STI_ETCH", "STI_CMP"],
    "WELL": ["WELL_IMP"],
    "GATE": ["GATE_LITHO", "GATE_ETCH"],
    "SPACER": ["SPACER_DEP"],
    "CONTACT": ["CT_ETCH", "CT_FILL"],
    "M1": ["M1_DEP", "M1_CMP"],
    "VIA1": ["VIA1_ETCH"],
    NASTY_LAYER: [XSS_OPERATION],
    "PASSIV": ["PASSIV_DEP"],
    "BUMP": ["BUMP_PLATE"],
}
NOT_CONVERGED = "PASSIV"
TOO_LITTLE = "BUMP"
PARAMS = {  # param -> (operation, target, sd)
    "GATE_CD": ("GATE_ETCH", 45.0, 1.0),
    "M1_THK": ("M1_CMP", 300.0, 6.0),
    "STI_DEPTH": ("STI_ETCH", 350.0, 5.0),
    "CT_RES": ("CT_FILL", 12.0, 0.4),
}
TOOLS_PER_OP = 4
CHAMBERS = ["CH1", "CH2", "CH3"]
WAFERS_PER_LOT = 25
DIES = 600


def tool_name(operation: str, k: int) -> str:
    if operation == "GATE_ETCH" and k == 2:
        return XSS_TOOL
    if operation == "CT_ETCH" and k == 3:
        return MATH_TOOL
    return f"{operation.split('_')[0][:4]}{operation.split('_')[-1][:2]}{k + 1:02d}"


@dataclass
class Fab:
    """The simulated data as Polars frames, plus what was planted."""

    wafers: pl.DataFrame  # wafer_id, lot_id, slot, dies_total, dies_good, eta
    steps: pl.DataFrame  # wafer_id, step_seq, operation, layer, tool_id, chamber_id, ts
    meas: pl.DataFrame  # wafer_id, operation, param, site, value
    start: datetime
    end: datetime


def simulate(n_lots: int, seed: int = 7) -> Fab:
    rng = np.random.default_rng(seed)
    n = n_lots * WAFERS_PER_LOT
    lot = np.repeat(np.arange(n_lots), WAFERS_PER_LOT)
    slot = np.tile(np.arange(1, WAFERS_PER_LOT + 1), n_lots)
    lot_ids = np.array([f"L{i:05d}" for i in range(n_lots)])[lot]
    wafer_ids = np.char.add(np.char.add(lot_ids, "."), np.char.zfill(slot.astype(str), 2))
    eta = 2.0 + rng.normal(0, 0.35, n_lots)[lot] + rng.normal(0, 0.25, n)
    start = datetime(2026, 9, 1, tzinfo=UTC)
    lot_start = rng.uniform(0, 60 * 24 * 60, n_lots)  # minutes over two months

    steps, meas = [], []
    seq = 0
    for layer, operations in ROUTE.items():
        for operation in operations:
            seq += 10
            tool_k = rng.integers(0, TOOLS_PER_OP, n_lots)[lot]
            chamber_k = (slot - 1) % len(CHAMBERS)
            tools = np.array([tool_name(operation, k) for k in range(TOOLS_PER_OP)])[tool_k]
            chambers = np.array(CHAMBERS)[chamber_k]
            if operation == "GATE_ETCH":
                eta += np.where(tool_k == 2, -0.55, 0.0)  # the planted bad tool
            if operation == "CT_ETCH":
                eta += np.where(tool_k == 3, -0.3, 0.0)  # a smaller one, on MATH_TOOL
            if operation == "M1_CMP":
                eta += np.where((tool_k == 1) & (chamber_k == 1), -0.45, 0.0)  # bad chamber
            t_in = lot_start[lot] + seq * 30 + rng.uniform(0, 20, n)
            steps.append(
                pl.DataFrame(
                    {
                        "wafer_id": wafer_ids,
                        "step_seq": np.full(n, seq),
                        "operation": operation,
                        "layer": layer,
                        "tool_id": tools,
                        "chamber_id": chambers,
                        "t_in": t_in,
                    }
                )
            )
            for param, (op, target, sd) in PARAMS.items():
                if op != operation:
                    continue
                wafer_value = target + rng.normal(0, sd, n)
                if param == "GATE_CD":
                    wafer_value += np.where(tool_k == 1, 1.5 * sd, 0.0)
                    eta += -0.25 * (wafer_value - target) / sd
                noisy = (param == "M1_THK") & (tool_k == 0) & (chamber_k == 2)
                sampled = np.isin(slot, [1, 6, 11, 16, 21])
                for site in range(1, 6):
                    site_sd = np.where(noisy, 2.5 * sd, 0.5 * sd)
                    meas.append(
                        pl.DataFrame(
                            {
                                "wafer_id": wafer_ids[sampled],
                                "operation": operation,
                                "param": param,
                                "site": site,
                                "value": (wafer_value + rng.normal(0, 1, n) * site_sd)[sampled],
                            }
                        )
                    )
    dies_good = rng.binomial(DIES, special.expit(eta))
    wafers = pl.DataFrame(
        {
            "wafer_id": wafer_ids,
            "lot_id": lot_ids,
            "slot": slot,
            "dies_total": np.full(n, DIES),
            "dies_good": dies_good,
            "eta": eta,
        }
    )
    steps_df = pl.concat(steps).with_columns(
        (pl.lit(start) + pl.duration(minutes=pl.col("t_in"))).alias("track_in_ts")
    )
    return Fab(
        wafers=wafers,
        steps=steps_df,
        meas=pl.concat(meas),
        start=start,
        end=start + timedelta(minutes=float(lot_start.max()) + seq * 30),
    )


DROPS = [
    ("drop-2026-09-15", "landing/2026-09-15", "merged"),
    ("drop-2026-10-01", "landing/2026-10-01", "merged"),
    ("drop <bad> & 'quoted'", "landing/<bad>.csv", "rejected"),
]


def write_database(fab: Fab, path: Path) -> Path:
    """The fab in the schema of `sql/`, loaded as ingestion would leave it (plus a rejected drop)."""
    con = db.connect(path)
    try:
        w, s, m = fab.wafers, fab.steps, fab.meas  # noqa: F841 (DuckDB reads them by name)
        first = DROPS[0][0]
        con.execute(
            "INSERT INTO core.lots SELECT DISTINCT lot_id, 'P1', 'R1', NULL, ?, 'lots.csv', NULL "
            "FROM w",
            [first],
        )
        con.execute(
            "INSERT INTO core.wafers SELECT wafer_id, lot_id, slot, ?, 'wafers.csv', NULL FROM w",
            [first],
        )
        con.execute(
            """INSERT INTO core.step_history SELECT wafer_id, step_seq, operation, layer, tool_id,
               chamber_id, NULL, track_in_ts::TIMESTAMP, track_in_ts::TIMESTAMP + INTERVAL 5 MINUTE,
               ?, 'step_history.parquet', NULL FROM s""",
            [first],
        )
        con.execute(
            "INSERT INTO core.inline_meas SELECT wafer_id, operation, param, site, value, ?, "
            "'inline_meas.parquet', NULL FROM m",
            [first],
        )
        con.execute(
            "INSERT INTO core.sort_yield SELECT wafer_id, dies_total, dies_good, NULL, ?, "
            "'sort_yield.csv', NULL FROM w",
            [DROPS[1][0]],
        )
        t0 = fab.end
        for attempt, (drop_id, drop_path, status) in enumerate(DROPS, 1):
            counts = {"wafers": len(w), "step_history": len(s)} if attempt == 1 else {"sort": 40}
            con.execute(
                "INSERT INTO meta.drop_log VALUES (?, ?, ?, 'h', ?, ?, ?, '[]', ?, ?, 1.5, '{}')",
                [
                    attempt,
                    drop_id,
                    drop_path,
                    status,
                    json.dumps(list(counts)),
                    json.dumps(counts),
                    t0 + timedelta(days=attempt),
                    t0 + timedelta(days=attempt),
                ],
            )
        attempt = len(DROPS)
        con.execute(
            """INSERT INTO quarantine.problems VALUES
               (?, ?, 'sort_yield', '<bad>.csv', 'dies_good <= dies_total', 'error', 3,
                'sort_yield.csv: 3 rows have dies_good > dies_total (rows 4, 9, 17)', NULL),
               (?, ?, 'sort_yield', '<bad>.csv', 'wafer_id exists in wafers', 'error', 1,
                'sort_yield.csv: 1 row names wafer <script>x</script> that no drop delivered',
                NULL)""",
            [attempt, DROPS[2][0]] * 2,
        )
        for row in range(40):
            con.execute(
                "INSERT INTO quarantine.rows VALUES (?, ?, 'sort_yield', '<bad>.csv', ?, ?, '{}')",
                [attempt, DROPS[2][0], row, ["dies_good <= dies_total"] if row < 3 else []],
            )
    finally:
        con.close()
    return path


IMPACT_DEFINITION = (
    "**Yield impact** of a layer: the final yield, in percentage points, that the wafers "
    "would have gained if the layer's under-performing tools and chambers had performed like "
    "the median of their peers and its metrology sat on the good side of its median."
)


def analysis_result(
    fab: Fab, run_id: str = "run-0001", created_at: str | None = None, shift: float = 0.0
) -> AnalysisResult:
    """A complete run over the fab: every layer fitted, ranked or not, with the reason."""
    rng = np.random.default_rng(11)
    frame = fab.steps.join(fab.wafers, on="wafer_id")
    base_logit = special.logit(fab.wafers["dies_good"].sum() / fab.wafers["dies_total"].sum())
    fits, impacts = [], {}
    for layer, operations in ROUTE.items():
        part = frame.filter(pl.col("layer") == layer)
        if layer == TOO_LITTLE:
            fits.append(
                LayerFit(
                    layer,
                    "too_little_data",
                    reason="only 14 wafers with sort results went through BUMP_PLATE "
                    "(at least 200 needed)",
                    operations=operations,
                    n_wafers=14,
                    n_lots=2,
                )
            )
            continue
        ranef, findings = _equipment_effects(layer, part, base_logit)
        impact = sum(f.yield_impact for f in findings if f.effect in ("tool", "chamber"))
        impact = max(impact * 0.5 + shift, 0.0)
        findings += _metrology_findings(layer, fab)
        impact += sum(f.yield_impact for f in findings if f.effect == "metrology")
        fitted = base_logit + rng.normal(0, 0.4, 3000)
        fit = LayerFit(
            layer=layer,
            status="ranked",
            operations=operations,
            n_wafers=part["wafer_id"].n_unique(),
            n_lots=part["lot_id"].n_unique(),
            method="binomial-beta HGLM, logit link, HL(1,1)",
            converged=True,
            n_iter=int(rng.integers(6, 30)),
            caic=float(rng.uniform(38000, 42000)),
            varcomp={
                "lot": 0.12,
                "wafer (beta)": 0.06,
                **{f"tool:{op}": float(rng.uniform(0.001, 0.05)) for op in operations},
                **{f"chamber:{op}": float(rng.uniform(0.0005, 0.02)) for op in operations},
            },
            fixef={"(Intercept)": {"estimate": float(base_logit), "se": 0.03}},
            ranef=ranef,
            findings=findings,
            process_models=[
                {
                    "param": p,
                    "family": "gamma" if p == "M1_THK" else "normal",
                    "caic": 1234.5,
                    "converged": True,
                    "dispersion_model": "phi ~ tool + chamber",
                }
                for p, (op, _, _) in PARAMS.items()
                if op in operations
            ],
            diagnostics={
                "fitted": fitted.tolist(),
                "residuals": rng.standard_t(8, 3000).tolist(),
            },
        )
        for p, (op, _, _) in PARAMS.items():
            if op in operations:
                fit.fixef[p] = {"estimate": -0.25 if p == "GATE_CD" else 0.01, "se": 0.02}
        if layer == NOT_CONVERGED:
            fit.status, fit.converged, fit.n_iter = "not_converged", False, 200
            fit.reason = (
                "outer loop stopped after 200 iterations with a relative change of "
                "3.1e-3 in the dispersion parameters (tolerance 1e-6)"
            )
            fit.findings = []
        else:
            impacts[layer] = impact
        fits.append(fit)

    ranked = sorted(impacts, key=lambda k: -impacts[k])
    ranking = []
    for rank, layer in enumerate(ranked, 1):
        impact = impacts[layer]
        half = 0.25 * impact + 0.12
        p = 1e-7 if impact > 1.0 else float(min(1.0, rng.uniform(0.05, 1.0)))
        ranking.append(
            LayerRanking(
                layer, rank, impact, impact - half, impact + half, p, float(rng.uniform(0.01, 0.3))
            )
        )
    for fit in fits:
        if fit.status != "ranked":
            ranking.append(
                LayerRanking(fit.layer, None, None, None, None, None, None, fit.status, fit.reason)
            )
    chained = LayerFit(
        layer="(chained)",
        status="ranked",
        operations=[op for ops in ROUTE.values() for op in ops],
        n_wafers=fab.wafers.height,
        n_lots=fab.wafers["lot_id"].n_unique(),
        method="chained binomial-beta HGLM (HL(1,1)) of every ranked layer",
        converged=True,
        n_iter=41,
        caic=61234.5,
        layer_effects={
            r.layer: {
                "yield_impact": 0.9 * r.yield_impact,
                "ci_low": 0.9 * r.ci_low,
                "ci_high": 0.9 * r.ci_high,
                "variance_share": r.variance_share,
            }
            for r in ranking
            if r.rank is not None
        },
    )
    for r in ranking:
        fit = next(f for f in fits if f.layer == r.layer)
        fit.yield_impact, fit.ci_low, fit.ci_high = r.yield_impact, r.ci_low, r.ci_high
    return AnalysisResult(
        run_id=run_id,
        created_at=created_at or datetime.now(UTC).isoformat(timespec="seconds"),
        ranking=ranking,
        findings=[f for fit in fits for f in fit.findings],
        layers=[*fits, chained],
        data_summary={
            "drops": [{"drop_id": d, "status": st} for d, _, st in DROPS],
            "date_range": [fab.start.isoformat(), fab.end.isoformat()],
            "n_lots": fab.wafers["lot_id"].n_unique(),
            "n_wafers": fab.wafers.height,
            "n_wafers_with_yield": fab.wafers.height,
            "data_quality": {
                "outcome": "2 drops merged, 1 rejected (sort_yield rules broken)",
                "expectations": [
                    {
                        "drop_id": DROPS[0][0],
                        "suite": "wafers",
                        "evaluated": 9,
                        "successful": 9,
                        "success": True,
                    },
                    {
                        "drop_id": DROPS[1][0],
                        "suite": "sort_yield",
                        "evaluated": 7,
                        "successful": 7,
                        "success": True,
                    },
                    {
                        "drop_id": DROPS[2][0],
                        "suite": "sort_yield",
                        "evaluated": 7,
                        "successful": 5,
                        "success": False,
                    },
                ],
            },
        },
        method={
            "yield_model": "binomial-beta HGLM per layer: lot, tool within operation, chamber "
            "within tool random effects; standardised metrology fixed effects",
            "process_models": "normal or gamma HGLM per inline parameter (chosen by cAIC) with "
            "a dispersion model of phi by tool and chamber",
            "estimation": "h-likelihood, HL(1,1), REML for dispersion",
            "interval_method": "parametric bootstrap, 200 replicates",
            "p_value_adjustment": "Holm",
            "impact_definition": IMPACT_DEFINITION,
            "versions": {"hglm": "0.1.0", "numpy": np.__version__},
        },
    )


def _equipment_effects(
    layer: str, part: pl.DataFrame, base_logit: float
) -> tuple[list[RandomEffect], list[Finding]]:
    ranef, findings = [], []
    for kind, keys in (
        ("tool", ["operation", "tool_id"]),
        ("chamber", ["operation", "tool_id", "chamber_id"]),
    ):
        stats_ = (
            part.group_by(keys, maintain_order=True)
            .agg(pl.col("dies_good").sum(), pl.col("dies_total").sum(), pl.len().alias("n"))
            .sort(keys)
        )
        for op_part in stats_.partition_by("operation"):
            p = op_part["dies_good"].to_numpy() / op_part["dies_total"].to_numpy()
            logit = special.logit(p)
            # Overdispersed SE: wafers, not dies, are the replicates.
            se = np.sqrt(0.3 / op_part["n"].to_numpy())
            effect = (logit - np.median(logit)) * 0.8
            for row, est, s, pk in zip(op_part.iter_rows(named=True), effect, se, p, strict=True):
                level = (
                    row["tool_id"] if kind == "tool" else f"{row['tool_id']}:{row['chamber_id']}"
                )
                ranef.append(
                    RandomEffect(
                        f"{kind}:{row['operation']}",
                        level,
                        float(est),
                        float(s),
                        row["operation"],
                        row["tool_id"],
                        row.get("chamber_id"),
                    )
                )
                if est - 1.96 * s < 0 < est + 1.96 * s or est > 0:
                    continue
                share = row["n"] / part["wafer_id"].n_unique()
                gain = 100 * share * (special.expit(base_logit) - pk)
                findings.append(
                    Finding(
                        layer,
                        kind,
                        float(est),
                        float(gain),
                        float(gain * 0.6),
                        float(gain * 1.4),
                        float(2 * stats.norm.sf(abs(est / s))),
                        row["operation"],
                        row["tool_id"],
                        row.get("chamber_id") if kind == "chamber" else None,
                    )
                )
    return ranef, findings


def _metrology_findings(layer: str, fab: Fab) -> list[Finding]:
    out = []
    for param, (op, _, _) in PARAMS.items():
        if op not in ROUTE[layer]:
            continue
        if param == "GATE_CD":
            out.append(Finding(layer, "metrology", -0.25, 0.9, 0.5, 1.3, 1e-6, op, param=param))
        if param == "M1_THK":
            out.append(
                Finding(
                    layer,
                    "dispersion",
                    1.6,
                    0.0,
                    0.0,
                    0.0,
                    2e-5,
                    op,
                    tool_id=tool_name(op, 0),
                    chamber_id="CH3",
                    param=param,
                )
            )
    return out


def write_run(out_dir: Path, result: AnalysisResult) -> Path:
    """A run folder as the pipeline leaves it: analysis.json and the GX data docs."""
    out_dir.mkdir(parents=True, exist_ok=True)
    docs = (
        out_dir / "data-docs" / "index.html"
    )  # where flows.orchestration.prefect_flows has GX write them
    docs.parent.mkdir(parents=True, exist_ok=True)
    docs.write_text("<html><body>data docs</body></html>")
    result.to_json(out_dir / "analysis.json")
    return out_dir


# ---- issue 14's attribution ------------------------------------------------------------------
# The names and meanings of the lead's design (ISSUE14_DESIGN.md, "Interface"); the attribution
# branch adds these fields to flows.analysis.results itself. Here they are subclasses, so that
# the report is tested on the fields before they land, and read with defaults after.

MATERIALITY = 0.25  # points of fab yield, the design's default
PLANTED_CHAMBER = ("M1_CMP", tool_name("M1_CMP", 1), "CH2")  # `simulate`'s bad chamber


@dataclass(frozen=True)
class AttributedFinding(Finding):
    p_adjusted: float | None = None
    material: bool | None = None
    loss_on_wafers: float | None = None
    n_wafers: int | None = None
    n_lots: int | None = None
    lots: list[str] = field(default_factory=list)
    aliased_with: str | None = None
    aliases: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None
    cause: dict[str, Any] | None = None


@dataclass(frozen=True)
class AttributedRanking(LayerRanking):
    material: bool | None = None
    significant: bool | None = None
    loss_label: str | None = None


@dataclass(frozen=True)
class OperationTest:
    layer: str
    operation: str
    kind: str  # "equipment" | "metrology"
    param: str | None
    statistic: float
    df: int
    n_boundary: int
    p_value: float
    p_adjusted: float
    n_tools: int
    n_chambers: int
    n_lots: int
    detectable_shift: float | None  # yield points on a typical tool's wafers
    detectable_shift_logit: float | None


@dataclass
class AttributedResult(AnalysisResult):
    operation_tests: list[OperationTest] = field(default_factory=list)
    materiality: float = MATERIALITY


def attributed_result(fab: Fab, base: AnalysisResult | None = None) -> AttributedResult:
    """`analysis_result` with the attribution's fields, from transparent estimates again.

    Operation tests: Kruskal-Wallis of lot-mean yield by tool (a metrology parameter: the
    correlation of wafer means with yield), Holm over all of them. A finding's adjusted p:
    Holm over the run's findings, then at least its operation's adjusted p. A layer's loss:
    the sum of its significant losses; a layer without one shows "no loss found" at 0.
    """
    base = base or analysis_result(fab)
    wafers = fab.steps.join(fab.wafers, on="wafer_id").with_columns(
        (100 * pl.col("dies_good") / pl.col("dies_total")).alias("yield_pct")
    )
    ranked_layers = [r.layer for r in base.ranking if r.rank is not None]
    tests = _operation_tests(fab, wafers, ranked_layers)
    test_p = {(t.operation, t.param): t.p_adjusted for t in tests}
    tested = [f for f in base.findings if f.p_value is not None]
    holm = dict(zip(map(id, tested), holm_adjust([f.p_value for f in tested]), strict=True))
    new: dict[int, AttributedFinding] = {}
    for f in base.findings:
        # hierarchical: a yield finding is no stronger than its operation's test
        p_op = (
            0.0
            if f.effect == "dispersion"
            else test_p.get((f.operation, f.param if f.effect == "metrology" else None), 0.0)
        )
        p_adj = max(holm[id(f)], p_op) if id(f) in holm else None
        new[id(f)] = _attributed(f, p_adj, wafers, fab)
    ranking = _attributed_ranking(base, list(new.values()), tests)
    # copies: `base` stays a run of today's schema (its JSON is what from_json reads)
    layers = [
        replace(fit, findings=[new.get(id(f), f) for f in fit.findings]) for fit in base.layers
    ]
    return AttributedResult(
        run_id=base.run_id,
        created_at=base.created_at,
        ranking=ranking,
        findings=list(new.values()),
        layers=layers,
        data_summary=base.data_summary,
        method=base.method,
        operation_tests=tests,
        materiality=MATERIALITY,
    )


def _operation_tests(fab: Fab, wafers: pl.DataFrame, layers: list[str]) -> list[OperationTest]:
    rows: list[dict[str, Any]] = []
    for layer in layers:
        for op in ROUTE[layer]:
            at = wafers.filter(pl.col("operation") == op)
            lots = at.group_by("lot_id", "tool_id").agg(pl.col("yield_pct").mean())
            groups = [g["yield_pct"].to_numpy() for g in lots.partition_by("tool_id")]
            h, p_tools = stats.kruskal(*groups)
            # chambers vary within a lot: their wafers' deviations from the lot mean
            within_lot = at.with_columns(
                (pl.col("yield_pct") - pl.col("yield_pct").mean().over("lot_id")).alias("dev")
            )
            cells = [g["dev"].to_numpy() for g in within_lot.partition_by("tool_id", "chamber_id")]
            _, p_chambers = stats.kruskal(*cells)
            p = min(1.0, 2 * min(p_tools, p_chambers))  # Bonferroni over the two
            within = np.sqrt(np.mean([np.var(g, ddof=1) for g in groups if len(g) > 1]))
            per_tool = float(np.median([len(g) for g in groups]))
            rows.append(
                dict(
                    layer=layer,
                    operation=op,
                    kind="equipment",
                    param=None,
                    statistic=float(h),
                    df=len(groups) - 1,
                    n_boundary=2,
                    p_value=float(p),
                    n_tools=len(groups),
                    n_chambers=at.select("tool_id", "chamber_id").unique().height,
                    n_lots=lots.height,
                    se=float(within * np.sqrt(1 / per_tool + 1 / (lots.height - per_tool))),
                )
            )
            for param, (p_op, _, _) in PARAMS.items():
                if p_op != op:
                    continue
                means = (
                    fab.meas.filter(pl.col("param") == param)
                    .group_by("wafer_id")
                    .agg(pl.col("value").mean())
                )
                joined = means.join(at, on="wafer_id")
                r, p_corr = stats.pearsonr(joined["value"], joined["yield_pct"])
                rows.append(
                    dict(
                        layer=layer,
                        operation=op,
                        kind="metrology",
                        param=param,
                        statistic=float(r),
                        df=1,
                        n_boundary=0,
                        p_value=float(p_corr),
                        n_tools=len(groups),
                        n_chambers=0,
                        n_lots=lots.height,
                        se=None,
                    )
                )
    adjusted = [float(p) for p in holm_adjust([r["p_value"] for r in rows])]
    z = stats.norm.isf(0.05 / len(rows) / 2) + stats.norm.isf(0.2)
    tests = []
    for row, p_adj in zip(rows, adjusted, strict=True):
        se = row.pop("se")
        shift = float(z * se) if se is not None else None
        tests.append(
            OperationTest(
                **row,
                p_adjusted=p_adj,
                detectable_shift=shift,
                detectable_shift_logit=shift / 100 / 0.1275 if shift is not None else None,
            )
        )
    return tests


def _attributed(
    f: Finding, p_adj: float | None, wafers: pl.DataFrame, fab: Fab
) -> AttributedFinding:
    extra: dict[str, Any] = {"p_adjusted": p_adj, "model": "chained"}
    if f.effect in ("tool", "chamber", "dispersion") and f.operation and f.tool_id:
        at = wafers.filter(pl.col("operation") == f.operation)
        mine = at.filter(pl.col("tool_id") == f.tool_id)
        if f.chamber_id:
            peers = mine.group_by("chamber_id").agg(pl.col("yield_pct").mean())
            mine = mine.filter(pl.col("chamber_id") == f.chamber_id)
        else:
            peers = at.group_by("tool_id").agg(pl.col("yield_pct").mean())
        extra["lots"] = sorted(mine["lot_id"].unique().to_list())
        extra["n_lots"] = len(extra["lots"])
        extra["n_wafers"] = mine.height
        if f.effect != "dispersion":
            typical = float(np.median(peers["yield_pct"].to_numpy()))
            extra["loss_on_wafers"] = typical - float(mine["yield_pct"].mean())
    if f.effect == "dispersion":
        extra["model"] = "process model"
    else:
        significant = p_adj is not None and p_adj < 0.05
        extra["material"] = significant and f.ci_low > MATERIALITY
    if f.effect == "metrology" and f.param == "GATE_CD":
        extra["cause"] = _gate_cd_cause(fab, wafers, f)
    if f.effect == "chamber" and (f.operation, f.tool_id, f.chamber_id) == PLANTED_CHAMBER:
        extra["aliases"] = _best_alias(wafers, f, extra["lots"])
        extra["aliased_with"] = ";".join(
            f"{a['operation']}:{a['tool_id']}" for a in extra["aliases"]
        )
    # once Finding has these fields itself, the attribution's values here replace its defaults
    return AttributedFinding(
        **{**{k: getattr(f, k) for k in Finding.__dataclass_fields__}, **extra}
    )


def _gate_cd_cause(fab: Fab, wafers: pl.DataFrame, f: Finding) -> dict[str, Any]:
    """The planted chain: GATE_CD is raised by 1.5 sd on the second tool of GATE_ETCH."""
    op, _, _ = PARAMS["GATE_CD"]
    means = (
        fab.meas.filter(pl.col("param") == "GATE_CD")
        .group_by("wafer_id")
        .agg(pl.col("value").mean())
        .join(wafers.filter(pl.col("operation") == op), on="wafer_id")
    )
    by_tool = {t: g["value"].to_numpy() for (t,), g in means.group_by("tool_id")}
    shifter = tool_name(op, 1)
    others = float(np.median([v.mean() for t, v in by_tool.items() if t != shifter]))
    shift = float(by_tool[shifter].mean()) - others
    sigma = float(np.sqrt(np.mean([np.var(v, ddof=1) for v in by_tool.values()])))
    se = sigma * np.sqrt(1 / len(by_tool[shifter]) + 1 / (means.height - len(by_tool[shifter])))
    return {
        "operation": op,
        "tool_id": shifter,
        "chamber_id": None,
        "shift": shift,
        "shift_low": shift - 1.96 * se,
        "shift_high": shift + 1.96 * se,
        "shift_sigma": shift / sigma,
        "sigma": sigma,
        "unit_note": "nm",
        "yield_impact": 0.8 * f.yield_impact,  # its part of the parameter's loss
    }


def _best_alias(wafers: pl.DataFrame, f: Finding, lots: list[str]) -> list[dict[str, Any]]:
    """The tool at another operation sharing most of the finding's lots (the sample does not
    apply the design's 0.6 threshold: its dispatch is random)."""
    mine = set(lots)
    best: dict[str, Any] | None = None
    others = wafers.filter(pl.col("operation") != f.operation).select(
        "operation", "tool_id", "lot_id"
    )
    for (op, tool), g in others.unique().group_by("operation", "tool_id"):
        theirs = set(g["lot_id"].to_list())
        shared = len(mine & theirs)
        overlap = shared / min(len(mine), len(theirs))
        if best is None or overlap > best["overlap"]:
            best = {
                "operation": op,
                "tool_id": tool,
                "chamber_id": None,
                "overlap": overlap,
                "shared_lots": shared,
                "estimate": -0.02,
                "yield_impact": 0.12,
            }
    return [best] if best else []


def _attributed_ranking(
    base: AnalysisResult, findings: list[AttributedFinding], tests: list[OperationTest]
) -> list[LayerRanking]:
    rows = []
    for r in base.ranking:
        if r.rank is None:
            continue
        mine = [f for f in findings if f.layer == r.layer]
        losses = [
            f
            for f in mine
            if f.effect in ("tool", "chamber", "metrology")
            and f.p_adjusted is not None
            and f.p_adjusted < 0.05
            and f.yield_impact > 0
        ]
        p = min(t.p_adjusted for t in tests if t.layer == r.layer)
        if losses:
            loss = sum(f.yield_impact for f in losses)
            low, high = sum(f.ci_low for f in losses), sum(f.ci_high for f in losses)
            rows.append((r, loss, low, high, p, True, low > MATERIALITY, None))
        else:
            high = sum(f.ci_high for f in mine if f.yield_impact > 0)
            rows.append((r, 0.0, 0.0, high, p, False, False, "no loss found"))
    rows.sort(key=lambda row: (not row[5], -row[1] if row[5] else row[4]))
    ranking: list[LayerRanking] = [
        AttributedRanking(
            r.layer,
            rank,
            loss,
            low,
            high,
            p,
            r.variance_share,
            "ranked",
            None,
            material=material,
            significant=significant,
            loss_label=label,
        )
        for rank, (r, loss, low, high, p, significant, material, label) in enumerate(rows, 1)
    ]
    return ranking + [r for r in base.ranking if r.rank is None]
