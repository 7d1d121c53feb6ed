"""The expectation suites: one statement of the rules, enforced in SQL and by GX alike."""

from __future__ import annotations

import pytest

from flows.warehouse.contract import TABLES, load_contract
from flows.warehouse.contract_rules import duplicate_key_rule, suite_rules
from flows.warehouse.db import connect
from flows.warehouse.drop_checks import check_drop
from flows.warehouse.drop_files import find_tables, land_table
from tests.flows.drops import fab_tables, write_drop

# expectation types the SQL side handles outside `suite_rules` (at landing, or over the drop)
ELSEWHERE = {
    "expect_column_to_exist",  # missing_column when the table lands
    "expect_column_values_to_be_unique",  # duplicate_key_rule, over the whole drop
    "expect_compound_columns_to_be_unique",
}


def test_every_expectation_is_enforced_in_sql():
    for table, tc in load_contract().items():
        translated = {r.rule for r in suite_rules(tc)}
        for exp in tc.expectations:
            rule = exp["meta"]["rule"]
            if exp["type"] in ELSEWHERE:
                continue
            if exp["type"] == "expect_column_values_to_be_in_type_list":
                assert translated & {"wrong_type", "unparsable_timestamp"}
            else:
                assert rule in translated, (table, exp["type"], rule)
        assert (duplicate_key_rule(tc) is not None) == bool(tc.key)


def test_the_suites_state_the_contract_columns():
    contract = load_contract()
    assert set(contract) == set(TABLES)
    assert contract["step_history"].key == ("wafer_id", "step_seq")
    assert contract["sort_yield"].key == ("wafer_id", "test_ts")  # a re-test is a new row
    assert [c.name for c in contract["wafers"].columns] == ["wafer_id", "lot_id", "slot"]
    optional = {c.name for c in contract["step_history"].columns if not c.required}
    assert optional == {"chamber_id", "recipe"}


def land(tmp_path, tables, db, parts=None):
    drop = write_drop(tmp_path / "drop", tables, parts=parts)
    sources, problems = find_tables(drop)
    assert not problems
    con = connect(db)
    contract = load_contract()
    for table, src in sources.items():
        land_table(con, drop, "d1", src, contract[table])
    return con, {t: s.display for t, s in sources.items()}


def test_gx_passes_a_good_drop_in_chunks_and_writes_data_docs(tmp_path):
    con, sources = land(tmp_path, fab_tables(), tmp_path / "db.duckdb")
    try:
        result = check_drop(
            con, sources, sources=sources, docs_dir=tmp_path / "docs", gx_chunk_rows=5
        )
    finally:
        con.close()
    assert result.ok, [str(p) for p in result.problems]
    steps = next(r for r in result.gx if r.table == "step_history")
    assert steps.success and steps.rows_checked == 24 and steps.chunks == 5
    assert (tmp_path / "docs" / "index.html").exists()
    assert any((tmp_path / "docs" / "validations").rglob("*.html"))


@pytest.mark.parametrize(
    ("table", "row", "change", "rule", "gx_expectation"),
    [
        ("wafers", 0, {"slot": 30}, "slot_range", "expect_column_values_to_be_between(slot)"),
        ("sort_yield", 1, {"dies_good": 101}, "dies_good_gt_dies_total",
         "expect_column_pair_values_a_to_be_greater_than_b(dies_total)"),
        ("step_history", 2, {"tool_id": "ET 01"}, "pattern",
         "expect_column_values_to_match_regex(tool_id)"),
        ("lots", 0, {"product": None}, "not_null", "expect_column_values_to_not_be_null(product)"),
    ],
)  # fmt: skip
def test_gx_and_sql_agree_on_a_broken_row(tmp_path, table, row, change, rule, gx_expectation):
    tables = fab_tables()
    tables[table][row].update(change)
    con, sources = land(tmp_path, tables, tmp_path / "db.duckdb")
    try:
        result = check_drop(con, sources, sources=sources)
        offenders = con.execute(
            "SELECT source_row FROM violations WHERE table_name = ? AND rule = ?", [table, rule]
        ).fetchall()
    finally:
        con.close()
    assert not result.ok
    assert [(p.table, p.rule, p.count) for p in result.errors] == [(table, rule, 1)]
    assert offenders == [(row + 1,)]
    report = next(r for r in result.gx if r.table == table)
    assert not report.success and report.failed == {gx_expectation: 1}
    assert all(r.success for r in result.gx if r.table != table)
