"""Ingest one fab drop folder into DuckDB: land, validate, then merge it whole or quarantine it.

    drop folder --read_parquet/read_csv--> landing_<table> (temp, typed, with file and row)
        --flows.validate (expectation suites in SQL + GX, cross-table rules)-->
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
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import duckdb

from flows.db import connect, quote_ident, quote_literal
from flows.validate import (
    GX_MAX_ROWS,
    TABLES,
    GxTableReport,
    Problem,
    TableContract,
    load_contract,
    temp_table_exists,
    validate,
)

DropStatus = Literal["merged", "already_merged", "rejected"]
OnBadRows = Literal["reject", "quarantine"]
FORMATS = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
MAX_QUARANTINED_FILE_BYTES = 256 * 2**20
# the header is read by us, so DuckDB holds every line to exactly the header's fields
CSV_OPTIONS = (
    "header = true, auto_detect = false, columns = $columns, delim = ',', quote = '\"', "
    "escape = '\"', compression = 'auto'"
)
# exact readings of delivered types as contract types; anything else is checked per value
EXACT = {
    "int": {"BIGINT", "INTEGER", "SMALLINT", "TINYINT", "UINTEGER", "USMALLINT", "UTINYINT"},
    "float": {"DOUBLE", "FLOAT", "BIGINT", "INTEGER", "SMALLINT", "TINYINT"},
    "ts": {"TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE"},
    "str": {"VARCHAR"},
}


@dataclass
class TableSource:
    """Where one contract table sits in a drop: a single file or a split folder."""

    table: str
    display: str  # as the user knows it: "wafers.csv" or "step_history/ (3 files)"
    files: list[Path]
    format: str  # parquet | csv
    header: list[str] | None = None  # CSV: the header row, once read


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


class DropError(Exception):
    """A file-level problem found while landing a table (the drop will be rejected)."""

    def __init__(self, problem: Problem, files: list[Path]):
        super().__init__(str(problem))
        self.problem = problem
        self.files = files


class DropChanged(Exception):
    """The drop's files changed between the start of the ingest and its merge."""


# --- finding and hashing the files -------------------------------------------------------


def _format_of(path: Path) -> tuple[str, str] | None:
    name = path.name
    for ext, fmt in FORMATS.items():
        if name.endswith(ext):
            return name[: -len(ext)], fmt
    return None


def find_tables(drop: Path) -> tuple[dict[str, TableSource], list[Problem]]:
    """The contract tables in a drop folder, and what is wrong with its layout."""
    problems: list[Problem] = []
    found: dict[str, list[TableSource]] = {}
    for entry in sorted(drop.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir() and entry.name in TABLES:
            parts = sorted(
                p for p in entry.rglob("*") if p.is_file() and not p.name.startswith(".")
            )
            formats = {(_format_of(p) or ("", "?"))[1] for p in parts}
            if not parts:
                problems.append(
                    Problem(
                        "empty_folder", "split folder holds no files", entry.name, entry.name + "/"
                    )
                )
            elif len(formats) > 1:
                problems.append(
                    Problem(
                        "mixed_formats",
                        f"split folder mixes file types ({', '.join(p.name for p in parts[:5])}); "
                        "use one of .parquet, .csv, .csv.gz",
                        entry.name,
                        entry.name + "/",
                    )
                )
            else:
                display = f"{entry.name}/ ({len(parts)} file{'s' * (len(parts) > 1)})"
                found.setdefault(entry.name, []).append(
                    TableSource(entry.name, display, parts, formats.pop())
                )
            continue
        named = _format_of(entry) if entry.is_file() else None
        if named and named[0] in TABLES:
            found.setdefault(named[0], []).append(
                TableSource(named[0], entry.name, [entry], named[1])
            )
        else:
            problems.append(
                Problem(
                    "unknown_file",
                    "not a contract table (expected <table>.parquet|.csv|.csv.gz or a <table>/ "
                    f"folder, tables: {', '.join(TABLES)}); ignored",
                    None,
                    entry.name,
                    severity="warning",
                )
            )
    sources: dict[str, TableSource] = {}
    for table, candidates in found.items():
        if len(candidates) > 1:
            problems.append(
                Problem(
                    "ambiguous_table",
                    f"{table} is delivered more than once ("
                    + ", ".join(c.display for c in candidates)
                    + "); deliver one file or one folder per table",
                    table,
                    candidates[0].display,
                )
            )
        else:
            sources[table] = candidates[0]
    if not sources and not any(p.severity == "error" for p in problems):
        problems.append(Problem("no_tables", "the drop holds no contract table", None, str(drop)))
    return sources, problems


def content_hash(drop: Path) -> str:
    """SHA-256 over the drop's files (relative names and bytes), independent of timestamps."""
    digest = hashlib.sha256()
    for path in sorted(p for p in drop.rglob("*") if p.is_file()):
        rel = path.relative_to(drop).as_posix()
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        digest.update(rel.encode() + b"\0")
        with path.open("rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


# --- landing ---------------------------------------------------------------------------------


def _reader(src: TableSource, *, lenient: bool = False) -> str:
    """The table function reading a source; bind `_params(src)` when running it.

    `lenient` (CSV only) skips malformed lines, to keep the readable rows of a rejected file.
    """
    if src.format == "parquet":
        return (
            "read_parquet($files, filename = '__source_file', file_row_number = true, "
            "union_by_name = true)"
        )
    skip = ", ignore_errors = true" if lenient else ""
    return f"read_csv($files, {CSV_OPTIONS}{skip}, filename = '__source_file')"


def _params(src: TableSource) -> dict[str, Any]:
    params: dict[str, Any] = {"files": [str(p) for p in src.files]}
    if src.format == "csv":
        if src.header is None:
            raise ValueError("read the CSV header first (_read_csv_header)")
        params["columns"] = {name: "VARCHAR" for name in src.header}
    return params


def _read_csv_header(drop: Path, src: TableSource) -> None:
    """Read and check the header row of every CSV file of a source (all must agree)."""
    headers = []
    for path in src.files:
        try:
            with path.open("rb") as raw:
                stream = gzip.open(raw) if path.name.endswith(".gz") else raw
                first = stream.readline()  # only the header record: decode no further
                while first.count(b'"') % 2 and (more := stream.readline()):
                    first += more  # a quoted column name holding a line break
                header = next(csv.reader(io.StringIO(first.decode("utf-8"), newline="")), [])
        except UnicodeDecodeError:
            raise DropError(
                Problem(
                    "not_utf8",
                    "is not UTF-8 text: the header line holds bytes that are not UTF-8",
                    src.table,
                    _rel(drop, path),
                    None,
                    [{"file": _rel(drop, path), "line": 1}],
                ),
                [path],
            ) from None
        except (OSError, EOFError, csv.Error) as exc:
            raise DropError(
                Problem(
                    "malformed_csv",
                    f"cannot be read as a (gzipped) CSV table: {exc}",
                    src.table,
                    _rel(drop, path),
                ),
                [path],
            ) from None
        dupes = sorted({h for h in header if [x.lower() for x in header].count(h.lower()) > 1})
        if dupes:
            raise DropError(
                Problem(
                    "duplicate_column",
                    f"the header names column(s) {', '.join(dupes)} twice",
                    src.table,
                    _rel(drop, path),
                ),
                [path],
            )
        headers.append(header)
    if any(h != headers[0] for h in headers):
        odd = [_rel(drop, p) for p, h in zip(src.files, headers, strict=True) if h != headers[0]]
        raise DropError(
            Problem(
                "inconsistent_header",
                f"the parts of a split table must share one header; these differ from the "
                f"first: {', '.join(odd[:5])}",
                src.table,
                src.display,
            ),
            [],
        )
    src.header = headers[0]


def _row_number(src: TableSource) -> str:
    """1-based data row within its file (for CSV, the line number is this + 1)."""
    if src.format == "parquet":
        return "file_row_number + 1"
    return "row_number() OVER (PARTITION BY __source_file)"


def _reading(col: str, spec_type: str, delivered: str) -> tuple[str, str | None]:
    """SQL reading delivered column `col` as the contract type, and a test for a failed read."""
    q = quote_ident(col)
    if delivered in EXACT[spec_type]:
        expr = q if delivered in ("VARCHAR", "BIGINT", "DOUBLE", "TIMESTAMP") else None
        target = {"int": "BIGINT", "float": "DOUBLE", "ts": "TIMESTAMP", "str": "VARCHAR"}[
            spec_type
        ]
        return expr or f"CAST({q} AS {target})", None
    if spec_type == "str":
        return f"CAST({q} AS VARCHAR)", None
    if spec_type == "ts":
        if delivered.startswith("TIMESTAMP WITH TIME ZONE"):
            return f"timezone('UTC', {q})", None
        expr = f"timezone('UTC', TRY_CAST(CAST({q} AS VARCHAR) AS TIMESTAMPTZ))"
    elif spec_type == "int":
        if delivered in ("DOUBLE", "FLOAT") or delivered.startswith("DECIMAL"):
            expr = f"CASE WHEN {q} = trunc({q}) THEN TRY_CAST({q} AS BIGINT) END"
        else:  # text: digits only, so that '1.5' is not quietly rounded to 2
            expr = (
                f"CASE WHEN regexp_full_match(CAST({q} AS VARCHAR), '\\s*[+-]?[0-9]+\\s*') "
                f"THEN TRY_CAST(CAST({q} AS VARCHAR) AS BIGINT) END"
            )
    else:
        expr = f"TRY_CAST({q} AS DOUBLE)"
    return expr, f"{q} IS NOT NULL AND ({expr}) IS NULL"


def _describe_source(con: duckdb.DuckDBPyConnection, src: TableSource) -> list[tuple[str, str]]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {_reader(src)}", _params(src)).fetchall()
    return [(r[0], r[1]) for r in rows if r[0] not in ("__source_file", "file_row_number")]


def land_table(
    con: duckdb.DuckDBPyConnection, drop: Path, drop_id: str, src: TableSource, tc: TableContract
) -> tuple[int, list[Problem]]:
    """Read one table of the drop into `landing_<table>`; raise DropError if it cannot."""
    for path in src.files:
        if path.stat().st_size == 0:
            raise DropError(
                Problem(
                    "empty_file", "the file is empty (0 bytes)", src.table, _rel(drop, path), 0
                ),
                [path],
            )
    if src.format == "csv":
        _read_csv_header(drop, src)
    try:
        delivered = _describe_source(con, src)
    except duckdb.Error as exc:
        raise _read_error(con, drop, src, exc) from None
    by_lower = {name.lower(): (name, typ) for name, typ in delivered}
    missing = [c.name for c in tc.columns if c.required and c.name.lower() not in by_lower]
    if missing:
        names = ", ".join(name for name, _ in delivered)
        raise DropError(
            Problem(
                "missing_column",
                f"required column(s) {', '.join(missing)} missing; the file has: {names}",
                src.table,
                src.display,
            ),
            [],
        )
    selects, bad_tests = [], []
    for spec in tc.columns:
        if spec.name.lower() not in by_lower:
            selects.append(f"NULL::{spec.sql_type} AS {quote_ident(spec.name)}")
            continue
        name, typ = by_lower[spec.name.lower()]
        expr, bad = _reading(name, spec.type, typ)
        selects.append(f"{expr} AS {quote_ident(spec.name)}")
        if bad:
            bad_tests.append(f"CASE WHEN {bad} THEN {quote_literal(spec.name)} END")
    contract_names = {c.name.lower() for c in tc.columns}
    extras = [name for name, _ in delivered if name.lower() not in contract_names]
    if extras:
        pairs = ", ".join(f"{quote_literal(n)}, CAST({quote_ident(n)} AS VARCHAR)" for n in extras)
        selects.append(f"json_object({pairs}) AS extra")
    else:
        selects.append("NULL::JSON AS extra")
    if bad_tests:
        listed = f"list_filter([{', '.join(bad_tests)}], lambda x: x IS NOT NULL)"
        selects.append(f"nullif({listed}, []) AS bad_cast")
    else:
        selects.append("NULL::VARCHAR[] AS bad_cast")
    prefix = str(drop) + "/"
    select = (
        f"SELECT $drop_id AS drop_id, replace(__source_file, $prefix, '') AS source_file, "
        f"{_row_number(src)} AS source_row, {', '.join(selects)} FROM {_reader(src)}"
    )
    params = {"drop_id": drop_id, "prefix": prefix, **_params(src)}
    if src.format == "parquet" and not bad_tests:
        per_file = _land_as_view(con, drop, drop_id, src, selects)
    else:
        try:
            con.execute(f"INSERT INTO landing_{src.table} BY NAME {select}", params)
        except duckdb.Error as exc:
            raise _read_error(con, drop, src, exc) from None
        per_file = dict(
            con.execute(
                f"SELECT source_file, count(*) FROM landing_{src.table} GROUP BY ALL"
            ).fetchall()
        )
    problems = []
    for path in src.files:
        if per_file.get(_rel(drop, path), 0) == 0:
            problems.append(
                Problem(
                    "no_rows",
                    "the file has a header but no rows (0 rows); leave the table out of the drop instead",
                    src.table,
                    _rel(drop, path),
                    0,
                )
            )
    if extras:
        problems.append(
            Problem(
                "extra_columns",
                f"columns not in the contract kept in `extra` and ignored: {', '.join(extras)}",
                src.table,
                src.display,
                severity="warning",
            )
        )
    return sum(per_file.values()), problems


def _land_as_view(
    con: duckdb.DuckDBPyConnection,
    drop: Path,
    drop_id: str,
    src: TableSource,
    selects: list[str],
) -> dict[str, int]:
    """Land a Parquet source whose columns already have the contract types as a view.

    Nothing needs casting, so copying the rows into a temp table would only cost time: the
    checks scan the files (columnar, only the columns they need) and the merge inserts
    straight from them, keeping Parquet's dictionary-encoded strings, which DuckDB stores
    much faster than the same strings re-read from a temp table. A view cannot hold bound
    parameters, so the file list, folder and drop id are written into it as quoted literals.
    """
    prefix = str(drop) + "/"
    files = "[" + ", ".join(quote_literal(str(p)) for p in src.files) + "]"
    reader = _reader(src).replace("$files", files)  # our own text: no delivered names in it
    try:
        per_file = dict(
            con.execute(
                f"SELECT replace(__source_file, $prefix, ''), count(*) FROM {_reader(src)} "
                "GROUP BY ALL",
                {"prefix": prefix, **_params(src)},
            ).fetchall()
        )
    except duckdb.Error as exc:
        raise _read_error(con, drop, src, exc) from None
    con.execute(f"DROP TABLE IF EXISTS landing_{src.table}")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW landing_{src.table} AS "
        f"SELECT {quote_literal(drop_id)} AS drop_id, "
        f"replace(__source_file, {quote_literal(prefix)}, '') AS source_file, "
        f"{_row_number(src)} AS source_row, {', '.join(selects)} FROM {reader}"
    )
    return per_file


def _rel(drop: Path, path: Path) -> str:
    return path.relative_to(drop).as_posix()


def _read_error(
    con: duckdb.DuckDBPyConnection, drop: Path, src: TableSource, exc: duckdb.Error
) -> DropError:
    """Turn a reader failure into a plain problem naming the file(s) and what is wrong."""
    bad_files = []
    for path in src.files:  # find the culprit(s) among a split folder's parts
        try:
            one = TableSource(src.table, path.name, [path], src.format, src.header)
            # hash every value: a bare count(*) may be answered from metadata alone
            con.execute(f"SELECT sum(hash(t)) FROM {_reader(one)} AS t", _params(one)).fetchall()
        except duckdb.Error as file_exc:
            bad_files.append((path, file_exc))
    if not bad_files:  # every file reads on its own: the failure is ours, not the data's
        raise exc
    path, first = bad_files[0]
    detail = str(first).strip().splitlines()[0]
    names = ", ".join(_rel(drop, p) for p, _ in bad_files)
    if src.format == "parquet":
        with path.open("rb") as fh:
            magic = fh.read(4)
        if magic != b"PAR1":
            problem = Problem(
                "not_a_table",
                "is not a Parquet file at all (no PAR1 header)",
                src.table,
                names,
            )
        else:
            problem = Problem(
                "corrupt_parquet",
                f"Parquet file cannot be read (truncated or corrupt): {detail}",
                src.table,
                names,
            )
        return DropError(problem, [p for p, _ in bad_files])
    rejects = _csv_rejects(con, TableSource(src.table, path.name, [path], "csv", src.header))
    kinds = {r["error_type"] for r in rejects}
    examples = [
        {
            "file": _rel(drop, path),
            "line": r["line"],
            "error": r["error_type"],
            "text": r["csv_line"],
        }
        for r in rejects[:5]
    ]
    if "INVALID ENCODING" in kinds or "INVALID UNICODE" in kinds or "unicode" in detail.lower():
        bad = [r for r in rejects if "ENCOD" in r["error_type"] or "UNICODE" in r["error_type"]]
        problem = Problem(
            "not_utf8",
            f"is not UTF-8 text: {len(bad) or 'some'} line(s) hold bytes that are not UTF-8",
            src.table,
            names,
            len(bad) or None,
            examples,
        )
    elif kinds & {"TOO MANY COLUMNS", "MISSING COLUMNS"}:
        bad = [r for r in rejects if r["error_type"] in ("TOO MANY COLUMNS", "MISSING COLUMNS")]
        problem = Problem(
            "ragged_row",
            f"{len(bad)} line(s) have a different number of fields than the header",
            src.table,
            names,
            len(bad),
            examples,
        )
    else:
        problem = Problem(
            "malformed_csv",
            f"cannot be read as a CSV table: {detail}",
            src.table,
            names,
            len(rejects) or None,
            examples,
        )
    return DropError(problem, [p for p, _ in bad_files])


def _csv_rejects(con: duckdb.DuckDBPyConnection, one: TableSource) -> list[dict[str, Any]]:
    """The lines DuckDB's CSV reader rejects, with line numbers and error types."""
    try:
        con.execute(
            f"SELECT count(*) FROM read_csv($files, {CSV_OPTIONS}, store_rejects = true, "
            "rejects_table = 'csv_rejects', rejects_scan = 'csv_reject_scans')",
            _params(one),
        ).fetchall()
        rows = con.execute(
            "SELECT line, error_type, csv_line FROM csv_rejects ORDER BY line"
        ).fetchall()
    except duckdb.Error:
        return []
    return [{"line": r[0], "error_type": str(r[1]), "csv_line": r[2]} for r in rows]


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
) -> IngestResult:
    """Ingest the drop folder `drop` into the database file `db`.

    All or nothing by default: the drop merges in one transaction, or it is rejected and kept
    in quarantine with every problem named. With `on_bad_rows="quarantine"` rows breaking a
    per-row rule are quarantined and the rest merges (file- and column-level problems still
    reject the drop). `gx` runs the Great Expectations suites as well (data docs to
    `docs_dir`), on at most `gx_max_rows` rows per table (None = all rows): a systematic
    sample spread over the table plus the rows the SQL rules flagged (see
    `flows.validate.gx_sample_sql`). The SQL rules always check every row, and answer the
    suites' uniqueness expectations over the whole drop.
    """
    t0 = time.perf_counter()
    started = datetime.now(UTC).replace(tzinfo=None)
    timings: dict[str, float] = {}
    say = progress or (lambda _msg: None)

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

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
        t = lap("land", t)
        say("validating")
        displays = {table: src.display for table, src in sources.items()}
        gx_reports: list[GxTableReport] = []
        try:
            check = validate(
                con, landed, sources=displays, gx=gx, docs_dir=docs_dir, gx_max_rows=gx_max_rows
            )
            problems.extend(check.problems)
            gx_reports = check.gx
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
            problems=problems, gx=gx_reports, timings=timings,
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
        try:
            found.append(_read_error(con, drop, sources[table], exc))
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
        "slot_not_unique_in_lot", "conflicts_earlier_drop",
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
        _log(con, result, _file_list(sources), started, t0, in_transaction=True)
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


def _file_list(sources: dict[str, TableSource]) -> list[dict[str, Any]]:
    return [
        {"table": t, "source": s.display, "format": s.format, "files": len(s.files)}
        for t, s in sources.items()
    ]


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
                        _rel(result.path, path),
                        err.problem.rule,
                        size,
                        content,
                    ],
                )
        if raw:
            result.quarantined_rows = _quarantine_rows(con, result, only_violations=False)
        result.timings["quarantine"] = round(time.perf_counter() - t_quarantine, 3)
        _log(con, result, _file_list(sources), started, t0, in_transaction=True)
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
            reader = _reader(src, lenient=lenient)
            try:
                if src.format == "csv" and src.header is None:
                    _read_csv_header(result.path, src)
                names = [n for n, _ in _describe_source(con, src)]
                pairs = ", ".join(
                    f"{quote_literal(n)}, CAST({quote_ident(n)} AS VARCHAR)" for n in names
                )
                con.execute(
                    f"INSERT INTO raw_rows SELECT $table, replace(__source_file, $prefix, ''), "
                    f"{_row_number(src)}, json_object({pairs}) FROM {reader}",
                    {"prefix": prefix, "table": src.table, **_params(src)},
                )
                break
            except (duckdb.Error, DropError):
                continue
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


# --- command line helpers (flows/cli.py calls these) ---------------------------------------


def ingest_drops_cli(
    drops: list[Path],
    db: Path,
    docs_dir: Path | None = None,
    *,
    gx: bool = True,
    quarantine_rows: bool = False,
) -> int:
    """`yieldrank ingest`: load drops in order, say what happened to each; 1 if any rejected."""
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
