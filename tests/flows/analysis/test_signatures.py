"""Wafer signatures (flows/analysis/signatures.py) on wafers of known class.

The join-count moments are checked exactly by enumeration on a small grid and by simulation;
the classes against the simulator's planted edge-ring and centre-spot chambers (precision and
recall per class), against random-defect-only fabs, and against clusters and scratches drawn
onto simulated wafers.
"""

from __future__ import annotations

import itertools

import numpy as np
import polars as pl
import pytest

from flows.analysis.signatures import (
    DieGrid,
    SignatureRules,
    classify_grid,
    classify_wafers,
    join_count_test,
    store_wafer_signatures,
    wafer_signatures_from_db,
)
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.db import connect
from tests.flows.conftest import ingest


def _read(sim, table: str) -> pl.DataFrame:
    files = sorted(sim.out_dir.glob(f"drop_*/{table}.parquet")) + sorted(
        sim.out_dir.glob(f"drop_*/{table}/*.parquet")
    )
    return pl.concat([pl.read_parquet(f) for f in files])


def _die_frame(sim) -> pl.DataFrame:
    products = _read(sim, "wafers").join(_read(sim, "lots"), on="lot_id")
    return (
        _read(sim, "sort_die")
        .join(products.select("wafer_id", "product"), on="wafer_id")
        .with_columns(good=pl.col("bin") == 1)
    )


def test_the_grid_has_the_rook_joins_of_the_delivered_dies():
    # a plus sign and a lone die: joins only between delivered orthogonal neighbours
    x = np.array([1, 0, 1, 2, 1, 5])
    y = np.array([0, 1, 1, 1, 2, 5])
    grid = DieGrid.of(x, y)
    joins = {
        tuple(sorted(((x[a], y[a]), (x[b], y[b]))))
        for a, b in zip(grid.join_a, grid.join_b, strict=True)
    }
    assert joins == {((0, 1), (1, 1)), ((1, 1), (2, 1)), ((1, 0), (1, 1)), ((1, 1), (1, 2))}


def test_the_join_count_moments_are_exact_on_a_small_grid():
    """Mean and variance of BB by enumerating all 2^6 fail patterns of a 2 x 3 grid."""
    x, y = np.meshgrid(np.arange(3), np.arange(2), indexing="ij")
    grid = DieGrid.of(x.ravel(), y.ravel())
    p = np.array([0.1, 0.5, 0.3, 0.8, 0.2, 0.6])
    patterns = np.array(list(itertools.product([False, True], repeat=6)))
    weight = np.prod(np.where(patterns, p, 1 - p), axis=1)
    bb, expected, z = join_count_test(patterns, np.ones_like(patterns), np.tile(p, (64, 1)), grid)
    mean = np.sum(weight * bb)
    var = np.sum(weight * (bb - mean) ** 2)
    assert expected[0] == pytest.approx(mean, rel=1e-12)
    assert (bb - expected) / z == pytest.approx(np.full(64, np.sqrt(var)), rel=1e-12)


def test_the_join_count_z_is_standard_under_independent_dies():
    from flows.fabsim.dies import ProductGrid

    g = ProductGrid.of(600)
    grid = DieGrid.of(g.x, g.y)
    rng = np.random.default_rng(3)
    p = np.array([0.05, 0.15, 0.3])[grid.zone][None, :].repeat(3000, axis=0)
    fails = rng.random(p.shape) < p
    _, _, z = join_count_test(fails, np.ones_like(fails), p, grid)
    assert abs(z.mean()) < 0.06 and 0.93 < z.std() < 1.07, (z.mean(), z.std())


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """A 160-lot fab with dies (4,000 wafers): signatures and each wafer's planted class."""
    sim = simulate_fab(
        tmp_path_factory.mktemp("sig") / "fab", FabConfig(lots=160, dies=True), seed=21
    )
    found = classify_wafers(_die_frame(sim))
    steps = _read(sim, "step_history")
    on = {}
    for s in sim.dies["signatures"]:
        chamber = steps.filter(
            (pl.col("operation") == s["operation"])
            & (pl.col("tool_id") == s["tool_id"])
            & (pl.col("chamber_id") == s["chamber_id"])
        )
        on["center" if s["signature"] == "center_spot" else "edge_ring"] = set(chamber["wafer_id"])
    both = on["edge_ring"] & on["center"]
    truth = [
        "both" if w in both else "edge_ring" if w in on["edge_ring"] else
        "center" if w in on["center"] else "unplanted"
        for w in found["wafer_id"]
    ]  # fmt: skip
    return found.with_columns(truth=pl.Series(truth)).filter(pl.col("truth") != "both")


@pytest.mark.parametrize("signature", ["edge_ring", "center"])
def test_planted_rings_and_spots_are_found_with_precision_and_recall_of_80_percent(
    planted, signature
):
    truth, found = planted["truth"], planted["signature"]
    n_planted = (truth == signature).sum()
    assert n_planted >= 200
    hit = ((truth == signature) & (found == signature)).sum()
    precision = hit / (found == signature).sum()
    recall = hit / n_planted
    assert precision >= 0.8 and recall >= 0.8, (precision, recall)


def test_unplanted_wafers_of_a_planted_fab_are_mostly_random(planted):
    unplanted = planted.filter(pl.col("truth") == "unplanted")
    assert unplanted["signature"].is_in(["random", "none"]).mean() >= 0.95


@pytest.fixture(scope="module")
def null_dies(tmp_path_factory):
    """The dies of a random-defect-only fab (null: no chamber signature), 60 lots."""
    sim = simulate_fab(
        tmp_path_factory.mktemp("null") / "fab", FabConfig(lots=60, planted=None, dies=True), seed=5
    )
    assert sim.dies["signatures"] == []
    return _die_frame(sim)


def test_random_defect_only_wafers_are_random_or_none_on_95_percent(null_dies):
    found = classify_wafers(null_dies)
    assert found.height == 1500
    assert found["signature"].is_in(["random", "none"]).mean() >= 0.95
    assert (found["signature"] == "random").mean() > 0.9  # wafers do have fails


def _overlay(null_dies: pl.DataFrame, shape: str, seed: int) -> tuple[np.ndarray, DieGrid]:
    """The null wafers of one product with a blob (radius 3.5 dies) or a scratch (a line 25
    dies long, one wide) of 90 % failing dies drawn onto each, at a random place and angle."""
    product = null_dies.filter(pl.col("product") == "P-ALPHA")
    positions = product.select("die_x", "die_y").unique().sort("die_x", "die_y")
    x, y = positions["die_x"].to_numpy(), positions["die_y"].to_numpy()
    grid = DieGrid.of(x, y)
    index = product.join(positions.with_row_index("die"), on=["die_x", "die_y"])
    wafers = index["wafer_id"].unique().sort()
    w = index.join(pl.DataFrame({"wafer_id": wafers}).with_row_index("w"), on="wafer_id")
    fails = np.zeros((len(wafers), len(x)), dtype=bool)
    fails[w["w"].to_numpy(), w["die"].to_numpy()] = ~w["good"].to_numpy()
    rng = np.random.default_rng(seed)
    cx, cy = (x.min() + x.max()) / 2, (y.min() + y.max()) / 2
    radius = np.hypot(x - cx, y - cy).max()
    for k in range(len(wafers)):
        at, r = rng.uniform(0, 2 * np.pi), rng.uniform(0.2, 0.6) * radius
        px, py = cx + r * np.cos(at), cy + r * np.sin(at)
        if shape == "cluster":
            mark = np.hypot(x - px, y - py) <= 3.5
        else:
            a = rng.uniform(0, np.pi)
            along = (x - px) * np.cos(a) + (y - py) * np.sin(a)
            across = -(x - px) * np.sin(a) + (y - py) * np.cos(a)
            mark = (np.abs(across) <= 0.5) & (np.abs(along) <= 12.5)
        fails[k] |= mark & (rng.random(len(x)) < 0.9)
    return fails, grid


@pytest.mark.parametrize(("shape", "at_least"), [("cluster", 0.6), ("scratch", 0.8)])
def test_clusters_and_scratches_drawn_on_random_wafers_are_found(null_dies, shape, at_least):
    fails, grid = _overlay(null_dies, shape, seed=1)
    found = classify_grid(fails, grid)["signature"]
    assert (found == shape).mean() >= at_least, dict(
        zip(*np.unique(found, return_counts=True), strict=True)
    )
    assert (found == "random").mean() <= 1 - at_least


def test_few_fails_are_none_and_missing_dies_are_untested():
    x, y = np.meshgrid(np.arange(20), np.arange(20), indexing="ij")
    keep = np.hypot(x - 9.5, y - 9.5) <= 10
    x, y = x[keep], y[keep]
    grid = DieGrid.of(x, y)
    fails = np.zeros((2, len(x)), dtype=bool)
    fails[0, :3] = True
    fails[1, grid.zone == 2] = True  # every edge die of wafer 1 fails ...
    tested = np.ones_like(fails)
    out = classify_grid(fails, grid, tested)
    assert list(out["signature"]) == ["none", "edge_ring"]
    tested[1, grid.zone == 2] = False  # ... unless the edge was not tested
    out = classify_grid(fails, grid, tested)
    assert out["n_fail"][1] == 0 and out["signature"][1] == "none"
    with pytest.raises(ValueError, match=r"wafers x \d+ dies"):
        classify_grid(fails[:, :5], grid)
    with pytest.raises(ValueError, match=r"zone_quadrants must lie in 1\.\.4"):
        SignatureRules(zone_quadrants=5)


def test_bad_die_frames_are_refused_by_name():
    frame = pl.DataFrame(
        {"wafer_id": ["W1", "W1"], "die_x": [0, 0], "die_y": [0, 0], "good": [True, False]}
    )
    with pytest.raises(ValueError, match=r"lacks the columns \['product'\]"):
        classify_wafers(frame)
    with pytest.raises(ValueError, match=r"repeats a \(wafer_id, die_x, die_y\)"):
        classify_wafers(frame, grid_by=None)


def test_signatures_from_the_database_are_stored_per_run(tmp_path):
    sim = simulate_fab(tmp_path / "fab", FabConfig(lots=12, dies=True), seed=9)
    db = tmp_path / "fab.duckdb"
    for drop in sim.drop_dirs:
        assert ingest(drop, db).status == "merged"
    con = connect(db)
    try:
        found = wafer_signatures_from_db(con, wafers_per_query=70)  # 300 wafers: 5 queries
        assert found.height == sim.wafers
        assert found.equals(classify_wafers(_die_frame(sim)))  # the mart = the delivered dies
        assert store_wafer_signatures(con, "run-1", found) == sim.wafers
        assert store_wafer_signatures(con, "run-2", found.head(5)) == 5
        assert store_wafer_signatures(con, "run-1", found.head(7)) == 7  # replaces run-1
        counts = con.sql(
            "SELECT run_id, count(*) FROM wafer_signatures GROUP BY ALL ORDER BY ALL"
        ).fetchall()
        assert counts == [("run-1", 7), ("run-2", 5)]
        with pytest.raises(ValueError, match=r"unknown signature classes \['ring'\]"):
            store_wafer_signatures(
                con, "run-3", found.head(1).with_columns(signature=pl.lit("ring"))
            )
    finally:
        con.close()


def test_a_part_of_the_wafers_is_classified_on_the_whole_grid(null_dies):
    whole = classify_wafers(null_dies)
    positions = null_dies.select("product", "die_x", "die_y").unique()
    some = whole["wafer_id"].gather(np.arange(0, whole.height, 7))
    part = null_dies.filter(pl.col("wafer_id").is_in(some.implode()))
    assert classify_wafers(part, positions=positions).equals(
        whole.filter(pl.col("wafer_id").is_in(some.implode()))
    )
    with pytest.raises(ValueError, match="outside the positions of grid 'P-ALPHA'"):
        classify_wafers(part, positions=positions.filter(pl.col("die_x") > pl.col("die_x").min()))
