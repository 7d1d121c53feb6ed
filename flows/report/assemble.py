"""The run report engineers review: one `ReportModel`, rendered as HTML and as PDF.

`build_report` turns an `AnalysisResult` (plus, optionally, the run's DuckDB database for
the raw-data charts and the data-quality tables) into a `ReportModel`: every number
formatted once, every chart a `Chart` that draws itself. The HTML (Jinja2 templates in
`reports/templates/`, autoescaped, CSS inlined, charts as base64 PNG, no script, a
Content-Security-Policy that forbids any load from outside) and the PDF
(`flows.report.pdf`, matplotlib only) both render that one model, so they show the same
sections with the same text.

`build_index` writes an index page over every run folder (one holding `analysis.json`)
under a root folder, with the top layers' yield impact across runs.

`data_summary` keys read (all optional): `drops` (list of names or of dicts with
`drop_id`/`status`), `date_range` ([first, last]) or `date_from`/`date_to`, `n_lots`,
`n_wafers`, `n_wafers_with_yield`, `data_quality` (a sentence, or a dict with `outcome`,
`expectations`: list of dicts, one per suite run, and `data_docs`: a path). Other scalar
keys are listed as they are. The Great Expectations results come from the database's
`meta.gx_results` when it keeps any (per drop and suite, and every failing expectation);
`data_quality.expectations` stands in for a database that does not.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from flows.analysis.results import AnalysisResult, Finding, LayerFit, LayerRanking
from flows.report.charts import (
    ImpactBar,
    caterpillar,
    diagnostics,
    guarded_chart,
    metrology_vs_yield,
    pareto,
    variance_components,
    yield_by_tool,
)
from flows.report.data import ReportDatabase, Unavailable
from flows.report.data_sections import (
    data_docs_link,
    data_facts,
    drops_table,
    expectations_table,
    failed_expectations_table,
    impact_definition,
    method_facts,
    package_version,
    problems_table,
    quality_outcome,
    versions_table,
)
from flows.report.model import (
    ALPHA,
    CHAINED,
    DIAGNOSTIC_POINTS,
    MAX_FINDINGS,
    STATUS_WORDS,
    TOP_IN_SUMMARY,
    ChainedSection,
    ChartSlot,
    LayerSection,
    ReportModel,
    Sentence,
    Table,
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_pp,
    in_review_order,
    records_table,
    where,
)


def assemble(
    result: AnalysisResult, out_dir: Path, db_path: str | Path | None = None
) -> ReportModel:
    """Everything the report shows, computed and formatted once."""
    fits = {fit.layer: fit for fit in result.layers}
    ranked = sorted((r for r in result.ranking if r.rank is not None), key=lambda r: r.rank)
    findings_by_layer: dict[str, list[Finding]] = {}
    for f in result.findings:
        findings_by_layer.setdefault(f.layer, []).append(f)
    for fit in result.layers:
        if fit.layer not in findings_by_layer and fit.findings:
            findings_by_layer[fit.layer] = list(fit.findings)
    anchors = {r.layer: f"layer-{i + 1}" for i, r in enumerate(ranked)}

    with ReportDatabase.open(db_path) as db:
        layers = [
            _layer_section(r, fits.get(r.layer), findings_by_layer.get(r.layer, []), anchors, db)
            for r in ranked
        ]
        drops = db.drops() if isinstance(db, ReportDatabase) else db
        db_facts = db.data_facts() if isinstance(db, ReportDatabase) else []
        gx_runs = db.gx_results() if isinstance(db, ReportDatabase) else db

    quality = result.data_summary.get("data_quality")
    quality = quality if isinstance(quality, dict) else {"outcome": quality}
    return ReportModel(
        run_id=result.run_id,
        created_at=result.created_at,
        version=package_version("yieldrank"),
        sentences=_sentences(ranked, findings_by_layer, anchors),
        no_ranking_reason=None if ranked else "no layer could be ranked in this run (see below)",
        data_facts=data_facts(result.data_summary, db_facts),
        quality_outcome=quality_outcome(quality.get("outcome"), drops, gx_runs),
        ranking=_ranking_table(ranked, findings_by_layer),
        pareto=_pareto(ranked),
        layers=layers,
        unranked=_unranked_table(result, fits),
        drops=drops_table(drops),
        problems=problems_table(drops),
        expectations=expectations_table(quality.get("expectations"), gx_runs),
        failed_expectations=failed_expectations_table(gx_runs),
        chained=_chained_section(fits.get(CHAINED)),
        data_docs=data_docs_link(quality.get("data_docs"), out_dir),
        method=method_facts(result.method),
        impact_definition=impact_definition(result.method),
        versions=versions_table(result.method),
    )


def _sentences(
    ranked: Sequence[LayerRanking], findings: dict[str, list[Finding]], anchors: dict[str, str]
) -> list[Sentence]:
    out = []
    for r in ranked[:TOP_IN_SUMMARY]:
        text = (
            f"costs an estimated {fmt_pp(r.yield_impact)} yield points "
            f"(95 % interval {fmt_interval(r.ci_low, r.ci_high)}; adjusted p {_p_words(r.p_value)})"
        )
        if r.p_value is not None and r.p_value >= ALPHA:
            text += ", not significant after adjustment across layers"
        top = top_finding(findings.get(r.layer, []))
        if top is not None:
            text += f"; its top finding: {where(top)} ({fmt_pp(top.yield_impact)} points)"
        out.append(Sentence(r.layer, text + ".", anchors[r.layer]))
    return out


def _p_words(p: float | None) -> str:
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def top_finding(findings: Iterable[Finding]) -> Finding | None:
    return next((f for f in in_review_order(findings) if f.effect != "dispersion"), None)


def _ranking_table(ranked: Sequence[LayerRanking], findings: dict[str, list[Finding]]) -> Table:
    rows, flagged = [], set()
    for i, r in enumerate(ranked):
        top = top_finding(findings.get(r.layer, []))
        rows.append(
            [
                str(r.rank),
                r.layer,
                fmt_pp(r.yield_impact),
                fmt_interval(r.ci_low, r.ci_high),
                fmt_p(r.p_value),
                _share(r.variance_share),
                where(top) if top else "–",
            ]
        )
        if r.p_value is not None and r.p_value < ALPHA:
            flagged.add(i)
    return Table(
        [
            "rank",
            "layer",
            "yield impact (pp)",
            "95 % interval",
            "adj. p",
            "variance share",
            "top finding",
        ],
        rows,
        numeric={0, 2, 3, 4, 5},
        flagged=flagged,
    )


def _pareto(ranked: Sequence[LayerRanking]) -> ChartSlot:
    bars = [
        ImpactBar(
            r.layer,
            r.yield_impact,
            r.ci_low,
            r.ci_high,
            r.p_value is not None and r.p_value < ALPHA,
        )
        for r in ranked
        if r.yield_impact is not None and math.isfinite(r.yield_impact)
    ]
    if not bars:
        return Unavailable("no layer has a yield impact in this run")
    return guarded_chart("Yield impact by layer", pareto, sorted(bars, key=lambda b: -b.impact))


def _layer_section(
    r: LayerRanking,
    fit: LayerFit | None,
    findings: list[Finding],
    anchors: dict[str, str],
    db: ReportDatabase | Unavailable,
) -> LayerSection:
    headline = (
        f"Yield impact {fmt_pp(r.yield_impact)} pp (95 % interval "
        f"{fmt_interval(r.ci_low, r.ci_high)}), adjusted p {fmt_p(r.p_value)}"
    )
    if fit is None:
        gone = Unavailable(f"the run holds no model details for layer {r.layer}")
        return LayerSection(
            anchors[r.layer], r.layer, r.rank, headline, [], [gone], gone, gone, gone, gone, "–"
        )
    facts = [
        ("operations", ", ".join(fit.operations) or "–"),
        ("wafers", fmt_num(fit.n_wafers)),
        ("lots", fmt_num(fit.n_lots)),
        ("model", fit.method or "–"),
        ("variance share", _share(r.variance_share)),
    ]
    convergence = (
        f"{'converged' if fit.converged else 'NOT converged'} after {fit.n_iter} iterations; "
        f"cAIC {fmt_num(fit.caic, 6)}"
    )
    charts: list[ChartSlot] = []
    charts.append(
        guarded_chart("Variance decomposition", variance_components, r.layer, fit.varcomp)
        if fit.varcomp
        else Unavailable("the model reported no variance components")
    )
    for kind in ("tool", "chamber"):
        effects = [e for e in fit.ranef if e.term.split(":", 1)[0].lower() == kind]
        charts.append(
            guarded_chart(f"{kind.capitalize()} effects", caterpillar, r.layer, kind, effects)
            if effects
            else Unavailable(f"the model has no {kind} effects for this layer")
        )
    if isinstance(db, ReportDatabase):
        tools = db.tool_yields(r.layer)
        params = [f.param for f in findings if f.effect == "metrology" and f.param]
        params += [k for k in fit.fixef if k not in params and k.lower() != "(intercept)"]
        metrology = db.metrology_yields(r.layer, preferred=params)
    else:
        tools = metrology = db
    charts.append(
        tools
        if isinstance(tools, Unavailable)
        else guarded_chart("Yield by tool", yield_by_tool, r.layer, tools)
    )
    charts.append(
        metrology
        if isinstance(metrology, Unavailable)
        else guarded_chart("Metrology vs yield", metrology_vs_yield, r.layer, metrology)
    )
    charts.append(guarded_chart("Model diagnostics", _diagnostics_chart, r.layer, fit))
    return LayerSection(
        anchor=anchors[r.layer],
        name=r.layer,
        rank=r.rank,
        headline=headline,
        facts=facts,
        charts=charts,
        findings=_findings_table([f for f in findings if f.effect != "dispersion"]),
        dispersion=_findings_table(
            [f for f in findings if f.effect == "dispersion"],
            empty="no chamber or tool is noisier than its peers in this layer's process models",
        ),
        fixed_effects=_fixef_table(fit),
        process_models=records_table(
            fit.process_models, empty="no process model was fitted for this layer"
        ),
        convergence=convergence,
    )


def _diagnostics_chart(layer: str, fit: LayerFit) -> ChartSlot:
    fitted = np.asarray(fit.diagnostics.get("fitted", []), dtype=float)
    resid = np.asarray(fit.diagnostics.get("residuals", []), dtype=float)
    if len(fitted) < 3 or len(fitted) != len(resid):
        return Unavailable("the run holds no fitted values and residuals for this layer")
    keep = np.isfinite(fitted) & np.isfinite(resid)
    fitted, resid = fitted[keep], resid[keep]
    if len(fitted) > DIAGNOSTIC_POINTS:
        pick = np.random.default_rng(0).choice(len(fitted), DIAGNOSTIC_POINTS, replace=False)
        fitted, resid = fitted[pick], resid[pick]
    return diagnostics(layer, fitted, resid)


def _findings_table(
    findings: Sequence[Finding], empty: str = "no localised finding"
) -> Table | Unavailable:
    if not findings:
        return Unavailable(empty)
    rows, flagged = [], set()
    ordered = in_review_order(findings)
    for i, f in enumerate(ordered[:MAX_FINDINGS]):
        rows.append(
            [
                f.effect,
                where(f),
                fmt_num(f.estimate, 3),
                fmt_pp(f.yield_impact),
                fmt_interval(f.ci_low, f.ci_high),
                fmt_p(f.p_value),
            ]
        )
        if f.p_value is not None and f.p_value < ALPHA:
            flagged.add(i)
    more = len(ordered) - MAX_FINDINGS
    return Table(
        ["effect", "where", "estimate", "yield impact (pp)", "95 % interval", "p"],
        rows,
        numeric={2, 3, 4, 5},
        flagged=flagged,
        note=f"{more} smaller findings not shown (all are in findings.csv)" if more > 0 else None,
    )


def _fixef_table(fit: LayerFit) -> Table | Unavailable:
    if not fit.fixef:
        return Unavailable("the model has no fixed effects besides the intercept")
    rows = []
    for name, v in fit.fixef.items():
        est, se = v.get("estimate"), v.get("se")
        z = est / se if est is not None and se else None
        rows.append([name, fmt_num(est, 4), fmt_num(se, 3), fmt_num(z, 3)])
    return Table(["term", "estimate", "SE", "z"], rows, numeric={1, 2, 3})


def _chained_section(fit: LayerFit | None) -> ChainedSection | None:
    if fit is None:
        return None
    status = STATUS_WORDS.get(fit.status, fit.status)
    facts = [
        ("model", fit.method or "–"),
        ("status", status + (f": {fit.reason}" if fit.reason else "")),
        ("wafers", fmt_num(fit.n_wafers)),
        ("lots", fmt_num(fit.n_lots)),
        ("operations", fmt_num(len(fit.operations))),
        (
            "convergence",
            f"{'converged' if fit.converged else 'NOT converged'} after {fit.n_iter} "
            f"iterations; cAIC {fmt_num(fit.caic, 6)}",
        ),
    ]
    ordered = sorted(fit.layer_effects.items(), key=lambda kv: -(kv[1].get("yield_impact") or 0))
    rows = [
        [
            layer,
            fmt_pp(e.get("yield_impact")),
            fmt_interval(e.get("ci_low"), e.get("ci_high")),
            _share(e.get("variance_share")),
        ]
        for layer, e in ordered
    ]
    effects: Table | Unavailable = (
        Table(["layer", "yield impact (pp)", "95 % interval", "variance share"], rows, {1, 2, 3})
        if rows
        else Unavailable("the chained model gave no per-layer effects")
    )
    return ChainedSection(facts, effects)


def _share(value: float | None) -> str:
    return "–" if value is None else fmt_num(100 * value, 3) + " %"


def _unranked_table(result: AnalysisResult, fits: dict[str, LayerFit]) -> Table | None:
    rows = []
    seen = {CHAINED}
    for r in result.ranking:
        if r.rank is None:
            fit = fits.get(r.layer)
            rows.append(_unranked_row(r.layer, r.status, r.reason, fit))
            seen.add(r.layer)
    for fit in result.layers:
        if fit.status != "ranked" and fit.layer not in seen:
            rows.append(_unranked_row(fit.layer, fit.status, fit.reason, fit))
    if not rows:
        return None
    return Table(
        ["layer", "status", "reason", "wafers", "lots", "iterations"], rows, numeric={3, 4, 5}
    )


def _unranked_row(layer: str, status: str, reason: str | None, fit: LayerFit | None) -> list[str]:
    return [
        layer,
        STATUS_WORDS.get(status, status),
        reason or (fit.reason if fit and fit.reason else "no reason given"),
        fmt_num(fit.n_wafers) if fit else "–",
        fmt_num(fit.n_lots) if fit else "–",
        fmt_num(fit.n_iter) if fit else "–",
    ]
