"""The fab: lots and wafers on the route, the planted sites, and each wafer's true yield logit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import numpy as np
import pyarrow as pa

from flows.fabsim.catalogue import (
    EQUIPMENT,
    PARAM_CHAMBER_SD,
    PARAM_LOT_SD,
    PARAM_TOOL_SD,
    PARAM_WAFER_SD,
    PRODUCTS,
)
from flows.fabsim.config import PlantedSizes, YieldModel
from flows.fabsim.route import Route

# ---------------------------------------------------------------------------------------------
# Lots, wafers, tool assignment and the lot timeline
# ---------------------------------------------------------------------------------------------


@dataclass
class Fab:
    """Every lot- and wafer-level draw; step and measurement rows are expanded from it in chunks."""

    route: Route
    lot_id: np.ndarray  # str
    lot_product: np.ndarray  # product index
    lot_start: np.ndarray  # seconds since epoch
    n_wafers: np.ndarray  # per lot
    wafer_start: np.ndarray  # first wafer index of each lot
    tool: np.ndarray  # (lot, op) -> global tool index
    # (wafer, op) -> the wafer's place in the lot's processing order at that operation: an
    # independent random permutation per lot and operation. Dealing in this order round-robin
    # spreads a lot evenly over a tool's chambers; drawing it afresh per operation keeps the
    # chambers of different operations (and layers) from sharing the same wafers by slot.
    wafer_order: np.ndarray
    op_start: np.ndarray  # (lot, op) -> seconds: first track-in
    op_span: np.ndarray  # (lot, op) -> seconds the lot occupies the tool
    rework: np.ndarray  # (lot, op) -> bool: a rework pass follows
    rework_start: np.ndarray  # (lot, op) -> seconds
    sort_start: np.ndarray  # lot -> seconds
    wafer_lot: np.ndarray  # wafer -> lot
    wafer_pos: np.ndarray  # wafer -> position in lot, 0..n-1
    wafer_slot: np.ndarray  # wafer -> slot 1..25
    wafer_id: np.ndarray  # str

    @cached_property
    def wafer_ids(self) -> pa.Array:
        return pa.array(self.wafer_id.tolist(), type=pa.string())

    @property
    def n_lots(self) -> int:
        return len(self.lot_id)

    def chamber(self, wafers: np.ndarray, j: int | np.ndarray) -> np.ndarray:
        """Chamber index (within the tool) that processed each wafer at operation j."""
        lots = self.wafer_lot[wafers]
        n_ch = self.route.tool_chambers[self.tool[lots, j]]
        return self.wafer_order[wafers, j] % n_ch

    def wafer_tool(self, wafers: np.ndarray, j: int) -> np.ndarray:
        return self.tool[self.wafer_lot[wafers], j]


def draw_fab(
    rng: np.random.Generator,
    route: Route,
    lots: int,
    wafers_per_lot: int | tuple[int, int],
    start: datetime,
    lots_per_day: float,
    rework_rate: float,
    reroute: Callable[[np.ndarray], None] | None = None,
) -> Fab:
    """`reroute(tool)` may change the (lot, op) tool assignment in place before the lot timeline
    is drawn (correlated dispatch, `flows.fabsim.equipment.Dispatch`)."""
    lo, hi = (wafers_per_lot, wafers_per_lot) if isinstance(wafers_per_lot, int) else wafers_per_lot
    if not 1 <= lo <= hi <= 25:
        raise ValueError(f"wafers_per_lot must lie in 1..25, got {wafers_per_lot}")
    J = route.n_ops
    lot_id = np.array([f"L{i + 1:05d}" for i in range(lots)])
    product = rng.choice(len(PRODUCTS), size=lots, p=[0.5, 0.3, 0.2])
    t0 = int(start.replace(tzinfo=UTC).timestamp())
    lot_start = t0 + np.sort(rng.uniform(0, lots / lots_per_day * 86400, size=lots)).astype(
        np.int64
    )
    n_wafers = rng.integers(lo, hi + 1, size=lots)

    # Slots: a random subset of 1..25 when the lot is not full, in slot order.
    chosen = np.argsort(rng.random((lots, 25)), axis=1)
    slots = np.sort(np.where(np.arange(25)[None, :] < n_wafers[:, None], chosen, 25), axis=1)
    wafer_lot = np.repeat(np.arange(lots), n_wafers)
    wafer_slot = slots[slots < 25] + 1
    wafer_start = np.concatenate([[0], np.cumsum(n_wafers)[:-1]])
    wafer_pos = np.arange(len(wafer_lot)) - wafer_start[wafer_lot]
    wafer_id = np.char.add(
        np.char.add(lot_id[wafer_lot], "-"), np.char.zfill(wafer_slot.astype(str), 2)
    )

    # Tools: each operation's tools carry uneven shares of the lots.
    tool = np.empty((lots, J), dtype=np.int64)
    for j in range(J):
        share = rng.dirichlet(np.full(route.n_tools[j], 4.0))
        tool[:, j] = route.tool_start[j] + rng.choice(route.n_tools[j], size=lots, p=share)
    if reroute is not None:
        reroute(tool)
    wafer_order = _processing_order(rng, wafer_lot, wafer_start, J)

    # The lot timeline: queue, then the lot occupies the tool, then (rarely) a litho rework pass.
    eq = [EQUIPMENT[e] for e in route.op_equipment]
    # At least a minute between operations keeps one wafer's steps strictly in sequence.
    queue = 60 + rng.exponential(1.0, size=(lots, J)) * np.array([e.queue_hours for e in eq]) * 3600
    per_wafer = np.array([e.minutes * 60 for e in eq])
    batch = np.array([e.batch for e in eq])
    n_ch = route.tool_chambers[tool]
    span = np.where(
        batch[None, :],
        per_wafer[None, :] * rng.uniform(0.95, 1.1, size=(lots, J)),
        np.ceil(n_wafers[:, None] / n_ch) * per_wafer[None, :],
    )
    is_litho = np.array([e == "LITHO" for e in route.op_equipment])
    rework = is_litho[None, :] & (rng.random((lots, J)) < rework_rate)
    rework_gap = rng.uniform(1, 4, size=(lots, J)) * 3600
    busy = queue + span + np.where(rework, rework_gap + span, 0.0)
    before = np.cumsum(busy, axis=1) - busy
    op_start = np.floor(lot_start[:, None] + before + queue).astype(np.int64)
    op_span = np.ceil(span).astype(np.int64)
    rework_start = op_start + op_span + rework_gap.astype(np.int64)
    done = lot_start + np.ceil(busy.sum(axis=1)).astype(np.int64)
    sort_start = done + ((1.0 + rng.exponential(2.0, size=lots)) * 86400).astype(np.int64)
    return Fab(
        route=route,
        lot_id=lot_id,
        lot_product=product,
        lot_start=lot_start,
        n_wafers=n_wafers,
        wafer_start=wafer_start,
        tool=tool,
        wafer_order=wafer_order,
        op_start=op_start,
        op_span=op_span,
        rework=rework,
        rework_start=rework_start,
        sort_start=sort_start,
        wafer_lot=wafer_lot,
        wafer_pos=wafer_pos,
        wafer_slot=wafer_slot,
        wafer_id=wafer_id,
    )


def _processing_order(
    rng: np.random.Generator, wafer_lot: np.ndarray, wafer_start: np.ndarray, n_ops: int
) -> np.ndarray:
    """(wafer, op) -> place of the wafer in its lot's processing order, a random permutation
    of 0..n-1 drawn independently for every lot and operation."""
    # Sorting lot + U(0, 1) keys per column keeps each lot's wafers together and shuffles them.
    keys = wafer_lot[:, None] + rng.random((len(wafer_lot), n_ops))
    by_key = np.argsort(keys, axis=0, kind="stable")
    rank = np.empty_like(by_key)
    np.put_along_axis(rank, by_key, np.arange(len(wafer_lot))[:, None], axis=0)
    return (rank - wafer_start[wafer_lot][:, None]).astype(np.uint8)


# ---------------------------------------------------------------------------------------------
# Planted effects: where they sit
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Site:
    """Where one planted effect sits, as indices into the route."""

    kind: str
    layer: int
    op: int
    tool: int
    chamber: int | None = None
    param: int | None = None


def _tool_shares(fab: Fab) -> np.ndarray:
    return np.bincount(fab.tool.ravel(), minlength=len(fab.route.tool_name)) / fab.n_lots


def _candidates(fab: Fab, kind: str, layer: int, shares: np.ndarray) -> list[Site]:
    """Places in `layer` where an effect of `kind` is detectable: a tool carrying 15-50 % of the
    lots (so there is a typical tool to compare with), in an operation with at least two tools;
    a bad chamber sees at least 6 % of the wafers."""
    r = fab.route
    ops = [j for j in np.flatnonzero(r.op_layer == layer) if r.n_tools[j] >= 2]
    out: list[Site] = []
    if kind in ("tool", "chamber"):
        for j in ops:
            if kind == "tool" and r.n_tools[j] < 3:
                continue
            for t in range(r.tool_start[j], r.tool_start[j] + r.n_tools[j]):
                if not 0.15 <= shares[t] <= 0.5:
                    continue
                if kind == "tool":
                    out.append(Site(kind, layer, int(j), t))
                elif r.tool_chambers[t] >= 2 and shares[t] / r.tool_chambers[t] >= 0.06:
                    out += [Site(kind, layer, int(j), t, c) for c in range(r.tool_chambers[t])]
    else:
        for p in range(len(r.params)):
            j = int(r.param_op[p])
            if r.op_layer[j] != layer or j not in ops:
                continue
            for t in range(r.tool_start[j], r.tool_start[j] + r.n_tools[j]):
                if not 0.15 <= shares[t] <= 0.5:
                    continue
                if kind == "metrology":
                    out.append(Site(kind, layer, j, t, None, p))
                elif r.tool_chambers[t] >= 2:
                    out += [Site(kind, layer, j, t, c, p) for c in range(r.tool_chambers[t])]
    return out


def choose_sites(rng: np.random.Generator, fab: Fab, sizes: PlantedSizes) -> list[Site]:
    """Put each wanted effect in its own layer; the noisy chamber avoids the metrology layer."""
    wanted = [
        ("metrology", sizes.metrology_logit_per_unit != 0 and sizes.metrology_shift_units != 0),
        ("chamber", sizes.bad_chamber_logit != 0),
        ("tool", sizes.bad_tool_logit != 0),
    ]
    shares = _tool_shares(fab)
    n_layers = len(fab.route.layers)
    used: set[int] = set()
    sites: list[Site] = []
    for kind, on in wanted:  # most constrained first
        if not on:
            continue
        options = [
            c
            for li in rng.permutation(n_layers)
            if li not in used
            for c in _candidates(fab, kind, int(li), shares)
        ]
        if not options:
            raise ValueError(
                f"cannot plant the {kind} effect: no layer left with a suitable operation "
                f"(route layers {fab.route.layers}); use more layers or more lots"
            )
        site = options[rng.integers(len(options))]
        sites.append(site)
        used.add(site.layer)
    if sizes.noisy_chamber_sd_ratio != 1:
        metro_layer = {s.layer for s in sites if s.kind == "metrology"}
        by_layer = [
            _candidates(fab, "dispersion", int(li), shares)
            for li in rng.permutation(n_layers)
            if li not in metro_layer
        ]
        # Prefer a layer with no yield effect, so the dispersion finding stands alone.
        free = [c for cands in by_layer for c in cands if c.layer not in used]
        options = free or [c for cands in by_layer for c in cands]
        if not options:
            raise ValueError("cannot plant the noisy chamber: no measured multi-chamber tool")
        sites.append(options[rng.integers(len(options))])
    return sites


# ---------------------------------------------------------------------------------------------
# Inline parameters and yield, per wafer
# ---------------------------------------------------------------------------------------------


@dataclass
class WaferTruth:
    z: np.ndarray  # (wafer, param): true wafer-mean deviation from target, in unit_sd
    noise_ratio: np.ndarray  # (wafer, param): sd multiplier (the noisy chamber)
    bowl: np.ndarray  # param -> radial site pattern, unit_sd at the edge
    product_logit: np.ndarray
    dies_total: np.ndarray  # per product
    eta: np.ndarray  # wafer -> yield logit as simulated
    dies_good: np.ndarray  # wafer -> binomial draw
    # per site: what removing its planted effect takes off each wafer's logit (None: no yield term)
    planted_terms: list[np.ndarray | None]
    affected: list[np.ndarray]  # per site: wafers it touches
    param_tool_eff: np.ndarray | None = None  # (param, tool): the parameter's tool effects
    param_chamber_eff: np.ndarray | None = None  # (param, tool, chamber)


def _on(fab: Fab, site: Site, wafers: np.ndarray) -> np.ndarray:
    hit = fab.wafer_tool(wafers, site.op) == site.tool
    if site.chamber is not None:
        hit &= fab.chamber(wafers, site.op) == site.chamber
    return hit


def draw_wafers(
    rng: np.random.Generator,
    fab: Fab,
    sites: list[Site],
    sizes: PlantedSizes,
    model: YieldModel,
    equipment: np.ndarray | None = None,
) -> WaferTruth:
    """`equipment`: each wafer's true equipment offset on the logit (`EquipmentOffsets`)."""
    r = fab.route
    W, P = len(fab.wafer_lot), len(r.params)
    wafers = np.arange(W)
    n_tools_total = len(r.tool_name)
    tool_eff = rng.normal(0, PARAM_TOOL_SD, size=(P, n_tools_total))
    chamber_eff = rng.normal(0, PARAM_CHAMBER_SD, size=(P, n_tools_total, 4))
    lot_eff = rng.normal(0, PARAM_LOT_SD, size=(fab.n_lots, P))
    wafer_eff = rng.normal(0, PARAM_WAFER_SD, size=(W, P))
    bowl = rng.normal(0, 0.5, size=P)
    z = np.empty((W, P))
    ratio = np.ones((W, P), dtype=np.float32)
    for p in range(P):
        j = r.param_op[p]
        t = fab.wafer_tool(wafers, j)
        c = fab.chamber(wafers, j)
        for s in sites:
            if s.param == p and s.kind == "dispersion":
                ratio[_on(fab, s, wafers), p] = sizes.noisy_chamber_sd_ratio
        z[:, p] = tool_eff[p, t] + chamber_eff[p, t, c] + lot_eff[fab.wafer_lot, p]
        z[:, p] += wafer_eff[:, p] * ratio[:, p]
        for s in sites:
            if s.param == p and s.kind == "metrology":
                z[_on(fab, s, wafers), p] += sizes.metrology_shift_units

    product_logit = model.base_logit + rng.normal(0, model.product_sd_logit, size=len(PRODUCTS))
    dies_total = rng.integers(model.dies_total[0], model.dies_total[1] + 1, size=len(PRODUCTS))
    lot_re = rng.normal(0, model.lot_sd_logit, size=fab.n_lots)
    wafer_re = rng.normal(0, model.wafer_sd_logit, size=W)
    eta = product_logit[fab.lot_product[fab.wafer_lot]] + lot_re[fab.wafer_lot] + wafer_re
    if equipment is not None:
        eta = eta + equipment
    planted_terms: list[np.ndarray | None] = []
    affected: list[np.ndarray] = []
    for s in sites:
        hit = _on(fab, s, wafers)
        affected.append(np.flatnonzero(hit))
        if s.kind == "tool":
            term = np.where(hit, sizes.bad_tool_logit, 0.0)
        elif s.kind == "chamber":
            term = np.where(hit, sizes.bad_chamber_logit, 0.0)
        elif s.kind == "metrology":
            term = sizes.metrology_logit_per_unit * z[:, s.param]
        else:
            term = None
        if s.kind == "metrology":
            # Only the tool's shift was planted: the parameter's other variation stays when the
            # effect is removed, so the logit loses just the shift's share on the shifted wafers.
            unshifted = z[:, s.param] - np.where(hit, sizes.metrology_shift_units, 0.0)
            planted_terms.append(term - sizes.metrology_logit_per_unit * unshifted)
        else:
            planted_terms.append(term)
        if term is not None:
            eta = eta + term
    dies_good = rng.binomial(dies_total[fab.lot_product[fab.wafer_lot]], expit(eta))
    return WaferTruth(
        z, ratio, bowl, product_logit, dies_total, eta, dies_good, planted_terms, affected,
        tool_eff, chamber_eff,
    )  # fmt: skip


def expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def yield_gain_points(eta: np.ndarray, term: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean yield gained, in percentage points, if `term` were removed from the logit."""
    if rows is not None:
        eta, term = eta[rows], term[rows]
    if len(eta) == 0:
        return 0.0
    return float(100.0 * np.mean(expit(eta - term) - expit(eta)))
