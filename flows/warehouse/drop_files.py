"""A drop's files: find them, hash them, and land each table on a DuckDB connection.

The first half of ingesting a drop (`flows.warehouse.ingest`): DuckDB reads the Parquet and
CSV files itself (no pandas on the bulk path); a file it cannot read becomes a `Problem`
naming the file and the rule, never a crash.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from flows.warehouse.contract import (
    TABLES,
    Problem,
    TableContract,
)
from flows.warehouse.db import quote_ident, quote_literal

FORMATS = {".parquet": "parquet", ".csv": "csv", ".csv.gz": "csv"}
# wafer sort as the testers' STDF V4 files (read by flows.warehouse.stdf)
STDF_FOLDER = "sort"
STDF_SUFFIXES = (".stdf", ".stdf.gz")
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
    "bool": {"BOOLEAN"},
}
# text read as a contract bool (case and surrounding blanks aside); anything else is wrong_type
BOOL_TEXT = "true|false|t|f|yes|no|1|0"


@dataclass
class TableSource:
    """Where one contract table sits in a drop: a single file or a split folder."""

    table: str
    display: str  # as the user knows it: "wafers.csv" or "step_history/ (3 files)"
    files: list[Path]
    format: str  # parquet | csv
    header: list[str] | None = None  # CSV: the header row, once read


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
    stdf, stdf_problems = find_stdf_files(drop)
    problems += stdf_problems
    for entry in sorted(drop.iterdir()):
        if entry.name.startswith(".") or (entry.name == STDF_FOLDER and entry.is_dir()):
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
                    f"folder, tables: {', '.join(TABLES)}; or STDF files in {STDF_FOLDER}/); "
                    "ignored",
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
    if not sources and not stdf and not any(p.severity == "error" for p in problems):
        problems.append(Problem("no_tables", "the drop holds no contract table", None, str(drop)))
    return sources, problems


def find_stdf_files(drop: Path) -> tuple[list[Path], list[Problem]]:
    """The STDF files in the drop's `sort/` folder, and the other files there (ignored)."""
    folder = drop / STDF_FOLDER
    if not folder.is_dir():
        return [], []
    files, problems = [], []
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = relative_name(drop, path)
        if any(part.startswith(".") for part in rel.split("/")):
            continue
        if path.name.endswith(STDF_SUFFIXES):
            files.append(path)
        else:
            problems.append(
                Problem(
                    "unknown_file",
                    f"not an STDF file (the {STDF_FOLDER}/ folder holds "
                    f"{' or '.join(STDF_SUFFIXES)} files); ignored",
                    None,
                    rel,
                    severity="warning",
                )
            )
    if not files:
        problems.append(
            Problem(
                "empty_folder",
                f"the {STDF_FOLDER}/ folder holds no STDF file ({', '.join(STDF_SUFFIXES)})",
                "sort_die",
                STDF_FOLDER + "/",
            )
        )
    return files, problems


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


def reader_sql(src: TableSource, *, lenient: bool = False) -> str:
    """The table function reading a source; bind `reader_params(src)` when running it.

    `lenient` (CSV only) skips malformed lines, to keep the readable rows of a rejected file.
    """
    if src.format == "parquet":
        return (
            "read_parquet($files, filename = '__source_file', file_row_number = true, "
            "union_by_name = true)"
        )
    skip = ", ignore_errors = true" if lenient else ""
    return f"read_csv($files, {CSV_OPTIONS}{skip}, filename = '__source_file')"


def reader_params(src: TableSource) -> dict[str, Any]:
    params: dict[str, Any] = {"files": [str(p) for p in src.files]}
    if src.format == "csv":
        if src.header is None:
            raise ValueError("read the CSV header first (read_csv_header)")
        params["columns"] = {name: "VARCHAR" for name in src.header}
    return params


def read_csv_header(drop: Path, src: TableSource) -> None:
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
                    relative_name(drop, path),
                    None,
                    [{"file": relative_name(drop, path), "line": 1}],
                ),
                [path],
            ) from None
        except (OSError, EOFError, csv.Error) as exc:
            raise DropError(
                Problem(
                    "malformed_csv",
                    f"cannot be read as a (gzipped) CSV table: {exc}",
                    src.table,
                    relative_name(drop, path),
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
                    relative_name(drop, path),
                ),
                [path],
            )
        headers.append(header)
    if any(h != headers[0] for h in headers):
        odd = [
            relative_name(drop, p)
            for p, h in zip(src.files, headers, strict=True)
            if h != headers[0]
        ]
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


def row_number_sql(src: TableSource) -> str:
    """1-based data row within its file (for CSV, the line number is this + 1)."""
    if src.format == "parquet":
        return "file_row_number + 1"
    return "row_number() OVER (PARTITION BY __source_file)"


def _reading(col: str, spec_type: str, delivered: str) -> tuple[str, str | None]:
    """SQL reading delivered column `col` as the contract type, and a test for a failed read."""
    q = quote_ident(col)
    if delivered in EXACT[spec_type]:
        expr = q if delivered in ("VARCHAR", "BIGINT", "DOUBLE", "TIMESTAMP", "BOOLEAN") else None
        target = {
            "int": "BIGINT", "float": "DOUBLE", "ts": "TIMESTAMP", "str": "VARCHAR",
            "bool": "BOOLEAN",
        }[spec_type]  # fmt: skip
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
    elif spec_type == "bool":
        # numbers: only 0 and 1 (a 2 is not quietly true); text: the words of BOOL_TEXT
        text = f"lower(trim(CAST({q} AS VARCHAR)))"
        expr = (
            f"CASE WHEN {q} IN (0, 1) THEN {q} = 1 END"
            if delivered in EXACT["float"] or delivered.startswith("DECIMAL")
            else f"CASE WHEN regexp_full_match({text}, '{BOOL_TEXT}') "
            f"THEN CAST({text} AS BOOLEAN) END"
        )
    else:
        expr = f"TRY_CAST({q} AS DOUBLE)"
    return expr, f"{q} IS NOT NULL AND ({expr}) IS NULL"


def describe_source(con: duckdb.DuckDBPyConnection, src: TableSource) -> list[tuple[str, str]]:
    rows = con.execute(f"DESCRIBE SELECT * FROM {reader_sql(src)}", reader_params(src)).fetchall()
    return [(r[0], r[1]) for r in rows if r[0] not in ("__source_file", "file_row_number")]


def land_table(
    con: duckdb.DuckDBPyConnection, drop: Path, drop_id: str, src: TableSource, tc: TableContract
) -> tuple[int, list[Problem]]:
    """Read one table of the drop into `landing_<table>`; raise DropError if it cannot."""
    for path in src.files:
        if path.stat().st_size == 0:
            raise DropError(
                Problem(
                    "empty_file",
                    "the file is empty (0 bytes)",
                    src.table,
                    relative_name(drop, path),
                    0,
                ),
                [path],
            )
    if src.format == "csv":
        read_csv_header(drop, src)
    try:
        delivered = describe_source(con, src)
    except duckdb.Error as exc:
        raise read_error_problem(con, drop, src, exc) from None
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
        f"{row_number_sql(src)} AS source_row, {', '.join(selects)} FROM {reader_sql(src)}"
    )
    params = {"drop_id": drop_id, "prefix": prefix, **reader_params(src)}
    if src.format == "parquet" and not bad_tests:
        per_file = _land_as_view(con, drop, drop_id, src, selects)
    else:
        try:
            con.execute(f"INSERT INTO landing_{src.table} BY NAME {select}", params)
        except duckdb.Error as exc:
            raise read_error_problem(con, drop, src, exc) from None
        per_file = dict(
            con.execute(
                f"SELECT source_file, count(*) FROM landing_{src.table} GROUP BY ALL"
            ).fetchall()
        )
    problems = []
    for path in src.files:
        if per_file.get(relative_name(drop, path), 0) == 0:
            problems.append(
                Problem(
                    "no_rows",
                    "the file has a header but no rows (0 rows); leave the table out of the drop instead",
                    src.table,
                    relative_name(drop, path),
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
    reader = reader_sql(src).replace("$files", files)  # our own text: no delivered names in it
    try:
        per_file = dict(
            con.execute(
                f"SELECT replace(__source_file, $prefix, ''), count(*) FROM {reader_sql(src)} "
                "GROUP BY ALL",
                {"prefix": prefix, **reader_params(src)},
            ).fetchall()
        )
    except duckdb.Error as exc:
        raise read_error_problem(con, drop, src, exc) from None
    con.execute(f"DROP TABLE IF EXISTS landing_{src.table}")
    con.execute(
        f"CREATE OR REPLACE TEMP VIEW landing_{src.table} AS "
        f"SELECT {quote_literal(drop_id)} AS drop_id, "
        f"replace(__source_file, {quote_literal(prefix)}, '') AS source_file, "
        f"{row_number_sql(src)} AS source_row, {', '.join(selects)} FROM {reader}"
    )
    return per_file


def relative_name(drop: Path, path: Path) -> str:
    return path.relative_to(drop).as_posix()


def read_error_problem(
    con: duckdb.DuckDBPyConnection, drop: Path, src: TableSource, exc: duckdb.Error
) -> DropError:
    """Turn a reader failure into a plain problem naming the file(s) and what is wrong."""
    bad_files = []
    for path in src.files:  # find the culprit(s) among a split folder's parts
        try:
            one = TableSource(src.table, path.name, [path], src.format, src.header)
            # hash every value: a bare count(*) may be answered from metadata alone
            con.execute(
                f"SELECT sum(hash(t)) FROM {reader_sql(one)} AS t", reader_params(one)
            ).fetchall()
        except duckdb.Error as file_exc:
            bad_files.append((path, file_exc))
    if not bad_files:  # every file reads on its own: the failure is ours, not the data's
        raise exc
    path, first = bad_files[0]
    detail = str(first).strip().splitlines()[0]
    names = ", ".join(relative_name(drop, p) for p, _ in bad_files)
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
            "file": relative_name(drop, path),
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
            reader_params(one),
        ).fetchall()
        rows = con.execute(
            "SELECT line, error_type, csv_line FROM csv_rejects ORDER BY line"
        ).fetchall()
    except duckdb.Error:
        return []
    return [{"line": r[0], "error_type": str(r[1]), "csv_line": r[2]} for r in rows]
