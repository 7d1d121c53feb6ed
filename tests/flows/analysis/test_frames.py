"""Model frames from a real DuckDB built by the real simulator and ingestion."""

from __future__ import annotations

import duckdb
import polars as pl
import pytest

from flows.analysis.frames import (
    CHAMBER,
    MEAS,
    SITES,
    TOOL,
    FrameLayout,
    chained_frame,
    layer_frames,
    layer_operations,
)
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.ingest import ingest_drop


@pytest.fixture(scope="module")
def small_fab(tmp_path_factory):
    where = tmp_path_factory.mktemp("fab")
    truth = simulate_fab(where / "drops", FabConfig(lots=12), seed=5)
    db = where / "fab.duckdb"
    for drop in truth.drop_dirs:
        assert ingest_drop(drop, db, gx=False).status == "merged"
    return truth, db


def test_one_frame_per_layer_one_row_per_wafer(small_fab):
    truth, db = small_fab
    frames = layer_frames(db)
    assert sorted(frames) == sorted(truth.layers)
    for layer, frame in frames.items():
        assert frame.num_rows == truth.wafers, layer
        assert len(set(frame.column("wafer_id").to_pylist())) == truth.wafers
        ops = [r["operation"] for r in truth.route if r["layer"] == layer]
        assert FrameLayout.of(frame.column_names).operations == ops  # in route order


def test_tools_chambers_and_metrology_match_the_core_tables(small_fab):
    _, db = small_fab
    frames = layer_frames(db)
    con = duckdb.connect(str(db), read_only=True)
    try:
        steps = pl.from_arrow(
            con.sql(
                "SELECT wafer_id, operation, tool_id, chamber_id FROM core.step_history "
                "QUALIFY row_number() OVER (PARTITION BY wafer_id, operation "
                "ORDER BY step_seq DESC) = 1"
            ).to_arrow_table()
        )
        meas = pl.from_arrow(
            con.sql(
                "SELECT wafer_id, operation, param, avg(value) AS mean, count(*) AS n "
                "FROM core.inline_meas GROUP BY ALL"
            ).to_arrow_table()
        )
    finally:
        con.close()
    checked_meas = 0
    for frame in frames.values():
        df = pl.from_arrow(frame)
        layout = FrameLayout.of(df.columns)
        for op in layout.operations:
            mine = df.select("wafer_id", pl.col(TOOL + op), pl.col(CHAMBER + op))
            theirs = steps.filter(pl.col("operation") == op)
            joined = mine.join(theirs, on="wafer_id")
            assert joined.height == theirs.height
            assert (joined.get_column(TOOL + op) == joined.get_column("tool_id")).all()
            key = joined.get_column("tool_id") + ":" + joined.get_column("chamber_id").fill_null("")
            assert (joined.get_column(CHAMBER + op) == key).all()
        for op, param in layout.params:
            col = f"{MEAS}{op}::{param}"
            theirs = meas.filter((pl.col("operation") == op) & (pl.col("param") == param))
            joined = df.select("wafer_id", col, f"{SITES}{op}::{param}").join(theirs, on="wafer_id")
            assert joined.height == theirs.height == df.get_column(col).drop_nulls().len()
            assert (joined.get_column(col) - joined.get_column("mean")).abs().max() < 1e-9
            sites = joined.get_column(f"{SITES}{op}::{param}").list.len()
            assert (sites == joined.get_column("n")).all()
            checked_meas += joined.height
    assert checked_meas > 0


def test_chained_frame_puts_every_layer_side_by_side(small_fab):
    truth, db = small_fab
    frames = layer_frames(db)
    frame_all = chained_frame(frames)
    assert frame_all.num_rows == truth.wafers
    ops = layer_operations(frame_all)
    assert ops == {k: FrameLayout.of(v.column_names).operations for k, v in frames.items()}
    every = [c for f in frames.values() for c in f.column_names]
    assert set(frame_all.column_names) == set(every)


def test_layer_operations_refuses_a_frame_it_did_not_build(small_fab):
    _, db = small_fab
    frame = next(iter(layer_frames(db).values()))
    with pytest.raises(ValueError, match="chained_frame"):
        layer_operations(frame)
