"""`build_report`: one run folder's report, as HTML and PDF, from its `AnalysisResult`."""

from __future__ import annotations

import logging
from pathlib import Path

from flows.analysis.results import AnalysisResult
from flows.report.assemble import assemble
from flows.report.html import render_charts, render_html, write_atomically
from flows.report.model import ReportPaths, chart_problems

log = logging.getLogger(__name__)


def build_report(
    result: AnalysisResult, out_dir: str | Path, *, db_path: str | Path | None = None
) -> ReportPaths:
    """Write out_dir/report.html and out_dir/report.pdf for one analysis run."""
    from flows.report.pdf import write_pdf  # matplotlib's PDF backend loads only when needed

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = assemble(result, out_dir, db_path)
    rendered = render_charts(model.charts())
    problems = chart_problems(model, rendered)
    for problem in problems:
        log.warning("report of run %s: %s", result.run_id, problem)
    html_path = out_dir / "report.html"
    # "replace": a lone surrogate in some id must not cost the whole report
    write_atomically(html_path, render_html(model, rendered).encode("utf-8", "replace"))
    pdf_path = out_dir / "report.pdf"
    tmp = pdf_path.with_suffix(".pdf.tmp")
    write_pdf(model, rendered, tmp)
    tmp.replace(pdf_path)
    return ReportPaths(html=html_path, pdf=pdf_path, problems=problems)
