"""The `yieldrank` command line: one typer app, each command a thin wrapper over plain functions."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from flows import __version__
from flows.analysis.results import DEFAULT_MATERIALITY
from flows.demo import DEMO_LOTS, DEMO_SEED
from flows.settings import DEFAULT_DB, DEFAULT_OUT, EXIT_DEGRADED

STDF_WAFER_ID_HELP = (
    "Template of the wafer_id of STDF wafers, from {lot}, {sublot}, {wafer}, {wafer_text} "
    "[$YIELDRANK_STDF_WAFER_ID, else {lot}.{wafer:02d}]."
)

app = typer.Typer(
    name="yieldrank",
    help="Rank fab sub-processes by their impact on final yield with hierarchical GLMs.",
    no_args_is_help=True,
    add_completion=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"yieldrank {__version__}")
        raise typer.Exit()


@app.callback()
def global_options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Rank fab sub-processes by their impact on final yield."""


@app.command("run")
def run_command(
    drops: Annotated[
        list[Path] | None, typer.Argument(help="Drop folders, merged in the order given.")
    ] = None,
    db: Annotated[Path, typer.Option(help="The DuckDB file.")] = Path(DEFAULT_DB),
    out: Annotated[Path, typer.Option(help="Reports go to OUT/<run id>/.")] = Path(DEFAULT_OUT),
    landing: Annotated[
        Path | None, typer.Option(help="Also take every new drop folder in this folder.")
    ] = None,
    task_runner: Annotated[
        str, typer.Option(help="'threads', or a Dask scheduler address (tcp://host:8786).")
    ] = "threads",
    seed: Annotated[int, typer.Option(help="Seed of the interval simulations.")] = 0,
    materiality: Annotated[
        float,
        typer.Option(
            help="Points of fab yield a significant loss must exceed (its interval's lower "
            "end) to be flagged material."
        ),
    ] = DEFAULT_MATERIALITY,
    lock_wait: Annotated[
        float | None,
        typer.Option(help="Seconds to wait for another run's hold on the database [600]."),
    ] = None,
    stdf_wafer_id: Annotated[str | None, typer.Option(help=STDF_WAFER_ID_HELP)] = None,
) -> None:
    """Ingest drops, rank the sub-processes and build the report (the `yield_run` flow).

    Exit codes: 0 done; 1 failed (no report, or a drop was rejected: the report covers the
    rest); 2 bad arguments; 3 degraded: the report was written, but a chart could not be
    drawn (a note stands in its place) or a layer's fit failed with an error (its row says
    why); the problems are printed, logged and in the run's "yield-run-problems" artifact.
    """
    import os

    from flows.terminal import console, print_problems, run_in_terminal
    from flows.warehouse.stdf import WAFER_ID_ENV, wafer_id_template

    if not drops and landing is None:
        raise typer.BadParameter("give at least one drop folder or --landing")
    if stdf_wafer_id is not None:  # the flow's ingest tasks read it (same process)
        try:
            os.environ[WAFER_ID_ENV] = wafer_id_template(stdf_wafer_id)
        except ValueError as exc:
            raise typer.BadParameter(str(exc)) from None
    done = run_in_terminal(
        [str(d) for d in drops or []],
        db,
        out,
        landing=landing,
        task_runner=task_runner,
        seed=seed,
        lock_wait=lock_wait,
        materiality=_materiality(materiality),
    )
    report = getattr(done.summary, "report_html", None)
    if report:
        typer.echo(f"report: {report}")
    if not done.ok:
        console.print(
            f"[red]yield run failed:[/red] {done.message}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1)
    if done.degraded:
        print_problems("yield run", done.summary.problems)
        raise typer.Exit(EXIT_DEGRADED)


@app.command("demo")
def demo_command(
    out: Annotated[
        str, typer.Option(help="Folder for the demo's database, drops and reports.")
    ] = "runs/demo",
    lots: Annotated[int, typer.Option(help="Lots to simulate.")] = DEMO_LOTS,
    seed: Annotated[int, typer.Option(help="Seed of the simulated fab.")] = DEMO_SEED,
) -> None:
    """Simulate a small fab and run the whole yield job on embedded defaults."""
    from flows.demo import run_demo

    raise typer.Exit(run_demo(out, lots=lots, seed=seed))


@app.command("report")
def report_command(
    run_dir: Annotated[Path, typer.Argument(help="A run folder holding analysis.json.")],
    db: Annotated[
        Path | None, typer.Option(help="The run's DuckDB file, for the raw-data charts.")
    ] = None,
    index: Annotated[
        bool, typer.Option(help="Also rebuild index.html over the runs beside RUN_DIR.")
    ] = True,
) -> None:
    """Rebuild RUN_DIR/report.html and report.pdf from RUN_DIR/analysis.json.

    Exit codes: 0 done; 2 no readable analysis.json; 3 degraded: the report was written but a
    chart could not be drawn (a note stands in its place; the problems are printed).
    """
    from flows.analysis.results import AnalysisResult
    from flows.report.build import build_report
    from flows.report.index import build_index

    source = run_dir / "analysis.json"
    if not source.is_file():
        typer.echo(f"report: no analysis.json in {run_dir}", err=True)
        raise typer.Exit(2)
    try:
        result = AnalysisResult.from_json(source)
    except (ValueError, KeyError, TypeError) as exc:
        typer.echo(f"report: {source} is not an analysis run: {exc}", err=True)
        raise typer.Exit(2) from exc
    paths = build_report(result, run_dir, db_path=db)
    typer.echo(f"report: {paths.html}")
    typer.echo(f"pdf: {paths.pdf}")
    if index:
        typer.echo(f"index: {build_index(run_dir.resolve().parent)}")
    if paths.problems:
        from flows.terminal import print_problems

        print_problems("report", paths.problems)
        raise typer.Exit(EXIT_DEGRADED)


@app.command("simulate")
def simulate_command(
    out: Annotated[Path, typer.Argument(help="Folder for the drops and truth.json.")],
    lots: Annotated[int, typer.Option(help="Number of lots.")] = 300,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same fab.")] = 0,
    null: Annotated[bool, typer.Option("--null", help="Plant no effect (the null fab).")] = False,
    drops: Annotated[int, typer.Option(help="Number of deliveries the data are split into.")] = 1,
    fmt: Annotated[str, typer.Option("--format", help="parquet, csv or csv.gz.")] = "parquet",
    wafers_per_lot: Annotated[int, typer.Option(help="Wafers per lot (1-25).")] = 25,
    stdf: Annotated[
        bool,
        typer.Option(
            "--stdf",
            help="Write the die-level sort results as STDF V4 files in each drop's sort/ "
            "(ingest them with --stdf-wafer-id '{lot}-{wafer:02d}').",
        ),
    ] = False,
    equipment_sd: Annotated[
        tuple[float, float],
        typer.Option(
            help="True yield-logit offset SDs of every tool and every chamber (small real "
            "differences, also in --null fabs); 0 0 gives the exact null."
        ),
    ] = (0.02, 0.015),  # FabConfig().equipment_sd (a test keeps them equal)
    correlated_dispatch: Annotated[
        float,
        typer.Option(
            help="Probability that a lot of the bad tool is routed to one tool of an operation "
            "in another layer (the shadow, named in truth.json); 0 is off."
        ),
    ] = 0.0,
    dies: Annotated[
        bool,
        typer.Option(
            "--dies",
            help="Die-level sort results for every wafer: random defects (D0, alpha), an "
            "edge-ring and a centre-spot chamber, a fail bin per mechanism (truth.json: dies).",
        ),
    ] = False,
) -> None:
    """Simulate a fab with planted effects; writes contract drops and truth.json to OUT."""
    from flows.fabsim.config import DEFAULT_PLANTED, FabConfig
    from flows.fabsim.simulation import simulate_fab

    try:
        truth = simulate_fab(
            out,
            FabConfig(
                lots=lots,
                planted=None if null else DEFAULT_PLANTED,
                n_drops=drops,
                fmt=fmt,
                wafers_per_lot=wafers_per_lot,
                stdf=stdf,
                equipment_sd=equipment_sd,
                correlated_dispatch=correlated_dispatch,
                dies=dies,
            ),
            seed=seed,
        )
    except (ValueError, FileExistsError) as exc:
        typer.echo(f"simulate: {exc}", err=True)
        raise typer.Exit(2) from exc
    typer.echo(f"{truth.lots} lots, {truth.wafers} wafers, {truth.step_rows} step rows")
    for e in truth.planted:
        where = " ".join(x for x in (e.operation, e.tool_id, e.chamber_id, e.param) if x)
        typer.echo(f"planted {e.effect} in {e.layer} ({where}): {e.yield_impact:.2f} yield points")
    if truth.shadow:
        sh = truth.shadow
        typer.echo(
            f"shadow: {sh['operation']} {sh['tool_id']} ({sh['layer']}) shares "
            f"{sh['shared_lots']} of the bad tool's {sh['source_lots']} lots"
        )
    for s in (truth.dies or {}).get("signatures", []):
        typer.echo(
            f"planted {s['signature']} in {s['layer']} ({s['operation']} {s['tool_id']} "
            f"{s['chamber_id']}): {s['n_wafers_affected']} wafers, bin {s['bin']}"
        )
    for d in truth.drop_dirs:
        typer.echo(f"drop: {d}")


@app.command("ingest")
def ingest_command(
    drops: Annotated[list[Path], typer.Argument(help="Drop folders, loaded in the order given.")],
    db: Annotated[Path, typer.Option(help="The DuckDB file (created if missing).")],
    docs: Annotated[
        Path | None, typer.Option(help="Write Great Expectations data docs to this folder.")
    ] = None,
    gx: Annotated[
        bool, typer.Option(help="Also run the GX suites (the SQL rules always run).")
    ] = True,
    quarantine_rows: Annotated[
        bool, typer.Option(help="Quarantine rows breaking a row rule and merge the rest.")
    ] = False,
    stdf_wafer_id: Annotated[str | None, typer.Option(help=STDF_WAFER_ID_HELP)] = None,
) -> None:
    """Load fab drops into the database; exit 1 naming every rejected drop."""
    from flows.warehouse.console import ingest_drops_cli
    from flows.warehouse.stdf import wafer_id_template

    try:
        template = wafer_id_template(stdf_wafer_id)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    raise typer.Exit(
        ingest_drops_cli(
            drops, db, docs, gx=gx, quarantine_rows=quarantine_rows, stdf_wafer_id=template
        )
    )


def _materiality(value: float) -> float:
    if not value >= 0 or value == float("inf"):
        raise typer.BadParameter(
            f"--materiality must be a finite number of points >= 0, got {value}"
        )
    return float(value)


@app.command("status")
def status_command(db: Annotated[Path, typer.Option(help="The DuckDB file.")]) -> None:
    """List the drop log: every ingest attempt, its status, rows and problems."""
    from flows.warehouse.console import print_drop_log

    raise typer.Exit(print_drop_log(db))


@app.command("analyse")
def analyse_command(
    db: Annotated[Path, typer.Option(help="The DuckDB file with the ingested fab data.")],
    out: Annotated[Path, typer.Option(help="Folder for the ranking CSVs and analysis.json.")],
    run_id: Annotated[str | None, typer.Option(help="Run id (default: time-stamped).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the interval simulation.")] = 0,
    materiality: Annotated[
        float,
        typer.Option(
            help="Points of fab yield a significant loss must exceed (its interval's lower "
            "end) to be flagged material."
        ),
    ] = DEFAULT_MATERIALITY,
) -> None:
    """Fit every layer's HGLMs, rank the sub-processes by yield impact, write the results."""
    from flows.analysis.run import run_analysis

    if not db.exists():
        typer.echo(f"analyse: no database at {db}: ingest a drop first", err=True)
        raise typer.Exit(2)
    result = run_analysis(db, out, run_id=run_id, seed=seed, materiality=_materiality(materiality))
    for r in result.ranking:
        if r.rank is None:
            typer.echo(f"  -  {r.layer:<10} not ranked ({r.status}): {r.reason}")
        else:
            typer.echo(
                f"{r.rank:>3}  {r.layer:<10} {r.yield_impact:6.2f} pp "
                f"[{r.ci_low:.2f}, {r.ci_high:.2f}]  adj. p {r.p_value:.2g}"
            )
    typer.echo(f"run {result.run_id}: results in {out}")


if __name__ == "__main__":
    app()
