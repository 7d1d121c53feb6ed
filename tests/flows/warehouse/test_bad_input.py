"""Bad input never loses data and always explains itself.

Each test delivers one kind of broken drop on top of a database that already holds a merged
fab, then checks the four promises: the problem names the file, the rule, the count and
example rows; the analysis tables are unchanged; the drop log records the rejection; every
delivered row (or the unreadable file's bytes) is inspectable in quarantine.
"""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.warehouse.ingest import IngestResult
from tests.flows.conftest import ingest, last_log, query, snapshot
from tests.flows.drops import COLUMNS, csv_bytes, fab_tables, write_drop, write_table


def problem(result: IngestResult, rule: str):
    found = [p for p in result.problems if p.rule == rule]
    assert found, f"no problem with rule {rule}: {[str(p) for p in result.problems]}"
    return found[0]


def assert_rejected(
    result: IngestResult, db: Path, before: dict, rule: str, file: str, count: int | None = None
):
    """The shared promises of a rejected drop; returns the problem for specific checks."""
    assert result.status == "rejected"
    p = problem(result, rule)
    assert p.severity == "error"
    assert file in (p.file or ""), p
    assert file in str(p)
    if count is not None:
        assert p.count == count, p
        assert str(count) in p.message
    assert snapshot(db) == before, "a rejected drop changed the analysis tables"
    log = last_log(db)
    assert log["status"] == "rejected" and log["drop_id"] == result.drop_id
    assert rule in {q["rule"] for q in log["problems"]}
    rules = query(
        db,
        "SELECT rule, n_rows, message FROM quarantine.problems WHERE attempt_id = ?",
        [log["attempt_id"]],
    )
    assert rule in {r[0] for r in rules}
    return p


def quarantined(db: Path, drop_id: str, table: str) -> list[tuple]:
    """(source_file, source_row, rules, row as delivered) of a table's quarantined rows."""
    rows = query(
        db,
        "SELECT source_file, source_row, rules, row_json FROM quarantine.rows "
        "WHERE drop_id = ? AND table_name = ? ORDER BY source_file, source_row",
        [drop_id, table],
    )
    return [(f, r, rules, json.loads(j)) for f, r, rules, j in rows]


def new_lot_tables() -> dict:
    """A second, valid delivery (lot L003) to break in the tests."""
    return fab_tables(lots=("L003",))


def test_missing_column(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    drop = write_drop(tmp_path / "d", {"lots": tables["lots"]})
    cols = [c for c in COLUMNS["wafers"] if c != "slot"]
    write_table(drop, "wafers", tables["wafers"], "csv", columns=cols)
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "missing_column", "wafers.csv")
    assert "slot" in p.message and "wafer_id, lot_id" in p.message
    rows = quarantined(base_db, result.drop_id, "wafers")
    assert len(rows) == len(tables["wafers"])  # the rows are kept as delivered
    assert rows[0][3] == {"wafer_id": "L003.01", "lot_id": "L003"}
    assert len(quarantined(base_db, result.drop_id, "lots")) == 1  # innocent rows kept too


def test_wrong_type(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    tables["wafers"][0]["slot"] = "abc"
    tables["wafers"][1]["slot"] = "1.5"  # not quietly rounded to 2
    drop = write_drop(tmp_path / "d", {"lots": tables["lots"], "wafers": tables["wafers"]}, "csv")
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "wrong_type", "wafers.csv", count=2)
    assert "slot" in p.message
    assert [e["row"] for e in p.examples] == [1, 2]
    rows = quarantined(base_db, result.drop_id, "wafers")
    bad = {r[3]["slot"]: r[2] for r in rows if r[2]}
    assert bad == {"abc": ["wrong_type"], "1.5": ["wrong_type"]}
    assert len(rows) == len(tables["wafers"])


def test_unparsable_timestamp(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    tables["step_history"][4]["track_in_ts"] = "yesterday 8am"
    drop = write_drop(tmp_path / "d", tables, "csv.gz")
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "unparsable_timestamp", "step_history.csv.gz", 1)
    assert "track_in_ts" in p.message and "ISO-8601" in p.message
    assert p.examples[0]["row"] == 5
    (row,) = [r for r in quarantined(base_db, result.drop_id, "step_history") if r[2]]
    assert row[3]["track_in_ts"] == "yesterday 8am" and row[1] == 5


def test_duplicate_keys(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    clash = dict(tables["step_history"][0], tool_id="OX02")  # same (wafer_id, step_seq)
    tables["step_history"].append(clash)
    drop = write_drop(tmp_path / "d", tables)
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "duplicate_key", "step_history.parquet", 2)
    assert "(wafer_id, step_seq)" in p.message
    assert {e["tool_id"] for e in p.examples} == {"OX01", "OX02"}


def test_verbatim_repeated_rows_are_collapsed_not_rejected(tmp_path, base_db):
    tables = new_lot_tables()
    tables["step_history"].append(dict(tables["step_history"][0]))
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    assert result.status == "merged"
    (n,) = query(base_db, "SELECT count(*) FROM core.step_history WHERE wafer_id = 'L003.01'")[0]
    assert n == 4


def test_dies_good_above_dies_total(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    tables["sort_yield"][2].update(dies_good=101, dies_total=100)
    result = ingest(write_drop(tmp_path / "d", tables, "csv"), base_db)
    p = assert_rejected(result, base_db, before, "dies_good_gt_dies_total", "sort_yield.csv", 1)
    assert p.examples[0]["dies_good"] == 101 and p.examples[0]["wafer_id"] == "L003.03"


def test_zero_or_negative_dies_total(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    tables["sort_yield"][0].update(dies_total=0, dies_good=0)
    tables["sort_yield"][1].update(dies_total=-5, dies_good=0)
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    p = assert_rejected(result, base_db, before, "dies_total_positive", "sort_yield.parquet", 2)
    assert {e["dies_total"] for e in p.examples} == {0, -5}


def test_unknown_wafer(tmp_path, base_db):
    before = snapshot(base_db)
    rows = [{"wafer_id": "NOPE.01", "dies_total": 100, "dies_good": 50, "test_ts": None}]
    result = ingest(write_drop(tmp_path / "d", {"sort_yield": rows}, "csv"), base_db)
    p = assert_rejected(result, base_db, before, "unknown_wafer", "sort_yield.csv", 1)
    assert p.examples[0]["wafer_id"] == "NOPE.01"
    assert quarantined(base_db, result.drop_id, "sort_yield")[0][2] == ["unknown_wafer"]


def test_unknown_lot(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()  # wafers of L003 without the lots row for L003
    result = ingest(write_drop(tmp_path / "d", {"wafers": tables["wafers"]}), base_db)
    p = assert_rejected(result, base_db, before, "unknown_lot", "wafers.parquet", 3)
    assert "earlier one" in p.message and p.examples[0]["lot_id"] == "L003"


def test_references_into_earlier_drops_are_fine(tmp_path, base_db):
    # wafers of a new lot whose lots row came in an earlier drop
    lots = write_drop(tmp_path / "d1", {"lots": new_lot_tables()["lots"]})
    assert ingest(lots, base_db).status == "merged"
    wafers = write_drop(tmp_path / "d2", {"wafers": new_lot_tables()["wafers"]})
    assert ingest(wafers, base_db).status == "merged"


def test_slot_out_of_range(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    tables["wafers"][0]["slot"] = 0
    tables["wafers"][1]["slot"] = 26
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    p = assert_rejected(result, base_db, before, "slot_range", "wafers.parquet", 2)
    assert "1 and 25" in p.message


def test_slot_not_unique_in_lot_across_drops(tmp_path, base_db):
    before = snapshot(base_db)
    rows = [{"wafer_id": "L001.99", "lot_id": "L001", "slot": 2}]  # slot 2 of L001 is taken
    result = ingest(write_drop(tmp_path / "d", {"wafers": rows}), base_db)
    p = assert_rejected(result, base_db, before, "slot_not_unique_in_lot", "wafers.parquet", 1)
    assert p.examples[0]["detail"] == "L001 slot 2"


def test_track_out_before_track_in(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    row = tables["step_history"][3]
    row["track_out_ts"], row["track_in_ts"] = row["track_in_ts"], row["track_out_ts"]
    result = ingest(write_drop(tmp_path / "d", tables, "csv"), base_db)
    p = assert_rejected(result, base_db, before, "track_out_before_track_in", "step_history.csv", 1)
    assert p.examples[0]["row"] == 4


def test_empty_file(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", {"lots": new_lot_tables()["lots"]})
    (drop / "wafers.csv").write_bytes(b"")
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "empty_file", "wafers.csv")
    assert "0 bytes" in p.message
    files = query(base_db, "SELECT source_file, rule, n_bytes FROM quarantine.files")
    assert files == [("wafers.csv", "empty_file", 0)]
    assert len(quarantined(base_db, result.drop_id, "lots")) == 1


def test_truncated_parquet(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", new_lot_tables())
    path = drop / "step_history.parquet"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "corrupt_parquet", "step_history.parquet")
    assert "truncated or corrupt" in p.message
    (kept,) = query(base_db, "SELECT content FROM quarantine.files WHERE rule = 'corrupt_parquet'")
    assert kept[0] == data[: len(data) // 2]  # the bytes as delivered
    # the readable tables of the drop are kept row by row
    assert len(quarantined(base_db, result.drop_id, "wafers")) == 3


def test_corrupt_parquet_in_a_split_folder_names_the_part(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", new_lot_tables(), parts={"step_history": 3})
    part = drop / "step_history" / "part-001.parquet"
    data = bytearray(part.read_bytes())
    data[8:-12] = bytes(len(data) - 20)  # zero the pages and metadata, keep the magic bytes
    part.write_bytes(bytes(data))
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "corrupt_parquet", "step_history/part-001.parquet")
    assert "part-000" not in p.file and "part-002" not in p.file


def test_csv_with_a_ragged_row(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", {"lots": new_lot_tables()["lots"]})
    text = csv_bytes(new_lot_tables()["wafers"], COLUMNS["wafers"]) + b"L003.09,L003,9,extra\n"
    (drop / "wafers.csv").write_bytes(text)
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "ragged_row", "wafers.csv", 1)
    assert p.examples[0]["line"] == 5 and p.examples[0]["text"] == "L003.09,L003,9,extra"
    assert len(quarantined(base_db, result.drop_id, "wafers")) == 3  # the good lines
    assert query(base_db, "SELECT rule FROM quarantine.files") == [("ragged_row",)]


def test_non_utf8_bytes(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", {"lots": new_lot_tables()["lots"]})
    text = csv_bytes(new_lot_tables()["wafers"], COLUMNS["wafers"])
    (drop / "wafers.csv").write_bytes(text.replace(b"L003.02", "L003.\xe902".encode("latin-1")))
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "not_utf8", "wafers.csv", 1)
    assert p.examples[0]["line"] == 3
    (content,) = query(base_db, "SELECT content FROM quarantine.files")[0]
    assert b"\xe9" in content


def test_header_only_csv(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", {"lots": new_lot_tables()["lots"]})
    (drop / "wafers.csv").write_bytes(b"wafer_id,lot_id,slot\n")
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "no_rows", "wafers.csv", 0)
    assert "header but no rows" in p.message


@pytest.mark.parametrize(
    ("name", "content", "rule"),
    [
        ("lots.parquet", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4, "not_a_table"),
        ("lots.parquet", b"lot_id,product\nL003,P1\n", "not_a_table"),
        ("lots.csv.gz", b"this is not gzip at all", "malformed_csv"),
        ("lots.csv", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x02\x00", "not_utf8"),
    ],
)
def test_a_file_that_is_not_a_table(tmp_path, base_db, name, content, rule):
    before = snapshot(base_db)
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / name).write_bytes(content)
    result = ingest(drop, base_db)
    assert_rejected(result, base_db, before, rule, name)
    (kept,) = query(base_db, "SELECT content FROM quarantine.files")[0:1]
    assert kept[0] == content


def test_a_text_file_that_is_not_a_table_misses_the_columns(tmp_path, base_db):
    before = snapshot(base_db)
    drop = tmp_path / "d"
    drop.mkdir()
    (drop / "wafers.csv").write_text("Dear fab team,\nplease find the data attached.\n")
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "missing_column", "wafers.csv")
    assert "wafer_id, lot_id, slot" in p.message


NASTY = ['slot"; DROP TABLE core.lots; --', "it's", "x'); DELETE FROM core.wafers; --", "a b\nc"]


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_column_names_with_sql_metacharacters_do_not_inject(tmp_path, base_db, fmt):
    before = snapshot(base_db)
    tables = new_lot_tables()
    wafers = [dict(w, **{n: f"v{i}" for i, n in enumerate(NASTY)}) for w in tables["wafers"]]
    drop = write_drop(tmp_path / "d", {"lots": tables["lots"]})
    write_table(drop, "wafers", wafers, fmt, columns=COLUMNS["wafers"] + NASTY)
    result = ingest(drop, base_db)
    assert result.status == "merged", [str(p) for p in result.problems]
    after = snapshot(base_db)
    assert after["lots"] == sorted(before["lots"] + [tuple(after["lots"][-1])], key=repr)
    assert len(after["wafers"]) == len(before["wafers"]) + 3  # nothing deleted, nothing dropped
    extra = query(base_db, "SELECT extra FROM core.wafers WHERE wafer_id = 'L003.01'")[0][0]
    assert json.loads(extra) == {n: f"v{i}" for i, n in enumerate(NASTY)}
    note = problem(result, "extra_columns")
    assert note.severity == "warning" and NASTY[0] in note.message


def test_a_quoted_lookalike_of_a_contract_column_is_not_that_column(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    wafers = [
        {"wafer_id": w["wafer_id"], "lot_id": w["lot_id"], 'slot"': w["slot"]}
        for w in tables["wafers"]
    ]
    drop = write_drop(tmp_path / "d", {"lots": tables["lots"]})
    write_table(drop, "wafers", wafers, "csv", columns=["wafer_id", "lot_id", 'slot"'])
    result = ingest(drop, base_db)
    assert_rejected(result, base_db, before, "missing_column", "wafers.csv")


def test_the_same_drop_twice(tmp_path, base_db):
    drop = write_drop(tmp_path / "d", new_lot_tables(), "csv")
    first = ingest(drop, base_db)
    assert first.status == "merged"
    before = snapshot(base_db)
    again = ingest(drop, base_db)
    assert again.status == "already_merged" and again.drop_id == first.drop_id
    assert "already merged" in again.summary()
    assert snapshot(base_db) == before
    assert last_log(base_db)["status"] == "already_merged"
    # the same content under another folder name is the same drop
    copy_ = write_drop(tmp_path / "d-again", new_lot_tables(), "csv")
    (copy_ / "x").mkdir()
    assert ingest(copy_, base_db).status == "already_merged"


def test_two_drops_disagree_about_a_wafers_lot(tmp_path, base_db):
    before = snapshot(base_db)
    earlier = query(base_db, "SELECT drop_id FROM core.wafers WHERE wafer_id = 'L001.01'")[0][0]
    tables = new_lot_tables()
    tables["wafers"].append({"wafer_id": "L001.01", "lot_id": "L003", "slot": 9})
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    p = assert_rejected(result, base_db, before, "lot_conflict", "wafers.parquet", 1)
    assert earlier in p.examples[0]["detail"] and "lot L001" in p.examples[0]["detail"]


def test_a_step_row_that_disagrees_with_an_earlier_drop(tmp_path, base_db):
    before = snapshot(base_db)
    rows = [dict(fab_tables()["step_history"][0], tool_id="OX99")]
    result = ingest(write_drop(tmp_path / "d", {"step_history": rows}), base_db)
    assert_rejected(result, base_db, before, "conflicts_earlier_drop", "step_history.parquet", 1)


def test_many_problems_are_all_reported_at_once(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    tables["wafers"][0]["slot"] = 30
    tables["sort_yield"][0]["dies_good"] = 500
    tables["inline_meas"][0]["value"] = float("inf")
    tables["step_history"][0]["tool_id"] = "OX 01"  # a space is not an identifier
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    rules = {p.rule for p in result.errors}
    assert {"slot_range", "dies_good_gt_dies_total", "value_finite", "pattern"} <= rules
    assert snapshot(base_db) == before


def test_unknown_files_are_ignored_with_a_warning_and_ambiguous_tables_rejected(tmp_path, base_db):
    tables = new_lot_tables()
    drop = write_drop(tmp_path / "d", tables)
    (drop / "README.txt").write_text("hello")
    result = ingest(drop, base_db)
    assert result.status == "merged"
    assert problem(result, "unknown_file").severity == "warning"
    before = snapshot(base_db)
    drop2 = write_drop(tmp_path / "d2", {"lots": fab_tables(lots=("L009",))["lots"]})
    (drop2 / "lots.csv").write_bytes(gzip.decompress(gzip.compress(b"lot_id,product\nL009,P1\n")))
    result = ingest(drop2, base_db)
    assert_rejected(result, base_db, before, "ambiguous_table", "lots")


def test_row_quarantine_mode_keeps_bad_rows_out_and_merges_the_rest(tmp_path, base_db):
    tables = new_lot_tables()
    tables["wafers"][0]["slot"] = 40  # L003.01 is bad: its history, metrology and yield go too
    tables["sort_yield"][1]["dies_good"] = 500  # a bad sort row of a good wafer
    result = ingest(write_drop(tmp_path / "d", tables), base_db, on_bad_rows="quarantine")
    assert result.status == "merged"
    assert {p.rule for p in result.problems} >= {"slot_range", "dies_good_gt_dies_total"}
    assert not result.errors
    wafers = {r[0] for r in query(base_db, "SELECT wafer_id FROM core.wafers WHERE lot_id='L003'")}
    assert wafers == {"L003.02", "L003.03"}
    sorted_ = {
        r[0]
        for r in query(base_db, "SELECT wafer_id FROM core.sort_yield WHERE wafer_id LIKE 'L003%'")
    }
    assert sorted_ == {"L003.03"}
    (n_steps,) = query(
        base_db, "SELECT count(*) FROM core.step_history WHERE wafer_id = 'L003.01'"
    )[0]
    assert n_steps == 0
    rules = {
        (t, tuple(r)) for t, r in query(base_db, "SELECT table_name, rules FROM quarantine.rows")
    }
    assert ("wafers", ("slot_range",)) in rules
    assert ("step_history", ("parent_quarantined",)) in rules
    assert ("sort_yield", ("dies_good_gt_dies_total",)) in rules


def test_a_rejected_drop_can_be_fixed_and_redelivered(tmp_path, base_db):
    tables = new_lot_tables()
    broken = copy.deepcopy(tables)
    broken["wafers"][0]["slot"] = 99
    assert ingest(write_drop(tmp_path / "bad", broken), base_db).status == "rejected"
    assert ingest(write_drop(tmp_path / "good", tables), base_db).status == "merged"
    statuses = [
        r[0] for r in query(base_db, "SELECT status FROM meta.drop_log ORDER BY attempt_id")
    ]
    assert statuses == ["merged", "rejected", "merged"]


def test_parquet_with_wrong_physical_types(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", {"lots": new_lot_tables()["lots"]})
    table = pa.table(
        {"wafer_id": ["L003.01", "L003.02"], "lot_id": ["L003", "L003"], "slot": [1.0, 2.5]}
    )
    pq.write_table(table, drop / "wafers.parquet")
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "wrong_type", "wafers.parquet", 1)
    assert p.examples[0]["wafer_id"] == "L003.02"


def test_parquet_with_a_corrupt_page_behind_a_valid_footer(tmp_path, base_db):
    # the footer reads, so the file only fails once its pages are decoded (validation time)
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", new_lot_tables())
    path = drop / "step_history.parquet"
    data = bytearray(path.read_bytes())
    column = pq.ParquetFile(path).metadata.row_group(0).column(4)
    start = column.data_page_offset + 10
    data[start : start + 30] = b"\xab" * 30
    path.write_bytes(bytes(data))
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "corrupt_parquet", "step_history.parquet")
    assert "truncated or corrupt" in p.message
    assert len(quarantined(base_db, result.drop_id, "wafers")) == 3


def test_a_drop_that_changes_while_it_is_ingested_is_not_merged(tmp_path, base_db, monkeypatch):
    import flows.warehouse.ingest as ingest_module

    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", new_lot_tables())
    real = ingest_module.check_drop

    def validate_then_touch(*args, **kwargs):  # someone rewrites a file mid-ingest
        out = real(*args, **kwargs)
        write_table(drop, "lots", [dict(new_lot_tables()["lots"][0], product="P9")])
        return out

    monkeypatch.setattr(ingest_module, "check_drop", validate_then_touch)
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "drop_changed", "d")
    assert "changed while it was being ingested" in p.message


# --- each per-row rule of the suites on its own: message, count, rows kept -----------------


@pytest.mark.parametrize(
    ("table", "edits", "rule", "words"),
    [
        ("lots", {0: {"product": None}}, "not_null", ["product is never empty"]),
        ("step_history", {1: {"tool_id": None}, 5: {"layer": None}}, "not_null",
         ["layer is never empty", "tool_id is never empty"]),
        ("step_history", {2: {"step_seq": 0}}, "step_seq_range", ["step_seq is greater than 0"]),
        ("step_history", {3: {"operation": "GATE ETCH"}}, "pattern",
         ["operation is an identifier (letters, digits, _ . -, no spaces)"]),
        ("inline_meas", {0: {"value": float("nan")}, 3: {"value": float("inf")}},
         "value_finite", ["value is a finite number"]),
        ("inline_meas", {1: {"site": 0}}, "site_range", ["site"]),
        ("sort_yield", {0: {"dies_good": -1}}, "dies_good_negative", ["dies_good"]),
    ],
)  # fmt: skip
def test_a_row_rule_names_its_rows_and_keeps_the_drop(tmp_path, base_db, table, edits, rule, words):
    before = snapshot(base_db)
    tables = new_lot_tables()
    for row, change in edits.items():
        tables[table][row].update(change)
    file = f"{table}.parquet"
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    p = assert_rejected(result, base_db, before, rule, file, count=len(edits))
    assert all(w in p.message for w in words), p.message
    assert "wafer_id" not in p.message  # a rule the suite states per column names the right one
    assert [e["row"] for e in p.examples] == [row + 1 for row in sorted(edits)]
    kept = quarantined(base_db, result.drop_id, table)
    assert len(kept) == len(tables[table])  # every delivered row, the innocent ones too
    assert {r[1] for r in kept if rule in (r[2] or [])} == {row + 1 for row in edits}
    for other, rows in tables.items():
        assert len(quarantined(base_db, result.drop_id, other)) == len(rows)


@pytest.mark.parametrize(
    ("table", "clash"),
    [
        ("lots", {"product": "P2"}),  # a single-column key
        ("sort_die", {"bin": 1}),  # a three-column key
    ],
)
def test_duplicate_keys_in_other_tables(tmp_path, base_db, table, clash):
    from tests.flows.drops import sort_die_rows

    before = snapshot(base_db)
    tables = new_lot_tables()
    if table == "sort_die":
        tables["sort_die"] = sort_die_rows([w["wafer_id"] for w in tables["wafers"]])
    tables[table].append(dict(tables[table][0], **clash))
    result = ingest(write_drop(tmp_path / "d", tables), base_db)
    assert_rejected(result, base_db, before, "duplicate_key", f"{table}.parquet", 2)
    assert len(quarantined(base_db, result.drop_id, table)) == len(tables[table])


def test_a_duplicate_key_across_two_files_of_a_split_table(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    clash = dict(tables["step_history"][0], tool_id="OX02")
    tables["step_history"].insert(1, clash)  # rows 0 and 1 go to part-000 and part-001
    result = ingest(write_drop(tmp_path / "d", tables, parts={"step_history": 2}), base_db)
    p = assert_rejected(result, base_db, before, "duplicate_key", "step_history/", 2)
    assert {e["file"] for e in p.examples} == {
        "step_history/part-000.parquet",
        "step_history/part-001.parquet",
    }


def test_a_split_folder_mixing_formats(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    drop = write_drop(tmp_path / "d", tables, parts={"step_history": 2})
    part = drop / "step_history" / "part-001.parquet"
    part.with_suffix(".csv").write_bytes(csv_bytes(tables["step_history"][1::2]))
    part.unlink()
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "mixed_formats", "step_history/")
    assert "part-000.parquet" in p.message and "part-001.csv" in p.message
    assert len(quarantined(base_db, result.drop_id, "wafers")) == len(tables["wafers"])


def test_an_empty_split_folder_and_a_drop_without_tables(tmp_path, base_db):
    before = snapshot(base_db)
    drop = write_drop(tmp_path / "d", {"lots": new_lot_tables()["lots"]})
    (drop / "wafers").mkdir()
    result = ingest(drop, base_db)
    assert_rejected(result, base_db, before, "empty_folder", "wafers/")
    assert len(quarantined(base_db, result.drop_id, "lots")) == 1
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "notes.txt").write_text("no tables here")
    result = ingest(nothing, base_db)
    p = assert_rejected(result, base_db, before, "no_tables", "nothing")
    assert "no contract table" in p.message


def test_a_truncated_gzip_csv(tmp_path, base_db):
    before = snapshot(base_db)
    tables = new_lot_tables()
    drop = write_drop(tmp_path / "d", tables, "csv.gz")
    path = drop / "step_history.csv.gz"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    result = ingest(drop, base_db)
    assert result.status == "rejected" and snapshot(base_db) == before
    (p,) = [q for q in result.errors if q.file == "step_history.csv.gz"]
    assert p.rule in {"malformed_csv", "corrupt_file"}, p
    (kept,) = query(base_db, "SELECT content FROM quarantine.files WHERE source_file = ?",
                    ["step_history.csv.gz"])  # fmt: skip
    assert kept[0] == data[: len(data) // 2]
    assert len(quarantined(base_db, result.drop_id, "wafers")) == len(tables["wafers"])
