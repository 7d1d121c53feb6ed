"""The fab simulator: contract-true drops, reproducible, and a truth.json the data bear out.

Every statistical check compares the data with what truth.json says was planted; the expected
sizes come from the simulator's true probabilities, the observed ones from the files, read
back with DuckDB as the ingestion will read them.
"""

from __future__ import annotations

import gzip
import itertools
import json
from dataclasses import replace
from pathlib import Path

import duckdb
import numpy as np
import polars as pl
import pytest
from scipy.special import expit
from typer.testing import CliRunner

from flows.cli import app
from flows.fabsim.catalogue import DEFAULT_LAYERS
from flows.fabsim.config import (
    DEFAULT_PLANTED,
    DEFAULT_START,
    DEFAULT_YIELD,
    FabConfig,
    PlantedSizes,
)
from flows.fabsim.equipment import draw_equipment
from flows.fabsim.fab import WaferTruth, choose_sites, draw_fab, draw_wafers
from flows.fabsim.route import build_route
from flows.fabsim.simulation import _stream, simulate_fab
from flows.fabsim.tables import OPTIONAL_TABLES, SCHEMAS
from flows.fabsim.truth import SimulationTruth

CONTRACT_TYPES = {"string": "VARCHAR", "int64": "BIGINT", "double": "DOUBLE"}


def _source(drop: Path, table: str) -> str | None:
    """The DuckDB reader of one table of one drop (single file or split folder), if present."""
    for ext, reader in (("parquet", "read_parquet"), ("csv.gz", "read_csv"), ("csv", "read_csv")):
        if (drop / f"{table}.{ext}").is_file():
            return f"{reader}('{drop / f'{table}.{ext}'}')"
        if (drop / table).is_dir() and any((drop / table).glob(f"part-*.{ext}")):
            return f"{reader}('{drop / table}/part-*.{ext}')"
    return None


def read(truth: SimulationTruth, table: str, drops: list[int] | None = None) -> pl.DataFrame:
    """A table over all drops (or the given ones), with a `drop` column (0-based)."""
    con = duckdb.connect()
    parts = []
    for d, folder in enumerate(truth.drop_dirs):
        src = _source(folder, table)
        if src is not None and (drops is None or d in drops):
            parts.append(con.sql(f"SELECT *, {d} AS drop FROM {src}").pl())
    return pl.concat(parts) if parts else pl.DataFrame()


def wafer_yield(truth: SimulationTruth) -> pl.DataFrame:
    """Wafer yield in percent from the latest sort_yield row or the aggregated die bins."""
    sy = (
        read(truth, "sort_yield")
        .sort("test_ts")
        .group_by("wafer_id")
        .last()
        .select("wafer_id", "dies_total", "dies_good")
    )
    sd = read(truth, "sort_die")
    if sd.height:
        sd = sd.group_by("wafer_id").agg(
            pl.len().cast(pl.Int64).alias("dies_total"),
            (pl.col("bin") == 1).sum().cast(pl.Int64).alias("dies_good"),
        )
        sy = pl.concat([sy, sd])
    return sy.with_columns(y=100 * pl.col("dies_good") / pl.col("dies_total"))


def at_operation(truth: SimulationTruth, operation: str) -> pl.DataFrame:
    """Each wafer's first pass through `operation`: its lot, tool and chamber."""
    return (
        read(truth, "step_history")
        .filter(pl.col("operation") == operation)
        .sort("step_seq")
        .group_by("wafer_id")
        .first()
        .join(read(truth, "wafers").select("wafer_id", "lot_id"), on="wafer_id")
    )


@pytest.fixture(scope="module")
def fab(tmp_path_factory) -> SimulationTruth:
    return simulate_fab(tmp_path_factory.mktemp("fab") / "sim", FabConfig(lots=300), seed=11)


@pytest.fixture(scope="module")
def null_fab(tmp_path_factory) -> SimulationTruth:
    return simulate_fab(
        tmp_path_factory.mktemp("null") / "sim", FabConfig(lots=300, planted=None), seed=11
    )


# ---- the contract -------------------------------------------------------------------------


def test_every_table_has_the_contract_columns_and_types(fab):
    con = duckdb.connect()
    drop = fab.drop_dirs[0]
    for table, schema in SCHEMAS.items():
        src = _source(drop, table)
        if table in OPTIONAL_TABLES:  # only on request (tests/flows/fabsim/test_v2_tables.py)
            assert src is None, f"{table} written without being asked for"
            continue
        assert src is not None, f"{table} missing from the drop"
        described = con.sql(f"DESCRIBE SELECT * FROM {src}").fetchall()
        got = [(name, kind) for name, kind, *_ in described]
        expected = [
            (
                f.name,
                "TIMESTAMP" if str(f.type).startswith("timestamp") else CONTRACT_TYPES[str(f.type)],
            )
            for f in schema
        ]
        assert got == expected, table
        assert fab.drops[0].tables[table] == con.sql(f"SELECT count(*) FROM {src}").fetchall()[0][0]


def test_keys_are_unique_and_every_reference_resolves(fab):
    lots, wafers = read(fab, "lots"), read(fab, "wafers")
    steps, meas = read(fab, "step_history"), read(fab, "inline_meas")
    sort_yield, sort_die = read(fab, "sort_yield"), read(fab, "sort_die")
    assert lots["lot_id"].n_unique() == lots.height == 300
    assert wafers["wafer_id"].n_unique() == wafers.height == fab.wafers
    assert steps.select("wafer_id", "step_seq").is_unique().all()
    assert sort_die.select("wafer_id", "die_x", "die_y").is_unique().all()
    assert sort_yield["wafer_id"].is_unique().all()  # one drop: no re-test
    assert set(wafers["lot_id"]) <= set(lots["lot_id"])
    known = set(wafers["wafer_id"])
    for name, t in [("steps", steps), ("meas", meas), ("yield", sort_yield), ("die", sort_die)]:
        assert set(t["wafer_id"]) <= known, name
    # Every wafer is sorted once, either by wafer counts or by die bins.
    assert not set(sort_yield["wafer_id"]) & set(sort_die["wafer_id"])
    assert set(sort_yield["wafer_id"]) | set(sort_die["wafer_id"]) == known
    assert sort_die.height > 0
    # Slots 1..25, unique within the lot.
    assert wafers["slot"].min() >= 1 and wafers["slot"].max() <= 25
    assert wafers.select("lot_id", "slot").is_unique().all()


def test_rows_obey_the_row_rules(fab):
    steps = read(fab, "step_history")
    assert (steps["track_out_ts"] >= steps["track_in_ts"]).all()
    assert (steps["step_seq"] > 0).all()
    assert steps.select(pl.exclude("chamber_id")).null_count().sum_horizontal().item() == 0
    sy = read(fab, "sort_yield")
    assert (sy["dies_total"] > 0).all()
    assert ((sy["dies_good"] >= 0) & (sy["dies_good"] <= sy["dies_total"])).all()
    assert sy["dies_total"].min() >= 500 and sy["dies_total"].max() <= 700
    meas = read(fab, "inline_meas")
    assert np.isfinite(meas["value"].to_numpy()).all() and (meas["site"] >= 1).all()
    lots = read(fab, "lots")
    # Lots start, then are processed, then sorted: times are realistic and ordered.
    first = (
        steps.join(read(fab, "wafers"), on="wafer_id")
        .group_by("lot_id")
        .agg(
            pl.col("track_in_ts").min().alias("first_in"),
            pl.col("track_out_ts").max().alias("last_out"),
        )
    )
    timeline = lots.join(first, on="lot_id")
    assert (timeline["first_in"] > timeline["start_ts"]).all()
    cycle_days = (timeline["last_out"] - timeline["start_ts"]).dt.total_hours() / 24
    assert 3 < cycle_days.min() and cycle_days.max() < 60
    tested = sy.join(read(fab, "wafers"), on="wafer_id").join(first, on="lot_id")
    assert (tested["test_ts"] > tested["last_out"]).all()


def test_the_route_has_the_requested_shape(fab):
    assert len(fab.layers) == 8
    by_layer: dict[str, list[dict]] = {}
    for op in fab.route:
        by_layer.setdefault(op["layer"], []).append(op)
        assert 2 <= len(op["tools"]) <= 6
        assert all(1 <= len(t["chambers"]) <= 4 for t in op["tools"])
    assert list(by_layer) == fab.layers
    assert all(2 <= len(ops) <= 5 for ops in by_layer.values())
    seqs = [op["step_seq"] for op in fab.route]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    tool_ids = [t["tool_id"] for op in fab.route for t in op["tools"]]
    assert len(set(tool_ids)) == len(tool_ids)


def test_each_wafer_walks_the_route_once_and_a_lot_uses_one_tool_per_operation(fab):
    steps = read(fab, "step_history")
    route = pl.DataFrame(
        [
            {"operation": op["operation"], "layer_r": op["layer"], "seq_r": op["step_seq"]}
            for op in fab.route
        ]
    )
    rework = steps.filter(pl.col("step_seq") % 10 != 0)
    first = steps.filter(pl.col("step_seq") % 10 == 0)
    # One pass per operation per wafer, at the route's step_seq and layer.
    per_wafer = first.group_by("wafer_id").agg(
        pl.len(), pl.col("operation").n_unique().alias("ops")
    )
    assert (per_wafer["len"] == len(fab.route)).all() and (per_wafer["ops"] == len(fab.route)).all()
    joined = first.join(route, on="operation")
    assert joined.height == first.height
    assert (joined["seq_r"] == joined["step_seq"]).all() and (
        joined["layer_r"] == joined["layer"]
    ).all()
    # Rework: a later step_seq, same operation, same tool and chamber, litho only, after the pass.
    assert 0 < rework.height < 0.01 * steps.height
    rw = rework.join(first, on=["wafer_id", "operation"], suffix="_first")
    assert rw.height == rework.height
    assert (rw["step_seq"] > rw["step_seq_first"]).all()
    assert (rw["tool_id"] == rw["tool_id_first"]).all()
    assert (rw["track_in_ts"] > rw["track_out_ts_first"]).all()
    assert rw["operation"].str.ends_with("_LITHO").all()
    # Steps happen in step_seq order.
    ordered = steps.sort("wafer_id", "step_seq").with_columns(
        prev_out=pl.col("track_out_ts").shift(1).over("wafer_id")
    )
    assert (
        (ordered.drop_nulls("prev_out").select(pl.col("track_in_ts") >= pl.col("prev_out")))
        .to_series()
        .all()
    )
    # One tool per lot per operation, and its wafers spread over that tool's chambers.
    lot_steps = first.join(read(fab, "wafers"), on="wafer_id")
    per_lot = lot_steps.group_by("lot_id", "operation").agg(
        pl.col("tool_id").n_unique().alias("tools"),
        pl.col("chamber_id").n_unique().alias("chambers"),
    )
    assert (per_lot["tools"] == 1).all()
    chambers = {t["tool_id"]: t["chambers"] for op in fab.route for t in op["tools"]}
    tool_of = lot_steps.group_by("lot_id", "operation").agg(pl.col("tool_id").first())
    per_lot = per_lot.join(tool_of, on=["lot_id", "operation"])
    expected = per_lot["tool_id"].map_elements(lambda t: len(chambers[t]), return_dtype=pl.Int64)
    assert (per_lot["chambers"] == expected).all()  # 25 wafers round-robin reach every chamber
    for tool, chamber in lot_steps.select("tool_id", "chamber_id").unique().iter_rows():
        assert chamber in chambers[tool]  # None exactly for single-chamber tools


def test_chambers_of_different_operations_do_not_share_their_wafers(fab):
    """Each operation deals the lot's wafers to the chambers in an order of its own.

    If the order were fixed by slot, two operations whose tools have k chambers each would pair
    their chambers one to one within a lot (at most k distinct pairs): a bad chamber in one
    layer would then mark exactly the wafers of some chamber of every other layer."""
    steps = read(fab, "step_history").filter(pl.col("chamber_id").is_not_null())
    first = steps.sort("step_seq").group_by("wafer_id", "operation").first()
    lots = read(fab, "wafers").select("wafer_id", "lot_id")
    wide = first.join(lots, on="wafer_id").select("lot_id", "wafer_id", "operation", "chamber_id")
    ops = sorted(wide["operation"].unique().to_list())
    pairs = 0
    aligned = 0
    for a, b in itertools.pairwise(ops):
        pa_ = wide.filter(pl.col("operation") == a).drop("operation")
        pb_ = wide.filter(pl.col("operation") == b).drop("operation", "lot_id")
        both = pa_.join(pb_, on="wafer_id", suffix="_b")
        per_lot = both.group_by("lot_id").agg(
            pl.col("chamber_id").n_unique().alias("ka"),
            pl.col("chamber_id_b").n_unique().alias("kb"),
            pl.struct("chamber_id", "chamber_id_b").n_unique().alias("pairs"),
            pl.len().alias("n"),
        )
        per_lot = per_lot.filter((pl.col("ka") >= 2) & (pl.col("kb") >= 2) & (pl.col("n") >= 10))
        pairs += per_lot.height
        aligned += per_lot.filter(pl.col("pairs") <= pl.max_horizontal("ka", "kb")).height
    assert pairs > 100
    # With independent random orders and 10+ wafers a one-to-one pairing is rare.
    assert aligned / pairs < 0.02


def test_metrology_is_sampled_with_several_sites(fab):
    meas = read(fab, "inline_meas")
    params = {p["param"]: p for p in fab.params}
    assert set(meas["param"]) == set(params)
    per_wafer = meas.group_by("wafer_id", "param").agg(
        pl.len(), pl.col("site").n_unique(), pl.col("operation").first()
    )
    assert (per_wafer["len"] == per_wafer["site"]).all()
    assert (
        per_wafer["len"]
        == per_wafer["param"].map_elements(lambda p: params[p]["sites"], return_dtype=pl.UInt32)
    ).all()
    assert (
        per_wafer["operation"]
        == per_wafer["param"].map_elements(lambda p: params[p]["operation"], return_dtype=pl.String)
    ).all()
    measured = per_wafer.group_by("param").agg(pl.len())
    # About half the lots, three wafers each: a sample, not every wafer.
    assert measured["len"].min() > 0.04 * fab.wafers and measured["len"].max() < 0.15 * fab.wafers


# ---- reproducibility ----------------------------------------------------------------------


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_the_seed_reproduces_the_fab_byte_for_byte(tmp_path):
    a = simulate_fab(tmp_path / "a", FabConfig(lots=40, n_drops=2), seed=3)
    b = simulate_fab(tmp_path / "b", FabConfig(lots=40, n_drops=2), seed=3)
    c = simulate_fab(tmp_path / "c", FabConfig(lots=40, n_drops=2), seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert a.to_dict() == b.to_dict()
    assert _files(tmp_path / "a") != _files(tmp_path / "c") and c.planted != a.planted
    assert SimulationTruth.load(tmp_path / "a") == a


# ---- the planted truth, seen in the data ----------------------------------------------------


def test_truth_json_holds_every_planted_effect_in_three_different_layers(fab):
    raw = json.loads((fab.out_dir / "truth.json").read_text())
    assert set(raw) == {
        "schema", "seed", "null", "lots", "wafers", "step_rows", "format", "layers", "route",
        "params", "products", "yield_model", "planted", "layer_yield_impact", "drops",
        "equipment_sd", "equipment_offsets", "shadow", "layer_loss",
    }  # fmt: skip
    kinds = {e["effect"]: e for e in raw["planted"]}
    assert set(kinds) == {"tool", "chamber", "metrology", "dispersion"}
    for e in raw["planted"]:
        assert {
            "layer",
            "operation",
            "tool_id",
            "chamber_id",
            "param",
            "effect",
            "size_logit",
        } <= set(e)
    yield_layers = {kinds[k]["layer"] for k in ("tool", "chamber", "metrology")}
    assert len(yield_layers) == 3
    assert (
        kinds["chamber"]["chamber_id"]
        and kinds["dispersion"]["chamber_id"]
        and kinds["metrology"]["param"]
    )
    assert kinds["dispersion"]["layer"] != kinds["metrology"]["layer"]
    impacts = raw["layer_yield_impact"]
    assert set(impacts) == set(raw["layers"])
    for layer, impact in impacts.items():
        if layer in yield_layers:
            effect = next(e for e in raw["planted"] if e["layer"] == layer and e["size_logit"])
            assert impact > 0.2
            if effect["effect"] != "metrology":  # the only non-zero level of its term
                assert impact == pytest.approx(effect["yield_impact"])
        else:
            assert impact == 0.0
    # Realistic sizes: a few yield points on the wafers an effect touches.
    for k in ("tool", "chamber"):
        assert 2.0 < kinds[k]["yield_impact_affected"] < 6.0
    # The impact over all wafers is the affected impact diluted by the affected share.
    tool = kinds["tool"]
    share = tool["n_wafers_affected"] / raw["wafers"]
    assert tool["yield_impact"] == pytest.approx(tool["yield_impact_affected"] * share)


def test_the_bad_tools_wafers_yield_less_by_about_the_planted_amount(fab):
    e = fab.effect("tool")
    y = at_operation(fab, e.operation).join(wafer_yield(fab), on="wafer_id")
    bad = y.filter(pl.col("tool_id") == e.tool_id)["y"].mean()
    others = y.filter(pl.col("tool_id") != e.tool_id)["y"].mean()
    assert bad < others
    # Lot-to-lot variation dominates the noise here: about 0.6 points of standard error.
    assert others - bad == pytest.approx(e.yield_impact_affected, abs=2.0)
    assert y.filter(pl.col("tool_id") == e.tool_id).height == e.n_wafers_affected


def test_the_bad_chamber_yields_less_than_its_sister_chambers(fab):
    e = fab.effect("chamber")
    y = (
        at_operation(fab, e.operation)
        .filter(pl.col("tool_id") == e.tool_id)
        .join(wafer_yield(fab), on="wafer_id")
    )
    bad = y.filter(pl.col("chamber_id") == e.chamber_id)
    assert bad.height == e.n_wafers_affected
    # Same lots on every chamber (round-robin), so lot effects cancel: a tight comparison.
    gap = y.filter(pl.col("chamber_id") != e.chamber_id)["y"].mean() - bad["y"].mean()
    assert gap == pytest.approx(e.yield_impact_affected, abs=1.0)


def test_the_metrology_parameter_is_shifted_by_its_tool_and_drives_yield(fab):
    e = fab.effect("metrology")
    meas = read(fab, "inline_meas").filter(pl.col("param") == e.param)
    wafer_mean = meas.group_by("wafer_id").agg(pl.col("value").mean())
    m = wafer_mean.join(at_operation(fab, e.operation), on="wafer_id").join(
        wafer_yield(fab), on="wafer_id"
    )
    shifted = m.filter(pl.col("tool_id") == e.tool_id)["value"].mean()
    rest = m.filter(pl.col("tool_id") != e.tool_id)["value"].mean()
    # Background tool offsets have sd 0.3 unit_sd: allow one unit either side of the shift.
    assert shifted - rest == pytest.approx(e.param_shift, abs=e.param_unit_sd)
    z = ((m["value"] - e.param_target) / e.param_unit_sd).to_numpy()
    p = (m["y"] / 100).clip(0.01, 0.99).to_numpy()
    slope = np.polyfit(z, np.log(p / (1 - p)), 1)[0]
    assert slope == pytest.approx(e.size_logit, abs=0.08)


def test_the_metrology_truth_removes_only_the_tools_shift(fab):
    """The truth of the metrology effect is the same fab drawn again with the shift set to 0.

    The files do not carry the true lot and wafer logit effects, so the counterfactual is drawn
    from the simulator's own streams (seed 11, the fixture's arguments) with the sites kept."""
    route = build_route(_stream(11, "route"), DEFAULT_LAYERS, (2, 5))
    drawn = draw_fab(_stream(11, "fab"), route, 300, 25, DEFAULT_START, 33.0, 0.02)
    sites = choose_sites(_stream(11, "plant"), drawn, DEFAULT_PLANTED)
    site = next(s for s in sites if s.kind == "metrology")
    e = fab.effect("metrology")
    assert (route.tool_name[site.tool], route.params[site.param].param) == (e.tool_id, e.param)

    def wafers(sizes: PlantedSizes) -> WaferTruth:
        return draw_wafers(
            _stream(11, "wafers"), drawn, sites, sizes, DEFAULT_YIELD, equipment(route, drawn)
        )

    as_simulated = wafers(DEFAULT_PLANTED)
    simulated = as_simulated.eta
    unshifted = wafers(replace(DEFAULT_PLANTED, metrology_shift_units=0.0)).eta
    assert 100 * expit(simulated).mean() == pytest.approx(fab.yield_model["mean_yield_pct"])
    hit = drawn.wafer_tool(np.arange(len(simulated)), site.op) == site.tool
    assert hit.sum() == e.n_wafers_affected
    # Every wafer the shifting tool did not process keeps its logit bit for bit.
    assert np.array_equal(unshifted[~hit], simulated[~hit])
    shift_units = e.param_shift / e.param_unit_sd
    assert np.allclose(unshifted[hit] - simulated[hit], -e.size_logit * shift_units)
    gain = 100 * (expit(unshifted) - expit(simulated))
    assert e.yield_impact == pytest.approx(gain.mean(), rel=1e-9)
    assert e.yield_impact_affected == pytest.approx(gain[hit].mean(), rel=1e-9)
    # Putting every wafer's parameter at target also removes variation nobody planted: another
    # number, so the check above tells the two definitions apart.
    at_target = simulated - e.size_logit * as_simulated.z[:, site.param]
    assert abs(100 * (expit(at_target) - expit(simulated)).mean() - e.yield_impact) > 0.05


def equipment(route, drawn) -> np.ndarray:
    """The default small equipment differences of seed 11, per wafer (the fixture's fab)."""
    offsets = draw_equipment(_stream(11, "equipment"), route, FabConfig().equipment_sd)
    return offsets.wafer_logit(drawn)


def test_the_layer_truth_is_the_impact_definition_at_the_true_effects(fab):
    """The metrology layer's truth is what the ranking estimates: every wafer's parameter at
    the typical tool's level (the median of the tools' mean true values; of two tools the one
    with the better yield), written out here by hand rather than through the ranking's code."""
    route = build_route(_stream(11, "route"), DEFAULT_LAYERS, (2, 5))
    drawn = draw_fab(_stream(11, "fab"), route, 300, 25, DEFAULT_START, 33.0, 0.02)
    sites = choose_sites(_stream(11, "plant"), drawn, DEFAULT_PLANTED)
    site = next(s for s in sites if s.kind == "metrology")
    e = fab.effect("metrology")
    truth = draw_wafers(
        _stream(11, "wafers"), drawn, sites, DEFAULT_PLANTED, DEFAULT_YIELD, equipment(route, drawn)
    )
    z = truth.z[:, site.param]
    tools = drawn.wafer_tool(np.arange(len(z)), site.op)
    logit_at = {t: e.size_logit * z[tools == t].mean() for t in np.unique(tools)}
    values = sorted(logit_at.values())
    typical = max(values) if len(values) == 2 else float(np.median(values))
    moved = truth.eta + typical - e.size_logit * z
    expected = 100 * (expit(moved) - expit(truth.eta)).mean()
    assert fab.layer_yield_impact[e.layer] == pytest.approx(expected, rel=1e-9)
    # not the planted shift alone: the parameter's lot and wafer variation is removed too
    assert abs(fab.layer_yield_impact[e.layer] - e.yield_impact) > 0.05


def test_the_noisy_chamber_varies_more_without_a_shift(fab):
    e = fab.effect("dispersion")
    meas = read(fab, "inline_meas").filter(pl.col("param") == e.param)
    # Residuals around each wafer's mean and the site pattern shared by all wafers.
    res = (
        meas.with_columns(
            r=pl.col("value")
            - pl.col("value").mean().over("wafer_id")
            - pl.col("value").mean().over("site")
        )
        .join(at_operation(fab, e.operation), on="wafer_id")
        .filter(pl.col("tool_id") == e.tool_id)
    )
    noisy = res.filter(pl.col("chamber_id") == e.chamber_id)
    calm = res.filter(pl.col("chamber_id") != e.chamber_id)
    ratio = noisy["r"].var() / calm["r"].var()
    assert ratio == pytest.approx(e.sd_ratio**2, rel=0.35)
    means = res.group_by("wafer_id", "chamber_id").agg(pl.col("value").mean())
    gap = (
        means.filter(pl.col("chamber_id") == e.chamber_id)["value"].mean()
        - means.filter(pl.col("chamber_id") != e.chamber_id)["value"].mean()
    )
    assert abs(gap) < e.param_unit_sd  # chamber offsets have sd 0.2 unit_sd; no planted shift


def test_the_null_fab_plants_nothing(fab, null_fab):
    assert null_fab.null and null_fab.planted == []
    assert set(null_fab.layer_yield_impact.values()) == {0.0}
    # The same seed gives the same fab otherwise, so the planted places can be checked for silence.
    assert null_fab.route == fab.route
    for kind in ("tool", "chamber"):
        e = fab.effect(kind)
        y = at_operation(null_fab, e.operation).join(wafer_yield(null_fab), on="wafer_id")
        if kind == "chamber":
            y = y.filter(pl.col("tool_id") == e.tool_id)
        hit = pl.col("tool_id" if kind == "tool" else "chamber_id") == (
            e.tool_id if kind == "tool" else e.chamber_id
        )
        gap = y.filter(~hit)["y"].mean() - y.filter(hit)["y"].mean()
        assert abs(gap) < 0.4 * e.yield_impact_affected
    e = fab.effect("metrology")
    m = (
        read(null_fab, "inline_meas")
        .filter(pl.col("param") == e.param)
        .join(at_operation(null_fab, e.operation), on="wafer_id")
    )
    shift = (
        m.filter(pl.col("tool_id") == e.tool_id)["value"].mean()
        - m.filter(pl.col("tool_id") != e.tool_id)["value"].mean()
    )
    assert abs(shift) < 0.5 * e.param_shift


def test_planted_sizes_can_be_chosen_and_switched_off(tmp_path):
    sizes = PlantedSizes(bad_tool_logit=-0.6, bad_chamber_logit=0.0, noisy_chamber_sd_ratio=1.0)
    truth = simulate_fab(tmp_path / "s", FabConfig(lots=120, planted=sizes), seed=2)
    assert {e.effect for e in truth.planted} == {"tool", "metrology"}
    assert truth.effect("tool").size_logit == -0.6
    assert DEFAULT_PLANTED.bad_tool_logit < 0


# ---- deliveries ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def delivered(tmp_path_factory) -> tuple[SimulationTruth, SimulationTruth]:
    root = tmp_path_factory.mktemp("drops")
    split = simulate_fab(
        root / "split", FabConfig(lots=150, n_drops=3, retest_fraction=0.05), seed=5
    )
    whole = simulate_fab(
        root / "whole", FabConfig(lots=150, n_drops=1, retest_fraction=0.05), seed=5
    )
    return split, whole


def test_drops_deliver_history_first_and_sort_results_later(delivered):
    split, _ = delivered
    assert [d.name for d in split.drops] == ["drop_001", "drop_002", "drop_003"]
    first = split.drops[0].tables
    assert {"lots", "wafers", "step_history"} <= set(first) and "sort_yield" not in first
    assert "sort_yield" in split.drops[-1].tables
    lots = read(split, "lots")
    assert lots["drop"].n_unique() >= 2  # some lots arrive in a later drop
    # Nothing refers to a wafer delivered later; wafers come with their lot.
    wafers = read(split, "wafers").join(lots.select("lot_id", lot_drop="drop"), on="lot_id")
    assert (wafers["drop"] == wafers["lot_drop"]).all()
    for table in ("step_history", "inline_meas", "sort_yield", "sort_die"):
        t = read(split, table).join(wafers.select("wafer_id", wafer_drop="drop"), on="wafer_id")
        assert t.height == read(split, table).height
        assert (t["drop"] >= t["wafer_drop"]).all(), table
    # A lot's history continues across drops, and sort results follow the history.
    steps = read(split, "step_history")
    assert steps.group_by("wafer_id").agg(pl.col("drop").n_unique())["drop"].max() >= 2
    last_step = steps.group_by("wafer_id").agg(pl.col("drop").max().alias("last_step_drop"))
    sy = read(split, "sort_yield").join(last_step, on="wafer_id")
    assert (sy["drop"] >= sy["last_step_drop"]).all()


def test_a_retest_comes_in_a_later_drop_and_replaces_the_first_result(delivered):
    split, whole = delivered
    sy = read(split, "sort_yield").sort("test_ts")
    twice = sy.filter(pl.col("wafer_id").is_duplicated())
    assert twice.height > 0
    first, retest = twice.group_by("wafer_id").first(), twice.group_by("wafer_id").last()
    pair = first.join(retest, on="wafer_id", suffix="_re")
    assert (pair["drop_re"] > pair["drop"]).all() and (pair["test_ts_re"] > pair["test_ts"]).all()
    assert (pair["dies_good"] <= pair["dies_good_re"]).all()
    # The re-test carries the true result: the same as the single-drop fab's only row.
    truth_rows = read(whole, "sort_yield")
    check = pair.join(truth_rows, on="wafer_id", suffix="_whole")
    assert (check["dies_good_re"] == check["dies_good_whole"]).all()


def test_the_drops_together_are_the_single_drop_fab(delivered):
    split, whole = delivered
    assert split.planted == whole.planted and split.layer_yield_impact == whole.layer_yield_impact
    keys = {
        "lots": ["lot_id"],
        "wafers": ["wafer_id"],
        "step_history": ["wafer_id", "step_seq"],
        "inline_meas": ["wafer_id", "param", "site"],
        "sort_die": ["wafer_id", "die_x", "die_y"],
    }
    for table, key in keys.items():
        a = read(split, table).drop("drop").sort(key)
        b = read(whole, table).drop("drop").sort(key)
        assert a.equals(b), table
    latest = read(split, "sort_yield").sort("test_ts").group_by("wafer_id").last()
    a = latest.select("wafer_id", "dies_total", "dies_good").sort("wafer_id")
    b = read(whole, "sort_yield").select("wafer_id", "dies_total", "dies_good").sort("wafer_id")
    assert a.equals(b)


# ---- formats and layout -------------------------------------------------------------------


def test_csv_and_gzipped_csv_carry_the_same_data_as_parquet(tmp_path):
    base = simulate_fab(tmp_path / "pq", FabConfig(lots=30), seed=8)
    for fmt in ("csv", "csv.gz"):
        other = simulate_fab(tmp_path / fmt.replace(".", "_"), FabConfig(lots=30, fmt=fmt), seed=8)
        assert other.planted == base.planted
        for table in SCHEMAS:
            a, b = read(base, table), read(other, table)
            assert a.columns == b.columns, (fmt, table)
            for col in a.columns:
                if a[col].dtype == pl.Float64:
                    assert np.allclose(a[col].to_numpy(), b[col].to_numpy(), rtol=0, atol=1e-9)
                else:
                    assert a[col].cast(pl.String).equals(b[col].cast(pl.String)), (fmt, table, col)
    raw = (
        gzip.open(tmp_path / "csv_gz" / "drop_001" / "step_history.csv.gz", "rt")
        .read()
        .splitlines()
    )
    assert raw[0] == ",".join(f.name for f in SCHEMAS["step_history"])
    fields = raw[1].split(",")
    assert "T" in fields[7] and len(fields[7]) == 19  # ISO-8601, 2026-01-05T14:40:31
    assert any(line.split(",")[5] == "" for line in raw[1:])  # single-chamber tools: empty field


def test_large_tables_are_written_as_split_folders(tmp_path):
    truth = simulate_fab(tmp_path / "s", FabConfig(lots=50, chunk_lots=20), seed=1)
    parts = sorted((truth.drop_dirs[0] / "step_history").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-000.parquet", "part-001.parquet", "part-002.parquet"]
    assert read(truth, "step_history").height == truth.step_rows
    assert (truth.drop_dirs[0] / "wafers.parquet").is_file()


def test_wafers_per_lot_may_vary_with_unique_slots(tmp_path):
    truth = simulate_fab(tmp_path / "s", FabConfig(lots=60, wafers_per_lot=(18, 25)), seed=6)
    wafers = read(truth, "wafers")
    counts = wafers.group_by("lot_id").len()["len"]
    assert counts.min() >= 18 and counts.max() <= 25 and counts.n_unique() > 1
    assert wafers.select("lot_id", "slot").is_unique().all() and wafers["slot"].max() <= 25


def test_a_longer_route_gives_about_fifty_operations(tmp_path):
    from flows.fabsim.catalogue import LAYER_ORDER

    truth = simulate_fab(
        tmp_path / "s", FabConfig(lots=4, layers=LAYER_ORDER, ops_per_layer=(4, 5)), seed=1
    )
    assert len(truth.layers) == 12 and 48 <= len(truth.route) <= 60


# ---- arguments and the command line ------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lots": 0}, "lots must be at least 1"),
        ({"fmt": "xlsx"}, "fmt must be one of"),
        ({"n_drops": 0}, "n_drops must be at least 1"),
        ({"wafers_per_lot": 30}, "wafers_per_lot must lie in 1..25"),
        ({"layers": ["STI", "NOPE"]}, "unknown layers ['NOPE']"),
        ({"sort_die_fraction": 2.0}, "sort_die_fraction must lie in [0, 1]"),
    ],
)
def test_bad_arguments_are_refused_with_a_clear_message(tmp_path, kwargs, message):
    with pytest.raises(ValueError) as err:
        simulate_fab(tmp_path / "s", FabConfig(**{"lots": 10, **kwargs}))
    assert message in str(err.value)


def test_an_old_simulation_is_replaced_but_foreign_files_are_kept(tmp_path):
    simulate_fab(tmp_path / "s", FabConfig(lots=10, n_drops=3), seed=1)
    again = simulate_fab(tmp_path / "s", FabConfig(lots=10), seed=2)
    assert sorted(p.name for p in (tmp_path / "s").iterdir()) == ["drop_001", "truth.json"]
    assert SimulationTruth.load(tmp_path / "s").seed == again.seed == 2
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "precious.csv").write_text("x\n")
    with pytest.raises(FileExistsError, match="does not hold a previous simulation"):
        simulate_fab(tmp_path / "data", FabConfig(lots=10))
    assert (tmp_path / "data" / "precious.csv").read_text() == "x\n"


def test_the_simulate_command(tmp_path):
    runner = CliRunner()
    done = runner.invoke(
        app, ["simulate", str(tmp_path / "s"), "--lots", "20", "--seed", "4", "--drops", "2"]
    )
    assert done.exit_code == 0, done.output
    truth = SimulationTruth.load(tmp_path / "s")
    assert truth.lots == 20 and len(truth.drops) == 2 and not truth.null
    assert f"planted tool in {truth.effect('tool').layer}" in done.output
    done = runner.invoke(
        app, ["simulate", str(tmp_path / "n"), "--lots", "20", "--null", "--format", "csv"]
    )
    assert done.exit_code == 0, done.output
    null = SimulationTruth.load(tmp_path / "n")
    assert null.null and null.planted == [] and null.format == "csv"
    done = runner.invoke(app, ["simulate", str(tmp_path / "x"), "--format", "xlsx"])
    assert done.exit_code == 2 and "fmt must be one of" in done.output
