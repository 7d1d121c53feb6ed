"""Wafer sort as STDF V4 (contract v2): the testers' files in a drop's `sort/` folder.

Each PRR (part result) becomes a `sort_die` row: the wafer from the enclosing WIR/WRR and the
file's MIR, die x/y and the hard bin; the soft bin is kept in `extra` (`{"soft_bin": "3"}`,
as any extra column). Each HBR (hard-bin summary) with a pass/fail flag becomes a `bin_defs`
row (name, good = flag `P`). The rows land in the same `landing_sort_die` / `landing_bin_defs`
as the Parquet and CSV tables, so the same SQL rules and GX suites check them and they merge
atomically with the rest of the drop. `source_row` of an STDF row is its record's index in
the file (0 = the FAR), so every message can name the record.

The contract's `wafer_id` is made from a template (`DEFAULT_WAFER_ID` = `{lot}.{wafer:02d}`;
`yieldrank ingest --stdf-wafer-id`, or the environment variable `YIELDRANK_STDF_WAFER_ID`)
with the fields `lot` (MIR.LOT_ID), `sublot` (MIR.SBLOT_ID), `wafer` (WIR.WAFER_ID, a number
when it is written as digits) and `wafer_text` (WIR.WAFER_ID as written). An STDF wafer that
maps to no known wafer is rejected by the same `unknown_wafer` rule as any table's.

A file that cannot be read as a complete wafer sort (empty, not STDF, truncated, a record
longer than the file, a PRR outside a WIR...WRR, a wafer without its WRR) rejects the drop with
the file and the record (index, type, byte offset) named; its bytes are kept in
`quarantine.files` like any unreadable file.

The reader is `stdf_convert` (PyPI `stdf-convert`, 2026-10; Rust `rust-stdf` under the hood,
an abi3 manylinux wheel needing only pyarrow). Chosen over the others on this machine, 300
wafers x 600 dies in 12 files (180,000 PRR): stdf_convert 0.65 s to Arrow tables, stdfast
0.2.1 1.6 s (dicts), pystdf 1.4.0 3.7 s (callbacks). It also was the only one that raises on
a truncated or non-STDF file (stdfast returns the records before the cut, or none, silently;
pystdf warns), reads gzip itself, both byte orders, and gives every record's index and byte
offset. semi-ate-stdf (2022) ships no wheel; pystdf4 0.1.2's reader is a stub; stdf-reader
vendors its own copy of the `pystdf` package and a GUI stack. None of the readers names the
record where a file breaks, so on an error `_locate_damage` walks the record headers itself.
"""

from __future__ import annotations

import gzip
import os
import re
import string
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.warehouse.contract import Problem
from flows.warehouse.db import quote_ident
from flows.warehouse.drop_files import DropError, relative_name

DEFAULT_WAFER_ID = "{lot}.{wafer:02d}"
WAFER_ID_ENV = "YIELDRANK_STDF_WAFER_ID"
RECORD_NAMES = {
    (0, 10): "FAR", (0, 20): "ATR", (0, 30): "VUR", (1, 10): "MIR", (1, 20): "MRR",
    (1, 30): "PCR", (1, 40): "HBR", (1, 50): "SBR", (1, 60): "PMR", (1, 62): "PGR",
    (1, 63): "PLR", (1, 70): "RDR", (1, 80): "SDR", (1, 90): "PSR", (1, 91): "NMR",
    (1, 92): "CNR", (1, 93): "SSR", (1, 94): "CDR", (2, 10): "WIR", (2, 20): "WRR",
    (2, 30): "WCR", (5, 10): "PIR", (5, 20): "PRR", (10, 30): "TSR", (15, 10): "PTR",
    (15, 15): "MPR", (15, 20): "FTR", (15, 30): "STR", (20, 10): "BPS", (20, 20): "EPS",
    (50, 10): "GDR", (50, 30): "DTR",
}  # fmt: skip
TEMPLATE_FIELDS = ("lot", "sublot", "wafer", "wafer_text")
NO_COORDINATE = -32768  # PRR.X_COORD / Y_COORD: "no coordinate" in the specification
PRR_MIN_LEN = 13  # PRR bytes up to Y_COORD: HEAD, SITE, PART_FLG, NUM_TEST, 2 bins, X, Y
NO_COUNT = 4294967295  # WRR.PART_CNT: "count not known"


class StdfFileError(Exception):
    """One STDF file cannot be taken as a wafer sort; the message names the record."""


def wafer_id_template(explicit: str | None = None) -> str:
    """The wafer id template: `explicit`, else $YIELDRANK_STDF_WAFER_ID, else the default."""
    template = explicit or os.environ.get(WAFER_ID_ENV) or DEFAULT_WAFER_ID
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as exc:
        names, problem = set(), str(exc)
    else:
        unknown = {re.split(r"[.\[]", f)[0] for f in names} - set(TEMPLATE_FIELDS)
        problem = f"unknown field(s) {', '.join(sorted(unknown))}" if unknown else ""
        if not names:
            problem = "it names no field, so every wafer would get the same id"
    if problem:
        raise ValueError(
            f"STDF wafer id template {template!r} is not usable: {problem}; use the fields "
            + ", ".join("{" + f + "}" for f in TEMPLATE_FIELDS)
            + " ({wafer} is a number when the tester writes digits)"
        )
    return template


@dataclass
class StdfSort:
    """One file's dies and bin definitions, as Arrow tables with their record index."""

    dies: pa.Table  # source_row, wafer_id, die_x, die_y, bin, soft_bin
    bins: pa.Table  # source_row, bin, name, good
    notes: list[str]  # things worth a warning (HBRs without a pass/fail flag)


def _record(table: pa.Table, i: int) -> str:
    row = {k: table.column(k)[i].as_py() for k in ("sequence_number", "byte_offset")}
    kind = RECORD_NAMES.get(
        (table.column("rec_typ")[i].as_py(), table.column("rec_sub")[i].as_py()), "?"
    )
    return f"record #{row['sequence_number']} ({kind}, byte offset {row['byte_offset']})"


def _decompressed(path: Path) -> bytes:
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as fh:
            return fh.read()
    except EOFError:
        raise StdfFileError(
            "the gzip stream ends early (the .gz file is truncated); nothing of it was read"
        ) from None
    except (OSError, zlib.error) as exc:
        raise StdfFileError(f"is not a readable gzip file: {exc}") from None


def _framing_damage(data: bytes) -> str | None:
    """Walk the record headers (REC_LEN, REC_TYP, REC_SUB): where does the framing break?

    None when every record fits the file exactly. Only run on a file already found wrong
    (a Python loop over every record is slower than the reader itself).
    """
    if not data:
        return "the file is empty (no STDF records)"
    if len(data) < 6 or (data[2], data[3]) != (0, 10):
        return (
            "is not an STDF V4 file: it does not start with a FAR record "
            f"(first bytes {data[:6].hex(' ')})"
        )
    if data[4] not in (1, 2):
        return (
            f"the FAR gives CPU_TYPE {data[4]}: only 1 (big-endian) and 2 (little-endian) are read"
        )
    order = "<" if data[4] == 2 else ">"
    offset, index = 0, 0
    while offset < len(data):
        if len(data) - offset < 4:
            return (
                f"truncated (or a bad REC_LEN before it): record #{index} at byte offset {offset} has only "
                f"{len(data) - offset} of its 4 header bytes"
            )
        length, typ, sub = struct.unpack_from(f"{order}HBB", data, offset)
        kind = RECORD_NAMES.get((typ, sub), f"unknown type {typ}/{sub}")
        left = len(data) - offset - 4
        if length > left:
            return (
                f"truncated or a bad REC_LEN: record #{index} ({kind}) at byte offset {offset} "
                f"declares {length} bytes, only {left} are left in the file"
            )
        offset += 4 + length
        index += 1
    return None


def read_stdf(path: Path, template: str) -> StdfSort:
    """Read one STDF V4 wafer sort file into die rows and bin definitions.

    Parameters
    ----------
    path : a `.stdf` or `.stdf.gz` file
    template : the wafer id template (see `wafer_id_template`)

    Returns
    -------
    StdfSort : the dies (one per PRR) and the bin definitions (one per HBR with a P/F flag)

    Raises
    ------
    StdfFileError : the file is not a complete, well-formed wafer sort; the message names the
        record (index, type, byte offset) where it breaks
    """
    import stdf_convert

    wanted = ["FAR", "MIR", "MRR", "WIR", "WRR", "PRR", "HBR"]
    try:
        t = stdf_convert.tables(str(path), wanted)
        return _sort_from_tables(t, template)
    except (stdf_convert.StdfError, StdfFileError) as exc:
        # a broken frame explains what the reader or the record checks met: name it instead
        damage = _framing_damage(_decompressed(path))
        if damage:
            raise StdfFileError(damage) from None
        if isinstance(exc, StdfFileError):
            raise
        raise StdfFileError(f"the records are framed correctly, but: {exc}") from None


def _sort_from_tables(t: dict[str, pa.Table], template: str) -> StdfSort:
    """The dies and bins of one parsed file, after checking it is a complete wafer sort."""
    far = t.get("FAR")
    if far is None or far.num_rows == 0 or far.column("sequence_number")[0].as_py() != 0:
        raise StdfFileError("is not an STDF V4 file: it does not start with a FAR record")
    if far.column("STDF_VER")[0].as_py() != 4:
        raise StdfFileError(f"is STDF version {far.column('STDF_VER')[0].as_py()}; only V4 is read")
    if far.column("CPU_TYPE")[0].as_py() not in (1, 2):
        raise StdfFileError(
            f"the FAR gives CPU_TYPE {far.column('CPU_TYPE')[0].as_py()}: only 1 (big-endian) "
            "and 2 (little-endian) are read"
        )
    mir = t.get("MIR")
    if mir is None or mir.num_rows != 1:
        raise StdfFileError(
            f"holds {0 if mir is None else mir.num_rows} MIR records; a file needs exactly one "
            "(it gives the lot)"
        )
    lot = mir.column("LOT_ID")[0].as_py() or ""
    sublot = mir.column("SBLOT_ID")[0].as_py() or ""
    if not lot.strip():
        raise StdfFileError(f"{_record(mir, 0)} has an empty LOT_ID: the dies' lot is unknown")
    if t.get("MRR") is None or t["MRR"].num_rows == 0:
        raise StdfFileError(
            "has no MRR (the record that closes a file): the file was cut or the test did not "
            "finish"
        )
    prr = t.get("PRR", pa.table({"sequence_number": pa.array([], pa.uint64())}))
    if prr.num_rows:
        short = pc.less(prr.column("rec_len"), PRR_MIN_LEN)
        if pc.any(short).as_py():
            i = pc.index(short, True).as_py()
            raise StdfFileError(
                f"{_record(prr, i)} is {prr.column('rec_len')[i].as_py()} bytes long: too short "
                f"to hold the hard and soft bin and the die coordinates ({PRR_MIN_LEN} bytes)"
            )
    wafer_of_prr = _wafers(t, prr, lot, sublot, template)
    dies = _dies(prr, wafer_of_prr)
    bins, notes = _bins(t.get("HBR"))
    return StdfSort(dies, bins, notes)


def _wafers(
    t: dict[str, pa.Table], prr: pa.Table, lot: str, sublot: str, template: str
) -> pa.Array:
    """The contract wafer id of each PRR, checking that PRRs sit inside a WIR ... WRR."""
    events: list[tuple[int, str, int]] = []  # (sequence number, kind, row)
    for kind in ("WIR", "WRR"):
        table = t.get(kind)
        if table is not None:
            events += [
                (s, kind, i) for i, s in enumerate(table.column("sequence_number").to_pylist())
            ]
    events.sort()
    # walk WIR/WRR in file order: the open wafer of each stretch of sequence numbers
    spans: list[tuple[int, int, str, int]] = []  # (WIR seq, WRR seq, wafer id, WRR row)
    open_wir: int | None = None
    for seq, kind, i in events:
        if kind == "WIR":
            if open_wir is not None:
                raise StdfFileError(
                    f"{_record(t['WIR'], open_wir)}: wafer "
                    f"{t['WIR'].column('WAFER_ID')[open_wir].as_py()!r} has no WRR before the "
                    f"next WIR ({_record(t['WIR'], i)}): its test did not finish, its dies may "
                    "be incomplete"
                )
            open_wir = i
            continue
        if open_wir is None:
            raise StdfFileError(f"{_record(t['WRR'], i)} closes a wafer that no WIR opened")
        wir_table = t["WIR"]
        text = wir_table.column("WAFER_ID")[open_wir].as_py() or ""
        closing = t["WRR"].column("WAFER_ID")[i].as_py() or ""
        if closing and closing != text:
            raise StdfFileError(
                f"{_record(t['WRR'], i)} closes wafer {closing!r} but {_record(wir_table, open_wir)} "
                f"opened wafer {text!r}"
            )
        wafer_id = _wafer_id(template, lot, sublot, text, _record(wir_table, open_wir))
        spans.append((wir_table.column("sequence_number")[open_wir].as_py(), seq, wafer_id, i))
        open_wir = None
    if open_wir is not None:
        raise StdfFileError(
            f"{_record(t['WIR'], open_wir)}: wafer "
            f"{t['WIR'].column('WAFER_ID')[open_wir].as_py()!r} has no WRR: its test did not "
            "finish (or the file was cut), its dies may be incomplete"
        )
    seqs = prr.column("sequence_number").to_numpy()
    first = np.array([span[0] for span in spans], dtype=np.int64)
    last = np.array([span[1] for span in spans], dtype=np.int64)
    # the wafer of each PRR: the last WIR before it, if that wafer's WRR is still to come
    k = np.searchsorted(first, seqs, side="right") - 1
    outside = (k < 0) | (seqs > last[np.maximum(k, 0)]) if len(spans) else np.ones(len(seqs), bool)
    if outside.any():
        i = int(np.argmax(outside))
        where = "before any WIR" if k[i] < 0 or not spans else "outside a WIR ... WRR"
        raise StdfFileError(
            f"{_record(prr, i)} comes {where}: its wafer is unknown ({len(seqs)} PRR in the file)"
        )
    per_span = np.bincount(k, minlength=len(spans))
    # the WRR's part count is the tester's own tally: PRRs lost or added in the file show here
    counts = t["WRR"].column("PART_CNT").to_pylist() if spans else []
    for (_, _, wafer_id, row), found in zip(spans, per_span.tolist(), strict=True):
        if counts[row] not in (None, NO_COUNT) and counts[row] != found:
            raise StdfFileError(
                f"{_record(t['WRR'], row)}: wafer {wafer_id} was tested with "
                f"{counts[row]} parts (WRR.PART_CNT) but the file holds {found} PRR for it"
            )
    return pa.DictionaryArray.from_arrays(
        pa.array(k, pa.int32()), pa.array([span[2] for span in spans], pa.string())
    ).cast(pa.string())


def _wafer_id(template: str, lot: str, sublot: str, text: str, where: str) -> str:
    wafer: Any = int(text) if re.fullmatch(r"\s*\d+\s*", text) else text
    try:
        return template.format(lot=lot, sublot=sublot, wafer=wafer, wafer_text=text)
    except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
        raise StdfFileError(
            f"{where}: WAFER_ID {text!r} of lot {lot!r} does not fit the wafer id template "
            f"{template!r} ({exc}); set --stdf-wafer-id / {WAFER_ID_ENV} to match the tester's ids"
        ) from None


def _dies(prr: pa.Table, wafer_ids: pa.Array) -> pa.Table:
    n = prr.num_rows
    if n == 0:
        return pa.table(
            {
                "source_row": pa.array([], pa.int64()), "wafer_id": pa.array([], pa.string()),
                "die_x": pa.array([], pa.int64()), "die_y": pa.array([], pa.int64()),
                "bin": pa.array([], pa.int64()), "soft_bin": pa.array([], pa.int64()),
            }
        )  # fmt: skip
    for axis in ("X_COORD", "Y_COORD"):
        missing = pc.equal(prr.column(axis), NO_COORDINATE)
        if pc.any(missing).as_py():
            i = pc.index(missing, True).as_py()
            raise StdfFileError(
                f"{_record(prr, i)} has no die coordinate ({axis} = -32768): the die's position "
                "on the wafer is unknown"
            )
    return pa.table(
        {
            "source_row": prr.column("sequence_number").cast(pa.int64()),
            "wafer_id": wafer_ids,
            "die_x": prr.column("X_COORD").cast(pa.int64()),
            "die_y": prr.column("Y_COORD").cast(pa.int64()),
            "bin": prr.column("HARD_BIN").cast(pa.int64()),
            "soft_bin": prr.column("SOFT_BIN").cast(pa.int64()),
        }
    )


def _bins(hbr: pa.Table | None) -> tuple[pa.Table, list[str]]:
    rows: dict[str, list[Any]] = {"source_row": [], "bin": [], "name": [], "good": []}
    unflagged: list[int] = []
    if hbr is not None:
        for seq, number, flag, name in zip(
            hbr.column("sequence_number").to_pylist(),
            hbr.column("HBIN_NUM").to_pylist(),
            hbr.column("HBIN_PF").to_pylist(),
            hbr.column("HBIN_NAM").to_pylist(),
            strict=True,
        ):
            if flag not in ("P", "F"):  # a blank flag says nothing about good or fail
                unflagged.append(number)
                continue
            rows["source_row"].append(seq)
            rows["bin"].append(number)
            rows["name"].append(name)
            rows["good"].append(flag == "P")
    notes = []
    if unflagged:
        shown = ", ".join(map(str, sorted(set(unflagged))[:10]))
        notes.append(
            f"HBR of hard bin(s) {shown} carry no pass/fail flag (HBIN_PF not P or F): they give "
            "no bin definition; without one a bin counts by the default rule (bin 1 good)"
        )
    schema = pa.schema(
        [("source_row", pa.int64()), ("bin", pa.int64()), ("name", pa.string()),
         ("good", pa.bool_())]
    )  # fmt: skip
    return pa.table(rows, schema=schema), notes


# --- landing ---------------------------------------------------------------------------------


def _as_table(con: duckdb.DuckDBPyConnection, table: str) -> None:
    """Make `landing_<table>` a temp table (a Parquet source may have landed as a view)."""
    name = f"landing_{table}"
    (is_view,) = con.execute(
        "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND temporary", [name]
    ).fetchall()[0]
    if is_view:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name}_rows AS SELECT * FROM {name}")
        con.execute(f"DROP VIEW {name}")
        con.execute(f"ALTER TABLE {name}_rows RENAME TO {name}")


def land_stdf(
    con: duckdb.DuckDBPyConnection,
    drop: Path,
    drop_id: str,
    files: list[Path],
    template: str,
) -> tuple[dict[str, int], list[Problem], list[DropError]]:
    """Read the drop's STDF files into `landing_sort_die` and `landing_bin_defs`.

    Parameters
    ----------
    con : the ingest connection (its landing tables)
    drop, drop_id : the drop folder and its id
    files : the STDF files (`flows.warehouse.drop_files.find_stdf_files`)
    template : the wafer id template

    Returns
    -------
    rows per table landed, warnings, and one `DropError` per file that cannot be read (its
    rows are not landed; the drop will be rejected)
    """
    counts: dict[str, int] = {}
    notes: list[Problem] = []
    broken: list[DropError] = []
    for path in files:
        name = relative_name(drop, path)
        try:
            if path.stat().st_size == 0:
                raise StdfFileError("the file is empty (0 bytes)")
            sort = read_stdf(path, template)
        except StdfFileError as exc:
            broken.append(
                DropError(
                    Problem(
                        "corrupt_stdf",
                        f"cannot be read as an STDF V4 wafer sort: {exc}",
                        "sort_die",
                        name,
                    ),
                    [path],
                )
            )
            continue
        if sort.dies.num_rows == 0:
            notes.append(
                Problem(
                    "no_rows",
                    "the STDF file holds no PRR (no dies)",
                    "sort_die",
                    name,
                    0,
                    severity="warning",
                )
            )
        for note in sort.notes:
            notes.append(Problem("stdf_bins", note, "bin_defs", name, severity="warning"))
        for table, rows, columns in (
            ("sort_die", sort.dies, "wafer_id, die_x, die_y, bin, "
             "json_object('soft_bin', CAST(soft_bin AS VARCHAR)) AS extra"),
            ("bin_defs", sort.bins, "bin, name, good, NULL::JSON AS extra"),
        ):  # fmt: skip
            if rows.num_rows == 0:
                continue
            _as_table(con, table)
            con.register("stdf_rows", rows)
            try:
                con.execute(
                    f"INSERT INTO {quote_ident('landing_' + table)} BY NAME "
                    f"SELECT $drop_id AS drop_id, $file AS source_file, source_row, {columns}, "
                    "NULL::VARCHAR[] AS bad_cast FROM stdf_rows",
                    {"drop_id": drop_id, "file": name},
                )
            finally:
                con.unregister("stdf_rows")
            counts[table] = counts.get(table, 0) + rows.num_rows
    return counts, notes, broken


def stdf_raw_rows(con: duckdb.DuckDBPyConnection, folder: str) -> None:
    """Copy the landed STDF rows into temp `raw_rows` as text JSON (a rejected drop's rows)."""
    for table, cols in (
        ("sort_die", "'wafer_id', wafer_id, 'die_x', CAST(die_x AS VARCHAR), "
         "'die_y', CAST(die_y AS VARCHAR), 'bin', CAST(bin AS VARCHAR), "
         "'soft_bin', json_extract_string(extra, 'soft_bin')"),
        ("bin_defs", "'bin', CAST(bin AS VARCHAR), 'name', name, 'good', CAST(good AS VARCHAR)"),
    ):  # fmt: skip
        con.execute(
            f"INSERT INTO raw_rows SELECT ?, source_file, source_row, json_object({cols}) "
            f"FROM landing_{table} WHERE starts_with(source_file, ?)",
            [table, folder + "/"],
        )
