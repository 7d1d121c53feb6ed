"""The chained yield model, each layer's record and its process models.

`fit_layer` and `fit_chained` are pure (frames in, records out: no database, no Prefect) so
that they can run on a Dask worker. A statistical failure never raises: the layer comes back
with status "too_little_data", "not_converged" or "failed" and the reason in plain words.

The chained model (issue 14: THE model of a run; every yield number comes from it or from a
fit conditional on it, `flows.analysis.attribution`), a binomial-beta HGLM, logit link:

    dies_good of dies_total ~ product + metrology (standardised)
                              + (1|lot) + per operation (1|tool) + (1|tool:chamber)
                              + (1|wafer)   <- beta over-dispersion, eliminated in closed form

over every layer's operations at once. A layer's own record (`fit_layer`) holds its process
models (`flows.analysis.process`: each inline parameter on its site values, phi modelled by
chamber, so that a noisy chamber is a dispersion finding); its random
effects, variance components and metrology coefficients are the chained model's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa

import hglm
from flows.analysis.attribution import (
    ChainedPieces,
    chained_pieces,
    fit_final_yield,
    one_blas_thread,
)
from flows.analysis.frames import CHAMBER, MEAS, SITES, TOOL, FrameLayout, layer_operations
from flows.analysis.process import PROCESS_METHOD as PROCESS_METHOD  # re-exported for run.py
from flows.analysis.process import process_models
from flows.analysis.ranking import (
    LayerEffects,
    MetrologyTerm,
    RandomGroup,
)
from flows.analysis.results import LayerFit, RandomEffect

# Point estimates (lambda, v-hat, beta-hat) of the chained model come from EQL (R hglm's
# algorithm: beta and v by h, dispersions by the gamma GLMs on deviance components, a REML-type
# adjustment). With 500+ dies per wafer the HL(0,.) bias that HL(1,1) removes is negligible,
# and the REML-type dispersions matter: a tool term has 2-5 levels, where ML shrinks lambda by
# about a factor (q - 1) / q and with it every tool's predicted effect. The tests are the
# operations' (`flows.analysis.attribution`, HL(1,1) with ML dispersions).
YIELD_METHOD = "EQL"

MIN_WAFERS = 50
MIN_LOTS = 10
MIN_MEASURED_WAFERS = 30  # a metrology summary enters the yield model only from this coverage


class TooLittleData(Exception):
    """The layer cannot be modelled on these data; the message says why."""


@dataclass
class _Design:
    """The yield model's frame (pandas, for hglm) and how its columns map back to the fab."""

    data: object  # pandas.DataFrame handed to hglm.fit
    formula: str
    base_formula: str
    # safe column name -> (kind, operation)
    groups: dict[str, tuple[str, str]] = field(default_factory=dict)
    metrology: dict[str, tuple[str, str]] = field(default_factory=dict)  # name -> (op, param)
    n_wafers: int = 0
    n_lots: int = 0


def _safe(i: int, prefix: str) -> str:
    return f"{prefix}{i}"


def _standardise_metrology(df: pl.DataFrame, col: str, tool_col: str | None) -> pl.Series | None:
    """Wafer value, else its lot's mean, else its tool's mean, else the median; then scaled.

    Metrology is sampled. A lot ran on one tool per operation, so for an unmeasured wafer the
    lot mean is the best stand-in, and for an unmeasured lot the mean of the lots that ran
    on the same tool at the measuring operation (a tool that shifts the parameter shifts it
    for every lot it runs). Scaled as (x - median) / sd of the measured wafers.
    """
    measured = df.get_column(col).drop_nulls()
    if measured.len() < MIN_MEASURED_WAFERS:
        return None
    x = pl.col(col).fill_null(pl.col(col).mean().over("lot_id"))
    if tool_col is not None and tool_col in df.columns:
        x = x.fill_null(pl.col(col).mean().over(tool_col))
    filled = df.select(x.fill_null(measured.median())).to_series()
    sd = float(measured.std() or 0.0)
    if not math.isfinite(sd) or sd <= 0:
        return None
    return (filled - float(measured.median())) / sd


def yield_design(frame: pa.Table | pl.DataFrame) -> _Design:
    """Build the layer's yield-model frame; raises TooLittleData with the reason."""
    df = frame if isinstance(frame, pl.DataFrame) else pl.from_arrow(frame)
    assert isinstance(df, pl.DataFrame)
    layout = FrameLayout.of(df.columns)
    df = df.filter(pl.col("dies_total").is_not_null() & (pl.col("dies_total") > 0))
    n_wafers = df.height
    n_lots = df.get_column("lot_id").n_unique() if n_wafers else 0
    if n_wafers < MIN_WAFERS or n_lots < MIN_LOTS:
        raise TooLittleData(
            f"{n_wafers} sorted wafers in {n_lots} lots; the yield model needs at least "
            f"{MIN_WAFERS} wafers in {MIN_LOTS} lots"
        )
    cols: dict[str, object] = {
        "dies_good": df.get_column("dies_good").to_numpy(),
        "dies_total": df.get_column("dies_total").to_numpy(),
        "lot_id": df.get_column("lot_id").to_numpy(),
        "wafer_id": df.get_column("wafer_id").to_numpy(),
    }
    fixed = []
    if df.get_column("product").n_unique() > 1:
        cols["product"] = df.get_column("product").fill_null("unknown").to_numpy()
        fixed.append("product")
    groups: dict[str, tuple[str, str]] = {}
    for i, op in enumerate(layout.operations):
        tools = df.get_column(TOOL + op)
        chambers = df.get_column(CHAMBER + op)
        if tools.null_count() > 0:
            # wafers that skipped the operation share one "did not run" level
            tools = tools.fill_null("(not run)")
            chambers = chambers.fill_null("(not run)")
        n_tools = tools.n_unique()
        if n_tools >= 2:
            name = _safe(i, "tool_")
            cols[name] = tools.to_numpy()
            groups[name] = ("tool", op)
        if chambers.n_unique() > n_tools:  # some tool has more than one chamber
            name = _safe(i, "chamber_")
            cols[name] = chambers.to_numpy()
            groups[name] = ("chamber", op)
    metrology: dict[str, tuple[str, str]] = {}
    for k, (op, param) in enumerate(layout.params):
        z = _standardise_metrology(df, f"{MEAS}{op}::{param}", TOOL + op)
        if z is None:
            continue
        name = _safe(k, "m_")
        cols[name] = z.to_numpy()
        metrology[name] = (op, param)
    if not groups and not metrology:
        raise TooLittleData(
            "no operation of the layer ran on more than one tool or chamber and no metrology "
            f"parameter was measured on {MIN_MEASURED_WAFERS}+ wafers: nothing to compare"
        )
    data = pd.DataFrame(cols)
    rhs_fixed = " + ".join(fixed + list(metrology)) or "1"
    base_fixed = " + ".join(fixed) or "1"
    rand = " + ".join(f"(1|{g})" for g in groups)
    formula = f"dies_good ~ {rhs_fixed} + (1|lot_id) + {rand + ' + ' if rand else ''}(1|wafer_id)"
    base = f"dies_good ~ {base_fixed} + (1|lot_id) + (1|wafer_id)"
    return _Design(data, formula, base, groups, metrology, n_wafers, n_lots)


# The engine's convergence warning is silenced where it is raised, in `fit_final_yield`'s
# module: every fit here is checked (`res.converged`) and reported with its reason.
def _fit_binomial(formula: str, data: object, method: str = YIELD_METHOD) -> hglm.HGLMResult:
    return fit_final_yield(formula, data, method)  # type: ignore[arg-type]


def _with_groups(design: _Design, groups: dict[str, tuple[str, str]]) -> _Design:
    rand = "".join(f" + (1|{g})" for g in groups)
    fixed = design.formula.split("~", 1)[1].split("+ (1|lot_id)", 1)[0].strip()
    formula = f"dies_good ~ {fixed} + (1|lot_id){rand} + (1|wafer_id)"
    return _Design(
        design.data,
        formula,
        design.base_formula,
        groups,
        design.metrology,
        design.n_wafers,
        design.n_lots,
    )


def _fit_with_screening(design: _Design) -> tuple[hglm.HGLMResult, _Design, list[str]]:
    """Fit the full model; if the engine fails on it, screen the terms and refit.

    A term whose variance is negligible on its own (lambda below LAMBDA_TEST_FLOOR with
    only product, lot and wafer beside it) cannot carry yield; when several such terms
    together make the equations degenerate, they are left out and the rest is refitted.
    Returns the fit, the design it used and the labels of the terms left out.
    """
    try:
        return _fit_binomial(design.formula, design.data), design, []
    except Exception:
        if not design.groups:
            raise
    keep: dict[str, tuple[str, str]] = {}
    for name, where in design.groups.items():
        alone = _with_groups(design, {name: where})
        try:
            lam = float(_fit_binomial(alone.formula, design.data).lambdas[name])
        except Exception:
            continue
        if lam >= LAMBDA_TEST_FLOOR:
            keep[name] = where
    dropped = [f"{k}:{op}" for n, (k, op) in design.groups.items() if n not in keep]
    smaller = _with_groups(design, keep)
    return _fit_binomial(smaller.formula, design.data), smaller, dropped


def _tool_index(design: _Design, operation: str) -> np.ndarray | None:
    """Each wafer's tool at `operation` as an integer code, if the design has that term."""
    name = next(
        (n for n, (k, op) in design.groups.items() if k == "tool" and op == operation), None
    )
    if name is None:
        return None
    codes, _ = pd.factorize(design.data[name])  # type: ignore[index]
    return np.asarray(codes, dtype=int)


def _effects(
    res: hglm.HGLMResult, design: _Design, terms: dict[str, tuple[str, str]] | None = None
) -> LayerEffects:
    """The layer's terms inside a fitted yield model, as `ranking` needs them."""
    data = design.data
    groups_def = design.groups if terms is None else terms
    ranef = res.ranef
    eta = res.predict(type="link")
    fx = res.fixef
    joint = res.ranef_given_fixef()
    groups: list[RandomGroup] = []
    part = np.zeros(len(eta))
    for name, (kind, op) in groups_def.items():
        tab = ranef[name]
        levels = [str(x) for x in tab.index]
        pos = {lv: i for i, lv in enumerate(levels)}
        codes, uniques = pd.factorize(data[name])  # type: ignore[index]
        lookup = np.array([pos.get(str(u), -1) for u in uniques], dtype=int)
        index = np.where(codes >= 0, lookup[codes], -1)
        est = tab["v"].to_numpy(dtype=float)
        se = np.nan_to_num(tab["se"].to_numpy(dtype=float), nan=0.0)
        given = joint.get(name)
        loading, cond_se = None, None
        if given is not None:
            at = given.levels.get_indexer(tab.index)  # the engine's level order, made explicit
            loading, cond_se = given.loading[at], given.se[at]
        groups.append(RandomGroup(name, kind, op, levels, index, est, se, loading, cond_se))
        part += np.where(index >= 0, est[np.maximum(index, 0)], 0.0)
    names = list(fx.index)
    met_names = [m for m in design.metrology if m in names]
    metrology = [
        MetrologyTerm(
            m,
            design.metrology[m][1],
            design.metrology[m][0],
            data[m].to_numpy(),  # type: ignore[index]
            _tool_index(design, design.metrology[m][0]),
        )
        for m in met_names
    ]
    eff = LayerEffects(
        eta_other=eta,
        groups=groups,
        metrology=metrology,
        beta_all=fx["estimate"].to_numpy(dtype=float),
        beta_cov=np.asarray(res.outcome.cov_beta, dtype=float),
        beta_index=[names.index(m) for m in met_names],
    )
    for t, b in zip(metrology, eff.beta, strict=True):
        part += b * t.z
    eff.eta_other = eta - part
    return eff


def _ranef_records(eff: LayerEffects) -> list[RandomEffect]:
    out = []
    for g in eff.groups:
        for lv, e, s in zip(g.levels, g.estimate, g.se, strict=True):
            tool, _, chamber = lv.partition(":")
            out.append(
                RandomEffect(
                    term=f"{g.kind}:{g.operation}",
                    level=lv,
                    estimate=float(e),
                    se=float(s),
                    operation=g.operation,
                    tool_id=tool,
                    chamber_id=(chamber or None) if g.kind == "chamber" else None,
                )
            )
    return out


def _not_converged_reason(res: hglm.HGLMResult, what: str) -> str:
    detail = "; ".join(res.diagnostics.messages) or "no detail"
    return f"the {what} did not converge after {res.n_iter} iterations ({detail})"


def fit_layer(layer: str, frame: pa.Table, *, seed: int = 0) -> LayerFit:
    """Fit one layer's yield and process models and summarise them (never raises)."""
    with one_blas_thread():
        return _fit_layer(layer, frame, seed)


def _fit_layer(layer: str, frame: pa.Table, seed: int) -> LayerFit:
    """The layer's record and its process models; its yield numbers come from the chained
    model (`flows.analysis.findings.apply_to_layers`), not from a model of its own."""
    t0 = time.perf_counter()
    try:
        design = yield_design(frame)
    except TooLittleData as exc:
        return LayerFit(layer=layer, status="too_little_data", reason=str(exc))
    except Exception as exc:  # a frame the models cannot read is a failure, not a crash
        return LayerFit(layer=layer, status="failed", reason=f"building the model frame: {exc}")
    fit = LayerFit(
        layer=layer,
        status="ranked",
        operations=FrameLayout.of(frame.column_names).operations,
        n_wafers=design.n_wafers,
        n_lots=design.n_lots,
        method=f"yield: the chained binomial-beta HGLM ({YIELD_METHOD}) and its operation tests",
    )
    procs, disp_findings = process_models(layer, frame)
    fit.process_models = procs
    fit.findings = disp_findings
    fit.diagnostics["seconds"] = [time.perf_counter() - t0]
    return fit


LAMBDA_TEST_FLOOR = 1e-4  # below it a term moves no wafer by more than ~1 % of a logit


def _label(name: str, design: _Design) -> str:
    """Readable names for the report: tool_0 -> tool:GATE_ETCH, m_1 -> GATE_CD."""
    if name in design.groups:
        kind, op = design.groups[name]
        return f"{kind}:{op}"
    if name in design.metrology:
        return design.metrology[name][1]
    return name


def _diagnostics(res: hglm.HGLMResult, seed: int, n: int = 200) -> dict[str, list[float]]:
    rng = np.random.default_rng(seed)
    fitted = np.asarray(res.fitted)
    pick = rng.choice(len(fitted), size=min(n, len(fitted)), replace=False)
    return {
        "fitted": fitted[pick].tolist(),
        "residuals": np.asarray(res.deviance_residuals)[pick].tolist(),
    }


# --------------------------------------------------------------------------- chained model


def fit_chained(frame_all: pa.Table, *, layers: list[str] | None = None, seed: int = 0) -> LayerFit:
    """Final yield on every layer's tool, chamber and metrology terms together (never raises).

    Returns the chained model's record (`chained_model` also returns its per-wafer pieces,
    which the operation tests need).
    """
    return chained_model(frame_all, layers=layers, seed=seed)[0]


def chained_model(
    frame_all: pa.Table, *, layers: list[str] | None = None, seed: int = 0
) -> tuple[LayerFit, ChainedPieces | None]:
    """The chained model's record and its pieces (`attribution.ChainedPieces`), or None
    pieces when it could not be fitted (the record says why). Never raises.

    Parameters
    ----------
    frame_all : the chained frame (`frames.chained_frame`)
    layers : only these layers' operations (default: all)
    seed : seed of the diagnostics sample

    Returns
    -------
    (LayerFit, ChainedPieces | None)
    """
    with one_blas_thread():
        return _fit_chained(frame_all, layers, seed)


def _fit_chained(
    frame_all: pa.Table, layers: list[str] | None, seed: int
) -> tuple[LayerFit, ChainedPieces | None]:
    t0 = time.perf_counter()
    ops_of = layer_operations(frame_all)
    chosen = {k: v for k, v in ops_of.items() if layers is None or k in layers}
    df = pl.from_arrow(frame_all)
    assert isinstance(df, pl.DataFrame)
    keep_ops = {op for ops in chosen.values() for op in ops}
    df = df.select([c for c in df.columns if not _op_of(c) or _op_of(c) in keep_ops])
    fit = LayerFit(
        layer="(chained)",
        status="ranked",
        operations=sorted(keep_ops),
        method=f"chained binomial-beta HGLM ({YIELD_METHOD}) of layers {sorted(chosen)}",
    )
    try:
        design = yield_design(df)
    except TooLittleData as exc:
        fit.status, fit.reason = "too_little_data", str(exc)
        return fit, None
    except Exception as exc:
        fit.status, fit.reason = "failed", f"building the chained frame: {exc}"
        return fit, None
    fit.n_wafers, fit.n_lots = design.n_wafers, design.n_lots
    try:
        res, design, screened = _fit_with_screening(design)
    except Exception as exc:
        fit.status, fit.reason = "failed", f"fitting the chained model: {exc}"
        return fit, None
    if screened:
        fit.method += f"; terms with negligible variance left out: {screened}"
    fit.converged, fit.n_iter = bool(res.converged), int(res.n_iter)
    if not res.converged:
        fit.status, fit.reason = "not_converged", _not_converged_reason(res, "chained model")
        return fit, None
    fit.caic = float(res.likelihood["caic"])
    fit.varcomp = {_label(k, design): float(v) for k, v in res.lambdas.items()}
    fit.fixef = {
        _label(str(k), design): {"estimate": float(r["estimate"]), "se": float(r["se"])}
        for k, r in res.fixef.iterrows()
    }
    fit.ranef = _ranef_records(_effects(res, design))
    fit.diagnostics = _diagnostics(res, seed)
    pieces = chained_pieces(res, design.data, design.groups, design.metrology, chosen)  # type: ignore[arg-type]
    fit.diagnostics["seconds"] = [time.perf_counter() - t0]
    return fit, pieces


def _op_of(column: str) -> str | None:
    for prefix in (TOOL, CHAMBER):
        if column.startswith(prefix):
            return column.removeprefix(prefix)
    for prefix in (MEAS, SITES):
        if column.startswith(prefix):
            return column.removeprefix(prefix).split("::", 1)[0]
    return None
