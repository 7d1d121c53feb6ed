"""The process side on simulated fabs: noisy chambers, metrology chains, and their pure parts."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from scipy import special, stats

from flows.analysis.frames import MEAS, layer_frames
from flows.analysis.layers import yield_design
from flows.analysis.process import (
    _fit_process,
    _level_df,
    _site_frame,
    chain_yield_cost,
    dispersion_levels,
    estimate_chain,
    metrology_chains,
    process_models,
    typical_weights,
)
from flows.analysis.ranking import holm_adjust
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.ingest import ingest_drop
from tests.flows.analysis.fab_truth import true_tool_levels

ALPHA = 0.05


def _fab(where: Path, config: FabConfig, seed: int):
    truth = simulate_fab(where / "drops", config, seed=seed)
    db = where / "fab.duckdb"
    for drop in truth.drop_dirs:
        assert ingest_drop(drop, db, gx=False).status == "merged"
    return truth, layer_frames(db)


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    """A 100-lot fab with the default planted effects."""
    return _fab(tmp_path_factory.mktemp("fab"), FabConfig(lots=100), seed=3)


def _sorted_rows(frame) -> pl.DataFrame:
    return pl.from_arrow(frame).filter(pl.col("dies_total") > 0)


def _harmful_sign(planted) -> int:
    # the sign the yield model's coefficient gives: larger values cost yield when the planted
    # slope and shift have opposite signs
    return 1 if planted.size_logit * planted.param_shift < 0 else -1


def _true_contrast(est, levels: dict[str, float]) -> float:
    c = -est.typical
    c[est.worst] += 1.0
    return float(c @ np.array([levels[lv] for lv in est.levels]))


# --------------------------------------------------------------------------- pure parts


def test_typical_weights_follow_the_rankings_yardstick():
    assert typical_weights(np.array([0.3, 0.1])).tolist() == [1.0, 0.0]  # of two, the larger
    assert typical_weights(np.array([0.3, 0.1, 0.2])).tolist() == [0.0, 0.0, 1.0]
    w = typical_weights(np.array([0.4, 0.1, 0.2, 0.3]))
    assert w.tolist() == [0.0, 0.0, 0.5, 0.5]  # the median of four: the two middle ones
    assert typical_weights(np.array([])).tolist() == []


def test_dispersion_levels_contrast_each_level_with_the_pooled_others():
    log_phi = {"A": 0.0, "B": 0.1, "C": 1.4, "D": -0.1}
    dof = {"A": 200.0, "B": 100.0, "C": 50.0, "D": 1.0}  # D too few df to be tested
    table = dispersion_levels(log_phi, dof)
    assert not table.at["D", "tested"] and math.isnan(table.at["D", "p_value"])
    # C against A and B pooled with weights df / 2
    pooled = (200 * 0.0 + 100 * 0.1) / 300
    assert table.at["C", "contrast"] == pytest.approx(1.4 - pooled)
    assert table.at["C", "se"] == pytest.approx(math.sqrt(2 / 50 + 2 / 300))
    tested = table[table["tested"]]
    assert tested["p_holm"].tolist() == pytest.approx(holm_adjust(tested["p_raw"].tolist()))
    z = table.at["C", "contrast"] / table.at["C", "se"]
    assert table.at["C", "p_raw"] == pytest.approx(stats.norm.sf(z))  # one-sided
    assert table.at["C", "p_value"] == table.at["C", "p_holm"] < 1e-6
    assert table.at["A", "p_raw"] > 0.5  # quieter than the pooled others
    # the estimate is against the typical level: the median of A, B, C, D
    assert table.at["C", "log_phi_ratio"] == pytest.approx(1.4 - 0.05)


def test_of_two_levels_the_quieter_is_typical():
    table = dispersion_levels({"A": 0.2, "B": 1.0}, {"A": 80.0, "B": 80.0})
    assert table.at["B", "log_phi_ratio"] == pytest.approx(0.8)
    assert table.at["A", "log_phi_ratio"] == 0.0
    # two levels: each one's contrast is the other's with the sign turned
    assert table.at["A", "contrast"] == pytest.approx(-table.at["B", "contrast"])
    assert table.at["A", "p_raw"] == pytest.approx(1 - table.at["B", "p_raw"])


def test_chain_yield_cost_is_the_gain_from_removing_the_shift():
    rng = np.random.default_rng(0)
    eta = rng.normal(2.0, 0.5, size=400)
    mask = np.arange(400) < 100
    cost = chain_yield_cost(-0.2, 1.5, eta, mask)
    expected = 100 * np.mean(special.expit(eta + 0.3 * mask) - special.expit(eta))
    assert cost == pytest.approx(expected) and cost > 0
    # over the tool's wafers: the same gain spread over 100 wafers instead of 400
    on_wafers = chain_yield_cost(-0.2, 1.5, eta, mask, on_its_wafers=True)
    assert on_wafers == pytest.approx(4 * cost)
    assert chain_yield_cost(-0.2, 0.0, eta, mask) == 0.0
    assert chain_yield_cost(0.2, 1.5, eta, mask) < 0  # a shift toward better yield
    with pytest.raises(ValueError, match="on_tool_mask"):
        chain_yield_cost(-0.2, 1.5, eta, mask[:10])


# --------------------------------------------------------------------------- on a fab


def test_the_level_variance_is_the_engines(fab):
    """Var(log phi of a level) = 2 / sum(1 - q) over its rows: the engine's Hessian SE of the
    reference level's log phi (the dispersion model's intercept) agrees."""
    truth, frames = fab
    noisy = truth.effect("dispersion")
    sites = _site_frame(pl.from_arrow(frames[noisy.layer]), noisy.operation, noisy.param)
    data = sites.to_pandas()
    formula = "value ~ 1 + (1|lot_id) + (1|wafer_id) + (1|tool) + (1|chamber)"
    res = _fit_process(formula, data, "gaussian", "~ chamber", "HL(1,1)")
    first = sorted(data["chamber"].unique())[0]
    dof = _level_df(res.leverages, data["chamber"].to_numpy())[first]
    se_engine = float(res.disp_coef["se"].iloc[0])
    assert math.sqrt(2 / dof) == pytest.approx(se_engine, rel=0.05)


def test_the_noisy_chamber_is_found_at_100_lots(fab):
    truth, frames = fab
    noisy = truth.effect("dispersion")
    summaries, findings = process_models(noisy.layer, frames[noisy.layer], lrt=True)
    hit = [
        f
        for f in findings
        if (f.operation, f.tool_id, f.chamber_id, f.param)
        == (noisy.operation, noisy.tool_id, noisy.chamber_id, noisy.param)
    ]
    assert len(hit) == 1
    f = hit[0]
    assert f.effect == "dispersion" and math.isnan(f.yield_impact)
    assert f.p_value < 1e-6
    # SD x2 is phi x4: log 4 = 1.39 against the typical chamber
    assert abs(f.estimate - math.log(noisy.sd_ratio**2)) < 0.5
    summary = next(s for s in summaries if s["param"] == noisy.param)
    disp = summary["dispersion"]
    assert disp["by"] == "chamber" and disp["lrt_p_value"] < 1e-3 and disp["lrt_df"] >= 1
    assert summary["formula"].startswith("value ~ site + ")  # the site pattern out of phi
    assert summary["method"] == "EQL"


def test_the_chain_sigma_is_the_yield_models_scale(fab):
    truth, frames = fab
    met = truth.effect("metrology")
    frame = frames[met.layer]
    cause = metrology_chains(frame)[(met.operation, met.param)]
    assert cause["shift_sigma"] * cause["sigma"] == pytest.approx(cause["shift"])
    assert cause["shift_low"] < cause["shift"] < cause["shift_high"]
    # the yield model's standardised column: (x - median) / sd on the measured wafers
    design = yield_design(frame)
    name = next(n for n, where in design.metrology.items() if where == (met.operation, met.param))
    rows = _sorted_rows(frame)
    x = rows.get_column(f"{MEAS}{met.operation}::{met.param}").to_numpy()
    z = design.data[name].to_numpy()
    measured = ~np.isnan(x.astype(float))
    slope, _ = np.polyfit(x[measured], z[measured], 1)
    assert 1 / slope == pytest.approx(cause["sigma"], rel=1e-9)


def test_the_planted_metrology_shift_is_recovered_at_100_lots(fab):
    truth, frames = fab
    met = truth.effect("metrology")
    rows = _sorted_rows(frames[met.layer])
    est = estimate_chain(rows, met.operation, met.param, _harmful_sign(met))
    assert est is not None and est.levels[est.worst] == met.tool_id
    true_shift = _true_contrast(est, true_tool_levels(3, FabConfig(lots=100), met.param))
    cause = est.cause()
    assert cause["shift_low"] <= true_shift <= cause["shift_high"]
    assert cause["shift_sigma"] > 0.5


# --------------------------------------------------------------------------- on several fabs


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_noisy_chamber_and_the_chain_at_300_lots(tmp_path, seed):
    """The planted x2 noisy chamber at p < 0.05 after Holm over every dispersion finding of
    the fab; the planted tool named by the chain, its interval covering the true shift (the
    planted 1.5 unit SDs plus the simulator's background tool offsets, `fab_truth`)."""
    config = FabConfig(lots=300)
    truth, frames = _fab(tmp_path, config, seed)
    noisy = truth.effect("dispersion")
    findings = [f for layer, frame in frames.items() for f in process_models(layer, frame)[1]]
    adjusted = holm_adjust([f.p_value for f in findings])
    found = [
        p
        for f, p in zip(findings, adjusted, strict=True)
        if (f.operation, f.tool_id, f.chamber_id, f.param)
        == (noisy.operation, noisy.tool_id, noisy.chamber_id, noisy.param)
    ]
    assert found and found[0] < ALPHA
    met = truth.effect("metrology")
    est = estimate_chain(
        _sorted_rows(frames[met.layer]), met.operation, met.param, _harmful_sign(met)
    )
    assert est is not None and est.levels[est.worst] == met.tool_id
    true_shift = _true_contrast(est, true_tool_levels(seed, config, met.param))
    cause = est.cause()
    assert cause["shift_low"] <= true_shift <= cause["shift_high"]


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_null_fab_has_no_noisy_chamber(tmp_path, seed):
    _, frames = _fab(tmp_path, FabConfig(lots=100, planted=None), seed)
    findings = [f for layer, frame in frames.items() for f in process_models(layer, frame)[1]]
    assert findings  # one per parameter with a modelled phi
    assert min(holm_adjust([f.p_value for f in findings])) >= ALPHA
