"""Validation of the excursion search (issue 15) on simulated fabs with known truth.

    PYTHONPATH=$PWD python -m benchmarks.excursion_validation --seeds 20 --lots 300

Per seed, three fabs of 300 lots over about 60 days (`lots_per_day=5`): one with a step
excursion that stays, one with an excursion a PM ends, one null (no excursion; the constant
planted effects of every fab stay). Prints the rates the issue's "Done when" lists.
`analysis_inputs` (drops -> the search's inputs) is shared with the tests.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from flows.analysis.at_risk import at_risk_wafers
from flows.analysis.excursions import (
    Excursion,
    find_excursions,
    time_free_offsets,
)
from flows.analysis.frames import CHAMBER, TOOL
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.fabsim.truth import SimulationTruth

SIXTY_DAYS = {"lots": 300, "lots_per_day": 5.0}


@dataclass
class Inputs:
    passes: pl.DataFrame  # wafer x operation: first pass, with its track-in
    wafers: pl.DataFrame  # sorted wafers with the time-free offset
    sort_yield: pl.DataFrame
    events: pl.DataFrame | None
    lot_variance: float


def _read(truth: SimulationTruth, table: str, drops: int | None = None) -> pl.DataFrame | None:
    dirs = truth.drop_dirs[:drops]
    parts = [pl.read_parquet(p) for d in dirs if (p := d / f"{table}.parquet").exists()]
    return pl.concat(parts) if parts else None


def analysis_inputs(truth: SimulationTruth, drops: int | None = None) -> Inputs:
    """The search's inputs from a simulation's Parquet drops (the first `drops`, default all),
    the time-free model fitted on one frame of every operation's tool and chamber (the fab's
    chained model without time). Wafers without a sort result are in the passes only."""
    steps = _read(truth, "step_history", drops)
    lots, wafers, sort = (_read(truth, t, drops) for t in ("lots", "wafers", "sort_yield"))
    assert steps is not None and lots is not None and wafers is not None and sort is not None
    sort = sort.sort("test_ts").unique("wafer_id", keep="last").sort("wafer_id")
    passes = (
        steps.sort("step_seq")
        .unique(["wafer_id", "operation"], keep="first")
        .join(wafers.select("wafer_id", "lot_id"), on="wafer_id")
        .select("wafer_id", "lot_id", "layer", "operation", "tool_id", "chamber_id", "track_in_ts")
        .sort("operation", "wafer_id")  # one row order: the model's fit does not depend on it
    )
    wide = passes.with_columns(
        pl.concat_str("tool_id", pl.lit(":"), pl.col("chamber_id").fill_null("-")).alias("ch")
    )
    frame = (
        wide.pivot(on="operation", index="wafer_id", values=["tool_id", "ch"])
        .join(wafers.select("wafer_id", "lot_id"), on="wafer_id")
        .join(lots.select("lot_id", "product"), on="lot_id")
        .join(sort.select("wafer_id", "dies_good", "dies_total"), on="wafer_id")
        .sort("wafer_id")
    )
    ops = passes.get_column("operation").unique().sort().to_list()
    frame = frame.rename(
        {f"tool_id_{op}": TOOL + op for op in ops} | {f"ch_{op}": CHAMBER + op for op in ops}
    )
    model = time_free_offsets(frame)
    return Inputs(
        passes=passes,
        wafers=model.offsets.join(
            sort.select("wafer_id", "dies_good", "dies_total"), on="wafer_id"
        ).sort("wafer_id"),
        sort_yield=sort,
        events=_read(truth, "equipment_events", drops),
        lot_variance=model.lot_variance,
    )


def search(truth: SimulationTruth, seed: int = 0) -> tuple[Inputs, list[Excursion]]:
    x = analysis_inputs(truth)
    return x, find_excursions(x.passes, x.wafers, x.lot_variance, x.events, seed=seed)


def matches(exc: Excursion, planted: dict) -> bool:
    return (
        exc.operation == planted["operation"]
        and exc.tool_id == planted["tool_id"]
        and exc.chamber_id == planted["chamber_id"]
    )


def exposed_wafers(x: Inputs, planted: dict) -> set[str]:
    """Wafers processed on the planted equipment from its true onset (to its end)."""
    on = (pl.col("operation") == planted["operation"]) & (pl.col("tool_id") == planted["tool_id"])
    if planted["chamber_id"]:
        on &= pl.col("chamber_id") == planted["chamber_id"]
    window = pl.col("track_in_ts") >= datetime.fromisoformat(planted["onset_ts"])
    if planted["end_ts"]:
        window &= pl.col("track_in_ts") < datetime.fromisoformat(planted["end_ts"])
    return set(x.passes.filter(on & window).get_column("wafer_id").to_list())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--first-seed", type=int, default=1)
    ap.add_argument("--lots", type=int, default=300)
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            t0 = time.perf_counter()
            row: dict = {"seed": seed}
            for kind in ("step", "pm_ended", "null"):
                cfg = FabConfig(
                    **(SIXTY_DAYS | {"lots": args.lots}),
                    excursions=() if kind == "null" else (kind,),
                )
                truth = simulate_fab(Path(tmp) / kind, cfg, seed=seed)
                x, found = search(truth, seed)
                if kind == "null":
                    row["null_any"] = bool(found)
                    row["null_min_p"] = min((f.p_value for f in found), default=1.0)
                    continue
                planted = truth.excursions[0]
                hit = next((f for f in found if matches(f, planted)), None)
                row[f"{kind}_found"] = hit is not None
                row[f"{kind}_others"] = sum(not matches(f, planted) for f in found)
                if hit is None:
                    continue
                onset = datetime.fromisoformat(planted["onset_ts"])
                row[f"{kind}_covered"] = hit.onset_low <= onset <= hit.onset_high
                row[f"{kind}_err_days"] = abs((hit.onset_ts - onset).total_seconds()) / 86400
                lots_on = (
                    x.passes.filter(
                        (pl.col("operation") == hit.operation) & (pl.col("tool_id") == hit.tool_id)
                    )
                    .group_by("lot_id")
                    .agg(pl.col("track_in_ts").min())
                    .get_column("track_in_ts")
                )
                lo, hi = sorted([hit.onset_ts, onset])
                row[f"{kind}_err_lots"] = int(lots_on.is_between(lo, hi).sum())
                if kind == "step":
                    exposed = exposed_wafers(x, planted)
                    listed = set(at_risk_wafers(hit, x.passes, x.sort_yield)["wafer_id"])
                    row["step_recall"] = len(exposed & listed) / len(exposed)
                    row["step_precision"] = len(exposed & listed) / max(len(listed), 1)
                    row["step_active"] = hit.active
                else:
                    row["pm_inactive"] = not hit.active
                    row["pm_end_matched"] = (hit.end_event or "") == planted["event"]
            row["seconds"] = round(time.perf_counter() - t0, 1)
            print(row, flush=True)
            rows.append(row)
    df = pl.DataFrame(rows)
    n = len(rows)

    def count(col: str) -> int:
        return int(df.get_column(col).fill_null(False).sum()) if col in df.columns else 0

    print(f"\n{n} seeds, {args.lots} lots, lots_per_day=5 (about 60 days)")
    print(f"step found at the right equipment       {count('step_found')}/{n}")
    print(f"step true onset inside interval         {count('step_covered')}/{n}")
    for k in ("step", "pm_ended"):
        if f"{k}_err_days" in df.columns:
            print(
                f"{k} median onset error                 "
                f"{np.nanmedian(df[f'{k}_err_days'].to_numpy()):.2f} days, "
                f"{np.nanmedian(df[f'{k}_err_lots'].to_numpy()):.0f} lots"
            )
    print(f"step reported active                    {count('step_active')}/{n}")
    print(f"step at-risk recall 100 %               {int((df['step_recall'] >= 1).sum())}/{n}")
    print(f"step at-risk precision (median)         {df['step_precision'].median():.2f}")
    print(f"pm-ended found at the right equipment   {count('pm_ended_found')}/{n}")
    print(f"pm-ended: active false                  {count('pm_inactive')}/{n}")
    print(f"pm-ended: end matched to the PM         {count('pm_end_matched')}/{n}")
    print(f"pm-ended true onset inside interval     {count('pm_ended_covered')}/{n}")
    print(f"null fabs with any excursion (p<0.05)   {count('null_any')}/{n}")
    print(
        f"other excursions reported (step, pm)    {df['step_others'].sum()}, "
        f"{df['pm_ended_others'].sum()}"
    )
    print(f"seconds per seed (3 fabs), median       {df['seconds'].median()}")


if __name__ == "__main__":
    main()
