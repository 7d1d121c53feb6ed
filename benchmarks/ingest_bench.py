"""Ingestion speed and memory against DuckDB's own unchecked insert of the same Parquet files.

    .venv/bin/python benchmarks/ingest_bench.py                      # the simulated year
    .venv/bin/python benchmarks/ingest_bench.py --repeat 3 --work /tmp/ib   # keep and reuse it
    .venv/bin/python benchmarks/ingest_bench.py --lots 3000          # a quarter, quicker

The simulated year: `flows.fabsim.simulation.simulate_fab` with 12,000 lots of 25 wafers on the
simulator's full 12-layer route, seed 7 (a 51-operation route: 15.3 M step rows; seed 0 draws
45 operations, 13.5 M), one Parquet drop. Then, each in a fresh process so that peak memory
(max RSS) is that step's alone, interleaved `--repeat` times so load changes on a shared host
hit every step alike:

  raw       INSERT INTO core.<table> BY NAME SELECT * FROM read_parquet(<files>) for every
            table, into a database with the same schema: no checks, no landing, no log
  ingest    flows.warehouse.ingest.ingest_drop with the SQL rules only (gx=False): every rule over
            every row, merge, drop log
  ingest+gx what the pipeline runs: the same plus the Great Expectations suites and their
            data docs. GX is shown, per table, all rows up to --gx-rows (default
            flows.warehouse.contract.GX_MAX_ROWS), else an evenly spaced systematic sample of that many
            rows spread over every file, plus the rows the SQL rules flagged; uniqueness is
            answered by the SQL rule over the whole drop (see flows.warehouse.contract)

Goal (issue 5): ingest <= 2x raw, peak memory < 4 GB. The fastest run of each step counts;
the median is printed beside it, and the ratio of CPU time (all threads of the process), which
other work on a shared host disturbs less than wall time.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TABLES = ("lots", "wafers", "step_history", "inline_meas", "sort_yield", "sort_die")
PHASES = ("raw", "ingest", "ingest+gx")


def table_files(drop: Path) -> dict[str, list[str]]:
    out = {}
    for table in TABLES:
        if (drop / f"{table}.parquet").exists():
            out[table] = [str(drop / f"{table}.parquet")]
        elif (drop / table).is_dir():
            out[table] = sorted(str(p) for p in (drop / table).glob("*.parquet"))
    return out


def run_raw(drop: Path, db: Path) -> dict:
    from flows.warehouse.db import connect

    con = connect(db)  # the same schema; created before the clock starts
    try:
        t0, cpu0 = time.perf_counter(), time.process_time()
        rows = {}
        for table, files in table_files(drop).items():
            (n,) = con.execute(
                f"INSERT INTO core.{table} BY NAME SELECT *, 'raw' AS drop_id, "
                "'raw' AS source_file FROM read_parquet($files, union_by_name = true)",
                {"files": files},
            ).fetchall()[0]
            rows[table] = int(n)
        seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    finally:
        con.close()
    return {"seconds": seconds, "cpu_s": cpu, "rows": rows}


def run_ingest(drop: Path, db: Path, gx: bool, gx_rows: int, docs: Path) -> dict:
    from flows.warehouse.db import connect
    from flows.warehouse.ingest import ingest_drop

    connect(db).close()  # the same schema; created before the clock starts
    t0, cpu0 = time.perf_counter(), time.process_time()
    result = ingest_drop(drop, db, gx=gx, gx_max_rows=gx_rows, docs_dir=docs if gx else None)
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    if result.status != "merged":
        raise SystemExit(f"ingest did not merge: {[str(p) for p in result.errors]}")
    shown = {r.table: f"{r.rows_checked:,} of {r.rows_total:,}: {r.sample}" for r in result.gx}
    return {
        "seconds": seconds, "cpu_s": cpu, "rows": result.row_counts,
        "timings": result.timings, "gx": shown,
    }  # fmt: skip


def child(args: argparse.Namespace) -> None:
    drop, db = Path(args.drop), Path(args.db)
    if args.phase == "raw":
        out = run_raw(drop, db)
    else:
        gx = args.phase == "ingest+gx"
        out = run_ingest(drop, db, gx=gx, gx_rows=args.gx_rows, docs=db.parent / "data-docs")
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


def measure(phase: str, drop: Path, work: Path, gx_rows: int) -> dict:
    db = work / f"{phase.replace('+', '_')}.duckdb"
    for stale in (db, db.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    shutil.rmtree(work / "data-docs", ignore_errors=True)
    cmd = [sys.executable, __file__, "--phase", phase, "--drop", str(drop), "--db", str(db)]
    cmd += ["--gx-rows", str(gx_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["db_gb"] = db.stat().st_size / 2**30
    db.unlink(missing_ok=True)  # a year is a few GB; keep the disk for the next step
    return out


def simulate(lots: int, out: Path, seed: int, layers: str) -> tuple[Path, int]:
    """The drop to ingest: simulated into `out`, or reused when `out` already holds it."""
    from flows.fabsim.catalogue import DEFAULT_LAYERS, LAYER_ORDER
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab

    route = LAYER_ORDER if layers == "all" else DEFAULT_LAYERS
    truth_file = out / "truth.json"
    if truth_file.exists():
        truth = json.loads(truth_file.read_text(encoding="utf-8"))
        if (truth["lots"], truth["seed"], truth["layers"]) == (lots, seed, list(route)):
            print(f"reusing {out}: {truth['wafers']:,} wafers, {truth['step_rows']:,} step rows")
            return out / "drop_001", truth["step_rows"]
    t0 = time.perf_counter()
    sim = simulate_fab(out, FabConfig(lots=lots, n_drops=1, fmt="parquet", layers=route), seed=seed)
    print(f"simulated {lots} lots on {len(route)} layers in {time.perf_counter() - t0:.1f} s: "
          f"{sim.wafers:,} wafers, {sim.step_rows:,} step rows")  # fmt: skip
    return sim.drop_dirs[0], sim.step_rows


def main() -> None:
    from flows.warehouse.contract import GX_MAX_ROWS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=12_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--layers", choices=["all", "default"], default="all",
        help="the simulator's full 12-layer route, or its default 8 layers",
    )  # fmt: skip
    parser.add_argument("--gx-rows", type=int, default=GX_MAX_ROWS)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per step, interleaved (noisy hosts)"
    )
    parser.add_argument(
        "--work", type=Path, default=None, help="keep (and reuse) the drop here (default: temp)"
    )
    parser.add_argument("--json", type=Path, default=None, help="write the results here")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--drop", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        drop, _ = simulate(args.lots, work / "fab", args.seed, args.layers)
        size = sum(p.stat().st_size for p in drop.rglob("*") if p.is_file()) / 2**20
        print(f"drop: {drop} ({size:.0f} MB of Parquet)")
        runs: dict[str, list[dict]] = {phase: [] for phase in PHASES}
        for _ in range(args.repeat):
            for phase in PHASES:
                r = measure(phase, drop, work, args.gx_rows)
                runs[phase].append(r)
                print(f"{phase:10s} {r['seconds']:6.1f} s (cpu {r['cpu_s']:6.1f} s)   "
                      f"peak RSS {r['peak_rss_gb']:.2f} GB   {r.get('timings', '')}",
                      flush=True)  # fmt: skip
        rows = runs["raw"][0]["rows"]
        assert all(r["rows"] == rows for phase in PHASES for r in runs[phase]), "row counts differ"
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))
        print("GX was shown, per table (the SQL rules checked every row):")
        for table, shown in runs["ingest+gx"][0]["gx"].items():
            print(f"  {table:12s} {shown}")
        print("  uniqueness: the SQL duplicate_key rule over every row, in GX's result")
        fastest = {p: min(r["seconds"] for r in rs) for p, rs in runs.items()}
        median = {p: statistics.median(r["seconds"] for r in rs) for p, rs in runs.items()}
        cpu = {p: min(r["cpu_s"] for r in rs) for p, rs in runs.items()}
        peak = max(r["peak_rss_gb"] for rs in runs.values() for r in rs)
        summary = {
            "rows": rows, "repeat": args.repeat, "gx_rows": args.gx_rows,
            "fastest_s": fastest, "median_s": median, "peak_rss_gb": peak,
            "ratio_fastest": {p: fastest[p] / fastest["raw"] for p in PHASES[1:]},
            "ratio_median": {p: median[p] / median["raw"] for p in PHASES[1:]},
            "cpu_s": cpu, "ratio_cpu": {p: cpu[p] / cpu["raw"] for p in PHASES[1:]},
            "runs": runs,
        }  # fmt: skip
        print(f"seconds, fastest (median) of {args.repeat}: " + ", ".join(
            f"{p} {fastest[p]:.1f} ({median[p]:.1f})" for p in PHASES))  # fmt: skip
        for phase in PHASES[1:]:
            ratio = summary["ratio_fastest"][phase]
            verdict = "ok" if ratio <= 2 else "OVER the 2x goal"
            print(f"{phase} / raw = {ratio:.2f} ({verdict}); median {summary['ratio_median'][phase]:.2f}, "
                  f"CPU time {summary['ratio_cpu'][phase]:.2f}")  # fmt: skip
        print(f"peak memory {peak:.2f} GB ({'ok' if peak < 4 else 'OVER the 4 GB goal'})")
        if args.json:
            args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
