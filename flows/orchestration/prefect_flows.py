"""The Prefect flows: thin orchestration over the plain pipeline functions.

    yield_run = ingest_drops_flow -> analyse_flow -> report_flow
    (Prefect flow names: ingest-drops, analyse, build-report)

Each flow only sequences plain functions (`flows.warehouse.ingest`, `flows.analysis`,
`flows.report`) and adds what Prefect is for: retries on file reads, per-layer fits
as concurrent tasks, content-keyed caching of fits, artifacts, logs, run states.

Where the work runs:
- Everything that touches the DuckDB file runs in the flow's own process, which holds
  the file (`hold_database`) read-write while it ingests and analyses, read-only while
  the report reads it. DuckDB allows one writing process per file; a second run waits
  for the hold up to a configurable time (YIELDRANK_DB_LOCK_WAIT, --lock-wait), then
  fails naming the database and the process that holds it.
- The chained model, then one test task per operation (conditional on it), and the
  layers' process models are submitted to the flow's task runner: threads by default, or an
  existing Dask cluster (`task_runner="tcp://host:8786"`). They receive the layer's
  model frame as an Arrow table and return a `LayerFit`; they never see the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.futures import as_completed
from prefect.states import Completed, Failed

from flows.analysis.results import DEFAULT_MATERIALITY, AnalysisResult, LayerFit
from flows.analysis.run import method_record
from flows.orchestration.caching import model_code_version
from flows.orchestration.locking import hold_database
from flows.orchestration.progress import emit_progress
from flows.orchestration.task_runners import make_task_runner
from flows.orchestration.tasks import (
    DropOutcome,
    RunSummary,
    findings_markdown,
    fit_chained_task,
    fit_layer_task,
    ingest_drop_task,
    new_run_id,
    problems_markdown,
    ranking_rows,
    read_frames_task,
    render_report_task,
    test_operation_task,
    write_results_task,
)
from flows.settings import DEFAULT_DB, DEFAULT_OUT

# --------------------------------------------------------------------------------------
# Flows


@flow(name="ingest-drops", log_prints=True)
def ingest_drops_flow(
    drops: list[str], db: str, docs_dir: str | None = None, lock_wait: float | None = None
) -> list[DropOutcome]:
    """Merge drop folders into the database in the given order, one transaction each.

    Great Expectations data docs go to `docs_dir` when given.
    """
    outcomes: list[DropOutcome] = []
    emit_progress("drops", total=len(drops))
    with hold_database(db, lock_wait):
        for drop in drops:
            state = ingest_drop_task(drop, db, docs_dir, return_state=True)
            if state.is_completed():
                outcome = state.result()
            else:  # the read kept failing: this drop only, the next drop still loads
                outcome = DropOutcome(drop, "failed", str(state.message or state.name))
            outcomes.append(outcome)
            emit_progress("drop", drop=drop, status=outcome.status, message=outcome.message)
    return outcomes


def data_summary(frames: dict[str, pa.Table], drops: list[DropOutcome]) -> dict[str, Any]:
    """What the report says about the data: this run's drops, lots and wafers analysed."""
    wafers = (
        pa.concat_tables([f.select(["wafer_id", "lot_id", "dies_total"]) for f in frames.values()])
        .group_by("wafer_id")
        .aggregate([("lot_id", "min"), ("dies_total", "max")])
    )
    counts: dict[str, int] = {}
    for d in drops:
        counts[d.status] = counts.get(d.status, 0) + 1
    outcome = ", ".join(f"{n} {status}" for status, n in counts.items())
    return {
        "drops": [{"drop_id": d.drop_id or d.drop, "status": d.status} for d in drops],
        "n_lots": len(pc.unique(wafers["lot_id_min"])),
        "n_wafers": wafers.num_rows,
        "n_wafers_with_yield": wafers.num_rows - wafers["dies_total_max"].null_count,
        "data_quality": {"outcome": f"drops of this run: {outcome}" if drops else ""},
    }


@flow(name="analyse", log_prints=True)
def analyse_flow(
    db: str,
    out: str,
    run_id: str | None = None,
    seed: int = 0,
    drops: list[DropOutcome] | None = None,
    lock_wait: float | None = None,
    materiality: float | None = None,
) -> AnalysisResult:
    """The chained model, then every operation's tests fanned out, rank, write the results.

    The layers' process models run beside the chained model. A layer whose fit raises is
    kept as `failed` with the reason; an operation whose test raises is left out with a
    note; the run goes on. `drops` are this run's ingestion outcomes, for the report's data
    summary; `materiality` in points of fab yield (default flows.settings).
    """
    from flows.analysis.attribution import operation_inputs, screened_operations
    from flows.analysis.frames import chained_frame
    from flows.analysis.run import finish_attribution

    logger = get_run_logger()
    run_id = run_id or new_run_id()
    run_dir = Path(out) / run_id
    materiality = DEFAULT_MATERIALITY if materiality is None else float(materiality)
    with hold_database(db, lock_wait):
        frames = read_frames_task(db)
        frame_all = chained_frame(frames)
        logger.info("model frames: %s", {k: v.num_rows for k, v in frames.items()})
        emit_progress("fits", total=len(frames) + 1)

        # The chained model first: the operation tests need it. The layers' process models
        # run beside it.
        chained_future = fit_chained_task.submit(frame_all, seed)
        layer_futures = {
            layer: fit_layer_task.submit(layer, frame, seed) for layer, frame in frames.items()
        }
        chained, pieces = _chained_result(chained_future)
        logger.info("chained model: %s %s", chained.status, chained.reason or "")
        emit_progress(
            "fit", layer="all layers (chained model)", status=chained.status, reason=chained.reason
        )
        # Two fan-outs: every operation screened given the fixed part only, then every
        # operation tested given the operations the screening found (flows.analysis.attribution)
        screen_inputs = operation_inputs(pieces, "screen") if pieces is not None else []
        screening = _collect(
            screen_inputs, [test_operation_task.submit(i, seed) for i in screen_inputs], [], logger
        )
        chosen, screened = screened_operations(screening)
        logger.info("screening: %d operations, significant: %s", len(screening), sorted(chosen))
        inputs = operation_inputs(pieces, "final", chosen, screened) if pieces is not None else []
        op_futures = [test_operation_task.submit(inp, seed) for inp in inputs]

        fits: dict[str, LayerFit] = {}
        layer_of = {future.task_run_id: layer for layer, future in layer_futures.items()}
        for future in as_completed(list(layer_futures.values())):
            layer = layer_of[future.task_run_id]
            try:
                fits[layer] = future.result()
            except Exception as err:  # whatever broke one fit is that layer's, not the run's
                reason = f"the fit failed: {type(err).__name__}: {err}"
                fits[layer] = LayerFit(layer=layer, status="failed", reason=reason)
            if fits[layer].status == "failed":
                logger.error("layer %s failed: %s", layer, fits[layer].reason)
            emit_progress("fit", layer=layer, status=fits[layer].status, reason=fits[layer].reason)

        notes: list[str] = []
        outcomes = _collect(inputs, op_futures, notes, logger)
        logger.info("%d operation tests done", len(outcomes))

        layer_fits, ranking, findings, tests, att_notes = finish_attribution(
            [fits[layer] for layer in frames], chained, pieces, outcomes, materiality, frames
        )
        result = AnalysisResult(
            run_id=run_id,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ranking=ranking,
            findings=findings,
            layers=[*layer_fits, chained],
            data_summary=data_summary(frames, drops or []),
            method={
                **method_record(seed, materiality),
                "model_code": model_code_version(),
                "notes": notes + att_notes,
            },
            operation_tests=tests,
            materiality=materiality,
        )
        run_dir.mkdir(parents=True, exist_ok=True)
        write_results_task(db, result, str(run_dir))

    create_table_artifact(
        key="yield-ranking",
        table=ranking_rows(result),
        description=f"Sub-process ranking of run {run_id}",
    )
    create_markdown_artifact(
        key="yield-findings",
        markdown=findings_markdown(result),
        description=f"Top findings of run {run_id}",
    )
    return result


def _collect(inputs: list[Any], futures: list[Any], notes: list[str], logger: Any) -> list[Any]:
    """The operations' outcomes; an operation whose test raised is left out with a note."""
    outcomes = []
    for inp, future in zip(inputs, futures, strict=True):
        try:
            outcomes.append(future.result())
        except Exception as err:
            notes.append(f"{inp.operation}: the test failed: {type(err).__name__}: {err}")
            logger.error("operation %s: the test failed: %s", inp.operation, err)
    return outcomes


def _chained_result(future: Any) -> tuple[LayerFit, Any]:
    """The chained task's (record, pieces); a task that raised becomes a failed record."""
    try:
        return future.result()
    except Exception as err:
        reason = f"the fit failed: {type(err).__name__}: {err}"
        return LayerFit(layer="(chained)", status="failed", reason=reason), None


@flow(name="build-report", log_prints=True)
def report_flow(
    analysis_json: str, out: str, db: str, lock_wait: float | None = None
) -> tuple[str, str, list[str]]:
    """Render the run's HTML and PDF report, refresh the index, link the report.

    The run is read from its `analysis.json` (the path, not the record, is the flow's
    parameter: Prefect stores a flow's parameters on the server, at most 512 KB, and a
    run's findings with their lot lists outgrow that from a few hundred lots). The report
    reads the database read-only, so it holds the file read-only: a run that wants to write
    waits until the report is built. Returns the two paths and the charts that could not be
    drawn (each a note in the report and a warning here).
    """
    logger = get_run_logger()
    result = AnalysisResult.from_json(analysis_json)
    run_dir = Path(out) / result.run_id
    emit_progress("report-start")
    with hold_database(db, lock_wait, read_only=True):
        html_path, pdf_path, problems = render_report_task(result, str(run_dir), db)
    for problem in problems:
        logger.warning("report incomplete: %s", problem)
    incomplete = f"; INCOMPLETE, {len(problems)} chart(s) not drawn" if problems else ""
    create_link_artifact(
        key="yield-report",
        link=Path(html_path).resolve().as_uri(),
        link_text=f"Yield report {result.run_id}",
        description=f"HTML report (PDF beside it: {Path(pdf_path).name}){incomplete}",
    )
    emit_progress("report", html=html_path, pdf=pdf_path, problems=problems)
    return html_path, pdf_path, problems


def new_drops_in(landing: str | Path, db: str | Path) -> list[str]:
    """Drop folders in a landing folder, oldest name first, that the database has not merged.

    Re-offering a merged drop is harmless (ingestion is idempotent by content hash);
    this only saves reading it again.
    """
    landing = Path(landing)
    if not landing.is_dir():
        raise FileNotFoundError(f"landing folder {landing} does not exist")
    folders = sorted(p for p in landing.iterdir() if p.is_dir() and not p.name.startswith("."))
    merged = _merged_drop_paths(db)
    return [str(p) for p in folders if str(p.resolve()) not in merged]


def _merged_drop_paths(db: str | Path) -> set[str]:
    if not Path(db).exists():
        return set()
    con = duckdb.connect(str(db))  # inside the run's hold: same process, same instance
    try:
        rows = con.execute(
            "SELECT DISTINCT drop_path FROM meta.drop_log "
            "WHERE status IN ('merged', 'already_merged')"
        ).fetchall()
    except duckdb.CatalogException:  # a database that never saw a drop
        return set()
    finally:
        con.close()
    return {str(Path(path).resolve()) for (path,) in rows}


@flow(name="yield-run", log_prints=True)
def yield_run(
    drops: list[str] | None = None,
    landing: str | None = None,
    db: str = DEFAULT_DB,
    out: str = DEFAULT_OUT,
    task_runner: str = "threads",
    seed: int = 0,
    lock_wait: float | None = None,
    materiality: float | None = None,
) -> RunSummary:
    """Ingest drops (given, or what is new in `landing`), analyse the database, report.

    A rejected drop is not analysed; the other drops are, and the run ends Failed with a
    message naming the rejected drops and the report built from the rest.
    """
    logger = get_run_logger()
    summary = RunSummary(db=str(Path(db).resolve()))
    run_id = new_run_id()
    with hold_database(db, lock_wait):
        todo = list(drops or [])
        if landing:
            todo += new_drops_in(landing, db)
            if not todo:
                summary.message = f"no new drops in {landing}"
                logger.info(summary.message)
                return Completed(message=summary.message, data=summary)
        if todo:
            docs = Path(out) / run_id / "data-docs"
            summary.drops = ingest_drops_flow(todo, db, str(docs), lock_wait)
        usable = [d for d in summary.drops if d.usable]
        if todo and not usable:
            summary.message = _rejected_message(summary)
            return Failed(message=summary.message, data=summary)

        result = analyse_flow.with_options(task_runner=make_task_runner(task_runner))(
            db,
            out,
            run_id=run_id,
            seed=seed,
            drops=summary.drops,
            lock_wait=lock_wait,
            materiality=materiality,
        )
        summary.run_id = result.run_id
        summary.ranking = ranking_rows(result)
        summary.failed_layers = {
            fit.layer: fit.reason or "" for fit in result.layers if fit.status == "failed"
        }
    # after the write hold ends: the report reads the database read-only
    summary.report_html, summary.report_pdf, summary.report_problems = report_flow(
        str(Path(out) / result.run_id / "analysis.json"), out, db, lock_wait
    )

    logger.info("report: %s", summary.report_html)
    if summary.rejected:
        summary.message = (
            _rejected_message(summary) + f"; report of the rest: {summary.report_html}"
        )
        return Failed(message=summary.message, data=summary)
    summary.message = f"run {summary.run_id}: report at {summary.report_html}"
    if summary.problems:
        # Completed, with its report, under a name of its own: neither a clean run nor a failure.
        summary.message += f"; DEGRADED: {'; '.join(summary.problems)}"
        logger.warning("run degraded: %s", "; ".join(summary.problems))
        create_markdown_artifact(
            key="yield-run-problems",
            markdown=problems_markdown(summary),
            description=f"What went wrong in run {summary.run_id} (its report was written)",
        )
        return Completed(name=DEGRADED, message=summary.message, data=summary)
    return Completed(message=summary.message, data=summary)


DEGRADED = "Degraded"  # the state name of a run that finished with problems (`RunSummary.problems`)


def _rejected_message(summary: RunSummary) -> str:
    rejected = summary.rejected
    names = "; ".join(f"{d.drop} ({d.status}: {d.message})" for d in rejected)
    return f"{len(rejected)} of {len(summary.drops)} drops not merged, not analysed: {names}"
