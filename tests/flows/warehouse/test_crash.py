"""Crash safety: SIGKILL the ingesting process mid-way; the database keeps its previous state.

The big drop is written by DuckDB itself (fast), the small base drop by the fixtures. The
child prints each phase of the ingest; the parent kills it a moment after the phase starts.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from tests.flows.conftest import ingest, query, snapshot
from tests.flows.drops import fab_tables, write_drop

ROOT = Path(__file__).resolve().parents[3]
N_LOTS, WAFERS, STEPS = 300, 25, 300  # 2.25 M step rows: the merge takes about a second


def write_big_drop(folder: Path) -> Path:
    folder.mkdir(parents=True)
    con = duckdb.connect()
    try:
        con.execute(
            f"""CREATE TABLE w AS SELECT 'B' || lpad(l::VARCHAR, 4, '0') AS lot_id,
                       s AS slot, 'B' || lpad(l::VARCHAR, 4, '0') || '.' || s AS wafer_id
                FROM range({N_LOTS}) AS a(l), range(1, {WAFERS + 1}) AS b(s)"""
        )
        con.execute(
            "COPY (SELECT DISTINCT lot_id, 'P1' AS product, 'R1' AS route, "
            "TIMESTAMP '2026-03-01' AS start_ts FROM w) TO $p (FORMAT parquet)",
            {"p": str(folder / "lots.parquet")},
        )
        con.execute(
            "COPY (SELECT wafer_id, lot_id, slot FROM w) TO $p (FORMAT parquet)",
            {"p": str(folder / "wafers.parquet")},
        )
        con.execute(
            f"""COPY (
                SELECT wafer_id, k AS step_seq, 'OP' || k AS operation, 'LAYER' || (k // 10) AS layer,
                       'T' || ((k + slot) % 4) AS tool_id, 'C' || (slot % 3) AS chamber_id,
                       'R' || k AS recipe,
                       TIMESTAMP '2026-03-01' + INTERVAL (k) HOUR AS track_in_ts,
                       TIMESTAMP '2026-03-01' + INTERVAL (k) HOUR + INTERVAL 30 MINUTE AS track_out_ts
                FROM w, range(1, {STEPS + 1}) AS s(k)
            ) TO $p (FORMAT parquet)""",
            {"p": str(folder / "step_history.parquet")},
        )
    finally:
        con.close()
    return folder


CHILD = """
import sys
from flows.warehouse.ingest import ingest_drop
ingest_drop(sys.argv[1], sys.argv[2], gx=False, progress=lambda m: print(m, flush=True))
print("finished", flush=True)
"""


def kill_during(phase: str, drop: Path, db: Path, delay: float) -> list[str]:
    """Run the ingest in a child process and SIGKILL it `delay` s after `phase` begins."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(drop), str(db)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    seen = []
    assert child.stdout is not None
    for line in child.stdout:
        seen.append(line.strip())
        if line.startswith(phase):
            time.sleep(delay)
            break
    still_running = child.poll() is None
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert still_running, f"the ingest finished before it could be killed: {seen}"
    assert "finished" not in seen
    return seen


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "delay"), [("validating", 0.3), ("merging step_history", 0.2)])
def test_sigkill_leaves_the_previous_state_and_a_rerun_succeeds(tmp_path, db, phase, delay):
    assert ingest(write_drop(tmp_path / "base", fab_tables()), db).status == "merged"
    before = snapshot(db)
    log_before = query(db, "SELECT attempt_id, status FROM meta.drop_log")
    drop = write_big_drop(tmp_path / "big")

    kill_during(phase, drop, db, delay)

    assert snapshot(db) == before, "a killed ingest left part of the drop behind"
    assert query(db, "SELECT attempt_id, status FROM meta.drop_log") == log_before
    again = ingest(drop, db)
    assert again.status == "merged", [str(p) for p in again.problems]
    (n,) = query(db, "SELECT count(*) FROM core.step_history WHERE wafer_id LIKE 'B%'")[0]
    assert n == N_LOTS * WAFERS * STEPS
