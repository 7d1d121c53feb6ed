"""Ingesting wafer sort as STDF against the same dies as `sort_die` Parquet, one drop.

    .venv/bin/python benchmarks/stdf_bench.py                 # 12 lots x 25 wafers, all by die
    .venv/bin/python benchmarks/stdf_bench.py --lots 40 --repeat 5 --gx

The same fab (seed) is simulated twice, every wafer sorted by die (`sort_die_fraction=1`): once
with `sort_die.parquet`, once with one STDF V4 file per lot in `sort/` (`FabConfig(stdf=True)`).
Each drop is ingested `--repeat` times, interleaved, each into a fresh database, in this one
process (GX, when on, is warmed up first so that its import is in neither). The whole drop is
ingested (lots, wafers, step history, ... and the dies); the fastest run of each counts, and
its `land` time (reading the files) is shown beside it.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.fabsim.stdf_writer import SIM_STDF_WAFER_ID
from flows.warehouse.ingest import ingest_drop


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lots", type=int, default=12)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--gx", action="store_true", help="also run the GX suites")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="stdf_bench_"))
    try:
        drops = {}
        for way in ("parquet", "stdf"):
            config = FabConfig(lots=args.lots, sort_die_fraction=1.0, stdf=way == "stdf")
            drops[way] = simulate_fab(work / way, config, seed=4).drop_dirs[0]
        if args.gx:  # warm-up: GX's import and first context are not ingestion
            ingest_drop(drops["parquet"], work / "warm.duckdb", stdf_wafer_id=SIM_STDF_WAFER_ID)
        runs: dict[str, list[tuple[float, float, int]]] = {"parquet": [], "stdf": []}
        for k in range(args.repeat):
            for way, drop in drops.items():
                t0 = time.perf_counter()
                result = ingest_drop(
                    drop, work / f"{way}{k}.duckdb", gx=args.gx, stdf_wafer_id=SIM_STDF_WAFER_ID
                )
                seconds = time.perf_counter() - t0
                assert result.status == "merged", [str(p) for p in result.problems]
                runs[way].append((seconds, result.timings["land"], result.row_counts["sort_die"]))
        best = {way: min(r) for way, r in runs.items()}
        for way, (seconds, land, dies) in best.items():
            print(
                f"{way:8} {dies:,} dies: ingest {seconds:.2f} s (land {land:.2f} s), "
                f"{'with' if args.gx else 'without'} GX, best of {args.repeat}"
            )
        print(f"stdf / parquet: {best['stdf'][0] / best['parquet'][0]:.2f}x")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
