"""Wafer sort delivered as STDF V4 files in a drop's `sort/` folder (contract v2).

The files are written by the simulator's writer (`flows.fabsim.stdf_writer`) and read by the
pipeline's reader (`stdf_convert`), two independent implementations of the specification;
the corrupt variants damage bytes of a properly written file. Decisions these tests pin down:

- a wafer whose WIR has no WRR is rejected (its test did not finish: its dies may be
  incomplete), as is a file without its closing MRR and a wafer whose WRR part count differs
  from its PRRs;
- big-endian files (CPU_TYPE 1) are read like little-endian ones; any other CPU_TYPE is
  rejected;
- an HBR without a pass/fail flag gives no bin definition (a warning says so).
"""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from flows.fabsim.stdf_writer import StdfLot, StdfWafer, stdf_bytes, write_stdf
from flows.warehouse.stdf import WAFER_ID_ENV, wafer_id_template
from tests.flows.conftest import ingest, query, snapshot
from tests.flows.drops import fab_tables, sort_die_rows, write_drop
from tests.flows.warehouse.test_bad_input import assert_rejected, quarantined

BINS = {1: ("PASS", True), 7: ("LEAKAGE", False)}


def stdf_lot(lot: str = "L001", wafers=(1, 2, 3), size: int = 3, bad: int = 2, **kw) -> StdfLot:
    """The dies of `sort_die_rows` (size x size grid, the first `bad` in bin 7) as one lot."""
    out = []
    for w in wafers:
        rows = sort_die_rows([f"{lot}.{w:02d}"], size, bad)
        hard = [r["bin"] for r in rows]
        out.append(
            StdfWafer(
                str(w), [r["die_x"] for r in rows], [r["die_y"] for r in rows], hard,
                [10 * b + 1 for b in hard], 1_772_352_000,
            )
        )  # fmt: skip
    return StdfLot(lot, out, "P1", kw.pop("hard_bins", BINS), **kw)


def sort_drop(folder: Path, files: dict[str, bytes], tables: dict | None = None) -> Path:
    """A drop with `files` (name -> bytes) in its sort/ folder, beside `tables`."""
    write_drop(folder, tables or {})
    (folder / "sort").mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        (folder / "sort" / name).write_bytes(content)
    return folder


def records(data: bytes) -> list[tuple[int, str]]:
    """(byte offset, record name) of each record of a well-formed little-endian file."""
    names = {(1, 10): "MIR", (2, 10): "WIR", (2, 20): "WRR", (5, 10): "PIR", (5, 20): "PRR",
             (1, 20): "MRR", (0, 10): "FAR", (1, 40): "HBR", (1, 50): "SBR"}  # fmt: skip
    out, offset = [], 0
    while offset < len(data):
        length, typ, sub = struct.unpack_from("<HBB", data, offset)
        out.append((offset, names.get((typ, sub), "?")))
        offset += 4 + length
    return out


def nth(data: bytes, kind: str, k: int = 0) -> tuple[int, int]:
    """(record index, byte offset) of the k-th record of a kind (negative k from the end)."""
    found = [(i, off) for i, (off, name) in enumerate(records(data)) if name == kind]
    return found[k]


def cut_record(data: bytes, kind: str, k: int = 0) -> bytes:
    """The file without its k-th record of `kind`."""
    _, off = nth(data, kind, k)
    length = struct.unpack_from("<H", data, off)[0]
    return data[:off] + data[off + 4 + length :]


# --- good files --------------------------------------------------------------------------


def test_stdf_dies_merge_as_the_same_rows_as_sort_die_parquet(tmp_path, base_db):
    wafers = [f"L001.{w:02d}" for w in (1, 2, 3)]
    via_stdf = ingest(sort_drop(tmp_path / "s", {"L001.stdf": stdf_bytes(stdf_lot())}), base_db)
    assert via_stdf.status == "merged", [str(p) for p in via_stdf.problems]
    assert via_stdf.row_counts == {"sort_die": 27, "bin_defs": 2}
    sql = "SELECT wafer_id, die_x, die_y, bin FROM core.sort_die ORDER BY ALL"
    stdf_rows = query(base_db, sql)
    # the same dies as Parquet into a fresh copy of the base
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    fresh_db = fresh / "fab.duckdb"
    assert ingest(write_drop(fresh / "base", fab_tables()), fresh_db).status == "merged"
    parquet = ingest(write_drop(tmp_path / "p", {"sort_die": sort_die_rows(wafers)}), fresh_db)
    assert parquet.status == "merged"
    assert stdf_rows == query(fresh_db, sql)
    assert len(stdf_rows) == 27
    # provenance: the file and, as the soft bin, the extra column; the HBRs as bin_defs
    assert query(
        base_db,
        "SELECT DISTINCT source_file, extra->>'soft_bin' FROM core.sort_die WHERE bin = 7",
    ) == [("sort/L001.stdf", "71")]
    assert query(base_db, "SELECT bin, name, good FROM core.bin_defs ORDER BY bin") == [
        (1, "PASS", True),
        (7, "LEAKAGE", False),
    ]


def test_big_endian_and_gzipped_files_read_alike(tmp_path, base_db):
    lot2 = stdf_lot("L002")
    files = {
        "L001.stdf": stdf_bytes(stdf_lot(), byte_order=">"),
        "L002.stdf.gz": gzip.compress(stdf_bytes(lot2), mtime=0),
    }
    result = ingest(sort_drop(tmp_path / "d", files), base_db)
    assert result.status == "merged", [str(p) for p in result.problems]
    assert query(
        base_db, "SELECT wafer_id, count(*), sum(bin) FROM core.sort_die GROUP BY 1 ORDER BY 1"
    ) == [(f"{lot}.{w:02d}", 9, 2 * 7 + 7) for lot in ("L001", "L002") for w in (1, 2, 3)]


def test_stdf_beside_sort_die_parquet_lands_in_one_table(tmp_path, base_db):
    tables = {"sort_die": sort_die_rows(["L002.01"])}
    drop = sort_drop(tmp_path / "d", {"L001.stdf": stdf_bytes(stdf_lot())}, tables)
    result = ingest(drop, base_db)
    assert result.status == "merged", [str(p) for p in result.problems]
    assert result.merged_counts["sort_die"] == 27 + 9
    assert query(base_db, "SELECT DISTINCT source_file FROM core.sort_die ORDER BY 1") == [
        ("sort/L001.stdf",),
        ("sort_die.parquet",),
    ]


def test_a_die_delivered_twice_with_other_bins_is_a_duplicate_key(tmp_path, base_db):
    before = snapshot(base_db)
    tables = {"sort_die": sort_die_rows(["L001.01"], bad=0)}  # all good, STDF says two fail
    drop = sort_drop(tmp_path / "d", {"L001.stdf": stdf_bytes(stdf_lot())}, tables)
    p = assert_rejected(ingest(drop, base_db), base_db, before, "duplicate_key", "sort/", 4)
    assert "sort_die.parquet" in p.file


def test_the_wafer_id_template_is_configurable(tmp_path, base_db, monkeypatch):
    lot = stdf_lot("L001", wafers=(1,))
    for w in lot.wafers:
        w.wafer = f"W{int(w.wafer)}"  # the tester numbers wafers W1, W2, ...
    drop = sort_drop(tmp_path / "d", {"L001.stdf": stdf_bytes(lot)})
    before = snapshot(base_db)
    # the default {wafer:02d} needs a number: a clear rejection naming the template
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "corrupt_stdf", "sort/L001.stdf")
    assert "'W1'" in p.message and "{lot}.{wafer:02d}" in p.message and WAFER_ID_ENV in p.message
    monkeypatch.setenv(WAFER_ID_ENV, "{lot}.0{wafer_text[1]}")
    assert ingest(drop, base_db).status == "merged"
    assert query(base_db, "SELECT DISTINCT wafer_id FROM core.sort_die") == [("L001.01",)]
    with pytest.raises(ValueError, match="not usable"):
        wafer_id_template("{lot}.{slot}")


def test_stdf_wafers_of_an_unknown_lot_are_rejected_like_any_unknown_wafer(tmp_path, base_db):
    before = snapshot(base_db)
    drop = sort_drop(tmp_path / "d", {"L009.stdf": stdf_bytes(stdf_lot("L009", wafers=(1,)))})
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "unknown_wafer", "sort/", 9)
    first = p.examples[0]
    assert first["file"] == "sort/L009.stdf" and first["wafer_id"] == "L009.01"
    assert first["row"] == nth(stdf_bytes(stdf_lot("L009", wafers=(1,))), "PRR")[0]
    assert "--stdf-wafer-id" in p.message  # the template may be what is wrong
    rows = quarantined(base_db, result.drop_id, "sort_die")
    assert len(rows) == 9 and all(r[2] == ["unknown_wafer"] for r in rows)
    assert rows[0][3] == {"wafer_id": "L009.01", "die_x": "0", "die_y": "0", "bin": "7",
                          "soft_bin": "71"}  # fmt: skip


def test_hbr_names_follow_the_bin_defs_rules(tmp_path, base_db):
    first = ingest(sort_drop(tmp_path / "d1", {"L001.stdf": stdf_bytes(stdf_lot())}), base_db)
    assert first.status == "merged"
    before = snapshot(base_db)
    renamed = stdf_lot("L002", hard_bins={1: ("PASS", True), 7: ("SHORT", False)})
    result = ingest(sort_drop(tmp_path / "d2", {"L002.stdf": stdf_bytes(renamed)}), base_db)
    assert_rejected(result, base_db, before, "conflicts_earlier_drop", "sort/")


def test_an_hbr_without_pass_fail_flag_defines_no_bin(tmp_path, base_db):
    data = bytearray(stdf_bytes(stdf_lot()))
    _, off = nth(bytes(data), "HBR", 1)  # bin 7's HBR: its HBIN_PF after HEAD, SITE, NUM, CNT
    data[off + 4 + 8] = ord(" ")
    result = ingest(sort_drop(tmp_path / "d", {"L001.stdf": bytes(data)}), base_db)
    assert result.status == "merged"
    assert query(base_db, "SELECT bin FROM core.bin_defs") == [(1,)]
    note = next(p for p in result.problems if p.rule == "stdf_bins")
    assert note.severity == "warning" and "hard bin(s) 7" in note.message


# --- corrupt files: rejected with the file and record named, nothing merged ----------------

GOOD = stdf_bytes(stdf_lot())


def _bad_rec_len(data: bytes) -> bytes:
    _, off = nth(data, "PRR", 4)
    return data[:off] + struct.pack("<H", 60000) + data[off + 2 :]


def _short_prr(data: bytes) -> bytes:
    """A PRR whose REC_LEN says 4 bytes: it cannot hold its bins; the frame is broken."""
    _, off = nth(data, "PRR", 4)
    return data[:off] + struct.pack("<H", 4) + data[off + 2 :]


def _far_byte(data: bytes, pos: int, value: int) -> bytes:
    return data[:pos] + bytes([value]) + data[pos + 1 :]


def _moved_first_wir(data: bytes) -> bytes:
    """The first WIR moved after the wafer's first die: that PRR comes before any WIR."""
    _, wir = nth(data, "WIR")
    wir_len = 4 + struct.unpack_from("<H", data, wir)[0]
    _, prr = nth(data, "PRR")
    prr_end = prr + 4 + struct.unpack_from("<H", data, prr)[0]
    return data[:wir] + data[wir + wir_len : prr_end] + data[wir : wir + wir_len] + data[prr_end:]


PRR4 = nth(GOOD, "PRR", 4)
PRR_FIRST = nth(GOOD, "PRR", 0)
WIR_LAST = nth(GOOD, "WIR", -1)
WRR_FIRST = nth(GOOD, "WRR", 0)
CORRUPT = {
    "truncated mid-record": (
        "L001.stdf", GOOD[: PRR4[1] + 9],
        [f"record #{PRR4[0]} (PRR) at byte offset {PRR4[1]}", "declares 20 bytes, only 5"],
    ),
    "truncated in a record header": (
        "L001.stdf", GOOD[: PRR4[1] + 2],
        [f"record #{PRR4[0]} at byte offset {PRR4[1]}", "only 2 of its 4 header bytes"],
    ),
    "cut at a record boundary": (
        "L001.stdf", GOOD[: PRR4[1]], ["has no MRR", "cut"],
    ),
    "bad REC_LEN (too long)": (
        "L001.stdf", _bad_rec_len(GOOD),
        [f"record #{PRR4[0]} (PRR) at byte offset {PRR4[1]} declares 60000 bytes"],
    ),
    "bad REC_LEN (too short)": ("L001.stdf", _short_prr(GOOD), ["bad REC_LEN", "truncated"]),
    "missing FAR": ("L001.stdf", GOOD[6:], ["does not start with a FAR", "01 0a"]),
    "CPU_TYPE of a VAX": ("L001.stdf", _far_byte(GOOD, 4, 0), ["CPU_TYPE 0", "big-endian"]),
    "STDF version 3": ("L001.stdf", _far_byte(GOOD, 5, 3), ["STDF version 3", "only V4"]),
    "PRR before any WIR": (
        "L001.stdf", _moved_first_wir(GOOD),
        [f"record #{PRR_FIRST[0] - 1} (PRR", "before any WIR", "wafer is unknown"],
    ),
    "WIR without WRR": (
        "L001.stdf", cut_record(GOOD, "WRR", -1),
        [f"record #{WIR_LAST[0]} (WIR, byte offset {WIR_LAST[1]})", "'3' has no WRR"],
    ),
    "WRR part count disagrees": (
        "L001.stdf", cut_record(GOOD, "PRR", 2),
        ["wafer L001.01 was tested with 9 parts (WRR.PART_CNT)", "holds 8 PRR",
         f"record #{WRR_FIRST[0] - 1} (WRR"],
    ),
    "garbage bytes": (
        "L001.stdf", bytes(range(256)) * 8, ["not an STDF V4 file", "00 01 02 03"],
    ),
    "gzip truncated": (
        "L001.stdf.gz", gzip.compress(GOOD, mtime=0)[:-40], ["gzip stream ends early"],
    ),
    "empty file": ("L001.stdf", b"", ["empty (0 bytes)"]),
    "die without coordinates": (
        "L001.stdf",
        stdf_bytes(StdfLot("L001", [StdfWafer("1", [0, -32768], [0, 0], [1, 1], [1, 1])], "P1")),
        ["has no die coordinate", "X_COORD"],
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CORRUPT), ids=list(CORRUPT))
def test_a_corrupt_stdf_file_is_rejected_naming_file_and_record(tmp_path, base_db, case):
    name, content, words = CORRUPT[case]
    # a good file beside it: its rows are kept in quarantine, not merged
    files = {name: content, "L002.stdf": stdf_bytes(stdf_lot("L002"))}
    drop = sort_drop(tmp_path / "d", files)
    before = snapshot(base_db)
    result = ingest(drop, base_db)
    p = assert_rejected(result, base_db, before, "corrupt_stdf", f"sort/{name}")
    for w in words:
        assert w in p.message, (w, p.message)
    assert [q.rule for q in result.errors] == ["corrupt_stdf"]
    kept = query(
        base_db,
        "SELECT source_file, rule, n_bytes, content FROM quarantine.files WHERE drop_id = ?",
        [result.drop_id],
    )
    assert kept == [(f"sort/{name}", "corrupt_stdf", len(content), content)]
    good_rows = quarantined(base_db, result.drop_id, "sort_die")
    assert {r[0] for r in good_rows} == {"sort/L002.stdf"} and len(good_rows) == 27


def test_written_files_are_deterministic_and_gz_by_name(tmp_path):
    a = write_stdf(tmp_path / "a.stdf.gz", stdf_lot())
    b = write_stdf(tmp_path / "b.stdf.gz", stdf_lot())
    assert a.read_bytes() == b.read_bytes()
    assert gzip.decompress(a.read_bytes()) == GOOD


def test_yieldrank_ingest_takes_the_wafer_id_template(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    db = tmp_path / "fab.duckdb"
    lot = stdf_lot("L001")
    for w in lot.wafers:
        w.wafer = f"W{w.wafer}"
    drop = sort_drop(tmp_path / "d", {"L001.stdf.gz": gzip.compress(stdf_bytes(lot))},
                     fab_tables())  # fmt: skip
    base = ["ingest", str(drop), "--db", str(db), "--no-gx"]
    refused = CliRunner().invoke(app, [*base, "--stdf-wafer-id", "{lot}/{slot}"])
    assert refused.exit_code == 2 and "slot" in refused.output
    run = ["run", str(drop), "--db", str(db), "--stdf-wafer-id", "{lot}-{slot}"]
    refused_run = CliRunner().invoke(app, run)  # refused before any flow starts
    assert refused_run.exit_code == 2 and "slot" in refused_run.output
    rejected = CliRunner().invoke(app, base)
    assert rejected.exit_code == 1 and "corrupt_stdf" in rejected.stderr
    assert "'W1'" in rejected.stderr
    merged = CliRunner().invoke(app, [*base, "--stdf-wafer-id", "{lot}.0{wafer_text[1]}"])
    assert merged.exit_code == 0, merged.output
    assert "sort_die 27" in merged.stdout
    assert query(db, "SELECT count(DISTINCT wafer_id) FROM core.sort_die") == [(3,)]


def test_row_quarantine_mode_keeps_out_only_the_unknown_wafers(tmp_path, base_db):
    files = {
        "L001.stdf": stdf_bytes(stdf_lot("L001")),
        "L009.stdf": stdf_bytes(stdf_lot("L009", wafers=(1,))),
    }
    result = ingest(sort_drop(tmp_path / "d", files), base_db, on_bad_rows="quarantine")
    assert result.status == "merged"
    assert result.merged_counts["sort_die"] == 27
    assert query(base_db, "SELECT DISTINCT source_file FROM core.sort_die") == [("sort/L001.stdf",)]
    kept = quarantined(base_db, result.drop_id, "sort_die")
    assert len(kept) == 9 and {r[0] for r in kept} == {"sort/L009.stdf"}


def test_great_expectations_checks_the_stdf_rows_too(tmp_path, base_db):
    lot = stdf_lot("L001", wafers=(1,))
    result = ingest(sort_drop(tmp_path / "d", {"L001.stdf": stdf_bytes(lot)}), base_db, gx=True)
    assert result.status == "merged", [str(p) for p in result.problems]
    reports = {r.table: r for r in result.gx}
    assert reports["sort_die"].success and reports["sort_die"].rows_total == 9
    assert reports["bin_defs"].success and reports["bin_defs"].rows_total == 2
