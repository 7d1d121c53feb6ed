"""The die model (`FabConfig(dies=True)`): off by default, and the truth it plants is in the dies.

Checked against the truth the simulator records: the defect bin's counts per wafer and zone
against the planted D0 and alpha (moments of the negative binomial), each signature bin only
on its chamber's wafers and in its zone, the tool bin only on the bad tool's wafers.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from flows.fabsim.config import FabConfig
from flows.fabsim.die_model import DieModel
from flows.fabsim.dies import DIE_BIN_NAMES
from flows.fabsim.simulation import simulate_fab

SMALL = {"lots": 30, "n_drops": 2, "sort_die_fraction": 0.2}
# sha256 over the files of the SMALL fab of seed 3 without dies, pinned when the die model was
# merged (on top of issue 14's equipment offsets and issue 15's excursions; before them the
# same test held against commit 96fcd28): a fab that does not ask for dies is byte for byte
# what it was
BEFORE_DIES = {
    "plain": "54d37e72d14dc96a809d3ed427b055968bec935910ff7a0f31713683b2572bf1",
    "stdf_bins_events": "a90cbcdb70c9c503a9d790e9b0fd50376d3778839148f8e81e610265e7c735d0",
}


def _digest(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode() + b"\0")
            h.update(hashlib.sha256(p.read_bytes()).digest())
    return h.hexdigest()


@pytest.mark.parametrize(
    ("name", "extra"),
    [
        ("plain", {}),
        ("stdf_bins_events", {"stdf": True, "bin_defs": True, "equipment_events": True}),
    ],
)
def test_a_fab_without_dies_is_unchanged_byte_for_byte(tmp_path, name, extra):
    simulate_fab(tmp_path / "f", FabConfig(**SMALL, **extra), seed=3)
    assert _digest(tmp_path / "f") == BEFORE_DIES[name]


def _read(sim, table: str) -> pl.DataFrame:
    files = sorted(sim.out_dir.glob(f"drop_*/{table}.parquet")) + sorted(
        sim.out_dir.glob(f"drop_*/{table}/*.parquet")
    )
    return pl.concat([pl.read_parquet(f) for f in files])


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    """60 lots with dies, and the same seed without: 1,500 wafers, ~800,000 dies."""
    root = tmp_path_factory.mktemp("dies")
    plain = simulate_fab(root / "plain", FabConfig(lots=60, n_drops=2), seed=11)
    dies = simulate_fab(root / "dies", FabConfig(lots=60, n_drops=2, dies=True), seed=11)
    return plain, dies


def test_the_dies_change_no_other_table_and_no_planted_effect(fab):
    plain, dies = fab
    for table in ("lots", "wafers", "step_history", "inline_meas"):
        assert _read(dies, table).equals(_read(plain, table)), table
    assert dies.planted == plain.planted
    assert dies.layer_yield_impact == plain.layer_yield_impact
    assert "dies" not in plain.to_dict()
    assert not list(dies.out_dir.glob("drop_*/sort_yield*"))  # every wafer is sorted by die


def _die_frame(sim) -> pl.DataFrame:
    """Each die with its product, wafer, contract zone (recomputed here from the grid)."""
    dies = _read(sim, "sort_die")
    wafers = _read(sim, "wafers").join(_read(sim, "lots"), on="lot_id")
    dies = dies.join(wafers.select("wafer_id", "product"), on="wafer_id")
    centre = dies.group_by("product").agg(
        cx=(pl.col("die_x").min() + pl.col("die_x").max()) / 2,
        cy=(pl.col("die_y").min() + pl.col("die_y").max()) / 2,
    )
    dies = dies.join(centre, on="product").with_columns(
        d=((pl.col("die_x") - pl.col("cx")) ** 2 + (pl.col("die_y") - pl.col("cy")) ** 2).sqrt()
    )
    dies = dies.with_columns(r=pl.col("d") / pl.col("d").max().over("product"))
    return dies.with_columns(
        zone=pl.when(pl.col("r") <= 0.5)
        .then(pl.lit("center"))
        .when(pl.col("r") <= 0.8)
        .then(pl.lit("middle"))
        .otherwise(pl.lit("edge"))
    )


def _wafers_on(sim, tool: str, chamber: str | None, operation: str) -> set[str]:
    steps = _read(sim, "step_history").filter(
        (pl.col("operation") == operation) & (pl.col("tool_id") == tool)
    )
    if chamber is not None:
        steps = steps.filter(pl.col("chamber_id") == chamber)
    return set(steps["wafer_id"].to_list())


def test_every_wafer_has_every_die_of_its_product_and_named_bins(fab):
    _, sim = fab
    dies = _die_frame(sim)
    per_product = {p["product"]: p["dies_total"] for p in sim.products}
    counts = dies.group_by("wafer_id", "product").len()
    assert counts.height == sim.wafers
    assert all(n == per_product[p] for p, n in counts.select("product", "len").iter_rows())
    assert dies.select("wafer_id", "die_x", "die_y").is_unique().all()
    bin_defs = _read(sim, "bin_defs")
    assert dict(bin_defs.select("bin", "name").iter_rows()) == DIE_BIN_NAMES
    assert set(dies["bin"].unique()) <= set(DIE_BIN_NAMES)
    assert sim.dies["dies_written"] == dies.height
    share = dies["bin"].value_counts(normalize=True)
    for b, pct in sim.dies["bin_pct"].items():
        mine = share.filter(pl.col("bin") == int(b))["proportion"]
        assert pct == pytest.approx(100 * (mine[0] if len(mine) else 0.0)), b
    assert sim.dies["yield_pct"] + sum(sim.dies["bin_pct"].values()) == pytest.approx(100)
    zones = dies.group_by("product", "zone").agg(pl.len() // pl.col("wafer_id").n_unique())
    for p in sim.dies["products"]:  # the truth's zone sizes are the contract's zones
        mine = dict(zones.filter(pl.col("product") == p["product"]).select("zone", "len").rows())
        assert mine == p["dies_per_zone"]


def test_the_defect_bin_is_negative_binomial_with_the_planted_d0_and_alpha(fab):
    _, sim = fab
    truth = sim.dies
    area = {p["product"]: p["die_area_cm2"] for p in truth["products"]}
    dies = _die_frame(sim)
    counts = dies.group_by("wafer_id", "product", "zone").agg(
        n=pl.len(), k=(pl.col("bin") == truth["mechanism_bins"]["random_defect"]).sum()
    )
    exposure = counts["n"].to_numpy() * np.array([area[p] for p in counts["product"]])
    k = counts["k"].to_numpy()
    d0 = k.sum() / exposure.sum()
    # NB2: Var(k) = mu + mu^2 / alpha, so SE(D0) = sqrt(sum(mu + mu^2/alpha)) / sum(exposure)
    mu = truth["d0_per_cm2"] * exposure
    se = np.sqrt(np.sum(mu + mu**2 / truth["alpha"])) / exposure.sum()
    assert abs(d0 - truth["d0_per_cm2"]) < 4 * se, (d0, se)
    # moments: E[(k - mu)^2 - mu] = mu^2 / alpha, so 1/alpha = sum((k-mu)^2 - k) / sum(mu^2)
    mu_hat = d0 * exposure
    inv_alpha = np.sum((k - mu_hat) ** 2 - k) / np.sum(mu_hat**2)
    assert 1 / truth["alpha"] * 0.7 < inv_alpha < 1 / truth["alpha"] * 1.3, 1 / inv_alpha


def test_each_signature_bin_is_on_its_chamber_in_its_zone_and_the_tool_bin_on_its_tool(fab):
    _, sim = fab
    truth = sim.dies
    dies = _die_frame(sim)
    assert {s["signature"] for s in truth["signatures"]} == {"edge_ring", "center_spot"}
    for s in truth["signatures"]:
        on = _wafers_on(sim, s["tool_id"], s["chamber_id"], s["operation"])
        assert len(on) == s["n_wafers_affected"] > 50
        binned = dies.filter(pl.col("bin") == s["bin"])
        assert set(binned["wafer_id"].unique()) <= on
        assert set(binned["zone"].unique()) == {s["zone"]}
        in_zone = dies.filter(pl.col("wafer_id").is_in(list(on)) & (pl.col("zone") == s["zone"]))
        # a die takes the signature bin unless a defect came first: rate ~ fail x (1 - A D0)
        rate = (in_zone["bin"] == s["bin"]).mean()
        assert s["fail_prob"] * 0.85 < rate < s["fail_prob"] * 1.02, rate
    tool = sim.effect("tool")
    on_tool = _wafers_on(sim, tool.tool_id, None, tool.operation)
    tool_binned = set(dies.filter(pl.col("bin") == 12)["wafer_id"].unique())
    assert tool_binned and tool_binned <= on_tool


def test_the_null_fab_has_random_defects_but_no_signature_and_no_tool_bin(tmp_path):
    sim = simulate_fab(tmp_path / "null", FabConfig(lots=8, planted=None, dies=True), seed=2)
    bins = set(_read(sim, "sort_die")["bin"].unique())
    assert sim.dies["signatures"] == []
    assert 9 in bins and not bins & {10, 11, 12}


def test_dies_are_reproduced_by_the_seed_and_the_model_is_checked(tmp_path):
    config = FabConfig(lots=6, dies=True, die_model=DieModel(wafers_per_chunk=40))
    a = simulate_fab(tmp_path / "a", config, seed=4)
    b = simulate_fab(tmp_path / "b", config, seed=4)
    assert _digest(a.out_dir) == _digest(b.out_dir)
    assert len(list(a.out_dir.glob("drop_001/sort_die/part-*.parquet"))) == 4  # 150 wafers / 40
    with pytest.raises(ValueError, match="alpha must be finite and > 0"):
        DieModel(alpha=0)
    with pytest.raises(ValueError, match=r"edge_ring_fail must lie in \[0, 1\]"):
        DieModel(edge_ring_fail=1.5)


def test_dies_as_stdf_ingest_to_the_rows_and_bin_names_of_the_parquet_path(tmp_path):
    from flows.fabsim.stdf_writer import SIM_STDF_WAFER_ID
    from tests.flows.conftest import ingest, query

    dbs = {}
    for way, stdf in (("parquet", False), ("stdf", True)):
        sim = simulate_fab(
            tmp_path / way, FabConfig(lots=4, n_drops=2, dies=True, stdf=stdf), seed=6
        )
        dbs[way] = tmp_path / f"{way}.duckdb"
        for drop in sim.drop_dirs:
            result = ingest(drop, dbs[way], stdf_wafer_id=SIM_STDF_WAFER_ID)
            assert result.status == "merged", [str(p) for p in result.problems]
    for sql in (
        "SELECT wafer_id, die_x, die_y, bin FROM core.sort_die ORDER BY ALL",
        "SELECT bin, name, good FROM core.bin_defs ORDER BY bin",
    ):
        assert query(dbs["stdf"], sql) == query(dbs["parquet"], sql)
    names = dict(query(dbs["stdf"], "SELECT bin, name FROM core.bin_defs"))
    assert names == DIE_BIN_NAMES


def test_the_simulate_command_with_dies(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app
    from flows.fabsim.truth import SimulationTruth

    done = CliRunner().invoke(app, ["simulate", str(tmp_path / "d"), "--lots", "20", "--dies"])
    assert done.exit_code == 0, done.output
    truth = SimulationTruth.load(tmp_path / "d")
    edge = next(s for s in truth.dies["signatures"] if s["signature"] == "edge_ring")
    assert (
        f"planted edge_ring in {edge['layer']} ({edge['operation']} {edge['tool_id']}"
        in done.output
    )
    assert truth.dies["d0_per_cm2"] == 0.05 and truth.dies["alpha"] == 2.0
