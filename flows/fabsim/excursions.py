"""Excursions: equipment effects limited in time, planted on request (`FabConfig.excursions`).

An excursion lowers the yield logit of the wafers a tool (or one of its chambers) processes at
one operation from an onset time on; whether a wafer is hit is decided by its own track-in at
that operation (`wafer_track_in`, the same times `tables.step_rows` writes), so a lot that is
on the tool when the excursion starts can be hit in part. Three kinds:

- `step`: `size_logit` from a random onset to the end of the data (still active);
- `pm_ended`: `size_logit` from a random onset until a PM of that tool or chamber, which is
  written to `equipment_events` (with its qual) at the end time;
- `drift`: one chamber drifts linearly from 0 at its onset to `size_logit` at the chamber's
  last wafer (a slow degradation, still active).

The onsets fall between the 15th and 75th percentile of the equipment's own track-in times, so
wafers exist on both sides. Each excursion sits at its own operation, away from the
operations of the constant planted effects. A `recipe_change` on the equipment shortly before
the onset of a step or PM-ended excursion is written too: the cause an engineer would find.
Everything here draws from its own random stream, so planting excursions changes no other
draw of the seed (the yields change, on the hit wafers only).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from flows.fabsim.catalogue import EQUIPMENT
from flows.fabsim.fab import Fab, Site, WaferTruth, expit, yield_gain_points
from flows.fabsim.tables import SCHEMAS, TS, Rows

EXCURSION_KINDS = ("step", "pm_ended", "drift")
QUAL_AFTER_PM_HOURS = 3.0
CAUSE_BEFORE_ONSET_HOURS = (0.5, 6.0)  # the recipe change precedes the onset by this much


@dataclass(frozen=True)
class PlantedExcursion:
    """One planted excursion as `truth.json` lists it (timestamps ISO 8601, UTC, no offset)."""

    kind: str  # "step", "pm_ended", "drift"
    layer: str
    operation: str
    tool_id: str
    chamber_id: str | None  # None: the whole tool
    size_logit: float  # the step; for a drift, its value at the equipment's last wafer
    onset_ts: str
    end_ts: str | None  # pm_ended: the PM's time; None while active
    event: str | None  # the PM that ended it, as `kind@timestamp`
    onset_event: str | None  # the recipe change just before onset, as `kind@timestamp`
    n_wafers_affected: int
    yield_impact_affected: float  # yield points lost on the wafers it hit


@dataclass
class Excursions:
    """What the planted excursions add to each wafer's yield logit, their truth and events."""

    term: np.ndarray  # wafer -> logit added (0 where nothing is hit)
    planted: list[PlantedExcursion] = field(default_factory=list)
    # (tool_id, chamber_id or None, seconds, kind, note)
    events: list[tuple[str, str | None, int, str, str]] = field(default_factory=list)
    terms: list[np.ndarray] = field(default_factory=list)  # per excursion: wafer -> its logit

    def apply(self, fab: Fab, truth: WaferTruth, rng: np.random.Generator) -> None:
        """Add the excursions to the simulated logits and redraw the hit wafers' good dies.

        Only the hit wafers are redrawn, from the excursions' stream: every other wafer keeps
        its draw of the seed (a binomial draw of a changed probability would shift the
        shared stream for all later wafers).
        """
        hit = np.flatnonzero(self.term != 0)
        truth.eta = truth.eta + self.term
        trials = truth.dies_total[fab.lot_product[fab.wafer_lot[hit]]]
        truth.dies_good = truth.dies_good.copy()
        truth.dies_good[hit] = rng.binomial(trials, expit(truth.eta[hit]))

    def truth(self, eta: np.ndarray) -> list[dict]:
        """`truth.json`'s `excursions`, with each one's yield loss on the wafers it hit,
        at the simulated logits `eta` (which include every excursion)."""
        out = []
        for e, term in zip(self.planted, self.terms, strict=True):
            hit = np.flatnonzero(term != 0)
            loss = yield_gain_points(eta, term, hit)
            out.append(asdict(replace(e, yield_impact_affected=loss)))
        return out

    def event_rows(self) -> Rows:
        """The PMs, quals and recipe changes of the excursions as `equipment_events` rows."""
        tools, chambers, seconds, kinds, notes = zip(*self.events, strict=True)
        known = np.array(seconds, dtype=np.int64)
        data = pa.table(
            {
                "tool_id": pa.array(tools, type=pa.string()),
                "chamber_id": pa.array(chambers, type=pa.string()),
                "event_ts": pa.array(known * 1_000_000, type=pa.int64()).cast(TS),
                "kind": pa.array(kinds, type=pa.string()),
                "note": pa.array(notes, type=pa.string()),
            },
            schema=SCHEMAS["equipment_events"],
        )
        return Rows("equipment_events", data, known)


def wafer_track_in(fab: Fab, wafers: np.ndarray, op: int) -> np.ndarray:
    """Seconds at which each wafer's first pass tracks in at operation `op`.

    A batch tool takes the lot at once; otherwise the wafers are dealt over the chambers in
    their processing order, one per `minutes` per chamber (as `tables.step_rows` writes them).
    """
    lots = fab.wafer_lot[wafers]
    n_ch = fab.route.tool_chambers[fab.tool[lots, op]]
    spec = EQUIPMENT[fab.route.op_equipment[op]]
    if spec.batch:
        offset = np.zeros(len(wafers), dtype=np.int64)
    else:
        offset = (fab.wafer_order[wafers, op] // n_ch).astype(np.int64) * round(spec.minutes * 60)
    return fab.op_start[lots, op] + offset


def iso(seconds: int) -> str:
    return datetime.fromtimestamp(int(seconds), UTC).replace(tzinfo=None).isoformat()


def plant_excursions(
    rng: np.random.Generator,
    fab: Fab,
    kinds: tuple[str, ...],
    size_logit: float,
    avoid: list[Site],
) -> Excursions:
    """Place each excursion of `kinds` and compute its logit term per wafer.

    Parameters
    ----------
    rng : the excursions' own random stream
    fab : the drawn fab (route, lots, tools, timeline)
    kinds : which excursions, each at most once (`EXCURSION_KINDS`)
    size_logit : the step's size (or the drift's final size) on the yield logit
    avoid : the constant planted effects; excursions go to other operations

    Returns
    -------
    Excursions : the per-wafer term, the truth and the equipment events to write
    """
    r = fab.route
    wafers = np.arange(len(fab.wafer_lot))
    out = Excursions(term=np.zeros(len(wafers)))
    shares = np.bincount(fab.tool.ravel(), minlength=len(r.tool_name)) / fab.n_lots
    used_ops = {s.op for s in avoid}
    for kind in kinds:
        options = [
            (j, t)
            for j in range(r.n_ops)
            if j not in used_ops and r.n_tools[j] >= 2
            for t in range(r.tool_start[j], r.tool_start[j] + r.n_tools[j])
            if 0.15 <= shares[t] <= 0.5 and (kind != "drift" or r.tool_chambers[t] >= 2)
        ]
        if not options:
            raise ValueError(
                f"cannot plant the {kind} excursion: no free operation with a tool carrying "
                "15-50 % of the lots (and, for a drift, several chambers)"
            )
        j, t = options[rng.integers(len(options))]
        used_ops.add(j)
        n_ch = int(r.tool_chambers[t])
        on_chamber = n_ch >= 2 and (kind == "drift" or rng.random() < 0.5)
        chamber = int(rng.integers(n_ch)) if on_chamber else None
        mine = wafers[fab.wafer_tool(wafers, j) == t]
        if chamber is not None:
            mine = mine[fab.chamber(mine, j) == chamber]
        when = wafer_track_in(fab, mine, j)
        lo, hi = {"step": (0.25, 0.75), "pm_ended": (0.15, 0.4), "drift": (0.1, 0.4)}[kind]
        onset = int(np.quantile(when, rng.uniform(lo, hi)))
        end = int(np.quantile(when, rng.uniform(0.6, 0.85))) if kind == "pm_ended" else None
        hit = (when >= onset) & (when < end if end is not None else True)
        if kind == "drift":
            ramp = (when - onset) / max(1, int(when.max()) - onset)
            term = np.where(hit, size_logit * ramp, 0.0)
        else:
            term = np.where(hit, size_logit, 0.0)
        out.term[mine] += term
        tool_id = r.tool_name[t]
        chamber_id = None if chamber is None else f"CH{chamber + 1}"
        onset_event = None
        if kind != "drift":
            cause = onset - int(rng.uniform(*CAUSE_BEFORE_ONSET_HOURS) * 3600)
            out.events.append((tool_id, chamber_id, cause, "recipe_change", "recipe release"))
            onset_event = f"recipe_change@{iso(cause)}"
        event = None
        if end is not None:
            qual = end + int(QUAL_AFTER_PM_HOURS * 3600)
            out.events.append((tool_id, chamber_id, end, "pm", "unscheduled PM"))
            out.events.append((tool_id, chamber_id, qual, "qual", "after PM"))
            event = f"pm@{iso(end)}"
        full = np.zeros(len(wafers))
        full[mine] = term
        out.terms.append(full)
        out.planted.append(
            PlantedExcursion(
                kind=kind,
                layer=r.layers[r.op_layer[j]],
                operation=r.op_name[j],
                tool_id=tool_id,
                chamber_id=chamber_id,
                size_logit=float(size_logit),
                onset_ts=iso(onset),
                end_ts=None if end is None else iso(end),
                event=event,
                onset_event=onset_event,
                n_wafers_affected=int(hit.sum()),
                yield_impact_affected=0.0,  # known once the yields are drawn: `truth`
            )
        )
    return out
