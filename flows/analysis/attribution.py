"""Per-operation tests and losses, each conditional on the chained model (issue 14).

The chained model (`flows.analysis.layers.fit_chained`: final yield on every layer's tool,
chamber and metrology terms at once) is the one model of a run. Its per-wafer pieces
(`ChainedPieces`) give each operation `o` an offset; given it, three fits per operation,
all of final yield with (1|lot) + beta (1|wafer):

- the equipment test: base = offset only, full = base + (1|tool) + (1|tool:chamber), both
  HL(1,1) with ML dispersions, `hglm.lrt` with its chi-bar-square null distribution;
- per metrology parameter measured at `o`: base = offset without that parameter's part,
  full = base + the standardised parameter as a fixed coefficient, chi2(1);
- the contrasts: the operation's tool:chamber cells as FIXED effects (EQL), unshrunk, with
  their Wald covariance: per-level contrasts and p-values, losses and their draws.

Two stages. Which of the other operations' chained effects enter the offset matters: all of
them (the lead's design) leaks lot noise into the tests on small fabs. With 40 lots and some
60 tool levels, the chained model explains the lot means with tool effects; taking all of
them as known, an operation's lots look nearly noise-free and its healthy tools "differ"
(measured: 16 significant findings on a 40-lot fab with 3 planted effects, 13 of them
false). So: (1) screening: every operation's equipment test with the chained fixed part
(product and metrology) as offset, lot variance re-estimated in full: valid under the null
whatever the other operations do; (2) final: every operation given the chained effects of
the operations the screening found (Holm over the screening tests < 0.05); an operation
among those is tested again given the others (a shadow given its source drops out), every
other keeps its screening test; contrasts, losses and metrology tests all come from stage 2.
Everything here is pure (no database, no Prefect): `test_operation` runs on a thread or a
Dask worker.
"""

from __future__ import annotations

import math
import time
import warnings
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
import pandas as pd
from scipy import stats
from threadpoolctl import threadpool_limits

import hglm
from flows.analysis import ranking
from flows.analysis.losses import (
    CellLayout,
    contrast_matrices,
    level_losses,
    metrology_tool_losses,
)
from flows.analysis.ranking import (
    N_DRAWS,
    SIGNIFICANCE,
    LayerEffects,
    MetrologyTerm,
    _typical_rows,
    holm_adjust,
    simulate_impacts,
)
from flows.analysis.results import OperationTest

TEST_METHOD = "HL(1,1)"
CONTRAST_METHOD = "EQL"
NOT_RUN = "(not run)"  # the level of wafers that skipped an operation (`layers.yield_design`)

warnings.filterwarnings("ignore", category=hglm.ConvergenceWarning, module=__name__)


def one_blas_thread() -> AbstractContextManager[object]:
    """BLAS limited to one thread while the models are fitted.

    The dense blocks of these models are a few hundred rows wide: OpenBLAS threads cost more
    than they gain there, and on a busy machine their spin-waiting turns a 3 s layer fit into
    a 17 s one (measured on this 2-core machine at load 4). Layers run side by side in
    processes or threads instead (`flows.orchestration.prefect_flows`). The limit is process-wide while active.
    """
    return threadpool_limits(limits=1, user_api="blas")


def adjust_tests(tests: list[OperationTest]) -> list[OperationTest]:
    """Holm over every test of the run that has a p-value (the family is the fab)."""
    with_p = [i for i, t in enumerate(tests) if t.p_value is not None]
    adjusted = holm_adjust([tests[i].p_value for i in with_p]) if with_p else []  # type: ignore[misc]
    out = list(tests)
    for i, p in zip(with_p, adjusted, strict=True):
        out[i] = replace(tests[i], p_adjusted=float(p))
    return out


def screened_operations(
    outcomes: list[OperationOutcome],
) -> tuple[set[str], dict[str, OperationTest]]:
    """The operations whose screening test is significant after Holm over all screening tests,
    and every screening test by operation."""
    tests = adjust_tests([t for o in outcomes for t in o.tests])
    chosen = {
        t.operation for t in tests if t.p_adjusted is not None and t.p_adjusted < SIGNIFICANCE
    }
    raw = {t.operation: t for o in outcomes for t in o.tests}
    return chosen, raw


# --------------------------------------------------------------------------- chained pieces


@dataclass
class ChainedPieces:
    """The chained model's fit, wafer by wafer, as the per-operation fits need it.

    `data` has dies_good, dies_total, lot_id, wafer_id, one categorical column per random
    term of the chained design (names as `groups`) and the standardised metrology columns
    (names as `metrology`). `fixed` is X beta-hat without the metrology coefficients' parts
    (intercept and product). Picklable and small: levels, not per-wafer effects, are stored.
    """

    data: pd.DataFrame
    fixed: np.ndarray
    groups: dict[str, tuple[str, str]]  # column -> (kind, operation)
    metrology: dict[str, tuple[str, str]]  # column -> (operation, param)
    ranef: dict[str, dict[str, float]]  # column -> level -> v-hat
    beta: dict[str, float]  # metrology column -> coefficient
    layer_ops: dict[str, list[str]]  # layer -> its operations in the chained design
    eta_variance: float = 0.0  # variance over wafers of the chained linear predictor (all terms)

    def part(self, name: str) -> np.ndarray:
        """One term's contribution to each wafer's linear predictor."""
        if name in self.metrology:
            return self.beta.get(name, 0.0) * self.data[name].to_numpy(dtype=float)
        col = self.data[name]
        lookup = self.ranef[name]
        values = np.array([lookup.get(str(c), 0.0) for c in col.cat.categories])
        return values[col.cat.codes.to_numpy()]

    def offset(self, without: set[str]) -> np.ndarray:
        """X beta-hat plus every term's part except those named in `without`."""
        off = self.fixed.copy()
        for name in [*self.groups, *self.metrology]:
            if name not in without:
                off += self.part(name)
        return off


def chained_pieces(
    res: hglm.HGLMResult,
    data: pd.DataFrame,
    groups: dict[str, tuple[str, str]],
    metrology: dict[str, tuple[str, str]],
    ops_of: dict[str, list[str]],
) -> ChainedPieces:
    """Collect the chained fit's pieces (see `ChainedPieces`) from its result and frame."""
    fx = res.fixef["estimate"]
    beta_full = fx.to_numpy(dtype=float)
    xb = np.asarray(res.design.X @ beta_full, dtype=float).ravel()
    beta = {m: float(fx[m]) for m in metrology if m in fx.index}
    for m, b in beta.items():
        xb = xb - b * data[m].to_numpy(dtype=float)
    keep = ["dies_good", "dies_total", "lot_id", "wafer_id"]
    frame = data[keep + list(groups) + list(beta)].copy()
    for name in ["lot_id", *groups]:
        frame[name] = frame[name].astype(str).astype("category")
    ranef = {name: {str(k): float(v) for k, v in res.ranef[name]["v"].items()} for name in groups}
    in_design = {op for _, op in groups.values()} | {op for op, _ in metrology.values()}
    layer_ops = {
        layer: [op for op in ops if op in in_design] for layer, ops in sorted(ops_of.items())
    }
    return ChainedPieces(
        frame,
        xb,
        dict(groups),
        {m: metrology[m] for m in beta},
        ranef,
        beta,
        layer_ops,
        float(np.var(np.asarray(res.predict(type="link"), dtype=float))),
    )


# --------------------------------------------------------------------------- inputs


@dataclass
class OperationInput:
    """What the fits of one operation need: wafers, offsets, its equipment and parameters."""

    layer: str
    operation: str
    data: pd.DataFrame  # dies_good, dies_total, lot_id, wafer_id, off, tool, cell, z_k, off_k
    params: list[tuple[str, str]]  # (z column in data, param name)
    has_tool_term: bool
    has_chamber_term: bool
    stage: Literal["screen", "final"] = "final"
    # final stage: the screening test to keep instead of testing again (None: test again)
    screen_test: OperationTest | None = None


def operation_inputs(
    pieces: ChainedPieces,
    stage: Literal["screen", "final"],
    condition_on: set[str] | None = None,
    screened: dict[str, OperationTest] | None = None,
) -> list[OperationInput]:
    """One input per operation of the chained design, in layer and route order.

    Parameters
    ----------
    pieces : the chained model's pieces
    stage : "screen" (the equipment test given the chained fixed part only) or "final"
    condition_on : final stage: the operations whose chained tool and chamber effects enter
        the other operations' offsets (None: every operation)
    screened : final stage: the screening tests by operation; an operation outside
        `condition_on` keeps its screening test, one inside is tested again given the
        others of `condition_on` (see `test_operation`)

    Returns
    -------
    list of OperationInput
    """
    out = []
    base = pieces.data[["dies_good", "dies_total", "lot_id", "wafer_id"]]
    all_ops = {op for ops in pieces.layer_ops.values() for op in ops}
    conditioned = (
        set() if stage == "screen" else all_ops if condition_on is None else set(condition_on)
    )
    for layer, ops in pieces.layer_ops.items():
        for op in ops:
            tool_col = next(
                (g for g, (k, o) in pieces.groups.items() if o == op and k == "tool"), None
            )
            cham_col = next(
                (g for g, (k, o) in pieces.groups.items() if o == op and k == "chamber"), None
            )
            mets = [(m, p) for m, (o, p) in pieces.metrology.items() if o == op]
            if tool_col is None and cham_col is None and not mets:
                continue
            data = base.copy()
            left_out = {g for g, (_, o) in pieces.groups.items() if o == op or o not in conditioned}
            data["off"] = pieces.offset(left_out)
            if cham_col is not None:
                data["cell"] = pieces.data[cham_col].astype(str)
                data["tool"] = data["cell"].str.split(":", n=1).str[0]
            elif tool_col is not None:
                data["tool"] = pieces.data[tool_col].astype(str)
                data["cell"] = data["tool"]
            params = []
            for k, (m, param) in enumerate(mets):
                data[f"z_{k}"] = pieces.data[m].to_numpy(dtype=float)
                data[f"off_{k}"] = pieces.offset(left_out | {m})
                params.append((f"z_{k}", param))
            inp = OperationInput(
                layer, op, data, params, tool_col is not None, cham_col is not None
            )
            inp.stage = stage
            if stage == "final" and screened is not None and op not in conditioned:
                inp.screen_test = screened.get(op)
            out.append(inp)
    return out


# --------------------------------------------------------------------------- outcome


@dataclass
class LevelResult:
    """One tool, chamber or metrology parameter of an operation, from its conditional fit."""

    kind: str  # "tool", "chamber", "metrology"
    tool_id: str | None
    chamber_id: str | None
    param: str | None
    estimate: float  # logit contrast (tool, chamber) or logit per SD (metrology)
    se: float
    p_value: float | None
    loss: float  # points of fab yield gained if it performed like the typical level
    loss_on_wafers: float  # the same in points on its own wafers
    draws: np.ndarray  # the loss recomputed on draws of the fit's estimates
    n_wafers: int
    lots: list[str]


@dataclass
class OperationOutcome:
    """The tests, levels and detectability of one operation (see `test_operation`)."""

    layer: str
    operation: str
    tests: list[OperationTest] = field(default_factory=list)
    levels: list[LevelResult] = field(default_factory=list)
    contrast_se: float | None = None  # median SE of the tool contrasts (chamber if one tool)
    typical_eta: np.ndarray = field(default_factory=lambda: np.zeros(0))  # typical tool's wafers
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    base: object = field(default=None, repr=False)  # the last base fit, a warm start (dropped)


def fit_final_yield(
    formula: str,
    data: pd.DataFrame,
    method: str,
    *,
    offset: str | None = None,
    start: object = None,
) -> hglm.HGLMResult:
    """The final-yield model of the analysis (binomial on dies, beta wafer effects), fitted.

    Parameters
    ----------
    formula, data, method : as `hglm.fit`
    offset : the column holding a fixed part of the linear predictor, if any
    start : a fit of the same formula (the base fits of one operation differ only in their
        offsets, and start from each other)

    Returns
    -------
    hglm.HGLMResult, with ML dispersions for HL(1,1) (p_v(h) is maximised by both fits of a
    test; ignored by EQL).
    """
    return hglm.fit(
        formula,
        data,
        family="binomial",
        rand_family={"wafer_id": "beta"},
        method=method,
        reml=False,
        trials="dies_total",
        offset=offset,
        start=start,
    )


BASE = "dies_good ~ 1 + (1|lot_id) + (1|wafer_id)"


def test_operation(inp: OperationInput, *, seed: int = 0) -> OperationOutcome:
    """Test one operation's equipment and parameters given the chained model (never raises).

    Parameters
    ----------
    inp : the operation's wafers and offsets (`operation_inputs`)
    seed : seed of the loss draws

    Returns
    -------
    OperationOutcome : the raw tests (p-values not yet adjusted), every tool, chamber and
    parameter with its contrast, loss and draws, and what the detectable shift needs.
    """
    t0 = time.perf_counter()
    out = OperationOutcome(inp.layer, inp.operation)
    with one_blas_thread():
        if inp.has_tool_term or inp.has_chamber_term:
            _equipment(inp, out, seed)
        if inp.stage == "final":
            for k, (zcol, param) in enumerate(inp.params):
                _metrology(inp, out, k, zcol, param, seed)
    out.base = None  # a fitted model stays on the worker: the outcome carries numbers only
    out.seconds = time.perf_counter() - t0
    return out


def test_operations(pieces: ChainedPieces, *, seed: int = 0) -> list[OperationOutcome]:
    """Both stages, sequentially (the Prefect flow fans each stage out instead).

    Parameters
    ----------
    pieces : the chained model's pieces
    seed : seed of the loss draws

    Returns
    -------
    list of OperationOutcome : the final stage's outcomes, one per operation
    """
    screening = [test_operation(i, seed=seed) for i in operation_inputs(pieces, "screen")]
    chosen, screened = screened_operations(screening)
    final = operation_inputs(pieces, "final", chosen, screened)
    return [test_operation(i, seed=seed) for i in final]


def _equipment(inp: OperationInput, out: OperationOutcome, seed: int) -> None:
    data = inp.data
    tools = sorted(t for t in data["tool"].unique() if t != NOT_RUN)
    cells = sorted(c for c in data["cell"].unique() if c != NOT_RUN)
    test = OperationTest(
        layer=inp.layer,
        operation=inp.operation,
        kind="equipment",
        n_tools=len(tools),
        n_chambers=len(cells) if inp.has_chamber_term else None,
        n_lots=int(data["lot_id"].nunique()),
    )
    terms = (["(1|tool)"] if inp.has_tool_term else []) + (
        ["(1|cell)"] if inp.has_chamber_term else []
    )
    if inp.screen_test is not None:  # screened and not among the conditioning operations
        out.tests.append(inp.screen_test)
    else:
        try:
            base = fit_final_yield(BASE, data, TEST_METHOD, offset="off")
            out.base = base
            formula = BASE.replace("(1|wafer_id)", " + ".join([*terms, "(1|wafer_id)"]))
            full = fit_final_yield(formula, data, TEST_METHOD, offset="off")
            test = _with_lrt(test, hglm.lrt(base, full))
        except Exception as exc:  # a test that cannot be computed says why; the run goes on
            test = _replace(test, reason=f"the {TEST_METHOD} ML fits of the test failed: {exc}")
        out.tests.append(test)
    if inp.stage == "screen":
        return
    try:
        _contrasts(inp, out, tools, seed)
    except Exception as exc:
        out.notes.append(f"{inp.operation}: the fixed-effect contrast fit failed: {exc}")


def _with_lrt(test: OperationTest, lr: hglm.LRTResult) -> OperationTest:
    return _replace(
        test,
        statistic=float(lr.statistic),
        df=int(lr.df),
        n_boundary=int(lr.n_boundary),
        p_value=float(lr.pvalue),
    )


def _replace(test: OperationTest, **changes: object) -> OperationTest:
    from dataclasses import replace

    return replace(test, **changes)  # type: ignore[arg-type]


def _contrasts(inp: OperationInput, out: OperationOutcome, tools: list[str], seed: int) -> None:
    data = inp.data
    res = fit_final_yield(
        "dies_good ~ 0 + cell + (1|lot_id) + (1|wafer_id)", data, CONTRAST_METHOD, offset="off"
    )
    if not res.converged:
        out.notes.append(f"{inp.operation}: the fixed-effect contrast fit did not converge")
        return
    cells = [_level_of(str(n), "cell") for n in res.fixef.index]
    theta_hat = res.fixef["estimate"].to_numpy(dtype=float)
    cov = np.asarray(res.outcome.cov_beta, dtype=float)
    cell_pos = {c: j for j, c in enumerate(cells)}
    cell_index = np.array([cell_pos[c] for c in data["cell"].to_numpy()])
    tool_pos = {t: k for k, t in enumerate(tools)}
    tool_of = np.array(
        [tool_pos.get(c.split(":", 1)[0], -1) if c != NOT_RUN else -1 for c in cells]
    )
    layout = CellLayout(cells, tool_of, tools, np.bincount(cell_index, minlength=len(cells)))
    eta = np.asarray(res.predict(type="link"), dtype=float)
    n_fab = len(eta)
    tool_rows, cham_rows, cham_cells = contrast_matrices(layout)

    point_tool, point_cham = level_losses(
        eta, cell_index, theta_hat, theta_hat[None, :], layout, n_fab
    )
    rng = np.random.default_rng([seed, len(eta), len(cells)])
    chol = np.linalg.cholesky(cov + 1e-12 * np.eye(len(cells)))
    theta_draws = theta_hat + rng.standard_normal((N_DRAWS, len(cells))) @ chol.T
    keep = np.arange(n_fab)
    if n_fab > ranking.DRAW_WAFERS:  # the draws' spread from a sample (as `simulate_impacts`)
        keep = np.sort(rng.choice(n_fab, size=ranking.DRAW_WAFERS, replace=False))
    draw_tool, draw_cham = level_losses(
        eta[keep], cell_index[keep], theta_hat, theta_draws, layout, len(keep)
    )
    lots = data["lot_id"].to_numpy()
    cell_of_wafer = np.asarray(cell_index)

    def wald(row: np.ndarray) -> tuple[float, float, float | None]:
        est = float(row @ theta_hat)
        se = float(math.sqrt(max(row @ cov @ row, 0.0)))
        p = float(2 * stats.norm.sf(abs(est) / se)) if se > 0 else None
        return est, se, p

    tool_se = []
    if len(tools) >= 2:
        for k, tool in enumerate(tools):
            est, se, p = wald(tool_rows[k])
            tool_se.append(se)
            mask = tool_of[cell_of_wafer] == k
            loss = float(point_tool[0, k])
            out.levels.append(
                LevelResult(
                    "tool", tool, None, None, est, se, p, loss,
                    loss * n_fab / max(int(mask.sum()), 1), draw_tool[:, k],
                    int(mask.sum()), sorted({str(x) for x in lots[mask]}),
                )
            )  # fmt: skip
    cham_se = []
    for row, j in zip(cham_rows, cham_cells, strict=True):
        est, se, p = wald(row)
        cham_se.append(se)
        mask = cell_of_wafer == j
        tool, _, chamber = cells[j].partition(":")
        loss = float(point_cham[0, j])
        out.levels.append(
            LevelResult(
                "chamber", tool, chamber or None, None, est, se, p, loss,
                loss * n_fab / max(int(mask.sum()), 1), draw_cham[:, j],
                int(mask.sum()), sorted({str(x) for x in lots[mask]}),
            )
        )  # fmt: skip
    ses = tool_se or cham_se
    out.contrast_se = float(np.median(ses)) if ses else None
    # the wafers of the typical tool (the one whose level is the median), for the
    # detectable shift in yield points
    levels = np.array([_typical_rows(theta_hat[None, tool_of == k])[0] for k in range(len(tools))])
    if len(levels):
        k_typ = int(np.argmin(np.abs(levels - _typical_rows(levels[None, :])[0])))
        typ = np.flatnonzero(tool_of[cell_of_wafer] == k_typ)
        out.typical_eta = eta[typ[:: max(1, len(typ) // 5000)]]


def _level_of(name: str, column: str) -> str:
    """The level in a fixed-effect name of `0 + column`: "cell[ETCH03:CH1]" or "cellLITHO04"."""
    if name.endswith("]") and "[" in name:
        return name[name.index("[") + 1 : -1].removeprefix("T.")
    return name.removeprefix(column)


def _metrology(
    inp: OperationInput, out: OperationOutcome, k: int, zcol: str, param: str, seed: int
) -> None:
    data = inp.data
    off = f"off_{k}"
    test = OperationTest(
        layer=inp.layer,
        operation=inp.operation,
        kind="metrology",
        param=param,
        n_lots=int(data["lot_id"].nunique()),
    )
    try:
        base = fit_final_yield(BASE, data, TEST_METHOD, offset=off, start=out.base)
        out.base = base
        full = fit_final_yield(BASE.replace("1 +", f"1 + {zcol} +"), data, TEST_METHOD, offset=off)
        lr = hglm.lrt(base, full)
        test = _with_lrt(test, lr)
    except Exception as exc:
        out.tests.append(_replace(test, reason=f"the {TEST_METHOD} ML fits failed: {exc}"))
        return
    out.tests.append(test)
    fx = full.fixef
    b = float(fx.loc[zcol, "estimate"])
    z = data[zcol].to_numpy(dtype=float)
    n_fab = len(z)
    eta_other = np.asarray(full.predict(type="link"), dtype=float) - b * z
    se = float(fx.loc[zcol, "se"])
    cause = None
    if "tool" in data and data["tool"].nunique() > 1:
        codes, tools = pd.factorize(data["tool"])
        codes = np.where(data["tool"].to_numpy() == NOT_RUN, -1, codes)
        rng = np.random.default_rng([seed, n_fab, k])
        b_draws = b + se * rng.standard_normal(N_DRAWS)
        per_tool = metrology_tool_losses(eta_other, z, codes, np.array([b]), n_fab)[0]
        point = float(np.clip(per_tool, 0.0, None).sum())
        keep = np.arange(n_fab)
        if n_fab > ranking.DRAW_WAFERS:  # the draws' spread from a sample of wafers
            keep = np.sort(rng.choice(n_fab, size=ranking.DRAW_WAFERS, replace=False))
        drawn = metrology_tool_losses(eta_other[keep], z[keep], codes[keep], b_draws, len(keep))
        d = np.clip(drawn, 0.0, None).sum(axis=1)
        worst = int(np.argmax(per_tool))
        if per_tool[worst] > 0:
            cause = str(tools[worst])
    else:  # one tool: the parameter's wafers against its median wafer (ranking's rule)
        eff = LayerEffects(
            eta_other=eta_other,
            metrology=[MetrologyTerm(zcol, param, inp.operation, z, None)],
            beta_all=fx["estimate"].to_numpy(dtype=float),
            beta_cov=np.asarray(full.outcome.cov_beta, dtype=float),
            beta_index=[list(fx.index).index(zcol)],
        )
        _, _, point, d = simulate_impacts(eff, n_draws=N_DRAWS, seed=seed).items[0]
    out.levels.append(
        LevelResult(
            "metrology", cause, None, param, b, se, test.p_value,
            float(point), float(point), d, n_fab, [],
        )
    )  # fmt: skip
