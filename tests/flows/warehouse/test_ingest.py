"""Ingestion of good drops: every format, incremental deliveries, re-tests, the marts."""

from __future__ import annotations

import gzip
import json
from datetime import datetime, timedelta

import pytest

from flows.warehouse.db import connect, quote_ident, quote_literal
from flows.warehouse.drop_files import content_hash, find_tables
from tests.flows.conftest import CORE, ingest, last_log, query, snapshot
from tests.flows.drops import csv_bytes, fab_tables, sort_die_rows, write_drop


def core_content(db) -> dict[str, list[tuple]]:
    """Core rows without provenance (drop id and file differ between equivalent drops)."""
    con = connect(db, read_only=True)
    try:
        out = {}
        for t in CORE:
            rows = con.execute(
                f"SELECT * EXCLUDE (drop_id, source_file, extra) FROM core.{t}"
            ).fetchall()
            out[t] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


@pytest.mark.parametrize(
    ("fmt", "parts"),
    [("csv", None), ("csv.gz", None), ("parquet", {"step_history": 3, "inline_meas": 2}),
     ("csv", {"step_history": 2}), ("csv.gz", {"sort_yield": 2})],
)  # fmt: skip
def test_every_format_gives_the_same_tables(tmp_path, fmt, parts):
    reference = tmp_path / "ref.duckdb"
    assert ingest(write_drop(tmp_path / "ref", fab_tables()), reference).status == "merged"
    db = tmp_path / "x.duckdb"
    result = ingest(write_drop(tmp_path / "x", fab_tables(), fmt, parts), db)
    assert result.status == "merged", [str(p) for p in result.problems]
    assert result.row_counts == {
        "lots": 2, "wafers": 6, "step_history": 24, "inline_meas": 12, "sort_yield": 6,
    }  # fmt: skip
    assert core_content(db) == core_content(reference)
    if parts and "step_history" in parts:
        files = {r[0] for r in query(db, "SELECT DISTINCT source_file FROM core.step_history")}
        assert files == {f"step_history/part-{k:03d}.{fmt}" for k in range(parts["step_history"])}


def test_timestamps_with_offsets_are_stored_as_utc(tmp_path, db):
    lots = [
        {"lot_id": "A", "product": "P", "route": None, "start_ts": "2026-03-01T08:15:00Z"},
        {"lot_id": "B", "product": "P", "route": None, "start_ts": "2026-03-01T08:15:00+02:00"},
        {"lot_id": "C", "product": "P", "route": None, "start_ts": "2026-03-01T08:15:00"},
        {"lot_id": "D", "product": "P", "route": None, "start_ts": None},
    ]
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "lots.csv").write_bytes(csv_bytes(lots))
    assert ingest(drop, db).status == "merged"
    got = dict(query(db, "SELECT lot_id, start_ts FROM core.lots"))
    assert got == {
        "A": datetime(2026, 3, 1, 8, 15),
        "B": datetime(2026, 3, 1, 6, 15),
        "C": datetime(2026, 3, 1, 8, 15),
        "D": None,
    }


def test_incremental_drops_and_retests(tmp_path, db):
    tables = fab_tables()
    history = {k: v for k, v in tables.items() if k != "sort_yield"}
    assert ingest(write_drop(tmp_path / "week1", history), db).status == "merged"
    frame = dict(query(db, "SELECT wafer_id, yield FROM marts.wafer_frame"))
    assert set(frame.values()) == {None}  # not sorted yet
    # sort results weeks later, in CSV this time
    first = ingest(write_drop(tmp_path / "week5", {"sort_yield": tables["sort_yield"]}, "csv"), db)
    assert first.status == "merged" and first.merged_counts == {"sort_yield": 6}
    before = dict(query(db, "SELECT wafer_id, dies_good FROM core.sort_yield"))
    # a re-test of one wafer (later test_ts) replaces it; an older row for another is ignored
    retest = dict(tables["sort_yield"][0], dies_good=99)
    retest["test_ts"] += timedelta(days=2)
    stale = dict(tables["sort_yield"][1], dies_good=1)
    stale["test_ts"] -= timedelta(days=2)
    result = ingest(write_drop(tmp_path / "week6", {"sort_yield": [retest, stale]}), db)
    assert result.status == "merged"
    assert [p.rule for p in result.problems] == ["older_retest_ignored"]
    after = dict(query(db, "SELECT wafer_id, dies_good FROM core.sort_yield"))
    assert after == before | {retest["wafer_id"]: 99}
    (n,) = query(db, "SELECT count(*) FROM core.sort_yield")[0]
    assert n == 6  # still one row per wafer


def test_a_retest_inside_one_drop_keeps_the_latest(tmp_path, db):
    tables = fab_tables()
    later = dict(tables["sort_yield"][0], dies_good=12)
    later["test_ts"] += timedelta(hours=5)
    tables["sort_yield"].append(later)
    assert ingest(write_drop(tmp_path / "d", tables), db).status == "merged"
    got = query(db, "SELECT dies_good FROM core.sort_yield WHERE wafer_id = ?", [later["wafer_id"]])
    assert got == [(12,)]


def test_sort_die_is_aggregated_to_wafer_yield(tmp_path, db):
    tables = fab_tables()
    sorted_by_die = ["L002.01", "L002.02"]
    tables["sort_yield"] = [r for r in tables["sort_yield"] if r["wafer_id"] not in sorted_by_die]
    tables["sort_die"] = sort_die_rows(sorted_by_die, size=4, bad=3)
    assert ingest(write_drop(tmp_path / "d", tables, "csv"), db).status == "merged"
    got = {
        r[0]: r[1:]
        for r in query(db, "SELECT wafer_id, dies_good, dies_total, source FROM core.wafer_yield")
    }
    assert got["L002.01"] == (13, 16, "sort_die")
    assert got["L001.01"][2] == "sort_yield"
    assert len(got) == 6


def test_marts_build_the_model_frames(tmp_path, db):
    tables = fab_tables()
    tables["step_history"].append(  # a rework of GATE_ETCH on one wafer: the last pass counts
        dict(tables["step_history"][1], step_seq=9, tool_id="ET02", chamber_id="C")
    )
    assert ingest(write_drop(tmp_path / "d", tables), db).status == "merged"
    con = connect(db, read_only=True)
    try:
        ops = con.execute(
            "SELECT layer, operation, tool_id, chamber_key, n_passes, dies_good, dies_total "
            "FROM marts.wafer_operation WHERE wafer_id = 'L001.01' ORDER BY operation"
        ).fetchall()
        assert ops == [
            ("GATE", "GATE_ETCH", "ET02", "ET02:C", 2, 89, 100),
            ("GATE", "GATE_OX", "OX01", "OX01:B", 1, 89, 100),
            ("M1", "M1_CMP", "CM01", "CM01:B", 1, 89, 100),
            ("M1", "M1_DEP", "DP01", "DP01:B", 1, 89, 100),
        ]
        (mean, n_sites, layer) = con.execute(
            "SELECT value_mean, n_sites, layer FROM marts.wafer_param "
            "WHERE wafer_id = 'L002.03' AND param = 'GATE_CD'"
        ).fetchall()[0]
        values = [r["value"] for r in tables["inline_meas"] if r["wafer_id"] == "L002.03"]
        assert mean == pytest.approx(sum(values) / len(values)) and n_sites == 2
        assert layer == "GATE"
        (steps, metrology, lot) = con.execute(
            "SELECT steps, metrology, lot_id FROM marts.wafer_layer "
            "WHERE wafer_id = 'L002.03' AND layer = 'GATE'"
        ).fetchall()[0]
        assert [s["operation"] for s in steps] == ["GATE_OX", "GATE_ETCH"] and lot == "L002"
        assert metrology[0]["param"] == "GATE_CD"
        (sites,) = con.execute(
            "SELECT site_values FROM marts.analysis_param_sites WHERE wafer_id = 'L002.03'"
        ).fetchall()[0]
        assert sites == pytest.approx(values)
        layers = dict(con.execute("SELECT operation, layer FROM marts.operation_layer").fetchall())
        assert layers == {"GATE_OX": "GATE", "GATE_ETCH": "GATE", "M1_DEP": "M1", "M1_CMP": "M1"}
    finally:
        con.close()


def test_schema_holds_the_write_back_tables(db):
    con = connect(db)
    try:
        cols = {
            t: [r[0] for r in con.execute(f"DESCRIBE {t}").fetchall()]
            for t in ("subprocess_ranking", "findings")
        }
    finally:
        con.close()
    # the contract's columns, then why a layer is unranked (rank NULL) in plain words, then
    # issue 14's verdicts
    assert cols["subprocess_ranking"] == [
        "run_id", "rank", "layer", "yield_impact", "ci_low", "ci_high", "p_value", "variance_share",
        "status", "reason", "significant", "material", "loss_label",
    ]  # fmt: skip
    # the contract's v1 columns, issue 14's (adjusted p, materiality, the finding's wafers,
    # aliases, the model behind the numbers), then the contract's v2 additions
    assert cols["findings"] == [
        "run_id", "layer", "operation", "tool_id", "chamber_id", "param", "effect", "estimate",
        "yield_impact", "ci_low", "ci_high", "p_value", "p_adjusted", "material",
        "loss_on_wafers", "n_wafers", "n_lots", "aliased_with", "model", "onset_ts",
        "onset_low", "onset_high", "end_ts", "active", "event", "zone", "bin",
    ]  # fmt: skip


def test_drop_log_records_files_counts_and_timings(tmp_path, db):
    result = ingest(write_drop(tmp_path / "d", fab_tables(), parts={"step_history": 2}), db)
    (row,) = query(
        db, "SELECT drop_id, content_hash, files, row_counts, timings, seconds FROM meta.drop_log"
    )
    assert row[0] == result.drop_id and row[1] == result.content_hash
    files = {f["table"]: f for f in json.loads(row[2])}
    assert files["step_history"]["files"] == 2
    assert json.loads(row[3])["step_history"] == 24
    assert {"hash", "land", "validate", "merge"} <= set(json.loads(row[4]))
    assert last_log(db)["status"] == "merged"


def test_content_hash_ignores_folder_name_and_sees_every_byte(tmp_path):
    a = write_drop(tmp_path / "a", fab_tables(), "csv")
    b = write_drop(tmp_path / "b", fab_tables(), "csv")
    assert content_hash(a) == content_hash(b)
    (b / "lots.csv").write_bytes((b / "lots.csv").read_bytes().replace(b"P1", b"P2"))
    assert content_hash(a) != content_hash(b)


def test_find_tables_reads_the_layout(tmp_path):
    drop = write_drop(tmp_path / "d", fab_tables(), "csv.gz", parts={"step_history": 2})
    sources, problems = find_tables(drop)
    assert sources["step_history"].display == "step_history/ (2 files)"
    assert sources["lots"].format == "csv" and not problems
    assert gzip.decompress((drop / "lots.csv.gz").read_bytes()).startswith(b"lot_id,")


def test_quoting_helpers_survive_hostile_names(db):
    con = connect(db)
    try:
        for name in ['a"b', "x'); DROP TABLE core.lots; --", 'mixed "\'" quotes', "new\nline"]:
            got = con.execute(f"SELECT 1 AS {quote_ident(name)}, {quote_literal(name)}").fetchall()[
                0
            ]
            assert got == (1, name)
            assert con.execute(f"SELECT 1 AS {quote_ident(name)}").description[0][0] == name
        (n,) = con.execute(
            "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'lots'"
        ).fetchall()[0]
        assert n == 1
    finally:
        con.close()
    with pytest.raises(ValueError, match="NUL"):
        quote_ident("a\x00b")


def test_connect_read_only_needs_an_existing_database(tmp_path):
    with pytest.raises(FileNotFoundError, match="ingest a drop first"):
        connect(tmp_path / "none.duckdb", read_only=True)


def test_rows_of_a_merged_drop_keep_their_origin(tmp_path, db):
    result = ingest(write_drop(tmp_path / "d", fab_tables(), "csv"), db)
    got = set(query(db, "SELECT DISTINCT drop_id, source_file FROM core.wafers"))
    assert got == {(result.drop_id, "wafers.csv")}
    assert snapshot(db)["lots"][0][4] == result.drop_id
