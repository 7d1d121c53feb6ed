"""The issue's statistical validation, per seed, on full 300-lot simulated fabs (slow).

`make validate` runs 20 planted and 20 null seeds and prints the table; here 3 of each, each
held to the criteria per seed: planted layers ranks 1-3, planted tool and chamber top of
their layers, every planted layer's interval covering its truth; no null layer significant.
"""

from __future__ import annotations

import pytest

from flows.analysis.validation import run_seed

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
