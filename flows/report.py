"""The run report engineers review: one `ReportModel`, rendered as HTML and as PDF.

`build_report` turns an `AnalysisResult` (plus, optionally, the run's DuckDB database for
the raw-data charts and the data-quality tables) into a `ReportModel`: every number
formatted once, every chart a `Chart` that draws itself. The HTML (Jinja2 templates in
`reports/templates/`, autoescaped, CSS inlined, charts as base64 PNG, no script, a
Content-Security-Policy that forbids any load from outside) and the PDF
(`flows.report_pdf`, matplotlib only) both render that one model, so they show the same
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
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup, escape

from flows.analysis.ranking import sort_findings
from flows.analysis.results import AnalysisResult, Finding, LayerFit, LayerRanking
from flows.report_charts import (
    Chart,
    ImpactBar,
    RenderedChart,
    TrendSeries,
    caterpillar,
    diagnostics,
    metrology_vs_yield,
    pareto,
    render_png,
    trend,
    variance_components,
    yield_by_tool,
)
from flows.report_data import DropRecord, GxSuiteRun, ReportDatabase, Unavailable

REPORTS_DIR = Path(__file__).resolve().parent.parent / "reports"
TEMPLATES_DIR = REPORTS_DIR / "templates"
STATIC_DIR = REPORTS_DIR / "static"

SECTIONS = {
    "summary": "Summary",
    "pareto": "Yield impact by layer",
    "layers": "Layers",
    "unranked": "Layers not ranked",
    "quality": "Data quality",
    "method": "Method",
}
TOP_IN_SUMMARY = 3
MAX_FINDINGS = 15  # per layer table; the CSV beside the report has them all
ALPHA = 0.05
DIAGNOSTIC_POINTS = 4000  # residual plots sample this many wafers at most

HIDDEN_KEYS = {"examples"}  # record keys too bulky for a table cell
CHAINED = "(chained)"  # the LayerFit of the model across layers (flows.analysis.layers)

STATUS_WORDS = {
    "ranked": "ranked",
    "not_converged": "model did not converge",
    "too_little_data": "too little data",
    "failed": "fit failed",
}


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    pdf: Path


# ---- formatting, shared by HTML and PDF ------------------------------------------------------


def fmt_pp(value: float | None, signed: bool = False) -> str:
    """Yield percentage points, two decimals."""
    if value is None or not math.isfinite(value):
        return "–"
    return f"{value:+.2f}" if signed else f"{value:.2f}"


def fmt_p(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return "–"
    if value < 1e-4:
        return "< 0.0001"
    return f"{value:.4f}" if value < 0.01 else f"{value:.3f}"


def fmt_num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return "–"
        return f"{value:.{digits}g}" if abs(value) < 1e5 else f"{value:,.0f}"
    return str(value)


def fmt_value(value: Any) -> str:
    """Any value of a record: nested dicts and lists compactly, one level deep."""
    if isinstance(value, dict):
        return "; ".join(f"{k}: {fmt_num(v)}" for k, v in value.items()) or "–"
    if isinstance(value, list | tuple):
        return ", ".join(fmt_num(v) for v in value) or "–"
    return fmt_num(value)


def fmt_interval(low: float | None, high: float | None) -> str:
    if not (_finite(low) or _finite(high)):
        return "–"
    return f"{fmt_pp(low)} to {fmt_pp(high)}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _in_review_order(findings: Iterable[Finding]) -> list[Finding]:
    """A layer's findings in the analysis's order (`sort_findings`: established effects first,
    then by yield impact), so that the report's top finding is the analysis's."""
    return sort_findings(list(findings))


def where(finding: Finding) -> str:
    """Where a finding sits, in the words an engineer uses."""
    at = f" at {finding.operation}" if finding.operation else ""
    if finding.effect == "tool":
        return f"tool {finding.tool_id}{at}"
    if finding.effect == "chamber":
        return f"chamber {finding.chamber_id or '(no id)'} of tool {finding.tool_id}{at}"
    if finding.effect == "metrology":
        return (
            f"metrology {finding.param}{' after ' + finding.operation if finding.operation else ''}"
        )
    if finding.effect == "dispersion":
        unit = f"chamber {finding.chamber_id or '(no id)'} of tool {finding.tool_id}"
        if not finding.chamber_id:
            unit = f"tool {finding.tool_id}"
        return f"{unit} is noisier on {finding.param or 'its metrology'}{at}"
    parts = [finding.operation, finding.tool_id, finding.chamber_id, finding.param]
    return f"{finding.effect} " + " / ".join(p for p in parts if p)


# ---- the model both renderers read ------------------------------------------------------------


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    numeric: set[int] = field(default_factory=set)  # right-aligned columns
    flagged: set[int] = field(default_factory=set)  # rows to highlight
    note: str | None = None  # printed under the table


@dataclass(frozen=True)
class Sentence:
    layer: str
    text: str
    anchor: str


@dataclass
class LayerSection:
    anchor: str
    name: str
    rank: int | None
    headline: str
    facts: list[tuple[str, str]]
    charts: list[Chart | Unavailable]  # in reading order
    findings: Table | Unavailable
    dispersion: Table | Unavailable
    fixed_effects: Table | Unavailable
    process_models: Table | Unavailable
    convergence: str


@dataclass
class ChainedSection:
    """The model of final yield on every layer's terms together, as a check on double counting."""

    facts: list[tuple[str, str]]
    effects: Table | Unavailable


@dataclass
class ReportModel:
    run_id: str
    created_at: str
    version: str
    sentences: list[Sentence]
    no_ranking_reason: str | None
    data_facts: list[tuple[str, str]]
    quality_outcome: str
    ranking: Table
    pareto: Chart | Unavailable
    layers: list[LayerSection]
    unranked: Table | None
    chained: ChainedSection | None
    drops: Table | Unavailable
    problems: Table | None
    expectations: Table | Unavailable
    failed_expectations: Table | None
    data_docs: str | None
    method: list[tuple[str, str]]
    impact_definition: str
    versions: Table
    sections: dict[str, str] = field(default_factory=lambda: dict(SECTIONS))

    def charts(self) -> list[Chart | Unavailable]:
        return [self.pareto, *(c for layer in self.layers for c in layer.charts)]


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
        version=_version("yieldrank"),
        sentences=_sentences(ranked, findings_by_layer, anchors),
        no_ranking_reason=None if ranked else "no layer could be ranked in this run (see below)",
        data_facts=_data_facts(result.data_summary, db_facts),
        quality_outcome=_quality_outcome(quality.get("outcome"), drops, gx_runs),
        ranking=_ranking_table(ranked, findings_by_layer),
        pareto=_pareto(ranked),
        layers=layers,
        unranked=_unranked_table(result, fits),
        drops=_drops_table(drops),
        problems=_problems_table(drops),
        expectations=_expectations_table(quality.get("expectations"), gx_runs),
        failed_expectations=_failed_expectations_table(gx_runs),
        chained=_chained_section(fits.get(CHAINED)),
        data_docs=_data_docs_link(quality.get("data_docs"), out_dir),
        method=_method_facts(result.method),
        impact_definition=_impact_definition(result.method),
        versions=_versions_table(result.method),
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
        top = _top_finding(findings.get(r.layer, []))
        if top is not None:
            text += f"; its top finding: {where(top)} ({fmt_pp(top.yield_impact)} points)"
        out.append(Sentence(r.layer, text + ".", anchors[r.layer]))
    return out


def _p_words(p: float | None) -> str:
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def _top_finding(findings: Iterable[Finding]) -> Finding | None:
    return next((f for f in _in_review_order(findings) if f.effect != "dispersion"), None)


def _ranking_table(ranked: Sequence[LayerRanking], findings: dict[str, list[Finding]]) -> Table:
    rows, flagged = [], set()
    for i, r in enumerate(ranked):
        top = _top_finding(findings.get(r.layer, []))
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


def _pareto(ranked: Sequence[LayerRanking]) -> Chart | Unavailable:
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
    return pareto(sorted(bars, key=lambda b: -b.impact))


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
    charts: list[Chart | Unavailable] = []
    charts.append(
        variance_components(r.layer, fit.varcomp)
        if fit.varcomp
        else Unavailable("the model reported no variance components")
    )
    for kind in ("tool", "chamber"):
        effects = [e for e in fit.ranef if e.term.split(":", 1)[0].lower() == kind]
        charts.append(
            caterpillar(r.layer, kind, effects)
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
    charts.append(tools if isinstance(tools, Unavailable) else yield_by_tool(r.layer, tools))
    charts.append(
        metrology if isinstance(metrology, Unavailable) else metrology_vs_yield(r.layer, metrology)
    )
    charts.append(_diagnostics(r.layer, fit))
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
        process_models=_records_table(
            fit.process_models, empty="no process model was fitted for this layer"
        ),
        convergence=convergence,
    )


def _diagnostics(layer: str, fit: LayerFit) -> Chart | Unavailable:
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
    ordered = _in_review_order(findings)
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


def _records_table(records: Sequence[dict[str, Any]], empty: str) -> Table | Unavailable:
    """A table of plain records whose keys the producer chose (union of keys, first-seen order)."""
    if not records:
        return Unavailable(empty)
    header: list[str] = []
    for rec in records:
        header += [k for k in rec if k not in header and k not in HIDDEN_KEYS]
    rows = [[fmt_value(rec.get(k)) for k in header] for rec in records]
    numeric = {
        i
        for i, k in enumerate(header)
        if any(
            isinstance(rec.get(k), int | float) and not isinstance(rec.get(k), bool)
            for rec in records
        )
    }
    return Table(header, rows, numeric=numeric)


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


DATA_COUNTS = (  # data_summary key(s) -> label
    (("n_lots", "lots"), "lots"),
    (("n_wafers", "wafers"), "wafers"),
    (("n_wafers_with_yield",), "wafers with a sort result"),
    (("layers", "n_layers"), "layers"),
)


def _data_facts(
    summary: dict[str, Any], from_db: Sequence[tuple[str, str]] = ()
) -> list[tuple[str, str]]:
    """The run's data as the run recorded it; what it did not record, from the database."""
    facts: list[tuple[str, str]] = []
    drops = summary.get("drops")
    if isinstance(drops, list) and drops:
        names = [
            str(d.get("drop_id", d.get("name", d))) if isinstance(d, dict) else str(d)
            for d in drops
        ]
        facts.append(("drops", f"{len(names)}: " + ", ".join(names)))
    elif drops and not isinstance(drops, list):
        facts.append(("drops", fmt_num(drops)))
    first, last = _date_range(summary)
    if first or last:
        facts.append(("date range", f"{first or '?'} to {last or '?'}"))
    used = {"drops", "date_range", "date_from", "date_to", "data_quality"}
    for keys, label in DATA_COUNTS:
        key = next((k for k in keys if k in summary), None)
        if key is not None:
            facts.append((label, fmt_num(summary[key])))
        used.update(keys)
    have = {label for label, _ in facts}
    facts += [(label, value) for label, value in from_db if label.split(" (")[0] not in have]
    for key, value in summary.items():
        if key not in used and not isinstance(value, dict | list):
            facts.append((key.replace("_", " "), fmt_num(value)))
    return facts or [("data", "the run recorded no summary of its data")]


def _date_range(summary: dict[str, Any]) -> tuple[str | None, str | None]:
    rng = summary.get("date_range")
    if isinstance(rng, list | tuple) and len(rng) == 2:
        return _day(rng[0]), _day(rng[1])
    if isinstance(rng, dict):
        return _day(rng.get("start") or rng.get("first")), _day(rng.get("end") or rng.get("last"))
    return _day(summary.get("date_from")), _day(summary.get("date_to"))


def _day(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value)
    return text[:10] if re.match(r"\d{4}-\d{2}-\d{2}", text) else text


def _quality_outcome(
    outcome: Any,
    drops: list[DropRecord] | Unavailable,
    gx_runs: list[GxSuiteRun] | Unavailable | None = None,
) -> str:
    parts = [str(outcome)] if outcome else []
    if isinstance(drops, list) and drops:
        counts: dict[str, int] = {}
        for d in drops:
            counts[d.status] = counts.get(d.status, 0) + 1
        attempts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in counts.items())
        quarantined = sum(d.quarantined_rows for d in drops)
        plural = "s" if len(drops) != 1 else ""
        parts.append(
            f"{len(drops)} ingestion attempt{plural} in the database: {attempts}; "
            f"{quarantined:,} rows in quarantine"
        )
    if isinstance(gx_runs, list) and gx_runs:
        evaluated = sum(r.evaluated for r in gx_runs)
        failed = sum(len(r.failed) for r in gx_runs)
        if failed:
            broken = sum(1 for r in gx_runs if r.failed)
            parts.append(
                f"Great Expectations: {failed:,} of {evaluated:,} expectations failed, "
                f"in {broken} of {len(gx_runs)} suite runs"
            )
        else:
            parts.append(
                f"Great Expectations: all {evaluated:,} expectations passed "
                f"in {len(gx_runs)} suite runs"
            )
    return "; ".join(parts) if parts else "not recorded for this run"


def _drops_table(drops: list[DropRecord] | Unavailable) -> Table | Unavailable:
    if isinstance(drops, Unavailable):
        return drops
    if not drops:
        return Unavailable("the drop log is empty")
    rows, flagged = [], set()
    for i, d in enumerate(drops):
        broken = sorted({str(p.get("rule")) for p in d.problems})
        rows.append(
            [
                d.drop_id,
                d.drop_path,
                d.status,
                d.started_at,
                fmt_num(d.files),
                fmt_num(d.rows),
                fmt_num(d.quarantined_rows),
                fmt_num(d.quarantined_files),
                ", ".join(broken) or "–",
            ]
        )
        if d.status == "rejected" or any(p.get("severity") == "error" for p in d.problems):
            flagged.add(i)
    return Table(
        [
            "drop",
            "path",
            "status",
            "ingested",
            "files",
            "rows",
            "quarantined rows",
            "quarantined files",
            "rules broken",
        ],
        rows,
        numeric={4, 5, 6, 7},
        flagged=flagged,
    )


def _problems_table(drops: list[DropRecord] | Unavailable) -> Table | None:
    if isinstance(drops, Unavailable):
        return None
    rows = [
        [
            d.drop_id,
            str(p.get("table_name") or "–"),
            str(p.get("source_file") or "–"),
            str(p.get("rule")),
            str(p.get("severity") or "–"),
            fmt_num(p.get("n_rows")),
            str(p.get("message") or ""),
        ]
        for d in drops
        for p in d.problems
    ]
    if not rows:
        return None
    return Table(
        ["drop", "table", "file", "rule", "severity", "rows", "message"], rows, numeric={5}
    )


def _expectations_table(
    expectations: Any, from_db: list[GxSuiteRun] | Unavailable
) -> Table | Unavailable:
    """Per drop and suite, what GX found: from meta.gx_results, else as the run recorded it."""
    if isinstance(from_db, list) and from_db:
        return _gx_runs_table(from_db)
    if not expectations:
        expectations = from_db
    if isinstance(expectations, Unavailable):
        return Unavailable(
            f"the run recorded no Great Expectations results, and {expectations.why}"
        )
    if not expectations:
        return Unavailable("the run recorded no Great Expectations results")
    if isinstance(expectations, dict):
        expectations = [
            {"suite": k, **v} if isinstance(v, dict) else {"suite": k, "result": v}
            for k, v in expectations.items()
        ]
    table = _records_table(list(expectations), empty="no Great Expectations results")
    if isinstance(table, Table) and "success" in table.header:
        col = table.header.index("success")
        table.flagged = {i for i, row in enumerate(table.rows) if row[col] == "no"}
    return table


def _gx_runs_table(runs: list[GxSuiteRun]) -> Table:
    rows = [
        [
            r.drop_id,
            r.status or "–",
            r.suite,
            fmt_num(r.evaluated),
            fmt_num(r.passed),
            fmt_num(len(r.failed)),
            _rows_checked(r),
        ]
        for r in runs
    ]
    sampled = [r for r in runs if r.sampled]
    note = None
    if sampled:
        note = (
            f"Great Expectations checked a sample in {len(sampled)} of {len(runs)} suite runs: "
            "an evenly spaced sample spread over every file plus the rows the SQL rules flagged "
            "(rows checked < rows delivered); uniqueness is answered by the SQL rule over every "
            "row. The contract's SQL rules, which decide whether a drop merges, checked every row."
        )
    return Table(
        ["drop", "status", "suite", "expectations", "passed", "failed", "rows checked"],
        rows,
        numeric={3, 4, 5},
        flagged={i for i, r in enumerate(runs) if r.failed},
        note=note,
    )


def _rows_checked(run: GxSuiteRun) -> str:
    if run.sampled:
        return f"{run.rows_checked:,} of {run.rows_total:,} (sample)"
    return f"all {run.rows_total:,}"


def _failed_expectations_table(runs: list[GxSuiteRun] | Unavailable | None) -> Table | None:
    """Every expectation GX found broken, with how many rows and a few offending values."""
    if not isinstance(runs, list):
        return None
    rows = [
        [
            r.drop_id,
            r.suite,
            f.expectation,
            f.rule or "–",
            fmt_num(f.unexpected_count),
            fmt_num(f.unexpected_percent),
            _examples(f.examples) if f.examples or not f.exception else f.exception,
            _rows_checked(r),
        ]
        for r in runs
        for f in r.failed
    ]
    if not rows:
        return None
    return Table(
        [
            "drop",
            "suite",
            "expectation",
            "rule",
            "unexpected rows",
            "unexpected %",
            "example values",
            "rows checked",
        ],
        rows,
        numeric={4, 5},
        flagged=set(range(len(rows))),
    )


def _examples(values: list[Any], shown: int = 5) -> str:
    if not values:
        return "–"
    text = ", ".join(fmt_num(v) if not isinstance(v, list) else str(v) for v in values[:shown])
    return text + (", …" if len(values) > shown else "")


def _data_docs_link(path: Any, out_dir: Path) -> str | None:
    """A link to the GX data docs, relative to the report when they sit beside it.

    The run may name them (data_quality.data_docs); otherwise the shallowest index.html in a
    folder of the run named like "data-docs" is taken (where flows.pipeline puts them).
    """
    candidates = [Path(path)] if path else []
    candidates += sorted(out_dir.glob("*docs*/**/index.html"), key=lambda p: len(p.parts))[:1]
    for candidate in candidates:
        full = candidate if candidate.is_absolute() else out_dir / candidate
        if full.is_file():
            try:
                return full.resolve().relative_to(out_dir.resolve()).as_posix()
            except ValueError:
                return full.resolve().as_uri()
    return None


def _impact_definition(method: dict[str, Any]) -> str:
    recorded = method.get("impact_definition")
    if recorded:
        return str(recorded)
    try:  # the definition lives with the ranking; the report only quotes it
        from flows.analysis.ranking import YIELD_IMPACT_DEFINITION
    except ImportError:
        return "not recorded by the analysis run"
    return (
        f"(not recorded by the analysis run; as defined by yieldrank {_version('yieldrank')}, "
        f"which built this report) {YIELD_IMPACT_DEFINITION}"
    )


def _method_facts(method: dict[str, Any]) -> list[tuple[str, str]]:
    facts = []
    for key, value in method.items():
        if key in ("impact_definition", "versions"):
            continue
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {fmt_num(v)}" for k, v in value.items())
        elif isinstance(value, list):
            value = "; ".join(fmt_num(v) for v in value)
        facts.append((key.replace("_", " "), fmt_num(value)))
    return facts or [("method", "the run recorded no description of its method")]


def _versions_table(method: dict[str, Any]) -> Table:
    """Package versions of the analysis run beside those that built this report."""
    analysis = {str(k): str(v) for k, v in (method.get("versions") or {}).items()}
    packages = list(analysis)
    packages += [p for p in REPORT_PACKAGES if p not in packages]
    rows = [
        [p, analysis.get(p, "–"), _version(p) if p in REPORT_PACKAGES else "–"] for p in packages
    ]
    return Table(["package", "analysis run", "this report"], rows)


REPORT_PACKAGES = ("yieldrank", "numpy", "scipy", "duckdb", "polars", "matplotlib", "jinja2")


@cache
def _version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "not installed"


# ---- HTML ---------------------------------------------------------------------------------


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        autoescape=True,  # every template, whatever its extension: all data is text
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["bold_markdown"] = bold_markdown
    env.tests["unavailable"] = lambda x: isinstance(x, Unavailable)
    env.tests["table"] = lambda x: isinstance(x, Table)
    return env


def bold_markdown(text: str) -> Markup:
    """Escape `text`, then turn its `**bold**` spans into <strong> (the only markup allowed)."""
    escaped = str(escape(text))
    return Markup(re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", escaped))


def _css() -> Markup:
    # Our own static file, inlined so the report is one self-contained page.
    return Markup((STATIC_DIR / "report.css").read_text(encoding="utf-8"))


def render_charts(charts: Iterable[Chart | Unavailable]) -> dict[int, RenderedChart]:
    """Each chart rendered once (keyed by id: the model keeps the charts alive meanwhile)."""
    return {id(c): render_png(c) for c in charts if isinstance(c, Chart)}


def render_html(model: ReportModel, rendered: dict[int, RenderedChart]) -> str:
    template = _environment().get_template("report.html.j2")
    return template.render(m=model, css=_css(), png=lambda c: rendered[id(c)])


def build_report(
    result: AnalysisResult, out_dir: str | Path, *, db_path: str | Path | None = None
) -> ReportPaths:
    """Write out_dir/report.html and out_dir/report.pdf for one analysis run."""
    from flows.report_pdf import write_pdf  # matplotlib's PDF backend loads only when needed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = assemble(result, out_dir, db_path)
    rendered = render_charts(model.charts())
    html_path = out_dir / "report.html"
    # "replace": a lone surrogate in some id must not cost the whole report
    _write_atomically(html_path, render_html(model, rendered).encode("utf-8", "replace"))
    pdf_path = out_dir / "report.pdf"
    tmp = pdf_path.with_suffix(".pdf.tmp")
    write_pdf(model, rendered, tmp)
    tmp.replace(pdf_path)
    return ReportPaths(html=html_path, pdf=pdf_path)


def _write_atomically(path: Path, data: bytes) -> None:
    # A reader (a browser, the index) never sees half a report.
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(path)


# ---- the index over runs ------------------------------------------------------------------

TREND_LAYERS = 6
TREND_RUNS = 60  # the chart shows the latest runs
TABLE_RUNS = 8  # and the table, one column per run, fewer


@dataclass
class RunEntry:
    run_id: str
    created_at: str
    folder: str  # relative to the index
    report: str | None  # relative link to report.html, None if not built
    pdf: str | None
    n_ranked: int
    n_unranked: int
    data: str
    top: str


@dataclass
class IndexModel:
    root: str
    runs: list[RunEntry]
    skipped: list[tuple[str, str]]  # folder, why
    trend: Chart | Unavailable
    top_table: Table | Unavailable
    version: str


def build_index(runs_root: str | Path) -> Path:
    """Write runs_root/index.html over the run folders in it (each holding analysis.json)."""
    root = Path(runs_root)
    root.mkdir(parents=True, exist_ok=True)
    results: list[tuple[Path, AnalysisResult]] = []
    skipped: list[tuple[str, str]] = []
    for path in sorted(root.glob("*/analysis.json")):
        folder = path.parent.relative_to(root).as_posix()
        try:
            results.append((path.parent, AnalysisResult.from_json(path)))
        except (ValueError, KeyError, TypeError) as exc:
            skipped.append((folder, f"analysis.json could not be read: {exc}"))
    results.sort(key=lambda item: (_sortable_time(item[1].created_at), item[1].run_id))
    model = IndexModel(
        root=str(root),
        runs=[_run_entry(folder, result, root) for folder, result in results],
        skipped=skipped,
        trend=_trend([r for _, r in results]),
        top_table=_trend_table([r for _, r in results]),
        version=_version("yieldrank"),
    )
    rendered = render_charts([model.trend])
    template = _environment().get_template("index.html.j2")
    html = template.render(m=model, css=_css(), png=lambda c: rendered[id(c)])
    out = root / "index.html"
    _write_atomically(out, html.encode("utf-8", "replace"))
    return out


def _sortable_time(text: str) -> str:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).isoformat()
    except ValueError:
        return text


def _run_entry(folder: Path, result: AnalysisResult, root: Path) -> RunEntry:
    rel = folder.relative_to(root).as_posix()
    ranked = sorted((r for r in result.ranking if r.rank is not None), key=lambda r: r.rank)
    top = (
        f"{ranked[0].layer} ({fmt_pp(ranked[0].yield_impact)} pp, adj. p {fmt_p(ranked[0].p_value)})"
        if ranked
        else "no layer ranked"
    )
    facts = dict(_data_facts(result.data_summary))
    data = ", ".join(f"{facts[k]} {k}" for k in ("lots", "wafers") if k in facts)
    return RunEntry(
        run_id=result.run_id,
        created_at=result.created_at,
        folder=rel,
        report=f"{rel}/report.html" if (folder / "report.html").exists() else None,
        pdf=f"{rel}/report.pdf" if (folder / "report.pdf").exists() else None,
        n_ranked=len(ranked),
        n_unranked=len(result.ranking) - len(ranked),
        data=data or "–",
        top=top,
    )


def _top_layers(results: Sequence[AnalysisResult]) -> list[str]:
    """The layers that made the top three of any run, best rank first (at most TREND_LAYERS)."""
    best: dict[str, tuple[int, int]] = {}
    for i, result in enumerate(results):
        for r in result.ranking:
            if r.rank is not None and r.rank <= TOP_IN_SUMMARY:
                best[r.layer] = min(best.get(r.layer, (r.rank, -i)), (r.rank, -i))
    return sorted(best, key=lambda layer: best[layer])[:TREND_LAYERS]


def _trend(results: Sequence[AnalysisResult]) -> Chart | Unavailable:
    if not results:
        return Unavailable("no run found")
    results = results[-TREND_RUNS:]
    layers = _top_layers(results)
    if not layers:
        return Unavailable("no run ranked any layer")
    series = []
    for layer in layers:
        rows = [
            next((r for r in res.ranking if r.layer == layer and r.rank is not None), None)
            for res in results
        ]
        series.append(
            TrendSeries(
                layer,
                [r.yield_impact if r else None for r in rows],
                [r.ci_low if r else None for r in rows],
                [r.ci_high if r else None for r in rows],
            )
        )
    return trend([res.run_id for res in results], series)


def _trend_table(results: Sequence[AnalysisResult]) -> Table | Unavailable:
    layers = _top_layers(results[-TREND_RUNS:])
    if not layers:
        return Unavailable("no run ranked any layer")
    older = max(len(results) - TABLE_RUNS, 0)
    results = results[-TABLE_RUNS:]
    rows = []
    for layer in layers:
        row = [layer]
        for res in results:
            r = next((x for x in res.ranking if x.layer == layer), None)
            if r is None:
                row.append("–")
            elif r.rank is None:
                row.append(STATUS_WORDS.get(r.status, r.status))
            else:
                row.append(f"#{r.rank}: {fmt_pp(r.yield_impact)}")
            top = _top_finding(f for f in res.findings if f.layer == layer)
            if top is not None and r is not None and r.rank is not None:
                row[-1] += f" ({where(top)})"
        rows.append(row)
    note = f"{older} older runs are in the chart only" if older else None
    return Table(["layer", *[res.run_id for res in results]], rows, note=note)
