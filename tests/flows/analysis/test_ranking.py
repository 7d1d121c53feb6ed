"""Yield impact, intervals, p-values, ranking and the write-back, on numbers built by hand."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import special
from statsmodels.stats.multitest import multipletests

from flows.analysis.ranking import (
    LayerEffects,
    MetrologyTerm,
    RandomGroup,
    holm_adjust,
    impact_interval,
    rank_layers,
    simulate_impacts,
    sort_findings,
    typical_level,
    write_results,
    yield_impact,
)
from flows.analysis.results import AnalysisResult, Finding, LayerFit, OperationTest


def _group(estimates, index, se=0.0, kind="tool", op="OP"):
    est = np.asarray(estimates, dtype=float)
    return RandomGroup(
        term=f"{kind}_{op}",
        kind=kind,
        operation=op,
        levels=[f"T{i}" for i in range(len(est))],
        index=np.asarray(index),
        estimate=est,
        se=np.full(len(est), se),
    )


def test_typical_level_is_the_median_or_the_better_of_two():
    assert typical_level(np.array([-0.4, 0.1, 0.0])) == 0.0
    assert typical_level(np.array([-0.4, 0.1])) == 0.1
    assert typical_level(np.array([0.3])) == 0.3


def test_one_bad_tool_counts_fully_against_its_healthy_peers():
    rng = np.random.default_rng(1)
    n = 3000
    eta_other = 2.0 + rng.normal(0, 0.4, n)
    index = rng.integers(0, 4, n)
    est = np.array([-0.35, 0.0, 0.0, 0.0])
    eff = LayerEffects(eta_other=eta_other, groups=[_group(est, index)])
    # by hand: the bad tool's wafers brought to the others' level, nothing else moves
    eta = eta_other + est[index]
    expected = 100 * np.mean(special.expit(eta_other) - special.expit(eta))
    assert yield_impact(eff) == pytest.approx(expected, rel=1e-12)
    assert expected > 0.5


def test_healthy_noise_cancels_and_better_tools_count_against():
    n = 4000
    index = np.arange(n) % 5
    eta_other = np.full(n, 2.0)
    # symmetric spread around the median: the gains and losses nearly cancel
    eff = LayerEffects(eta_other=eta_other, groups=[_group([-0.1, -0.05, 0, 0.05, 0.1], index)])
    assert abs(yield_impact(eff)) < 0.02
    # a layer whose tools are all at the median has no impact at all
    flat = LayerEffects(eta_other=eta_other, groups=[_group([0.2] * 5, index)])
    assert yield_impact(flat) == 0.0


def test_metrology_brought_to_its_median():
    n = 1000
    z = np.linspace(-2, 2, n)
    beta = np.array([-0.3])
    eff = LayerEffects(
        eta_other=np.full(n, 1.5),
        metrology=[MetrologyTerm("m_0", "CD", "OP", z)],
        beta_all=beta,
        beta_cov=np.array([[0.0]]),
        beta_index=[0],
    )
    contrib = -0.3 * z
    eta = 1.5 + contrib
    expected = 100 * np.mean(special.expit(1.5 + np.median(contrib)) - special.expit(eta))
    assert yield_impact(eff) == pytest.approx(expected, rel=1e-12)


def test_interval_collapses_without_uncertainty_and_widens_with_it():
    rng = np.random.default_rng(2)
    n = 2000
    index = rng.integers(0, 3, n)
    est = np.array([-0.4, 0.0, 0.05])
    sure = LayerEffects(eta_other=np.full(n, 2.0), groups=[_group(est, index, se=0.0)])
    d = simulate_impacts(sure, n_draws=50, seed=0)
    assert d.layer_interval() == (d.layer, d.layer)
    unsure = LayerEffects(eta_other=np.full(n, 2.0), groups=[_group(est, index, se=0.1)])
    d2 = simulate_impacts(unsure, n_draws=400, seed=0)
    lo2, hi2 = d2.layer_interval()
    assert lo2 < d2.layer < hi2
    # the per-level items add up to the layer (one group, each wafer in one level)
    assert sum(v for _, _, v, _ in d.items) == pytest.approx(d.layer, abs=0.05)


def test_impact_interval_is_the_draws_spread_around_their_median_set_at_the_point():
    draws = np.array([0.0, 1.0, 2.0, 3.0, 10.0])
    lo, hi = impact_interval(5.0, draws, level=0.5)  # quartiles 1 and 3, median 2
    assert (lo, hi) == (4.0, 6.0)
    assert impact_interval(5.0, np.zeros(0)) == pytest.approx((math.nan, math.nan), nan_ok=True)


def _two_tools_that_hardly_differ(n: int = 40_000) -> LayerEffects:
    """A healthy operation of a year: two tools estimated precisely and almost equal."""
    rng = np.random.default_rng(8)
    tools = _group([0.0003, 0.0], rng.integers(0, 2, n), se=0.01)
    return LayerEffects(eta_other=2.0 + rng.normal(0, 0.5, n), groups=[tools])


@pytest.mark.parametrize("draw_wafers", [None, 4_000])
def test_an_impact_at_the_edge_of_its_draws_stays_inside_its_interval(monkeypatch, draw_wafers):
    # The year's WELL: impact 0.004, 95 % of its draws between 0.004 and 0.037. The yardstick of
    # two tools is the better one, and the better of two noisy levels is better than the better
    # of their estimates, so nearly every draw lies above the point impact: the draws' own
    # percentiles miss it, on every wafer as on a sample of them.
    import flows.analysis.ranking as ranking

    if draw_wafers is not None:
        monkeypatch.setattr(ranking, "DRAW_WAFERS", draw_wafers)
    d = simulate_impacts(_two_tools_that_hardly_differ(), n_draws=200, seed=1)
    raw_low = np.quantile(d.layer_draws, 0.025)
    assert d.layer < raw_low  # the cause, as it was reported
    lo, hi = d.layer_interval()
    assert lo <= d.layer <= hi
    assert hi - lo == pytest.approx(np.subtract(*np.quantile(d.layer_draws, [0.975, 0.025])))
    for _, _, point, draws in d.items:
        low, high = impact_interval(point, draws)
        assert low <= point <= high


def test_draws_on_a_wafer_sample_give_the_interval_of_every_wafer(monkeypatch):
    # A large layer's draws are evaluated on a sample of its wafers; the interval is the spread
    # of the draws set around the point impact of all wafers: it must be the one all wafers give,
    # to well within its width.
    import flows.analysis.ranking as ranking

    rng = np.random.default_rng(5)
    n = 20_000
    eta = 2.0 + rng.normal(0, 0.5, n)  # wafers differ, so the sample's mean is not exact
    tools = _group([-0.3, 0.02, 0.0, 0.05], rng.integers(0, 4, n), se=0.05)
    chambers = _group(rng.normal(0, 0.05, 12), rng.integers(0, 12, n), se=0.03)
    z = rng.normal(0, 1, n)
    met = MetrologyTerm("m_0", "CD", "OP", z, rng.integers(0, 4, n))
    eff = LayerEffects(
        eta_other=eta,
        groups=[tools, chambers],
        metrology=[met],
        beta_all=np.array([-0.1]),
        beta_cov=np.array([[0.02**2]]),
        beta_index=[0],
    )
    full = simulate_impacts(eff, n_draws=300, seed=1)
    monkeypatch.setattr(ranking, "DRAW_WAFERS", 3_000)
    sampled = simulate_impacts(eff, n_draws=300, seed=1)
    assert sampled.layer == full.layer  # the point always uses every wafer
    width = np.subtract(*full.layer_interval()[::-1])
    assert width > 0.5
    assert np.allclose(sampled.layer_interval(), full.layer_interval(), atol=0.03 * width)
    for (_, _, p_full, d_full), (_, _, p_s, d_s) in zip(full.items, sampled.items, strict=True):
        assert p_s == p_full
        assert np.allclose(
            impact_interval(p_s, d_s), impact_interval(p_full, d_full), atol=0.03 * width
        )


def test_joint_draws_keep_a_shared_shift_shared():
    # All levels move together with beta (loading = 1): the intercept absorbs a common shift, the
    # comparison with the typical level does not change, so neither does the impact.
    n = 1500
    index = np.arange(n) % 3
    group = _group([-0.3, 0.0, 0.1], index, se=0.5)
    group.loading = np.ones((3, 1))
    group.cond_se = np.zeros(3)
    eff = LayerEffects(
        eta_other=np.full(n, 2.0), groups=[group], beta_all=np.zeros(1), beta_cov=np.eye(1)
    )
    d = simulate_impacts(eff, n_draws=100, seed=3)
    assert d.layer > 0.5
    assert np.ptp(d.layer_draws) < 1e-9


def test_holm_matches_statsmodels():
    p = [0.01, 0.04, 0.03, 0.5, 0.001, 0.2]
    expected = multipletests(p, method="holm")[1]
    assert np.allclose(holm_adjust(p), expected)


def _fit(layer, impact, p, status="ranked", findings=()):
    return LayerFit(
        layer=layer,
        status=status,
        reason=None if status == "ranked" else "too few wafers",
        yield_impact=impact,
        ci_low=None if impact is None else impact - 0.5,
        ci_high=None if impact is None else impact + 0.5,
        p_value_raw=p,
        variance_share=0.1,
        findings=list(findings),
    )


def _finding(layer, impact, tool="T1", p=0.01, p_adjusted=None):
    return Finding(
        layer=layer,
        effect="tool",
        estimate=-0.2,
        yield_impact=impact,
        ci_low=impact - 0.1,
        ci_high=impact + 0.1,
        p_value=p,
        operation="OP",
        tool_id=tool,
        p_adjusted=p if p_adjusted is None else p_adjusted,
    )


def _test(layer, p_adjusted, op="OP"):
    return OperationTest(
        layer=layer, operation=op, kind="equipment", p_value=p_adjusted, p_adjusted=p_adjusted
    )


def test_rank_layers_puts_significant_losses_first_by_loss_then_the_rest_by_p():
    fits = [
        _fit("A", 0.4, None, findings=[_finding("A", 0.1, "T1"), _finding("A", 0.3, "T2")]),
        _fit("B", 0.0, None, findings=[_finding("B", 1.5, p=0.2)]),  # large, not significant
        _fit("C", 0.9, None, findings=[_finding("C", 0.9)]),
        _fit("E", 0.0, None),
        _fit("D", None, None, status="too_little_data"),
    ]
    tests = [
        _test("A", 1e-6),
        _test("A", 0.5, "OP2"),
        _test("B", 0.2),
        _test("C", 1e-4),
        _test("E", 0.06),
    ]
    ranking, findings = rank_layers(fits, None, tests, materiality=0.25)
    assert [r.layer for r in ranking] == ["C", "A", "E", "B", "D"]
    assert [r.rank for r in ranking] == [1, 2, 3, 4, None]
    assert ranking[-1].status == "too_little_data" and ranking[-1].reason == "too few wafers"
    # closed testing: a layer's p is the smallest adjusted p of its tests
    assert {r.layer: r.p_value for r in ranking[:4]} == {"A": 1e-6, "B": 0.2, "C": 1e-4, "E": 0.06}
    by = {r.layer: r for r in ranking}
    assert by["C"].significant and by["C"].material  # interval 0.4 - 1.4 clears 0.25
    assert by["A"].significant and not by["A"].material  # interval -0.1 - 0.9 does not
    assert by["B"].loss_label == "no loss found" and by["B"].yield_impact == 0.0
    assert not by["B"].significant and not by["B"].material
    assert [(f.layer, f.tool_id) for f in findings] == [
        ("C", "T1"),
        ("A", "T2"),
        ("A", "T1"),
        ("B", "T1"),
    ]


def test_no_layer_shows_a_negative_cost():
    fits = [_fit("A", -0.6, None, findings=[_finding("A", 0.2, p=0.4)])]
    (row,), _ = rank_layers(fits, None, [_test("A", 0.4)])
    assert row.yield_impact == 0.0 and row.loss_label == "no loss found"


def test_records_of_older_runs_are_ranked_by_their_layer_tests():
    # without operation tests the layers' own p-values are Holm-adjusted across the layers
    fits = [_fit("A", 0.4, 1e-6, findings=[_finding("A", 0.4)]), _fit("B", 0.0, 0.3)]
    ranking, _ = rank_layers(fits, None)
    adjusted = dict(zip("AB", holm_adjust([1e-6, 0.3]), strict=True))
    assert {r.layer: r.p_value for r in ranking} == pytest.approx(adjusted)


def test_an_established_finding_outranks_a_larger_one_that_chance_explains():
    noisy_tool = _finding("A", 0.35, "T_BIG", p=0.5)
    clear_chamber = _finding("A", 0.27, "T_CH", p=1e-8)
    middling = _finding("A", 0.30, "T_MID", p=0.03, p_adjusted=0.06)  # not established
    noisy_chamber = replace(clear_chamber, effect="dispersion", yield_impact=math.nan, p_value=1e-9)
    got = sort_findings([noisy_tool, middling, noisy_chamber, clear_chamber])
    assert [f.tool_id for f in got][:3] == ["T_CH", "T_MID", "T_BIG"]  # then by adjusted p
    assert got[-1].effect == "dispersion"
    # rank_layers keeps each layer's findings in this order
    _, findings = rank_layers([_fit("A", 0.4, 1e-6, findings=[noisy_tool, clear_chamber])], None)
    assert [f.tool_id for f in findings] == ["T_CH", "T_BIG"]


def test_analysis_json_of_an_older_version_still_reads(tmp_path):
    old = _result("run-old")
    path = old.to_json(tmp_path / "analysis.json")
    raw = json.loads(path.read_text())
    for f in raw["findings"] + [f for layer in raw["layers"] for f in layer["findings"]]:
        for name in ("p_adjusted", "material", "lots", "aliases", "model", "bin"):
            f.pop(name)
    for r in raw["ranking"]:
        r.pop("material"), r.pop("significant"), r.pop("loss_label")
    raw.pop("operation_tests"), raw.pop("materiality")
    raw["layers"][0]["layer_effects"] = {"A": {"yield_impact": 0.3}}  # a field since removed
    raw["findings"][0]["some_future_field"] = 1
    path.write_text(json.dumps(raw))
    back = AnalysisResult.from_json(path)
    assert back.findings[0].p_adjusted is None and back.findings[0].lots == []
    assert back.operation_tests == [] and back.materiality == 0.25
    assert back.ranking[0].layer == old.ranking[0].layer


def _result(run_id, impact=0.5):
    fits = [
        _fit("A", impact, None, findings=[_finding("A", 0.3)]),
        _fit("B", None, None, status="not_converged"),
    ]
    nan_finding = Finding(
        layer="A",
        effect="dispersion",
        estimate=0.7,
        yield_impact=math.nan,
        ci_low=math.nan,
        ci_high=math.nan,
        p_value=0.01,
        operation="OP",
        tool_id="T1",
        chamber_id="CH2",
        param="CD",
    )
    fits[0].findings.append(nan_finding)
    tests = [_test("A", 1e-6)]
    ranking, findings = rank_layers(fits, None, tests)
    return AnalysisResult(
        run_id=run_id,
        created_at="2026-01-01T00:00:00+00:00",
        ranking=ranking,
        findings=findings,
        layers=fits,
        operation_tests=tests,
    )


def test_write_results_replaces_only_its_run(tmp_path):
    db = tmp_path / "fab.duckdb"
    write_results(db, _result("run-1", 0.5), tmp_path / "r1")
    write_results(db, _result("run-2", 0.7), tmp_path / "r2")
    write_results(db, _result("run-1", 0.9), tmp_path / "r1")  # re-run replaces run-1
    con = duckdb.connect(str(db), read_only=True)
    try:
        rows = con.execute(
            "SELECT run_id, rank, layer, yield_impact FROM subprocess_ranking "
            "WHERE rank IS NOT NULL ORDER BY run_id"
        ).fetchall()
        unranked = con.execute(
            "SELECT run_id, rank, layer, status FROM subprocess_ranking "
            "WHERE rank IS NULL ORDER BY run_id"
        ).fetchall()
        n_findings = con.execute(
            "SELECT run_id, count(*), count(yield_impact) FROM findings GROUP BY run_id ORDER BY 1"
        ).fetchall()
    finally:
        con.close()
    assert rows == [("run-1", 1, "A", 0.9), ("run-2", 1, "A", 0.7)]
    # the layer that could not be ranked is kept in the table, unranked, with its status
    assert unranked == [
        ("run-1", None, "B", "not_converged"),
        ("run-2", None, "B", "not_converged"),
    ]
    # the dispersion finding has no yield impact: NULL, not NaN
    assert n_findings == [("run-1", 2, 1), ("run-2", 2, 1)]
    with (tmp_path / "r1" / "subprocess_ranking.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["layer"] for r in table] == ["A", "B"]
    assert table[1]["rank"] == "" and table[1]["status"] == "not_converged"
    back = AnalysisResult.from_json(tmp_path / "r1" / "analysis.json")
    assert back.ranking[0].yield_impact == 0.9 and back.layers[1].status == "not_converged"


def test_metrology_measured_against_the_typical_tool_even_when_the_bad_one_runs_half():
    n = 2000
    tool = np.arange(n) % 2  # two tools, half the wafers each
    z = np.where(tool == 0, 1.5, 0.0) + np.tile([-0.2, 0.2], n // 2)
    eff = LayerEffects(
        eta_other=np.full(n, 2.0),
        metrology=[MetrologyTerm("m_0", "CD", "OP", z, tool_index=tool)],
        beta_all=np.array([-0.3]),
        beta_cov=np.array([[0.0]]),
        beta_index=[0],
    )
    contrib = -0.3 * z
    # the healthy tool (1) is the better of the two: everyone brought to its mean level
    ref = contrib[tool == 1].mean()
    expected = 100 * np.mean(special.expit(2.0 + ref) - special.expit(2.0 + contrib))
    assert yield_impact(eff) == pytest.approx(expected, rel=1e-12)
    # the wafer median sits between the tools and would have hidden half of it
    median_only = LayerEffects(
        eta_other=eff.eta_other,
        metrology=[MetrologyTerm("m_0", "CD", "OP", z)],
        beta_all=eff.beta_all,
        beta_cov=eff.beta_cov,
        beta_index=[0],
    )
    assert yield_impact(median_only) < 0.6 * yield_impact(eff)


@st.composite
def _layers(draw: st.DrawFn) -> LayerEffects:
    """A layer of tools, chambers within them and a metrology term, some levels nearly tied."""
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    n = draw(st.integers(300, 3_000))
    n_tools = draw(st.integers(1, 5))
    per_tool = draw(st.integers(1, 3))
    spread = draw(st.sampled_from([0.0, 1e-4, 0.01, 0.2]))  # 0: every level tied
    se = draw(st.sampled_from([0.0, 0.005, 0.05, 0.3]))
    tool_est = rng.normal(0, spread, n_tools)
    if draw(st.booleans()):
        tool_est[0] -= 0.4  # a bad tool among healthy ones
    tool = rng.integers(0, n_tools, n)
    chamber = tool * per_tool + rng.integers(0, per_tool, n)
    chamber_est = rng.normal(0, spread, n_tools * per_tool)
    tools = _group(tool_est, np.where(rng.random(n) < 0.05, -1, tool), se=se)
    chambers = _group(chamber_est, chamber, se=se / 2, kind="chamber")
    p = 2
    if draw(st.booleans()):  # the joint distribution given beta, as hglm hands it over
        for g in (tools, chambers):
            g.loading = rng.normal(0, 0.3, (len(g.estimate), p))
            g.cond_se = np.full(len(g.estimate), se)
    z = rng.normal(0, 1, n)
    met = MetrologyTerm("m_0", "CD", "OP", z, tool if draw(st.booleans()) else None)
    beta_se = draw(st.sampled_from([0.0, 0.01, 0.1]))
    return LayerEffects(
        eta_other=rng.normal(draw(st.sampled_from([-1.0, 2.0, 4.0])), 0.5, n),
        groups=[tools, chambers],
        metrology=[met],
        beta_all=np.array([0.5, draw(st.sampled_from([0.0, -0.05, -0.3]))]),
        beta_cov=np.diag([0.01, beta_se**2]),
        beta_index=[1],
    )


@settings(max_examples=60, deadline=None)
@given(eff=_layers(), draw_wafers=st.sampled_from([None, 100, 1_000]), seed=st.integers(0, 99))
def test_every_interval_contains_its_point_impact(eff, draw_wafers, seed):
    # The property the ranking and the findings rest on, on layers of every shape, on the path
    # of every wafer and on the sampled path of large layers (its threshold forced low here).
    import flows.analysis.ranking as ranking

    with pytest.MonkeyPatch.context() as mp:
        if draw_wafers is not None:
            mp.setattr(ranking, "DRAW_WAFERS", draw_wafers)
        d = simulate_impacts(eff, n_draws=80, seed=seed)
    assert d.layer == yield_impact(eff)
    lo, hi = d.layer_interval()
    assert lo <= d.layer <= hi
    for _, _, point, draws in d.items:
        low, high = impact_interval(point, draws)
        assert low <= point <= high


@pytest.mark.parametrize(
    ("n_tools", "healthy_sd"),
    [(3, 0.0), (2, 0.0), (3, 0.1), (5, 0.1)],
    ids=["three-tools-healthy-equal", "two-tools-healthy-equal", "three-varying", "five-varying"],
)
def test_the_interval_covers_the_true_impact_at_its_level(n_tools, healthy_sd):
    # Known truth: one tool 0.4 logit bad, the healthy ones equal (the simulator's truth) or
    # varying with the SD the model assumes. Each tool's estimate is its shrunken mean of noisy
    # data and its prediction SE the posterior one, as the fitted model hands them over. The
    # interval must cover the true impact (the definition at the true effects) about 95 % of the
    # time: 150 replicates put 0.95 within 0.88-0.99.
    rng = np.random.default_rng(n_tools * 10 + int(healthy_sd > 0))
    n, data_se, model_sd = 1_500, 0.08, 0.1
    shrink = model_sd**2 / (model_sd**2 + data_se**2)
    covered = []
    for rep in range(150):
        index = rng.integers(0, n_tools, n)
        eta = 2.0 + rng.normal(0, 0.4, n)
        planted = np.zeros(n_tools)
        planted[0] = -0.4
        true = planted + rng.normal(0, healthy_sd, n_tools)
        observed = true + rng.normal(0, data_se, n_tools)
        estimate = planted + shrink * (observed - planted)
        truth = yield_impact(LayerEffects(eta_other=eta, groups=[_group(true, index)]))
        eff = LayerEffects(
            eta_other=eta, groups=[_group(estimate, index, se=math.sqrt(shrink) * data_se)]
        )
        lo, hi = simulate_impacts(eff, n_draws=200, seed=rep).layer_interval()
        covered.append(lo <= truth <= hi)
    assert 0.88 <= np.mean(covered) <= 0.99
