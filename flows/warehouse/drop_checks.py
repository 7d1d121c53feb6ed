"""Check a landed drop against the whole contract: the SQL rules over every row, then the GX
suites; one `ValidationResult`.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path

import duckdb

from flows.warehouse.contract import GX_CHUNK_ROWS, TABLES, GxTableReport, Problem, ValidationResult
from flows.warehouse.contract_rules import run_sql_rules
from flows.warehouse.gx_suites import run_gx


def check_drop(
    con: duckdb.DuckDBPyConnection,
    present: Iterable[str],
    *,
    sources: dict[str, str] | None = None,
    gx: bool = True,
    docs_dir: str | Path | None = None,
    gx_chunk_rows: int = GX_CHUNK_ROWS,
    gx_max_rows: int | None = None,
) -> ValidationResult:
    """Validate the tables landed on `con` (temp `landing_<table>`), all rules, one result.

    `present` names the contract tables the drop delivered; `sources` maps a table to the file
    or folder it came from (for messages). Row-level violations are left in the temp table
    `violations` (table_name, source_file, source_row, rule, detail) for the caller.
    """
    present = [t for t in TABLES if t in set(present)]
    t0 = time.perf_counter()
    problems = run_sql_rules(con, present, sources or {})
    timings = {"sql_rules": round(time.perf_counter() - t0, 3)}
    reports: list[GxTableReport] = []
    docs = Path(docs_dir) if docs_dir is not None else None
    if gx and present:
        t0 = time.perf_counter()
        reports = run_gx(
            con, present, docs_dir=docs, chunk_rows=gx_chunk_rows, max_rows=gx_max_rows
        )
        timings["gx"] = round(time.perf_counter() - t0, 3)
        sql_failed = {p.table for p in problems if p.severity == "error"}
        for report in reports:
            if not report.success and report.table not in sql_failed:
                problems.append(
                    Problem(
                        rule="gx_disagrees",
                        message=(
                            f"Great Expectations found failures the SQL rules did not: "
                            f"{report.failed}"
                        ),
                        table=report.table,
                        file=(sources or {}).get(report.table, report.table),
                        count=sum(report.failed.values()),
                    )
                )
    return ValidationResult(problems=problems, gx=reports, docs_dir=docs, timings=timings)
