"""A simulated fab in a real DuckDB file and an analysis run over it, for the report tests.

The fab has a planted bad tool in GATE (named `<script>alert(1)</script>`, so every place
that prints a tool id is also an escaping test), a bad chamber in M1, a metrology parameter
(GATE_CD) that drives yield and a noisy chamber. The `AnalysisResult` is built from the
simulated data by simple, transparent estimates (tool means on the logit scale, their
binomial SEs): it is realistic in shape and size, it is not the statistics of
`flows.analysis`, and the report must not care which produced it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
from scipy import special, stats

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
