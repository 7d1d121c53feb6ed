"""The Great Expectations side of the contract check: the suites run on bounded pandas chunks
(or a sample) pulled from DuckDB, their results, and the data docs.

What GX is shown and why uniqueness is answered by SQL: see `flows.warehouse.contract_rules`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import duckdb

from flows.warehouse.contract import (
    GX_CHUNK_ROWS,
    GX_FLAGGED_ROWS,
    GX_MAX_ROWS,
    GX_PARTIAL_EXAMPLES,
    TABLES,
    WHOLE_DROP_EXPECTATIONS,
    GxExpectationResult,
    GxTableReport,
    TableContract,
    load_contract,
)
from flows.warehouse.db import quote_ident

# --- Great Expectations ------------------------------------------------------------------


DOCS_SITE = "yieldrank"


def _gx_context(docs_dir: Path | None):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # slow import (seconds): only when validation runs

    context = gx.get_context(mode="ephemeral")
    # the ephemeral context comes with a docs site in a fresh temp folder: building it too
    # would double the time data docs take and leave a folder behind on every ingest
    for name, site in dict(context.variables.data_docs_sites or {}).items():
        context.delete_data_docs_site(name)
        folder = site.get("store_backend", {}).get("base_directory")
        if folder and Path(folder).is_dir() and not any(Path(folder).iterdir()):
            Path(folder).rmdir()
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # cosmetic only; older/newer GX may name this differently
        pass
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name=DOCS_SITE,
            site_config={
                "class_name": "SiteBuilder",
                "store_backend": {
                    "class_name": "TupleFilesystemStoreBackend",
                    "base_directory": str(Path(docs_dir).resolve()),
                },
                "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
            },
        )
    return gx, context


def run_gx(
    con: duckdb.DuckDBPyConnection,
    present: Iterable[str],
    *,
    docs_dir: Path | None = None,
    chunk_rows: int = GX_CHUNK_ROWS,
    max_rows: int | None = GX_MAX_ROWS,
) -> list[GxTableReport]:
    """Run each table's suite with GX over pandas chunks of (a sample of) its landing table.

    Call after `run_sql_rules` on the same connection: the uniqueness expectations are
    answered from its whole-drop `duplicate_key` rule, and the rows it flagged are shown to GX.
    Memory stays bounded by `chunk_rows`; `max_rows` (per table; None = every row) bounds the
    time GX takes on very large drops (see `gx_sample_sql`). Data docs go to `docs_dir`.
    """
    if not temp_table_exists(con, "violations"):
        raise RuntimeError("run_gx needs the SQL rules' `violations`: call run_sql_rules first")
    gx, context = _gx_context(docs_dir)
    source = context.data_sources.add_pandas("landing")
    contract = load_contract()
    reports: list[GxTableReport] = []
    for table in (t for t in TABLES if t in set(present)):
        tc = contract[table]
        by_gx = [e for e in tc.expectations if e["type"] not in WHOLE_DROP_EXPECTATIONS]
        suite_dict = {k: v for k, v in tc.suite.items() if k != "id"} | {"expectations": by_gx}
        suite = context.suites.add(gx.ExpectationSuite(**suite_dict))
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("chunk")
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{table}", data=batch, suite=suite)
        )
        (rows_total,) = con.execute(f"SELECT count(*) FROM landing_{table}").fetchall()[0]
        results = {
            _expectation_key(exp["type"], exp["kwargs"]): GxExpectationResult(
                i, exp["type"], _columns_of(exp["kwargs"]), exp.get("meta", {}).get("rule")
            )
            for i, exp in enumerate(tc.expectations)
        }
        if len(results) < len(tc.expectations):  # their results could not be told apart
            raise ValueError(
                f"expectations/{table}.json states one expectation type twice on the same columns"
            )
        for exp in tc.expectations:
            if exp["type"] in WHOLE_DROP_EXPECTATIONS:
                key = _expectation_key(exp["type"], exp["kwargs"])
                _answer_from_sql(con, tc, results[key], int(rows_total))
        query, sample = gx_sample_sql(con, tc, int(rows_total), max_rows)
        reader = con.sql(query).to_arrow_reader(chunk_rows)
        rows = chunks = 0
        for record_batch in _rebatch(reader, chunk_rows):
            frame = record_batch.to_pandas(types_mapper=_pandas_strings)
            result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            rows += len(frame)
            chunks += 1
            for r in result.results:
                config = r.expectation_config
                results[_expectation_key(config.type, config.kwargs)].add(r)
        expectations = list(results.values())
        success = all(e.success for e in expectations)
        reports.append(
            GxTableReport(table, success, rows, int(rows_total), chunks, expectations, sample)
        )
    if docs_dir is not None:
        context.build_data_docs(site_names=[DOCS_SITE])
    return reports


def gx_sample_sql(
    con: duckdb.DuckDBPyConnection, tc: TableContract, rows_total: int, max_rows: int | None
) -> tuple[str, str]:
    """The query for the rows of `landing_<table>` GX is shown, and how they were chosen.

    Up to `max_rows` rows (or with no cap): all of them, in file order. Beyond: a systematic
    sample of each file, evenly spaced at one row in rows_total / max_rows (row r of a file is
    taken when r * max_rows // rows_total steps up), so at most `max_rows` rows, spread over
    the whole drop rather than its first files and the same rows on every run; plus up to
    `GX_FLAGGED_ROWS` rows the SQL rules flagged that the sample missed. The sample is copied
    to the temp table `gx_sample_<table>` (bounded) so the chunks stream from it.
    """
    cols = ", ".join(quote_ident(c) for c in tc.names)
    land = f"landing_{tc.table}"
    if max_rows is None or rows_total <= max_rows:
        return f"SELECT {cols} FROM {land}", "all rows"  # insertion (file) order
    m, n = int(max_rows), int(rows_total)
    sample = f"gx_sample_{tc.table}"
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE {sample} AS
            SELECT source_file, source_row, {cols} FROM {land}
            WHERE (source_row * {m}) // {n} > ((source_row - 1) * {m}) // {n}"""
    )
    (spread,) = con.execute(f"SELECT count(*) FROM {sample}").fetchall()[0]
    how = f"one row in {n / m:,.1f} of each file ({spread:,} rows)"
    (flagged,) = con.execute(
        "SELECT count(*) FROM violations WHERE table_name = ?", [tc.table]
    ).fetchall()[0]
    if flagged:  # (a semi join with nothing to find would still scan the whole table)
        con.execute(
            f"""INSERT INTO {sample}
                SELECT source_file, source_row, {cols} FROM {land} SEMI JOIN (
                    SELECT DISTINCT source_file, source_row FROM violations WHERE table_name = ?
                    EXCEPT SELECT source_file, source_row FROM {sample}
                    ORDER BY ALL LIMIT {GX_FLAGGED_ROWS}
                ) AS flagged USING (source_file, source_row)""",
            [tc.table],
        )
        (added,) = con.execute(f"SELECT count(*) - ? FROM {sample}", [spread]).fetchall()[0]
        how += f" + {added:,} rows the SQL rules flagged"
    return f"SELECT {cols} FROM {sample} ORDER BY source_file, source_row", how


def _answer_from_sql(
    con: duckdb.DuckDBPyConnection, tc: TableContract, result: GxExpectationResult, rows: int
) -> None:
    """Fill a uniqueness expectation's result from the SQL rule that saw the whole drop."""
    rule = result.rule or "duplicate_key"
    result.evaluated_by, result.rows_checked, result.element_count = "sql", rows, rows
    (bad,) = con.execute(
        "SELECT count(DISTINCT (source_file, source_row)) FROM violations "
        "WHERE table_name = ? AND rule = ?",
        [tc.table, rule],
    ).fetchall()[0]
    result.unexpected_count, result.success = int(bad), bad == 0
    if bad:
        cols = ", ".join(quote_ident(c) for c in result.columns)
        examples = con.execute(
            f"""SELECT {cols} FROM landing_{tc.table} SEMI JOIN (
                    SELECT DISTINCT source_file, source_row FROM violations
                    WHERE table_name = ? AND rule = ? ORDER BY ALL LIMIT ?
                ) USING (source_file, source_row) ORDER BY source_file, source_row""",
            [tc.table, rule, GX_PARTIAL_EXAMPLES],
        ).fetchall()
        if len(result.columns) == 1:  # as GX lists them: values, or rows of the column list
            result.partial_unexpected = [row[0] for row in examples]
        else:
            result.partial_unexpected = [
                dict(zip(result.columns, r, strict=True)) for r in examples
            ]


def temp_table_exists(con: duckdb.DuckDBPyConnection, temp_table: str) -> bool:
    (n,) = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = ?", [temp_table]
    ).fetchall()[0]
    return n > 0


def _pandas_strings(arrow_type: Any) -> Any:
    """Arrow strings as pandas' NA-backed `string` dtype (`StringDtype()`).

    GX 1.x type expectations accept that dtype as a whole, but know neither pandas 3's default
    `str` dtype nor anything but a value-by-value check for `object` columns, which made the
    type checks alone about half of GX's time.
    """
    import pandas as pd
    import pyarrow as pa

    if arrow_type in (pa.string(), pa.large_string(), pa.string_view()):
        return pd.StringDtype()
    return None


def _columns_of(kwargs: dict[str, Any]) -> list[str]:
    if "column_list" in kwargs:
        return list(kwargs["column_list"])
    return [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]


def _expectation_key(kind: str, kwargs: dict[str, Any]) -> tuple[str, tuple[str, ...]]:
    """An expectation of a suite as GX hands it back (GX adds kwargs of its own)."""
    return kind, tuple(_columns_of(kwargs))


def _rebatch(reader, rows: int):
    """Arrow record batches of about `rows` rows (DuckDB hands out smaller vectors)."""
    import pyarrow as pa

    pending: list = []
    n = 0
    for rb in reader:
        pending.append(rb)
        n += rb.num_rows
        if n >= rows:
            yield pa.Table.from_batches(pending)
            pending, n = [], 0
    if pending:
        yield pa.Table.from_batches(pending)
