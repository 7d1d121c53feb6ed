"""The report as an engineer opens it: headless Chromium, offline, no errors, every chart shown.

Chromium is driven over the DevTools protocol (tests/flows/report_browser.py). The screenshots
are kept as test artifacts under runs/test-artifacts/ (and in pytest's tmp dir).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.analysis.results import AnalysisResult
from flows.report.index import build_index
from flows.report.model import ReportPaths
from tests.flows import report_sample as sample
from tests.flows.report.pages import significant_in_order
from tests.flows.report_browser import open_page

ARTIFACTS = Path(__file__).resolve().parents[3] / "runs" / "test-artifacts"

PAGE_FACTS = {
    "images": "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])",
    "summary": "document.getElementById('summary').innerText",
    "first_sentence_layer": "document.querySelector('#summary ol.headline li strong').innerText",
    "body": "document.body.innerText",
    "scripts": "document.scripts.length",
    "title": "document.title",
    "headline": "Array.from(document.querySelectorAll('#summary ol.headline > li'))"
    ".map(li => li.querySelector('strong').innerText)",
    "table_layers": "Array.from(document.querySelectorAll('#summary table tbody tr'))"
    ".map(tr => tr.cells[1].innerText)",
    "pareto_alt": "document.querySelector('#pareto img').alt",
    "lot_lists": "Array.from(document.querySelectorAll('details.lots'))"
    ".map(d => [d.open, d.querySelector('summary').innerText, d.innerText.length])",
    # a folded list shows its summary only; unfolded (as a click would) its lots too
    "unfolded": "(() => { const d = document.querySelector('#summary details.lots');"
    " const folded = d.innerText; d.open = true; return [folded, d.innerText]; })()",
    "legend_shown": "document.querySelector('#summary details.legend').open"
    " && document.querySelector('#summary dl.legend').getClientRects().length > 0",
}


@pytest.fixture(scope="module")
def report(run, tmp_path_factory: pytest.TempPathFactory):
    """The package's run (with issue 14's attribution) and its report (conftest.py)."""
    result, out, _ = run
    return (
        result,
        ReportPaths(out / "report.html", out / "report.pdf"),
        tmp_path_factory.mktemp("browser"),
    )


def keep(artifact: Path) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shutil.copy(artifact, ARTIFACTS / artifact.name)


@pytest.mark.slow
def test_report_renders_cleanly_in_headless_chromium(report):
    result, paths, tmp = report
    page = open_page(
        paths.html,
        PAGE_FACTS,
        screenshot=tmp / "report-top.png",
        full_page=tmp / "report-full.png",
    )
    keep(tmp / "report-top.png")
    keep(tmp / "report-full.png")
    assert page.console_errors == []
    assert page.failed_loads == []
    assert page.dialogs == [], "a script from the data ran"
    images = page.values["images"]
    assert len(images) > 10
    broken = [alt for alt, complete, width in images if not (complete and width > 0)]
    assert broken == [], f"images not decoded: {broken}"
    ranked = sorted((r for r in result.ranking if r.rank is not None), key=lambda r: r.rank)
    significant = [f for f in result.findings if f.p_adjusted is not None and f.p_adjusted < 0.05]
    # one sentence per significant finding, its layer first, in the ranking's order
    headline = page.values["headline"]
    assert len(headline) == len(significant)
    assert page.values["first_sentence_layer"] == ranked[0].layer == headline[0]
    order = [r.layer for r in ranked]
    assert [order.index(x) for x in headline] == sorted(order.index(x) for x in headline)
    # the chart and the table show the layers in one order
    assert page.values["table_layers"] == order
    assert page.values["pareto_alt"].endswith("left to right: " + ", ".join(order))
    # every lot list starts folded and unfolds without any script
    lot_lists = page.values["lot_lists"]
    assert len(lot_lists) >= sum(1 for f in significant if f.lots)
    assert not any(is_open for is_open, _, _ in lot_lists)
    folded, unfolded = page.values["unfolded"]
    first = next(f for f in significant_in_order(result) if f.lots)
    assert ", ".join(first.lots) not in folded and ", ".join(first.lots) in unfolded
    assert page.values["legend_shown"] is True
    # data shows as the text it is, and nothing of it runs
    assert page.values["scripts"] == 0
    body = page.values["body"]
    assert sample.XSS_TOOL in body and sample.XSS_OPERATION in body and sample.NASTY_LAYER in body
    assert page.values["title"] == f"Yield report {result.run_id}"
    assert (tmp / "report-top.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_index_renders_cleanly_in_headless_chromium(report):
    result, paths, tmp = report
    # a second, later run (its report not built yet) so the trend has two points per layer
    later = AnalysisResult.from_json(paths.html.parent / "analysis.json")
    later.run_id, later.created_at = "run-0002", "2099-01-01T00:00:00+00:00"
    sample.write_run(paths.html.parent.parent / later.run_id, later)
    index = build_index(paths.html.parent.parent)
    facts = {k: PAGE_FACTS[k] for k in ("images", "body", "scripts")}
    page = open_page(index, facts, screenshot=tmp / "index.png")
    keep(tmp / "index.png")
    assert page.console_errors == [] and page.failed_loads == [] and page.dialogs == []
    assert [w > 0 for _, _, w in page.values["images"]] == [True]
    body = page.values["body"]
    assert result.run_id in body and "run-0002" in body and page.values["scripts"] == 0
