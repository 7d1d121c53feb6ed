"""The report as an engineer opens it: headless Chromium, offline, no errors, every chart shown.

Chromium is driven over the DevTools protocol (tests/flows/report_browser.py). The screenshots
are kept as test artifacts under runs/test-artifacts/ (and in pytest's tmp dir).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from flows.analysis.results import AnalysisResult
from flows.report.build import build_report
from flows.report.index import build_index
from tests.flows import report_sample as sample
from tests.flows.report_browser import open_page

ARTIFACTS = Path(__file__).resolve().parents[3] / "runs" / "test-artifacts"

PAGE_FACTS = {
    "images": "Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])",
    "summary": "document.getElementById('summary').innerText",
    "first_sentence_layer": "document.querySelector('#summary ol.headline li strong').innerText",
    "body": "document.body.innerText",
    "scripts": "document.scripts.length",
    "title": "document.title",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("browser")
    fab = sample.simulate(n_lots=40)
    db_path = sample.write_database(fab, tmp / "fab.duckdb")
    result = sample.analysis_result(fab)
    out = sample.write_run(tmp / "runs" / result.run_id, result)
    return result, build_report(result, out, db_path=db_path), tmp


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
    top = min((r for r in result.ranking if r.rank is not None), key=lambda r: r.rank)
    assert top.layer == sample.PLANTED_LAYER
    assert page.values["first_sentence_layer"] == sample.PLANTED_LAYER
    assert sample.PLANTED_LAYER in page.values["summary"]
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
