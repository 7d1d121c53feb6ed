"""The validation harness's pieces (fast): which fabs it runs, how it scores one, its table.

The full validation runs in `make validate`; three planted and three null 300-lot fabs run
through it in tests/flows/test_analysis_validation.py (slow). Here the scoring is checked on
hand-built analysis results against a simulated truth, with findings that have the fields the
issue-14 analysis adds (a subclass of today's `Finding`) and without them ("n/a").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest

from flows.analysis.power_study import (
    SeedOutcome,
    criteria_table,
    fab_config,
    plan_jobs,
    run_jobs,
    score,
)
from flows.analysis.results import AnalysisResult, Finding, LayerRanking
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab

NewFinding = Finding  # the issue-14 interface: p_adjusted, material, cause


@dataclass(frozen=True)
class OldFinding:
    """A finding as an analysis before issue 14 wrote it (no p_adjusted, material, cause)."""

    layer: str
    effect: str
    estimate: float
    yield_impact: float
    ci_low: float
    ci_high: float
    p_value: float | None
    operation: str | None = None
    tool_id: str | None = None
    chamber_id: str | None = None
    param: str | None = None


def test_the_fabs_of_a_run_and_their_seeds():
    jobs = plan_jobs((48, 300), seeds=2, null_seeds=2, exact_seeds=1, corr_seeds=2, corr_lots=300)
    assert len(jobs) == 2 * (2 + 2 + 1) + 2
    assert {(k, s) for k, s, n in jobs if n == 48} == {
        ("planted", 2001), ("planted", 2002), ("null", 3001), ("null", 3002), ("exact", 5001)
    }  # fmt: skip
    assert [(k, s, n) for k, s, n in jobs if k == "corr"] == [
        ("corr", 4001, 300),
        ("corr", 4002, 300),
    ]
    # interleaved: the first round already holds every kind
    assert {k for k, _, _ in jobs[:7]} == {"planted", "null", "exact", "corr"}
    assert len(set(jobs)) == len(jobs)


def test_each_kind_of_fab_has_its_options():
    assert fab_config("planted", 48) == FabConfig(lots=48)
    assert fab_config("null", 48).planted is None
    assert fab_config("null", 48).equipment_sd == FabConfig().equipment_sd != (0.0, 0.0)
    assert fab_config("exact", 48).equipment_sd == (0.0, 0.0)
    assert fab_config("corr", 300).correlated_dispatch == 0.8


@pytest.fixture(scope="module")
def truth(tmp_path_factory):
    return simulate_fab(
        tmp_path_factory.mktemp("t") / "s", FabConfig(lots=60, correlated_dispatch=0.8), seed=3
    )


def _found_at(truth, kind: str, cls=Finding, **extra) -> Finding:
    e = truth.effect(kind)
    return cls(
        layer=e.layer,
        effect=kind,
        estimate=-0.3,
        yield_impact=e.loss or 0.0,
        ci_low=(e.loss or 0.0) - 0.1,
        ci_high=(e.loss or 0.0) + 0.1,
        p_value=0.001,
        operation=e.operation,
        tool_id=e.tool_id,
        chamber_id=e.chamber_id,
        param=e.param,
        **extra,
    )


def _result(truth, findings: list[Finding], layer_ci=(0.0, 0.5)) -> AnalysisResult:
    ranking = [
        LayerRanking(layer, i + 1, 0.2, layer_ci[0], layer_ci[1], 0.5, None)
        for i, layer in enumerate(truth.layers)
    ]
    return AnalysisResult("r", "now", ranking, findings, [])


def test_a_planted_fab_is_scored_on_the_new_fields(truth):
    e = truth.effect("metrology")
    cause = {
        "tool_id": e.tool_id,
        "shift_low": e.param_shift_vs_typical - 0.1,
        "shift_high": e.param_shift_vs_typical + 0.1,
    }
    sh = truth.shadow
    shadow = NewFinding(
        sh["layer"], "tool", -0.2, 0.3, 0.1, 0.5, 0.01, sh["operation"], sh["tool_id"],
        p_adjusted=0.01,
    )  # fmt: skip
    findings = [
        _found_at(truth, "tool", NewFinding, p_adjusted=0.001),
        shadow,
        _found_at(truth, "chamber", NewFinding, p_adjusted=0.2),  # not significant
        _found_at(truth, "metrology", NewFinding, p_adjusted=0.01, cause=cause),
        _found_at(truth, "dispersion", NewFinding, p_adjusted=None),  # raw p 0.001 counts
    ]
    out = SeedOutcome("corr", truth.seed, truth.lots, 1.0)
    score(_result(truth, findings), truth, out)
    assert out.found == {"tool": True, "chamber": False, "chain": True, "noisy": True}
    assert out.finding_covers == {"tool": True, "chamber": True, "metrology": True}
    assert out.source_first is True
    # the shadow listed first: the source no longer outranks it
    swapped = [findings[1], findings[0], *findings[2:]]
    out = SeedOutcome("corr", truth.seed, truth.lots, 1.0)
    score(_result(truth, swapped), truth, out)
    assert out.source_first is False
    # a cause naming another tool, or an interval missing the true shift, is no chain
    for wrong in ({**cause, "tool_id": "XX99"}, {**cause, "shift_low": cause["shift_high"]}):
        findings[3] = _found_at(truth, "metrology", NewFinding, p_adjusted=0.01, cause=wrong)
        out = SeedOutcome("planted", truth.seed, truth.lots, 1.0)
        score(_result(truth, findings), truth, out)
        assert out.found["chain"] is False


def test_todays_findings_give_na_where_a_field_is_missing(truth):
    findings = [
        _found_at(truth, k, OldFinding) for k in ("tool", "chamber", "metrology", "dispersion")
    ]
    out = SeedOutcome("planted", truth.seed, truth.lots, 1.0)
    score(_result(truth, findings, layer_ci=(0.1, 0.5)), truth, out)
    assert out.found == {"tool": None, "chamber": None, "chain": None, "noisy": True}
    # layers without a planted yield effect whose interval lies above zero
    quiet = len(truth.layers) - len(out.layer_covers)
    assert (out.quiet_layers, out.quiet_excluding_zero) == (quiet, quiet)
    null = SeedOutcome("null", 1, truth.lots, 1.0)
    score(_result(truth, findings), truth, null)
    assert null.any_material is None and null.any_layer_rejected is False
    assert null.finding_p_values == [0.001] * 4
    null = SeedOutcome("null", 1, truth.lots, 1.0)
    material = [NewFinding(**vars(findings[0]), material=True)]
    score(_result(truth, material), truth, null)
    assert null.any_material is True


def test_the_table_counts_judges_and_says_na():
    rng = np.random.default_rng(0)

    def planted(i: int, lots: int) -> SeedOutcome:
        return SeedOutcome(
            "planted", i, lots, 10.0,
            found={"tool": i != 0, "chamber": None, "noisy": True, "chain": None},
            oracle_tool_p=0.01,
            finding_covers={"tool": True, "chamber": i % 10 != 0, "metrology": True},
            layer_covers={"A": True, "B": True, "C": True},
            quiet_layers=5, quiet_excluding_zero=int(i == 3),
        )  # fmt: skip

    outcomes = [planted(i, 300) for i in range(20)] + [planted(i, 48) for i in range(20)]
    outcomes += [
        SeedOutcome("null", i, 300, 5.0, any_material=i < 2, any_layer_rejected=False)
        for i in range(20)
    ]
    outcomes += [
        SeedOutcome(
            "exact",
            1,
            300,
            5.0,
            finding_p_values=list(rng.uniform(size=400)),
            quiet_layers=8,
            quiet_excluding_zero=1,
        ),
        SeedOutcome("exact", 1, 48, 5.0, finding_p_values=list(rng.uniform(size=400) ** 2)),
    ]
    outcomes += [SeedOutcome("corr", i, 300, 5.0, source_first=i > 0) for i in range(20)]
    outcomes.append(SeedOutcome("null", 99, 300, 1.0, any_material=True, failed=True))
    table = criteria_table(outcomes, (48, 300))
    rows = {line[:50].strip(): line for line in table.splitlines()}
    tool = rows["planted tool found (adj. p < 0.05)"]
    assert "19/20" in tool and tool.endswith("PASS")
    assert rows["planted chamber found (adj. p < 0.05)"].endswith("n/a")
    # 58 of 60 findings' intervals per size: 96.7 %, inside 90-98 %
    assert "58/60 97%" in rows["planted findings' 95% intervals cover truth"]
    assert rows["planted findings' 95% intervals cover truth"].endswith("PASS")
    assert rows["planted layers' 95% intervals cover truth"].endswith("FAIL")  # 100 %
    assert "2/20" in rows["null fabs with a material finding"]
    assert rows["null fabs with a material finding"].endswith("FAIL")
    # the criterion counts exact-null fabs only (1 of 8: 12 % > 7 %); the planted fabs' 100
    # layers without a planted effect, whose true loss is not zero, are informational
    assert "1/8 12%" in rows["exact-null layers: interval excludes 0"]
    assert rows["exact-null layers: interval excludes 0"].endswith("FAIL")
    (info,) = [line for line in table.splitlines() if "small real differences" in line]
    assert "1/100 1%" in info
    ks = rows["exact null: finding p-values uniform (KS p)"]
    assert ks.endswith("FAIL") and "n=400" in ks  # the squared uniforms are not uniform
    assert rows["correlated dispatch (80%): source before shadow"].endswith("PASS")
    # a fab that failed to run is named, not scored
    assert table.endswith("FAILED to run, not scored: 1 fabs: null 300 lots seed 99")


def test_a_fab_that_cannot_run_is_reported_and_the_run_goes_on(tmp_path):
    said: list[str] = []
    (o,) = run_jobs([("planted", 1, 0)], tmp_path, n_jobs=1, say=said.append)
    assert o.failed and "lots must be at least 1" in o.detail
    assert said[0].startswith("FAILED planted")


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
