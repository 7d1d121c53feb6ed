"""The orchestration's own pieces, without running a fab through them (fast).

Content keys for the fit cache, the database hold, task-runner choice, artifacts text.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

import duckdb
import pyarrow as pa
import pytest

from flows.analysis.results import AnalysisResult, Finding, LayerRanking
from flows.orchestration.caching import fit_cache_key, frame_fingerprint
from flows.orchestration.locking import DatabaseBusy, hold_database
from flows.orchestration.prefect_flows import new_drops_in
from flows.orchestration.task_runners import make_task_runner
from flows.orchestration.tasks import findings_markdown
from tests.flows.pipeline_support import hold_in_other_process

ARTIFACT_KEY = re.compile(r"^[a-z0-9-]+$")


def _frame() -> pa.Table:
    return pa.table(
        {
            "wafer_id": ["W3", "W1", "W2"],
            "dies_good": [480, 500, 455],
            "tool::GATE_ETCH": ["E1", "E2", "E1"],
            "sites::GATE_ETCH::GATE_CD": [[1.0, 2.0], [3.0], None],
        }
    )


# ----------------------------------------------------------------------- content keys


def test_fingerprint_ignores_row_order_and_chunking():
    frame = _frame()
    shuffled = frame.take([2, 0, 1])
    chunked = pa.concat_tables([frame.slice(0, 1), frame.slice(1)])
    assert chunked.column(0).num_chunks == 2
    assert frame_fingerprint(frame) == frame_fingerprint(shuffled) == frame_fingerprint(chunked)


def test_fingerprint_sees_every_change_of_content():
    base = frame_fingerprint(_frame())
    one_value = _frame().set_column(1, "dies_good", pa.array([480, 500, 456]))
    one_site = _frame().set_column(
        3, "sites::GATE_ETCH::GATE_CD", pa.array([[1.0, 2.0], [3.5], None])
    )
    renamed = _frame().rename_columns(
        ["wafer_id", "dies_good", "tool::X", "sites::GATE_ETCH::GATE_CD"]
    )
    fewer_rows = _frame().slice(0, 2)
    keys = {base} | {frame_fingerprint(t) for t in (one_value, one_site, renamed, fewer_rows)}
    assert len(keys) == 5


def test_cache_key_names_layer_seed_and_code_and_is_a_valid_key():
    frame = _frame()
    key = fit_cache_key("GATE", frame, 0)
    assert key == fit_cache_key("GATE", frame.take([1, 2, 0]), 0)
    assert key != fit_cache_key("GATE", frame, 1)
    assert key != fit_cache_key("METAL1", frame, 0)
    assert "GATE" in key and "seed0" in key


# ----------------------------------------------------------------------- task runners


def test_threads_by_default_and_dask_by_address():
    from prefect.task_runners import ThreadPoolTaskRunner
    from prefect_dask import DaskTaskRunner

    threads = make_task_runner()
    assert isinstance(threads, ThreadPoolTaskRunner)
    assert threads._max_workers == os.cpu_count()  # one layer fit per core, not unbounded
    dask = make_task_runner("tcp://127.0.0.1:8786")
    assert isinstance(dask, DaskTaskRunner)
    assert dask.address == "tcp://127.0.0.1:8786"
    with pytest.raises(ValueError, match="neither 'threads' nor a Dask scheduler"):
        make_task_runner("dask")


# ----------------------------------------------------------------------- the database hold


def test_a_second_holder_fails_naming_the_database_and_the_holder(tmp_path):
    db = tmp_path / "fab.duckdb"
    holder = hold_in_other_process(db, 30)
    try:
        started = time.monotonic()
        with pytest.raises(DatabaseBusy) as err, hold_database(db, wait_seconds=1.0):
            pass
        waited = time.monotonic() - started
    finally:
        holder.kill()
        holder.wait()
    message = str(err.value)
    assert str(db.resolve()) in message
    assert f"PID {holder.pid}" in message
    assert "waited 1 s" in message
    assert 1.0 <= waited < 10


def test_a_second_holder_waits_for_the_first_to_finish(tmp_path):
    db = tmp_path / "fab.duckdb"
    holder = hold_in_other_process(db, 2)
    try:
        started = time.monotonic()
        with hold_database(db, wait_seconds=60):
            waited = time.monotonic() - started
            con = duckdb.connect(str(db))
            assert con.execute("SELECT count(*) FROM marker").fetchall() == [(0,)]
            con.close()
    finally:
        holder.wait()
    assert 0.5 < waited < 30


def test_the_lock_wait_comes_from_the_environment(tmp_path, monkeypatch):
    db = tmp_path / "fab.duckdb"
    holder = hold_in_other_process(db, 30)
    monkeypatch.setenv("YIELDRANK_DB_LOCK_WAIT", "0.5")
    try:
        with pytest.raises(DatabaseBusy, match=r"waited 0\.5 s"), hold_database(db):
            pass
    finally:
        holder.kill()
        holder.wait()
    monkeypatch.setenv("YIELDRANK_DB_LOCK_WAIT", "soon")
    with pytest.raises(ValueError, match="YIELDRANK_DB_LOCK_WAIT='soon'"), hold_database(db):
        pass


def test_connections_of_the_holding_process_go_through(tmp_path):
    db = tmp_path / "fab.duckdb"
    with hold_database(db, wait_seconds=0):
        con = duckdb.connect(str(db))  # what the plain functions do inside a run
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
        con.close()
    assert duckdb.connect(str(db), read_only=True).execute("SELECT x FROM t").fetchall() == [(1,)]


# ----------------------------------------------------------------------- landing folder


def test_new_drops_are_the_landing_folders_subfolders_in_name_order(tmp_path):
    landing = tmp_path / "landing"
    for name in ("2026-03-02", "2026-03-01", ".partial"):
        (landing / name).mkdir(parents=True)
    (landing / "notes.txt").write_text("not a drop")
    found = new_drops_in(landing, tmp_path / "none.duckdb")
    assert [Path(p).name for p in found] == ["2026-03-01", "2026-03-02"]
    with pytest.raises(FileNotFoundError, match="landing folder"):
        new_drops_in(tmp_path / "missing", tmp_path / "none.duckdb")


# ----------------------------------------------------------------------- artifacts


def test_findings_markdown_is_inert_for_hostile_ids_and_lists_unranked_layers():
    hostile = "<script>alert(1)</script>|x"
    result = AnalysisResult(
        run_id="r1",
        created_at="2026-03-01T00:00:00+00:00",
        ranking=[
            LayerRanking("GATE", 1, 2.5, 1.0, 4.0, 0.001, 0.3, significant=True),
            LayerRanking(
                "METAL1", None, None, None, None, None, None, "failed", "the fit failed: boom"
            ),
        ],
        findings=[
            Finding("GATE", "tool", -0.4, 2.1, 0.9, 3.2, 0.002, "GATE_ETCH", hostile),
        ],
        layers=[],
    )
    md = findings_markdown(result)
    assert "<script>" not in md
    assert "&lt;script&gt;" in md
    assert "\\|x" in md  # a pipe in data cannot open a table column
    assert "**GATE**" in md
    assert "METAL1" in md and "the fit failed: boom" in md


def test_artifact_keys_are_valid_prefect_keys():
    import flows.orchestration.prefect_flows as prefect_flows

    source = Path(prefect_flows.__file__)
    keys = re.findall(r'key="([^"]+)"', source.read_text())
    assert keys, "no artifact keys found in flows/orchestration/prefect_flows.py"
    assert all(ARTIFACT_KEY.match(k) for k in keys), keys
