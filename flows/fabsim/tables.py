"""The contract tables of a simulated fab as Arrow rows: lots, wafers, step history, metrology,
sort yield and sort dies.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from flows.fabsim.catalogue import EQUIPMENT, PARAM_SITE_SD, PRODUCTS
from flows.fabsim.fab import Fab, WaferTruth

CSV_TIMESTAMP = "%Y-%m-%dT%H:%M:%S"


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
    # optional tables of contract v2, written only when `FabConfig` asks for them
    "equipment_events": pa.schema(
        [
            ("tool_id", pa.string()),
            ("chamber_id", pa.string()),
            ("event_ts", TS),
            ("kind", pa.string()),
            ("note", pa.string()),
        ]
    ),
    "bin_defs": pa.schema([("bin", pa.int64()), ("name", pa.string()), ("good", pa.bool_())]),
}
OPTIONAL_TABLES = ("equipment_events", "bin_defs")


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


# Names of the hard bins `sort_die_rows` writes; bin 1 passes. The definitions agree with the
# contract's default (bin 1 good, every other bin a fail), so delivering them changes no yield.
BIN_NAMES = {1: "PASS", 2: "OPEN_VIA", 3: "SHORT_M1", 4: "LEAKAGE", 5: "IDDQ", 6: "FUNC",
             7: "SPEED", 8: "PARAM"}  # fmt: skip


def bin_def_rows(known_at: float, names: dict[int, str] = BIN_NAMES) -> Rows:
    """The definitions of the bins `sort_die_rows` writes (or `names`), known with the first
    die data."""
    bins = sorted(names)
    data = pa.table(
        {
            "bin": pa.array(bins, type=pa.int64()),
            "name": _strings([names[b] for b in bins]),
            "good": pa.array([b == 1 for b in bins], type=pa.bool_()),
        },
        schema=SCHEMAS["bin_defs"],
    )
    return Rows("bin_defs", data, np.full(len(bins), known_at))


PM_GAP_DAYS = (1.0, 6.0)  # gap between two PMs of a tool: at least, plus an exponential mean
QUAL_AFTER_HOURS = (2.0, 6.0)  # a qualification follows each PM


def equipment_event_rows(fab: Fab, rng: np.random.Generator) -> Rows:
    """A few PMs per tool over the simulated period, each followed by a qual.

    A tool's first PM falls at a uniform time of its active window (from when it has processed
    its first lot to the fab's last step), the next ones at least PM_GAP_DAYS[0] days apart.
    On a tool with several chambers a PM is of one chamber or (as often) of the whole tool
    (chamber_id null). An event is known, and so delivered, at its own time, which is never
    before the tool and every one of its chambers appear in the step history: the contract
    requires its tool and chamber to have been seen there, in the same drop or an earlier one.
    No other table draws from this generator, so asking for events changes nothing else.
    """
    r = fab.route
    done = fab.op_start + fab.op_span  # (lot, op): every chamber's first wafer is out by then
    end = int(done.max())
    tools, chambers, times, kinds, notes = [], [], [], [], []
    for t in range(len(r.tool_name)):
        j = int(r.tool_op[t])
        n_ch = int(r.tool_chambers[t])
        # lots that put a wafer on each chamber (wafer k of the order goes to chamber k % n_ch)
        full = (fab.tool[:, j] == t) & (fab.n_wafers >= n_ch)
        if not full.any():
            continue  # a tool that never saw a full lot gets no events: its chambers are unsure
        seen = int(done[full, j].min()) + 60
        if seen >= end:
            continue
        at = seen + rng.uniform(0, end - seen)
        pms = []
        while at < end:
            pms.append(int(at))
            at += (PM_GAP_DAYS[0] + rng.exponential(PM_GAP_DAYS[1])) * 86400
        for pm in pms:
            whole = n_ch == 1 or rng.random() < 0.5
            chamber = None if whole else f"CH{int(rng.integers(n_ch)) + 1}"
            qual = pm + int(rng.uniform(*QUAL_AFTER_HOURS) * 3600)
            for ts, kind, note in ((pm, "pm", "scheduled PM"), (qual, "qual", None)):
                tools.append(r.tool_name[t])
                chambers.append(chamber)
                times.append(ts)
                kinds.append(kind)
                notes.append(note)
    known = np.array(times, dtype=np.int64)
    data = pa.table(
        {
            "tool_id": pa.array(tools, type=pa.string()),
            "chamber_id": pa.array(chambers, type=pa.string()),
            "event_ts": _ts(known),
            "kind": pa.array(kinds, type=pa.string()),
            "note": pa.array(notes, type=pa.string()),
        },
        schema=SCHEMAS["equipment_events"],
    )
    return Rows("equipment_events", data, known)
