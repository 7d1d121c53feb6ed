"""Tiny fab drops for the ingestion tests: valid ones in every format, and ways to break them.

`fab_tables()` builds a small, contract-true fab as rows (lists of dicts); `write_drop()`
writes any such tables as a drop folder in Parquet, CSV or gzipped CSV, optionally split
into part files. Tests break a drop by editing the rows (or writing raw bytes) first.
"""

from __future__ import annotations

import csv
import gzip
import io
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

Rows = list[dict[str, Any]]

ROUTE = [  # (layer, operation, tools)
    ("GATE", "GATE_OX", ["OX01", "OX02"]),
    ("GATE", "GATE_ETCH", ["ET01", "ET02"]),
    ("M1", "M1_DEP", ["DP01", "DP02"]),
    ("M1", "M1_CMP", ["CM01", "CM02"]),
]
COLUMNS = {
    "lots": ["lot_id", "product", "route", "start_ts"],
    "wafers": ["wafer_id", "lot_id", "slot"],
    "step_history": [
        "wafer_id",
        "step_seq",
        "operation",
        "layer",
        "tool_id",
        "chamber_id",
        "recipe",
        "track_in_ts",
        "track_out_ts",
    ],
    "inline_meas": ["wafer_id", "operation", "param", "site", "value"],
    "sort_yield": ["wafer_id", "dies_total", "dies_good", "test_ts"],
    "sort_die": ["wafer_id", "die_x", "die_y", "bin"],
    "equipment_events": ["tool_id", "chamber_id", "event_ts", "kind", "note"],
    "bin_defs": ["bin", "name", "good"],
}
ARROW_TYPES = {
    "lot_id": pa.string(), "product": pa.string(), "route": pa.string(),
    "start_ts": pa.timestamp("us"), "wafer_id": pa.string(), "slot": pa.int64(),
    "step_seq": pa.int64(), "operation": pa.string(), "layer": pa.string(),
    "tool_id": pa.string(), "chamber_id": pa.string(), "recipe": pa.string(),
    "track_in_ts": pa.timestamp("us"), "track_out_ts": pa.timestamp("us"),
    "param": pa.string(), "site": pa.int64(), "value": pa.float64(),
    "dies_total": pa.int64(), "dies_good": pa.int64(), "test_ts": pa.timestamp("us"),
    "die_x": pa.int64(), "die_y": pa.int64(), "bin": pa.int64(),
    "event_ts": pa.timestamp("us"), "kind": pa.string(), "note": pa.string(), "name": pa.string(),
    "good": pa.bool_(),
}  # fmt: skip
T0 = datetime(2026, 3, 1, 8, 0, 0)


def fab_tables(
    lots: tuple[str, ...] = ("L001", "L002"), wafers_per_lot: int = 3, first_test_day: int = 30
) -> dict[str, Rows]:
    """A small fab: each lot runs the 4-operation route, one tool per operation, wafers on
    chambers A/B; two metrology sites on GATE_ETCH; sort results for every wafer."""
    tables: dict[str, Rows] = {
        name: [] for name in COLUMNS if name not in ("sort_die", "equipment_events", "bin_defs")
    }
    for i, lot in enumerate(lots):
        start = T0 + timedelta(days=i)
        tables["lots"].append({"lot_id": lot, "product": "P1", "route": "R1", "start_ts": start})
        for s in range(1, wafers_per_lot + 1):
            wafer = f"{lot}.{s:02d}"
            tables["wafers"].append({"wafer_id": wafer, "lot_id": lot, "slot": s})
            for seq, (layer, op, tools) in enumerate(ROUTE, start=1):
                t_in = start + timedelta(hours=4 * seq, minutes=s)
                tables["step_history"].append(
                    {
                        "wafer_id": wafer,
                        "step_seq": seq,
                        "operation": op,
                        "layer": layer,
                        "tool_id": tools[i % len(tools)],
                        "chamber_id": "AB"[s % 2],
                        "recipe": f"{op}_R1",
                        "track_in_ts": t_in,
                        "track_out_ts": t_in + timedelta(minutes=30),
                    }
                )
            for site in (1, 2):
                tables["inline_meas"].append(
                    {
                        "wafer_id": wafer,
                        "operation": "GATE_ETCH",
                        "param": "GATE_CD",
                        "site": site,
                        "value": 45.0 + 0.5 * i + 0.1 * s + 0.05 * site,
                    }
                )
            tables["sort_yield"].append(
                {
                    "wafer_id": wafer,
                    "dies_total": 100,
                    "dies_good": 90 - 3 * i - s,
                    "test_ts": start + timedelta(days=first_test_day),
                }
            )
    return tables


def sort_die_rows(wafer_ids: list[str], size: int = 3, bad: int = 2) -> Rows:
    """Die bins on a size x size grid; the first `bad` dies of each wafer fail (bin 7)."""
    rows = []
    for w in wafer_ids:
        for k in range(size * size):
            rows.append(
                {"wafer_id": w, "die_x": k % size, "die_y": k // size, "bin": 7 if k < bad else 1}
            )
    return rows


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)


def csv_bytes(rows: Rows, columns: list[str] | None = None) -> bytes:
    """Rows as contract CSV (UTF-8, header, comma, ISO timestamps, empty = null)."""
    columns = columns or (list(rows[0]) if rows else [])
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(row.get(c)) for c in columns])
    return buf.getvalue().encode("utf-8")


def arrow_table(name: str, rows: Rows, columns: list[str] | None = None) -> pa.Table:
    columns = columns or (list(rows[0]) if rows else COLUMNS[name])
    fields = [pa.field(c, ARROW_TYPES.get(c, pa.string())) for c in columns]
    return pa.Table.from_pylist([{c: r.get(c) for c in columns} for r in rows], pa.schema(fields))


def write_table(
    folder: Path, name: str, rows: Rows, fmt: str = "parquet", parts: int = 1,
    columns: list[str] | None = None,
) -> list[Path]:  # fmt: skip
    """Write one table into a drop folder: `<name>.<fmt>`, or `<name>/part-NNN.<fmt>`."""
    folder.mkdir(parents=True, exist_ok=True)
    chunks = [rows[i::parts] for i in range(parts)] if parts > 1 else [rows]
    paths = []
    for k, chunk in enumerate(chunks):
        if parts > 1:
            path = folder / name / f"part-{k:03d}.{fmt}"
            path.parent.mkdir(exist_ok=True)
        else:
            path = folder / f"{name}.{fmt}"
        if fmt == "parquet":
            pq.write_table(arrow_table(name, chunk, columns), path)
        elif fmt == "csv":
            path.write_bytes(csv_bytes(chunk, columns or COLUMNS[name]))
        elif fmt == "csv.gz":
            path.write_bytes(gzip.compress(csv_bytes(chunk, columns or COLUMNS[name])))
        else:
            raise ValueError(fmt)
        paths.append(path)
    return paths


def write_drop(
    folder: Path, tables: dict[str, Rows], fmt: str = "parquet", parts: dict[str, int] | None = None
) -> Path:
    """Write `tables` as a drop folder; `parts` splits chosen tables into that many files."""
    for name, rows in tables.items():
        write_table(folder, name, rows, fmt, (parts or {}).get(name, 1))
    return folder


def equipment_event_rows() -> Rows:
    """Events on the tools and chambers of `fab_tables()`: a PM of chamber A of ET01 with its
    qual, and a whole-tool repair of OX01 (chamber_id empty)."""
    return [
        {"tool_id": "ET01", "chamber_id": "A", "event_ts": T0 + timedelta(days=2), "kind": "pm",
         "note": "wet clean"},
        {"tool_id": "ET01", "chamber_id": "A", "event_ts": T0 + timedelta(days=2, hours=3),
         "kind": "qual", "note": None},
        {"tool_id": "OX01", "chamber_id": None, "event_ts": T0 + timedelta(days=3),
         "kind": "repair", "note": "heater"},
    ]  # fmt: skip
