"""The process side of a layer: each inline parameter's model, its noisy chambers, and which
tool moves it.

Process model (`process_models`). Every inline parameter of the layer is fitted on its site
values,

    value ~ site + (1|lot) + (1|wafer) + (1|tool) + (1|tool:chamber),   log phi ~ chamber

(phi by tool when no tool has more than one chamber), gaussian or gamma (log link) by cAIC,
by EQL (R hglm's algorithm: REML-type dispersions). The site pattern (a bowl, an edge ring)
is the same on every wafer, so it is a fixed effect and phi is the site-to-site noise alone (site = position in the wafer's ordered list, used when every
wafer has the same number of sites; else the intercept alone). A chamber with a larger phi is
a noisy chamber.

Dispersion test:

1. the parameter, on request (`lrt=True`): the likelihood-ratio test of log phi ~ chamber
   against a constant phi, both refitted by HL(1,1) with REML dispersions (same mean model:
   `hglm.lrt` on p_beta,v(h), chi2 with one degree of freedom per extra level), "do the
   chambers differ in noise at all", recorded in the model's summary. Off by default: it
   triples the process models' time and the findings do not use it;
2. each level k: the contrast of its log phi against the pooled others' (the inverse-variance
   weighted mean of the other levels' log phi) with its own SE, a one-sided z test of "k is
   noisier than the others" (a quieter chamber is never a finding); Holm over the levels.
   The SE of a level's log phi is that of the gamma GLM the HL fits use for the dispersions
   (deviance components with prior weights (1 - q) / 2): Var = 2 / sum (1 - q_i) over the
   level's rows, q the leverages; the levels' estimates are taken as independent (they come
   from disjoint rows; the engine's Hessian SE agrees within 5 %, and EQL's log phi is within
   0.05 of HL(1,1)'s on the simulated fabs).

A level's p-value is its Holm-adjusted p: the family-wise error over the parameter's levels
is controlled by Holm alone, and gating it by the LRT (an omnibus test over 5-15 levels)
would only lose power on the one noisy chamber the test is for. Per parameter one dispersion
finding is emitted, for the noisier-than-pooled level with the smallest p-value, plus any
other noisier level with p < 0.05; as the parameter's p-value is its smallest level's, Holm
or Bonferroni over the run's findings (`Finding.p_adjusted`, the attribution step's) keeps
the family-wise error across parameters. The finding's estimate is the level's log phi minus
the typical level's (the median level; of two, the quieter one): log(its phi / the typical
phi), so log 4 = 1.39 for an SD twice the typical one.

Metrology chain (`metrology_chains`). For each measured parameter, the wafer means (the values
the yield model uses) are fitted by a gaussian LMM `value ~ tool + (1|lot)` (REML), tools as
fixed effects: unshrunk, so the shift is the data's, not pulled toward zero. The shifting tool
is the one furthest from the typical tool in the harmful direction (when the caller knows it
from the yield model's coefficient; else in either direction), and the shift is its mean
minus the typical tool's (median of the tools; of two, the better, see `typical_weights`),
with a t interval on (measured lots - tools) degrees of freedom, since a lot runs on one tool
and lots are the replicates of a tool's mean. In sigmas: divided by the SD of the measured
wafer means, the SD the yield model standardises the parameter with (its `sd` in
`flows.analysis.layers._standardise_metrology`: same rows, sorted wafers only). Single-tool
operations with several chambers compare chambers the same way. `chain_yield_cost` turns a
shift in sigmas and the yield model's coefficient per sigma into yield points, for both the
attribution and the report.
"""

from __future__ import annotations

import dataclasses
import math
import re
import warnings

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
from scipy import special, stats

import hglm
from flows.analysis.frames import CHAMBER, MEAS, SITES, TOOL, FrameLayout
from flows.analysis.ranking import holm_adjust
from flows.analysis.results import Finding

PROCESS_METHOD = "EQL"  # the point estimates and the per-chamber contrasts
LRT_METHOD = "HL(1,1)"  # REML dispersions (p_beta,v(h)): the LRT of phi needs a likelihood
MIN_PROCESS_WAFERS = 20
# A level whose rows leave fewer residual degrees of freedom than this (sum of 1 - leverage)
# has a log phi too uncertain to compare: it stays in the model but is not tested.
MIN_LEVEL_DF = 2.0
# as the yield model's MIN_MEASURED_WAFERS: a chain is estimated from the same coverage at which
# the parameter enters the yield model
MIN_CHAIN_WAFERS = 30
MIN_LEVEL_LOTS = 3  # a tool (chamber) is compared in a chain from this many measured lots
SIGNIFICANCE = 0.05
PROCESS_MODEL = "process model"

DISPERSION_TEST = (
    "each chamber's log phi (site-to-site variance, site pattern removed) against the pooled "
    "other chambers' of the same parameter: one-sided z test (noisier), SE from the "
    "dispersion GLM's information 2 / sum(1 - leverage), Holm over the chambers"
)
CHAIN_METHOD = (
    "gaussian LMM of the wafer means on tool (fixed) with lot random effects (REML); shift = "
    "the tool's mean minus the typical tool's, t interval on measured lots - tools df"
)

warnings.filterwarnings("ignore", category=hglm.ConvergenceWarning, module=__name__)

# --------------------------------------------------------------------------- process models


def _site_frame(df: pl.DataFrame, op: str, param: str) -> pl.DataFrame:
    col = f"{SITES}{op}::{param}"
    return (
        df.select(
            "wafer_id",
            "lot_id",
            pl.col(TOOL + op).alias("tool"),
            pl.col(CHAMBER + op).alias("chamber"),
            pl.col(col).alias("value"),
        )
        .filter(pl.col("value").is_not_null() & pl.col("tool").is_not_null())
        .with_columns(pl.col("value").list.len().alias("n_sites"))
        .explode("value")
        # a site is its position in the wafer's list (the mart orders the values by site)
        .with_columns(("s" + pl.int_range(pl.len()).over("wafer_id").cast(pl.String)).alias("site"))
        .filter(pl.col("value").is_not_null())
    )


def _fit_process(
    formula: str, data: object, family: str, disp: str | None, method: str = PROCESS_METHOD
) -> hglm.HGLMResult:
    return hglm.fit(
        formula,
        data,
        family=family,
        link="log" if family == "gamma" else None,
        disp=disp,
        method=method,
        reml=True,
    )


def process_models(
    layer: str, frame: pa.Table, *, lrt: bool = False
) -> tuple[list[dict], list[Finding]]:
    """Each inline parameter of the layer: gaussian or gamma by cAIC, phi modelled by chamber.

    Parameters
    ----------
    layer : the layer's name (for the findings)
    frame : the layer's wide wafer frame (`flows.analysis.frames`)
    lrt : also the likelihood-ratio test of phi by chamber against a constant phi per
        parameter (two HL(1,1) refits, about 0.5 s of CPU per parameter at 300 lots; the
        findings do not use it)

    Returns
    -------
    The models' summaries (one dict per parameter: status, family, cAIC, variance components,
    and the dispersion test) and the dispersion findings (see the module docstring). Never
    raises for a model that fails: its summary says why.
    """
    df = pl.from_arrow(frame)
    assert isinstance(df, pl.DataFrame)
    layout = FrameLayout.of(df.columns)
    summaries: list[dict] = []
    findings: list[Finding] = []
    for op, param in layout.params:
        if f"{SITES}{op}::{param}" not in df.columns or TOOL + op not in df.columns:
            continue
        sites = _site_frame(df, op, param)
        n_wafers = sites.get_column("wafer_id").n_unique()
        summary: dict = {"operation": op, "param": param, "n_wafers": n_wafers}
        if n_wafers < MIN_PROCESS_WAFERS:
            summary["status"] = "too_little_data"
            summary["reason"] = f"{n_wafers} measured wafers (needs {MIN_PROCESS_WAFERS})"
            summaries.append(summary)
            continue
        try:
            model, tested = _process_model(op, sites, lrt)
        except Exception as exc:
            summary["status"] = "failed"
            summary["reason"] = str(exc)
            summaries.append(summary)
            continue
        summary.update(model)
        summaries.append(summary)
        if tested is not None:
            findings += _dispersion_findings(layer, op, param, tested, df)
    return summaries, findings


def _process_model(
    op: str, sites: pl.DataFrame, lrt: bool = False
) -> tuple[dict, pd.DataFrame | None]:
    """Fit one parameter's process model; returns its summary and, when phi is modelled by
    chamber or tool, the per-level dispersion table (`dispersion_levels`)."""
    data = sites.to_pandas()
    values = data["value"].to_numpy()
    terms = ["(1|lot_id)", "(1|wafer_id)"]
    n_tools = data["tool"].nunique()
    if n_tools > 1:
        terms.append("(1|tool)")
    multi_chamber = data["chamber"].nunique() > n_tools
    if multi_chamber:
        terms.append("(1|chamber)")
    # The site pattern (a bowl, an edge ring) is the same on every wafer: as fixed site effects
    # it stays out of phi, which is then the noise alone. Only when every wafer has the same
    # sites, so that a list position is a site.
    fixed = "site" if data["n_sites"].nunique() == 1 and data["site"].nunique() > 1 else "1"
    formula = f"value ~ {fixed} + " + " + ".join(terms)
    disp_col = "chamber" if multi_chamber else "tool" if n_tools > 1 else None
    disp = f"~ {disp_col}" if disp_col else None
    families = ["gaussian"] + (["gamma"] if np.all(values > 0) else [])
    fits = {fam: _fit_process(formula, data, fam, disp) for fam in families}
    fits = {fam: r for fam, r in fits.items() if r.converged}
    if not fits:
        return {"status": "not_converged", "reason": "no process model family converged"}, None
    # The stated rule: of the converged families, the one with the smaller cAIC.
    caic = {fam: float(r.likelihood["caic"]) for fam, r in fits.items()}
    family = min(caic, key=caic.__getitem__)
    res = fits[family]
    out: dict = {
        "status": "fitted",
        "family": family,
        "method": PROCESS_METHOD,
        "caic": caic,
        "formula": formula,
        "disp": disp,
        "varcomp": {str(k): float(v) for k, v in res.lambdas.items()},
    }
    coef = res.disp_coef
    if disp_col is None or coef is None or len(coef) < 2:
        return out, None
    table = dispersion_levels(
        _level_values(coef, data[disp_col]),
        _level_df(res.leverages, data[disp_col].to_numpy()),
    )
    worst = table["p_value"].idxmin() if table["tested"].any() else None
    out["dispersion"] = {
        "by": disp_col,
        "worst": worst,
        "log_phi_ratio": None if worst is None else float(table.at[worst, "log_phi_ratio"]),
        "p_value": None if worst is None else float(table.at[worst, "p_value"]),
    }
    if lrt:
        out["dispersion"].update(_phi_lrt(formula, data, family, disp))
    table.attrs["by"] = disp_col
    return out, table


def _phi_lrt(formula: str, data: pd.DataFrame, family: str, disp: str) -> dict:
    """The likelihood-ratio test of phi by level against a constant phi (HL(1,1), REML: same
    mean model, so p_beta,v(h) and a plain chi2 with one df per extra level)."""
    try:
        full = _fit_process(formula, data, family, disp, LRT_METHOD)
        constant = _fit_process(formula, data, family, None, LRT_METHOD)
        test = hglm.lrt(constant, full)
    except Exception as exc:  # e.g. a refit that did not converge cannot be tested
        return {"lrt_status": f"the likelihood-ratio test of phi failed: {exc}"}
    return {
        "lrt_statistic": float(test.statistic),
        "lrt_df": int(test.df),
        "lrt_p_value": float(test.pvalue),
    }


def dispersion_levels(log_phi: dict[str, float], level_df: dict[str, float]) -> pd.DataFrame:
    """Each level's noise against the others': the per-level step of the dispersion test.

    Parameters
    ----------
    log_phi : level -> its estimated log phi
    level_df : level -> residual degrees of freedom of its rows (sum of 1 - leverage);
        Var(log phi) = 2 / df

    Returns
    -------
    One row per level (index: the level): log_phi, log_phi_ratio (vs the typical level: the
    median, of two the quieter), contrast (vs the pooled others) and its se, z, p_raw, tested
    (enough degrees of freedom), p_raw (one-sided: noisier than the others), p_holm (Holm
    over the tested levels) and p_value (= p_holm, the level's p-value; NaN when not tested).
    """
    levels = sorted(log_phi)
    lp = np.array([log_phi[lv] for lv in levels])
    dof = np.array([level_df[lv] for lv in levels])
    tested = dof >= MIN_LEVEL_DF
    var = np.where(tested, 2.0 / np.maximum(dof, 1e-12), np.inf)
    weight = np.where(tested, 1.0 / var, 0.0)
    contrast = np.full(len(levels), np.nan)
    se = np.full(len(levels), np.nan)
    for k in np.flatnonzero(tested):
        others = weight.copy()
        others[k] = 0.0
        if others.sum() <= 0:
            tested[k] = False
            continue
        pooled = float(np.sum(others * lp) / others.sum())
        contrast[k] = lp[k] - pooled
        se[k] = math.sqrt(var[k] + 1.0 / others.sum())
    z = contrast / se
    p_raw = stats.norm.sf(z)  # one-sided: noisier than the others
    p_holm = np.full(len(levels), np.nan)
    if tested.any():
        p_holm[tested] = holm_adjust(p_raw[tested].tolist())
    typical = -typical_value(-lp)  # the quieter of two
    return pd.DataFrame(
        {
            "log_phi": lp,
            "log_phi_ratio": lp - typical,
            "contrast": contrast,
            "se": se,
            "z": z,
            "p_raw": p_raw,
            "tested": tested,
            "p_holm": p_holm,
            "p_value": p_holm,
        },
        index=pd.Index(levels, name="level"),
    )


def _dispersion_findings(
    layer: str, op: str, param: str, table: pd.DataFrame, df: pl.DataFrame
) -> list[Finding]:
    by = table.attrs["by"]
    noisier = table[table["tested"] & (table["contrast"] > 0)]
    if noisier.empty:
        return []
    worst = noisier["p_value"].idxmin()
    chosen = [lv for lv in noisier.index if lv == worst or noisier.at[lv, "p_value"] < SIGNIFICANCE]
    out = []
    col = (CHAMBER if by == "chamber" else TOOL) + op
    for level in chosen:
        rows = df.filter(pl.col(col) == level)
        lots = sorted(str(x) for x in rows.get_column("lot_id").unique().to_list())
        tool, _, chamber = level.partition(":")
        out.append(
            Finding(
                layer=layer,
                effect="dispersion",
                estimate=float(table.at[level, "log_phi_ratio"]),  # log(its phi / typical phi)
                yield_impact=float("nan"),  # noisier, not shifted: no yield impact of its own
                ci_low=float("nan"),
                ci_high=float("nan"),
                p_value=float(table.at[level, "p_value"]),
                operation=op,
                tool_id=tool,
                chamber_id=(chamber or None) if by == "chamber" else None,
                param=param,
                p_adjusted=None,  # the run's multiplicity: set by the attribution step
                model=PROCESS_MODEL,
                n_wafers=rows.height,
                n_lots=len(lots),
                lots=lots,
            )
        )
    return out


def _level_rows(names: list[str], levels: list[str], factor: str) -> np.ndarray:
    """(levels x coefficients): each level's value as a sum of treatment-coded coefficients
    (the intercept is the first level's). The engine names a level's coefficient
    `<factor><level>` in the mean model and `<factor>[T.<level>]` in the dispersion model."""
    rows = np.zeros((len(levels), len(names)))
    rows[:, 0] = 1.0
    for i, lv in enumerate(levels):
        for j, name in enumerate(names[1:], start=1):
            if name == f"{factor}{lv}" or re.fullmatch(rf"{factor}\[(T\.)?{re.escape(lv)}\]", name):
                rows[i, j] = 1.0
    if not np.all(rows[:, 1:].sum(axis=0) == 1) or rows[:, 1:].sum() != len(levels) - 1:
        raise ValueError(f"cannot map the coefficients {names} to the levels {levels}")
    return rows


def _level_values(coef: pd.DataFrame, levels: pd.Series) -> dict[str, float]:
    """Each level's value (log phi, a tool's mean) from treatment-coded coefficients."""
    names = sorted({str(x) for x in levels})
    rows = _level_rows(list(coef.index), names, str(levels.name))
    values = rows @ coef["estimate"].to_numpy(dtype=float)
    return dict(zip(names, values.tolist(), strict=True))


def _level_df(leverages: np.ndarray, levels: np.ndarray) -> dict[str, float]:
    """Residual degrees of freedom of each level's rows: sum of (1 - leverage)."""
    keys = np.array([str(x) for x in levels])
    return {lv: float(np.sum(1.0 - leverages[keys == lv])) for lv in np.unique(keys)}


def typical_value(values: np.ndarray) -> float:
    """The typical of several levels' values where larger is better: the median, of two the
    larger (the convention of `flows.analysis.ranking.typical_level`)."""
    return float(np.asarray(typical_weights(values)) @ np.asarray(values, dtype=float))


def typical_weights(values: np.ndarray) -> np.ndarray:
    """Weights on the levels that make their typical value (larger is better): the median
    level (the two middle ones, half each, for an even number above two), of two the larger.

    The yardstick of `flows.analysis.ranking.typical_level` as a linear combination, so that a
    contrast against it has a variance.
    """
    v = np.asarray(values, dtype=float)
    w = np.zeros(len(v))
    if len(v) == 0:
        return w
    order = np.argsort(v, kind="stable")
    if len(v) == 2:
        w[order[1]] = 1.0
    elif len(v) % 2:
        w[order[len(v) // 2]] = 1.0
    else:
        w[order[len(v) // 2 - 1]] = w[order[len(v) // 2]] = 0.5
    return w


# --------------------------------------------------------------------------- metrology chain


def metrology_chains(
    frame: pa.Table | pl.DataFrame, harmful_sign: dict[tuple[str, str], int] | None = None
) -> dict[tuple[str, str], dict]:
    """Which tool (or chamber) at the measuring operation moves each parameter, and by how much.

    Parameters
    ----------
    frame : the layer's (or the chained) wide wafer frame
    harmful_sign : optional, per (operation, param): +1 when larger values cost yield, -1 when
        smaller ones do (minus the sign of the yield model's coefficient). The shifting tool is
        then the one furthest from the typical tool in that direction and "the better" of two
        tools is the other; without it, the tool furthest from the typical in either direction
        (of two, the one with fewer measured wafers against the other).

    Returns
    -------
    (operation, param) -> the cause dict of `Finding.cause`: operation, tool_id, chamber_id
    (None unless chambers are compared), shift, shift_low, shift_high (95 % interval, the
    parameter's units), shift_sigma (shift / sigma), sigma (SD of the measured wafer means,
    the yield model's scale), unit_note. Parameters with fewer than MIN_CHAIN_WAFERS measured
    sorted wafers, a single tool and chamber, or a fit that fails or does not converge are
    left out.
    """
    df = frame if isinstance(frame, pl.DataFrame) else pl.from_arrow(frame)
    assert isinstance(df, pl.DataFrame)
    # the yield model's rows: sorted wafers (yield_design), so that sigma is its SD
    if "dies_total" in df.columns:
        df = df.filter(pl.col("dies_total").is_not_null() & (pl.col("dies_total") > 0))
    out = {}
    for op, param in FrameLayout.of(df.columns).params:
        sign = (harmful_sign or {}).get((op, param))
        try:
            cause = metrology_chain(df, op, param, sign)
        except Exception:  # a parameter the LMM cannot fit has no chain, like one too sparse
            cause = None
        if cause is not None:
            out[(op, param)] = cause
    return out


@dataclasses.dataclass(frozen=True)
class ChainEstimate:
    """One parameter's chain as fitted: the levels compared and the contrast behind the cause."""

    operation: str
    param: str
    by: str  # "tool" or "chamber"
    levels: list[str]
    means: np.ndarray  # each level's mean (the parameter's units), unshrunk
    cov: np.ndarray  # their covariance
    worst: int  # index of the shifting level
    typical: np.ndarray  # weights of the typical level (sum 1)
    shift: float
    se: float
    t_quantile: float  # of the 95 % interval (t on measured lots - levels df)
    sigma: float
    n_wafers: int
    n_lots: int

    def cause(self) -> dict:
        """The `Finding.cause` dict (without yield_impact, the attribution step's)."""
        level = self.levels[self.worst]
        tool, _, chamber = level.partition(":")
        half = self.t_quantile * self.se
        return {
            "operation": self.operation,
            "tool_id": tool,
            "chamber_id": (chamber or None) if self.by == "chamber" else None,
            "shift": self.shift,
            "shift_low": self.shift - half,
            "shift_high": self.shift + half,
            "shift_sigma": self.shift / self.sigma if self.sigma > 0 else float("nan"),
            "sigma": self.sigma,
            "unit_note": (
                f"{self.param} in its measured units: the wafers of {level} against the "
                f"typical {self.by} at {self.operation}; sigma = SD of the {self.n_wafers} "
                "measured wafer means"
            ),
        }


def metrology_chain(df: pl.DataFrame, op: str, param: str, sign: int | None = None) -> dict | None:
    """One parameter's cause dict (see `metrology_chains`; `df` holds the rows to use)."""
    est = estimate_chain(df, op, param, sign)
    return None if est is None else est.cause()


def estimate_chain(
    df: pl.DataFrame, op: str, param: str, sign: int | None = None
) -> ChainEstimate | None:
    """Fit one parameter's chain (see `metrology_chains`); None when it cannot be estimated.

    Parameters
    ----------
    df : the wafer rows to use (the yield model's: sorted wafers)
    op, param : the measuring operation and the parameter
    sign : +1 or -1, the harmful direction, or None (see `metrology_chains`)

    Returns
    -------
    The fitted chain, or None (too few measured wafers, fewer than two levels measured on
    MIN_LEVEL_LOTS lots, no convergence). Levels measured on fewer lots stay in the fit but
    are neither the shifting nor the typical level.
    """
    col = f"{MEAS}{op}::{param}"
    if col not in df.columns or TOOL + op not in df.columns:
        return None
    rows = df.filter(pl.col(col).is_not_null() & pl.col(TOOL + op).is_not_null())
    if rows.height < MIN_CHAIN_WAFERS:
        return None
    by = "tool"
    if rows.get_column(TOOL + op).n_unique() < 2:
        by = "chamber"
        if CHAMBER + op not in rows.columns or rows.get_column(CHAMBER + op).n_unique() < 2:
            return None
    data = pd.DataFrame(
        {
            "value": rows.get_column(col).to_numpy(),
            "level": rows.get_column((TOOL if by == "tool" else CHAMBER) + op)
            .cast(pl.String)
            .to_numpy(),
            "lot_id": rows.get_column("lot_id").to_numpy(),
        }
    )
    res = hglm.fit("value ~ level + (1|lot_id)", data, method="HL(1,1)", reml=True)
    if not res.converged:
        return None
    names = sorted(data["level"].unique())
    fx = res.fixef
    rows_of = _level_rows(list(fx.index), names, "level")
    means = rows_of @ fx["estimate"].to_numpy(dtype=float)
    cov = rows_of @ np.asarray(res.outcome.cov_beta, dtype=float) @ rows_of.T
    counts = data["level"].value_counts().reindex(names).to_numpy()
    lots = data.groupby("level")["lot_id"].nunique().reindex(names).to_numpy()
    # a tool measured on one or two lots is no yardstick, and its own mean is mostly its lots'
    able = np.flatnonzero(lots >= MIN_LEVEL_LOTS)
    if len(able) < 2:
        return None
    worst_of_able, weights_of_able = _worst_and_typical(means[able], counts[able], sign)
    worst = int(able[worst_of_able])
    weights = np.zeros(len(names))
    weights[able] = weights_of_able
    c = -weights
    c[worst] += 1.0
    n_lots = int(data["lot_id"].nunique())
    return ChainEstimate(
        operation=op,
        param=param,
        by=by,
        levels=names,
        means=means,
        cov=cov,
        worst=worst,
        typical=weights,
        shift=float(c @ means),
        se=math.sqrt(max(float(c @ cov @ c), 0.0)),
        t_quantile=float(stats.t.ppf(0.975, max(n_lots - len(names), 1))),
        sigma=float(rows.get_column(col).std() or 0.0),  # as _standardise_metrology's sd
        n_wafers=rows.height,
        n_lots=n_lots,
    )


def _worst_and_typical(
    means: np.ndarray, counts: np.ndarray, sign: int | None
) -> tuple[int, np.ndarray]:
    """The shifting level and the typical level's weights (see `metrology_chains`)."""
    if sign:
        harm = sign * means
        weights = typical_weights(-harm)  # the typical of "less harm is better"
        return int(np.argmax(harm)), weights
    if len(means) == 2:
        worst = int(np.argmin(counts)) if counts[0] != counts[1] else 1
        weights = np.zeros(2)
        weights[1 - worst] = 1.0
        return worst, weights
    weights = typical_weights(means)
    away = np.abs(means - weights @ means)
    away[weights > 0] = -np.inf
    return int(np.argmax(away)), weights


def chain_yield_cost(
    beta_per_sigma: float,
    shift_sigma: float,
    eta: np.ndarray,
    on_tool_mask: np.ndarray,
    *,
    on_its_wafers: bool = False,
) -> float:
    """Yield points a metrology shift costs: what the wafers gain if the shift were removed.

    Parameters
    ----------
    beta_per_sigma : the yield model's coefficient of the standardised parameter (logit per
        sigma)
    shift_sigma : the shifting tool's shift in sigmas (`metrology_chains`' shift_sigma)
    eta : each wafer's fitted yield logit (the shift included)
    on_tool_mask : which wafers ran on the shifting tool (or chamber)
    on_its_wafers : the mean over the tool's wafers instead of over all wafers

    Returns
    -------
    100 x mean(expit(eta - beta x shift on the tool's wafers) - expit(eta)): positive when the
    shift lowers yield; over all wafers (fab yield points) or over the tool's wafers.
    """
    eta = np.asarray(eta, dtype=float)
    mask = np.asarray(on_tool_mask, dtype=bool)
    if eta.shape != mask.shape:
        raise ValueError(f"eta has shape {eta.shape} but on_tool_mask has {mask.shape}")
    gain = special.expit(eta - beta_per_sigma * shift_sigma * mask) - special.expit(eta)
    if on_its_wafers:
        gain = gain[mask]
    return float(100.0 * np.mean(gain)) if gain.size else 0.0


def attach_chains(findings: list[Finding], frames: dict[str, pa.Table]) -> list[Finding]:
    """Each metrology finding with its cause: the tool that moves the parameter, in its units.

    Parameters
    ----------
    findings : one layer's findings (any effects; only `metrology` ones change)
    frames : the layers' wide wafer frames, by layer

    Returns
    -------
    The findings, each metrology finding with `cause` (see `metrology_chains`) looked for in the
    costly direction (the yield coefficient's sign: a negative slope per sigma means larger
    values cost yield) and `cause["yield_impact"]` = the finding's loss (the points of fab yield
    the tools moving it the costly way cost). A finding whose chain cannot be estimated keeps
    `cause = None`.
    """
    out = []
    for f in findings:
        frame = frames.get(f.layer)
        if f.effect != "metrology" or frame is None or f.operation is None or f.param is None:
            out.append(f)
            continue
        df = pl.from_arrow(frame)
        assert isinstance(df, pl.DataFrame)
        if "dies_total" in df.columns:  # the yield model's rows, so that sigma is its scale
            df = df.filter(pl.col("dies_total").is_not_null() & (pl.col("dies_total") > 0))
        sign = -1 if f.estimate > 0 else 1
        try:
            cause = metrology_chain(df, f.operation, f.param, sign)
        except Exception:  # a parameter the LMM cannot fit has no chain, like one too sparse
            cause = None
        if cause is not None:
            cause = {**cause, "yield_impact": f.yield_impact}
        out.append(dataclasses.replace(f, cause=cause))
    return out
