"""The report tests' fab and run, built once for the whole package (the report takes a while)."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.analysis.results import AnalysisResult
from flows.report.build import build_report
from tests.flows import report_sample as sample


@pytest.fixture(scope="package")
def fab(tmp_path_factory: pytest.TempPathFactory) -> tuple[sample.Fab, Path]:
    fab = sample.simulate(n_lots=40)
    db_path = sample.write_database(fab, tmp_path_factory.mktemp("db") / "fab.duckdb")
    return fab, db_path


@pytest.fixture(scope="package")
def run(tmp_path_factory: pytest.TempPathFactory, fab) -> tuple[AnalysisResult, Path, str]:
    """The run with issue 14's attribution; its analysis.json is the same run in today's
    schema (AnalysisResult.from_json reads the new fields once the attribution lands)."""
    fab_data, db_path = fab
    today = sample.analysis_result(fab_data)
    result = sample.attributed_result(fab_data, today)
    out = sample.write_run(tmp_path_factory.mktemp("runs") / result.run_id, today)
    paths = build_report(result, out, db_path=db_path)
    assert paths.html == out / "report.html" and paths.pdf == out / "report.pdf"
    return result, out, paths.html.read_text(encoding="utf-8")
