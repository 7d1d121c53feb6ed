"""The run report: sections, escaping, self-containment, the PDF, degradation, the index, the CLI.

One simulated fab in a real DuckDB file (tests/flows/report_sample.py) and one analysis run over
it serve every test of this package (conftest.py); the report is built once and read many ways.
"""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import duckdb
import pytest
from pypdf import PdfReader

from flows.analysis.ranking import YIELD_IMPACT_DEFINITION
from flows.analysis.results import AnalysisResult, Finding
from flows.report.assemble import top_finding
from flows.report.build import build_report
from flows.report.finding_tables import dispersion_table, findings_table
from flows.report.html import bold_markdown
from flows.report.index import build_index
from flows.report.model import MAX_FINDINGS, SECTIONS, fmt_pp, in_review_order
from tests.flows import report_sample as sample
from tests.flows.report.pages import Page, ranked

ALLOWED_TAGS = {
    "html", "head", "meta", "title", "style", "body", "header", "nav", "main", "footer", "section",
    "article", "div", "h2", "h3", "h4", "p", "a", "ol", "ul", "li", "dl", "dt", "dd", "table",
    "thead", "tbody", "tr", "th", "td", "figure", "img", "strong", "span", "details", "summary",
}  # fmt: skip


def trimmed(result: AnalysisResult, keep: int = 2) -> AnalysisResult:
    """The run with only its top `keep` ranked layers (and the unranked): a quicker report."""
    layers = {r.layer for r in ranked(result)[:keep]} | {
        r.layer for r in result.ranking if r.rank is None
    }
    return AnalysisResult(
        run_id=result.run_id,
        created_at=result.created_at,
        ranking=[r for r in result.ranking if r.layer in layers],
        findings=[f for f in result.findings if f.layer in layers],
        layers=[f for f in result.layers if f.layer in layers],
        data_summary=result.data_summary,
        method=result.method,
    )


def test_html_has_every_section_in_order(run):
    _, _, html = run
    page = Page(html)
    h2 = [text for tag, text in page.headings if tag == "h2"]
    assert h2 == list(SECTIONS.values())
    assert set(SECTIONS) <= page.ids


def test_summary_shows_the_run_data_and_quality(run):
    _, _, html = run
    summary = Page(html).text("summary")
    for fact in ("drops", "date range", "lots", "wafers", "2026-09-01"):
        assert fact in summary
    assert "1 rejected" in summary  # the data-quality outcome


def test_every_ranked_layer_has_its_charts_and_tables(run):
    result, _, html = run
    page = Page(html)
    for r in ranked(result):
        assert f"layer-{r.rank}" in page.ids
    layers = page.text("layers")
    alts = {a.get("alt") for tag, a in page.tags if tag == "img"}
    measured = {layer for layer, ops in sample.ROUTE.items()
                if any(op in ops for op, _, _ in sample.PARAMS.values())}  # fmt: skip
    for r in ranked(result):
        expected = [
            f"Variance components of layer {r.layer}",
            f"Caterpillar plot of tool effects in layer {r.layer}",
            f"Caterpillar plot of chamber effects in layer {r.layer}",
            f"Box plots of wafer yield by tool for layer {r.layer}",
            f"Residuals against fitted values and normal QQ plot for layer {r.layer}",
        ]
        if r.layer in measured:
            expected.append(f"Wafer yield against inline metrology for layer {r.layer}")
        else:
            assert f"no inline metrology with a sort result in layer {r.layer}" in layers
        assert set(expected) <= alts, set(expected) - alts
    assert "dispersion findings" in layers
    assert "M1_THK" in layers and "SD ratio" in layers  # the noisy chamber, found in M1
    method = page.text("method")  # the fits' statistics are under Method
    assert "converged after" in method and "cAIC" in method
    chained = next(f for f in result.layers if f.layer == "(chained)")
    assert "Chained model across layers" in method and "chained" in page.ids
    for layer, effect in chained.layer_effects.items():
        assert f"{layer} {fmt_pp(effect['yield_impact'])}" in method
    n_images = sum(1 for tag, _ in page.tags if tag == "img")
    n_measured = sum(r.layer in measured for r in ranked(result))
    assert n_images == 1 + 5 * len(ranked(result)) + n_measured


def test_layers_not_ranked_are_listed_with_their_reason_and_never_ranked(run):
    result, _, html = run
    unranked = Page(html).text("unranked")
    for layer in (sample.NOT_CONVERGED, sample.TOO_LITTLE):
        fit = next(f for f in result.layers if f.layer == layer)
        assert layer in unranked and fit.reason in unranked
    assert "model did not converge" in unranked and "too little data" in unranked
    layers = Page(html).text("layers")
    assert sample.NOT_CONVERGED not in layers and sample.TOO_LITTLE not in layers
    assert "(chained)" not in unranked  # the model across layers is not a layer


def test_strings_from_data_are_escaped(run):
    _, _, html = run
    # the report has no script at all, so any script tag would be injected
    assert "<script" not in html.lower()
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "<img src=x" not in html and "onerror" not in html.replace("onerror=alert(2)", "")
    assert "&#34;&gt;&lt;img src=x onerror=alert(2)&gt;" in html
    assert "M3 &amp; &lt;b&gt;co&lt;/b&gt;" in html
    assert "drop &lt;bad&gt; &amp; &#39;quoted&#39;" in html
    assert f"{sample.MATH_TOOL} chamber CH" in html  # printed as written, not evaluated
    page = Page(html)
    assert {tag for tag, _ in page.tags} <= ALLOWED_TAGS
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)]


def test_the_page_is_self_contained(run):
    _, out, html = run
    page = Page(html)
    assert re.search(r"Content-Security-Policy\" content=\"default-src 'none'", html)
    images = [a["src"] for tag, a in page.tags if tag == "img"]
    assert images
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for tag, a in page.tags:
        if tag == "link" or (tag == "a" and a.get("href", "").startswith("http")):
            pytest.fail(f"external reference {a}")
        if tag == "a":
            href = a["href"]
            if href.startswith("#"):
                assert href[1:] in page.ids, href
            else:
                assert (out / href).is_file(), href  # the data docs beside the report
    assert not re.search(r"(src|href)=\"(https?:)?//", html)


def test_data_quality_shows_drops_quarantine_and_gx(run):
    _, _, html = run
    quality = Page(html).text("quality")
    for drop_id, _, status in sample.DROPS:
        assert drop_id in quality
        assert status in quality
    assert "dies_good <= dies_total" in quality  # the rule the rejected drop broke
    assert re.search(r"rejected.*\b40\b", quality)  # its 40 quarantined rows
    assert "Great Expectations" in quality and "sort_yield" in quality
    assert 'href="data-docs/index.html"' in html  # found beside the report


def test_method_has_the_impact_definition_and_versions(run):
    _, _, html = run
    method = Page(html).text("method")
    assert "<strong>Yield impact</strong> of a layer" in html
    assert "Holm" in method and "parametric bootstrap" in method
    assert re.search(r"numpy \d+\.\d+\S* \d+\.\d+", method)  # the run's and the report's
    assert re.search(r"matplotlib – \d+\.\d+", method)


def test_pdf_reads_and_has_the_same_sections(run):
    result, _, html = run
    reader = PdfReader(run[1] / "report.pdf")
    assert len(reader.pages) > len(ranked(result))  # each layer starts a page
    texts = [page.extract_text() for page in reader.pages]
    assert all(t.strip() for t in texts), "a blank page"
    text = re.sub(r"\s+", " ", " ".join(texts))
    # the section headings, each on a line of its own, in the HTML's order
    lines = [line.strip() for t in texts for line in t.splitlines()]
    at = -1
    for title in SECTIONS.values():
        assert title in lines[at + 1 :], f"no heading {title!r} after line {at}"
        at = lines.index(title, at + 1)
    html_layer_headings = [t for tag, t in Page(html).headings if tag == "h3" and t[0].isdigit()]
    for heading in html_layer_headings:
        assert heading in text
    assert "<script>alert(1)</script>" in text  # data printed as written
    assert "$\\frac{a}{b}$" in text  # not parsed as mathtext
    assert sample.NOT_CONVERGED in text and "model did not converge" in text
    assert "dies_good <= dies_total" in text


def test_report_degrades_without_a_database(run, tmp_path):
    result = trimmed(run[0])
    paths = build_report(result, tmp_path / "nodb")
    html = paths.html.read_text()
    assert "not available: no database was given for this report" in html
    assert "Variance decomposition" in html or "variance" in html.lower()
    assert PdfReader(paths.pdf).pages


def test_facts_the_run_did_not_record_come_from_the_database(run, fab, tmp_path):
    result = trimmed(run[0], keep=1)
    result.data_summary = {"layers": 9, "wafers": 1000}  # what the analysis records today
    result.method = {"seed": 0}
    html = build_report(result, tmp_path / "thin", db_path=fab[1]).html.read_text()
    method = Page(html).text("method")
    assert "(not recorded by the analysis run; as defined by yieldrank" in method
    # the analysis's own definition, bold markup and all (its wording is the analysis's)
    assert str(bold_markdown(YIELD_IMPACT_DEFINITION.split(" is ")[0])) in html
    summary = Page(html).text("summary")
    lots = fab[0].wafers["lot_id"].n_unique()
    assert f"lots (in the database) {lots}" in summary
    assert "date range (in the database) 2026-09-01 to" in summary
    assert "wafers 1,000" in summary and "wafers (in the database)" not in summary
    assert "layers 9" in summary


def test_report_degrades_with_a_database_lacking_the_marts(run, tmp_path):
    result = trimmed(run[0], keep=1)
    empty = tmp_path / "empty.duckdb"
    duckdb.connect(str(empty)).close()
    html = build_report(result, tmp_path / "emptydb", db_path=empty).html.read_text()
    assert "not available: marts.wafer_operation not in the database empty.duckdb" in html
    assert "not available: meta.drop_log not in the database" in html
    missing = build_report(result, tmp_path / "missing", db_path=tmp_path / "nope.duckdb")
    assert "does not exist" in missing.html.read_text()


def test_report_builds_while_a_writer_holds_the_database(run, tmp_path):
    result = trimmed(run[0], keep=1)
    db_path = tmp_path / "busy.duckdb"
    writer = duckdb.connect(str(db_path))  # a read-write hold, as an ingest would have
    try:
        html = build_report(result, tmp_path / "busy", db_path=db_path).html.read_text()
    finally:
        writer.close()
    assert f"not available: the database {db_path} could not be opened read-only" in html


def test_a_run_without_any_ranked_layer_still_reports(run, tmp_path):
    result, _, _ = run
    bare = AnalysisResult(
        run_id="r-empty",
        created_at="2026-11-01T00:00:00+00:00",
        ranking=[r for r in result.ranking if r.rank is None],
        findings=[],
        layers=[f for f in result.layers if f.status != "ranked"],
    )
    paths = build_report(bare, tmp_path / "bare")
    html = paths.html.read_text()
    assert "no layer could be ranked" in html and sample.NOT_CONVERGED in html
    assert len(PdfReader(paths.pdf).pages) >= 1


def test_index_over_two_runs_shows_both_and_the_trend(fab, tmp_path):
    fab_data, _ = fab
    root = tmp_path / "runs"
    older = trimmed(
        sample.analysis_result(fab_data, "run-older", "2026-10-01T06:00:00+00:00"), keep=3
    )
    newer = trimmed(
        sample.analysis_result(fab_data, "run-newer", "2026-11-01T06:00:00+00:00", shift=0.4),
        keep=3,
    )
    sample.write_run(root / "b-older", older)
    sample.write_run(root / "a-newer", newer)
    build_report(newer, root / "a-newer")  # the older one has no report built
    (root / "broken").mkdir()
    (root / "broken" / "analysis.json").write_text("{}")
    index = build_index(root)
    assert index == root / "index.html"
    html = index.read_text()
    page = Page(html)
    # newest first in the table, oldest first along the trend
    assert html.index("run-newer") < html.index("run-older")
    assert 'href="a-newer/report.html"' in html and 'href="a-newer/report.pdf"' in html
    assert "b-older/report.html" not in html and "not built" in html
    assert "broken" in html and "could not be read" in html
    images = [a for tag, a in page.tags if tag == "img"]
    assert len(images) == 1 and images[0]["src"].startswith("data:image/png;base64,")
    trend = page.text("trend")
    assert trend.index("run-older") < trend.index("run-newer")
    top = ranked(newer)[0]
    assert f"#1: {fmt_pp(top.yield_impact)}" in trend
    assert "<script" not in html.lower()


def test_cli_rebuilds_the_report_from_analysis_json(run, fab, tmp_path):
    result, out, _ = run
    _, db_path = fab
    run_dir = tmp_path / "cli" / result.run_id  # from the JSON the run wrote, as a user would
    run_dir.mkdir(parents=True)
    trimmed(AnalysisResult.from_json(out / "analysis.json")).to_json(run_dir / "analysis.json")
    yieldrank = Path(sys.executable).parent / "yieldrank"
    done = subprocess.run(
        [str(yieldrank), "report", str(run_dir), "--db", str(db_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert f"report: {run_dir / 'report.html'}" in done.stdout
    assert (run_dir / "report.pdf").is_file() and (tmp_path / "cli" / "index.html").is_file()
    html = (run_dir / "report.html").read_text()
    assert "Box plots of wafer yield by tool" in html  # the raw-data charts came from --db
    bad = subprocess.run(
        [str(yieldrank), "report", str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert bad.returncode == 2 and "no analysis.json in" in bad.stderr


def test_a_long_findings_list_is_cut_with_a_note_and_missing_numbers_show_as_dashes():
    findings = [
        Finding("L", "chamber", -0.1, 0.01 * i, 0.0, 0.02 * i, 0.5, "OP", "T1", f"CH{i}")
        for i in range(20)
    ] + [Finding("L", "dispersion", 0.4, math.nan, math.nan, math.nan, None, "OP", "T2", None)]
    largest_first = sorted(findings[:-1], key=lambda f: -f.yield_impact)
    table = findings_table(largest_first, {}, None, MAX_FINDINGS)  # keeps the order it is given
    assert len(table.rows) == MAX_FINDINGS
    assert table.rows[0][1] == "T1 chamber CH19 at OP"
    assert table.note == f"{20 - MAX_FINDINGS} smaller findings not shown (all are in findings.csv)"
    assert table.rows[0][2:5] == ["–", "–", "–"]  # a run without the wafers of each finding
    dispersion = dispersion_table(findings[-1:], {})
    assert dispersion.rows[0][0] == "tool T2 at OP"
    assert dispersion.rows[0][2] == f"{math.exp(0.2):.3g}"  # SD ratio from the log variance ratio
    assert dispersion.rows[0][3] == "–"


def test_an_established_finding_leads_its_layer_as_in_the_analysis():
    # The demo's case: a chamber clearly worse than its sisters (p = 0.0002) with a smaller
    # point impact than a tool whose difference could be chance (p = 0.41). The analysis puts
    # the chamber first (`sort_findings`); the report's summary and tables must agree with it.
    chamber = Finding("L", "chamber", -0.2, 0.37, 0.15, 0.62, 0.0002, "OP", "T7", "CH3")
    tool = Finding("L", "tool", -0.07, 0.40, -0.31, 1.26, 0.41, "OP", "T7", None)
    others = [
        Finding("L", "tool", -0.01, 0.02 * i, -0.1, 0.2, 0.6, "OP2", f"U{i}", None)
        for i in range(6)
    ]
    findings = [tool, *others, chamber]
    assert top_finding(findings) is chamber
    ordered = in_review_order(findings)
    assert findings_table(ordered, {}, None, MAX_FINDINGS).rows[0][1] == "T7 chamber CH3 at OP"
    # without an established finding the largest impact leads
    assert top_finding([tool, *others]) is tool


def test_a_chart_that_fails_becomes_a_note_in_the_html_and_the_pdf(run, fab, tmp_path, monkeypatch):
    # Two faults: a chart whose preparation raises (monkeypatched) and one that raises while it
    # is drawn (the year's run: a ranking interval that missed its point made errorbar refuse).
    from typer.testing import CliRunner

    import flows.report.assemble as report
    from flows.cli import app
    from flows.settings import EXIT_DEGRADED

    def broken(*args, **kwargs):
        raise RuntimeError("injected chart failure")

    monkeypatch.setattr(report, "yield_by_tool", broken)
    # the run as its analysis.json holds it, which `yieldrank report` reads back below
    result = trimmed(AnalysisResult.from_json(run[1] / "analysis.json"), keep=1)
    top = ranked(result)[0]
    missed = replace(top, ci_low=top.yield_impact + 0.1)  # an interval missing its point, as once
    result.ranking = [missed if r is top else r for r in result.ranking]
    paths = build_report(result, tmp_path / "broken", db_path=fab[1])
    pareto_failed, tools_failed = paths.problems
    assert re.fullmatch(
        r"summary: chart not drawn: Loss by layer \(ValueError: 'yerr' must not "
        r"contain negative values at charts\.py line \d+\)",
        pareto_failed,
    )
    assert re.fullmatch(
        rf"{top.layer}: chart not drawn: Yield by tool \(RuntimeError: injected chart failure "
        r"at test_report\.py line \d+\)",
        tools_failed,
    )
    html = paths.html.read_text()
    page = Page(html)
    summary = page.text("summary")
    assert "This report is incomplete: 2 charts could not be drawn." in summary
    for problem in paths.problems:
        assert problem.split(": ", 1)[1] in page.text("pareto") + page.text("layers")
    assert html.count("<img") >= 3  # the other charts are there
    pdf = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in PdfReader(paths.pdf).pages))
    assert "This report is incomplete: 2 chart(s) could not be drawn." in pdf
    assert "chart not drawn: Yield by tool (RuntimeError: injected chart failure" in pdf
    assert "chart not drawn: Loss by layer (ValueError:" in pdf
    # `yieldrank report` writes the report, names the problems and exits "degraded"
    run_dir = tmp_path / "cli-broken" / result.run_id
    run_dir.mkdir(parents=True)
    result.to_json(run_dir / "analysis.json")
    done = CliRunner().invoke(app, ["report", str(run_dir), "--db", str(fab[1])])
    assert done.exit_code == EXIT_DEGRADED, done.output
    assert (run_dir / "report.html").is_file() and (run_dir / "report.pdf").is_file()
    assert "report degraded" in done.output and "injected chart failure" in done.output
