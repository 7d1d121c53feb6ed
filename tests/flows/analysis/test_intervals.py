"""Every interval the analysis writes contains its point estimate, on simulated fabs.

The property over hand-built layers is in test_analysis_ranking; here it is checked on what the
whole analysis (layer fits, chained model, ranking) writes to `subprocess_ranking` and
`findings`, on small simulated fabs, with every wafer and on the sampled path that a year's
layers take (its threshold forced down to a few hundred wafers instead of simulating 25,000).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import replace

import pytest

import flows.analysis.ranking as ranking
from flows.analysis.run import run_analysis
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.ingest import ingest_drop
from tests.flows.conftest import query


@pytest.mark.parametrize(
    ("seed", "planted", "draw_wafers"),
    # fabs where the draws' own percentiles left a finding's point impact outside its interval
    [(4, True, None), (2, True, 300), (6, True, 300), (2, False, 300)],
    ids=["planted-every-wafer", "planted-sampled", "planted-sampled-2", "null-sampled"],
)
def test_every_written_interval_contains_its_estimate(
    tmp_path, monkeypatch, seed, planted, draw_wafers
):
    config = FabConfig(lots=40, layers=("GATE", "M1", "VIA1"))
    truth = simulate_fab(
        tmp_path / "drops", config if planted else replace(config, planted=None), seed=seed
    )
    db = tmp_path / "fab.duckdb"
    for drop in truth.drop_dirs:
        assert ingest_drop(drop, db, gx=False).status == "merged"
    if draw_wafers is not None:
        assert draw_wafers < truth.wafers  # the sampled path is taken
        monkeypatch.setattr(ranking, "DRAW_WAFERS", draw_wafers)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(db, tmp_path / "out", run_id="r", seed=seed)
    rows = query(db, "SELECT layer, yield_impact, ci_low, ci_high FROM subprocess_ranking")
    rows += query(
        db,
        "SELECT layer || ' ' || effect || ' ' || coalesce(tool_id, param, ''), yield_impact, "
        "ci_low, ci_high FROM findings WHERE yield_impact IS NOT NULL",
    )
    ranked = [r for r in rows if r[1] is not None]
    assert len(ranked) >= 3 + 3  # every layer, and findings beside them
    outside = [r for r in ranked if not r[2] <= r[1] <= r[3]]
    assert outside == []
    # zero width only for a level that is its operation's typical one in every draw (the
    # median tool loses nothing by definition, however its mean contrast leans)
    flat = [
        r
        for r in ranked
        if not (math.isfinite(r[3] - r[2]) and (r[3] > r[2] or r[1] == r[2] == r[3] == 0.0))
    ]
    assert flat == []
    assert result.operation_tests, "the operation tests behind the numbers are recorded"
