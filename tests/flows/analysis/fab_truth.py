"""The simulated fab's true tool levels of an inline parameter, which `truth.json` does not hold.

Every tool of the simulator moves every parameter a little (a random tool and chamber offset,
`PARAM_TOOL_SD` and `PARAM_CHAMBER_SD` unit SDs) besides the planted shift. A chain's shift is
"the shifting tool against the typical tool", so its truth is that contrast of the tools' true
levels, planted shift and background together. The levels are recomputed here by replaying the
simulator's random stream of the wafers (`flows.fabsim.fab.draw_wafers`) and checked against
the wafers' true values, so that a change of the simulator's draws fails loudly instead of
giving a wrong truth.
"""

from __future__ import annotations

import numpy as np

from flows.fabsim.catalogue import PARAM_CHAMBER_SD, PARAM_LOT_SD, PARAM_TOOL_SD, PARAM_WAFER_SD
from flows.fabsim.config import FabConfig, PlantedSizes
from flows.fabsim.fab import choose_sites, draw_fab, draw_wafers
from flows.fabsim.route import build_route
from flows.fabsim.simulation import _stream


def true_tool_levels(seed: int, config: FabConfig, param: str) -> dict[str, float]:
    """Tool id -> its true mean of `param` minus the target, in the parameter's units, over
    the wafers it ran (tool offset + its chambers' offsets + any planted shift)."""
    c = config
    sizes = c.planted or PlantedSizes(0.0, 0.0, 0.0, 0.0, 1.0)
    route = build_route(_stream(seed, "route"), c.layers, c.ops_per_layer)
    fab = draw_fab(
        _stream(seed, "fab"),
        route,
        c.lots,
        c.wafers_per_lot,
        c.start,
        c.lots_per_day,
        c.rework_rate,
    )
    sites = choose_sites(_stream(seed, "plant"), fab, sizes)
    truth = draw_wafers(_stream(seed, "wafers"), fab, sites, sizes, c.yield_model)
    # the first four draws of draw_wafers, in its order
    rng = _stream(seed, "wafers")
    n_params, n_tools, n_wafers = len(route.params), len(route.tool_name), len(fab.wafer_lot)
    tool_eff = rng.normal(0, PARAM_TOOL_SD, size=(n_params, n_tools))
    chamber_eff = rng.normal(0, PARAM_CHAMBER_SD, size=(n_params, n_tools, 4))
    lot_eff = rng.normal(0, PARAM_LOT_SD, size=(fab.n_lots, n_params))
    wafer_eff = rng.normal(0, PARAM_WAFER_SD, size=(n_wafers, n_params))
    p = next(i for i, spec in enumerate(route.params) if spec.param == param)
    j = int(route.param_op[p])
    wafers = np.arange(n_wafers)
    tool = fab.wafer_tool(wafers, j)
    chamber = fab.chamber(wafers, j)
    shift = np.zeros(n_wafers)
    for s in sites:
        if s.kind == "metrology" and s.param == p:
            shift[tool == s.tool] = sizes.metrology_shift_units
    level = tool_eff[p, tool] + chamber_eff[p, tool, chamber] + shift
    rebuilt = level + lot_eff[fab.wafer_lot, p] + wafer_eff[:, p] * truth.noise_ratio[:, p]
    if not np.allclose(rebuilt, truth.z[:, p]):
        raise AssertionError("the replay of the simulator's parameter draws no longer matches it")
    unit_sd = route.params[p].unit_sd
    return {route.tool_name[t]: float(unit_sd * level[tool == t].mean()) for t in np.unique(tool)}
