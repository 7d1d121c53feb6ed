"""meta.gx_results: what Great Expectations found, kept per attempt, and shown in the report.

One database serves the module (GX takes seconds per drop): a valid drop that merges, then a
drop whose wafers hold slots out of range (rejected, and fed to GX capped at a few rows so the
sampling shows), then the valid drop again (already merged: GX does not run).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd
import pytest
from pypdf import PdfReader

from flows.analysis.results import AnalysisResult
from flows.report.build import build_report
from flows.warehouse.contract import load_contract
from flows.warehouse.drop_checks import check_drop
from flows.warehouse.ingest import _plain, ingest_drop
from tests.flows.conftest import query
from tests.flows.drops import T0, fab_tables, write_drop
from tests.flows.warehouse.test_contract_rules import land

BAD_SLOTS = {0: 30, 2: 0}  # wafer row -> slot outside 1..25
GX_CAP = 10  # rows GX sees per table of the bad drop
SLOT_RANGE = "expect_column_values_to_be_between(slot)"


@pytest.fixture(scope="module")
def fab(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("gx")
    db, docs = root / "fab.duckdb", root / "run" / "data-docs"
    good = fab_tables()
    bad = fab_tables(lots=("L003",))
    for row, slot in BAD_SLOTS.items():
        bad["wafers"][row]["slot"] = slot
    good_drop = write_drop(root / "good", good)
    results = [
        ingest_drop(good_drop, db, docs_dir=docs),
        ingest_drop(write_drop(root / "bad", bad), db, docs_dir=docs, gx_max_rows=GX_CAP),
        ingest_drop(good_drop, db, docs_dir=docs),
    ]
    assert [r.status for r in results] == ["merged", "rejected", "already_merged"]
    return db, root / "run", {"good": good, "bad": bad}, results


def gx_rows(db: Path, attempt_id: int) -> list[dict]:
    cols = [r[0] for r in query(db, "SELECT column_name FROM (DESCRIBE meta.gx_results)")]
    rows = query(
        db,
        "SELECT * FROM meta.gx_results WHERE attempt_id = ? ORDER BY table_name, expectation_index",
        [attempt_id],
    )
    return [dict(zip(cols, r, strict=True)) for r in rows]


def test_a_valid_drop_keeps_one_passing_row_per_expectation(fab):
    db, _, tables, (good, _, _) = fab
    rows = gx_rows(db, good.attempt_id)
    contract = load_contract()
    assert {r["table_name"] for r in rows} == set(tables["good"])
    for table, delivered in tables["good"].items():
        mine = [r for r in rows if r["table_name"] == table]
        suite = contract[table].expectations
        assert [r["expectation_index"] for r in mine] == list(range(len(suite)))
        assert [r["expectation_type"] for r in mine] == [e["type"] for e in suite]
        assert [r["rule"] for r in mine] == [e["meta"]["rule"] for e in suite]
        assert all(r["suite"] == table and r["drop_id"] == good.drop_id for r in mine)
        assert all(r["rows_checked"] == r["rows_total"] == len(delivered) for r in mine)
        unique = {"expect_column_values_to_be_unique", "expect_compound_columns_to_be_unique"}
        assert [r["evaluated_by"] == "sql" for r in mine] == [e["type"] in unique for e in suite]
        for r in mine:
            assert r["success"] is True, r
            assert r["exception_message"] is None and json.loads(r["partial_unexpected"]) == []
            if r["element_count"] is not None:  # row-level expectations see every row
                assert r["element_count"] == len(delivered) and r["unexpected_count"] == 0


def test_a_rejected_drop_keeps_its_failing_expectations(fab):
    db, _, tables, (_, bad, _) = fab
    rows = gx_rows(db, bad.attempt_id)
    failing = [r for r in rows if not r["success"]]
    assert len(failing) == 1
    (slot,) = failing
    wafers = tables["bad"]["wafers"]
    out_of_range = [w["slot"] for w in wafers if not 1 <= w["slot"] <= 25]
    assert slot["table_name"] == "wafers" and slot["rule"] == "slot_range"
    assert slot["expectation_type"] == "expect_column_values_to_be_between"
    assert json.loads(slot["column_names"]) == ["slot"]
    assert slot["element_count"] == len(wafers)
    assert slot["unexpected_count"] == len(out_of_range) == len(BAD_SLOTS)
    assert slot["unexpected_percent"] == pytest.approx(100 * len(out_of_range) / len(wafers))
    assert sorted(json.loads(slot["partial_unexpected"])) == sorted(out_of_range)
    # the SQL rules, which rejected the drop, counted the same rows
    ((sql_count,),) = query(
        db,
        "SELECT n_rows FROM quarantine.problems WHERE attempt_id = ? AND rule = 'slot_range'",
        [bad.attempt_id],
    )
    assert sql_count == slot["unexpected_count"]
    assert query(db, "SELECT status FROM meta.drop_log WHERE attempt_id = ?", [bad.attempt_id]) == [
        ("rejected",)
    ]
    assert query(db, "SELECT count(*) FROM core.wafers WHERE lot_id = 'L003'") == [(0,)]


def test_capped_gx_says_how_many_rows_it_saw(fab):
    db, _, tables, (_, bad, _) = fab
    for r in gx_rows(db, bad.attempt_id):
        delivered = len(tables["bad"][r["table_name"]])
        assert r["rows_total"] == delivered
        if r["evaluated_by"] == "sql":  # uniqueness: the SQL rule over the whole drop
            assert r["rule"] == "duplicate_key" and r["rows_checked"] == delivered
        else:  # one file per table: an evenly spaced sample of exactly the cap
            assert r["rows_checked"] == min(delivered, GX_CAP)
    steps = [r for r in gx_rows(db, bad.attempt_id) if r["table_name"] == "step_history"]
    assert steps[0]["rows_checked"] < steps[0]["rows_total"]  # the cap did bite here


def test_results_exist_exactly_for_attempts_in_the_drop_log(fab):
    db, _, _, (good, bad, again) = fab
    pairs = query(db, "SELECT DISTINCT attempt_id, drop_id FROM meta.gx_results ORDER BY 1")
    assert pairs == [(good.attempt_id, good.drop_id), (bad.attempt_id, bad.drop_id)]
    assert again.attempt_id not in {a for a, _ in pairs}  # nothing validated, nothing kept


def test_the_report_shows_the_failing_expectation_in_html_and_pdf(fab):
    db, out, tables, (good, bad, _) = fab
    bare = AnalysisResult(
        run_id="r-gx", created_at="2026-11-26T00:00:00+00:00", ranking=[], findings=[], layers=[]
    )
    paths = build_report(bare, out, db_path=db)
    html = paths.html.read_text(encoding="utf-8")
    quality = html[html.index('<section id="quality">') :]
    quality = quality[: quality.index("</section>")]
    text = re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", quality))
    assert "Failing expectations" in text
    row = re.search(rf"{bad.drop_id} wafers {re.escape(SLOT_RANGE)} slot_range (\d+) ", text)
    assert row and int(row.group(1)) == len(BAD_SLOTS), text
    n_expectations = sum(len(load_contract()[t].expectations) for t in tables["good"])
    assert f"1 of {2 * n_expectations} expectations failed" in html
    assert f"{GX_CAP} of {len(tables['bad']['step_history'])} (sample)" in text
    n_steps = len(load_contract()["step_history"].expectations)
    merged = f"{good.drop_id} merged step_history {n_steps} {n_steps} 0 all "
    assert merged + f"{len(tables['good']['step_history'])} " in text  # every row checked
    assert 'href="data-docs/index.html"' in html
    pdf = re.sub(r"\s+", " ", " ".join(p.extract_text() for p in PdfReader(paths.pdf).pages))
    assert "Failing expectations" in pdf
    assert re.search(rf"{bad.drop_id} wafers {re.escape(SLOT_RANGE)} slot_range 2 ", pdf), pdf


def test_counts_add_up_over_the_chunks_gx_is_fed(tmp_path):
    tables = fab_tables(lots=("L001",))
    for row, slot in BAD_SLOTS.items():  # rows 0 and 2: the first and the second chunk
        tables["wafers"][row]["slot"] = slot
    con, sources = land(tmp_path, {t: tables[t] for t in ("lots", "wafers")}, tmp_path / "f.db")
    try:
        result = check_drop(con, sources, sources=sources, gx_chunk_rows=2)
    finally:
        con.close()
    (wafers,) = [r for r in result.gx if r.table == "wafers"]
    assert wafers.chunks == 2 and wafers.rows_checked == wafers.rows_total == 3
    slot = next(e for e in wafers.expectations if e.rule == "slot_range")
    assert not slot.success and slot.element_count == 3
    assert slot.unexpected_count == len(BAD_SLOTS)
    assert sorted(slot.partial_unexpected) == sorted(BAD_SLOTS.values())
    assert slot.unexpected_percent == pytest.approx(100 * len(BAD_SLOTS) / 3)
    assert all(e.success for e in wafers.expectations if e is not slot)


def test_example_values_are_stored_as_json_duckdb_accepts():
    values = [np.float64("nan"), np.int64(3), (np.int64(1), np.int64(2)), pd.Timestamp(T0), 1.5]
    text = json.dumps(_plain(values))
    con = duckdb.connect()
    try:
        (stored,) = con.execute("SELECT ?::JSON", [text]).fetchall()[0]
    finally:
        con.close()
    assert json.loads(stored) == ["nan", 3, [1, 2], str(pd.Timestamp(T0)), 1.5]
