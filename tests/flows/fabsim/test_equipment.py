"""Small real equipment differences, correlated dispatch and the true losses in truth.json.

The offsets are checked in three ways: their spread over many tools (a statistical tolerance),
their arrival in the sort results (the yield logit moves with the offsets a wafer's tools carry,
read back from the drops), and their own random stream (switching them off changes the sort
results and nothing else).
"""

from __future__ import annotations

import inspect
import json
from dataclasses import replace

import duckdb
import numpy as np
import pytest
from scipy import stats

from flows.cli import simulate_command
from flows.fabsim.catalogue import CATALOGUE
from flows.fabsim.config import DEFAULT_PLANTED, FabConfig
from flows.fabsim.equipment import _typical, draw_equipment
from flows.fabsim.route import build_route
from flows.fabsim.simulation import _stream, simulate_fab
from flows.fabsim.truth import SimulationTruth


def _table(truth: SimulationTruth, table: str) -> duckdb.DuckDBPyRelation:
    con = duckdb.connect()
    return con.sql(f"SELECT * FROM read_parquet('{truth.drop_dirs[0]}/{table}*')")


def _first_pass(truth: SimulationTruth) -> dict[str, np.ndarray]:
    """wafer_id, operation, tool_id, chamber_id of each wafer's first pass per operation."""
    con = duckdb.connect()
    src = truth.drop_dirs[0] / "step_history"
    path = f"{src}/part-*.parquet" if src.is_dir() else f"{src}.parquet"
    rows = con.sql(
        f"""
        SELECT wafer_id, operation, arg_min(tool_id, step_seq) AS tool_id,
               arg_min(chamber_id, step_seq) AS chamber_id
        FROM read_parquet('{path}') GROUP BY wafer_id, operation
        """
    ).fetchnumpy()
    return {k: np.asarray(v) for k, v in rows.items()}


# ---- defaults ---------------------------------------------------------------------------------


def test_defaults_are_small_real_differences_and_no_dispatch():
    c = FabConfig()
    assert c.equipment_sd == (0.02, 0.015)
    assert c.correlated_dispatch == 0.0
    assert FabConfig(planted=None).equipment_sd == c.equipment_sd  # the null fab too
    cli = inspect.signature(simulate_command).parameters
    assert cli["equipment_sd"].default == c.equipment_sd
    assert cli["correlated_dispatch"].default == c.correlated_dispatch
    doc = FabConfig.__doc__ or ""
    assert "equipment_sd" in doc and "correlated_dispatch" in doc


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"equipment_sd": (-0.1, 0.0)}, "equipment_sd must be two SDs >= 0"),
        ({"equipment_sd": (0.1,)}, "equipment_sd must be two SDs >= 0"),
        ({"correlated_dispatch": 1.5}, "correlated_dispatch must lie in [0, 1]"),
        ({"correlated_dispatch": 0.8, "planted": None}, "needs a planted bad tool"),
        (
            {"correlated_dispatch": 0.8, "planted": replace(DEFAULT_PLANTED, bad_tool_logit=0)},
            "needs a planted bad tool",
        ),
    ],
)
def test_bad_options_are_refused(kwargs, message):
    with pytest.raises(ValueError) as err:
        FabConfig(**kwargs)
    assert message in str(err.value)


# ---- the offsets --------------------------------------------------------------------------


def test_offsets_have_the_asked_sd_over_many_tools():
    # Every catalogue layer, five seeds: about 900 tools and 1,800 chambers.
    tools, chambers = [], []
    for seed in range(5):
        route = build_route(_stream(seed, "route"), list(CATALOGUE), (5, 5))
        off = draw_equipment(_stream(seed, "equipment"), route, (0.02, 0.015))
        tools.append(off.tool)
        multi = route.tool_chambers > 1
        real = np.arange(4)[None, :] < route.tool_chambers[:, None]
        chambers.append(off.chamber[multi[:, None] & real])
        # no offset for chambers a tool does not have, nor for a single-chamber tool's one
        assert not off.chamber[~(multi[:, None] & real)].any()
    for values, sd in ((np.concatenate(tools), 0.02), (np.concatenate(chambers), 0.015)):
        n = len(values)
        assert n > 800
        # (n) s^2 / sd^2 ~ chi2(n) with a known mean 0: a two-sided 99.9 % band
        q = n * np.mean(values**2) / sd**2
        assert stats.chi2.ppf(0.0005, n) < q < stats.chi2.ppf(0.9995, n)
        assert abs(values.mean()) < 4 * sd / np.sqrt(n)


def test_the_offsets_reach_the_yield(tmp_path):
    # Offsets far larger than the default, so that each wafer's summed offset (read from the
    # drops' step history and truth.json) must explain its yield logit with slope about 1.
    truth = simulate_fab(
        tmp_path / "s", FabConfig(lots=150, planted=None, equipment_sd=(0.3, 0.3)), seed=4
    )
    steps = _first_pass(truth)
    off = truth.equipment_offsets
    key = np.char.add(
        np.char.add(steps["tool_id"].astype(str), ":"), steps["chamber_id"].astype(str)
    )
    per_step = np.array([off["tool"][t] for t in steps["tool_id"]]) + np.array(
        [off["chamber"].get(k, 0.0) for k in key]
    )
    wafers, index = np.unique(steps["wafer_id"], return_inverse=True)
    summed = np.bincount(index, weights=per_step)
    y = _table(truth, "sort_yield").fetchnumpy()
    order = {w: i for i, w in enumerate(wafers)}
    x = np.array([summed[order[w]] for w in y["wafer_id"]])
    logit = np.log((y["dies_good"] + 0.5) / (y["dies_total"] - y["dies_good"] + 0.5))
    fit = stats.linregress(x, logit)
    # lot (0.35) and wafer (0.25) variation stay in the residual: a 5-SE band
    assert abs(fit.slope - 1.0) < 5 * fit.stderr
    assert fit.slope > 0.7


def test_exact_null_gives_zeros_and_changes_only_the_sort_results(tmp_path):
    exact = simulate_fab(
        tmp_path / "exact", FabConfig(lots=40, planted=None, equipment_sd=(0.0, 0.0)), seed=8
    )
    real = simulate_fab(tmp_path / "real", FabConfig(lots=40, planted=None), seed=8)
    assert exact.equipment_sd == [0.0, 0.0]
    assert set(exact.equipment_offsets["tool"].values()) == {0.0}
    assert set(exact.equipment_offsets["chamber"].values()) == {0.0}
    assert exact.equipment_offsets["tool"].keys() == real.equipment_offsets["tool"].keys()
    assert np.std(list(real.equipment_offsets["tool"].values())) > 0.005
    for table in ("lots", "wafers", "step_history", "inline_meas"):
        a = _table(exact, table).order(_table(exact, table).columns[0]).fetchall()
        b = _table(real, table).order(_table(real, table).columns[0]).fetchall()
        assert sorted(a) == sorted(b), table
    good_exact = _table(exact, "sort_yield").order("wafer_id").fetchnumpy()["dies_good"]
    good_real = _table(real, "sort_yield").order("wafer_id").fetchnumpy()["dies_good"]
    assert len(good_exact) == len(good_real) and (good_exact != good_real).any()


# ---- correlated dispatch --------------------------------------------------------------------


@pytest.fixture(scope="module")
def dispatched(tmp_path_factory) -> SimulationTruth:
    return simulate_fab(
        tmp_path_factory.mktemp("dispatch") / "s",
        FabConfig(lots=1000, correlated_dispatch=0.8),
        seed=21,
    )


def test_correlated_dispatch_routes_the_asked_share_to_the_shadow(dispatched):
    sh = dispatched.shadow
    tool = dispatched.effect("tool")
    assert sh["source_operation"] == tool.operation and sh["source_tool_id"] == tool.tool_id
    planted_layers = {e.layer for e in dispatched.planted if e.effect != "dispersion"}
    assert sh["layer"] not in planted_layers
    steps = _first_pass(dispatched)
    lots = dict(_table(dispatched, "wafers").select("wafer_id, lot_id").fetchall())

    def lots_on(operation: str, tool_id: str) -> set[str]:
        hit = (steps["operation"] == operation) & (steps["tool_id"] == tool_id)
        return {lots[w] for w in steps["wafer_id"][hit]}

    source = lots_on(tool.operation, tool.tool_id)
    shadow = lots_on(sh["operation"], sh["tool_id"])
    assert (len(source), len(shadow), len(source & shadow)) == (
        sh["source_lots"],
        sh["shadow_lots"],
        sh["shared_lots"],
    )
    # A source lot moves with probability p, else keeps its own draw, which is the shadow with
    # the share q the shadow has among the other lots: expected share p + (1 - p) q.
    q = len(shadow - source) / (dispatched.lots - len(source))
    expected = 0.8 + 0.2 * q
    share = len(source & shadow) / len(source)
    se = np.sqrt(expected * (1 - expected) / len(source))
    assert abs(share - expected) < 4 * se
    assert sh["overlap"] == pytest.approx(len(source & shadow) / min(len(source), len(shadow)))


def test_dispatch_changes_only_the_routing_of_the_bad_tools_lots(dispatched, tmp_path):
    plain = simulate_fab(tmp_path / "plain", FabConfig(lots=1000), seed=21)
    assert plain.shadow is None
    assert [e.tool_id for e in plain.planted] == [e.tool_id for e in dispatched.planted]
    assert plain.equipment_offsets == dispatched.equipment_offsets


# ---- truth.json --------------------------------------------------------------------------


def test_truth_json_round_trips_with_offsets_shadow_and_losses(dispatched):
    again = SimulationTruth.load(dispatched.out_dir)
    assert again == dispatched
    raw = json.loads((dispatched.out_dir / "truth.json").read_text())
    assert raw["shadow"]["tool_id"] == dispatched.shadow["tool_id"]
    for e in dispatched.planted:
        if e.effect == "dispersion":
            assert e.loss is None
        else:
            assert 0 < e.loss < e.loss_on_wafers
    assert sum(dispatched.layer_loss.values()) == pytest.approx(
        sum(e.loss for e in dispatched.planted if e.loss is not None)
    )


def test_a_truth_json_without_the_new_keys_still_loads(dispatched, tmp_path):
    raw = json.loads((dispatched.out_dir / "truth.json").read_text())
    for key in ("equipment_sd", "equipment_offsets", "shadow", "layer_loss"):
        raw.pop(key)
    for e in raw["planted"]:
        for key in ("loss", "loss_on_wafers", "param_shift_vs_typical"):
            e.pop(key)
    (tmp_path / "truth.json").write_text(json.dumps(raw))
    old = SimulationTruth.load(tmp_path)
    assert old.shadow is None and old.layer_loss == {} and old.planted[0].loss is None


# ---- the true losses ------------------------------------------------------------------------


def test_without_equipment_differences_a_tool_or_chamber_loss_is_its_planted_impact(tmp_path):
    # The planted level is then the only one off zero, the typical level is zero, and the loss
    # is the yield gained by removing the planted term, which truth.json already reports.
    truth = simulate_fab(tmp_path / "s", FabConfig(lots=200, equipment_sd=(0.0, 0.0)), seed=6)
    for kind in ("tool", "chamber"):
        e = truth.effect(kind)
        assert e.loss == pytest.approx(e.yield_impact, rel=1e-9)
        assert e.loss_on_wafers == pytest.approx(e.yield_impact_affected, rel=1e-9)
    real = simulate_fab(tmp_path / "r", FabConfig(lots=200), seed=6)
    for kind in ("tool", "chamber"):
        # the small differences move the level and the typical one (a few hundredths of a
        # logit against the planted 0.3-0.4): a little, not much
        e = real.effect(kind)
        assert e.loss == pytest.approx(e.yield_impact, rel=0.25)
        assert e.loss != pytest.approx(e.yield_impact, rel=1e-6)


def test_the_metrology_shift_against_the_typical_tool_is_seen_in_the_measurements(tmp_path):
    truth = simulate_fab(tmp_path / "s", FabConfig(lots=300), seed=12)
    e = truth.effect("metrology")
    steps = _first_pass(truth)
    at_op = steps["operation"] == e.operation
    tool_of = dict(zip(steps["wafer_id"][at_op], steps["tool_id"][at_op], strict=True))
    meas = (
        _table(truth, "inline_meas")
        .filter(f"param = '{e.param}'")
        .aggregate("wafer_id, avg(value) AS v")
        .fetchnumpy()
    )
    tools = np.array([tool_of[w] for w in meas["wafer_id"]])
    means = {t: meas["v"][tools == t].mean() for t in np.unique(tools)}
    typical = _typical(np.array(list(means.values())), better_high=e.size_logit > 0)
    seen = means[e.tool_id] - typical
    # lot-to-lot variation of the parameter (0.5 unit_sd) over some 30 measured lots per tool
    assert seen == pytest.approx(e.param_shift_vs_typical, abs=0.35 * e.param_unit_sd)
    assert e.param_shift_vs_typical != pytest.approx(e.param_shift, abs=1e-6)
    assert e.loss > 0


def test_the_simulate_command_takes_both_options(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    args = ["simulate", str(tmp_path / "s"), "--lots", "40", "--seed", "2"]
    args += ["--equipment-sd", "0", "0", "--correlated-dispatch", "0.8"]
    done = CliRunner().invoke(app, args)
    assert done.exit_code == 0, done.output
    truth = SimulationTruth.load(tmp_path / "s")
    assert truth.equipment_sd == [0.0, 0.0] and truth.shadow["probability"] == 0.8
    assert f"shadow: {truth.shadow['operation']} {truth.shadow['tool_id']}" in done.output
    null = ["simulate", str(tmp_path / "n"), "--lots", "20", "--null"]
    done = CliRunner().invoke(app, [*null, "--correlated-dispatch", "0.5"])
    assert done.exit_code == 2 and "needs a planted bad tool" in done.output
