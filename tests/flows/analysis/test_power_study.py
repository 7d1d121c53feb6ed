"""The issue's statistical validation, per seed, on full 300-lot simulated fabs (slow).

`make validate` runs 20 planted and 20 null seeds and prints the table; here 3 of each, each
held to the criteria per seed: planted layers ranks 1-3, planted tool and chamber top of
their layers, every planted layer's interval covering its truth; no null layer significant.
"""

from __future__ import annotations

import pytest

from flows.analysis.power_study import run_seed

LOTS = 300


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_planted_fab(seed, tmp_path):
    o = run_seed(seed, null=False, lots=LOTS, workdir=tmp_path)
    assert o.planted_top3, o.detail
    assert o.top_finding == {"tool": True, "chamber": True}, o.detail
    assert all(o.covered.values()) and len(o.covered) == 3, (o.covered, o.detail)


# Null seed 1002 was a false positive (SPACER, adjusted p = 0.031) while the per-term statistics
# were differences of p_v(h) at EQL estimates, which do not maximise it; with both models fitted by
# HL(1,1) ML and tested by hglm.lrt, its smallest adjusted p is 1.
@pytest.mark.slow
@pytest.mark.parametrize("seed", [1001, 1002, 1003])
def test_null_fab(seed, tmp_path):
    o = run_seed(seed, null=True, lots=LOTS, workdir=tmp_path)
    assert not o.any_rejection, o.detail


def test_oracle_tool_p_is_the_f_test_statsmodels_computes(tmp_path):
    # The oracle is checked against statsmodels' nested-model F test on lot means that DuckDB
    # aggregates here independently of the analysis frames.
    import duckdb
    import numpy as np
    import statsmodels.formula.api as smf

    from flows.analysis.power_study import oracle_tool_p
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab
    from flows.warehouse.ingest import ingest_drop

    truth = simulate_fab(tmp_path / "drops", FabConfig(lots=80), seed=5)
    db = tmp_path / "fab.duckdb"
    for drop in truth.drop_dirs:
        ingest_drop(drop, db, gx=False)
    e = truth.effect("tool")
    with duckdb.connect(str(db), read_only=True) as con:
        lots = con.execute(
            """
            SELECT o.lot_id, any_value(o.product) AS product, any_value(o.tool_id) AS tool,
                   sum(y.dies_good) AS good, sum(y.dies_total) AS total
            FROM core.wafer_yield AS y
            JOIN marts.wafer_operation AS o ON o.wafer_id = y.wafer_id AND o.operation = ?
            GROUP BY o.lot_id
            """,
            [e.operation],
        ).df()
    lots["logit"] = np.log((lots.good + 0.5) / (lots.total - lots.good + 0.5))
    full = smf.ols("logit ~ C(product) + C(tool)", lots).fit()
    base = smf.ols("logit ~ C(product)", lots).fit()
    expected = full.compare_f_test(base)[1]
    assert oracle_tool_p(db, truth) == pytest.approx(expected, rel=1e-8)
    assert 1e-12 < expected < 0.5  # neither end of the scale, so the comparison means something
