"""The Prefect flows: thin orchestration over the plain pipeline functions.

    yield_run = ingest_drops -> analyse -> build_report

Each flow only sequences plain functions (`flows.ingest`, `flows.analysis`,
`flows.report`) and adds what Prefect is for: retries on file reads, per-layer fits
as concurrent tasks, content-keyed caching of fits, artifacts, logs, run states.

Where the work runs:
- Everything that touches the DuckDB file runs in the flow's own process, which holds
  the file (`hold_database`) read-write while it ingests and analyses, read-only while
  the report reads it. DuckDB allows one writing process per file; a second run waits
  for the hold up to a configurable time (YIELDRANK_DB_LOCK_WAIT, --lock-wait), then
  fails naming the database and the process that holds it.
- Per-layer fits are submitted to the flow's task runner: threads by default, or an
  existing Dask cluster (`task_runner="tcp://host:8786"`). They receive the layer's
  model frame as an Arrow table and return a `LayerFit`; they never see the database.
"""

from __future__ import annotations

import hashlib
import html
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pyarrow.compute as pc
from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)
from prefect.futures import as_completed
from prefect.states import Completed, Failed
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from flows import __version__
from flows.analysis import method_record
from flows.analysis.results import AnalysisResult, LayerFit
from flows.settings import DEFAULT_DB, DEFAULT_OUT, lock_wait_seconds

CHAINED_LAYER = "chained"
TOP_FINDINGS = 10

# --------------------------------------------------------------------------------------
# Progress: the CLI draws it, the flows report it. In-process only, never shipped to
# workers (the flow body resolves the futures, so every event fires in this process).


ProgressListener = Callable[..., None]
_listeners: list[ProgressListener] = []


@contextmanager
def progress_to(listener: ProgressListener) -> Iterator[None]:
    """Send this process's pipeline events to `listener(event, **info)` inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def _emit(event: str, **info: Any) -> None:
    for listener in list(_listeners):
        listener(event, **info)


# --------------------------------------------------------------------------------------
# The DuckDB file: one holder at a time.


class DatabaseBusy(RuntimeError):
    """Another process holds the DuckDB file for longer than this run was willing to wait."""


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def _describe_holder(message: str) -> str:
    match = _LOCK_HOLDER.search(message)
    if not match:
        return "an unknown process"
    pid = match["pid"]
    try:  # the command line says which run it is, when the holder is on this machine
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        command = match["exe"]
    return f"PID {pid} ({command})"


@contextmanager
def hold_database(
    db_path: str | Path, wait_seconds: float | None = None, *, read_only: bool = False
) -> Iterator[Path]:
    """Hold the DuckDB file for the block, waiting for another holder to finish.

    Connections that the plain functions open to the same file from this process, with
    the same `read_only`, share the held instance (DuckDB keeps one instance per file per
    process), so they go through; writers in other processes are kept out until the block
    ends (and, while it holds read-write, readers too).
    """
    path = Path(db_path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = lock_wait_seconds(wait_seconds)
    deadline = time.monotonic() + wait
    pause = 0.2
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy(
                    f"database {path} is in use by {_describe_holder(str(err))}; "
                    f"waited {wait:g} s for it (set YIELDRANK_DB_LOCK_WAIT or --lock-wait "
                    "to wait longer)"
                ) from err
            time.sleep(min(pause, max(deadline - time.monotonic(), 0.01)))
            pause = min(pause * 1.5, 2.0)
    try:
        yield path
    finally:
        con.close()


# --------------------------------------------------------------------------------------
# Caching fits on content: the same frame, the same model code and settings -> the same fit.


def frame_fingerprint(frame: pa.Table) -> str:
    """SHA-256 of a model frame's content, independent of row order and chunking.

    SQL gives no row order without ORDER BY, so the rows are sorted on every flat column
    before hashing; the schema (names and types) is part of the hash.
    """
    digest = hashlib.sha256(str(frame.schema).encode())
    if frame.num_rows:
        # nested columns (site value lists) cannot be sort keys; the flat ones identify a row
        keys = [(f.name, "ascending") for f in frame.schema if not pa.types.is_nested(f.type)]
        ordered = frame.take(pc.sort_indices(frame, sort_keys=keys)).combine_chunks()
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, ordered.schema) as writer:
            writer.write_table(ordered)
        digest.update(sink.getvalue())
    return digest.hexdigest()


@cache
def model_code_version() -> str:
    """Hash of the code that turns a frame into a fit: the analysis layer and the engine."""
    root = Path(__file__).resolve().parent.parent
    digest = hashlib.sha256(__version__.encode())
    sources = sorted((root / "hglm").rglob("*.py")) + sorted(
        (root / "flows" / "analysis").rglob("*.py")
    )
    for source in sources:
        digest.update(source.relative_to(root).as_posix().encode())
        digest.update(source.read_bytes())
    return digest.hexdigest()[:16]


def fit_cache_key(layer: str, frame: pa.Table, seed: int) -> str:
    return f"fit-{layer}-{frame_fingerprint(frame)[:32]}-seed{seed}-code{model_code_version()}"


def _fit_layer_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return fit_cache_key(parameters["layer"], parameters["frame"], parameters["seed"])


def _fit_chained_cache_key(context: Any, parameters: dict[str, Any]) -> str:
    return fit_cache_key(CHAINED_LAYER, parameters["frame"], parameters["seed"])


# --------------------------------------------------------------------------------------
# Task runners


def make_task_runner(spec: str = "threads", max_workers: int | None = None) -> TaskRunner:
    """`threads` (default) or the address of a running Dask scheduler, e.g. tcp://host:8786.

    A Dask cluster's workers must reach this run's Prefect API (PREFECT_API_URL) and
    should run with PREFECT_SERVER_EPHEMERAL_ENABLED=false so that none of them starts a
    Prefect server of its own (see flows/settings.py).
    """
    if spec in ("threads", "", None):
        # One layer fit per core: the fits hold the GIL little but each needs its own memory
        # (about 1.7 GB for a 300,000-wafer layer), and Prefect's default of unbounded threads
        # ran all 13 fits of a 12-layer year at once and exhausted 23 GB.
        return ThreadPoolTaskRunner(max_workers=max_workers or os.cpu_count() or 1)
    if "://" not in spec and ":" not in spec:
        raise ValueError(
            f"task runner {spec!r} is neither 'threads' nor a Dask scheduler address "
            "such as tcp://127.0.0.1:8786"
        )
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=spec)


# --------------------------------------------------------------------------------------
# Records of a run


@dataclass
class DropOutcome:
    """What happened to one drop folder: merged, already merged, or rejected (and why)."""

    drop: str
    status: str  # "merged" | "already merged" | "rejected" | "failed"
    message: str = ""
    drop_id: str = ""

    @property
    def usable(self) -> bool:
        return self.status in ("merged", "already merged")


@dataclass
class RunSummary:
    """What a `yield_run` did: the drops, the analysis run and where its report is."""

    db: str
    drops: list[DropOutcome] = field(default_factory=list)
    run_id: str | None = None
    report_html: str | None = None
    report_pdf: str | None = None
    ranking: list[dict[str, Any]] = field(default_factory=list)
    failed_layers: dict[str, str] = field(default_factory=dict)
    message: str = ""

    @property
    def rejected(self) -> list[DropOutcome]:
        return [d for d in self.drops if not d.usable]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _as_outcome(result: Any) -> DropOutcome:
    """A `flows.ingest.IngestResult` as the run reports it: status and one line of why."""
    status = str(result.status).replace("_", " ")
    message = result.summary()
    if status == "rejected":
        reasons = "; ".join(str(p) for p in result.errors[:5])
        more = len(result.errors) - 5
        message += f": {reasons}" + (f"; and {more} more" if more > 0 else "")
    return DropOutcome(
        drop=str(result.path), status=status, message=message, drop_id=result.drop_id
    )


# --------------------------------------------------------------------------------------
# Tasks. File reads retry (a drop still being copied, NFS hiccups); fits do not (a fit
# that fails once fails again on the same data).


@task(name="ingest-drop", retries=2, retry_delay_seconds=[2, 10])
def ingest_drop_task(drop: str, db: str, docs_dir: str | None = None) -> DropOutcome:
    from flows.ingest import ingest_drop

    outcome = _as_outcome(ingest_drop(drop, db, docs_dir=docs_dir))
    logger = get_run_logger()
    (logger.info if outcome.usable else logger.warning)("%s", outcome.message)
    return outcome


@task(name="read-model-frames", retries=2, retry_delay_seconds=[1, 5])
def read_frames_task(db: str) -> dict[str, pa.Table]:
    from flows.analysis.frames import layer_frames

    return layer_frames(Path(db))


@task(name="fit-layer", cache_key_fn=_fit_layer_cache_key, cache_expiration=timedelta(days=90))
def fit_layer_task(layer: str, frame: pa.Table, seed: int = 0) -> LayerFit:
    # Runs on a thread or a Dask worker: pure, no database, no Prefect calls beyond logging.
    from flows.analysis.layers import fit_layer

    return fit_layer(layer, frame, seed=seed)


@task(name="fit-chained", cache_key_fn=_fit_chained_cache_key, cache_expiration=timedelta(days=90))
def fit_chained_task(frame: pa.Table, seed: int = 0) -> LayerFit:
    from flows.analysis.layers import fit_chained

    return fit_chained(frame, seed=seed)


@task(name="write-results", retries=1, retry_delay_seconds=2)
def write_results_task(db: str, result: AnalysisResult, out: str) -> None:
    from flows.analysis.ranking import write_results

    write_results(Path(db), result, Path(out))


@task(name="render-report", retries=1, retry_delay_seconds=2)
def render_report_task(result: AnalysisResult, out: str, db: str) -> tuple[str, str]:
    from flows import report

    paths = report.build_report(result, Path(out), db_path=Path(db))
    report.build_index(Path(out).parent)
    return str(paths.html), str(paths.pdf)


# --------------------------------------------------------------------------------------
# Artifacts


def _md(text: Any) -> str:
    """Data (tool ids, layer names) as inert markdown table text."""
    return html.escape(str(text)).replace("|", "\\|").replace("\n", " ")


def _num(value: float | None, fmt: str = ".2f") -> str:
    return "n/a" if value is None else format(value, fmt)


def ranking_rows(result: AnalysisResult) -> list[dict[str, Any]]:
    return [
        {
            "rank": r.rank,
            "layer": r.layer,
            "yield_impact_pp": None if r.yield_impact is None else round(r.yield_impact, 3),
            "ci_low": None if r.ci_low is None else round(r.ci_low, 3),
            "ci_high": None if r.ci_high is None else round(r.ci_high, 3),
            "p_value_adj": None if r.p_value is None else float(f"{r.p_value:.3g}"),
            "variance_share": None if r.variance_share is None else round(r.variance_share, 3),
            "status": r.status,
            "reason": r.reason or "",
        }
        for r in result.ranking
    ]


def findings_markdown(result: AnalysisResult, top: int = TOP_FINDINGS) -> str:
    lines = [f"# Top findings of run {_md(result.run_id)}", ""]
    ranked = [r for r in result.ranking if r.rank is not None]
    if ranked:
        best = min(ranked, key=lambda r: r.rank)
        lines += [
            f"Sub-process that matters most: **{_md(best.layer)}**, "
            f"{_num(best.yield_impact)} yield points "
            f"(95 % CI {_num(best.ci_low)} to {_num(best.ci_high)}).",
            "",
        ]
    findings = sorted(result.findings, key=lambda f: abs(f.yield_impact), reverse=True)[:top]
    if findings:
        lines += [
            "| layer | effect | operation | tool | chamber | param | yield impact (pp) | 95 % CI | p |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for f in findings:
            lines.append(
                f"| {_md(f.layer)} | {_md(f.effect)} | {_md(f.operation or '')} | "
                f"{_md(f.tool_id or '')} | {_md(f.chamber_id or '')} | {_md(f.param or '')} | "
                f"{_num(f.yield_impact)} | {_num(f.ci_low)} to {_num(f.ci_high)} | "
                f"{_num(f.p_value, '.3g')} |"
            )
    else:
        lines.append("No localised findings.")
    unranked = [r for r in result.ranking if r.rank is None]
    if unranked:
        lines += ["", "## Layers not ranked", ""]
        lines += [f"- **{_md(r.layer)}**: {r.status}, {_md(r.reason or '')}" for r in unranked]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------
# Flows


@flow(name="ingest-drops", log_prints=True)
def ingest_drops(
    drops: list[str], db: str, docs_dir: str | None = None, lock_wait: float | None = None
) -> list[DropOutcome]:
    """Merge drop folders into the database in the given order, one transaction each.

    Great Expectations data docs go to `docs_dir` when given.
    """
    outcomes: list[DropOutcome] = []
    _emit("drops", total=len(drops))
    with hold_database(db, lock_wait):
        for drop in drops:
            state = ingest_drop_task(drop, db, docs_dir, return_state=True)
            if state.is_completed():
                outcome = state.result()
            else:  # the read kept failing: this drop only, the next drop still loads
                outcome = DropOutcome(drop, "failed", str(state.message or state.name))
            outcomes.append(outcome)
            _emit("drop", drop=drop, status=outcome.status, message=outcome.message)
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
def analyse(
    db: str,
    out: str,
    run_id: str | None = None,
    seed: int = 0,
    drops: list[DropOutcome] | None = None,
    lock_wait: float | None = None,
) -> AnalysisResult:
    """Fit every layer concurrently, rank, and write the ranking to the database and CSV.

    A layer whose fit raises is kept as `failed` with the reason; the run goes on.
    `drops` are this run's ingestion outcomes, for the report's data summary.
    """
    from flows.analysis.frames import chained_frame
    from flows.analysis.ranking import rank_layers

    logger = get_run_logger()
    run_id = run_id or new_run_id()
    run_dir = Path(out) / run_id
    with hold_database(db, lock_wait):
        frames = read_frames_task(db)
        frame_all = chained_frame(frames)
        logger.info("model frames: %s", {k: v.num_rows for k, v in frames.items()})
        _emit("fits", total=len(frames) + 1)

        # The chained model is the longest fit: submitted first, it runs beside the layers
        # instead of alone at the end on one of the cores.
        futures = {CHAINED_LAYER: fit_chained_task.submit(frame_all, seed)}
        futures |= {
            layer: fit_layer_task.submit(layer, frame, seed) for layer, frame in frames.items()
        }

        layer_of = {future.task_run_id: layer for layer, future in futures.items()}
        fits: dict[str, LayerFit] = {}
        for future in as_completed(list(futures.values())):
            layer = layer_of[future.task_run_id]
            try:
                fits[layer] = future.result()
            except Exception as err:  # whatever broke one fit is that layer's, not the run's
                reason = f"the fit failed: {type(err).__name__}: {err}"
                fits[layer] = LayerFit(layer=layer, status="failed", reason=reason)
                logger.error("layer %s: %s", layer, reason)
            label = "all layers (chained model)" if layer == CHAINED_LAYER else layer
            _emit("fit", layer=label, status=fits[layer].status, reason=fits[layer].reason)

        chained = fits.pop(CHAINED_LAYER)
        layer_fits = [fits[layer] for layer in frames]
        ranking, findings = rank_layers(layer_fits, chained)
        result = AnalysisResult(
            run_id=run_id,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            ranking=ranking,
            findings=findings,
            layers=[*layer_fits, chained],
            data_summary=data_summary(frames, drops or []),
            method={**method_record(seed), "model_code": model_code_version()},
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


@flow(name="build-report", log_prints=True)
def build_report(
    result: AnalysisResult, out: str, db: str, lock_wait: float | None = None
) -> tuple[str, str]:
    """Render the run's HTML and PDF report, refresh the index, link the report.

    The report reads the database read-only, so it holds the file read-only: a run
    that wants to write waits until the report is built.
    """
    run_dir = Path(out) / result.run_id
    _emit("report-start")
    with hold_database(db, lock_wait, read_only=True):
        html_path, pdf_path = render_report_task(result, str(run_dir), db)
    create_link_artifact(
        key="yield-report",
        link=Path(html_path).resolve().as_uri(),
        link_text=f"Yield report {result.run_id}",
        description=f"HTML report (PDF beside it: {Path(pdf_path).name})",
    )
    _emit("report", html=html_path, pdf=pdf_path)
    return html_path, pdf_path


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
            summary.drops = ingest_drops(todo, db, str(docs), lock_wait)
        usable = [d for d in summary.drops if d.usable]
        if todo and not usable:
            summary.message = _rejected_message(summary)
            return Failed(message=summary.message, data=summary)

        result = analyse.with_options(task_runner=make_task_runner(task_runner))(
            db, out, run_id=run_id, seed=seed, drops=summary.drops, lock_wait=lock_wait
        )
        summary.run_id = result.run_id
        summary.ranking = ranking_rows(result)
        summary.failed_layers = {
            fit.layer: fit.reason or "" for fit in result.layers if fit.status == "failed"
        }
    # after the write hold ends: the report reads the database read-only
    summary.report_html, summary.report_pdf = build_report(result, out, db, lock_wait)

    logger.info("report: %s", summary.report_html)
    if summary.rejected:
        summary.message = (
            _rejected_message(summary) + f"; report of the rest: {summary.report_html}"
        )
        return Failed(message=summary.message, data=summary)
    summary.message = f"run {summary.run_id}: report at {summary.report_html}"
    return Completed(message=summary.message, data=summary)


def _rejected_message(summary: RunSummary) -> str:
    rejected = summary.rejected
    names = "; ".join(f"{d.drop} ({d.status}: {d.message})" for d in rejected)
    return f"{len(rejected)} of {len(summary.drops)} drops not merged, not analysed: {names}"
