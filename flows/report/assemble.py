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

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from flows.analysis.results import AnalysisResult, Finding, LayerFit, LayerRanking
from flows.report import attribution as say
from flows.report import finding_tables as tables
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
    CHAINED,
    DIAGNOSTIC_POINTS,
    MAX_FINDINGS,
    STATUS_WORDS,
    ChainedSection,
    ChartSlot,
    LayerSection,
    ReportModel,
    Sentence,
    Table,
    fmt_interval,
    fmt_num,
    fmt_pp,
    fmt_share,
    in_review_order,
    p_words,
    records_table,
)

ADJUSTED_BY_REPORT = (
    "this run recorded no adjusted p-value per finding (it predates them); the report "
    "adjusted the recorded ones: Holm's method over all findings of the run, then the larger "
    "of that and the layer's adjusted p"
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
    p_adj, recorded = say.adjusted_p(result)
    significant = {
        layer: say.significant_findings(fs, p_adj) for layer, fs in findings_by_layer.items()
    }
    tests = tables.operation_tests(result, [r.layer for r in ranked])
    detectable = tables.detectable_by_layer(tests)
    materiality = say.field(result, "materiality")
    context = _LayerContext(p_adj, significant, detectable, materiality, anchors)

    with ReportDatabase.open(db_path) as db:
        layers = [
            _layer_section(r, fits.get(r.layer), findings_by_layer.get(r.layer, []), context, db)
            for r in ranked
        ]
        drops = db.drops() if isinstance(db, ReportDatabase) else db
        db_facts = db.data_facts() if isinstance(db, ReportDatabase) else []
        gx_runs = db.gx_results() if isinstance(db, ReportDatabase) else db

    quality = result.data_summary.get("data_quality")
    quality = quality if isinstance(quality, dict) else {"outcome": quality}
    method = method_facts(result.method)
    if not recorded and result.findings:
        method.append(("adjusted p of findings", ADJUSTED_BY_REPORT))
    lead, sentences = _sentences(ranked, significant, p_adj, anchors)
    return ReportModel(
        run_id=result.run_id,
        created_at=result.created_at,
        version=package_version("yieldrank"),
        sentences_lead=lead,
        sentences=sentences,
        quiet=[
            say.no_loss_sentence(r, anchors[r.layer], detectable.get(r.layer))
            for r in ranked
            if not say.layer_has_loss(r)
        ],
        materiality=say.materiality_sentence(materiality),
        no_ranking_reason=None if ranked else "no layer could be ranked in this run (see below)",
        data_facts=data_facts(result.data_summary, db_facts),
        quality_outcome=quality_outcome(quality.get("outcome"), drops, gx_runs),
        ranking=tables.ranking_table(ranked, significant, detectable, materiality),
        pareto=_pareto(ranked),
        operation_tests=tables.operation_tests_table(tests),
        layers=layers,
        unranked=_unranked_table(result, fits),
        drops=drops_table(drops),
        problems=problems_table(drops),
        expectations=expectations_table(quality.get("expectations"), gx_runs),
        failed_expectations=failed_expectations_table(gx_runs),
        chained=_chained_section(fits.get(CHAINED)),
        data_docs=data_docs_link(quality.get("data_docs"), out_dir),
        method=method,
        impact_definition=impact_definition(result.method),
        versions=versions_table(result.method),
    )


@dataclass(frozen=True)
class _LayerContext:
    """What every layer section reads from the run as a whole."""

    p_adj: dict[int, float | None]
    significant: dict[str, list[Finding]]
    detectable: dict[str, str]
    materiality: float | None
    anchors: dict[str, str]


def _sentences(
    ranked: Sequence[LayerRanking],
    significant: dict[str, list[Finding]],
    p_adj: dict[int, float | None],
    anchors: dict[str, str],
) -> tuple[str, list[Sentence]]:
    """The summary's lead-in and one sentence per significant finding: layers in the
    ranking's order, within a layer the losses by size, then noisy equipment."""
    stated = [(r, f) for r in ranked for f in significant.get(r.layer, [])]
    said = say.common_model([f for _, f in stated])
    sentences = [
        say.finding_sentence(f, p_adj.get(id(f)), anchors[r.layer], said) for r, f in stated
    ]
    return say.sentences_lead(said), sentences


def top_finding(findings: Iterable[Finding]) -> Finding | None:
    return next((f for f in in_review_order(findings) if f.effect != "dispersion"), None)


def _pareto(ranked: Sequence[LayerRanking]) -> ChartSlot:
    """The layers' losses in the ranking's order (the table's): a layer without a significant
    loss stands at 0, without an interval."""
    bars = []
    for r in ranked:
        if say.layer_has_loss(r):
            bars.append(ImpactBar(r.layer, r.yield_impact, r.ci_low, r.ci_high, True))
        elif r.yield_impact is not None:
            bars.append(ImpactBar(r.layer, 0.0, None, None, False))
    if not bars:
        return Unavailable("no layer has a yield impact in this run")
    return guarded_chart("Loss by layer", pareto, bars)


def _layer_section(
    r: LayerRanking,
    fit: LayerFit | None,
    findings: list[Finding],
    ctx: _LayerContext,
    db: ReportDatabase | Unavailable,
) -> LayerSection:
    if say.layer_has_loss(r):
        headline = (
            f"Loss {fmt_pp(r.yield_impact)} points of fab yield (95 % interval "
            f"{say.loss_interval(r.ci_low, r.ci_high)}), adjusted p {p_words(r.p_value)}"
        )
        material = say.field(r, "material")
        if material is not None:
            headline += ", material" if material else ", below the materiality threshold"
    else:
        headline = f"{say.NO_LOSS.capitalize()} (adjusted p {p_words(r.p_value)})"
    anchor = ctx.anchors[r.layer]
    if fit is None:
        gone = Unavailable(f"the run holds no model details for layer {r.layer}")
        return LayerSection(
            anchor, r.layer, r.rank, headline, [], [gone], gone, gone, [], gone, gone, gone,
            [], gone, gone,
        )  # fmt: skip
    facts = [
        ("operations", ", ".join(fit.operations) or "–"),
        ("wafers", fmt_num(fit.n_wafers)),
        ("lots", fmt_num(fit.n_lots)),
        ("variance share", fmt_share(r.variance_share)),
    ]
    if r.layer in ctx.detectable:
        facts.append(("detectable tool shift", f"{ctx.detectable[r.layer]} points on its wafers"))
    model_facts = [
        ("model", fit.method or "–"),
        (
            "convergence",
            f"{'converged' if fit.converged else 'NOT converged'} after {fit.n_iter} "
            f"iterations; cAIC {fmt_num(fit.caic, 6)}",
        ),
    ]
    yield_findings = _in_order(
        [f for f in findings if f.effect != "dispersion"], ctx.significant.get(r.layer, [])
    )
    noisy = _in_order(
        [f for f in findings if f.effect == "dispersion"], ctx.significant.get(r.layer, [])
    )
    shown = yield_findings[:MAX_FINDINGS]
    return LayerSection(
        anchor=anchor,
        name=r.layer,
        rank=r.rank,
        headline=headline,
        facts=facts,
        charts=_layer_charts(r, fit, findings, db),
        findings=tables.findings_table(yield_findings, ctx.p_adj, ctx.materiality, MAX_FINDINGS),
        dispersion=tables.dispersion_table(noisy, ctx.p_adj),
        lot_lists=[lots for f in [*shown, *noisy] if (lots := say.lot_list(f)) is not None],
        aliases=tables.aliases_table(shown),
        chains=tables.chains_table(shown),
        estimates=tables.estimates_table([*shown, *noisy], MAX_FINDINGS + len(noisy)),
        model_facts=model_facts,
        fixed_effects=_fixef_table(fit),
        process_models=records_table(
            fit.process_models, empty="no process model was fitted for this layer"
        ),
    )


def _in_order(findings: list[Finding], significant: list[Finding]) -> list[Finding]:
    """The significant ones first (as in the summary), then the rest in the analysis's order."""
    first = [f for f in significant if any(f is g for g in findings)]
    return first + [f for f in in_review_order(findings) if not any(f is g for g in first)]


def _layer_charts(
    r: LayerRanking, fit: LayerFit, findings: list[Finding], db: ReportDatabase | Unavailable
) -> list[ChartSlot]:
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
    return charts


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
            fmt_share(e.get("variance_share")),
        ]
        for layer, e in ordered
    ]
    effects: Table | Unavailable = (
        Table(["layer", "yield impact (pp)", "95 % interval", "variance share"], rows, {1, 2, 3})
        if rows
        else Unavailable("the chained model gave no per-layer effects")
    )
    return ChainedSection(facts, effects)


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
