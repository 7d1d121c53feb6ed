"""Issue 14's attribution: arithmetic by hand, then known truth on small simulated fabs.

Unit tests: Holm and closed testing over the fab's family, the overlap measure and the
aliases it lists, the contrasts of the fixed-effect fit, the losses (a tool's and its
chamber's never counted twice), a layer's loss and its "no loss found", the detectable shift.
Simulations: the planted tool and chamber found at their operations, a shadow (a tool at
another operation that ran most of the bad tool's lots) ranked below its source, exact-null
fabs without significant findings, and sane operation-test p-values.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pytest
from scipy import special, stats

from flows.analysis import attribution
from flows.analysis.attribution import ChainedPieces, adjust_tests
from flows.analysis.findings import (
    ALIAS_OVERLAP,
    aliases_of,
    closed_layer_p,
    layer_loss,
    overlap,
)
from flows.analysis.losses import (
    CellLayout,
    contrast_matrices,
    detectable_shift,
    level_losses,
    level_shifts,
)
from flows.analysis.ranking import holm_adjust
from flows.analysis.results import Finding, OperationTest

# --------------------------------------------------------------------------- by hand


def _t(layer, op, p, kind="equipment"):
    return OperationTest(layer=layer, operation=op, kind=kind, p_value=p)


def test_holm_over_the_fab_and_the_layers_closed_test():
    tests = [_t("A", "A1", 0.004), _t("A", "A2", 0.6), _t("B", "B1", 0.01), _t("B", "B2", 0.03)]
    tests += [_t("C", f"C{i}", 0.5) for i in range(8)]  # many healthy operations elsewhere
    adjusted = adjust_tests(tests)
    assert [t.p_adjusted for t in adjusted] == pytest.approx(
        holm_adjust([t.p_value for t in tests])
    )
    layer_p = closed_layer_p(adjusted)
    assert layer_p["A"] == pytest.approx(0.004 * 12)  # the smallest member, Holm at rank 1
    assert layer_p["B"] == pytest.approx(0.01 * 11)
    assert layer_p["C"] == 1.0
    # consonant: a layer is significant exactly when one of its own tests is
    for layer, p in layer_p.items():
        mine = [t.p_adjusted for t in adjusted if t.layer == layer]
        assert (p < 0.05) == any(q < 0.05 for q in mine)


def test_one_bad_tool_is_not_diluted_by_its_layers_healthy_operations():
    # a joint test of 10 operations would average the one signal away; closed testing keeps it
    tests = [_t("L", "BAD", 1e-4)] + [_t("L", f"OK{i}", 0.8) for i in range(9)]
    tests += [_t("M", f"M{i}", 0.7) for i in range(10)]
    assert closed_layer_p(adjust_tests(tests))["L"] == pytest.approx(20 * 1e-4)


def test_overlap_coefficient():
    assert overlap({"a", "b", "c", "d"}, {"a", "b", "c", "x", "y", "z"}) == (0.75, 3)
    assert overlap(set(), {"a"}) == (0.0, 0)


def _pieces(columns: dict[str, list[str]], groups: dict[str, tuple[str, str]], lots: list[str]):
    data = pd.DataFrame({"lot_id": lots, **columns})
    for c in data:
        data[c] = data[c].astype("category")
    ranef = {g: {str(v): 0.1 * i for i, v in enumerate(sorted(set(columns[g])))} for g in groups}
    return ChainedPieces(data, np.zeros(len(lots)), groups, {}, ranef, {}, {"L": []})


def test_aliases_are_strong_overlaps_beyond_chance_at_other_operations():
    lots = [f"L{i:02d}" for i in range(40)]
    bad = lots[:10]
    # at OP2, SHADOW ran 8 of the bad tool's 10 lots and 4 others; at OP3, BUSY ran every lot
    # but four, the bad tool's among them
    op2 = ["SHADOW" if i < 8 or 30 <= i < 34 else "OTHER" for i in range(40)]
    op3 = ["IDLE" if 20 <= i < 24 else "BUSY" for i in range(40)]
    pieces = _pieces(
        {"tool_0": ["BAD" if lot in bad else "GOOD" for lot in lots], "tool_1": op2, "tool_2": op3},
        {"tool_0": ("tool", "OP1"), "tool_1": ("tool", "OP2"), "tool_2": ("tool", "OP3")},
        lots,
    )
    levels = attribution_levels(pieces)
    finding = Finding(
        "L", "tool", -0.4, 1.0, 0.5, 1.5, 1e-5, operation="OP1", tool_id="BAD", lots=bad
    )
    got = aliases_of(finding, levels, pieces, {("OP2", "SHADOW", None): 0.05})
    assert [(a["operation"], a["tool_id"]) for a in got] == [("OP2", "SHADOW")]
    (a,) = got
    assert a["shared_lots"] == 8 and a["overlap"] == pytest.approx(8 / 10)
    assert a["overlap"] >= ALIAS_OVERLAP
    assert a["yield_impact"] == 0.05 and a["estimate"] == pytest.approx(0.1)
    # BUSY holds all 10 (overlap 1.0), but 36 of the 40 lots at all: chance, not an alias
    assert (
        overlap(set(bad), {lot for lot, t in zip(lots, op3, strict=True) if t == "BUSY"})[0] == 1.0
    )


def attribution_levels(pieces):
    from flows.analysis.findings import _level_lot_sets

    return _level_lot_sets(pieces)


def _layout(cells, tools, n):
    tool_of = np.array([tools.index(c.split(":")[0]) if c != "(not run)" else -1 for c in cells])
    return CellLayout(cells, tool_of, tools, np.asarray(n))


def test_contrasts_compare_a_level_with_the_wafer_weighted_rest():
    layout = _layout(
        ["T1:A", "T1:B", "T2:A", "T3:A", "(not run)"], ["T1", "T2", "T3"], [10, 30, 20, 20, 5]
    )
    tool_rows, cham_rows, cham_cells = contrast_matrices(layout)
    assert np.allclose(tool_rows.sum(axis=1), 0) and np.allclose(cham_rows.sum(axis=1), 0)
    assert np.allclose(tool_rows[0], [0.25, 0.75, -0.5, -0.5, 0])  # T1 against T2 and T3
    assert cham_cells == [0, 1] and np.allclose(cham_rows[0], [1, -1, 0, 0, 0])
    assert np.all(tool_rows[:, 4] == 0) and np.all(cham_rows[:, 4] == 0)  # "(not run)" in none


def test_a_tool_and_its_chamber_are_not_counted_twice():
    cells = ["T1:A", "T1:B", "T1:C", "T1:D", "T2:A", "T2:B", "T3:A"]
    layout = _layout(cells, ["T1", "T2", "T3"], [1] * 7)
    theta = np.array([[0.0, 0.0, 0.0, -0.5, 0.05, 0.02, -0.01]])  # one bad chamber of T1
    tool_shift, cham_shift = level_shifts(theta, layout)
    # the tool's level is its typical chamber: one bad chamber leaves the tool healthy
    assert tool_shift[0, :4] == pytest.approx([0.0] * 4)
    assert cham_shift[0, 3] == pytest.approx(0.5)
    # tool levels: T1 its median chamber 0.0, T2 the better of two 0.05, T3 -0.01; the
    # typical level is their median, 0.0; tool and chamber shifts add up to the move there
    typical = 0.0
    assert np.allclose(tool_shift + cham_shift, typical - theta)
    assert tool_shift[0, 4:6] == pytest.approx([-0.05, -0.05])  # T2 is better than typical


def test_losses_are_the_yield_gained_on_a_levels_wafers_in_points_of_the_fab():
    cells = ["T1", "T2", "T3"]
    layout = _layout(cells, cells, [2, 2, 2])
    cell_index = np.array([0, 0, 1, 1, 2, 2])
    theta = np.array([-0.4, 0.0, 0.1])
    eta = np.array([2.0, 1.5, 2.0, 1.8, 2.2, 1.9]) + theta[cell_index]
    tools, cham = level_losses(eta, cell_index, theta, theta[None, :], layout, n_fab=12)
    gain_t1 = special.expit(eta[:2] + 0.4) - special.expit(eta[:2])  # T1 up to the median, T2
    assert tools[0, 0] == pytest.approx(100 / 12 * gain_t1.sum())
    assert tools[0, 1] == pytest.approx(0.0)  # the typical tool loses nothing
    assert tools[0, 2] < 0  # better than typical: a negative loss, never a finding
    assert np.allclose(cham, 0)  # single-chamber tools have no chamber shift


def _f(loss, p_adj, lo=None, hi=None):
    lo = loss - 0.2 if lo is None else lo
    hi = loss + 0.2 if hi is None else hi
    return Finding("L", "tool", -0.3, loss, lo, hi, p_adj, operation="OP", p_adjusted=p_adj)


def test_a_layers_loss_is_the_sum_of_its_significant_losses():
    rng = np.random.default_rng(1)
    d1, d2, d3 = (rng.normal(m, 0.1, 400) for m in (1.0, 0.5, 2.0))
    got = layer_loss([(_f(1.0, 0.001), d1), (_f(0.5, 0.01), d2), (_f(2.0, 0.2), d3)], 0.25)
    assert got["yield_impact"] == pytest.approx(1.5)  # the non-significant 2.0 is not in it
    assert got["ci_low"] < 1.5 < got["ci_high"]
    spread = np.quantile(d1 + d2, 0.975) - np.median(d1 + d2)
    assert got["ci_high"] - 1.5 == pytest.approx(spread)
    assert got["significant"] and got["material"]


def test_a_layer_without_significant_loss_shows_no_loss_found_never_negative():
    rng = np.random.default_rng(2)
    got = layer_loss(
        [(_f(0.1, 0.4), rng.normal(0.1, 0.05, 400)), (_f(-0.3, 0.9), rng.normal(-0.3, 0.05, 400))],
        0.25,
    )
    assert got["yield_impact"] == 0.0 and got["ci_low"] == 0.0 and got["ci_high"] > 0
    assert got["loss_label"] == "no loss found" and not got["significant"]


def test_detectable_shift_is_the_80_percent_power_shift_at_the_familys_level():
    eta = np.full(100, 2.0)
    points, logit = detectable_shift(0.05, eta, n_tests=20)
    expected = (stats.norm.isf(0.05 / 20 / 2) + stats.norm.ppf(0.8)) * 0.05
    assert logit == pytest.approx(expected)
    assert points == pytest.approx(100 * (special.expit(2.0) - special.expit(2.0 - expected)))
    assert detectable_shift(None, eta, 20) == (None, None)


# --------------------------------------------------------------------------- simulated fabs


def _analyse(tmp_path, truth_config, seed, edit=None):
    from flows.analysis.run import finish_attribution
    from flows.fabsim.simulation import simulate_fab
    from flows.warehouse.ingest import ingest_drop

    truth = simulate_fab(tmp_path / "drops", truth_config, seed=seed)
    db = tmp_path / "fab.duckdb"
    for drop in truth.drop_dirs:
        assert ingest_drop(drop, db, gx=False).status == "merged"
    from flows.analysis.frames import chained_frame, layer_frames
    from flows.analysis.layers import chained_model, fit_layer

    frames = layer_frames(db)
    if edit is not None:
        frames = edit(truth, frames)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fits = [fit_layer(layer, frame, seed=seed) for layer, frame in frames.items()]
        chained, pieces = chained_model(chained_frame(frames), seed=seed)
        assert pieces is not None, chained.reason
        outcomes = attribution.test_operations(pieces, seed=seed)
    _, ranking, findings, tests, _notes = finish_attribution(fits, chained, pieces, outcomes, 0.25)
    return truth, ranking, findings, tests


LAYERS = ("GATE", "M1", "VIA1")


@pytest.mark.slow
def test_the_planted_tool_and_chamber_are_found_at_their_operations(tmp_path):
    from flows.fabsim.config import FabConfig

    truth, ranking, findings, tests = _analyse(tmp_path, FabConfig(lots=150, layers=LAYERS), seed=3)
    significant = [f for f in findings if f.p_adjusted is not None and f.p_adjusted < 0.05]
    for kind in ("tool", "chamber"):
        e = truth.effect(kind)
        hit = [
            f
            for f in significant
            if (f.effect, f.operation, f.tool_id, f.chamber_id)
            == (kind, e.operation, e.tool_id, e.chamber_id)
        ]
        assert hit, (
            f"planted {kind} {e} not among {[(f.operation, f.tool_id, f.chamber_id) for f in significant]}"
        )
        (f,) = hit
        assert f.ci_low <= e.yield_impact * 1.6 and f.ci_high >= e.yield_impact * 0.5
        assert f.model == "operation test" and f.n_wafers and len(f.lots) == f.n_lots
        assert f.loss_on_wafers > f.yield_impact > 0
    # every ranked layer's loss is non-negative and the order is the rule's
    ranked = [r for r in ranking if r.rank is not None]
    assert all(r.yield_impact >= 0 for r in ranked)
    sig = [r for r in ranked if r.significant]
    assert ranked[: len(sig)] == sig
    assert [r.yield_impact for r in sig] == sorted((r.yield_impact for r in sig), reverse=True)
    assert all(0.0 <= t.p_value <= 1.0 for t in tests if t.p_value is not None)


def _shadow(truth, frames):
    """Route 90 % of the bad tool's lots through one tool of an operation in another layer."""
    from flows.analysis.frames import CHAMBER, TOOL

    e = truth.effect("tool")
    src = pl.from_arrow(frames[e.layer]).select("lot_id", pl.col(TOOL + e.operation).alias("t"))
    bad_lots = sorted(set(src.filter(pl.col("t") == e.tool_id).get_column("lot_id").to_list()))
    other_layer = next(layer for layer in frames if layer != e.layer)
    df = pl.from_arrow(frames[other_layer])
    op = next(c.removeprefix(TOOL) for c in df.columns if c.startswith(TOOL))
    tools = sorted(set(df.get_column(TOOL + op).drop_nulls().to_list()))
    shadow = tools[0]
    rng = np.random.default_rng(0)
    chosen = {lot for lot in bad_lots if rng.random() < 0.9}
    shadow_chambers = sorted(
        {c for t, c in df.select(TOOL + op, CHAMBER + op).rows() if t == shadow and c}
    )
    lots = df.get_column("lot_id").to_list()
    # the shadow's own lots outside the bad tool's keep their tool; the chosen ones move to it
    tools_now = df.get_column(TOOL + op).to_list()
    chambers_now = df.get_column(CHAMBER + op).to_list()
    new_tool = [shadow if lot in chosen else t for lot, t in zip(lots, tools_now, strict=True)]
    new_cham = [
        shadow_chambers[i % len(shadow_chambers)] if lot in chosen else c
        for i, (lot, c) in enumerate(zip(lots, chambers_now, strict=True))
    ]
    df = df.with_columns(pl.Series(TOOL + op, new_tool), pl.Series(CHAMBER + op, new_cham))
    out = dict(frames)
    out[other_layer] = df.to_arrow()
    _shadow.where = (op, shadow)
    return out


@pytest.mark.slow
def test_a_shadow_is_ranked_below_its_source_and_names_it(tmp_path):
    from flows.fabsim.config import FabConfig, PlantedSizes

    planted = PlantedSizes(
        bad_chamber_logit=0.0,
        metrology_logit_per_unit=0.0,
        metrology_shift_units=0.0,
        noisy_chamber_sd_ratio=1.0,
    )
    config = FabConfig(lots=150, layers=LAYERS, planted=planted)
    truth, ranking, findings, _ = _analyse(tmp_path, config, seed=5, edit=_shadow)
    e = truth.effect("tool")
    op, shadow = _shadow.where
    tool_findings = [f for f in findings if f.effect == "tool"]
    pos = {(f.operation, f.tool_id): i for i, f in enumerate(tool_findings)}
    source = tool_findings[pos[(e.operation, e.tool_id)]]
    assert source.p_adjusted < 0.05
    assert f"{op}:{shadow}" in (source.aliased_with or "")
    if (op, shadow) in pos:  # listed (its lots lost yield), then below its source, not material
        shade = tool_findings[pos[(op, shadow)]]
        assert pos[(op, shadow)] > pos[(e.operation, e.tool_id)]
        assert shade.yield_impact < source.yield_impact / 2 and not shade.material
    assert ranking[0].layer == e.layer


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_an_exact_null_fab_has_no_significant_finding(tmp_path, seed):
    from flows.fabsim.config import FabConfig

    _, ranking, findings, tests = _analyse(
        tmp_path,
        FabConfig(lots=80, layers=LAYERS, planted=None, equipment_sd=(0.0, 0.0)),
        seed=seed,
    )
    yield_findings = [f for f in findings if f.effect in ("tool", "chamber", "metrology")]
    assert yield_findings and all(f.p_adjusted >= 0.05 for f in yield_findings)
    assert not any(r.significant or r.material for r in ranking)
    assert all(r.yield_impact == 0.0 for r in ranking if r.rank is not None)
    p = [t.p_value for t in tests if t.p_value is not None]
    assert len(p) >= 8 and all(0 <= x <= 1 for x in p)
    assert min(p) > 0.05 / len(p)  # nothing survives Bonferroni
    # raw per-finding Wald p-values are not piled up near zero
    raw = [f.p_value for f in yield_findings if f.p_value is not None]
    assert np.mean(np.array(raw) < 0.05) < 0.25


def test_an_operation_test_that_cannot_be_computed_says_why(monkeypatch):
    def refuse(smaller, larger):
        raise ValueError("the fit did not converge; its likelihood cannot be tested")

    monkeypatch.setattr(attribution.hglm, "lrt", refuse)
    rng = np.random.default_rng(0)
    n = 240
    lots = np.repeat([f"L{i}" for i in range(24)], 10)
    tool = np.where(np.repeat(np.arange(24) % 2, 10) == 0, "T1", "T2")
    data = pd.DataFrame(
        {
            "dies_good": rng.binomial(500, 0.85, n),
            "dies_total": np.full(n, 500),
            "lot_id": lots,
            "wafer_id": [f"W{i}" for i in range(n)],
            "off": np.full(n, 1.7),
            "tool": tool,
            "cell": tool,
        }
    )
    inp = attribution.OperationInput("L", "OP", data, [], True, False)
    out = attribution.test_operation(inp)
    (test,) = out.tests
    assert test.p_value is None and "cannot be tested" in test.reason
    assert {lv.tool_id for lv in out.levels} == {"T1", "T2"}  # the contrasts still stand
    assert all(math.isfinite(lv.loss) for lv in out.levels)


def test_a_parameters_loss_counts_the_tools_that_move_it_the_wrong_way_only():
    from flows.analysis.losses import metrology_tool_losses

    tool = np.repeat([0, 1, 2, 3], 50)
    z = np.repeat([-1.0, 0.0, 0.1, 1.2], 50)  # tool 0 thin (better), tool 3 thick (worse)
    eta = np.full(200, 2.0)
    b = np.array([-0.2])
    per_tool = metrology_tool_losses(eta - b[0] * z, z, tool, b, n_fab=200)[0]
    typical = np.median(b[0] * np.array([-1.0, 0.0, 0.1, 1.2]))  # -0.01
    expected_3 = 100 / 200 * 50 * (special.expit(2.0 + typical - b[0] * 1.2) - special.expit(2.0))
    assert per_tool[3] == pytest.approx(expected_3) and per_tool[3] > 0
    assert per_tool[0] < 0  # better than typical: negative, and never offsets tool 3's loss
    # no tool differs: no loss
    flat = metrology_tool_losses(eta, np.zeros(200), tool, b, n_fab=200)[0]
    assert np.allclose(flat, 0.0)


def test_findings_are_tested_under_their_operations_test():
    from flows.analysis.attribution import LevelResult, OperationOutcome
    from flows.analysis.findings import attribute

    lots = [f"L{i}" for i in range(12)]
    pieces = _pieces(
        {"tool_0": ["A", "B"] * 6, "tool_1": ["C", "D", "E"] * 4},
        {"tool_0": ("tool", "OP1"), "tool_1": ("tool", "OP2")},
        lots,
    )
    pieces.layer_ops = {"L": ["OP1", "OP2"]}
    draws = np.full(200, 0.5)

    def level(tool, p, kind="tool", param=None):
        return LevelResult(kind, tool, None, param, -0.3, 0.05, p, 0.5, 2.0, draws, 10, lots[:4])

    op1 = OperationOutcome("L", "OP1", [_t("L", "OP1", 1e-6)], [level("A", 1e-4)])
    op1.tests.append(OperationTest("L", "OP1", "metrology", param="CD", p_value=1e-3))
    op1.levels.append(level(None, 1e-3, kind="metrology", param="CD"))
    op2 = OperationOutcome("L", "OP2", [_t("L", "OP2", 0.2)], [level("C", 1e-3)])
    att = attribute([op1, op2], pieces, materiality=0.25)
    by = {(f.operation, f.effect): f for f in att.findings["L"]}
    tests = {(t.operation, t.kind): t.p_adjusted for t in att.tests}
    # the parameter's finding is its test: its adjusted p is the test's (Holm over 3 tests)
    assert by[("OP1", "metrology")].p_adjusted == pytest.approx(tests[("OP1", "metrology")])
    assert tests[("OP1", "metrology")] == pytest.approx(2e-3)
    # the tool under a significant operation: Holm over the gated family (one finding)
    assert by[("OP1", "tool")].p_adjusted == pytest.approx(max(1e-4, 3e-6))
    # the tool under a non-significant operation cannot be significant
    assert by[("OP2", "tool")].p_adjusted >= 0.05
    assert att.layer_loss["L"]["yield_impact"] == pytest.approx(1.0)  # the two significant
