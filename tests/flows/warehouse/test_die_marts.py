"""The die marts (sql/marts/07-11): radius, zone and quadrant per die, counts per wafer and zone
and per wafer and fail bin, against a real DuckDB file.

Zone borders are checked on a hand-made grid whose dies sit exactly on r = 0.5 and r = 0.8;
the counts are checked on a simulated fab with dies against the simulator's own grid zones and
against core.wafer_yield.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flows.analysis.die_geometry import ZONES, grid_quadrants, grid_zones
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.db import connect
from flows.warehouse.marts import check_marts
from tests.flows.conftest import ingest
from tests.flows.drops import fab_tables, write_drop

# centre (10, 10), outermost dies at distance 10; (x, y) -> (r, zone, quadrant)
GRID = {
    (0, 10): (1.0, "edge", 3),
    (20, 10): (1.0, "edge", 1),
    (10, 0): (1.0, "edge", 4),
    (10, 20): (1.0, "edge", 2),
    (10, 10): (0.0, "center", 1),
    (15, 10): (0.5, "center", 1),  # r = 0.5 exactly: center
    (10, 15): (0.5, "center", 2),  # on the +y half-axis: quadrant 2
    (5, 10): (0.5, "center", 3),
    (10, 5): (0.5, "center", 4),
    (16, 10): (0.6, "middle", 1),
    (18, 10): (0.8, "middle", 1),  # r = 0.8 exactly: middle
    (16, 18): (1.0, "edge", 1),  # (6, 8): as far out as (10, 0)
    (18, 11): (np.sqrt(65) / 10, "edge", 1),
    (4, 2): (1.0, "edge", 3),  # (-6, -8)
}
BINS = {(0, 10): 9, (20, 10): 9, (10, 0): 10, (16, 10): 4, (10, 10): 2}  # the rest pass


@pytest.fixture
def grid_db(db):
    tables = fab_tables(lots=("L001",), wafers_per_lot=2)
    tables["sort_die"] = [
        {
            "wafer_id": w,
            "die_x": x,
            "die_y": y,
            "bin": BINS.get((x, y), 1) if w.endswith("1") else 1,
        }
        for w in ("L001.01", "L001.02")
        for (x, y) in GRID
    ]
    tables["bin_defs"] = [
        {"bin": 1, "name": "PASS", "good": True},
        {"bin": 2, "name": "OPEN", "good": False},
        {"bin": 4, "name": "LEAK", "good": True},  # a good bin besides 1
        {"bin": 9, "name": "PARTICLE", "good": False},
    ]  # bin 10 is defined nowhere: a fail without a name
    result = ingest(write_drop(db.parent / "grid", tables), db)
    assert result.status == "merged", [str(p) for p in result.problems]
    return db


def test_radius_zone_and_quadrant_follow_the_contract_on_the_zone_borders(grid_db):
    con = connect(grid_db)
    try:
        check_marts(con)
        rows = con.sql("SELECT die_x, die_y, r, zone, quadrant FROM marts.die_position").fetchall()
        grid = con.sql("SELECT * FROM marts.product_die_grid").pl().to_dicts()
    finally:
        con.close()
    got = {(x, y): (r, zone, q) for x, y, r, zone, q in rows}
    assert set(got) == set(GRID)
    for pos, (r, zone, q) in GRID.items():
        assert got[pos][0] == pytest.approx(r, abs=1e-12), pos
        assert got[pos][1:] == (zone, q), pos
    assert grid == [
        {"product": "P1", "center_x": 10.0, "center_y": 10.0, "max_d2": 400, "n_positions": 14,
         "n_center": 5, "n_middle": 2, "n_edge": 7}
    ]  # fmt: skip
    # the simulator decides zones the same way, on the same exact integers
    xy = np.array(list(GRID))
    _, zone = grid_zones(xy[:, 0], xy[:, 1])
    assert [ZONES[z] for z in zone] == [z for _, z, _ in GRID.values()]
    assert grid_quadrants(xy[:, 0], xy[:, 1]).tolist() == [q for *_, q in GRID.values()]


def test_zone_and_bin_counts_use_the_bin_rule(grid_db):
    con = connect(grid_db)
    try:
        zones = con.sql(
            "SELECT wafer_id, zone, dies_good, dies_total FROM marts.wafer_zone ORDER BY ALL"
        ).fetchall()
        bins = con.sql(
            "SELECT wafer_id, bin, bin_name, dies_fail, dies_total FROM marts.wafer_bin ORDER BY ALL"
        ).fetchall()
    finally:
        con.close()
    assert zones == [
        ("L001.01", "center", 4, 5), ("L001.01", "edge", 4, 7), ("L001.01", "middle", 2, 2),
        ("L001.02", "center", 5, 5), ("L001.02", "edge", 7, 7), ("L001.02", "middle", 2, 2),
    ]  # fmt: skip
    assert bins == [
        ("L001.01", 2, "OPEN", 1, 14),
        ("L001.01", 9, "PARTICLE", 2, 14),
        ("L001.01", 10, None, 1, 14),
    ]


@pytest.fixture(scope="module")
def sim_db(tmp_path_factory):
    """A simulated fab with dies (20 lots, two drops) ingested: its truth and database."""
    root = tmp_path_factory.mktemp("diemarts")
    sim = simulate_fab(root / "fab", FabConfig(lots=20, n_drops=2, dies=True), seed=8)
    db = root / "fab.duckdb"
    for drop in sim.drop_dirs:
        result = ingest(drop, db)
        assert result.status == "merged", [str(p) for p in result.problems]
    return sim, db


def test_the_simulated_dies_pass_the_mart_checks_with_the_simulators_zones(sim_db):
    sim, db = sim_db
    con = connect(db, read_only=True)
    try:
        check_marts(con)
        per_zone = con.sql(
            "SELECT product, n_center, n_middle, n_edge FROM marts.product_die_grid"
        ).fetchall()
        positions = con.sql("SELECT product, die_x, die_y, zone FROM marts.die_position").pl()
    finally:
        con.close()
    truth = {p["product"]: p["dies_per_zone"] for p in sim.dies["products"]}
    assert {p: dict(zip(ZONES, n, strict=True)) for p, *n in per_zone} == {
        p: truth[p] for p, *_ in per_zone
    }
    for (product,), part in positions.group_by(["product"]):
        _, zone = grid_zones(part["die_x"].to_numpy(), part["die_y"].to_numpy())
        assert [ZONES[z] for z in zone] == part["zone"].to_list(), product


def test_zone_and_bin_counts_add_up_to_the_wafer_yield(sim_db):
    sim, db = sim_db
    con = connect(db, read_only=True)
    try:
        yields = con.sql("SELECT wafer_id, dies_good, dies_total FROM core.wafer_yield").pl()
        zones = con.sql("SELECT * FROM marts.wafer_zone").pl()
        bins = con.sql("SELECT * FROM marts.wafer_bin").pl()
    finally:
        con.close()
    assert yields.height == sim.wafers
    summed = zones.group_by("wafer_id").agg(pl.col("dies_good").sum(), pl.col("dies_total").sum())
    assert summed.sort("wafer_id").equals(yields.sort("wafer_id").select(summed.columns))
    fails = bins.group_by("wafer_id").agg(pl.col("dies_fail").sum(), pl.col("dies_total").first())
    expected = yields.select("wafer_id", dies_fail=pl.col("dies_total") - pl.col("dies_good"))
    assert (
        fails.select("wafer_id", "dies_fail")
        .sort("wafer_id")
        .equals(expected.filter(pl.col("dies_fail") > 0).sort("wafer_id"))
    )
    delivered = pl.concat(
        [pl.read_parquet(f) for f in sorted(sim.out_dir.glob("drop_*/sort_die/*.parquet"))]
        + [pl.read_parquet(f) for f in sorted(sim.out_dir.glob("drop_*/sort_die.parquet"))]
    )
    counts = delivered.filter(pl.col("bin") != 1).group_by("wafer_id", "bin").len()
    assert bins.select("wafer_id", "bin", "dies_fail").sort("wafer_id", "bin").equals(
        counts.rename({"len": "dies_fail"}).with_columns(pl.col("dies_fail").cast(pl.Int64))
        .sort("wafer_id", "bin")
    )  # fmt: skip
    named = dict(bins.select("bin", "bin_name").unique().iter_rows())
    assert named[9] == "PARTICLE_SHORT" and named[10] == "EDGE_OPEN"
