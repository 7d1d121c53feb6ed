"""D0 and alpha from the negative binomial HGLM of defect-bin fails per wafer and zone
(flows/analysis/defects.py), against the simulator's planted values on several seeds."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest

from flows.analysis.defects import fit_defect_density, zone_fail_counts
from flows.analysis.die_geometry import ZONES, grid_zones
from flows.fabsim.config import FabConfig
from flows.fabsim.die_model import MECHANISM_BINS, DieModel
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.db import connect
from tests.flows.conftest import ingest

DEFECT_BIN = MECHANISM_BINS["random_defect"]


def _counts(sim) -> pl.DataFrame:
    """Dies and defect-bin fails per wafer and zone, from the delivered Parquet files."""
    files = sorted(sim.out_dir.glob("drop_*/sort_die.parquet")) + sorted(
        sim.out_dir.glob("drop_*/sort_die/*.parquet")
    )
    dies = pl.concat([pl.read_parquet(f) for f in files])
    lots = pl.concat([pl.read_parquet(f) for f in sim.out_dir.glob("drop_*/lots.parquet")])
    wafers = pl.concat([pl.read_parquet(f) for f in sim.out_dir.glob("drop_*/wafers.parquet")])
    dies = dies.join(
        wafers.join(lots, on="lot_id").select("wafer_id", "lot_id", "product"), on="wafer_id"
    )
    parts = []
    for (_,), group in dies.group_by(["product"]):
        pos = group.select("die_x", "die_y").unique()
        _, zone = grid_zones(pos["die_x"].to_numpy(), pos["die_y"].to_numpy())
        pos = pos.with_columns(zone=pl.Series([ZONES[z] for z in zone]))
        parts.append(group.join(pos, on=["die_x", "die_y"]))
    return (
        pl.concat(parts)
        .group_by("wafer_id", "lot_id", "product", "zone")
        .agg(dies=pl.len(), fails=(pl.col("bin") == DEFECT_BIN).sum())
        .sort("wafer_id", "zone")
    )


def _areas(sim) -> dict[str, float]:
    return {p["product"]: p["die_area_cm2"] for p in sim.dies["products"]}


def test_the_intervals_cover_the_planted_d0_and_alpha_on_most_seeds(tmp_path):
    """Ten 40-lot fabs (3,000 wafer x zone counts each), D0 and alpha varied by seed: each
    95 % interval holds its planted value in at least 8 of 10 (P(<= 7 of 10) = 1.2 % at 95 %
    coverage), and the estimates are unbiased on average."""
    covered = np.zeros((10, 2), dtype=bool)
    ratios = []
    for seed in range(10):
        model = DieModel(
            d0_per_cm2=(0.03, 0.05, 0.08)[seed % 3], alpha=(1.0, 2.0, 4.0)[seed % 3 - 1]
        )
        sim = simulate_fab(
            tmp_path / f"s{seed}", FabConfig(lots=40, dies=True, die_model=model), seed=seed
        )
        fit = fit_defect_density(_counts(sim), _areas(sim))
        assert fit.converged and fit.unit == "defects per cm^2"
        covered[seed] = fit.covers(model.d0_per_cm2, model.alpha)
        ratios.append((fit.d0 / model.d0_per_cm2, fit.alpha / model.alpha))
    assert covered.sum(axis=0).min() >= 8, covered
    mean_ratio = np.mean(ratios, axis=0)
    assert abs(mean_ratio[0] - 1) < 0.03 and abs(mean_ratio[1] - 1) < 0.1, mean_ratio


def test_the_counts_come_from_the_die_mart_and_bad_counts_are_refused(tmp_path):
    sim = simulate_fab(tmp_path / "fab", FabConfig(lots=10, dies=True), seed=3)
    db = tmp_path / "fab.duckdb"
    for drop in sim.drop_dirs:
        assert ingest(drop, db).status == "merged"
    con = connect(db, read_only=True)
    try:
        counts = zone_fail_counts(con, [DEFECT_BIN])
    finally:
        con.close()
    mine = _counts(sim)
    assert counts.select(mine.columns).equals(
        mine.with_columns(pl.col("dies", "fails").cast(pl.Int64))
    )
    per_die = fit_defect_density(counts)
    per_cm2 = fit_defect_density(counts, _areas(sim))
    assert per_die.unit == "defects per die"
    mean_area = np.average(
        counts["product"].replace_strict(_areas(sim)).to_numpy(), weights=counts["dies"].to_numpy()
    )
    assert per_die.d0 == pytest.approx(per_cm2.d0 * mean_area, rel=0.01)
    with pytest.raises(ValueError, match=r"no die area for the products \['P-"):
        fit_defect_density(counts, {"P-NONE": 1.0})
    with pytest.raises(ValueError, match="between 0 and the dies tested"):
        fit_defect_density(counts.with_columns(fails=pl.col("dies") + 1))
    with pytest.raises(ValueError, match="D0 is not estimable"):
        fit_defect_density(counts.with_columns(fails=pl.lit(0)))
