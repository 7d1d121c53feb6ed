"""What the report says about each finding and each layer, in an engineer's words and units.

One sentence per significant finding ("ETCH07 chamber CH3 at CT_ETCH: 4.8 points lower yield
on its 128 wafers (10 lots), costing 0.51 points of fab yield ..."), the ranking and findings
tables in yield points with a legend for every column, the model-scale estimates in a detail
table of their own, each finding's lots, the tools whose lots overlap a finding's (aliases),
and per operation what the data can see (its test and the smallest shift it would detect).

The fields of the attribution (issue 14: `Finding.p_adjusted`, `material`, `loss_on_wafers`,
`n_wafers`, `n_lots`, `lots`, `aliased_with`, `aliases`, `model`, `cause`;
`LayerRanking.material`, `significant`, `loss_label`; `AnalysisResult.operation_tests` and
`materiality`) are read with defaults, so a run written before they existed still renders:
then a finding's adjusted p is computed here from the recorded p-values (`adjusted_p`) and the
method section says so.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import Any

from flows.analysis.ranking import holm_adjust
from flows.analysis.results import AnalysisResult, Finding, LayerRanking
from flows.report.data import Unavailable
from flows.report.model import (
    ALPHA,
    LotList,
    Sentence,
    Table,
    fmt_interval,
    fmt_num,
    fmt_p,
    fmt_pp,
    fmt_share,
    p_words,
)

CHAINED_MODEL = "chained"
LOSS_EFFECTS = ("tool", "chamber", "metrology")
NO_LOSS = "no loss found"


def field(obj: Any, name: str, default: Any = None) -> Any:
    """A field of a record that may be an object (today's dataclasses) or a dict (JSON)."""
    if isinstance(obj, dict):
        value = obj.get(name, default)
    else:
        value = getattr(obj, name, default)
    return default if value is None else value


def finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


# ---- adjusted p-values and significance -------------------------------------------------------


def adjusted_p(result: AnalysisResult) -> tuple[dict[int, float | None], bool]:
    """Each finding's adjusted p (keyed by id), and whether the run recorded them itself.

    A run that records `Finding.p_adjusted` is read as it is. For an older run the report
    applies the analysis's hierarchical rule to what it recorded: Holm over all findings of
    the run that carry a p-value, then the larger of that and the layer's adjusted p (a
    finding cannot be significant when its layer is not).
    """
    recorded = {id(f): field(f, "p_adjusted") for f in result.findings}
    if any(p is not None for p in recorded.values()):
        return recorded, True
    layer_p = {r.layer: r.p_value for r in result.ranking}
    tested = [f for f in result.findings if finite(f.p_value)]
    holm = holm_adjust([f.p_value for f in tested]) if tested else []
    out: dict[int, float | None] = {id(f): None for f in result.findings}
    for f, p in zip(tested, holm, strict=True):
        lp = layer_p.get(f.layer)
        out[id(f)] = max(p, lp) if finite(lp) else p
    return out, False


def is_loss(f: Finding) -> bool:
    return f.effect in LOSS_EFFECTS and finite(f.yield_impact) and f.yield_impact > 0


def significant_findings(
    findings: Iterable[Finding], p_adj: dict[int, float | None]
) -> list[Finding]:
    """A layer's significant findings: losses by size, then noisy equipment (no yield cost)."""
    hits = [f for f in findings if finite(p_adj.get(id(f))) and p_adj[id(f)] < ALPHA]
    losses = sorted((f for f in hits if is_loss(f)), key=lambda f: -f.yield_impact)
    noisy = sorted((f for f in hits if f.effect == "dispersion"), key=lambda f: p_adj[id(f)])
    return losses + noisy


def layer_has_loss(r: LayerRanking) -> bool:
    """Whether the layer shows a loss: as the run says, else a significant positive impact."""
    recorded = field(r, "significant")
    if recorded is not None:
        return bool(recorded) and finite(r.yield_impact) and r.yield_impact > 0
    # A run from before the attribution: a significant layer with a positive impact.
    return finite(r.p_value) and r.p_value < ALPHA and finite(r.yield_impact) and r.yield_impact > 0


def loss_interval(low: float | None, high: float | None) -> str:
    """A loss's interval; a loss is never negative, so a bound below zero shows as 0."""
    return fmt_interval(
        max(low, 0.0) if finite(low) else low, max(high, 0.0) if finite(high) else high
    )


def material_word(value: Any) -> str:
    return "–" if value is None else "yes" if value else "no"


# ---- where, in an engineer's words ----------------------------------------------------------


def subject(f: Finding) -> str:
    """The equipment or parameter a finding names: "ETCH07 chamber CH3 at CT_ETCH"."""
    at = f" at {f.operation}" if f.operation else ""
    if f.effect == "tool":
        return f"{f.tool_id}{at}"
    if f.effect == "chamber":
        return f"{f.tool_id} chamber {f.chamber_id or '(no id)'}{at}"
    if f.effect == "metrology":
        return f"{f.param}" + (f" (measured at {f.operation})" if f.operation else "")
    if f.effect == "dispersion":
        if f.chamber_id:
            return f"chamber {f.tool_id}:{f.chamber_id}{at}"
        return f"tool {f.tool_id}{at}"
    parts = [f.operation, f.tool_id, f.chamber_id, f.param]
    return f"{f.effect} " + " / ".join(p for p in parts if p)


def equipment(record: dict[str, Any]) -> str:
    """ "CVD12 at V1_DEP" or "ETCH07 chamber CH3 at CT_ETCH" from an alias or cause record."""
    name = str(field(record, "tool_id", "?"))
    if field(record, "chamber_id"):
        name += f" chamber {record['chamber_id']}"
    op = field(record, "operation")
    return name + (f" at {op}" if op else "")


def sd_ratio(f: Finding) -> float | None:
    """A dispersion finding's site-to-site SD relative to its peers (its estimate is the log of
    the variance ratio)."""
    return math.exp(f.estimate / 2) if finite(f.estimate) else None


def model_note(f: Finding) -> str:
    model = field(f, "model")
    return "" if model in (None, CHAINED_MODEL) else f" (numbers from the {model})"


# ---- the summary's sentences ----------------------------------------------------------------


def finding_sentence(f: Finding, p: float | None, anchor: str) -> Sentence:
    """One finding in one sentence, its numbers in engineering units (see the module doc)."""
    if f.effect == "dispersion":
        ratio = sd_ratio(f)
        on = f" on {f.param}" if f.param else ""
        text = (
            f"site-to-site SD x{fmt_num(ratio, 3)} of its peers'{on}"
            if ratio is not None
            else f"noisier than its peers{on}"
        )
        text = f"{subject(f)}: {text}; adjusted p {p_words(p)}{model_note(f)}."
        return Sentence(f.layer, text, anchor, lot_list(f))
    cause = field(f, "cause")
    if f.effect == "metrology" and cause:
        head = _cause_clause(f, cause)
    else:
        on_wafers = _on_its_wafers(f)
        head = f"{subject(f)}: {on_wafers}{'costing' if on_wafers else 'costs'} "
        head += f"{fmt_pp(f.yield_impact)} points of fab yield"
        head += f" (95 % interval {loss_interval(f.ci_low, f.ci_high)})"
    text = f"{head}; adjusted p {p_words(p)}"
    material = field(f, "material")
    if material is not None:
        text += "; material" if material else "; below the materiality threshold"
    text += model_note(f) + "."
    alias = alias_clause(f)
    if alias:
        text += " " + alias
    return Sentence(f.layer, text, anchor, lot_list(f))


def _on_its_wafers(f: Finding) -> str:
    loss, n_wafers, n_lots = field(f, "loss_on_wafers"), field(f, "n_wafers"), field(f, "n_lots")
    if not finite(loss) or loss <= 0:
        return ""
    text = f"{fmt_num(float(loss), 2)} points lower yield on its"
    text += f" {fmt_num(n_wafers)} wafers" if n_wafers else " wafers"
    text += f" ({fmt_num(n_lots)} lots)" if n_lots else ""
    return text + ", "


def _cause_clause(f: Finding, cause: dict[str, Any]) -> str:
    shift = field(cause, "shift")
    low, high = field(cause, "shift_low"), field(cause, "shift_high")
    unit = field(cause, "unit_note", "")
    unit = f" {unit}" if unit else ""
    if finite(shift) and finite(low) and finite(high) and (low > 0 or high < 0):
        verb = "raises" if shift > 0 else "lowers"
        lo, hi = sorted((abs(low), abs(high)))
        amount = f"{fmt_num(abs(shift), 3)}{unit}"
        interval = f"95 % interval {fmt_num(lo, 3)} to {fmt_num(hi, 3)}"
    else:
        verb, amount = "shifts", f"{fmt_num(shift, 3)}{unit}"
        interval = f"95 % interval {fmt_num(low, 3)} to {fmt_num(high, 3)}"
    sigma = field(cause, "shift_sigma")
    in_sigma = f"{fmt_num(abs(sigma), 2)} sigma; " if finite(sigma) else ""
    text = f"{equipment(cause)} {verb} {f.param} by {amount} ({in_sigma}{interval}), which costs "
    cost = field(cause, "yield_impact")
    if not finite(cost) or abs(cost - f.yield_impact) < 0.005:
        return text + (
            f"{fmt_pp(f.yield_impact)} points of fab yield "
            f"(95 % interval {loss_interval(f.ci_low, f.ci_high)})"
        )
    return text + (
        f"{fmt_pp(max(cost, 0.0))} points of fab yield ({f.param} in all: "
        f"{fmt_pp(f.yield_impact)} points, 95 % interval {loss_interval(f.ci_low, f.ci_high)})"
    )


def alias_clause(f: Finding) -> str:
    """What else the finding's lots ran on, strongest overlap first."""
    aliases = sorted(field(f, "aliases", []), key=lambda a: -float(field(a, "overlap", 0.0)))
    if not aliases:
        named = field(f, "aliased_with")
        return f"Its lots largely also ran on {named.replace(';', ', ')}." if named else ""
    top = aliases[0]
    shared, n_lots = field(top, "shared_lots"), field(f, "n_lots")
    share = f"{fmt_num(shared)} of its {fmt_num(n_lots)} lots" if shared and n_lots else ""
    if not share and finite(field(top, "overlap")):
        share = f"overlap {fmt_num(float(top['overlap']), 2)}"
    text = f"Its lots also ran on {equipment(top)}" + (f" ({share})" if share else "")
    cost = field(top, "yield_impact")
    given = (
        f"that tool's given this one is {fmt_pp(cost)} points"
        if finite(cost) and cost > 0
        else "that tool shows no loss given this one"
    )
    text += (
        f"; both are in the one model, so the cost above is its own given that tool, and {given}"
    )
    if len(aliases) > 1:
        text += f" ({len(aliases) - 1} more in the layer's alias table)"
    return text + "."


def lot_list(f: Finding) -> LotList | None:
    lots = [str(x) for x in field(f, "lots", [])]
    return LotList(subject(f), sorted(lots)) if lots else None


def no_loss_sentence(r: LayerRanking, anchor: str, detectable: str | None) -> Sentence:
    text = f"{NO_LOSS} (adjusted p {p_words(r.p_value)}"
    if detectable:
        text += f"; this data would detect a tool shift of {detectable} points on its wafers"
    return Sentence(r.layer, text + ").", anchor)


# ---- tables -------------------------------------------------------------------------------

# What each column means, keyed by its header: every table below takes its legend from here,
# one entry per column (a header without an entry is a KeyError, not a silent gap).
COLUMNS = {
    "rank": "layers with a significant loss first, by loss; then the others by adjusted p",
    "layer": "a sub-process of the route: the tools, chambers and metrology of its operations",
    "loss (points of fab yield)": (
        "final yield, in percentage points of all the fab's sorted dies, that the fab would "
        "gain if this equipment performed like the typical one of its operation (defined under "
        f'Method); "{NO_LOSS}" when nothing significant costs yield. Never negative.'
    ),
    "95 % interval": (
        "of the loss, in the same points; a bound below 0 is shown as 0 (a loss is not negative)"
    ),
    "adjusted p": (
        "chance of a result this strong in a fab without any real effect, allowing for every "
        "test of this run (family-wise over the whole fab; how: under Method). Below 0.05: "
        "significant."
    ),
    "significant findings": "the layer's equipment and parameters with a significant loss",
    "detectable shift (points)": (
        "smallest shift of one tool, in yield points on that tool's own wafers, that this "
        "fab's data would detect with 80 % power at the adjusted 5 % level (per layer: the "
        "range over its operations). A smaller loss can hide below it."
    ),
    "variance share": (
        "share of the wafer-to-wafer spread of final yield (on the log-odds scale) that the "
        "layer's tools, chambers and metrology carry"
    ),
    "effect": "tool, chamber (against its tool's other chambers) or metrology parameter",
    "where": "the tool, the chamber of a tool, or the metrology parameter, at its operation",
    "loss on its wafers (points)": (
        "how many points lower the yield of the wafers that ran on it is than on the typical "
        "equipment of the operation"
    ),
    "wafers": "how many sorted wafers ran on it",
    "lots": "how many lots ran on it (for a finding, their ids are listed below the table)",
    "model": (
        "the fit the numbers come from: chained = the one model of final yield with every "
        "layer's terms; the others are fits conditional on it, or the parameter's process "
        "model (Method)"
    ),
    "estimate": "the finding's effect on the model's own scale, named in the next column",
    "scale": "the unit of the estimate (see the units below)",
    "unadjusted p": "the finding's own test, before allowing for the run's other tests",
    "parameter": "the inline metrology parameter whose site-to-site spread is larger",
    "SD ratio (x)": (
        "site-to-site standard deviation of the parameter on this equipment over its peers' "
        "(x2: twice as noisy)"
    ),
    "finding": "the finding, as in the table above",
    "its lots also ran on": (
        "a tool or chamber at another operation that ran many of the same lots, so that the "
        "data alone could blame either"
    ),
    "overlap": ("lots shared / lots of the smaller of the two (listed from 0.6 and 3 shared lots)"),
    "shared lots": "how many lots ran on both",
    "its loss given the finding (points)": (
        "the other equipment's loss of fab yield in the same model, with the finding in it"
    ),
    "operation": "a process step of the layer",
    "what is tested": "the operation's tools and chambers together, or one metrology parameter",
    "tools": "how many tools ran the operation",
    "chambers": "how many tool chambers ran the operation",
    "test p": "the operation's own test, given every other operation's equipment",
}
UNITS = [  # the scales of the model-scale estimates
    (
        "log-odds (logit)",
        "log of good over bad dies; -0.1 is about -1.3 points of yield at 85 % (< 0 costs yield)",
    ),
    (
        "standardised slope",
        "change of the log-odds of yield per standard deviation of the parameter",
    ),
    (
        "log variance ratio (log-phi ratio)",
        "log of the site-to-site variance over its peers'; the SD ratio is exp(estimate / 2)",
    ),
]
SCALES = {
    "tool": "log-odds (logit) vs the typical tool",
    "chamber": "log-odds (logit) vs the tool's typical chamber",
    "metrology": "logit per SD of the parameter (standardised slope)",
    "dispersion": "log variance ratio (log-phi ratio) vs the median level",
}


def legend(header: Sequence[str], materiality: float | None = None) -> list[tuple[str, str]]:
    """The legend of a table: every column's meaning, in the table's order."""
    meanings = dict(COLUMNS, material=_material_meaning(materiality))
    return [(h, meanings[h]) for h in header]


def _material_meaning(materiality: float | None) -> str:
    threshold = (
        f"{fmt_pp(materiality)} points of fab yield"
        if finite(materiality)
        else "the run's threshold (this run recorded none)"
    )
    return (
        f"yes when significant and the loss's 95 % interval lies above {threshold}; "
        "– when the run did not decide it"
    )


def ranking_table(
    ranked: Sequence[LayerRanking],
    significant: dict[str, list[Finding]],
    detectable: dict[str, str],
    materiality: float | None,
) -> Table:
    """The ranking in the ranking's order (the Pareto chart uses the same), losses in points."""
    rows, flagged = [], set()
    for i, r in enumerate(ranked):
        loss = layer_has_loss(r)
        label = field(r, "loss_label")
        names = [subject(f) for f in significant.get(r.layer, []) if is_loss(f)]
        rows.append(
            [
                str(r.rank),
                r.layer,
                fmt_pp(r.yield_impact) if loss else (label or NO_LOSS),
                loss_interval(r.ci_low, r.ci_high),
                fmt_p(r.p_value),
                material_word(field(r, "material")),
                "; ".join(names) or "–",
                detectable.get(r.layer, "–"),
                fmt_share(r.variance_share),
            ]
        )
        if loss:
            flagged.add(i)
    header = [
        "rank",
        "layer",
        "loss (points of fab yield)",
        "95 % interval",
        "adjusted p",
        "material",
        "significant findings",
        "detectable shift (points)",
        "variance share",
    ]
    return Table(
        header,
        rows,
        numeric={0, 2, 3, 4, 7, 8},
        flagged=flagged,
        legend=legend(header, materiality),
        legend_open=True,
    )


def findings_table(
    findings: Sequence[Finding],
    p_adj: dict[int, float | None],
    materiality: float | None,
    limit: int,
) -> Table | Unavailable:
    """A layer's yield findings in engineering units; the model-scale estimates are in
    `estimates_table`."""
    if not findings:
        return Unavailable("no localised finding")
    rows, flagged = [], set()
    for i, f in enumerate(findings[:limit]):
        p = p_adj.get(id(f))
        loss_here = field(f, "loss_on_wafers")
        rows.append(
            [
                f.effect,
                subject(f),
                fmt_num(float(loss_here), 3) if finite(loss_here) else "–",
                fmt_num(field(f, "n_wafers")),
                fmt_num(field(f, "n_lots")),
                fmt_pp(f.yield_impact),
                loss_interval(f.ci_low, f.ci_high),
                fmt_p(p),
                material_word(field(f, "material")),
                field(f, "model", "–"),
            ]
        )
        if finite(p) and p < ALPHA:
            flagged.add(i)
    more = len(findings) - limit
    header = [
        "effect",
        "where",
        "loss on its wafers (points)",
        "wafers",
        "lots",
        "loss (points of fab yield)",
        "95 % interval",
        "adjusted p",
        "material",
        "model",
    ]
    return Table(
        header,
        rows,
        numeric={2, 3, 4, 5, 6, 7},
        flagged=flagged,
        note=f"{more} smaller findings not shown (all are in findings.csv)" if more > 0 else None,
        legend=legend(header, materiality),
    )


def estimates_table(findings: Sequence[Finding], limit: int) -> Table | Unavailable:
    """The model-scale estimates behind the findings tables, each with its scale."""
    if not findings:
        return Unavailable("no finding")
    rows = [
        [
            subject(f),
            f.effect,
            fmt_num(f.estimate, 3),
            SCALES.get(f.effect, "model scale"),
            fmt_p(f.p_value),
        ]
        for f in findings[:limit]
    ]
    header = ["where", "effect", "estimate", "scale", "unadjusted p"]
    return Table(header, rows, numeric={2, 4}, legend=legend(header) + UNITS)


def dispersion_table(
    findings: Sequence[Finding], p_adj: dict[int, float | None]
) -> Table | Unavailable:
    if not findings:
        return Unavailable("no chamber or tool is noisier than its peers in this layer's metrology")
    rows, flagged = [], set()
    for i, f in enumerate(findings):
        p = p_adj.get(id(f))
        rows.append(
            [subject(f), f.param or "–", fmt_num(sd_ratio(f), 3), fmt_p(p), field(f, "model", "–")]
        )
        if finite(p) and p < ALPHA:
            flagged.add(i)
    header = ["where", "parameter", "SD ratio (x)", "adjusted p", "model"]
    return Table(header, rows, numeric={2, 3}, flagged=flagged, legend=legend(header))


def aliases_table(findings: Sequence[Finding]) -> Table | Unavailable:
    rows = []
    for f in findings:
        for a in sorted(field(f, "aliases", []), key=lambda a: -float(field(a, "overlap", 0.0))):
            cost = field(a, "yield_impact")
            rows.append(
                [
                    subject(f),
                    equipment(a),
                    fmt_num(field(a, "overlap"), 2),
                    fmt_num(field(a, "shared_lots")),
                    fmt_pp(max(cost, 0.0)) if finite(cost) else "–",
                ]
            )
    if not rows:
        return Unavailable("no finding's lots overlap strongly with equipment at another operation")
    header = [
        "finding",
        "its lots also ran on",
        "overlap",
        "shared lots",
        "its loss given the finding (points)",
    ]
    return Table(header, rows, numeric={2, 3, 4}, legend=legend(header))


def operation_tests(result: AnalysisResult, order: Sequence[str]) -> list[Any]:
    """The run's per-operation tests, its layers in the ranking's order."""
    tests = list(field(result, "operation_tests", []))
    rank = {layer: i for i, layer in enumerate(order)}
    return sorted(tests, key=lambda t: rank.get(str(field(t, "layer", "")), len(rank)))


def operation_tests_table(tests: Sequence[Any]) -> Table | Unavailable:
    """Per operation: its test, and the smallest tool shift this fab's data would detect."""
    if not tests:
        return Unavailable(
            "this run recorded no per-operation tests (it predates them): nothing says how "
            "large a shift it could have seen"
        )
    rows, flagged = [], set()
    for i, t in enumerate(tests):
        p_adj = field(t, "p_adjusted")
        what = "tools and chambers"
        if field(t, "kind", "equipment") == "metrology":
            what = f"metrology {field(t, 'param', '')}".strip()
        rows.append(
            [
                str(field(t, "layer", "–")),
                str(field(t, "operation", "–")),
                what,
                fmt_num(field(t, "n_tools")),
                fmt_num(field(t, "n_chambers")),
                fmt_num(field(t, "n_lots")),
                fmt_p(field(t, "p_value")),
                fmt_p(p_adj),
                fmt_pp(field(t, "detectable_shift")),
            ]
        )
        if finite(p_adj) and p_adj < ALPHA:
            flagged.add(i)
    header = [
        "layer",
        "operation",
        "what is tested",
        "tools",
        "chambers",
        "lots",
        "test p",
        "adjusted p",
        "detectable shift (points)",
    ]
    return Table(header, rows, numeric={3, 4, 5, 6, 7, 8}, flagged=flagged, legend=legend(header))


def detectable_by_layer(tests: Sequence[Any]) -> dict[str, str]:
    """Per layer, the range of its equipment tests' detectable shifts ("1.80 to 4.20")."""
    shifts: dict[str, list[float]] = {}
    for t in tests:
        value = field(t, "detectable_shift")
        if field(t, "kind", "equipment") == "equipment" and finite(value):
            shifts.setdefault(str(field(t, "layer")), []).append(float(value))
    return {
        layer: fmt_pp(min(v)) if min(v) == max(v) else f"{fmt_pp(min(v))} to {fmt_pp(max(v))}"
        for layer, v in shifts.items()
    }


def materiality_sentence(materiality: float | None) -> str:
    if not finite(materiality):
        return (
            "This run recorded no materiality threshold (it predates the rule), so no finding "
            "is marked material or not."
        )
    return (
        f"Material: significant (adjusted p < 0.05) and the loss's 95 % interval above "
        f"{fmt_pp(materiality)} points of fab yield, this run's materiality threshold. A loss "
        "can be real yet smaller than that: then it is significant but not material."
    )
