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

The cross-table rules (references into this drop or earlier ones, an equipment event's tool
and chamber seen in the step history, slot unique in its lot, a wafer's lot consistent with
earlier drops, keys that disagree with earlier drops) only exist in SQL. Every rule violation is recorded per row in the temp table `violations`, so the
ingest can tell which rows broke what and keep them in quarantine.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import duckdb

from flows.warehouse.contract import N_EXAMPLES, TABLES, Problem, TableContract, load_contract
from flows.warehouse.db import quote_ident

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
        elif kind == "expect_column_values_to_be_in_set":
            values = list(kw["value_set"])
            preds.append(
                RowPredicate(
                    tc.table,
                    rule,
                    desc,
                    f"{col} IS NOT NULL AND NOT list_contains(?, {col})",
                    f"CAST({col} AS VARCHAR)",
                    (values,),
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
    # a key column that may be null (equipment_events.chamber_id: null = the whole tool) is
    # matched null-safe, as GROUP BY groups it; the other tables keep the plain equi-join
    nullable = any(not tc.column(k).required for k in tc.key)
    if nullable:
        on = " AND ".join(
            f"a.{quote_ident(k)} IS NOT DISTINCT FROM b.{quote_ident(k)}" for k in tc.key
        )
        keyed = f"{land} AS a SEMI JOIN repeated_{tc.table} AS b ON {on}"
        pairs = f"{land} AS a JOIN versions AS b ON {on}"
    else:
        keyed = f"{land} SEMI JOIN repeated_{tc.table} USING ({key})"
        pairs = f"{land} AS a JOIN versions AS b USING ({key})"
    return RowRule(
        tc.table,
        "duplicate_key",
        f"({', '.join(tc.key)}) must be unique; rows repeat a key with different values",
        f"""WITH versions AS (
                SELECT {key}, count(DISTINCT {_row_sql(tc)}) AS n_versions
                FROM {keyed} GROUP BY ALL
            )
            SELECT a.source_file, a.source_row,
                CAST(({", ".join(f"a.{quote_ident(k)}" for k in tc.key)}) AS VARCHAR)
            FROM {pairs}
            WHERE b.n_versions > 1""",
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
    if "equipment_events" in present:
        rules += _equipment_rules()
    return rules


def _equipment_rules() -> list[RowRule]:
    """An event's tool, and its chamber if given, must have processed wafers (step_history,
    this drop or an earlier one). A row with an unknown tool is not also told its chamber is
    unknown: the tool is the one thing to fix."""
    seen = """(SELECT DISTINCT tool_id, chamber_id FROM landing_step_history
               UNION SELECT DISTINCT tool_id, chamber_id FROM core.step_history)"""
    return [
        RowRule(
            "equipment_events",
            "unknown_tool",
            "tool_id must be a tool seen in step_history (this drop or an earlier one)",
            f"""SELECT source_file, source_row, tool_id FROM landing_equipment_events AS e
                WHERE tool_id IS NOT NULL
                  AND NOT EXISTS (SELECT 1 FROM {seen} AS s WHERE s.tool_id = e.tool_id)""",
        ),
        RowRule(
            "equipment_events",
            "unknown_chamber",
            "chamber_id, when given, must be a chamber of that tool seen in step_history "
            "(this drop or an earlier one); leave it empty for an event of the whole tool",
            f"""SELECT source_file, source_row, tool_id || ':' || chamber_id
                FROM landing_equipment_events AS e
                WHERE chamber_id IS NOT NULL
                  AND EXISTS (SELECT 1 FROM {seen} AS s WHERE s.tool_id = e.tool_id)
                  AND NOT EXISTS (SELECT 1 FROM {seen} AS s
                                  WHERE s.tool_id = e.tool_id AND s.chamber_id = e.chamber_id)""",
        ),
    ]


# Why a table's row may not differ from an earlier drop's row with the same key, where the
# generic reason is not the whole story.
CONFLICT_REASONS = {
    # A bin's definition is not replaced by a later delivery (as a sort re-test replaces its
    # row): a re-test carries a test_ts that orders the two rows, a bin definition carries
    # nothing that says which is right, so "the later drop wins" would make the yields depend
    # on the order the drops were ingested in, and would silently recount the good dies of
    # every wafer ever sorted by die. A changed definition is rejected for a person to decide.
    "bin_defs": "bin was defined with another name or good/fail value by an earlier drop; "
    "a bin's definition is not replaced by a later delivery (it would recount every wafer's "
    "good dies)",
}


def earlier_drop_rules(con: duckdb.DuckDBPyConnection, present: set[str]) -> list[RowRule]:
    """A keyed row that an earlier drop delivered with different values is a conflict."""
    contract = load_contract()
    rules: list[RowRule] = []
    keyed = (
        "lots", "wafers", "step_history", "sort_die", "sort_yield", "equipment_events", "bin_defs",
    )  # fmt: skip
    for table in keyed:
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
                CONFLICT_REASONS.get(
                    table,
                    f"a row with the same ({', '.join(tc.key)}) arrived in an earlier drop "
                    "with different values",
                ),
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
        _problem_from_violations(con, descriptions[(table, rule)], count, sources.get(table, table))
        for table, rule, count in counts
    ]


def _problem_from_violations(
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
