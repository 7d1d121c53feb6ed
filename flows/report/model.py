"""The report's model, which both renderers (HTML, PDF) read: its tables, sentences and
sections, and the number formatting they share, so both show the same text.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.analysis.ranking import sort_findings
from flows.analysis.results import Finding
from flows.report.charts import (
    Chart,
    ChartFailure,
    RenderedChart,
)
from flows.report.data import Unavailable

# What stands where a chart belongs: the chart, why the run has no data for it, or the note of
# a chart that failed (`assemble.guarded_chart`, `html.render_charts`).
ChartSlot = Chart | Unavailable | ChartFailure
# Each chart of a model rendered once, keyed by id (`html.render_charts`).
Rendered = dict[int, RenderedChart | ChartFailure]

SECTIONS = {
    "summary": "Summary",
    "pareto": "Loss by layer",
    "sensitivity": "What the data can see",
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
    # what the report could not show although it should have (a chart that failed), one
    # sentence each: the run logs them and ends "degraded"
    problems: list[str] = field(default_factory=list)


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


def fmt_share(value: float | None) -> str:
    """A share (0-1) as a percentage."""
    return "–" if value is None else fmt_num(100 * value, 3) + " %"


def p_words(p: float | None) -> str:
    """A p-value after "p": "= 0.012" or "< 0.0001"."""
    text = fmt_p(p)
    return text if text.startswith("<") else f"= {text}"


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def in_review_order(findings: Iterable[Finding]) -> list[Finding]:
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
    legend: list[tuple[str, str]] = field(default_factory=list)  # column or unit -> meaning
    legend_open: bool = False  # HTML: the legend shown, not folded (the summary's ranking)


@dataclass(frozen=True)
class LotList:
    """The lots that ran on a finding's equipment, shown collapsed (HTML <details>)."""

    label: str
    lots: list[str]


@dataclass(frozen=True)
class Sentence:
    layer: str
    text: str
    anchor: str
    lots: LotList | None = None


@dataclass
class LayerSection:
    anchor: str
    name: str
    rank: int | None
    headline: str
    facts: list[tuple[str, str]]
    charts: list[ChartSlot]  # in reading order
    findings: Table | Unavailable  # in yield points
    dispersion: Table | Unavailable
    # the lots of each finding shown, the equipment at other operations sharing them, and the
    # model-scale estimates (logits, slopes, variance ratios) behind the findings tables
    lot_lists: list[LotList]
    aliases: Table | Unavailable
    chains: Table | Unavailable  # metrology findings: the tool that shifts the parameter
    estimates: Table | Unavailable
    # the statistics of the layer's fits, shown under Method
    model_facts: list[tuple[str, str]]
    fixed_effects: Table | Unavailable
    process_models: Table | Unavailable


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
    sentences_lead: str  # what the sentences are, and which model their numbers come from
    sentences: list[Sentence]  # one per significant finding, in the ranking's order
    quiet: list[Sentence]  # one per ranked layer without a significant loss
    materiality: str
    no_ranking_reason: str | None
    data_facts: list[tuple[str, str]]
    quality_outcome: str
    ranking: Table
    pareto: ChartSlot
    operation_tests: Table | Unavailable
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

    def charts(self) -> list[ChartSlot]:
        return [chart for _, chart in self.located_charts()]

    def located_charts(self) -> list[tuple[str, ChartSlot]]:
        """Each chart with where the report shows it ("summary" or the layer's name)."""
        return [
            ("summary", self.pareto),
            *((layer.name, c) for layer in self.layers for c in layer.charts),
        ]


def shown(rendered: Rendered) -> Callable[[ChartSlot], RenderedChart | ChartFailure | Unavailable]:
    """What each output shows in a chart's place: its picture, or the note of its failure."""
    return lambda c: c if not isinstance(c, Chart) else rendered[id(c)]


def chart_problems(model: ReportModel, rendered: Rendered) -> list[str]:
    """One sentence per chart that could not be drawn, saying where it belonged."""
    return [
        f"{where}: {r.note}"
        for where, c in model.located_charts()
        if isinstance(r := shown(rendered)(c), ChartFailure)
    ]


def records_table(records: Sequence[dict[str, Any]], empty: str) -> Table | Unavailable:
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
