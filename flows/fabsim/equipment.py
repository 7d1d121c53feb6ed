"""Small real equipment differences, correlated dispatch, and the planted findings' true losses.

No two tools of a real fab are exactly alike: every tool carries a small true yield-logit offset
(default SD 0.02) and every chamber of a multi-chamber tool one of its own (SD 0.015), about 0.2
yield points. They are on by default, in planted and null fabs alike (`FabConfig.equipment_sd`;
`(0, 0)` is the exact null), and drawn from a random stream of their own, so that switching them
off changes the sort results and nothing else of a seed.

Correlated dispatch (`FabConfig.correlated_dispatch=p`): the planted bad tool's lots are routed
with probability p to one chosen tool (the shadow) of an operation in another layer, one that
holds no planted yield effect; the other lots keep their own draw. The shadow then looks bad
through lots it shares with the source, which is what the analysis's aliasing must untangle.

The true losses follow the analysis's definition of a finding's loss (ISSUE14_DESIGN.md): the
points of fab yield gained if the planted level performed like its operation's typical level on
its own wafers, everything else as is. Levels and typical level, at the true effects:

- tool: the tool's offset plus the mean of its chambers' offsets (plus the planted shift);
  typical = the median over the operation's tools (of two middle ones, the better);
- chamber: the chamber's effect minus the mean of the other chambers of its tool (the design's
  contrast); typical = the median of these over every chamber of the operation;
- metrology: the parameter's true level on the tool's wafers (tool and mean chamber effect plus
  the planted shift, in unit_sd); typical = the median tool level (of two, the one with the
  better yield); the loss moves the wafers of every tool whose level costs yield (the
  shifting tool and any other on the costly side of the typical one) to the typical level, as
  the analysis's metrology loss does; `loss_on_wafers` is the shifting tool's alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.fabsim.config import PlantedSizes
from flows.fabsim.fab import Fab, Site, WaferTruth, yield_gain_points
from flows.fabsim.route import Route

# ---------------------------------------------------------------------------------------------
# Equipment offsets
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EquipmentOffsets:
    """True yield-logit offsets: `tool[t]` per global tool index, `chamber[t, c]` per chamber
    (0 for the chambers a tool does not have, and for single-chamber tools, whose one chamber is
    the tool itself)."""

    tool: np.ndarray
    chamber: np.ndarray

    def wafer_logit(self, fab: Fab) -> np.ndarray:
        """Each wafer's summed offset over every operation it went through."""
        wafers = np.arange(len(fab.wafer_lot))
        total = np.zeros(len(wafers))
        for j in range(fab.route.n_ops):
            t = fab.wafer_tool(wafers, j)
            total += self.tool[t] + self.chamber[t, fab.chamber(wafers, j)]
        return total

    def to_json(self, route: Route) -> dict[str, dict[str, float]]:
        """`{"tool": {tool_id: offset}, "chamber": {"TOOL:CHk": offset}}`, multi-chamber tools'
        chambers only, rounded to 1e-6 logit (+ 0.0: no "-0.0" in the exact null)."""
        chambers = {}
        for t, name in enumerate(route.tool_name):
            n = int(route.tool_chambers[t])
            if n > 1:
                chambers |= {
                    f"{name}:CH{c + 1}": round(float(self.chamber[t, c]), 6) + 0.0 for c in range(n)
                }
        tools = {
            name: round(float(self.tool[t]), 6) + 0.0 for t, name in enumerate(route.tool_name)
        }
        return {"tool": tools, "chamber": chambers}


def draw_equipment(
    rng: np.random.Generator, route: Route, sd: tuple[float, float]
) -> EquipmentOffsets:
    """Draw every tool's and chamber's offset, N(0, sd[0]^2) and N(0, sd[1]^2).

    The same numbers are drawn whatever the SDs (scaled standard normals), so a seed's offsets
    only scale with `sd`.

    Parameters
    ----------
    rng : the simulation's "equipment" stream
    route : the fab's route (tools and their chamber counts)
    sd : (tool SD, chamber SD) on the yield logit

    Returns
    -------
    EquipmentOffsets : every tool's and chamber's true offset
    """
    n_tools = len(route.tool_name)
    tool = rng.standard_normal(n_tools) * sd[0]
    chamber = rng.standard_normal((n_tools, 4)) * sd[1]
    chamber[np.arange(4)[None, :] >= route.tool_chambers[:, None]] = 0.0
    chamber[route.tool_chambers == 1] = 0.0
    return EquipmentOffsets(tool, chamber)


# ---------------------------------------------------------------------------------------------
# Correlated dispatch
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Dispatch:
    """The bad tool's lots go to the shadow tool with `probability` (else their own draw)."""

    source_op: int
    source_tool: int
    shadow_op: int
    shadow_tool: int
    probability: float
    uniform: np.ndarray  # lot -> U(0, 1): a source lot moves when below `probability`

    def reroute(self, tool: np.ndarray) -> None:
        """Apply to `Fab.tool` (lot, op) in place, before the lot timeline is drawn."""
        source_lots = tool[:, self.source_op] == self.source_tool
        moved = source_lots & (self.uniform < self.probability)
        tool[moved, self.shadow_op] = self.shadow_tool

    def to_json(self, fab: Fab) -> dict[str, Any]:
        """The shadow as recorded in truth.json, with the realised lot overlap."""
        r = fab.route
        source = fab.tool[:, self.source_op] == self.source_tool
        shadow = fab.tool[:, self.shadow_op] == self.shadow_tool
        shared = int(np.sum(source & shadow))
        return {
            "layer": r.layers[r.op_layer[self.shadow_op]],
            "operation": r.op_name[self.shadow_op],
            "tool_id": r.tool_name[self.shadow_tool],
            "source_layer": r.layers[r.op_layer[self.source_op]],
            "source_operation": r.op_name[self.source_op],
            "source_tool_id": r.tool_name[self.source_tool],
            "probability": self.probability,
            "source_lots": int(source.sum()),
            "shadow_lots": int(shadow.sum()),
            "shared_lots": shared,
            # the design's aliasing measure: |A & B| / min(|A|, |B|)
            "overlap": shared / max(1, min(int(source.sum()), int(shadow.sum()))),
        }


def plan_dispatch(
    rng: np.random.Generator, fab: Fab, sites: list[Site], probability: float
) -> Dispatch:
    """Choose the shadow: a random tool of a random operation with at least three tools (two
    if none has three) in a layer without a planted yield effect.

    Parameters
    ----------
    rng : a stream of its own (the draws of which lots move are made here too)
    fab : the fab as first drawn, whose planted sites are `sites`
    sites : the planted sites; the bad tool's is the source
    probability : the share of the source's lots routed to the shadow

    Returns
    -------
    Dispatch : to pass as `draw_fab(..., reroute=dispatch.reroute)`
    """
    source = next((s for s in sites if s.kind == "tool"), None)
    if source is None:
        raise ValueError("correlated_dispatch needs a planted bad tool (planted.bad_tool_logit)")
    r = fab.route
    planted = {s.layer for s in sites if s.kind in ("tool", "chamber", "metrology")}
    free = [j for j in range(r.n_ops) if r.op_layer[j] not in planted and r.n_tools[j] >= 2]
    ops = [j for j in free if r.n_tools[j] >= 3] or free
    if not ops:
        raise ValueError("correlated_dispatch: no layer without a planted effect has 2+ tools")
    j = int(ops[rng.integers(len(ops))])
    t = int(r.tool_start[j] + rng.integers(r.n_tools[j]))
    return Dispatch(source.op, source.tool, j, t, probability, rng.random(fab.n_lots))


# ---------------------------------------------------------------------------------------------
# True losses of the planted findings
# ---------------------------------------------------------------------------------------------


def _typical(levels: np.ndarray, better_high: bool = True) -> float:
    """The median level; of an even number, the better of the two middle ones."""
    ordered = np.sort(levels)
    n = len(ordered)
    if n % 2:
        return float(ordered[n // 2])
    low, high = ordered[n // 2 - 1], ordered[n // 2]
    return float(high if better_high else low)


@dataclass(frozen=True)
class TrueLoss:
    loss: float  # points of fab yield
    loss_on_wafers: float  # points on the level's own wafers
    param_shift_vs_typical: float | None = None  # metrology: tool level - typical, param units


def true_losses(
    fab: Fab,
    truth: WaferTruth,
    sites: list[Site],
    sizes: PlantedSizes,
    offsets: EquipmentOffsets,
) -> list[TrueLoss | None]:
    """Per site, the true loss as the design defines a finding's loss (module docstring).

    Parameters
    ----------
    fab, truth, sites, sizes : the simulated fab, its wafers, its planted sites and their sizes
    offsets : the fab's equipment offsets

    Returns
    -------
    list : per site a `TrueLoss`, or None for a site without a yield term (the noisy chamber)
    """
    r = fab.route
    wafers = np.arange(len(fab.wafer_lot))
    out: list[TrueLoss | None] = []
    for s, hit in zip(sites, truth.affected, strict=True):
        tools = np.arange(r.tool_start[s.op], r.tool_start[s.op] + r.n_tools[s.op])
        shift_vs_typical = None
        if s.kind == "tool":
            level = np.array(
                [offsets.tool[t] + _chamber_mean(offsets.chamber[t], r, t) for t in tools]
            )
            level[tools == s.tool] += sizes.bad_tool_logit
            diff = level[tools == s.tool][0] - _typical(level)
        elif s.kind == "chamber":
            contrasts, bad = [], 0.0
            for t in tools:
                n = int(r.tool_chambers[t])
                if n < 2:
                    continue
                eff = offsets.chamber[t, :n].copy()
                if t == s.tool:
                    eff[s.chamber] += sizes.bad_chamber_logit
                for c in range(n):
                    contrast = eff[c] - np.delete(eff, c).mean()
                    contrasts.append(contrast)
                    if t == s.tool and c == s.chamber:
                        bad = contrast
            diff = bad - _typical(np.array(contrasts))
        elif s.kind == "metrology":
            assert s.param is not None and truth.param_tool_eff is not None
            assert truth.param_chamber_eff is not None
            p = s.param
            level = np.array(
                [
                    truth.param_tool_eff[p, t] + _chamber_mean(truth.param_chamber_eff[p, t], r, t)
                    for t in tools
                ]
            )
            level[tools == s.tool] += sizes.metrology_shift_units
            slope = sizes.metrology_logit_per_unit
            typical = _typical(level, better_high=slope > 0)
            shift = level[tools == s.tool][0] - typical
            diff = slope * shift
            shift_vs_typical = float(shift * r.params[p].unit_sd)
            # the fab's loss moves every tool on the costly side of the typical one
            fab_term = np.zeros(len(wafers))
            for t, lv in zip(tools, level, strict=True):
                if slope * (lv - typical) < 0:
                    fab_term[fab.wafer_tool(wafers, s.op) == t] = slope * (lv - typical)
        else:
            out.append(None)
            continue
        term = np.zeros(len(wafers))
        term[hit] = diff
        if s.kind != "metrology":
            fab_term = term
        out.append(
            TrueLoss(
                loss=yield_gain_points(truth.eta, fab_term),
                loss_on_wafers=yield_gain_points(truth.eta, term, hit),
                param_shift_vs_typical=shift_vs_typical,
            )
        )
    return out


def _chamber_mean(chamber_row: np.ndarray, route: Route, t: int) -> float:
    return float(chamber_row[: int(route.tool_chambers[t])].mean())
