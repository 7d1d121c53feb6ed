"""From per-operation outcomes to the run's findings: multiplicity, aliasing, layer losses.

- The family is the whole fab: every operation's equipment test and every metrology
  parameter's test of the run. Holm's step-down adjusts them (family-wise error 5 %).
- A layer's adjusted p-value is the smallest Holm-adjusted p of its tests: closed testing
  with Bonferroni local tests (Holm is its shortcut), so it is consonant and keeps the
  fab-wide family-wise error at 5 %, and one bad tool among many healthy operations is not
  diluted by a joint test of all of them.
- Findings (the loss-direction tools, chambers and parameters) are tested hierarchically: a
  metrology finding is its parameter's test (adjusted p = that test's); the tool and chamber
  findings of operations whose test is significant share one Holm family, and each keeps at
  least its operation's adjusted p, so that no finding is significant when its operation is
  not. Under the complete null (a fab without effects) any significant finding needs a
  significant test: family-wise error 5 %. (Holm over every finding of the run, the lead's
  first design, took a parameter whose own test had p = 0.001 and adjusted it over ~150
  findings to 0.12: the planted oxide furnace of the demo went unreported.) Holm, not a
  false-discovery rate: the null-fab criterion is family-wise ("any material finding in at
  most 1 of 20 null fabs").
- Aliasing: tools and chambers at other operations whose lot sets overlap a finding's
  (overlap coefficient |A & B| / min(|A|, |B|) >= 0.6 and >= 3 shared lots, and 1.25
  times the shared lots expected by chance, so that a tool that ran most lots is not
  everyone's alias).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from flows.analysis.attribution import (
    ChainedPieces,
    LevelResult,
    OperationOutcome,
    adjust_tests,
)
from flows.analysis.losses import detectable_shift
from flows.analysis.ranking import SIGNIFICANCE, holm_adjust, impact_interval
from flows.analysis.results import Finding, LayerFit, OperationTest

ALIAS_OVERLAP = 0.6
ALIAS_MIN_LOTS = 3
# and at least this many times the shared lots expected if the two were dispatched
# independently (|A| |B| / lots): a tool that ran 90 % of the lots contains 90 % of any set
ALIAS_LIFT = 1.25
YIELD_EFFECTS = ("tool", "chamber", "metrology")


@dataclass
class Attribution:
    """The run's adjusted tests and findings, and each layer's loss with its draws."""

    tests: list[OperationTest] = field(default_factory=list)
    findings: dict[str, list[Finding]] = field(default_factory=dict)  # layer -> findings
    layer_loss: dict[str, dict[str, float | bool | None]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def closed_layer_p(tests: list[OperationTest]) -> dict[str, float]:
    """Layer -> its adjusted p: the smallest Holm-adjusted p of its tests (closed testing)."""
    out: dict[str, float] = {}
    for t in tests:
        if t.p_adjusted is not None:
            out[t.layer] = min(out.get(t.layer, 1.0), t.p_adjusted)
    return out


def overlap(a: set[str], b: set[str]) -> tuple[float, int]:
    """Overlap coefficient |a & b| / min(|a|, |b|) and the number of shared lots."""
    shared = len(a & b)
    smaller = min(len(a), len(b))
    return (shared / smaller if smaller else 0.0), shared


def _level_lot_sets(pieces: ChainedPieces) -> list[tuple[str, str, str | None, str, set[str]]]:
    """(operation, tool, chamber, chained column, lots) of every tool and multi-chamber cell."""
    lots = pieces.data["lot_id"].astype(str).to_numpy()
    out = []
    for name, (kind, op) in pieces.groups.items():
        col = pieces.data[name].astype(str).to_numpy()
        for level in np.unique(col):
            if level.startswith("(not run)"):
                continue
            tool, _, chamber = level.partition(":")
            if kind == "chamber" and not chamber:
                continue  # a single-chamber tool's cell is the tool
            out.append((op, tool, chamber or None if kind == "chamber" else None, name,
                        set(lots[col == level].tolist())))  # fmt: skip
    return out


def aliases_of(
    finding: Finding,
    levels: list[tuple[str, str, str | None, str, set[str]]],
    pieces: ChainedPieces,
    conditional_loss: dict[tuple[str, str, str | None], float],
) -> list[dict]:
    """Tools and chambers at other operations that ran mostly the same lots as `finding`."""
    own = set(finding.lots)
    n_lots = int(pieces.data["lot_id"].nunique())
    out: list[dict] = []
    for op, tool, chamber, name, lots in levels:
        if op == finding.operation:
            continue
        coef, shared = overlap(own, lots)
        if coef < ALIAS_OVERLAP or shared < ALIAS_MIN_LOTS:
            continue
        # beyond chance: a tool that ran most lots contains any lot set
        if shared < ALIAS_LIFT * len(own) * len(lots) / max(n_lots, 1):
            continue
        label = f"{tool}:{chamber}" if chamber else tool
        est = pieces.ranef[name].get(label, pieces.ranef[name].get(f"{tool}:", math.nan))
        out.append(
            {
                "operation": op,
                "tool_id": tool,
                "chamber_id": chamber,
                "overlap": round(coef, 3),
                "shared_lots": shared,
                "estimate": float(est),
                "yield_impact": conditional_loss.get((op, tool, chamber)),
            }
        )
    # a chamber that shares exactly its tool's lots with the finding says nothing more
    tools = {(a["operation"], a["tool_id"]): a["shared_lots"] for a in out if not a["chamber_id"]}
    out = [
        a
        for a in out
        if not a["chamber_id"] or tools.get((a["operation"], a["tool_id"])) != a["shared_lots"]
    ]
    out.sort(key=lambda a: (-a["overlap"], -a["shared_lots"], a["operation"], a["tool_id"]))
    return out


def attribute(
    outcomes: list[OperationOutcome],
    pieces: ChainedPieces,
    *,
    materiality: float,
    dispersion: list[Finding] | None = None,
) -> Attribution:
    """Adjust the tests, make the findings, their aliases and each layer's loss.

    Parameters
    ----------
    outcomes : every operation's `test_operation` outcome
    pieces : the chained model's pieces (lot sets and chained estimates of the aliases)
    materiality : points of fab yield a significant loss's interval must clear
    dispersion : the process models' dispersion findings, adjusted in the same family of
        findings (they have no operation test above them)

    Returns
    -------
    Attribution : adjusted tests, findings per layer (yield findings first in the order of
    `sort_findings`), and per layer its loss, interval, significance and materiality.
    """
    att = Attribution()
    raw = [t for o in outcomes for t in o.tests]
    tests = adjust_tests(raw)
    n_tests = sum(t.p_value is not None for t in tests)
    by_key = {(t.operation, t.kind, t.param): t for t in tests}
    for o in outcomes:
        for t in o.tests:
            if t.kind == "equipment":
                pts, logit = detectable_shift(o.contrast_se, o.typical_eta, n_tests)
                by_key[(t.operation, t.kind, t.param)] = replace(
                    by_key[(t.operation, t.kind, t.param)],
                    detectable_shift=pts,
                    detectable_shift_logit=logit,
                )
        att.notes.extend(o.notes)
    att.tests = [by_key[(t.operation, t.kind, t.param)] for t in raw]

    conditional_loss: dict[tuple[str, str, str | None], float] = {}
    candidates: list[tuple[Finding, np.ndarray]] = []
    for o in outcomes:
        for lv in o.levels:
            key = (o.operation, lv.tool_id or "", lv.chamber_id)
            if lv.kind != "metrology":
                conditional_loss[key] = lv.loss
            if not _is_loss(lv):
                continue
            candidates.append((_finding(o, lv), lv.draws))

    # Hierarchical: a finding is tested only under a significant test of its operation
    # (gatekeeping). A metrology finding is its parameter's test, so its adjusted p is that
    # test's; tool and chamber findings under significant operations share one Holm family,
    # and each keeps at least its operation's adjusted p. Dispersion findings (no operation
    # test above them) have a Holm family of their own.
    op_p = [_test_p(f, by_key) for f, _ in candidates]
    gated = [
        i
        for i, (f, _) in enumerate(candidates)
        if f.effect != "metrology" and op_p[i] < SIGNIFICANCE
    ]
    holm_gated = dict(
        zip(gated, holm_adjust([_p(candidates[i][0]) for i in gated]) if gated else [], strict=True)
    )
    levels = _level_lot_sets(pieces)
    adjusted: list[tuple[Finding, np.ndarray]] = []
    for i, (f, d) in enumerate(candidates):
        if f.effect == "metrology":
            p_adj = op_p[i]
        else:
            p_adj = max(holm_gated.get(i, _p(f)), op_p[i])
        aliases = aliases_of(f, levels, pieces, conditional_loss) if f.lots else []
        f = replace(
            f,
            p_adjusted=float(p_adj),
            material=bool(p_adj < SIGNIFICANCE and f.ci_low > materiality),
            aliases=aliases,
            aliased_with=";".join(_alias_label(a) for a in aliases) or None,
        )
        adjusted.append((f, d))
    disp = list(dispersion or [])
    holm_disp = holm_adjust([_p(f) for f in disp]) if disp else []
    for f, h in zip(disp, holm_disp, strict=True):
        att.findings.setdefault(f.layer, []).append(
            replace(f, p_adjusted=float(h), material=None, model=f.model or "process model")
        )

    for layer in pieces.layer_ops:
        mine = [(f, d) for f, d in adjusted if f.layer == layer]
        att.findings[layer] = [f for f, _ in mine] + att.findings.get(layer, [])
        att.layer_loss[layer] = layer_loss(mine, materiality)
    return att


def _p(f: Finding) -> float:
    return f.p_value if f.p_value is not None else 1.0


def _test_p(f: Finding, by_key: dict) -> float:
    """The adjusted p of the test above a finding (its operation's, or its parameter's)."""
    kind = "metrology" if f.effect == "metrology" else "equipment"
    test = by_key.get((f.operation, kind, f.param if kind == "metrology" else None))
    return test.p_adjusted if test is not None and test.p_adjusted is not None else 1.0


def _is_loss(lv: LevelResult) -> bool:
    if lv.kind == "metrology":
        return math.isfinite(lv.loss) and lv.loss > 0
    return lv.estimate < 0  # worse than its peers on the logit


def _alias_label(a: dict) -> str:
    label = f"{a['operation']}:{a['tool_id']}"
    return label + (f":{a['chamber_id']}" if a["chamber_id"] else "")


def _finding(o: OperationOutcome, lv: LevelResult) -> Finding:
    lo, hi = impact_interval(lv.loss, lv.draws)
    return Finding(
        layer=o.layer,
        effect=lv.kind,  # type: ignore[arg-type]
        estimate=lv.estimate,
        yield_impact=lv.loss,
        ci_low=lo,
        ci_high=hi,
        p_value=lv.p_value,
        operation=o.operation,
        tool_id=lv.tool_id,
        chamber_id=lv.chamber_id,
        param=lv.param,
        loss_on_wafers=lv.loss_on_wafers,
        n_wafers=lv.n_wafers,
        n_lots=len(lv.lots) if lv.lots else None,
        lots=lv.lots,
        model="operation test",
    )


def layer_loss(
    findings: list[tuple[Finding, np.ndarray]], materiality: float
) -> dict[str, float | bool | None]:
    """A layer's loss: the sum of its significant loss findings, interval from their draws.

    Without a significant loss the layer shows "no loss found": loss 0, interval from 0 to
    the 97.5 % quantile of the largest drawn loss among its loss-direction levels (how much
    one of its tools, chambers or parameters may still lose, given the data), never
    negative. Not the sum: the positive parts of many healthy levels' noise add up to a
    "loss" no level has.
    """
    significant = [
        (f, d)
        for f, d in findings
        if f.p_adjusted is not None and f.p_adjusted < SIGNIFICANCE and f.yield_impact > 0
    ]
    if significant:
        point = float(sum(f.yield_impact for f, _ in significant))
        lo, hi = impact_interval(point, np.sum([d for _, d in significant], axis=0))
        return {
            "yield_impact": point,
            "ci_low": lo,
            "ci_high": hi,
            "significant": True,
            "material": bool(lo > materiality),
            "loss_label": None,
        }
    drawn = [d for _, d in findings if len(d)]
    high = float(np.quantile(np.max(drawn, axis=0), 0.975)) if drawn else 0.0
    return {
        "yield_impact": 0.0,
        "ci_low": 0.0,
        "ci_high": max(0.0, high),
        "significant": False,
        "material": False,
        "loss_label": "no loss found",
    }


def apply_to_layers(
    fits: list[LayerFit],
    chained: LayerFit | None,
    att: Attribution,
    variance: dict[str, float],
    pieces: ChainedPieces,
) -> list[LayerFit]:
    """Each layer's record filled from the chained model and the attribution.

    Its random effects, variance components and metrology coefficients are the chained
    model's for its operations; its loss, interval and findings are the attribution's. The
    layer's `p_value_raw` is the smallest raw p-value of its tests.
    """
    p_raw: dict[str, float] = {}
    for t in att.tests:
        if t.p_value is not None:
            p_raw[t.layer] = min(p_raw.get(t.layer, 1.0), t.p_value)
    out = []
    for fit in fits:
        if fit.status != "ranked":
            out.append(fit)
            continue
        fit = replace(fit)
        ops = set(fit.operations)
        if chained is not None and chained.status == "ranked":
            fit.ranef = [r for r in chained.ranef if r.operation in ops]
            fit.varcomp = {k: v for k, v in chained.varcomp.items() if k.partition(":")[2] in ops}
            params = {p for op, p in pieces.metrology.values() if op in ops}
            fit.fixef = {k: v for k, v in chained.fixef.items() if k in params}
            fit.caic, fit.converged, fit.n_iter = chained.caic, chained.converged, chained.n_iter
            if not fit.diagnostics.get("fitted"):
                fit.diagnostics = {**fit.diagnostics, **chained.diagnostics}
        loss = att.layer_loss.get(fit.layer)
        if loss is not None:
            fit.yield_impact = float(loss["yield_impact"])  # type: ignore[arg-type]
            fit.ci_low, fit.ci_high = loss["ci_low"], loss["ci_high"]  # type: ignore[assignment]
        fit.p_value_raw = p_raw.get(fit.layer)
        fit.variance_share = variance.get(fit.layer)
        fit.findings = att.findings.get(fit.layer, fit.findings)
        out.append(fit)
    return out


def variance_shares(pieces: ChainedPieces) -> dict[str, float]:
    """Share of the wafers' chained-logit variance carried by each layer's terms."""
    parts = {name: pieces.part(name) for name in [*pieces.groups, *pieces.metrology]}
    var_total = pieces.eta_variance
    out = {}
    for layer, ops in pieces.layer_ops.items():
        mine = [
            n
            for n in parts
            if (pieces.groups.get(n, (None, None))[1] in ops)
            or (pieces.metrology.get(n, (None, None))[0] in ops)
        ]
        part = sum((parts[n] for n in mine), np.zeros(len(pieces.fixed)))
        out[layer] = float(np.var(part) / var_total) if var_total > 0 else 0.0
    return out
