"""Ingest one fab drop folder into DuckDB: land, validate, then merge it whole or quarantine it.

    drop folder --read_parquet/read_csv--> landing_<table> (temp, typed, with file and row)
        --flows.warehouse.contract (expectation suites in SQL + GX, cross-table rules)-->
        ok:       one transaction: merge into core.<table> + a `merged` drop log row
        rejected: one transaction: every delivered row into quarantine.rows with the rules it
                  broke, unreadable files into quarantine.files, the problems, a `rejected` row

DuckDB reads the files itself (no pandas on the bulk path). CSV and anything that needs a
cast land in a temp table; Parquet whose columns already have the contract types lands as a
temp view over its files (no copy: see `_land_as_view`). Either way nothing persistent
changes before the merge transaction, so a crash before it commits leaves the database as it
was, and a crash inside it is rolled back by DuckDB's write-ahead log on the next open.

A drop's identity is its content: `drop_id` = folder name + the first 12 hex digits of a
SHA-256 over its files, so re-delivering the same files is recognised and changes nothing.

Every DuckDB result is fetched to the end (`fetchall`): in DuckDB 2.0 an unfinished result
blocks the connection for relation queries (`con.sql`).

Longer than 600 lines on purpose: landing, checking, merging, logging and quarantining share
one connection and one transaction's state; the file handling is in `drop_files.py`, the
contract checks in `contract_rules.py` / `gx_suites.py`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from flows.warehouse.contract import (
    GX_MAX_ROWS,
    TABLES,
    GxTableReport,
    Problem,
    TableContract,
    load_contract,
)
from flows.warehouse.db import connect, quote_ident, quote_literal
from flows.warehouse.drop_checks import check_drop
from flows.warehouse.drop_files import (
    MAX_QUARANTINED_FILE_BYTES,
    STDF_FOLDER,
    DropChanged,
    DropError,
    TableSource,
    content_hash,
    describe_source,
    find_stdf_files,
    find_tables,
    land_table,
    read_csv_header,
    read_error_problem,
    reader_params,
    reader_sql,
    relative_name,
    row_number_sql,
)
from flows.warehouse.gx_suites import temp_table_exists
from flows.warehouse.stdf import WAFER_ID_ENV, land_stdf, stdf_raw_rows, wafer_id_template

DropStatus = Literal["merged", "already_merged", "rejected"]
OnBadRows = Literal["reject", "quarantine"]


@dataclass
class IngestResult:
    """The outcome of ingesting one drop."""

    drop_id: str
    path: Path
    content_hash: str
    status: DropStatus
    attempt_id: int
    row_counts: dict[str, int] = field(default_factory=dict)  # rows delivered, per table
    merged_counts: dict[str, int] = field(default_factory=dict)  # rows that changed core
    problems: list[Problem] = field(default_factory=list)
    quarantined_rows: int = 0
    gx: list[GxTableReport] = field(default_factory=list)  # kept in meta.gx_results
    seconds: float = 0.0
    timings: dict[str, float] = field(default_factory=dict)
    stdf_files: int = 0  # STDF files in the drop's sort/ folder

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    def summary(self) -> str:
        """One line for people: what happened to the drop."""
        rows = ", ".join(f"{t} {n:,}" for t, n in self.row_counts.items()) or "no rows"
        if self.status == "merged":
            return f"{self.drop_id}: merged ({rows}) in {self.seconds:.1f} s"
        if self.status == "already_merged":
            return f"{self.drop_id}: already merged earlier (same content), nothing changed"
        return (
            f"{self.drop_id}: REJECTED, {len(self.errors)} problem(s), nothing merged; "
            f"{self.quarantined_rows:,} rows kept in quarantine"
        )


# --- the drop, end to end ------------------------------------------------------------------


def ingest_drop(
    drop: str | Path,
    db: str | Path,
    *,
    on_bad_rows: OnBadRows = "reject",
    gx: bool = True,
    docs_dir: str | Path | None = None,
    gx_max_rows: int | None = GX_MAX_ROWS,
    progress: Callable[[str], None] | None = None,
    stdf_wafer_id: str | None = None,
) -> IngestResult:
    """Ingest the drop folder `drop` into the database file `db`.

    All or nothing by default: the drop merges in one transaction, or it is rejected and kept
    in quarantine with every problem named. With `on_bad_rows="quarantine"` rows breaking a
    per-row rule are quarantined and the rest merges (file- and column-level problems still
    reject the drop). `gx` runs the Great Expectations suites as well (data docs to
    `docs_dir`), on at most `gx_max_rows` rows per table (None = all rows): a systematic
    sample spread over the table plus the rows the SQL rules flagged (see
    `flows.warehouse.contract.gx_sample_sql`). The SQL rules always check every row, and answer the
    suites' uniqueness expectations over the whole drop.

    STDF files in the drop's `sort/` folder land as `sort_die` (and their HBR names as
    `bin_defs`) beside any Parquet/CSV rows of those tables; `stdf_wafer_id` is the template
    that makes their wafer ids (None: $YIELDRANK_STDF_WAFER_ID or `{lot}.{wafer:02d}`, see
    `flows.warehouse.stdf`).
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC).replace(tzinfo=None)
    timings: dict[str, float] = {}
    say = progress or (lambda _msg: None)

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    template = wafer_id_template(stdf_wafer_id)
    drop = Path(drop).resolve()
    if not drop.is_dir():
        raise FileNotFoundError(f"drop folder {drop} does not exist or is not a folder")
    say("hashing")
    digest = content_hash(drop)
    drop_id = f"{drop.name}-{digest[:12]}"
    t = lap("hash", t0)
    con = connect(db)
    try:
        earlier = con.execute(
            "SELECT drop_id FROM meta.drop_log WHERE content_hash = ? AND status = 'merged' "
            "LIMIT 1",
            [digest],
        ).fetchall()
        if earlier:
            result = IngestResult(drop_id, drop, digest, "already_merged", 0, timings=timings)
            _log(con, result, [], started, t0)
            return result
        sources, problems = find_tables(drop)
        contract = load_contract()
        row_counts: dict[str, int] = {}
        broken: list[DropError] = []
        landed: list[str] = []
        for table in TABLES:
            if table not in sources:
                continue
            say(f"reading {sources[table].display}")
            try:
                n, notes = land_table(con, drop, drop_id, sources[table], contract[table])
            except DropError as err:
                broken.append(err)
                problems.append(err.problem)
                continue
            row_counts[table] = n
            problems.extend(notes)
            landed.append(table)
        stdf_files, _ = find_stdf_files(drop)  # their layout problems came with find_tables
        if stdf_files:
            say(f"reading {STDF_FOLDER}/ ({len(stdf_files)} STDF file(s))")
            counts, notes, unreadable = land_stdf(con, drop, drop_id, stdf_files, template)
            problems += notes + [err.problem for err in unreadable]
            broken += unreadable
            for table, n in counts.items():
                row_counts[table] = row_counts.get(table, 0) + n
                if table not in landed:
                    landed.append(table)
            landed.sort(key=TABLES.index)
        t = lap("land", t)
        say("validating")
        displays = {table: src.display for table, src in sources.items()}
        if stdf_files:
            stdf_display = (
                f"{STDF_FOLDER}/ ({len(stdf_files)} STDF file{'s' * (len(stdf_files) > 1)})"
            )
            for table in ("sort_die", "bin_defs"):
                if table in displays:
                    displays[table] += f" + {stdf_display}"
                elif table in landed:
                    displays[table] = stdf_display
        gx_reports: list[GxTableReport] = []
        try:
            check = check_drop(
                con, landed, sources=displays, gx=gx, docs_dir=docs_dir, gx_max_rows=gx_max_rows
            )
            problems.extend(check.problems)
            gx_reports = check.gx
            if stdf_files:
                _hint_wafer_template(check.problems, template)
            timings.update(check.timings)
        except duckdb.Error as exc:  # a Parquet page that only breaks when it is read
            corrupt = _find_unreadable(con, drop, sources, landed, exc)
            broken += corrupt
            problems += [err.problem for err in corrupt]
        lap("validate", t)
        file_level = [p for p in problems if p.severity == "error" and p.rule not in _row_rules()]
        row_level = [p for p in problems if p.severity == "error" and p.rule in _row_rules()]
        reject = bool(file_level) or (bool(row_level) and on_bad_rows == "reject")
        result = IngestResult(
            drop_id, drop, digest, "rejected" if reject else "merged", 0, row_counts,
            problems=problems, gx=gx_reports, timings=timings, stdf_files=len(stdf_files),
        )  # fmt: skip
        if reject:
            say("rejected: keeping the drop in quarantine")
            _reject(con, result, sources, broken, landed, started, t0)
        else:
            say("merging")
            if row_level:  # quarantine mode: those rows stay out, the rest merges
                for p in row_level:
                    p.severity = "warning"
                _cascade_violations(con, landed)
            try:
                _merge(
                    con, result, sources, landed, started, t0,
                    quarantine_rows=bool(row_level), say=say,
                )  # fmt: skip
            except duckdb.Error as exc:  # rolled back; was it the data?
                corrupt = _find_unreadable(con, drop, sources, landed, exc)
                result.status = "rejected"
                result.problems += [err.problem for err in corrupt]
                result.merged_counts = {}
                _reject(con, result, sources, broken + corrupt, landed, started, t0)
            except DropChanged as exc:  # rolled back
                result.status = "rejected"
                result.problems.append(Problem("drop_changed", str(exc), None, str(drop)))
                result.merged_counts = {}
                _reject(con, result, sources, broken, landed, started, t0)
        return result
    finally:
        con.close()


def _hint_wafer_template(problems: list[Problem], template: str) -> None:
    """An unknown wafer from an STDF file may be a template that does not fit the tester."""
    for p in problems:
        if p.rule == "unknown_wafer" and any(
            str(e.get("file", "")).startswith(STDF_FOLDER + "/") for e in p.examples
        ):
            p.message += (
                f"; the wafer ids of STDF files are made by the template {template!r}: if the "
                f"tester's lots and wafers are known under other ids, set --stdf-wafer-id or "
                f"${WAFER_ID_ENV}"
            )


def _find_unreadable(
    con: duckdb.DuckDBPyConnection,
    drop: Path,
    sources: dict[str, TableSource],
    landed: list[str],
    exc: duckdb.Error,
) -> list[DropError]:
    """Which landed source made `exc`? Re-raises when every file reads (then it is a bug)."""
    found = []
    for table in landed:
        if table not in sources:  # landed from STDF only: read in full when it landed
            continue
        try:
            found.append(read_error_problem(con, drop, sources[table], exc))
        except duckdb.Error:
            continue  # this table's files all read fine
    if not found:
        raise exc
    for err in found:
        landed.remove(err.problem.table)
    return found


def _row_rules() -> set[str]:
    """Rules that single out rows (rather than a whole file or column)."""
    return {
        "wrong_type", "unparsable_timestamp", "not_null", "pattern", "slot_range",
        "step_seq_range", "site_range", "value_finite", "dies_total_positive",
        "dies_good_negative", "dies_good_gt_dies_total", "track_out_before_track_in",
        "duplicate_key", "unknown_lot", "unknown_wafer", "lot_conflict",
        "slot_not_unique_in_lot", "conflicts_earlier_drop", "unknown_kind", "unknown_tool",
        "unknown_chamber",
    }  # fmt: skip


def _cascade_violations(con: duckdb.DuckDBPyConnection, landed: list[str]) -> None:
    """In row quarantine mode a quarantined lot or wafer takes its dependent rows with it."""

    def bad(table: str, alias: str) -> str:
        return (
            f"EXISTS (SELECT 1 FROM violations AS v WHERE v.table_name = '{table}' "
            f"AND v.source_file = {alias}.source_file AND v.source_row = {alias}.source_row)"
        )

    if "wafers" in landed and "lots" in landed:
        con.execute(
            f"""INSERT INTO violations
                SELECT 'wafers', 'parent_quarantined', w.source_file, w.source_row, w.lot_id
                FROM landing_wafers AS w
                WHERE w.lot_id IN (SELECT l.lot_id FROM landing_lots AS l WHERE {bad("lots", "l")})
                  AND w.lot_id NOT IN (SELECT lot_id FROM core.lots)"""
        )
    if "wafers" in landed:
        for table in ("step_history", "inline_meas", "sort_yield", "sort_die"):
            if table in landed:
                con.execute(
                    f"""INSERT INTO violations
                        SELECT ?, 'parent_quarantined', t.source_file, t.source_row, t.wafer_id
                        FROM landing_{table} AS t
                        WHERE t.wafer_id IN (
                            SELECT w.wafer_id FROM landing_wafers AS w WHERE {bad("wafers", "w")})
                          AND t.wafer_id NOT IN (SELECT wafer_id FROM core.wafers)""",
                    [table],
                )
    if "equipment_events" in landed and "step_history" in landed:
        # an event whose tool (or chamber) only the quarantined step rows brought goes too
        con.execute(
            f"""INSERT INTO violations
                SELECT 'equipment_events', 'parent_quarantined', e.source_file, e.source_row,
                    e.tool_id
                FROM landing_equipment_events AS e
                WHERE NOT EXISTS (
                    SELECT 1 FROM landing_step_history AS s
                    WHERE s.tool_id = e.tool_id AND (e.chamber_id IS NULL
                        OR s.chamber_id = e.chamber_id) AND NOT {bad("step_history", "s")})
                  AND NOT EXISTS (
                    SELECT 1 FROM core.step_history AS s
                    WHERE s.tool_id = e.tool_id AND (e.chamber_id IS NULL
                        OR s.chamber_id = e.chamber_id))"""
        )


def _needs_dedup(con: duckdb.DuckDBPyConnection, table: str) -> bool:
    """Does the landed table repeat a row verbatim? (then merge from the de-duplicating view)"""
    if table == "sort_yield":
        return True  # small; its staging view also picks the latest re-test
    (n,) = con.execute(f"SELECT count(*) FROM repeated_{table}").fetchall()[0]
    return n > 0  # keys repeat, and validation made sure only verbatim (else: rejected)


def _merge(
    con: duckdb.DuckDBPyConnection,
    result: IngestResult,
    sources: dict[str, TableSource],
    landed: list[str],
    started: datetime,
    t0: float,
    *,
    quarantine_rows: bool,
    say: Callable[[str], None] = lambda _msg: None,
) -> None:
    """Merge every landed table into core in ONE transaction, with its drop log row."""
    t_merge = time.perf_counter()
    contract = load_contract()
    if quarantine_rows:
        _raw_rows(con, result, sources)
    plans = {t: ("staging_" if _needs_dedup(con, t) else "landing_") + t for t in landed}
    con.execute("BEGIN TRANSACTION")
    try:
        result.attempt_id = _next_attempt(con)
        for table in landed:
            tc = contract[table]
            cols = ", ".join(quote_ident(c) for c in tc.names)
            src = f"(SELECT * FROM {plans[table]} AS s"
            if quarantine_rows:  # the staging views drop source_row; exclude bad rows first
                src = (
                    f"(SELECT * FROM {plans[table].replace('staging_', 'landing_')} AS s "
                    f"WHERE NOT EXISTS (SELECT 1 FROM violations AS v WHERE v.table_name = "
                    f"{quote_literal(table)} AND v.source_file = s.source_file "
                    "AND v.source_row = s.source_row)"
                )
                if table == "sort_yield":
                    src += (
                        " QUALIFY row_number() OVER (PARTITION BY wafer_id "
                        "ORDER BY test_ts DESC NULLS LAST) = 1"
                    )
            src += ")"
            say(f"merging {table} (in the transaction)")
            result.merged_counts[table] = _merge_table(con, table, tc, cols, src, result)
        if quarantine_rows:
            n = _quarantine_rows(con, result, only_violations=True)
            result.quarantined_rows = n
            _save_problems(con, result)
        if content_hash(result.path) != result.content_hash:  # what we read is what we checked
            raise DropChanged(
                "the drop's files changed while it was being ingested; nothing was merged. "
                "Deliver it again once it is complete"
            )
        result.timings["merge"] = round(time.perf_counter() - t_merge, 3)
        _log(
            con, result, _file_list(sources, result.stdf_files), started, t0,
            in_transaction=True,
        )  # fmt: skip
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _merge_table(
    con: duckdb.DuckDBPyConnection,
    table: str,
    tc: TableContract,
    cols: str,
    src: str,
    result: IngestResult,
) -> int:
    """Insert the new rows of one table; returns how many rows changed core."""
    select = f"SELECT {cols}, drop_id, source_file, extra FROM {src} AS n"
    if table == "sort_yield":
        # a re-test replaces an older result; a result older than the merged one is ignored
        (older,) = con.execute(
            f"SELECT count(*) FROM {src} AS n JOIN core.sort_yield AS c USING (wafer_id) "
            "WHERE NOT (n.test_ts > c.test_ts OR (c.test_ts IS NULL AND n.test_ts IS NOT NULL)) "
            "AND (n.dies_good, n.dies_total, n.test_ts) IS DISTINCT FROM "
            "(c.dies_good, c.dies_total, c.test_ts)"
        ).fetchall()[0]
        if older:
            result.problems.append(
                Problem(
                    "older_retest_ignored",
                    f"{older} sort row(s) are not newer than the result already merged for "
                    "their wafer and were ignored (a re-test replaces only with a later test_ts)",
                    table,
                    severity="warning",
                    count=older,
                )
            )
        con.execute(
            f"DELETE FROM core.sort_yield AS c USING {src} AS n WHERE c.wafer_id = n.wafer_id "
            "AND (n.test_ts > c.test_ts OR (c.test_ts IS NULL AND n.test_ts IS NOT NULL))"
        )
        (inserted,) = con.execute(
            f"INSERT INTO core.sort_yield BY NAME {select} WHERE NOT EXISTS "
            "(SELECT 1 FROM core.sort_yield AS c WHERE c.wafer_id = n.wafer_id)"
        ).fetchall()[0]
        return int(inserted)
    if tc.key:
        match = " AND ".join(
            f"c.{quote_ident(k)} IS NOT DISTINCT FROM n.{quote_ident(k)}" for k in tc.key
        )
    else:  # no key (inline_meas): only a verbatim repeat of a merged row is skipped
        match = " AND ".join(
            f"c.{quote_ident(k)} IS NOT DISTINCT FROM n.{quote_ident(k)}" for k in tc.names
        )
    (n_core,) = con.execute(f"SELECT count(*) FROM core.{table}").fetchall()[0]
    where = f" WHERE NOT EXISTS (SELECT 1 FROM core.{table} AS c WHERE {match})" if n_core else ""
    (inserted,) = con.execute(f"INSERT INTO core.{table} BY NAME {select}{where}").fetchall()[0]
    return int(inserted)


def _next_attempt(con: duckdb.DuckDBPyConnection) -> int:
    (n,) = con.execute("SELECT coalesce(max(attempt_id), 0) + 1 FROM meta.drop_log").fetchall()[0]
    return int(n)


def _file_list(sources: dict[str, TableSource], stdf_files: int = 0) -> list[dict[str, Any]]:
    files = [
        {"table": t, "source": s.display, "format": s.format, "files": len(s.files)}
        for t, s in sources.items()
    ]
    if stdf_files:
        files.append(
            {"table": "sort_die", "source": f"{STDF_FOLDER}/", "format": "stdf",
             "files": stdf_files}
        )  # fmt: skip
    return files


def _log(
    con: duckdb.DuckDBPyConnection,
    result: IngestResult,
    files: list[dict[str, Any]],
    started: datetime,
    t0: float,
    *,
    in_transaction: bool = False,
) -> None:
    """Append the attempt to meta.drop_log, and what GX found to meta.gx_results.

    Inside the caller's transaction if it has one, so an attempt's GX results exist exactly
    when its drop log row does.
    """
    if not in_transaction:
        con.execute("BEGIN TRANSACTION")
        result.attempt_id = _next_attempt(con)
    result.seconds = round(time.perf_counter() - t0, 3)
    con.execute(
        "INSERT INTO meta.drop_log VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            result.attempt_id,
            result.drop_id,
            str(result.path),
            result.content_hash,
            result.status,
            json.dumps(files),
            json.dumps(result.row_counts),
            json.dumps([p.to_dict() for p in result.problems], default=str),
            started,
            datetime.now(UTC).replace(tzinfo=None),
            result.seconds,
            json.dumps(result.timings),
        ],
    )
    _save_gx_results(con, result)
    if not in_transaction:
        con.execute("COMMIT")


GX_RESULT_COLUMNS = (
    "attempt_id", "drop_id", "table_name", "suite", "expectation_index", "expectation_type",
    "column_names", "rule", "success", "element_count", "unexpected_count",
    "unexpected_percent", "partial_unexpected", "exception_message", "rows_checked",
    "rows_total", "evaluated_by",
)  # fmt: skip


def _save_gx_results(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    rows = [
        [
            result.attempt_id,
            result.drop_id,
            report.table,
            report.table,  # one suite per table, named after it
            e.index,
            e.type,
            json.dumps(e.columns),
            e.rule,
            e.success,
            e.element_count,
            e.unexpected_count,
            e.unexpected_percent,
            json.dumps(_plain(e.partial_unexpected)),
            e.exception,
            report.rows_checked if e.rows_checked is None else e.rows_checked,
            report.rows_total,
            e.evaluated_by,
        ]
        for report in result.gx
        for e in report.expectations
    ]
    if rows:
        con.executemany(
            f"INSERT INTO meta.gx_results ({', '.join(GX_RESULT_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(GX_RESULT_COLUMNS))})",
            rows,
        )


def _plain(value: Any) -> Any:
    """A GX example value as JSON can hold it: numpy scalars as numbers, NaN and timestamps as
    text (JSON has no NaN; DuckDB would refuse the row, and with it the attempt's log)."""
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):  # a row of a multi-column expectation
        return {str(k): _plain(v) for k, v in value.items()}
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # numpy scalar
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    return str(value)


def _reject(
    con: duckdb.DuckDBPyConnection,
    result: IngestResult,
    sources: dict[str, TableSource],
    broken: list[DropError],
    landed: list[str],
    started: datetime,
    t0: float,
) -> None:
    """Keep the whole drop in quarantine, with its problems, in one transaction."""
    t_quarantine = time.perf_counter()
    raw = _raw_rows(con, result, sources)
    con.execute("BEGIN TRANSACTION")
    try:
        result.attempt_id = _next_attempt(con)
        _save_problems(con, result)
        for err in broken:
            for path in err.files:
                size = path.stat().st_size
                content = path.read_bytes() if size <= MAX_QUARANTINED_FILE_BYTES else None
                con.execute(
                    "INSERT INTO quarantine.files VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [
                        result.attempt_id,
                        result.drop_id,
                        err.problem.table,
                        relative_name(result.path, path),
                        err.problem.rule,
                        size,
                        content,
                    ],
                )
        if raw:
            result.quarantined_rows = _quarantine_rows(con, result, only_violations=False)
        result.timings["quarantine"] = round(time.perf_counter() - t_quarantine, 3)
        _log(
            con, result, _file_list(sources, result.stdf_files), started, t0,
            in_transaction=True,
        )  # fmt: skip
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _save_problems(con: duckdb.DuckDBPyConnection, result: IngestResult) -> None:
    for p in result.problems:
        con.execute(
            "INSERT INTO quarantine.problems VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                result.attempt_id,
                result.drop_id,
                p.table,
                p.file,
                p.rule,
                p.severity,
                p.count,
                p.message,
                json.dumps(p.examples, default=str),
            ],
        )


def _raw_rows(
    con: duckdb.DuckDBPyConnection, result: IngestResult, sources: dict[str, TableSource]
) -> bool:
    """Every readable delivered row as text JSON into temp `raw_rows` (the rejected path only).

    Rows are numbered exactly as in landing, so the rules found there attach to them. A CSV
    with malformed lines is read skipping those lines (they are in the problem's examples and
    the file's bytes are kept in quarantine.files).
    """
    con.execute(
        "CREATE OR REPLACE TEMP TABLE raw_rows (table_name VARCHAR, source_file VARCHAR, "
        "source_row BIGINT, row_json JSON)"
    )
    if not temp_table_exists(con, "violations"):
        con.execute(
            "CREATE TEMP TABLE violations (table_name VARCHAR, rule VARCHAR, "
            "source_file VARCHAR, source_row BIGINT, detail VARCHAR)"
        )
    prefix = str(result.path) + "/"
    for src in sources.values():
        for lenient in (False, True):
            if lenient and src.format != "csv":
                break
            reader = reader_sql(src, lenient=lenient)
            try:
                if src.format == "csv" and src.header is None:
                    read_csv_header(result.path, src)
                names = [n for n, _ in describe_source(con, src)]
                pairs = ", ".join(
                    f"{quote_literal(n)}, CAST({quote_ident(n)} AS VARCHAR)" for n in names
                )
                con.execute(
                    f"INSERT INTO raw_rows SELECT $table, replace(__source_file, $prefix, ''), "
                    f"{row_number_sql(src)}, json_object({pairs}) FROM {reader}",
                    {"prefix": prefix, "table": src.table, **reader_params(src)},
                )
                break
            except (duckdb.Error, DropError):
                continue
    if result.stdf_files:
        stdf_raw_rows(con, STDF_FOLDER)
    (n,) = con.execute("SELECT count(*) FROM raw_rows").fetchall()[0]
    return n > 0


def _quarantine_rows(
    con: duckdb.DuckDBPyConnection, result: IngestResult, *, only_violations: bool
) -> int:
    """Write quarantined rows with the rules each broke (inside the caller's transaction)."""
    (n,) = con.execute(
        f"""INSERT INTO quarantine.rows
            SELECT $attempt, $drop_id, r.table_name, r.source_file, r.source_row,
                   coalesce(list(DISTINCT v.rule ORDER BY v.rule)
                            FILTER (WHERE v.rule IS NOT NULL), []),
                   any_value(r.row_json)
            FROM raw_rows AS r
            {"" if only_violations else "LEFT"} JOIN violations AS v
                USING (table_name, source_file, source_row)
            GROUP BY r.table_name, r.source_file, r.source_row""",
        {"attempt": result.attempt_id, "drop_id": result.drop_id},
    ).fetchall()[0]
    return int(n)
