"""fit_layer / fit_chained on real frames: statuses, reasons, invariants, one planted effect."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from flows.analysis.frames import chained_frame, layer_frames
from flows.analysis.layers import chained_model, fit_chained, fit_layer, yield_design
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


def test_a_layer_record_carries_its_process_models_not_a_yield_model_of_its_own(fab):
    _, frames = fab
    fit = fit_layer("GATE", frames["GATE"], seed=1)
    assert fit.status == "ranked", fit.reason
    assert fit.process_models and all("param" in p for p in fit.process_models)
    # its yield numbers are filled from the chained model later (findings.apply_to_layers)
    assert fit.yield_impact is None and fit.p_value_raw is None and fit.ranef == []
    assert "chained" in fit.method


def test_metrology_enters_standardised_with_lot_means_for_unmeasured_wafers(fab):
    _, frames = fab
    design = yield_design(frames["GATE"])
    for name in design.metrology:
        z = design.data[name]
        assert z.notna().all()
        assert abs(float(z.median())) < 0.5


@pytest.mark.slow
def test_chained_model_holds_every_layer_and_its_pieces_rebuild_its_predictor(fab):
    _, frames = fab
    chained, pieces = chained_model(chained_frame(frames), seed=1)
    assert chained.status == "ranked", chained.reason
    assert set(pieces.layer_ops) == set(frames)
    ops = {r.operation for r in chained.ranef}
    assert ops <= {op for layer_ops in pieces.layer_ops.values() for op in layer_ops}
    # the offset of no exclusions is X beta-hat plus every tool, chamber and metrology part
    full = pieces.offset(set())
    some_group = next(iter(pieces.groups))
    assert np.allclose(full - pieces.offset({some_group}), pieces.part(some_group))
    assert fit_chained(chained_frame(frames), seed=1).ranef == chained.ranef
