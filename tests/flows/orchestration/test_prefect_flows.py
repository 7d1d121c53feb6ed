"""`yield_run` end to end through Prefect on a small simulated fab (one shared test server).

What a run promises: the ranking in DuckDB, a report, artifacts; a re-run over unchanged
data reuses the fits; a failing layer fit fails its task, not the run; a rejected drop
stops only that drop and the run's state says so.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.flows.pipeline_support import (
    bad_sort_drop,
    fit_states,
    rows,
    simulate_small_fab,
)
from tests.flows.prefect_harness import prefect_api  # noqa: F401 (the shared server)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fab(tmp_path_factory, prefect_api):  # noqa: F811
    """A small fab, ingested, analysed and reported once by `yield_run`."""
    from flows.orchestration.prefect_flows import yield_run

    root = tmp_path_factory.mktemp("pipeline")
    truth = simulate_small_fab(root / "fab")
    db, out = root / "fab.duckdb", root / "reports"
    drops = [str(d) for d in truth.drop_dirs]
    state = yield_run(drops=drops, db=str(db), out=str(out), return_state=True)
    return {"truth": truth, "db": db, "out": out, "drops": drops, "state": state}


def test_a_run_ranks_every_layer_into_duckdb_and_reports(fab):
    state = fab["state"]
    assert state.is_completed(), state.message
    summary = state.result()
    assert [d.status for d in summary.drops] == ["merged", "merged"]
    db_ranking = rows(
        fab["db"],
        "SELECT layer, rank, yield_impact FROM subprocess_ranking WHERE run_id = ? ORDER BY layer",
        [summary.run_id],
    )
    assert sorted(r[0] for r in db_ranking) == sorted(fab["truth"].layers)
    by_layer = {r["layer"]: r for r in summary.ranking}
    for layer, rank, impact in db_ranking:
        assert by_layer[layer]["rank"] == rank
        assert by_layer[layer]["yield_impact_pp"] == pytest.approx(impact, abs=1e-3)
    html, pdf = Path(summary.report_html), Path(summary.report_pdf)
    assert html.is_file() and pdf.is_file()
    assert html.parent == fab["out"] / summary.run_id
    assert (fab["out"] / "index.html").is_file()
    assert (html.parent / "subprocess_ranking.csv").is_file()
    assert summary.run_id in state.message and str(html) in state.message


def test_a_run_publishes_ranking_findings_and_report_link_artifacts(fab):
    from prefect.artifacts import Artifact

    summary = fab["state"].result()
    ranking = Artifact.get("yield-ranking")
    table = json.loads(ranking.data) if isinstance(ranking.data, str) else ranking.data
    assert [r["layer"] for r in table] == [r["layer"] for r in summary.ranking]
    findings = Artifact.get("yield-findings")
    assert summary.run_id in findings.data
    top = next(r for r in summary.ranking if r["rank"] == 1)
    assert f"**{top['layer']}**" in findings.data
    link = Artifact.get("yield-report")
    assert link.data.startswith("[") and Path(summary.report_html).as_uri() in link.data


def test_a_rerun_over_unchanged_data_reuses_the_fits(fab):
    from flows.orchestration.prefect_flows import yield_run

    first = fab["state"].result()
    state = yield_run(drops=fab["drops"], db=str(fab["db"]), out=str(fab["out"]), return_state=True)
    assert state.is_completed(), state.message
    again = state.result()
    assert [d.status for d in again.drops] == ["already merged", "already merged"]
    states = fit_states(state.state_details.flow_run_id)
    assert len(states) == len(fab["truth"].layers) + 1  # every layer and the chained model
    assert set(states.values()) == {"Cached"}, states
    assert again.run_id != first.run_id
    assert again.ranking == first.ranking


def test_a_failing_layer_fit_fails_its_task_not_the_run(fab, monkeypatch):
    import flows.analysis.layers as layers
    from flows.orchestration import caching
    from flows.orchestration.prefect_flows import yield_run

    broken = fab["truth"].layers[0]
    real_fit = layers.fit_layer

    def fit_or_break(layer, frame, **kwargs):
        if layer == broken:
            raise FloatingPointError(f"injected failure in {layer}")
        return real_fit(layer, frame, **kwargs)

    monkeypatch.setattr(layers, "fit_layer", fit_or_break)
    # the broken layer's fit was cached by the runs above: give it a key of its own
    real_key = caching.fit_cache_key
    monkeypatch.setattr(
        caching,
        "fit_cache_key",
        lambda layer, frame, seed: (
            real_key(layer, frame, seed) + ("-broken" if layer == broken else "")
        ),
    )
    state = yield_run(db=str(fab["db"]), out=str(fab["out"]), return_state=True)
    # the run finishes with its report, "degraded": which layer failed and why
    assert state.is_completed() and state.name == "Degraded", (state.name, state.message)
    summary = state.result()
    reason = f"the fit failed: FloatingPointError: injected failure in {broken}"
    assert summary.failed_layers == {broken: reason}
    assert summary.problems == [f"layer {broken} failed: {reason}"]
    assert f"DEGRADED: layer {broken} failed: {reason}" in state.message
    row = next(r for r in summary.ranking if r["layer"] == broken)
    assert row["rank"] is None and row["status"] == "failed"
    assert all(r["rank"] is not None for r in summary.ranking if r["layer"] != broken)
    states = fit_states(state.state_details.flow_run_id)
    assert sorted(states.values()) == ["Cached"] * len(fab["truth"].layers) + ["Failed"], states
    report = Path(summary.report_html).read_text()
    assert broken in report and "injected failure" in report
    # none of the other layers' results is lost: the first run's rows, in the database too
    first = {r["layer"]: r for r in fab["state"].result().ranking}
    assert {
        r["layer"]: (r["yield_impact_pp"], r["ci_low"], r["ci_high"])
        for r in summary.ranking
        if r["layer"] != broken
    } == {
        layer: (r["yield_impact_pp"], r["ci_low"], r["ci_high"])
        for layer, r in first.items()
        if layer != broken
    }
    stored = rows(
        fab["db"],
        "SELECT layer, rank, status, reason FROM subprocess_ranking WHERE run_id = ?",
        [summary.run_id],
    )
    assert {(layer, status) for layer, rank, status, _ in stored if rank is not None} == {
        (layer, "ranked") for layer in first if layer != broken
    }
    assert (broken, None, "failed", reason) in stored
    findings = rows(
        fab["db"], "SELECT DISTINCT layer FROM findings WHERE run_id = ?", [summary.run_id]
    )
    assert {layer for (layer,) in findings} == {layer for layer in first if layer != broken}
    from prefect.artifacts import Artifact

    assert f"layer {broken} failed" in Artifact.get("yield-run-problems").data


def test_a_chart_that_fails_degrades_the_run_and_its_exit_code(fab, monkeypatch):
    # `yieldrank run` in this process (the session's Prefect server), one chart function broken:
    # the report is written with a note in the chart's place, the run says which chart and why,
    # and the command exits "degraded", not 0 and not 1.
    from prefect.artifacts import Artifact
    from typer.testing import CliRunner

    import flows.report.assemble as report
    from flows.cli import app
    from flows.settings import EXIT_DEGRADED

    def broken(*args, **kwargs):
        raise RuntimeError("injected chart failure")

    monkeypatch.setattr(report, "variance_components", broken)
    done = CliRunner().invoke(
        app, ["run", *fab["drops"], "--db", str(fab["db"]), "--out", str(fab["out"])]
    )
    assert done.exit_code == EXIT_DEGRADED, done.output
    assert "yield run degraded" in done.output
    assert "chart not drawn: Variance decomposition (RuntimeError: injected chart" in done.output
    html = Path(re.search(r"report: (\S+report\.html)", done.output)[1])
    assert html.is_file() and html.with_suffix(".pdf").is_file()
    assert "chart not drawn: Variance decomposition" in html.read_text()
    problems = Artifact.get("yield-run-problems").data
    assert "report, " in problems and "injected chart failure" in problems
    assert "INCOMPLETE" in Artifact.get("yield-report").description


def test_a_rejected_drop_stops_that_drop_only_and_fails_the_run_saying_so(fab, tmp_path):
    from flows.orchestration.prefect_flows import yield_run

    (wafer,) = rows(fab["db"], "SELECT min(wafer_id) FROM core.wafers")[0]
    bad = bad_sort_drop(tmp_path, wafer)
    before = rows(
        fab["db"], "SELECT dies_good, dies_total FROM core.sort_yield WHERE wafer_id = ?", [wafer]
    )
    state = yield_run(
        drops=[*fab["drops"], str(bad)], db=str(fab["db"]), out=str(fab["out"]), return_state=True
    )
    assert state.is_failed()
    assert str(bad.resolve()) in state.message and "1 of 3 drops not merged" in state.message
    summary = state.result(raise_on_failure=False)
    assert [d.status for d in summary.drops] == ["already merged", "already merged", "rejected"]
    assert "dies_good" in summary.drops[-1].message
    # the rest was analysed and reported; the bad row never reached the analysis tables
    assert (
        rows(
            fab["db"], "SELECT count(*) FROM subprocess_ranking WHERE run_id = ?", [summary.run_id]
        )[0][0]
        > 0
    )
    assert Path(summary.report_html).is_file()
    assert (
        rows(
            fab["db"],
            "SELECT dies_good, dies_total FROM core.sort_yield WHERE wafer_id = ?",
            [wafer],
        )
        == before
    )


def test_a_landing_folder_run_takes_only_new_drops(fab):
    from flows.orchestration.prefect_flows import new_drops_in, yield_run

    landing = fab["truth"].out_dir  # the folder the simulator wrote the drops into
    assert new_drops_in(landing, fab["db"]) == []
    state = yield_run(
        landing=str(landing), db=str(fab["db"]), out=str(fab["out"]), return_state=True
    )
    assert state.is_completed()
    assert state.message == f"no new drops in {landing}"
    assert state.result().run_id is None  # nothing new: no analysis, no report

    (landing / "drop_999").mkdir()
    assert new_drops_in(landing, fab["db"]) == [str(landing / "drop_999")]
