"""A synthetic fab with known truth: contract-true drops and the effects planted in them.

The simulated fab runs lots of 25-slot wafers through one route of layers (sub-processes), each
layer a few operations, each operation a few tools, each tool a few chambers. A lot goes to one
tool per operation; at each operation its wafers are taken in an order of their own (a fresh random
permutation of the lot per operation) and dealt round-robin over that tool's chambers, so each
chamber sees its share of the lot and chambers of different operations do not line up. Inline
metrology is sampled (some lots, a few wafers, several sites) and driven by tool, chamber, lot and
wafer effects. Wafer sort yield is binomial from a logit model with lot and wafer (over-dispersion)
variation plus the planted effects:

- a bad tool (one tool of one operation lowers the yield logit),
- a bad chamber (one chamber of one tool lowers the yield logit),
- a metrology parameter that drives yield (one tool shifts it, the yield logit is linear in it),
- a noisy chamber (larger variance of an inline parameter, no mean shift, no yield effect),

the first three in three different layers. Under the null nothing is planted: yield varies only
by product, lot and wafer.

`truth.json` records what was planted and, per layer, the true yield impact in yield percentage
points: the mean over wafers of (yield probability with the layer's planted effects removed minus
yield probability as simulated), computed from the true probabilities, the realised lot and wafer
effects included. A metrology effect is removed by taking the tool's shift off its wafers'
parameter (every other tool's, lot's and wafer's offset stays) and recomputing their yield logit.

Everything is vectorised over lots and wafers; the step history and the metrology are generated
and written in chunks of lots, so memory stays bounded whatever the number of lots.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

Format = Literal["parquet", "csv", "csv.gz"]
FORMATS: tuple[str, ...] = ("parquet", "csv", "csv.gz")
TRUTH_SCHEMA = "yieldrank.simulate.truth/v1"
CSV_TIMESTAMP = "%Y-%m-%dT%H:%M:%S"

# ---------------------------------------------------------------------------------------------
# The process catalogue: equipment classes, layers in process order, inline parameters.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Equipment:
    """How an equipment class behaves: how many tools and chambers, how long a wafer takes."""

    tools: tuple[int, int]
    chambers: tuple[int, int]
    minutes: float  # per wafer, or per lot for batch tools
    batch: bool  # the whole lot is processed at once (furnaces)
    queue_hours: float  # mean wait before the operation


EQUIPMENT: dict[str, Equipment] = {
    "LITHO": Equipment((2, 5), (1, 1), 1.2, False, 10.0),
    "ETCH": Equipment((2, 6), (2, 4), 3.5, False, 8.0),
    "CVD": Equipment((2, 5), (2, 4), 4.0, False, 8.0),
    "PVD": Equipment((2, 4), (2, 4), 3.0, False, 6.0),
    "CMP": Equipment((2, 5), (1, 4), 2.5, False, 8.0),
    "FURN": Equipment((2, 4), (1, 1), 300.0, True, 12.0),
    "IMPL": Equipment((2, 4), (1, 1), 1.0, False, 8.0),
    "RTP": Equipment((2, 4), (1, 2), 2.0, False, 6.0),
    "WET": Equipment((2, 4), (2, 4), 6.0, False, 4.0),
    "ECP": Equipment((2, 4), (2, 4), 5.0, False, 6.0),
    "ASH": Equipment((2, 4), (1, 2), 1.5, False, 4.0),
}


@dataclass(frozen=True)
class ParamSpec:
    """An inline parameter: measured after `operation`, around `target` with natural scale `unit_sd`."""

    param: str
    operation: str
    target: float
    unit_sd: float
    sites: int


def _p(param: str, operation: str, target: float, unit_sd: float, sites: int = 9) -> ParamSpec:
    return ParamSpec(param, operation, target, unit_sd, sites)


# Layer -> (candidate operations with their equipment class, in process order; inline parameters).
CATALOGUE: dict[str, tuple[list[tuple[str, str]], list[ParamSpec]]] = {
    "STI": (
        [
            ("STI_PAD_OX", "FURN"),
            ("STI_LITHO", "LITHO"),
            ("STI_ETCH", "ETCH"),
            ("STI_FILL", "CVD"),
            ("STI_CMP", "CMP"),
        ],
        [_p("STI_DEPTH", "STI_ETCH", 300.0, 5.0), _p("STI_STEP", "STI_CMP", 25.0, 2.0)],
    ),
    "WELL": (
        [
            ("WELL_LITHO", "LITHO"),
            ("WELL_IMPL", "IMPL"),
            ("WELL_STRIP", "ASH"),
            ("WELL_CLEAN", "WET"),
            ("WELL_ANNEAL", "RTP"),
        ],
        [_p("WELL_RS", "WELL_ANNEAL", 450.0, 8.0, 5)],
    ),
    "GATE": (
        [
            ("GATE_OX", "FURN"),
            ("GATE_DEP", "CVD"),
            ("GATE_LITHO", "LITHO"),
            ("GATE_ETCH", "ETCH"),
            ("GATE_CLEAN", "WET"),
        ],
        [_p("GATE_CD", "GATE_ETCH", 45.0, 0.8), _p("GATE_OX_THK", "GATE_OX", 2.0, 0.03)],
    ),
    "SPACER": (
        [
            ("SPACER_LINER", "FURN"),
            ("SPACER_DEP", "CVD"),
            ("SPACER_ETCH", "ETCH"),
            ("SPACER_ASH", "ASH"),
            ("SPACER_CLEAN", "WET"),
        ],
        [_p("SPACER_WIDTH", "SPACER_ETCH", 12.0, 0.4), _p("SPACER_THK", "SPACER_DEP", 20.0, 0.5)],
    ),
    "SD": (
        [
            ("SD_LITHO", "LITHO"),
            ("SD_IMPL", "IMPL"),
            ("SD_STRIP", "ASH"),
            ("SD_CLEAN", "WET"),
            ("SD_ANNEAL", "RTP"),
        ],
        [_p("SD_RS", "SD_ANNEAL", 85.0, 2.0, 5)],
    ),
    "SILICIDE": (
        [
            ("SIL_PRECLEAN", "WET"),
            ("SIL_DEP", "PVD"),
            ("SIL_RTA1", "RTP"),
            ("SIL_STRIP", "WET"),
            ("SIL_RTA2", "RTP"),
        ],
        [_p("SIL_RS", "SIL_RTA2", 8.0, 0.25, 5)],
    ),
    "CONTACT": (
        [
            ("CT_ILD", "CVD"),
            ("CT_CMP", "CMP"),
            ("CT_LITHO", "LITHO"),
            ("CT_ETCH", "ETCH"),
            ("CT_FILL", "PVD"),
        ],
        [_p("CT_CD", "CT_ETCH", 60.0, 1.2), _p("ILD0_THK", "CT_CMP", 350.0, 6.0)],
    ),
    "M1": (
        [
            ("M1_DEP", "CVD"),
            ("M1_LITHO", "LITHO"),
            ("M1_ETCH", "ETCH"),
            ("M1_PLATE", "ECP"),
            ("M1_CMP", "CMP"),
        ],
        [_p("M1_THK", "M1_CMP", 120.0, 3.0), _p("M1_CD", "M1_ETCH", 50.0, 1.0)],
    ),
    "VIA1": (
        [
            ("V1_DEP", "CVD"),
            ("V1_LITHO", "LITHO"),
            ("V1_ETCH", "ETCH"),
            ("V1_CLEAN", "WET"),
            ("V1_FILL", "PVD"),
        ],
        [_p("V1_CD", "V1_ETCH", 40.0, 0.9)],
    ),
    "M2": (
        [
            ("M2_DEP", "CVD"),
            ("M2_LITHO", "LITHO"),
            ("M2_ETCH", "ETCH"),
            ("M2_PLATE", "ECP"),
            ("M2_CMP", "CMP"),
        ],
        [_p("M2_THK", "M2_CMP", 140.0, 3.5), _p("M2_CD", "M2_ETCH", 56.0, 1.1)],
    ),
    "VIA2": (
        [
            ("V2_DEP", "CVD"),
            ("V2_LITHO", "LITHO"),
            ("V2_ETCH", "ETCH"),
            ("V2_CLEAN", "WET"),
            ("V2_FILL", "PVD"),
        ],
        [_p("V2_CD", "V2_ETCH", 44.0, 1.0)],
    ),
    "M3": (
        [
            ("M3_DEP", "CVD"),
            ("M3_LITHO", "LITHO"),
            ("M3_ETCH", "ETCH"),
            ("M3_PLATE", "ECP"),
            ("M3_CMP", "CMP"),
        ],
        [_p("M3_THK", "M3_CMP", 220.0, 5.0)],
    ),
}
LAYER_ORDER: tuple[str, ...] = tuple(CATALOGUE)
DEFAULT_LAYERS: tuple[str, ...] = ("STI", "WELL", "GATE", "SPACER", "CONTACT", "M1", "VIA1", "M2")
PRODUCTS: tuple[str, ...] = ("ALPHA", "BETA", "GAMMA")

# Inline parameter process model, in units of the parameter's unit_sd.
PARAM_TOOL_SD = 0.3
PARAM_CHAMBER_SD = 0.2
PARAM_LOT_SD = 0.5
PARAM_WAFER_SD = 0.4
PARAM_SITE_SD = 0.5
SITE_RADIUS = np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.95, 0.95, 0.95, 0.95])  # 9-site pattern


# ---------------------------------------------------------------------------------------------
# Public configuration and truth types
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlantedSizes:
    """Sizes of the planted effects; an effect whose size is 0 (ratio 1) is not planted.

    Defaults cost about 3-6 yield points on the wafers each effect touches at ~88 % base yield:
    of the size a yield engineer would chase, and detectable at 300 lots. A tool needs the
    larger shift: a lot runs on one tool per operation, so a tool is compared with its peers
    through lot means, which carry the lot-to-lot variation (0.35 logit), while a chamber is
    compared with its sister chambers inside the same lots. At -0.25 even an oracle that knows
    the operation (an F test of the tools on product-adjusted lot-mean logits) had p < 0.001 in
    only 28 of 40 simulated 300-lot fabs (p up to 0.23), so no ranking could find such a tool
    reliably; at -0.4 it is below 0.001 in 40 of 40 (below 1e-6 in 37; validation.md).
    """

    bad_tool_logit: float = -0.4
    bad_chamber_logit: float = -0.3
    metrology_logit_per_unit: float = -0.2  # yield logit per unit_sd of the parameter
    metrology_shift_units: float = 1.5  # how far the shifting tool moves the parameter, in unit_sd
    noisy_chamber_sd_ratio: float = 2.0  # sd of the noisy chamber's values / sd of the others


@dataclass(frozen=True)
class YieldModel:
    """The sort-yield model: logit(p) = product + lot + wafer + planted terms."""

    base_logit: float = 2.0  # about 88 % yield
    product_sd_logit: float = 0.2
    lot_sd_logit: float = 0.35
    wafer_sd_logit: float = 0.25
    dies_total: tuple[int, int] = (500, 700)


@dataclass(frozen=True)
class PlantedEffect:
    """One planted effect, located as the analysis's `findings` locate theirs."""

    effect: str  # "tool", "chamber", "metrology", "dispersion"
    layer: str
    operation: str
    tool_id: str
    chamber_id: str | None
    param: str | None
    size_logit: float  # the yield-logit shift; per unit_sd of `param` for "metrology"; 0 else
    yield_impact: float  # pp over all wafers: mean(p without this effect - p simulated) * 100
    yield_impact_affected: float  # the same, over the wafers the effect touched
    n_wafers_affected: int
    param_target: float | None = None
    param_unit_sd: float | None = None
    param_shift: float | None = None  # metrology: shift of the tool's wafers, in param units
    sd_ratio: float | None = None  # dispersion: sd ratio of the noisy chamber


@dataclass(frozen=True)
class DropInfo:
    name: str
    path: str  # relative to the simulation folder
    tables: dict[str, int]  # table -> rows


@dataclass
class SimulationTruth:
    """What `truth.json` holds; `SimulationTruth.load(out_dir)` reads it back.

    Keys: `schema`, `seed`, `null`, `lots`, `wafers`, `step_rows`, `format`, `layers` (route
    order), `route` (per operation: layer, operation, step_seq, equipment, tools with their
    chamber ids, None for a single-chamber tool), `params` (param, layer, operation, target,
    unit_sd, sites), `products` (product, route, dies_total, base_logit), `yield_model`,
    `planted` (the PlantedEffect fields), `layer_yield_impact` (every layer -> yield points:
    the ranking's impact definition at the true effects, see `_layer_impacts`; 0.0 where nothing
    is planted) and `drops` (name, path relative to the folder, rows per
    table). Timestamps in the drops are UTC without an offset.
    """

    schema: str
    seed: int
    null: bool
    lots: int
    wafers: int
    step_rows: int
    format: str
    layers: list[str]
    route: list[dict[str, Any]]
    params: list[dict[str, Any]]
    products: list[dict[str, Any]]
    yield_model: dict[str, float]
    planted: list[PlantedEffect]
    layer_yield_impact: dict[str, float]
    drops: list[DropInfo]
    out_dir: Path = field(default=Path("."), compare=False)

    @property
    def drop_dirs(self) -> list[Path]:
        return [self.out_dir / d.path for d in self.drops]

    def effect(self, kind: str) -> PlantedEffect | None:
        """The planted effect of that kind, if any."""
        return next((e for e in self.planted if e.effect == kind), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")
        return d

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, out_dir: str | Path) -> SimulationTruth:
        out_dir = Path(out_dir)
        d = json.loads((out_dir / "truth.json").read_text())
        if d.get("schema") != TRUTH_SCHEMA:
            raise ValueError(
                f"{out_dir / 'truth.json'}: schema {d.get('schema')!r}, not {TRUTH_SCHEMA}"
            )
        d["planted"] = [PlantedEffect(**e) for e in d["planted"]]
        d["drops"] = [DropInfo(**x) for x in d["drops"]]
        return cls(**d, out_dir=out_dir)


# ---------------------------------------------------------------------------------------------
# The route: operations, tools, chambers
# ---------------------------------------------------------------------------------------------


@dataclass
class Route:
    """The route as flat arrays: operation j, tool t (global index), chamber c (within tool)."""

    layers: list[str]
    op_name: list[str]
    op_layer: np.ndarray  # j -> layer index
    op_equipment: list[str]
    step_seq: np.ndarray  # j -> step_seq (10, 20, ...)
    tool_start: np.ndarray  # j -> first global tool index; tools of j are tool_start[j] + k
    n_tools: np.ndarray  # j -> number of tools
    tool_name: list[str]  # t -> tool_id
    tool_op: np.ndarray  # t -> operation
    tool_chambers: np.ndarray  # t -> number of chambers
    params: list[ParamSpec]
    param_op: np.ndarray  # p -> operation index

    @property
    def n_ops(self) -> int:
        return len(self.op_name)

    def to_records(self) -> list[dict[str, Any]]:
        out = []
        for j, op in enumerate(self.op_name):
            tools = range(self.tool_start[j], self.tool_start[j] + self.n_tools[j])
            out.append(
                {
                    "layer": self.layers[self.op_layer[j]],
                    "operation": op,
                    "step_seq": int(self.step_seq[j]),
                    "equipment": self.op_equipment[j],
                    "tools": [
                        {
                            "tool_id": self.tool_name[t],
                            "chambers": _chamber_labels(self.tool_chambers[t]),
                        }
                        for t in tools
                    ],
                }
            )
        return out


def _chamber_labels(n: int) -> list[str | None]:
    # A single-chamber tool reports no chamber: the contract makes chamber_id optional.
    return [None] if n == 1 else [f"CH{c + 1}" for c in range(n)]


def build_route(
    rng: np.random.Generator, layers: Sequence[str], ops_per_layer: tuple[int, int]
) -> Route:
    lo, hi = ops_per_layer
    if not 1 <= lo <= hi <= 5:
        raise ValueError(f"ops_per_layer must satisfy 1 <= low <= high <= 5, got {ops_per_layer}")
    unknown = [x for x in layers if x not in CATALOGUE]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; known layers: {list(CATALOGUE)}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat: {list(layers)}")
    counts = np.arange(lo, hi + 1)
    weights = np.array([0.1, 0.2, 0.35, 0.35, 0.35])[counts - 1]  # most layers have 4-5 steps
    op_name, op_layer, op_eq, n_tools, tool_name, tool_op, tool_ch = [], [], [], [], [], [], []
    params: list[ParamSpec] = []
    serial: dict[str, int] = {}
    for li, layer in enumerate(layers):
        candidates, layer_params = CATALOGUE[layer]
        n = int(rng.choice(counts, p=weights / weights.sum()))
        required = {layer_params[0].operation}  # every layer keeps at least one measured step
        optional = [i for i, (op, _) in enumerate(candidates) if op not in required]
        chosen = set(rng.choice(optional, size=n - len(required), replace=False).tolist())
        chosen |= {i for i, (op, _) in enumerate(candidates) if op in required}
        for i in sorted(chosen):
            op, eq = candidates[i]
            spec = EQUIPMENT[eq]
            j = len(op_name)
            op_name.append(op)
            op_layer.append(li)
            op_eq.append(eq)
            k = int(rng.integers(spec.tools[0], spec.tools[1] + 1))
            n_tools.append(k)
            for _ in range(k):
                serial[eq] = serial.get(eq, 0) + 1
                tool_name.append(f"{eq}{serial[eq]:02d}")
                tool_op.append(j)
                tool_ch.append(int(rng.integers(spec.chambers[0], spec.chambers[1] + 1)))
        params += [p for p in layer_params if p.operation in op_name]
    n_tools_a = np.array(n_tools)
    return Route(
        layers=list(layers),
        op_name=op_name,
        op_layer=np.array(op_layer),
        op_equipment=op_eq,
        step_seq=10 * np.arange(1, len(op_name) + 1),
        tool_start=np.concatenate([[0], np.cumsum(n_tools_a)[:-1]]),
        n_tools=n_tools_a,
        tool_name=tool_name,
        tool_op=np.array(tool_op),
        tool_chambers=np.array(tool_ch),
        params=params,
        param_op=np.array([op_name.index(p.operation) for p in params]),
    )


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
) -> Fab:
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
) -> WaferTruth:
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
    dies_good = rng.binomial(dies_total[fab.lot_product[fab.wafer_lot]], _expit(eta))
    return WaferTruth(
        z, ratio, bowl, product_logit, dies_total, eta, dies_good, planted_terms, affected
    )


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _impact(eta: np.ndarray, term: np.ndarray, rows: np.ndarray | None = None) -> float:
    """Mean yield gained, in percentage points, if `term` were removed from the logit."""
    if rows is not None:
        eta, term = eta[rows], term[rows]
    if len(eta) == 0:
        return 0.0
    return float(100.0 * np.mean(_expit(eta - term) - _expit(eta)))


# ---------------------------------------------------------------------------------------------
# Rows of the contract tables
# ---------------------------------------------------------------------------------------------

TS = pa.timestamp("us")
SCHEMAS: dict[str, pa.Schema] = {
    "lots": pa.schema(
        [
            ("lot_id", pa.string()),
            ("product", pa.string()),
            ("route", pa.string()),
            ("start_ts", TS),
        ]
    ),
    "wafers": pa.schema([("wafer_id", pa.string()), ("lot_id", pa.string()), ("slot", pa.int64())]),
    "step_history": pa.schema(
        [
            ("wafer_id", pa.string()),
            ("step_seq", pa.int64()),
            ("operation", pa.string()),
            ("layer", pa.string()),
            ("tool_id", pa.string()),
            ("chamber_id", pa.string()),
            ("recipe", pa.string()),
            ("track_in_ts", TS),
            ("track_out_ts", TS),
        ]
    ),
    "inline_meas": pa.schema(
        [
            ("wafer_id", pa.string()),
            ("operation", pa.string()),
            ("param", pa.string()),
            ("site", pa.int64()),
            ("value", pa.float64()),
        ]
    ),
    "sort_yield": pa.schema(
        [
            ("wafer_id", pa.string()),
            ("dies_total", pa.int64()),
            ("dies_good", pa.int64()),
            ("test_ts", TS),
        ]
    ),
    "sort_die": pa.schema(
        [
            ("wafer_id", pa.string()),
            ("die_x", pa.int64()),
            ("die_y", pa.int64()),
            ("bin", pa.int64()),
        ]
    ),
}


def _ts(seconds: np.ndarray) -> pa.Array:
    return pa.array((seconds.astype(np.int64) * 1_000_000).view("datetime64[us]"), type=TS)


def _strings(values: Sequence[str]) -> pa.Array:
    return pa.array(list(values), type=pa.string())


@dataclass
class Rows:
    """A batch of one table's rows plus, per row, the time it becomes known (for drop splitting)."""

    table: str
    data: pa.Table
    known_at: np.ndarray  # seconds


def step_rows(fab: Fab, lots: slice, rng: np.random.Generator) -> Rows:
    r = fab.route
    J = r.n_ops
    w0 = fab.wafer_start[lots.start]
    w1 = fab.wafer_start[lots.stop] if lots.stop < fab.n_lots else len(fab.wafer_lot)
    w = np.repeat(np.arange(w0, w1), J)
    j = np.tile(np.arange(J), w1 - w0)
    lot = fab.wafer_lot[w]
    pos = fab.wafer_pos[w]
    t = fab.tool[lot, j]
    n_ch = r.tool_chambers[t]
    order = fab.wafer_order[w, j]
    c = order % n_ch
    eq = [EQUIPMENT[e] for e in r.op_equipment]
    per_wafer = np.array([round(e.minutes * 60) for e in eq])[j]
    batch = np.array([e.batch for e in eq])[j]
    offset = np.where(batch, 0, (order // n_ch) * per_wafer)
    duration = np.where(
        batch, fab.op_span[lot, j], np.ceil(per_wafer * rng.uniform(0.85, 1.0, len(w)))
    )
    track_in = fab.op_start[lot, j] + offset
    step_seq = r.step_seq[j]

    # Litho rework: some wafers of the lot pass the same tool and chamber again, a later step_seq.
    again = fab.rework[lot, j] & ((rng.random(len(w)) < 0.6) | (pos == 0))
    rw = np.flatnonzero(again)
    rework_in = fab.rework_start[lot[rw], j[rw]] + offset[rw]
    w, j, lot, t, c, n_ch, duration = (
        np.concatenate([x, x[rw]]) for x in (w, j, lot, t, c, n_ch, duration)
    )
    step_seq = np.concatenate([step_seq, step_seq[rw] + 5])
    track_in = np.concatenate([track_in, rework_in])
    track_out = track_in + duration.astype(np.int64)

    product = fab.lot_product[lot]
    recipes = [
        f"{op}.{prod}.R{1 + (k * 7 + m) % 4}"
        for k, op in enumerate(r.op_name)
        for m, prod in enumerate(PRODUCTS)
    ]
    chamber_labels = pa.array([f"CH{k + 1}" for k in range(4)])
    data = pa.table(
        {
            "wafer_id": fab.wafer_ids.take(pa.array(w)),
            "step_seq": pa.array(step_seq, type=pa.int64()),
            "operation": _strings(r.op_name).take(pa.array(j)),
            "layer": _strings(r.layers).take(pa.array(r.op_layer[j])),
            "tool_id": _strings(r.tool_name).take(pa.array(t)),
            "chamber_id": chamber_labels.take(pa.array(c, mask=n_ch == 1)),
            "recipe": _strings(recipes).take(pa.array(j * len(PRODUCTS) + product)),
            "track_in_ts": _ts(track_in),
            "track_out_ts": _ts(track_out),
        },
        schema=SCHEMAS["step_history"],
    )
    return Rows("step_history", data, track_out)


SITE_RADII = {
    5: np.array([0.0, 0.7, 0.7, 0.7, 0.7]),
    9: np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.95, 0.95, 0.95, 0.95]),
}


def meas_rows(
    fab: Fab,
    truth: WaferTruth,
    lots: slice,
    rng: np.random.Generator,
    lot_fraction: float,
    wafers_per_lot: int,
) -> Rows:
    r = fab.route
    chunk = np.arange(lots.start, min(lots.stop, fab.n_lots))
    cols: dict[str, list[np.ndarray]] = {
        "wafer": [],
        "param": [],
        "site": [],
        "value": [],
        "known": [],
    }
    for p, spec in enumerate(r.params):
        sel = chunk[rng.random(len(chunk)) < lot_fraction]
        # A few random wafers of each sampled lot, the same sites on each.
        keys = rng.random((len(sel), 25))
        keys[np.arange(25)[None, :] >= fab.n_wafers[sel][:, None]] = 2.0
        pick = np.argsort(keys, axis=1)[:, :wafers_per_lot]
        valid = pick < fab.n_wafers[sel][:, None]
        wafers = (fab.wafer_start[sel][:, None] + pick)[valid]
        radius = SITE_RADII[spec.sites]
        wr = np.repeat(wafers, len(radius))
        site = np.tile(np.arange(len(radius)), len(wafers))
        noise = rng.normal(0, PARAM_SITE_SD, size=len(wr)) * truth.noise_ratio[wr, p]
        units = truth.z[wr, p] + truth.bowl[p] * radius[site] ** 2 + noise
        lot, j = fab.wafer_lot[wr], r.param_op[p]
        cols["wafer"].append(wr)
        cols["param"].append(np.full(len(wr), p))
        cols["site"].append(site + 1)
        cols["value"].append(np.round(spec.target + spec.unit_sd * units, 4))
        cols["known"].append(fab.op_start[lot, j] + fab.op_span[lot, j] + 1800)
    c = {name: np.concatenate(parts) for name, parts in cols.items()}
    data = pa.table(
        {
            "wafer_id": fab.wafer_ids.take(pa.array(c["wafer"], type=pa.int64())),
            "operation": _strings(r.op_name).take(pa.array(r.param_op[c["param"]])),
            "param": _strings([s.param for s in r.params]).take(pa.array(c["param"])),
            "site": pa.array(c["site"], type=pa.int64()),
            "value": pa.array(c["value"], type=pa.float64()),
        },
        schema=SCHEMAS["inline_meas"],
    )
    return Rows("inline_meas", data, c["known"])


def lot_rows(fab: Fab) -> list[Rows]:
    products = _strings(PRODUCTS).take(pa.array(fab.lot_product))
    lots = pa.table(
        {
            "lot_id": _strings(fab.lot_id),
            "product": pc_prefix("P-", products),
            "route": pc_prefix("R-", products),
            "start_ts": _ts(fab.lot_start),
        },
        schema=SCHEMAS["lots"],
    )
    wafers = pa.table(
        {
            "wafer_id": fab.wafer_ids,
            "lot_id": _strings(fab.lot_id).take(pa.array(fab.wafer_lot)),
            "slot": pa.array(fab.wafer_slot, type=pa.int64()),
        },
        schema=SCHEMAS["wafers"],
    )
    return [Rows("lots", lots, fab.lot_start), Rows("wafers", wafers, fab.lot_start[fab.wafer_lot])]


def pc_prefix(prefix: str, values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(prefix, values, "")


def sort_times(fab: Fab) -> np.ndarray:
    """When each wafer is tested: the lot reaches sort, then wafers follow two and a half minutes apart."""
    return fab.sort_start[fab.wafer_lot] + 150 * fab.wafer_pos


def sort_yield_rows(
    fab: Fab,
    truth: WaferTruth,
    wafers: np.ndarray,
    cuts: np.ndarray,
    rng: np.random.Generator,
    retest_fraction: float,
) -> Rows:
    """One row per wafer; with several drops, a few wafers are first delivered with a bad
    (tester-fault) result and re-tested in a later drop, whose later row is the true one."""
    total = truth.dies_total[fab.lot_product[fab.wafer_lot[wafers]]]
    good = truth.dies_good[wafers]
    test = sort_times(fab)[wafers]
    drop = np.searchsorted(cuts, test, side="left")
    retest = np.flatnonzero((drop < len(cuts)) & (rng.random(len(wafers)) < retest_fraction))
    first_good = np.floor(good[retest] * rng.uniform(0.2, 0.9, size=len(retest))).astype(np.int64)
    retest_ts = np.maximum(test[retest] + 86400, cuts[drop[retest]] + 3600)
    w = np.concatenate([wafers[retest], wafers])
    ts = np.concatenate([test[retest], test])
    ts[len(retest) + retest] = retest_ts
    data = pa.table(
        {
            "wafer_id": fab.wafer_ids.take(pa.array(w)),
            "dies_total": pa.array(np.concatenate([total[retest], total]), type=pa.int64()),
            "dies_good": pa.array(np.concatenate([first_good, good]), type=pa.int64()),
            "test_ts": _ts(ts),
        },
        schema=SCHEMAS["sort_yield"],
    )
    return Rows("sort_yield", data, ts)


def die_grid(n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The n die positions nearest the wafer centre on an integer grid, and their radius (0..1)."""
    side = math.ceil(math.sqrt(4 * n / math.pi)) + 4
    x, y = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    centre = (side - 1) / 2
    d = np.hypot(x - centre, y - centre).ravel()
    keep = np.argsort(d, kind="stable")[:n]
    return x.ravel()[keep], y.ravel()[keep], d[keep] / d[keep].max()


BAD_BINS = np.array([2, 3, 4, 5, 6, 7, 8])
BAD_BIN_P = np.array([0.3, 0.2, 0.15, 0.1, 0.1, 0.1, 0.05])


def sort_die_rows(
    fab: Fab, truth: WaferTruth, wafers: np.ndarray, rng: np.random.Generator
) -> Rows:
    """Die bins whose good count is the wafer's binomial draw; failures lean towards the edge."""
    product = fab.lot_product[fab.wafer_lot[wafers]]
    parts = []
    for k in np.unique(product):
        wk = wafers[product == k]
        x, y, radius = die_grid(int(truth.dies_total[k]))
        n = len(x)
        # Failing dies: a weighted sample without replacement (Gumbel top-k), edge-heavy weights.
        keys = np.log1p(3 * radius**4)[None, :] + rng.gumbel(size=(len(wk), n))
        rank = np.empty_like(keys, dtype=np.int64)
        np.put_along_axis(rank, np.argsort(-keys, axis=1), np.arange(n)[None, :], axis=1)
        fail = rank < (n - truth.dies_good[wk])[:, None]
        bins = np.where(fail, rng.choice(BAD_BINS, p=BAD_BIN_P, size=fail.shape), 1)
        parts.append((np.repeat(wk, n), np.tile(x, len(wk)), np.tile(y, len(wk)), bins.ravel()))
    w = np.concatenate([p[0] for p in parts])
    data = pa.table(
        {
            "wafer_id": fab.wafer_ids.take(pa.array(w)),
            "die_x": pa.array(np.concatenate([p[1] for p in parts]), type=pa.int64()),
            "die_y": pa.array(np.concatenate([p[2] for p in parts]), type=pa.int64()),
            "bin": pa.array(np.concatenate([p[3] for p in parts]), type=pa.int64()),
        },
        schema=SCHEMAS["sort_die"],
    )
    return Rows("sort_die", data, sort_times(fab)[w])


# ---------------------------------------------------------------------------------------------
# Writing drops
# ---------------------------------------------------------------------------------------------


class DropWriter:
    """Writes each table of each drop as numbered parts, then folds single parts into one file."""

    def __init__(self, out_dir: Path, cuts: np.ndarray, fmt: str):
        self.out_dir = out_dir
        self.cuts = cuts
        self.fmt = fmt
        self.names = [f"drop_{d + 1:03d}" for d in range(len(cuts) + 1)]
        self.parts: dict[tuple[int, str], list[Path]] = {}
        self.rows: dict[tuple[int, str], int] = {}

    def write(self, rows: Rows) -> None:
        drop = np.searchsorted(self.cuts, rows.known_at, side="left")
        for d in np.unique(drop):
            part = rows.data.filter(pa.array(drop == d)) if len(self.cuts) else rows.data
            key = (int(d), rows.table)
            paths = self.parts.setdefault(key, [])
            folder = self.out_dir / self.names[d] / rows.table
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"part-{len(paths):03d}.{self.fmt}"
            _write_table(part, path, self.fmt)
            paths.append(path)
            self.rows[key] = self.rows.get(key, 0) + part.num_rows

    def finish(self) -> list[DropInfo]:
        drops = []
        for d, name in enumerate(self.names):
            (self.out_dir / name).mkdir(exist_ok=True)
            tables = {}
            for table in SCHEMAS:
                paths = self.parts.get((d, table), [])
                if len(paths) == 1:  # a single part is delivered as a plain file
                    paths[0].rename(self.out_dir / name / f"{table}.{self.fmt}")
                    paths[0].parent.rmdir()
                if paths:
                    tables[table] = self.rows[(d, table)]
            drops.append(DropInfo(name, name, tables))
        return drops


def _write_table(table: pa.Table, path: Path, fmt: str) -> None:
    if fmt == "parquet":
        pq.write_table(table, path, compression="zstd", compression_level=1)
    else:
        pl.from_arrow(table).write_csv(
            path,
            datetime_format=CSV_TIMESTAMP,
            compression="gzip" if fmt == "csv.gz" else "uncompressed",
            check_extension=False,
        )


# ---------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------

DEFAULT_PLANTED = PlantedSizes()
DEFAULT_YIELD = YieldModel()
DEFAULT_START = datetime(2026, 1, 5, 6, 0)
STREAMS = ("route", "fab", "plant", "wafers", "sort", "retest", "die")


def _stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """Independent random streams per purpose, so the null and the planted fab of one seed share
    their route, lots and random effects, and the drop count changes nothing but the split."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(STREAMS.index(name), *extra))
    )


def simulate_fab(
    out_dir: str | Path,
    lots: int = 300,
    seed: int = 0,
    *,
    wafers_per_lot: int | tuple[int, int] = 25,
    planted: PlantedSizes | None = DEFAULT_PLANTED,
    n_drops: int = 1,
    fmt: Format = "parquet",
    layers: Sequence[str] = DEFAULT_LAYERS,
    ops_per_layer: tuple[int, int] = (2, 5),
    yield_model: YieldModel = DEFAULT_YIELD,
    start: datetime = DEFAULT_START,
    lots_per_day: float = 33.0,
    meas_lot_fraction: float = 0.5,
    meas_wafers_per_lot: int = 3,
    rework_rate: float = 0.02,
    retest_fraction: float = 0.01,
    sort_die_fraction: float = 0.02,
    chunk_lots: int = 1000,
) -> SimulationTruth:
    """Simulate a fab and write it as contract drops `out_dir/drop_001, ...` plus `truth.json`.

    `planted=None` is the null fab: no planted effect, yield varies by product, lot and wafer only.
    With `n_drops > 1` the data are split by when they become known: lots and wafers when they
    start, step history and metrology as steps complete, sort results when tested, so early drops
    carry history without sort results and later drops carry the later lots and the sort results.
    The same seed gives the same fab whatever `n_drops` and `fmt` (`chunk_lots` fixed).
    """
    out_dir = Path(out_dir)
    _check_arguments(
        lots, n_drops, fmt, meas_lot_fraction, retest_fraction, sort_die_fraction, chunk_lots
    )
    _prepare(out_dir)
    sizes = planted or PlantedSizes(0.0, 0.0, 0.0, 0.0, 1.0)

    route = build_route(_stream(seed, "route"), layers, ops_per_layer)
    fab = draw_fab(
        _stream(seed, "fab"), route, lots, wafers_per_lot, start, lots_per_day, rework_rate
    )
    sites = choose_sites(_stream(seed, "plant"), fab, sizes)
    truth = draw_wafers(_stream(seed, "wafers"), fab, sites, sizes, yield_model)

    # Deliveries cut the timeline at quantiles of lot starts and sort tests together, so with
    # three or more drops some lots first appear in a later drop.
    known = np.concatenate([fab.lot_start, fab.sort_start])
    cuts = np.quantile(known, np.arange(1, n_drops) / n_drops).astype(np.int64)
    writer = DropWriter(out_dir, cuts, fmt)
    for rows in lot_rows(fab):
        writer.write(rows)
    step_total = 0
    for k, first in enumerate(range(0, lots, chunk_lots)):
        chunk = slice(first, min(first + chunk_lots, lots))
        steps = step_rows(fab, chunk, _stream(seed, "fab", 1, k))
        step_total += steps.data.num_rows
        writer.write(steps)
        del steps
        writer.write(
            meas_rows(
                fab,
                truth,
                chunk,
                _stream(seed, "fab", 2, k),
                meas_lot_fraction,
                meas_wafers_per_lot,
            )
        )
    die_lots = _stream(seed, "die").random(lots) < sort_die_fraction
    die_wafers = np.flatnonzero(die_lots[fab.wafer_lot])
    yield_wafers = np.flatnonzero(~die_lots[fab.wafer_lot])
    writer.write(
        sort_yield_rows(fab, truth, yield_wafers, cuts, _stream(seed, "retest"), retest_fraction)
    )
    for k, first in enumerate(range(0, len(die_wafers), 2000)):
        writer.write(
            sort_die_rows(fab, truth, die_wafers[first : first + 2000], _stream(seed, "die", k))
        )
    drops = writer.finish()

    result = SimulationTruth(
        schema=TRUTH_SCHEMA,
        seed=seed,
        null=planted is None,
        lots=lots,
        wafers=len(fab.wafer_lot),
        step_rows=step_total,
        format=fmt,
        layers=list(route.layers),
        route=route.to_records(),
        params=[
            {
                "param": p.param,
                "layer": route.layers[route.op_layer[j]],
                "operation": p.operation,
                "target": p.target,
                "unit_sd": p.unit_sd,
                "sites": p.sites,
            }
            for p, j in zip(route.params, route.param_op, strict=True)
        ],
        products=[
            {
                "product": f"P-{name}",
                "route": f"R-{name}",
                "dies_total": int(truth.dies_total[k]),
                "base_logit": float(truth.product_logit[k]),
            }
            for k, name in enumerate(PRODUCTS)
        ],
        yield_model={
            "lot_sd_logit": yield_model.lot_sd_logit,
            "wafer_sd_logit": yield_model.wafer_sd_logit,
            "product_sd_logit": yield_model.product_sd_logit,
            "mean_yield_pct": float(100 * _expit(truth.eta).mean()),
        },
        planted=_describe(fab, truth, sites, sizes),
        layer_yield_impact=_layer_impacts(fab, truth, sites, sizes),
        drops=drops,
        out_dir=out_dir,
    )
    result.write(out_dir / "truth.json")
    return result


def _describe(
    fab: Fab, truth: WaferTruth, sites: list[Site], sizes: PlantedSizes
) -> list[PlantedEffect]:
    r = fab.route
    out = []
    for s, term, hit in zip(sites, truth.planted_terms, truth.affected, strict=True):
        spec = r.params[s.param] if s.param is not None else None
        size = {
            "tool": sizes.bad_tool_logit,
            "chamber": sizes.bad_chamber_logit,
            "metrology": sizes.metrology_logit_per_unit,
        }.get(s.kind, 0.0)
        out.append(
            PlantedEffect(
                effect=s.kind,
                layer=r.layers[s.layer],
                operation=r.op_name[s.op],
                tool_id=r.tool_name[s.tool],
                chamber_id=None if s.chamber is None else f"CH{s.chamber + 1}",
                param=spec.param if spec else None,
                size_logit=float(size),
                yield_impact=0.0 if term is None else _impact(truth.eta, term),
                yield_impact_affected=0.0 if term is None else _impact(truth.eta, term, hit),
                n_wafers_affected=len(hit),
                param_target=spec.target if spec else None,
                param_unit_sd=spec.unit_sd if spec else None,
                param_shift=sizes.metrology_shift_units * spec.unit_sd
                if s.kind == "metrology"
                else None,
                sd_ratio=sizes.noisy_chamber_sd_ratio if s.kind == "dispersion" else None,
            )
        )
    return out


def _layer_impacts(
    fab: Fab, truth: WaferTruth, sites: list[Site], sizes: PlantedSizes
) -> dict[str, float]:
    """Each layer's true yield impact: the ranking's own definition at the true parameters.

    The analysis estimates "the mean yield gained if every tool and chamber of the layer
    performed like its typical one and its metrology sat at the typical tool's level"
    (`flows.analysis.ranking.yield_impact`). The truth is that same quantity, computed by the
    same function on the simulated logits and the true effects: a planted tool or chamber is
    the only non-zero level of its term, and a planted metrology parameter enters the logit as
    slope x true value on every wafer, so its truth also counts the parameter's lot and wafer
    variation that the typical tool's level removes (not only the planted tool's shift, which
    `PlantedEffect.yield_impact` reports). Comparing the interval with anything else would
    judge it against a quantity it does not estimate.
    """
    from flows.analysis.ranking import LayerEffects, MetrologyTerm, RandomGroup, yield_impact

    wafers = np.arange(len(fab.wafer_lot))
    out = {}
    for li, layer in enumerate(fab.route.layers):
        mine = [s for s in sites if s.layer == li and s.kind in ("tool", "chamber", "metrology")]
        if not mine:
            out[layer] = 0.0
            continue
        eff = LayerEffects(eta_other=truth.eta.copy())
        for s in mine:
            tools = fab.wafer_tool(wafers, s.op)
            if s.kind == "metrology":
                assert s.param is not None
                b = sizes.metrology_logit_per_unit
                z = truth.z[:, s.param]
                eff.metrology.append(MetrologyTerm(f"param{s.param}", "", None, z, tools))
                eff.beta_all = np.append(eff.beta_all, b)
                eff.beta_index.append(len(eff.beta_all) - 1)
                eff.eta_other = eff.eta_other - b * z
                continue
            if s.kind == "tool":
                key, bad, size = tools, s.tool, sizes.bad_tool_logit
            else:  # a level of the chamber term is one tool's chamber
                n_ch = int(np.max(fab.route.tool_chambers))
                key = tools * n_ch + fab.chamber(wafers, s.op)
                bad, size = s.tool * n_ch + (s.chamber or 0), sizes.bad_chamber_logit
            levels, index = np.unique(key, return_inverse=True)
            est = np.where(levels == bad, size, 0.0)
            eff.groups.append(
                RandomGroup(
                    s.kind, s.kind, str(s.op), [str(x) for x in levels], index, est, 0 * est
                )
            )
            eff.eta_other = eff.eta_other - est[index]
        out[layer] = yield_impact(eff)
    return out


def _check_arguments(
    lots: int,
    n_drops: int,
    fmt: str,
    meas_lot_fraction: float,
    retest_fraction: float,
    sort_die_fraction: float,
    chunk_lots: int,
) -> None:
    if lots < 1:
        raise ValueError(f"lots must be at least 1, got {lots}")
    if n_drops < 1:
        raise ValueError(f"n_drops must be at least 1, got {n_drops}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    if chunk_lots < 1:
        raise ValueError(f"chunk_lots must be at least 1, got {chunk_lots}")
    for name, value in [
        ("meas_lot_fraction", meas_lot_fraction),
        ("retest_fraction", retest_fraction),
        ("sort_die_fraction", sort_die_fraction),
    ]:
        if not 0.0 <= value <= 1.0:
            raise ValueError(f"{name} must lie in [0, 1], got {value}")


def _prepare(out_dir: Path) -> None:
    """An empty or new folder is used as is; a previous simulation there is replaced; a folder
    holding anything else is refused, so a typo cannot wipe real data."""
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a folder")
    content = list(out_dir.iterdir()) if out_dir.exists() else []
    if content:
        ours = [
            p
            for p in content
            if p.name == "truth.json" or (p.is_dir() and p.name.startswith("drop_"))
        ]
        if not (out_dir / "truth.json").is_file() or len(ours) != len(content):
            raise FileExistsError(
                f"{out_dir} is not empty and does not hold a previous simulation; "
                "give an empty or new folder"
            )
        for p in ours:
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    out_dir.mkdir(parents=True, exist_ok=True)
