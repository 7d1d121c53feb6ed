"""The issue-14 validation on three planted and three null 300-lot fabs (slow, ~2 minutes).

`make validate` runs 20 + 20 fabs per size (48, 100, 300 lots), exact nulls and correlated
dispatch, and prints the table; here the harness itself runs (`plan_jobs`, `run_jobs`, two
fabs at a time) on seeds 2001-2003 and 3001-3003, with the small real equipment differences
on, and every criterion that three fabs can judge is held per fab:

- each planted fab: tool and chamber found as significant findings, noisy chamber found,
  metrology chain reported with the shifting tool and a shift interval covering the truth
  (the issue asks >= 18/20 at 300 lots, so three of three is expected);
- each null fab: no material finding (<= 1/20 asked).

Coverage (90-98 %), the share of null intervals excluding zero, p-value uniformity and the
shadow need more fabs than three: they are `make validate`'s. A criterion whose field this
version of the analysis does not have yet (`Finding.p_adjusted`, `.material`, `.cause`) is
not measured: the test says so in a warning and holds the others.
"""

from __future__ import annotations

import warnings

import pytest

from flows.analysis.power_study import criteria_table, plan_jobs, run_jobs

SEEDS = 3
LOTS = 300


@pytest.mark.slow
def test_three_planted_and_three_null_fabs_meet_the_criteria(tmp_path):
    jobs = plan_jobs((LOTS,), SEEDS, SEEDS, exact_seeds=0, corr_seeds=0, corr_lots=LOTS)
    lines: list[str] = []
    outcomes = run_jobs(jobs, tmp_path, n_jobs=2, say=lines.append)
    assert sorted((o.kind, o.seed) for o in outcomes) == sorted((k, s) for k, s, _ in jobs)
    table = criteria_table(outcomes, (LOTS,))
    story = "\n".join([*lines, table])
    not_measured = set()
    for o in (o for o in outcomes if o.kind == "planted"):
        assert set(o.found) == {"tool", "chamber", "noisy", "chain"}, story
        for criterion, ok in o.found.items():
            if ok is None:
                not_measured.add(criterion)
            else:
                assert ok, f"seed {o.seed}: planted {criterion} not found\n{story}"
    for o in (o for o in outcomes if o.kind == "null"):
        if o.any_material is None:
            not_measured.add("material")
        else:
            assert not o.any_material, f"null seed {o.seed} has a material finding\n{story}"
    if not_measured:
        warnings.warn(
            f"not measured, the analysis lacks their fields: {sorted(not_measured)}", stacklevel=1
        )
