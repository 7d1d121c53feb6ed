"""The Prefect tasks of the yield run, each over one plain pipeline function, and the run's
records and Markdown artifacts.
"""

from __future__ import annotations

import html
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE

from flows.analysis.results import AnalysisResult, LayerFit
from flows.orchestration.caching import fit_chained_cache_key, fit_layer_cache_key

TOP_FINDINGS = 10


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
    report_problems: list[str] = field(default_factory=list)  # charts drawn as notes instead
    message: str = ""

    @property
    def rejected(self) -> list[DropOutcome]:
        return [d for d in self.drops if not d.usable]

    @property
    def problems(self) -> list[str]:
        """What the engineer must know although the run finished with its report (degraded)."""
        layers = [f"layer {layer} failed: {why}" for layer, why in self.failed_layers.items()]
        return layers + [f"report, {problem}" for problem in self.report_problems]


def new_run_id() -> str:
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


def _as_outcome(result: Any) -> DropOutcome:
    """A `flows.warehouse.ingest.IngestResult` as the run reports it: status and one line of why."""
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
# Tasks. File reads retry, but only on errors a retry can fix (a drop still being copied, an
# NFS hiccup, the database file locked by another process for a moment); a bug (TypeError,
# KeyError, ...) fails at once instead of being run three times. Fits do not retry (a fit
# that fails once fails again on the same data).


def is_transient(exc: BaseException | None) -> bool:
    """Whether `exc` is an error a retry can fix: file-system I/O or DuckDB's I/O and lock errors.

    Parameters
    ----------
    exc : the exception a task raised (None when unknown)

    Returns
    -------
    bool : True for `OSError` (files, NFS) and `duckdb.IOException` (including "could not set
    lock on file"); False for everything else, programming errors included.
    """
    return isinstance(exc, OSError | duckdb.IOException)


def retry_if_transient(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`: retry a failed task only when its error `is_transient`."""
    exc = state.data if isinstance(state.data, BaseException) else None
    if exc is None:  # a state whose result was persisted: ask for it without raising
        result = state.result(raise_on_failure=False)
        exc = result if isinstance(result, BaseException) else None
    return is_transient(exc)


@task(
    name="ingest-drop",
    retries=2,
    retry_delay_seconds=[2, 10],
    retry_condition_fn=retry_if_transient,
)
def ingest_drop_task(drop: str, db: str, docs_dir: str | None = None) -> DropOutcome:
    from flows.warehouse.ingest import ingest_drop

    outcome = _as_outcome(ingest_drop(drop, db, docs_dir=docs_dir))
    logger = get_run_logger()
    (logger.info if outcome.usable else logger.warning)("%s", outcome.message)
    return outcome


@task(
    name="read-model-frames",
    retries=2,
    retry_delay_seconds=[1, 5],
    retry_condition_fn=retry_if_transient,
)
def read_frames_task(db: str) -> dict[str, pa.Table]:
    from flows.analysis.frames import layer_frames

    return layer_frames(Path(db))


@task(name="fit-layer", cache_key_fn=fit_layer_cache_key, cache_expiration=timedelta(days=90))
def fit_layer_task(layer: str, frame: pa.Table, seed: int = 0) -> LayerFit:
    # Runs on a thread or a Dask worker: pure, no database, no Prefect calls beyond logging.
    from flows.analysis.layers import fit_layer

    return fit_layer(layer, frame, seed=seed)


@task(name="fit-chained", cache_key_fn=fit_chained_cache_key, cache_expiration=timedelta(days=90))
def fit_chained_task(frame: pa.Table, seed: int = 0) -> tuple[LayerFit, Any]:
    """The chained model's record and its per-wafer pieces (None when it could not be fitted)."""
    from flows.analysis.layers import chained_model

    return chained_model(frame, seed=seed)


# Not cached: its input is derived from the chained fit (cached itself), and hashing a
# frame of every wafer for a key would cost about what the test does.
@task(
    name="test-operation",
    task_run_name="test-operation-{inp.stage}-{inp.operation}",
    cache_policy=NO_CACHE,
)
def test_operation_task(inp: Any, seed: int = 0) -> Any:
    """One operation's tests and contrasts given the chained model (pure: a Dask worker can
    run it); returns its `OperationOutcome`."""
    from flows.analysis.attribution import test_operation

    outcome = test_operation(inp, seed=seed)
    get_run_logger().info(
        "%s/%s: %d test(s), %d level(s) in %.1f s",
        inp.layer,
        inp.operation,
        len(outcome.tests),
        len(outcome.levels),
        outcome.seconds,
    )
    return outcome


@task(name="write-results", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_if_transient)
def write_results_task(db: str, result: AnalysisResult, out: str) -> None:
    from flows.analysis.ranking import write_results

    write_results(Path(db), result, Path(out))


@task(name="render-report", retries=1, retry_delay_seconds=2, retry_condition_fn=retry_if_transient)
def render_report_task(result: AnalysisResult, out: str, db: str) -> tuple[str, str, list[str]]:
    from flows.report.build import build_report
    from flows.report.index import build_index

    paths = build_report(result, Path(out), db_path=Path(db))
    build_index(Path(out).parent)
    return str(paths.html), str(paths.pdf), paths.problems


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
            "significant": r.significant,
            "material": r.material,
            "variance_share": None if r.variance_share is None else round(r.variance_share, 3),
            "status": r.status,
            "reason": r.reason or "",
        }
        for r in result.ranking
    ]


def problems_markdown(summary: RunSummary) -> str:
    """The `yield-run-problems` artifact of a degraded run."""
    lines = [f"# Run {_md(summary.run_id)} finished degraded", ""]
    lines += [f"- {_md(problem)}" for problem in summary.problems]
    lines += ["", f"Report (with a note where each chart is missing): {_md(summary.report_html)}"]
    return "\n".join(lines)


def findings_markdown(result: AnalysisResult, top: int = TOP_FINDINGS) -> str:
    lines = [f"# Top findings of run {_md(result.run_id)}", ""]
    ranked = [r for r in result.ranking if r.rank is not None]
    if ranked and ranked[0].significant:
        best = ranked[0]
        lines += [
            f"Sub-process that loses the most: **{_md(best.layer)}**, "
            f"{_num(best.yield_impact)} points of fab yield "
            f"(95 % CI {_num(best.ci_low)} to {_num(best.ci_high)}).",
            "",
        ]
    elif ranked:
        lines += ["No sub-process has a significant yield loss.", ""]
    # the findings in the ranking's order: significant losses first, by loss
    findings = [f for f in result.findings if f.effect != "dispersion"][:top]
    if findings:
        lines += [
            "| layer | effect | operation | tool | chamber | param | loss (pp of fab yield) "
            "| 95 % CI | adjusted p | material |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for f in findings:
            p = f.p_adjusted if f.p_adjusted is not None else f.p_value
            lines.append(
                f"| {_md(f.layer)} | {_md(f.effect)} | {_md(f.operation or '')} | "
                f"{_md(f.tool_id or '')} | {_md(f.chamber_id or '')} | {_md(f.param or '')} | "
                f"{_num(f.yield_impact)} | {_num(f.ci_low)} to {_num(f.ci_high)} | "
                f"{_num(p, '.3g')} | {'yes' if f.material else ''} |"
            )
    else:
        lines.append("No localised findings.")
    unranked = [r for r in result.ranking if r.rank is None]
    if unranked:
        lines += ["", "## Layers not ranked", ""]
        lines += [f"- **{_md(r.layer)}**: {r.status}, {_md(r.reason or '')}" for r in unranked]
    return "\n".join(lines)
