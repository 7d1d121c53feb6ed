"""`build_index`: the page over every run folder under a root, with the top layers' yield
impact across runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from flows.analysis.results import AnalysisResult
from flows.report.assemble import top_finding
from flows.report.charts import (
    ChartFailure,
    TrendSeries,
    guarded_chart,
    trend,
)
from flows.report.data import Unavailable
from flows.report.data_sections import data_facts, package_version
from flows.report.html import inline_css, render_charts, template_environment, write_atomically
from flows.report.model import (
    STATUS_WORDS,
    TOP_IN_SUMMARY,
    ChartSlot,
    Table,
    fmt_p,
    fmt_pp,
    shown,
    where,
)

log = logging.getLogger(__name__)

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
    trend: ChartSlot
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
        version=package_version("yieldrank"),
    )
    rendered = render_charts([model.trend])
    template = template_environment().get_template("index.html.j2")
    html = template.render(m=model, css=inline_css(), png=shown(rendered))
    if isinstance(trend_shown := shown(rendered)(model.trend), ChartFailure):
        log.warning("index of %s: %s", root, trend_shown.note)
    out = root / "index.html"
    write_atomically(out, html.encode("utf-8", "replace"))
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
    facts = dict(data_facts(result.data_summary))
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


def _trend(results: Sequence[AnalysisResult]) -> ChartSlot:
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
    return guarded_chart("Top layers across runs", trend, [res.run_id for res in results], series)


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
            top = top_finding(f for f in res.findings if f.layer == layer)
            if top is not None and r is not None and r.rank is not None:
                row[-1] += f" ({where(top)})"
        rows.append(row)
    note = f"{older} older runs are in the chart only" if older else None
    return Table(["layer", *[res.run_id for res in results]], rows, note=note)
