"""What the report says about each finding and each layer, in an engineer's words and units.

One sentence per significant finding ("ETCH07 chamber CH3 at CT_ETCH: 4.8 points lower yield
on its 128 wafers (10 lots), costing 0.51 points of fab yield ..."), a metrology finding as
its chain (the tool that moves the parameter, how far, what that costs), the equipment whose
lots overlap a finding's (aliases), each finding's lots, and "no loss found" for a layer
without a significant loss. The tables in the same words and units: `finding_tables`.

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
from flows.report.model import (
    ALPHA,
    LotList,
    Sentence,
    fmt_interval,
    fmt_num,
    fmt_pp,
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


MODEL_WORDS = {  # Finding.model in words
    CHAINED_MODEL: "the chained model",
    "operation test": "the fit of its operation given the chained model",
    "process model": "the parameter's process model",
}


def model_words(model: str) -> str:
    return MODEL_WORDS.get(model, f"the {model}")


def common_model(findings: Sequence[Finding]) -> str | None:
    """The model most of the summary's numbers come from, when it is not the chained model:
    named once before the sentences, and beside a sentence only where it differs."""
    models = [field(f, "model") for f in findings if field(f, "model")]
    if not models:
        return None
    most = max(dict.fromkeys(models), key=models.count)
    return None if most == CHAINED_MODEL else most


def model_note(f: Finding, said: str | None = None) -> str:
    """Which model the sentence's numbers come from, unless the chained one or `said` already."""
    model = field(f, "model")
    return "" if model in (None, CHAINED_MODEL, said) else f" (numbers from {model_words(model)})"


def sentences_lead(model: str | None) -> str:
    lead = "What costs yield, in the ranking's order"
    if model:
        lead += f" (numbers from {model_words(model)} unless a sentence says otherwise)"
    return lead + ":"


# ---- the summary's sentences ----------------------------------------------------------------


def finding_sentence(
    f: Finding, p: float | None, anchor: str, said_model: str | None = None
) -> Sentence:
    """One finding in one sentence, its numbers in engineering units (see the module doc)."""
    if f.effect == "dispersion":
        ratio = sd_ratio(f)
        on = f" on {f.param}" if f.param else ""
        text = (
            f"site-to-site SD x{fmt_num(ratio, 3)} of its peers'{on}"
            if ratio is not None
            else f"noisier than its peers{on}"
        )
        text = f"{subject(f)}: {text}; adjusted p {p_words(p)}{model_note(f, said_model)}."
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
    text += model_note(f, said_model) + "."
    alias = alias_clause(f)
    if alias:
        text += " " + alias
    return Sentence(f.layer, text, anchor, lot_list(f))


def _on_its_wafers(f: Finding) -> str:
    """ "4.8 points lower yield on its 128 wafers (10 lots), " for equipment; a metrology
    parameter's wafers are all the measured ones, where this equals its fab cost."""
    loss, n_wafers, n_lots = field(f, "loss_on_wafers"), field(f, "n_wafers"), field(f, "n_lots")
    if f.effect == "metrology" or not finite(loss) or loss <= 0:
        return ""
    text = f"{fmt_points(float(loss))} points lower yield on its"
    text += f" {fmt_num(n_wafers)} wafers" if n_wafers else " wafers"
    text += f" ({fmt_num(n_lots)} lots)" if n_lots else ""
    return text + ", "


def fmt_points(value: float) -> str:
    """Yield points on a finding's own wafers: one decimal, two below one point."""
    return f"{value:.1f}" if abs(value) >= 1 else f"{value:.2f}"


def _cause_clause(f: Finding, cause: dict[str, Any]) -> str:
    shift = field(cause, "shift")
    low, high = field(cause, "shift_low"), field(cause, "shift_high")
    unit = unit_of(cause)
    if finite(shift) and finite(low) and finite(high) and (low > 0 or high < 0):
        verb = "raises" if shift > 0 else "lowers"
        lo, hi = sorted((abs(low), abs(high)))
        amount = f"{fmt_num(abs(shift), 3)}{unit}"
        interval = f"95 % interval {fmt_num(lo, 3)} to {fmt_num(hi, 3)}"
    else:
        verb, amount = "shifts", f"{fmt_num(shift, 3)}{unit}"
        interval = f"95 % interval {fmt_num(low, 3)} to {fmt_num(high, 3)}"
    sigma = field(cause, "shift_sigma")
    details = [] if unit else ["in its own units"]
    details += [f"{fmt_num(abs(sigma), 2)} sigma"] if finite(sigma) else []
    details.append(interval)
    text = f"{equipment(cause)} {verb} {f.param} by {amount} ({'; '.join(details)}), which costs "
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


def unit_of(cause: dict[str, Any]) -> str:
    """The parameter's unit when `unit_note` is one ("nm"); a longer note says how the shift
    was measured and goes to the layer's chain table, not into the sentence."""
    note = str(field(cause, "unit_note", ""))
    return f" {note}" if note and len(note) <= 10 and " " not in note else ""


def alias_clause(f: Finding) -> str:
    """What else the finding's lots ran on, strongest overlap first, and what each costs given
    the other (both are terms of the one model)."""
    aliases = sorted(field(f, "aliases", []), key=lambda a: -float(field(a, "overlap", 0.0)))
    if not aliases:
        named = field(f, "aliased_with")
        return f"Its lots largely also ran on {named.replace(';', ', ')}." if named else ""
    top = aliases[0]
    shared, overlap = field(top, "shared_lots"), field(top, "overlap")
    share = [f"{fmt_num(shared)} lots shared"] if shared else []
    share += [f"overlap {float(overlap):.2f}"] if finite(overlap) else []
    mine, theirs = short_name(f), short_name(top)
    text = f"Its lots also ran on {equipment(top)}" + (f" ({', '.join(share)})" if share else "")
    cost = field(top, "yield_impact")
    given = (
        f"{theirs}'s given {mine} is {fmt_pp(cost)} points"
        if finite(cost) and cost > 0
        else f"{theirs} shows no loss given {mine}"
    )
    text += (
        f"; both are in the one model: the cost above is {mine}'s own given {theirs}, and {given}"
    )
    if len(aliases) > 1:
        text += f" ({len(aliases) - 1} more in the layer's table of shared lots)"
    return text + "."


def short_name(record: Finding | dict[str, Any]) -> str:
    """A tool or chamber by its ids alone ("ETCH07:CH3"), for a sentence that named it."""
    tool, chamber = field(record, "tool_id", "?"), field(record, "chamber_id")
    return f"{tool}:{chamber}" if chamber else str(tool)


def lot_list(f: Finding) -> LotList | None:
    lots = [str(x) for x in field(f, "lots", [])]
    return LotList(subject(f), sorted(lots)) if lots else None


def no_loss_sentence(r: LayerRanking, anchor: str, detectable: str | None) -> Sentence:
    text = f"{NO_LOSS} (adjusted p {p_words(r.p_value)}"
    if detectable:
        text += f"; this data would detect a tool shift of {detectable} points on its wafers"
    return Sentence(r.layer, text + ").", anchor)


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
