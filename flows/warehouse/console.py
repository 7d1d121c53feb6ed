"""What `yieldrank ingest` and `yieldrank status` print (rich), over `flows.warehouse.ingest`."""

from __future__ import annotations

import json
from pathlib import Path

from flows.warehouse.db import connect
from flows.warehouse.ingest import IngestResult, ingest_drop

# --- command line helpers (flows/cli.py calls these) ---------------------------------------


def ingest_drops_cli(
    drops: list[Path],
    db: Path,
    docs_dir: Path | None = None,
    *,
    gx: bool = True,
    quarantine_rows: bool = False,
    stdf_wafer_id: str | None = None,
) -> int:
    """`yieldrank ingest`: load drops in order, say what happened to each; 1 if any rejected.

    `stdf_wafer_id`: the wafer id template of STDF files (see `flows.warehouse.stdf`).
    """
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    out, err = Console(), Console(stderr=True)
    rejected: list[IngestResult] = []
    missing: list[str] = []
    with Progress(
        SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(),
        console=err, transient=True,
    ) as bar:  # fmt: skip
        task = bar.add_task("starting", total=None)
        for drop in drops:
            name = Path(drop).name

            def show(phase: str, name: str = name) -> None:
                bar.update(task, description=f"{name}: {phase}")

            try:
                result = ingest_drop(
                    drop, db, gx=gx, docs_dir=docs_dir, progress=show,
                    on_bad_rows="quarantine" if quarantine_rows else "reject",
                    stdf_wafer_id=stdf_wafer_id,
                )  # fmt: skip
            except FileNotFoundError as exc:
                missing.append(str(drop))
                err.print(str(exc), style="red", markup=False, soft_wrap=True)
                continue
            if result.status == "rejected":
                rejected.append(result)
                err.print(result.summary(), style="red", markup=False, soft_wrap=True)
                for p in result.errors:
                    err.print(f"  {p}", markup=False, highlight=False, soft_wrap=True)
            else:
                out.print(result.summary(), markup=False, highlight=False, soft_wrap=True)
                for p in result.problems:
                    out.print(f"  note: {p}", markup=False, highlight=False, soft_wrap=True)
    if rejected or missing:
        names = [r.drop_id for r in rejected] + missing
        err.print(f"rejected: {', '.join(names)}", style="red", markup=False, soft_wrap=True)
        return 1
    return 0


def print_drop_log(db: Path) -> int:
    """`yieldrank status`: the drop log as a table."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    if not Path(db).exists():
        Console(stderr=True).print(f"no database at {db}")
        return 1
    con = connect(db, read_only=True)
    try:
        rows = con.execute(
            """SELECT attempt_id, drop_id, status, row_counts, problems,
                      strftime(started_at, '%Y-%m-%d %H:%M:%S'), seconds
               FROM meta.drop_log ORDER BY attempt_id"""
        ).fetchall()
    finally:
        con.close()
    table = Table(title=f"drop log of {db}")
    for col in ("#", "drop", "status", "rows", "problems", "started (UTC)", "seconds"):
        table.add_column(col)
    colours = {"merged": "green", "already_merged": "cyan", "rejected": "red"}
    for attempt, drop_id, status_, counts, problems, started, seconds in rows:
        rows_text = ", ".join(f"{t} {n:,}" for t, n in json.loads(counts).items())
        errors = [p for p in json.loads(problems) if p["severity"] == "error"]
        what = "; ".join(f"{p['rule']} ({p['file'] or p['table']})" for p in errors[:3])
        if len(errors) > 3:
            what += f"; +{len(errors) - 3} more"
        colour = colours.get(status_, "white")
        table.add_row(
            str(attempt), drop_id, f"[{colour}]{status_}[/{colour}]", rows_text, what,
            started, f"{seconds:.1f}",
        )  # fmt: skip
    console.print(table)
    return 0
