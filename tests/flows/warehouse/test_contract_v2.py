"""The optional tables of contract v2: `equipment_events` and `bin_defs`.

Bad rows get the promises of `test_bad_input.py` (rule, file, count and rows named; nothing
merged; every row in quarantine). Decisions these tests pin down:

- `equipment_events.chamber_id` empty means the whole tool and is a value of the key like any
  other: two whole-tool rows with the same tool, time and kind are one key, and a whole-tool
  event is not the same key as a chamber's event at the same time.
- a bin's definition is never replaced by a later drop: the same definition again is a no-op,
  a different one rejects the drop (`conflicts_earlier_drop`), see `CONFLICT_REASONS`.
"""

from __future__ import annotations

import copy
from datetime import timedelta

import pytest

from flows.warehouse.db import connect
from flows.warehouse.drop_checks import check_drop
from tests.flows.conftest import ingest, query, snapshot
from tests.flows.drops import (
    T0,
    equipment_event_rows,
    fab_tables,
    sort_die_rows,
    write_drop,
)
from tests.flows.warehouse.test_bad_input import assert_rejected, quarantined
from tests.flows.warehouse.test_contract_rules import land

# --- equipment_events -------------------------------------------------------------------


def test_events_of_known_tools_and_chambers_merge_and_keep_the_whole_tool_as_null(
    tmp_path, base_db
):
    result = ingest(
        write_drop(tmp_path / "d", {"equipment_events": equipment_event_rows()}), base_db
    )
    assert result.status == "merged", [str(p) for p in result.problems]
    assert result.merged_counts == {"equipment_events": 3}
    rows = query(
        base_db,
        "SELECT tool_id, chamber_id, kind, note FROM core.equipment_events ORDER BY event_ts",
    )
    assert rows == [
        ("ET01", "A", "pm", "wet clean"),
        ("ET01", "A", "qual", None),
        ("OX01", None, "repair", "heater"),
    ]


def test_an_event_may_name_a_tool_first_seen_in_the_same_drop(tmp_path, base_db):
    tables = fab_tables(lots=("L003",))
    for row in tables["step_history"]:
        if row["operation"] == "GATE_ETCH":
            row["tool_id"] = "ET09"
    tables["equipment_events"] = [
        {"tool_id": "ET09", "chamber_id": "B", "event_ts": T0, "kind": "qual", "note": "new tool"}
    ]
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    assert result.status == "merged", [str(p) for p in result.problems]
    assert query(base_db, "SELECT tool_id FROM core.equipment_events") == [("ET09",)]


def test_events_redelivered_change_nothing(tmp_path, base_db):
    events = equipment_event_rows()
    first = ingest(write_drop(tmp_path / "d1", {"equipment_events": events}), base_db)
    assert first.status == "merged"
    before = snapshot(base_db)
    # the same drop again is recognised by its content
    assert ingest(write_drop(tmp_path / "d1", {"equipment_events": events}), base_db).status == (
        "already_merged"
    )
    # the same rows in another file (CSV, another order, a repeat): merged, nothing new, the
    # whole-tool row (chamber_id NULL) matched to its merged twin as well
    again = [*events[::-1], dict(events[2])]
    second = ingest(write_drop(tmp_path / "d2", {"equipment_events": again}, "csv"), base_db)
    assert second.status == "merged", [str(p) for p in second.problems]
    assert second.merged_counts == {"equipment_events": 0}
    assert snapshot(base_db) == before


def test_a_whole_tool_event_and_a_chamber_event_at_the_same_time_are_two_keys(tmp_path, base_db):
    ts = T0 + timedelta(days=5)
    rows = [
        {"tool_id": "ET01", "chamber_id": None, "event_ts": ts, "kind": "pm", "note": "tool"},
        {"tool_id": "ET01", "chamber_id": "A", "event_ts": ts, "kind": "pm", "note": "chamber"},
    ]
    result = ingest(write_drop(tmp_path / "d", {"equipment_events": rows}), base_db)
    assert result.status == "merged", [str(p) for p in result.problems]
    assert result.merged_counts == {"equipment_events": 2}


def _events_with(edit: dict[int, dict]) -> list[dict]:
    rows = equipment_event_rows()
    for i, change in edit.items():
        rows[i].update(change)
    return rows


@pytest.mark.parametrize(
    ("edit", "fmt", "rule", "bad_rows", "words"),
    [
        ({0: {"tool_id": "ET77"}, 2: {"tool_id": "NOPE"}}, "parquet", "unknown_tool", [1, 3],
         ["tool seen in step_history"]),
        ({1: {"chamber_id": "C"}}, "parquet", "unknown_chamber", [2],
         ["chamber of that tool"]),
        # a chamber of another tool's name is no chamber of this tool
        ({2: {"tool_id": "CM01", "chamber_id": "Z"}}, "csv", "unknown_chamber", [3],
         ["chamber of that tool"]),
        ({0: {"kind": "PM"}, 1: {"kind": "calibration"}}, "csv", "unknown_kind", [1, 2],
         ["pm, repair, qual, recipe_change, other"]),
        ({1: {"event_ts": "after lunch"}}, "csv", "unparsable_timestamp", [2],
         ["event_ts", "ISO-8601"]),
        ({2: {"event_ts": None}}, "parquet", "not_null", [3], ["event_ts is never empty"]),
        ({0: {"tool_id": None}}, "csv", "not_null", [1], ["tool_id is never empty"]),
    ],
)  # fmt: skip
def test_a_bad_event_rejects_the_drop_with_its_rows_named(
    tmp_path, base_db, edit, fmt, rule, bad_rows, words
):
    before = snapshot(base_db)
    rows = _events_with(edit)
    result = ingest(write_drop(tmp_path / "d", {"equipment_events": rows}, fmt), base_db)
    p = assert_rejected(result, base_db, before, rule, f"equipment_events.{fmt}", len(bad_rows))
    assert all(w in p.message for w in words), p.message
    assert [e["row"] for e in p.examples] == bad_rows
    kept = quarantined(base_db, result.drop_id, "equipment_events")
    assert len(kept) == len(rows)  # the innocent rows too
    assert [r[1] for r in kept if rule in r[2]] == bad_rows


def test_an_unknown_tool_is_not_also_an_unknown_chamber(tmp_path, base_db):
    rows = _events_with({0: {"tool_id": "ET77"}})  # chamber A of an unknown tool
    result = ingest(write_drop(tmp_path / "d", {"equipment_events": rows}), base_db)
    assert {p.rule for p in result.errors} == {"unknown_tool"}


def test_two_whole_tool_events_with_one_key_are_a_duplicate_key(tmp_path, base_db):
    before = snapshot(base_db)
    rows = equipment_event_rows()
    rows.append(dict(rows[2], note="heater, second opinion"))  # chamber_id NULL in both
    result = ingest(write_drop(tmp_path / "d", {"equipment_events": rows}), base_db)
    p = assert_rejected(result, base_db, before, "duplicate_key", "equipment_events.parquet", 2)
    assert "(tool_id, chamber_id, event_ts, kind)" in p.message
    assert {e["note"] for e in p.examples} == {"heater", "heater, second opinion"}
    assert [r[1] for r in quarantined(base_db, result.drop_id, "equipment_events") if r[2]] == [
        3,
        4,
    ]


def test_an_event_that_disagrees_with_an_earlier_drop(tmp_path, base_db):
    assert ingest(write_drop(tmp_path / "d1", {"equipment_events": equipment_event_rows()}),
                  base_db).status == "merged"  # fmt: skip
    before = snapshot(base_db)
    rows = _events_with({2: {"note": "heater replaced"}})  # the whole-tool row, NULL chamber
    result = ingest(write_drop(tmp_path / "d2", {"equipment_events": rows}), base_db)
    p = assert_rejected(
        result, base_db, before, "conflicts_earlier_drop", "equipment_events.parquet", 1
    )
    assert p.examples[0]["row"] == 3


def test_row_quarantine_mode_keeps_an_event_out_with_the_steps_that_brought_its_tool(
    tmp_path, base_db
):
    tables = fab_tables(lots=("L003",))
    for row in tables["step_history"]:
        if row["operation"] == "GATE_ETCH":
            row["tool_id"] = "ET09"
    tables["wafers"][0]["slot"] = 40  # L003.01 and its steps are quarantined
    for row in tables["step_history"]:
        if row["wafer_id"] != "L003.01":
            row["chamber_id"] = "A"  # so chamber B of ET09 only comes with L003.01
    tables["equipment_events"] = [
        {"tool_id": "ET09", "chamber_id": "B", "event_ts": T0, "kind": "pm", "note": None},
        {"tool_id": "ET09", "chamber_id": "A", "event_ts": T0, "kind": "pm", "note": None},
    ]
    result = ingest(write_drop(tmp_path / "d", tables), base_db, on_bad_rows="quarantine")
    assert result.status == "merged"
    assert query(base_db, "SELECT chamber_id FROM core.equipment_events") == [("A",)]
    (rules,) = query(
        base_db, "SELECT rules FROM quarantine.rows WHERE table_name = 'equipment_events'"
    )[0]
    assert rules == ["parent_quarantined"]


# --- bin_defs --------------------------------------------------------------------------------

DIE_WAFERS = ["L002.01", "L002.02"]


@pytest.fixture
def die_db(tmp_path, db):
    """A fab whose L002.01/.02 are sorted by die: 16 dies, 3 fails each (bins 2, 2, 7)."""
    tables = fab_tables()
    tables["sort_yield"] = [r for r in tables["sort_yield"] if r["wafer_id"] not in DIE_WAFERS]
    tables["sort_die"] = sort_die_rows(DIE_WAFERS, size=4, bad=3)
    for row in tables["sort_die"]:
        if row["bin"] == 7 and row["die_x"] < 2 and row["die_y"] == 0:
            row["bin"] = 2
    assert ingest(write_drop(tmp_path / "base", tables), db).status == "merged"
    return db


def die_yield(db) -> dict[str, tuple[int, int]]:
    rows = query(
        db, "SELECT wafer_id, dies_good, dies_total FROM core.wafer_yield WHERE source = 'sort_die'"
    )
    return {w: (good, total) for w, good, total in rows}


def test_without_bin_defs_bin_1_alone_is_good(die_db):
    assert die_yield(die_db) == {w: (13, 16) for w in DIE_WAFERS}
    assert query(die_db, "SELECT bin, name, good, source FROM core.bin_rule") == [
        (1, None, True, "default")
    ]


def test_a_drop_declaring_bin_2_good_counts_its_dies_good(tmp_path, die_db):
    defs = [
        {"bin": 1, "name": "PASS", "good": True},
        {"bin": 2, "name": "PASS_SLOW", "good": True},
        {"bin": 7, "name": "OPEN_VIA", "good": False},
    ]
    result = ingest(write_drop(tmp_path / "d", {"bin_defs": defs}), die_db)
    assert result.status == "merged", [str(p) for p in result.problems]
    assert die_yield(die_db) == {w: (15, 16) for w in DIE_WAFERS}  # the two bin-2 dies count
    rule = query(die_db, "SELECT bin, name, good, source FROM core.bin_rule ORDER BY bin")
    assert rule == [
        (1, "PASS", True, "bin_defs"),
        (2, "PASS_SLOW", True, "bin_defs"),
        (7, "OPEN_VIA", False, "bin_defs"),
    ]
    # sort_yield wafers are untouched by bin definitions
    assert query(die_db, "SELECT dies_good FROM core.wafer_yield WHERE wafer_id = 'L001.01'") == [
        (89,)
    ]


def test_a_bin_without_a_definition_keeps_the_default(tmp_path, die_db):
    # only bin 1 declared bad: then no bin is good; bin 2 and 7 stay fails by default
    result = ingest(
        write_drop(tmp_path / "d", {"bin_defs": [{"bin": 1, "name": "X", "good": False}]}), die_db
    )
    assert result.status == "merged"
    assert die_yield(die_db) == {w: (0, 16) for w in DIE_WAFERS}
    assert query(die_db, "SELECT bin, good FROM core.bin_rule") == [(1, False)]


def test_bin_defs_read_from_csv_words_and_reject_other_values(tmp_path, die_db):
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "bin_defs.csv").write_text("bin,name,good\n2,PASS_SLOW, TRUE\n7,OPEN_VIA,0\n8,X,no\n")
    assert ingest(drop, die_db).status == "merged"
    assert query(die_db, "SELECT bin, good FROM core.bin_defs ORDER BY bin") == [
        (2, True),
        (7, False),
        (8, False),
    ]
    before = snapshot(die_db)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "bin_defs.csv").write_text("bin,name,good\n3,A,maybe\n4,B,2\n5,C,true\n")
    result = ingest(bad, die_db)
    p = assert_rejected(result, die_db, before, "wrong_type", "bin_defs.csv", 2)
    assert "good" in p.message and [e["row"] for e in p.examples] == [1, 2]


def test_the_same_bin_definition_redelivered_changes_nothing(tmp_path, die_db):
    defs = [{"bin": 2, "name": "PASS_SLOW", "good": True}]
    assert ingest(write_drop(tmp_path / "d1", {"bin_defs": defs}), die_db).status == "merged"
    before = snapshot(die_db)
    again = ingest(write_drop(tmp_path / "d2", {"bin_defs": defs}, "csv"), die_db)
    assert again.status == "merged" and again.merged_counts == {"bin_defs": 0}
    assert snapshot(die_db) == before


@pytest.mark.parametrize("change", [{"good": False}, {"name": "MARGINAL"}])
def test_a_later_drop_redefining_a_bin_is_rejected_not_replaced(tmp_path, die_db, change):
    # Decision: unlike a sort re-test (ordered by its test_ts), a bin definition has nothing
    # that orders two versions, and replacing it would recount every wafer sorted by die.
    defs = [{"bin": 2, "name": "PASS_SLOW", "good": True}]
    assert ingest(write_drop(tmp_path / "d1", {"bin_defs": defs}), die_db).status == "merged"
    before, yields = snapshot(die_db), die_yield(die_db)
    redefined = [dict(defs[0], **change), {"bin": 9, "name": "NEW", "good": False}]
    result = ingest(write_drop(tmp_path / "d2", {"bin_defs": redefined}), die_db)
    p = assert_rejected(result, die_db, before, "conflicts_earlier_drop", "bin_defs.parquet", 1)
    assert "not replaced by a later delivery" in p.message
    assert p.examples[0]["bin"] == 2
    assert die_yield(die_db) == yields
    assert len(quarantined(die_db, result.drop_id, "bin_defs")) == 2


def test_one_bin_defined_twice_in_a_drop_is_a_duplicate_key(tmp_path, die_db):
    before = snapshot(die_db)
    defs = [
        {"bin": 2, "name": "PASS_SLOW", "good": True},
        {"bin": 2, "name": "PASS_SLOW", "good": False},
        {"bin": 3, "name": "SHORT", "good": False},
        {"bin": 3, "name": "SHORT", "good": False},  # a verbatim repeat is fine
    ]
    result = ingest(write_drop(tmp_path / "d", {"bin_defs": defs}), die_db)
    p = assert_rejected(result, die_db, before, "duplicate_key", "bin_defs.parquet", 2)
    assert [e["row"] for e in p.examples] == [1, 2]


# --- the suites: GX and the SQL rules agree ---------------------------------------------------


def _v2_tables() -> dict:
    tables = copy.deepcopy(fab_tables())
    tables["equipment_events"] = equipment_event_rows()
    tables["bin_defs"] = [
        {"bin": 1, "name": "PASS", "good": True},
        {"bin": 7, "name": "OPEN_VIA", "good": False},
    ]
    return tables


def test_gx_passes_good_v2_tables(tmp_path):
    con, sources = land(tmp_path, _v2_tables(), tmp_path / "db.duckdb")
    try:
        result = check_drop(con, sources, sources=sources)
    finally:
        con.close()
    assert result.ok, [str(p) for p in result.problems]
    reports = {r.table: r for r in result.gx}
    assert reports["equipment_events"].success and reports["equipment_events"].rows_checked == 3
    assert reports["bin_defs"].success


def test_gx_and_sql_agree_on_an_unknown_kind(tmp_path):
    tables = _v2_tables()
    tables["equipment_events"][1]["kind"] = "calibration"
    con, sources = land(tmp_path, tables, tmp_path / "db.duckdb")
    try:
        result = check_drop(con, sources, sources=sources)
    finally:
        con.close()
    assert [(p.table, p.rule, p.count) for p in result.errors] == [
        ("equipment_events", "unknown_kind", 1)
    ]
    report = next(r for r in result.gx if r.table == "equipment_events")
    assert report.failed == {"expect_column_values_to_be_in_set(kind)": 1}


def test_the_schema_holds_the_v2_tables_and_the_bin_rule(db):
    con = connect(db)
    try:
        cols = {
            t: [r[0] for r in con.execute(f"DESCRIBE core.{t}").fetchall()]
            for t in ("equipment_events", "bin_defs", "bin_rule")
        }
    finally:
        con.close()
    assert cols["equipment_events"][:5] == ["tool_id", "chamber_id", "event_ts", "kind", "note"]
    assert cols["bin_defs"][:3] == ["bin", "name", "good"]
    assert cols["bin_rule"] == ["bin", "name", "good", "source"]
