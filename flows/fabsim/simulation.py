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
by product, lot and wafer, and by the small real differences every tool and chamber carries in
planted and null fabs alike (`FabConfig.equipment_sd`, default SD 0.02 and 0.015 logit; (0, 0)
is the exact null). `FabConfig.correlated_dispatch` routes the bad tool's lots preferentially to
a shadow tool in another layer (`flows/fabsim/equipment.py`).

`truth.json` records what was planted and, per layer, the true yield impact in yield percentage
points: the mean over wafers of (yield probability with the layer's planted effects removed minus
yield probability as simulated), computed from the true probabilities, the realised lot and wafer
effects included. A metrology effect is removed by taking the tool's shift off its wafers'
parameter (every other tool's, lot's and wafer's offset stays) and recomputing their yield logit.

Everything is vectorised over lots and wafers; the step history and the metrology are generated
and written in chunks of lots, so memory stays bounded whatever the number of lots.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from flows.fabsim.catalogue import PRODUCTS
from flows.fabsim.config import DEFAULT_FAB, FabConfig, PlantedSizes
from flows.fabsim.dies import DIE_BIN_NAMES, DieSimulation
from flows.fabsim.drops import DropWriter
from flows.fabsim.equipment import draw_equipment, plan_dispatch, true_losses
from flows.fabsim.excursions import plant_excursions
from flows.fabsim.fab import (
    Fab,
    Site,
    WaferTruth,
    choose_sites,
    draw_fab,
    draw_wafers,
    expit,
    yield_gain_points,
)
from flows.fabsim.route import build_route
from flows.fabsim.tables import (
    BIN_NAMES,
    bin_def_rows,
    equipment_event_rows,
    lot_rows,
    meas_rows,
    sort_die_rows,
    sort_times,
    sort_yield_rows,
    step_rows,
)
from flows.fabsim.truth import (
    TRUTH_SCHEMA,
    PlantedEffect,
    SimulationTruth,
)

# ---------------------------------------------------------------------------------------------
# The simulation
# ---------------------------------------------------------------------------------------------

# a new stream goes at the end: a stream's index is part of its seed
STREAMS = (
    "route",
    "fab",
    "plant",
    "wafers",
    "sort",
    "retest",
    "die",
    "events",
    "equipment",
    "excursions",
)


def _stream(seed: int, name: str, *extra: int) -> np.random.Generator:
    """Independent random streams per purpose, so the null and the planted fab of one seed share
    their route, lots and random effects, and the drop count changes nothing but the split."""
    return np.random.default_rng(
        np.random.SeedSequence(seed, spawn_key=(STREAMS.index(name), *extra))
    )


def simulate_fab(
    out_dir: str | Path, config: FabConfig = DEFAULT_FAB, *, seed: int = 0
) -> SimulationTruth:
    """Simulate a fab and write it as contract drops `out_dir/drop_001, ...` plus `truth.json`.

    `config.planted=None` is the null fab: no planted effect; yield varies by product, lot, wafer
    and the small equipment differences (`config.equipment_sd=(0, 0)`: the exact null).
    With `n_drops > 1` the data are split by when they become known: lots and wafers when they
    start, step history and metrology as steps complete, sort results when tested, so early drops
    carry history without sort results and later drops carry the later lots and the sort results.
    The same seed gives the same fab whatever `n_drops` and `fmt` (`chunk_lots` fixed).

    Parameters
    ----------
    out_dir : an empty or new folder, or one holding a previous simulation (replaced)
    config : the fab's options (`FabConfig`, validated when it is made)
    seed : the random seed; the same seed and config give bit-identical drops

    Returns
    -------
    SimulationTruth : what was planted and delivered, also written to `out_dir/truth.json`
    """
    out_dir = Path(out_dir)
    c = config
    lots, planted, fmt, n_drops, yield_model = c.lots, c.planted, c.fmt, c.n_drops, c.yield_model
    _prepare(out_dir)
    sizes = planted or PlantedSizes(0.0, 0.0, 0.0, 0.0, 1.0)

    route = build_route(_stream(seed, "route"), c.layers, c.ops_per_layer)
    fab_args = (route, lots, c.wafers_per_lot, c.start, c.lots_per_day, c.rework_rate)
    fab = draw_fab(_stream(seed, "fab"), *fab_args)
    sites = choose_sites(_stream(seed, "plant"), fab, sizes)
    dispatch = None
    if c.correlated_dispatch:  # the same fab again, the bad tool's lots routed to the shadow
        dispatch = plan_dispatch(_stream(seed, "equipment", 1), fab, sites, c.correlated_dispatch)
        fab = draw_fab(_stream(seed, "fab"), *fab_args, reroute=dispatch.reroute)
    offsets = draw_equipment(_stream(seed, "equipment"), route, c.equipment_sd)
    truth = draw_wafers(
        _stream(seed, "wafers"), fab, sites, sizes, yield_model, offsets.wafer_logit(fab)
    )
    exc = None
    if c.excursions:
        rng = _stream(seed, "excursions")
        exc = plant_excursions(rng, fab, c.excursions, c.excursion_logit, sites)
        exc.apply(fab, truth, rng)

    # Deliveries cut the timeline at quantiles of lot starts and sort tests together, so with
    # three or more drops some lots first appear in a later drop.
    known = np.concatenate([fab.lot_start, fab.sort_start])
    cuts = np.quantile(known, np.arange(1, n_drops) / n_drops).astype(np.int64)
    dies = None
    if c.dies:
        dies = DieSimulation(seed, fab, truth, sites, c.die_model, null=planted is None)
    bin_names = DIE_BIN_NAMES if dies else BIN_NAMES
    writer = DropWriter(out_dir, cuts, fmt, stdf=c.stdf, bin_names=bin_names)
    for rows in lot_rows(fab):
        writer.write(rows)
    step_total = 0
    for k, first in enumerate(range(0, lots, c.chunk_lots)):
        chunk = slice(first, min(first + c.chunk_lots, lots))
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
                c.meas_lot_fraction,
                c.meas_wafers_per_lot,
            )
        )
    die_lots = _stream(seed, "die").random(lots) < c.sort_die_fraction
    die_lots |= c.dies  # with the die model every sorted wafer has its dies
    die_wafers = np.flatnonzero(die_lots[fab.wafer_lot])
    yield_wafers = np.flatnonzero(~die_lots[fab.wafer_lot])
    writer.write(
        sort_yield_rows(fab, truth, yield_wafers, cuts, _stream(seed, "retest"), c.retest_fraction)
    )
    for k, first in enumerate(range(0, len(die_wafers), 2000)):
        if dies:  # the die model's chunks have streams and a size of their own
            break
        writer.write(
            sort_die_rows(fab, truth, die_wafers[first : first + 2000], _stream(seed, "die", k))
        )
    for rows in dies.sort_die_chunks(die_wafers) if dies else ():
        writer.write(rows)
    if (c.bin_defs or dies) and len(die_wafers):  # the mechanisms' bins are named
        writer.write(bin_def_rows(sort_times(fab)[die_wafers].min(), bin_names))
    if c.equipment_events:
        writer.write(equipment_event_rows(fab, _stream(seed, "events")))
    if exc is not None and exc.events:
        writer.write(exc.event_rows())
    drops = writer.finish()

    losses = true_losses(fab, truth, sites, sizes, offsets)
    planted_effects = [
        e if x is None else replace(e, **asdict(x))
        for e, x in zip(_planted_effects(fab, truth, sites, sizes), losses, strict=True)
    ]
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
            "mean_yield_pct": float(100 * expit(truth.eta).mean()),
        },
        planted=planted_effects,
        layer_yield_impact=_layer_impacts(fab, truth, sites, sizes),
        drops=drops,
        equipment_sd=list(c.equipment_sd),
        equipment_offsets=offsets.to_json(route),
        shadow=None if dispatch is None else dispatch.to_json(fab),
        layer_loss={
            layer: sum((e.loss or 0.0 for e in planted_effects if e.layer == layer), 0.0)
            for layer in route.layers
        },
        out_dir=out_dir,
        excursions=[] if exc is None else exc.truth(truth.eta),
        dies=dies.truth_record() if dies else None,
    )
    result.write(out_dir / "truth.json")
    return result


def _planted_effects(
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
                yield_impact=0.0 if term is None else yield_gain_points(truth.eta, term),
                yield_impact_affected=0.0
                if term is None
                else yield_gain_points(truth.eta, term, hit),
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
