"""Check a landed drop against the data contract: the `expectations/` suites and cross-table rules.

The suites in `expectations/<table>.json` are the single statement of the per-table rules
(columns and types in `meta.contract`; nulls, ranges, patterns, uniqueness as GX
expectations). They are enforced twice, on purpose:

* in SQL, over every row of the drop, by translating each expectation into a predicate that
  DuckDB evaluates on the landing tables. This is what decides whether a drop merges: it
  sees every row (GX on pandas chunks cannot check uniqueness across chunks) and it is fast.
* by Great Expectations itself, on pandas batches pulled from DuckDB in bounded chunks, which
  writes the data docs. A GX failure that the SQL rules did not also report is a bug in the
  translation and rejects the drop too (rule `gx_disagrees`).

The cross-table rules (references into this drop or earlier ones, slot unique in its lot, a
wafer's lot consistent with earlier drops, keys that disagree with earlier drops) only exist
in SQL. Every rule violation is recorded per row in the temp table `violations`, so the
ingest can tell which rows broke what and keep them in quarantine.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

import duckdb

from flows.db import quote_ident

EXPECTATIONS_DIR = Path(__file__).resolve().parent.parent / "expectations"
TABLES = ("lots", "wafers", "step_history", "inline_meas", "sort_yield", "sort_die")
SQL_TYPES = {"str": "VARCHAR", "int": "BIGINT", "float": "DOUBLE", "ts": "TIMESTAMP"}
N_EXAMPLES = 5
GX_CHUNK_ROWS = 250_000
GX_PARTIAL_EXAMPLES = 20  # unexpected values kept per expectation (GX's own default)

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str  # contract type: str | int | float | ts
    required: bool

    @property
    def sql_type(self) -> str:
        return SQL_TYPES[self.type]


@dataclass(frozen=True)
class TableContract:
    """One contract table as its expectation suite states it."""

    table: str
    columns: tuple[ColumnSpec, ...]
    key: tuple[str, ...]
    expectations: tuple[dict[str, Any], ...]
    suite: dict[str, Any]

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)


@dataclass
class Problem:
    """One broken rule, in plain words: which table and file, which rule, how many rows."""

    rule: str
    message: str
    table: str | None = None
    file: str | None = None
    count: int | None = None
    examples: list[dict[str, Any]] = field(default_factory=list)
    severity: Severity = "error"

    def __str__(self) -> str:
        text = f"{self.file or self.table or 'drop'}: [{self.rule}] {self.message}"
        if self.examples:
            shown = "; ".join(json.dumps(e, default=str) for e in self.examples[:3])
            text += f" e.g. {shown}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "rule": self.rule,
            "message": self.message,
            "table": self.table,
            "file": self.file,
            "count": self.count,
            "examples": self.examples,
            "severity": self.severity,
        }


@dataclass
class GxExpectationResult:
    """One expectation of a suite, its GX results summed over the chunks GX was fed.

    Counts are None for expectations on the table's shape (a column exists, its dtype),
    which GX answers with an observed value rather than rows.
    """

    index: int  # position in the suite
    type: str
    columns: list[str]
    rule: str | None  # the suite's name for it, as the SQL rules and quarantine use it
    success: bool = True
    element_count: int | None = None
    missing_count: int | None = None
    unexpected_count: int | None = None
    partial_unexpected: list[Any] = field(default_factory=list)
    exception: str | None = None

    @property
    def unexpected_percent(self) -> float | None:
        """Of the non-missing values GX saw, as GX states it for a single batch."""
        if self.unexpected_count is None or not self.element_count:
            return None
        checked = self.element_count - (self.missing_count or 0)
        return 100.0 * self.unexpected_count / checked if checked else None

    def add(self, chunk: Any) -> None:
        """Fold in the result of this expectation on one more chunk."""
        self.success &= bool(chunk.success)
        info = chunk.exception_info or {}
        if info.get("raised_exception") and self.exception is None:
            self.exception = str(info.get("exception_message") or "raised an exception")[:500]
        res = chunk.result or {}
        for name in ("element_count", "missing_count", "unexpected_count"):
            if res.get(name) is not None:
                setattr(self, name, (getattr(self, name) or 0) + int(res[name]))
        room = GX_PARTIAL_EXAMPLES - len(self.partial_unexpected)
        self.partial_unexpected += list(res.get("partial_unexpected_list") or [])[:room]


@dataclass
class GxTableReport:
    """What Great Expectations said about one table (over the rows it was shown)."""

    table: str
    success: bool
    rows_checked: int
    rows_total: int  # rows of the table in the drop; GX saw the first `rows_checked`
    chunks: int
    expectations: list[GxExpectationResult]

    @property
    def failed(self) -> dict[str, int]:
        """ "expectation_type(first column)" -> unexpected rows, for the failed expectations."""
        return {
            f"{e.type}({e.columns[0] if e.columns else ''})": e.unexpected_count or 0
            for e in self.expectations
            if not e.success
        }


@dataclass
class ValidationResult:
    problems: list[Problem]
    gx: list[GxTableReport] = field(default_factory=list)
    docs_dir: Path | None = None

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def ok(self) -> bool:
        return not self.errors


@cache
def load_contract(expectations_dir: Path = EXPECTATIONS_DIR) -> dict[str, TableContract]:
    """Read the suites in `expectations_dir` (plain JSON; no GX import needed)."""
    contract: dict[str, TableContract] = {}
    for table in TABLES:
        path = expectations_dir / f"{table}.json"
        suite = json.loads(path.read_text(encoding="utf-8"))
        spec = suite["meta"]["contract"]
        contract[table] = TableContract(
            table=table,
            columns=tuple(ColumnSpec(c["name"], c["type"], c["required"]) for c in spec["columns"]),
            key=tuple(spec["key"]),
            expectations=tuple(suite["expectations"]),
            suite=suite,
        )
    return contract


# --- SQL rules ---------------------------------------------------------------------------

VIOLATIONS_DDL = """
CREATE OR REPLACE TEMP TABLE violations (
    table_name VARCHAR, rule VARCHAR, source_file VARCHAR, source_row BIGINT, detail VARCHAR
)
"""


@dataclass(frozen=True)
class RowRule:
    """A rule evaluated in SQL: `bad` selects the offending landing rows of `table`."""

    table: str
    rule: str
    description: str
    bad: str  # a query yielding (source_file, source_row, detail)
    params: tuple[Any, ...] = ()


@dataclass(frozen=True)
class RowPredicate:
    """A per-row rule: `test` is true on an offending row of `landing_<table>`.

    All predicates of a table are checked in one scan (see `_scan_predicates`).
    """

    table: str
    rule: str
    description: str
    test: str
    detail: str  # VARCHAR expression shown in the examples
    test_params: tuple[Any, ...] = ()
    detail_params: tuple[Any, ...] = ()
    pattern_of: str | None = None  # the column, for a pattern test


def suite_rules(tc: TableContract) -> list[RowPredicate]:
    """Translate the row-level expectations of a suite into SQL tests on `landing_<table>`."""
    preds: list[RowPredicate] = []
    for exp in tc.expectations:
        kind, kw, meta = exp["type"], exp["kwargs"], exp.get("meta", {})
        rule, desc = meta.get("rule", kind), meta.get("description", kind)
        col = quote_ident(kw["column"]) if "column" in kw else None
        if kind == "expect_column_values_to_be_in_type_list":
            # the landing cast recorded every value it could not read as the contract type
            name = kw["column"]
            ts = tc.column(name).type == "ts"
            preds.append(
                RowPredicate(
                    tc.table,
                    "unparsable_timestamp" if ts else "wrong_type",
                    f"{name} must be {'an ISO-8601 timestamp' if ts else tc.column(name).type}",
                    "bad_cast IS NOT NULL AND list_contains(bad_cast, ?)",
                    "?",
                    (name,),
                    (name,),
                )
            )
        elif kind == "expect_column_values_to_not_be_null":
            preds.append(
                RowPredicate(
                    tc.table,
                    rule,
                    desc,
                    f"{col} IS NULL AND (bad_cast IS NULL OR NOT list_contains(bad_cast, ?))",
                    "?",
                    (kw["column"],),
                    (kw["column"],),
                )
            )
        elif kind == "expect_column_values_to_be_between":
            conds, params = [], []
            if kw.get("min_value") is not None:
                conds.append(f"{col} < ?")
                params.append(kw["min_value"])
            if kw.get("max_value") is not None:
                conds.append(f"{col} > ?")
                params.append(kw["max_value"])
            preds.append(
                RowPredicate(
                    tc.table,
                    rule,
                    desc,
                    " OR ".join(conds),
                    f"CAST({col} AS VARCHAR)",
                    tuple(params),
                )
            )
        elif kind == "expect_column_values_to_match_regex":
            preds.append(
                RowPredicate(
                    tc.table,
                    rule,
                    desc,
                    f"{col} IS NOT NULL AND NOT regexp_full_match({col}, ?)",
                    col,
                    (kw["regex"],),
                    pattern_of=kw["column"],
                )
            )
        elif kind == "expect_column_pair_values_a_to_be_greater_than_b":
            a, b = quote_ident(kw["column_A"]), quote_ident(kw["column_B"])
            op = "<" if kw.get("or_equal") else "<="
            preds.append(
                RowPredicate(
                    tc.table,
                    rule,
                    desc,
                    f"{a} {op} {b}",
                    f"CAST({a} AS VARCHAR) || ' vs ' || CAST({b} AS VARCHAR)",
                )
            )
        # uniqueness is checked over the whole drop in `duplicate_key_rule`;
        # column existence and types are settled when the drop lands.
    return preds


def _scan_predicates(
    con: duckdb.DuckDBPyConnection, tc: TableContract, preds: list[RowPredicate]
) -> None:
    """Record every row breaking any of `preds` in `violations`, in one scan of the table.

    Pattern tests on columns that repeat few values (operation, tool, ...) are evaluated once
    per distinct combination of those columns instead of once per row: regular expressions
    are the costliest test here and a tool id recurs on millions of rows.
    """
    few_values = [
        p for p in preds
        if p.pattern_of and p.pattern_of not in tc.key and p.pattern_of != "wafer_id"
    ]  # fmt: skip
    per_row = [p for p in preds if p not in few_values]
    land = f"landing_{tc.table}"
    if per_row:
        _insert_violations(con, tc.table, land, per_row)
    if few_values:
        cols = list(dict.fromkeys(quote_ident(p.pattern_of) for p in few_values))
        test = " OR ".join(f"({p.test})" for p in few_values)
        params = [x for p in few_values for x in p.test_params]
        on = " AND ".join(f"l.{c} IS NOT DISTINCT FROM bad.{c}" for c in cols)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE bad_combos AS SELECT * FROM "
            f"(SELECT DISTINCT {', '.join(cols)} FROM {land}) WHERE {test}",
            params,
        )
        (n,) = con.execute("SELECT count(*) FROM bad_combos").fetchall()[0]
        if n:
            rows = f"(SELECT l.* FROM {land} AS l JOIN bad_combos AS bad ON {on})"
            _insert_violations(con, tc.table, rows, few_values)


def _insert_violations(
    con: duckdb.DuckDBPyConnection, table: str, rows: str, preds: list[RowPredicate]
) -> None:
    cases, case_params, tests, test_params = [], [], [], []
    for p in preds:
        cases.append(
            f"CASE WHEN {p.test} THEN {{'rule': ?, 'detail': CAST({p.detail} AS VARCHAR)}} END"
        )
        case_params += [*p.test_params, p.rule, *p.detail_params]
        tests.append(f"({p.test})")
        test_params += p.test_params
    con.execute(
        f"""INSERT INTO violations
            SELECT ?, v.rule, source_file, source_row, v.detail FROM (
                SELECT source_file, source_row, unnest([{", ".join(cases)}]) AS v
                FROM {rows} AS r WHERE {" OR ".join(tests)}
            ) WHERE v IS NOT NULL""",
        [table, *case_params, *test_params],
    )


def _key_sql(tc: TableContract) -> str:
    return ", ".join(quote_ident(k) for k in tc.key)


def _row_sql(tc: TableContract) -> str:
    return "(" + ", ".join(quote_ident(c) for c in tc.names) + ")"


def find_repeated_keys(con: duckdb.DuckDBPyConnection, tc: TableContract) -> int:
    """Keys that occur more than once in the landed table, into temp `repeated_<table>`.

    Returns how many there are. The ingest reads the same table to know whether the
    merge must de-duplicate verbatim repeats (so the drop is grouped by key only once).
    """
    key = tc.key or ("wafer_id", "operation", "param", "site")
    cols = ", ".join(quote_ident(k) for k in key)
    # group 64-bit hashes (cheap, fixed width), then the real keys of the few that repeat
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE repeated_{tc.table} AS
            WITH twice AS (
                SELECT h FROM (SELECT hash({cols}) AS h FROM landing_{tc.table})
                GROUP BY h HAVING count(*) > 1
            )
            SELECT {cols} FROM landing_{tc.table}
            WHERE hash({cols}) IN (SELECT h FROM twice)
            GROUP BY ALL HAVING count(*) > 1"""
    )
    (n,) = con.execute(f"SELECT count(*) FROM repeated_{tc.table}").fetchall()[0]
    return int(n)


def duplicate_key_rule(tc: TableContract) -> RowRule | None:
    """Rows sharing a key with different values (verbatim repeats are collapsed, not errors).

    Reads `repeated_<table>` (see `find_repeated_keys`).
    """
    if not tc.key:
        return None
    land, key = f"landing_{tc.table}", _key_sql(tc)
    return RowRule(
        tc.table,
        "duplicate_key",
        f"({', '.join(tc.key)}) must be unique; rows repeat a key with different values",
        f"""WITH versions AS (
                SELECT {key}, count(DISTINCT {_row_sql(tc)}) AS n_versions
                FROM {land} SEMI JOIN repeated_{tc.table} USING ({key}) GROUP BY ALL
            )
            SELECT l.source_file, l.source_row, CAST(({key}) AS VARCHAR)
            FROM {land} AS l JOIN versions AS v USING ({key})
            WHERE v.n_versions > 1""",
    )


def cross_table_rules(present: set[str]) -> list[RowRule]:
    """Rules that look beyond one table: references, lot/slot consistency, earlier drops."""
    rules: list[RowRule] = []
    known_lots = "SELECT lot_id FROM landing_lots UNION ALL SELECT lot_id FROM core.lots"
    known_wafers = "SELECT wafer_id FROM landing_wafers UNION ALL SELECT wafer_id FROM core.wafers"
    if "wafers" in present:
        rules.append(
            RowRule(
                "wafers",
                "unknown_lot",
                "lot_id must exist in lots (this drop or an earlier one)",
                f"SELECT source_file, source_row, lot_id FROM landing_wafers "
                f"WHERE lot_id IS NOT NULL AND lot_id NOT IN ({known_lots})",
            )
        )
        rules.append(
            RowRule(
                "wafers",
                "lot_conflict",
                "a wafer's lot must agree with earlier drops",
                "SELECT l.source_file, l.source_row, l.wafer_id || ': lot ' || l.lot_id || "
                "' here, lot ' || c.lot_id || ' in drop ' || c.drop_id "
                "FROM landing_wafers AS l JOIN core.wafers AS c USING (wafer_id) "
                "WHERE l.lot_id IS DISTINCT FROM c.lot_id",
            )
        )
        rules.append(
            RowRule(
                "wafers",
                "slot_not_unique_in_lot",
                "slot must be unique within its lot (this drop and earlier ones)",
                """WITH everyone AS (
                       SELECT DISTINCT wafer_id, lot_id, slot FROM landing_wafers
                       UNION
                       SELECT wafer_id, lot_id, slot FROM core.wafers
                   ),
                   clash AS (
                       SELECT lot_id, slot FROM everyone
                       GROUP BY ALL HAVING count(DISTINCT wafer_id) > 1
                   )
                   SELECT l.source_file, l.source_row, l.lot_id || ' slot ' || l.slot
                   FROM landing_wafers AS l SEMI JOIN clash USING (lot_id, slot)""",
            )
        )
    for table in ("step_history", "inline_meas", "sort_yield", "sort_die"):
        if table in present:
            rules.append(
                RowRule(
                    table,
                    "unknown_wafer",
                    "wafer_id must exist in wafers (this drop or an earlier one)",
                    f"SELECT source_file, source_row, wafer_id FROM landing_{table} AS l "
                    f"WHERE wafer_id IS NOT NULL AND NOT EXISTS (SELECT 1 FROM ({known_wafers}) "
                    "AS k WHERE k.wafer_id = l.wafer_id)",
                )
            )
    return rules


def earlier_drop_rules(con: duckdb.DuckDBPyConnection, present: set[str]) -> list[RowRule]:
    """A keyed row that an earlier drop delivered with different values is a conflict."""
    contract = load_contract()
    rules: list[RowRule] = []
    for table in ("lots", "wafers", "step_history", "sort_die", "sort_yield"):
        if table not in present:
            continue
        (n_core,) = con.execute(f"SELECT count(*) FROM core.{table}").fetchall()[0]
        if n_core == 0:  # nothing delivered before: skip the join on big first loads
            continue
        tc = contract[table]
        cols = [c for c in tc.names if c not in tc.key]
        differs = " OR ".join(
            f"l.{quote_ident(c)} IS DISTINCT FROM c.{quote_ident(c)}" for c in cols
        )
        on = " AND ".join(
            f"l.{quote_ident(k)} IS NOT DISTINCT FROM c.{quote_ident(k)}" for k in tc.key
        )
        if table == "wafers":  # lot_conflict already names the lot; here: the slot
            differs = "l.slot IS DISTINCT FROM c.slot"
        rules.append(
            RowRule(
                table,
                "conflicts_earlier_drop",
                f"a row with the same ({', '.join(tc.key)}) arrived in an earlier drop "
                "with different values",
                f"SELECT l.source_file, l.source_row, 'earlier drop ' || c.drop_id "
                f"FROM landing_{table} AS l JOIN core.{table} AS c ON {on} WHERE {differs}",
            )
        )
    return rules


def run_sql_rules(
    con: duckdb.DuckDBPyConnection, present: Iterable[str], sources: dict[str, str]
) -> list[Problem]:
    """Evaluate every SQL rule on the landed tables; fill `violations`; one Problem per rule."""
    present = set(present)
    contract = load_contract()
    con.execute(VIOLATIONS_DDL)
    rules: list[RowRule] = []
    described: list[RowRule | RowPredicate] = []
    for table in TABLES:
        if table in present:
            find_repeated_keys(con, contract[table])
            preds = suite_rules(contract[table])
            _scan_predicates(con, contract[table], preds)
            described.extend(preds)
            dup = duplicate_key_rule(contract[table])
            if dup:
                rules.append(dup)
    rules += cross_table_rules(present) + earlier_drop_rules(con, present)
    for rule in rules:
        con.execute(
            f"INSERT INTO violations SELECT ?, ?, * FROM ({rule.bad}) AS bad(f, r, d)",
            [rule.table, rule.rule, *rule.params],
        )
    descriptions: dict[tuple[str, str], RowRule | RowPredicate] = {}
    for rule in described + rules:
        descriptions.setdefault((rule.table, rule.rule), rule)
    counts = con.execute(
        "SELECT table_name, rule, count(DISTINCT (source_file, source_row)) "
        "FROM violations GROUP BY ALL"
    ).fetchall()
    order = {key: i for i, key in enumerate(descriptions)}
    counts.sort(key=lambda row: order[(row[0], row[1])])
    return [
        _describe(con, descriptions[(table, rule)], count, sources.get(table, table))
        for table, rule, count in counts
    ]


def _describe(
    con: duckdb.DuckDBPyConnection, rule: RowRule | RowPredicate, count: int, source: str
) -> Problem:
    """A plain-words message for one rule, with a few offending rows as delivered."""
    tc = load_contract()[rule.table]
    cols = ", ".join(f"l.{quote_ident(c)}" for c in tc.names)
    rows = con.execute(
        f"""SELECT v.source_file, v.source_row, list(DISTINCT v.detail), {cols}
            FROM violations AS v JOIN landing_{rule.table} AS l USING (source_file, source_row)
            WHERE v.table_name = ? AND v.rule = ?
            GROUP BY ALL ORDER BY v.source_file, v.source_row LIMIT ?""",
        [rule.table, rule.rule, N_EXAMPLES],
    ).fetchall()
    examples = []
    for source_file, source_row, details, *values in rows:
        example = {"file": source_file, "row": source_row, "detail": ", ".join(map(str, details))}
        example.update({c: v for c, v in zip(tc.names, values, strict=True) if v is not None})
        examples.append(example)
    (details,) = con.execute(
        "SELECT list(DISTINCT detail) FROM (SELECT detail FROM violations "
        "WHERE table_name = ? AND rule = ? AND detail IS NOT NULL LIMIT 1000)",
        [rule.table, rule.rule],
    ).fetchall()[0]
    what = rule.description
    if rule.rule in ("wrong_type", "unparsable_timestamp", "not_null") and details:
        what = f"{what} (column {', '.join(sorted(details)[:6])})"
    noun = "row" if count == 1 else "rows"
    return Problem(
        rule=rule.rule,
        message=f"{count} {noun} of {rule.table} break the rule: {what}",
        table=rule.table,
        file=source,
        count=count,
        examples=examples,
    )


# --- Great Expectations ------------------------------------------------------------------


def _gx_context(docs_dir: Path | None):
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import great_expectations as gx  # slow import (seconds): only when validation runs

    context = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        context.variables.progress_bars = ProgressBarsConfig(globally=False)
    except Exception:  # cosmetic only; older/newer GX may name this differently
        pass
    if docs_dir is not None:
        context.add_data_docs_site(
            site_name="yieldrank",
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
    max_rows: int | None = None,
) -> list[GxTableReport]:
    """Run each table's suite with GX over pandas chunks of its landing table.

    Memory stays bounded by `chunk_rows`; `max_rows` (per table) caps the time GX takes on
    very large drops (the SQL rules always see every row). Data docs go to `docs_dir`.
    """
    gx, context = _gx_context(docs_dir)
    source = context.data_sources.add_pandas("landing")
    contract = load_contract()
    reports: list[GxTableReport] = []
    for table in (t for t in TABLES if t in set(present)):
        tc = contract[table]
        suite_dict = {k: v for k, v in tc.suite.items() if k != "id"}
        suite = context.suites.add(gx.ExpectationSuite(**suite_dict))
        batch = source.add_dataframe_asset(table).add_batch_definition_whole_dataframe("chunk")
        vd = context.validation_definitions.add(
            gx.ValidationDefinition(name=f"validate_{table}", data=batch, suite=suite)
        )
        (rows_total,) = con.execute(f"SELECT count(*) FROM landing_{table}").fetchall()[0]
        cols = ", ".join(quote_ident(c) for c in tc.names)
        limit = f" LIMIT {int(max_rows)}" if max_rows is not None else ""
        reader = con.sql(
            f"SELECT {cols} FROM landing_{table}{limit}"  # insertion (file) order
        ).to_arrow_reader(chunk_rows)
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
        rows = chunks = 0
        success = True
        for record_batch in _rebatch(reader, chunk_rows):
            frame = record_batch.to_pandas()
            for name in frame.columns:  # GX's type expectations know numpy dtypes, not `str`
                if tc.column(name).type == "str":
                    frame[name] = frame[name].astype(object)
            result = vd.run(batch_parameters={"dataframe": frame}, result_format="SUMMARY")
            rows += len(frame)
            chunks += 1
            success &= bool(result.success)
            for r in result.results:
                config = r.expectation_config
                results[_expectation_key(config.type, config.kwargs)].add(r)
        reports.append(
            GxTableReport(table, success, rows, int(rows_total), chunks, list(results.values()))
        )
    if docs_dir is not None:
        context.build_data_docs()
    return reports


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


def validate(
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
    problems = run_sql_rules(con, present, sources or {})
    reports: list[GxTableReport] = []
    docs = Path(docs_dir) if docs_dir is not None else None
    if gx and present:
        reports = run_gx(
            con, present, docs_dir=docs, chunk_rows=gx_chunk_rows, max_rows=gx_max_rows
        )
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
    return ValidationResult(problems=problems, gx=reports, docs_dir=docs)
