"""Check a landed drop against the data contract: the `expectations/` suites and cross-table rules.

The suites in `expectations/<table>.json` are the single statement of the per-table rules
(columns and types in `meta.contract`; nulls, ranges, patterns, uniqueness as GX
expectations). They are enforced twice, on purpose:

* in SQL, over every row of the drop, by translating each expectation into a predicate that
  DuckDB evaluates on the landing tables. This is what decides whether a drop merges: it
  sees every row and it is fast.
* by Great Expectations itself, on pandas batches pulled from DuckDB in bounded chunks, which
  writes the data docs. A GX failure that the SQL rules did not also report is a bug in the
  translation and rejects the drop too (rule `gx_disagrees`).

What GX is shown (see `gx_sample_sql`): every row of a table of up to `gx_max_rows` rows; of
a larger table an evenly spaced systematic sample of at most `gx_max_rows` rows spread over
every file, plus up to `GX_FLAGGED_ROWS` rows the SQL rules found broken, so that GX's report
and data docs show the failures that rejected the drop. GX costs about 5 s per million
step_history rows here (pandas object columns, value by value), so a 15 M-row year in full
would take GX longer than the whole checked ingest; the SQL rules see every row regardless.

Uniqueness is a property of the whole drop, which no chunk or sample can see: a key repeated
in two chunks passes in each. So the suites' uniqueness expectations are not run by GX on
chunks; their result in the same validation result (and in `meta.gx_results`) is the SQL
`duplicate_key` rule's over every row, marked `evaluated_by = "sql"`. Verbatim repeats of a
row are collapsed on merge (loading the same rows twice changes nothing), so they do not
break uniqueness; rows that share a key with different values do.

The cross-table rules (references into this drop or earlier ones, slot unique in its lot, a
wafer's lot consistent with earlier drops, keys that disagree with earlier drops) only exist
in SQL. Every rule violation is recorded per row in the temp table `violations`, so the
ingest can tell which rows broke what and keep them in quarantine.
"""

from __future__ import annotations

import json
import os
import time
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
GX_MAX_ROWS = 100_000  # rows of a table GX sees by default (the SQL rules see all of them)
GX_FLAGGED_ROWS = 10_000  # rows the SQL rules flagged, shown to GX beside the sample
# expectations on the whole drop: reported from the SQL rule, not run by GX on chunks
WHOLE_DROP_EXPECTATIONS = frozenset(
    {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
)
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
    which GX answers with an observed value rather than rows. A uniqueness expectation is
    answered by the SQL rule over the whole drop instead (`evaluated_by == "sql"`,
    `rows_checked` = every row of the table).
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
    evaluated_by: Literal["gx", "sql"] = "gx"
    rows_checked: int | None = None  # None: the rows GX saw of the table (the report's)

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
    rows_checked: int  # rows GX was shown: all, or the sample of `gx_sample_sql`
    rows_total: int  # rows of the table in the drop
    chunks: int
    expectations: list[GxExpectationResult]
    sample: str = "all rows"  # how the rows GX saw were chosen, in words

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
    timings: dict[str, float] = field(default_factory=dict)  # seconds: sql_rules, gx

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
    column: str | None = None  # the column it is about, when its rule is shared by several


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
                    column=name,
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
                    column=kw["column"],
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
                    f"? || ': ' || {col}",  # the column, then the value as delivered
                    (kw["regex"],),
                    (kw["column"],),
                    pattern_of=kw["column"],
                    column=kw["column"],
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
    """Record every row breaking any of `preds` in `violations`.

    The plain tests (nulls, ranges, pairs, casts) are checked in one scan of the table. A
    pattern test is evaluated once per distinct value of its column instead of once per row:
    regular expressions are the costliest test here, and a tool id recurs on millions of rows,
    a wafer id on dozens. The distinct values are materialised before they are tested, or
    DuckDB would push the test below the DISTINCT and run it on every row again.
    """
    land = f"landing_{tc.table}"
    per_row = [p for p in preds if not p.pattern_of]
    if per_row:
        _insert_violations(con, tc.table, land, per_row)
    for p in (p for p in preds if p.pattern_of):
        col = quote_ident(p.pattern_of)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE seen_values AS SELECT DISTINCT {col} FROM {land}"
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE bad_values AS SELECT * FROM seen_values WHERE {p.test}",
            list(p.test_params),
        )
        (n,) = con.execute("SELECT count(*) FROM bad_values").fetchall()[0]
        if n:
            rows = f"(SELECT l.* FROM {land} AS l SEMI JOIN bad_values USING ({col}))"
            _insert_violations(con, tc.table, rows, [p])
    con.execute("DROP TABLE IF EXISTS seen_values")
    con.execute("DROP TABLE IF EXISTS bad_values")


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
    land = f"landing_{tc.table}"
    if len(key) == 2:
        # (wafer, step): group the few hundred thousand wafers, each with the list of its
        # steps, instead of fifteen million keys; only suspect wafers are grouped by key
        # (NULLs drop out of list_distinct, so a NULL makes a suspect: checked, not missed)
        first, second = (quote_ident(k) for k in key)
        candidates = f"""{land} SEMI JOIN (
                SELECT {first} FROM {land} GROUP BY ALL
                HAVING count(*) > len(list_distinct(list({second})))
            ) USING ({first})"""
    else:
        # group 64-bit hashes (cheap, fixed width), then the real keys of the few that repeat
        candidates = f"""{land} WHERE hash({cols}) IN (
                SELECT h FROM (SELECT hash({cols}) AS h FROM {land})
                GROUP BY h HAVING count(*) > 1
            )"""
    con.execute(
        f"""CREATE OR REPLACE TEMP TABLE repeated_{tc.table} AS
            SELECT {cols} FROM {candidates} GROUP BY ALL HAVING count(*) > 1"""
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
    descriptions: dict[tuple[str, str], list[RowRule | RowPredicate]] = {}
    for rule in described + rules:
        descriptions.setdefault((rule.table, rule.rule), []).append(rule)
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
    con: duckdb.DuckDBPyConnection,
    sharing: list[RowRule | RowPredicate],
    count: int,
    source: str,
) -> Problem:
    """A plain-words message for one rule, with a few offending rows as delivered.

    `sharing` are the tests recorded under this table and rule name: several for the rules
    a suite states per column (not_null, pattern, wrong_type); the message describes those
    whose column broke.
    """
    rule = sharing[0]
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
    broken: set[str] = set()
    if len(sharing) > 1:  # which columns: the detail is "column" or, for patterns, "column: value"
        (columns,) = con.execute(
            "SELECT list(DISTINCT split_part(detail, ': ', 1)) FROM violations "
            "WHERE table_name = ? AND rule = ? AND detail IS NOT NULL",
            [rule.table, rule.rule],
        ).fetchall()[0]
        broken = set(columns or [])
    what = (
        "; ".join(
            r.description
            for r in sharing
            if len(sharing) == 1 or getattr(r, "column", None) in broken
        )
        or rule.description
    )
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
