"""fit_layer / fit_chained on real frames: statuses, reasons, invariants, one planted effect."""

from __future__ import annotations

import pyarrow as pa
import pytest

from flows.analysis.frames import chained_frame, layer_frames
from flows.analysis.layers import fit_chained, fit_layer, yield_design
from flows.analysis.ranking import sort_findings
from flows.fabsim.config import FabConfig, PlantedSizes
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.ingest import ingest_drop


@pytest.fixture(scope="module")
def fab(tmp_path_factory):
    """A 120-lot fab with one strong bad chamber: small enough for a fast test."""
    where = tmp_path_factory.mktemp("fab")
    planted = PlantedSizes(
        bad_tool_logit=0.0,
        bad_chamber_logit=-0.8,
        metrology_logit_per_unit=0.0,
        metrology_shift_units=0.0,
        noisy_chamber_sd_ratio=1.0,
    )
    truth = simulate_fab(
        where / "drops",
        FabConfig(lots=120, planted=planted, layers=("GATE", "M1", "VIA1")),
        seed=11,
    )
    db = where / "fab.duckdb"
    for drop in truth.drop_dirs:
        assert ingest_drop(drop, db, gx=False).status == "merged"
    return truth, layer_frames(db)


def test_too_little_data_is_reported_with_the_reason(fab):
    _, frames = fab
    frame = next(iter(frames.values())).slice(0, 30)
    fit = fit_layer("GATE", frame)
    assert fit.status == "too_little_data"
    assert "30 sorted wafers" in fit.reason
    assert fit.yield_impact is None and fit.p_value_raw is None


def test_an_unreadable_frame_fails_without_raising():
    frame = pa.table({"wafer_id": ["a", "b"], "something": [1, 2]})
    fit = fit_layer("X", frame)
    assert fit.status == "failed"
    assert "model frame" in fit.reason


@pytest.mark.slow
def test_the_planted_chamber_is_found_and_sized(fab):
    truth, frames = fab
    planted = truth.effect("chamber")
    assert planted is not None
    fit = fit_layer(planted.layer, frames[planted.layer], seed=1)
    assert fit.status == "ranked", fit.reason
    top = fit.findings[0]
    assert (top.effect, top.operation, top.tool_id, top.chamber_id) == (
        "chamber",
        planted.operation,
        planted.tool_id,
        planted.chamber_id,
    )
    true_impact = truth.layer_yield_impact[planted.layer]
    assert fit.ci_low <= true_impact <= fit.ci_high
    assert fit.p_value_raw < 1e-3
    # the p-value is the joint likelihood-ratio test: every tool and chamber term of the layer on
    # its boundary, every metrology coefficient a free parameter
    design = yield_design(frames[planted.layer])
    statistic, df, n_boundary, p = fit.diagnostics["lrt"]
    assert n_boundary == len(design.groups)
    assert df == n_boundary + len(design.metrology)
    assert statistic > 0 and p == fit.p_value_raw
    # invariants of the record
    assert fit.ci_low <= fit.yield_impact <= fit.ci_high
    assert fit.findings == sort_findings(fit.findings)
    levels = {r.level for r in fit.ranef if r.term == f"tool:{planted.operation}"}
    assert planted.tool_id in levels
    assert 0 <= fit.variance_share <= 1


@pytest.mark.slow
def test_a_layer_without_planted_effects_is_not_significant(fab):
    truth, frames = fab
    planted = truth.effect("chamber")
    other = next(layer for layer in frames if layer != planted.layer)
    fit = fit_layer(other, frames[other], seed=1)
    assert fit.status == "ranked", fit.reason
    assert fit.p_value_raw > 0.01
    assert abs(fit.yield_impact) < 0.5


def test_metrology_enters_standardised_with_lot_means_for_unmeasured_wafers(fab):
    _, frames = fab
    design = yield_design(frames["GATE"])
    for name in design.metrology:
        z = design.data[name]
        assert z.notna().all()
        assert abs(float(z.median())) < 0.5


@pytest.mark.slow
def test_chained_model_reports_every_layer(fab):
    _, frames = fab
    chained = fit_chained(chained_frame(frames), seed=1)
    assert chained.status == "ranked", chained.reason
    assert set(chained.layer_effects) == set(frames)
    for e in chained.layer_effects.values():
        assert e["ci_low"] <= e["yield_impact"] <= e["ci_high"]


@pytest.mark.slow
def test_a_layer_whose_test_cannot_be_computed_is_reported_unranked(fab, monkeypatch):
    # hglm.lrt refuses fits that did not reach their maximum; such a layer has no p-value
    # and must say why instead of being ranked.
    from flows.analysis import layers

    def refuse(smaller, larger):
        raise ValueError("the fit did not converge; its likelihood cannot be tested")

    monkeypatch.setattr(layers.hglm, "lrt", refuse)
    _, frames = fab
    fit = fit_layer("GATE", frames["GATE"], seed=1)
    assert fit.status == "not_converged"
    assert "likelihood-ratio test" in fit.reason and "cannot be tested" in fit.reason
    assert fit.p_value_raw is None and fit.yield_impact is None
