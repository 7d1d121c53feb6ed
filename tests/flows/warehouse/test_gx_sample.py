"""What Great Expectations is shown of a big drop, and uniqueness over the whole drop.

GX runs on pandas batches: on a large table, a systematic sample spread over every file plus
the rows the SQL rules flagged; uniqueness, which no chunk or sample can judge, is answered
in the same result by the SQL rule over every row.
"""

from __future__ import annotations

import json
import math

import pytest

from flows.warehouse.contract import load_contract
from flows.warehouse.drop_checks import check_drop
from tests.flows.conftest import query
from tests.flows.drops import fab_tables, write_drop
from tests.flows.warehouse.test_contract_rules import land

STEP_KEY = "expect_compound_columns_to_be_unique"


def expectation(result, table, kind):
    (report,) = [r for r in result.gx if r.table == table]
    (found,) = [e for e in report.expectations if e.type == kind]
    return report, found


def test_a_duplicate_key_split_across_two_chunks_fails_uniqueness(tmp_path):
    tables = fab_tables()
    first = tables["step_history"][0]
    tables["step_history"].append(dict(first, tool_id="OX02"))  # its key, 24 rows later
    con, sources = land(tmp_path, tables, tmp_path / "db.duckdb")
    try:
        result = check_drop(con, sources, sources=sources, gx_chunk_rows=5)
    finally:
        con.close()
    rows = len(tables["step_history"])
    assert [(p.table, p.rule, p.count) for p in result.errors] == [
        ("step_history", "duplicate_key", 2)
    ]  # and no `gx_disagrees`: GX's result carries the same verdict
    report, unique = expectation(result, "step_history", STEP_KEY)
    assert report.chunks == math.ceil(rows / 5)  # row 1 in the first chunk, row 25 in the last
    assert not report.success and not unique.success
    assert unique.evaluated_by == "sql" and unique.rule == "duplicate_key"
    assert unique.rows_checked == unique.element_count == rows
    assert unique.unexpected_count == 2
    key = {"wafer_id": first["wafer_id"], "step_seq": first["step_seq"]}
    assert unique.partial_unexpected == [key, key]
    # every expectation GX ran itself passed on every chunk
    assert all(e.success for e in report.expectations if e is not unique)
    assert {e.evaluated_by for e in report.expectations if e is not unique} == {"gx"}


def test_a_repeated_single_column_key_is_named_by_its_value(tmp_path):
    tables = fab_tables()
    tables["lots"].append(dict(tables["lots"][0], product="P2"))
    con, sources = land(tmp_path, tables, tmp_path / "db.duckdb")
    try:
        result = check_drop(con, sources, sources=sources, gx_chunk_rows=1)
    finally:
        con.close()
    _, unique = expectation(result, "lots", "expect_column_values_to_be_unique")
    assert not unique.success and unique.evaluated_by == "sql"
    assert unique.unexpected_count == 2 and unique.partial_unexpected == ["L001", "L001"]


def test_a_verbatim_repeat_is_not_a_uniqueness_failure_with_gx_on(tmp_path, db):
    from flows.warehouse.ingest import ingest_drop

    tables = fab_tables()
    tables["step_history"].insert(1, dict(tables["step_history"][0]))  # same chunk, same row
    result = ingest_drop(write_drop(tmp_path / "d", tables), db, gx=True)
    assert result.status == "merged", [str(p) for p in result.problems]
    _, unique = expectation(result, "step_history", STEP_KEY)
    assert unique.success and unique.unexpected_count == 0


def test_the_whole_drop_verdict_is_kept_in_meta_gx_results(tmp_path, db):
    from flows.warehouse.ingest import ingest_drop

    tables = fab_tables()
    tables["step_history"].append(dict(tables["step_history"][0], tool_id="OX02"))
    result = ingest_drop(write_drop(tmp_path / "d", tables), db, gx=True, gx_max_rows=10)
    assert result.status == "rejected"
    rows = query(
        db,
        "SELECT expectation_type, evaluated_by, success, unexpected_count, rows_checked, "
        "rows_total, partial_unexpected FROM meta.gx_results "
        "WHERE table_name = 'step_history' AND rule = ?",
        ["duplicate_key"],
    )
    n = len(tables["step_history"])
    first = tables["step_history"][0]
    key = {"wafer_id": first["wafer_id"], "step_seq": first["step_seq"]}
    assert [(*r[:6], json.loads(r[6])) for r in rows] == [
        (STEP_KEY, "sql", False, 2, n, n, [key, key])
    ]
    (others,) = query(
        db,
        "SELECT DISTINCT evaluated_by, rows_checked FROM meta.gx_results "
        "WHERE table_name = 'step_history' AND rule <> 'duplicate_key'",
    )
    assert others[0] == "gx" and others[1] < n  # GX's own expectations ran on the sample


def selected(rows: int, total: int, m: int) -> list[int]:
    """Rows of a file of `rows` rows in an evenly spaced sample of m rows in `total`: the
    first row at or past each multiple of total / m."""
    return [r for r in (math.ceil(i * total / m) for i in range(1, m + 1)) if r <= rows]


@pytest.mark.parametrize("parts", [1, 3])
def test_gx_sees_a_spread_sample_and_every_flagged_row(tmp_path, parts):
    lots = tuple(f"L{i:03d}" for i in range(1, 6))
    tables = fab_tables(lots=lots, wafers_per_lot=5)  # 100 step rows
    cap = 10
    con, sources = land(
        tmp_path, {"lots": tables["lots"], "wafers": tables["wafers"],
                   "step_history": tables["step_history"]},
        tmp_path / "db.duckdb", parts={"step_history": parts},
    )  # fmt: skip
    try:
        per_file = dict(
            con.execute(
                "SELECT source_file, count(*) FROM landing_step_history GROUP BY ALL"
            ).fetchall()
        )
        total = sum(per_file.values())
        # break one row the sample does not take: row 2 of the first file
        first = min(per_file)
        assert 2 not in selected(per_file[first], total, cap)
        con.execute(
            "CREATE OR REPLACE TEMP TABLE broken AS SELECT * FROM landing_step_history"
        )  # a view over Parquet cannot be edited: land a copy
        con.execute(
            "UPDATE broken SET tool_id = 'ET 01' WHERE source_file = ? AND source_row = 2",
            [first],
        )
        con.execute("CREATE OR REPLACE TEMP VIEW landing_step_history AS FROM broken")
        result = check_drop(con, sources, sources=sources, gx_max_rows=cap, gx_chunk_rows=4)
        seen = con.execute(
            "SELECT source_file, list(source_row ORDER BY source_row) "
            "FROM gx_sample_step_history GROUP BY ALL"
        ).fetchall()
    finally:
        con.close()
    expected = {f: selected(n, total, cap) for f, n in per_file.items()}
    expected[first] = sorted([*expected[first], 2])
    assert dict(seen) == expected
    shown = sum(map(len, expected.values()))
    assert cap - parts < shown - 1 <= cap  # each file rounds its share down
    assert all(per_file[f] - rows[-1] < total / cap for f, rows in expected.items())  # to the end
    report, pattern = next(
        (r, e)
        for r in result.gx
        if r.table == "step_history"
        for e in r.expectations
        if e.type == "expect_column_values_to_match_regex" and e.columns == ["tool_id"]
    )
    assert report.rows_total == total and report.rows_checked == shown
    assert "+ 1 rows the SQL rules flagged" in report.sample
    assert not pattern.success and pattern.unexpected_count == 1
    assert pattern.partial_unexpected == ["ET 01"]
    assert [(p.table, p.rule, p.count) for p in result.errors] == [("step_history", "pattern", 1)]


def test_uniqueness_is_reported_for_every_keyed_suite():
    for table, tc in load_contract().items():
        kinds = {e["type"] for e in tc.expectations}
        has_unique = bool(kinds & {STEP_KEY, "expect_column_values_to_be_unique"})
        assert has_unique == bool(tc.key), table


def test_a_failure_only_gx_sees_rejects_the_drop_as_gx_disagrees(tmp_path, monkeypatch):
    import flows.warehouse.contract_rules as contract_rules

    real = contract_rules.suite_rules

    def without_slot_range(tc):  # a translation bug: the SQL side forgets one expectation
        return [p for p in real(tc) if p.rule != "slot_range"]

    monkeypatch.setattr(contract_rules, "suite_rules", without_slot_range)
    tables = fab_tables()
    tables["wafers"][1]["slot"] = 30
    con, sources = land(tmp_path, tables, tmp_path / "db.duckdb")
    try:
        result = check_drop(con, sources, sources=sources)
    finally:
        con.close()
    (p,) = result.errors
    assert (p.rule, p.table, p.count) == ("gx_disagrees", "wafers", 1)
    assert "expect_column_values_to_be_between(slot)" in p.message


def test_a_database_from_before_evaluated_by_gains_the_column(tmp_path):
    import duckdb

    from flows.warehouse.db import connect

    path = tmp_path / "old.duckdb"
    connect(path).close()
    old = duckdb.connect(str(path))  # as the schema stood before: no evaluated_by, one result
    old.execute("ALTER TABLE meta.gx_results DROP COLUMN evaluated_by")
    old.execute(
        "INSERT INTO meta.gx_results VALUES (1, 'd1', 'lots', 'lots', 0, "
        "'expect_column_to_exist', '[\"lot_id\"]', 'missing_column', true, NULL, NULL, NULL, "
        "'[]', NULL, 1, 1)"
    )
    old.execute("UPDATE meta.schema_version SET fingerprint = 'older'")
    old.close()
    connect(path).close()  # re-applies the changed schema
    assert query(path, "SELECT attempt_id, evaluated_by FROM meta.gx_results") == [(1, "gx")]
