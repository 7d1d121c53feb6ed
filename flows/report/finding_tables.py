"""The report's tables of the ranking, the findings and the operation tests, in yield points,
each with a legend of its columns (`COLUMNS`; the model-scale estimates with their units in
a detail table of their own). The words for each finding are `attribution`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flows.analysis.results import AnalysisResult, Finding, LayerRanking
from flows.report.attribution import (
    NO_LOSS,
    equipment,
    field,
    finite,
    is_loss,
    layer_has_loss,
    loss_interval,
    material_word,
    sd_ratio,
    subject,
    unit_of,
)
from flows.report.data import Unavailable
from flows.report.model import ALPHA, Table, fmt_num, fmt_p, fmt_pp, fmt_share

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
    "parameter": "the inline metrology parameter",
    "moved by": "the tool (or chamber) whose wafers sit furthest from the typical one's",
    "shift": "how far, in the parameter's own units (its wafers' mean against the typical)",
    "shift in sigma": "the shift over sigma, the SD of the measured wafer means",
    "its cost (points of fab yield)": "the part of the parameter's loss this shift causes",
    "how measured": "what the shift compares, as the analysis recorded it",
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


def chains_table(findings: Sequence[Finding]) -> Table | Unavailable:
    """Metrology findings as cause and effect: which equipment moves the parameter, how far."""
    rows = []
    for f in findings:
        cause = field(f, "cause")
        if f.effect != "metrology" or not cause:
            continue
        cost = field(cause, "yield_impact")
        rows.append(
            [
                f.param or "–",
                equipment(cause),
                fmt_num(field(cause, "shift"), 3) + unit_of(cause),
                f"{fmt_num(field(cause, 'shift_low'), 3)} to {fmt_num(field(cause, 'shift_high'), 3)}",
                fmt_num(field(cause, "shift_sigma"), 2),
                fmt_pp(max(cost, 0.0)) if finite(cost) else "–",
                str(field(cause, "unit_note", "–")),
            ]
        )
    if not rows:
        return Unavailable("no metrology finding of this layer names the equipment that moves it")
    header = [
        "parameter",
        "moved by",
        "shift",
        "95 % interval",
        "shift in sigma",
        "its cost (points of fab yield)",
        "how measured",
    ]
    legend_ = legend(header)
    legend_[3] = ("95 % interval", "of the shift, in the parameter's units")
    return Table(header, rows, numeric={2, 3, 4, 5}, legend=legend_)


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
        if field(t, "reason"):  # a test that could not be made says why
            what += f" (not tested: {field(t, 'reason')})"
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
