"""Ingestion speed and memory against DuckDB's own unchecked insert of the same Parquet files.

    .venv/bin/python benchmarks/ingest_bench.py --lots 3000          # a quarter year
    .venv/bin/python benchmarks/ingest_bench.py --lots 12000         # the simulated year

Simulates one drop with `flows.simulate.simulate_fab` (Parquet), then times, each in a fresh
process so that peak memory (max RSS) is that step's alone:

  raw       INSERT INTO core.<table> BY NAME SELECT * FROM read_parquet(<files>) for every
            table, into a database with the same schema: no checks, no landing, no log
  ingest    flows.ingest.ingest_drop with the SQL rules only (gx=False)
  ingest+gx the same plus the Great Expectations suites over at most --gx-rows rows per table

Goal (issue 5): ingest <= 2x raw, peak memory < 4 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TABLES = ("lots", "wafers", "step_history", "inline_meas", "sort_yield", "sort_die")


def table_files(drop: Path) -> dict[str, list[str]]:
    out = {}
    for table in TABLES:
        if (drop / f"{table}.parquet").exists():
            out[table] = [str(drop / f"{table}.parquet")]
        elif (drop / table).is_dir():
            out[table] = sorted(str(p) for p in (drop / table).glob("*.parquet"))
    return out


def run_raw(drop: Path, db: Path) -> dict:
    from flows.db import connect

    con = connect(db)  # the same schema; created before the clock starts
    try:
        t0 = time.perf_counter()
        rows = {}
        for table, files in table_files(drop).items():
            (n,) = con.execute(
                f"INSERT INTO core.{table} BY NAME SELECT *, 'raw' AS drop_id, "
                "'raw' AS source_file FROM read_parquet($files, union_by_name = true)",
                {"files": files},
            ).fetchall()[0]
            rows[table] = int(n)
        seconds = time.perf_counter() - t0
    finally:
        con.close()
    return {"seconds": seconds, "rows": rows}


def run_ingest(drop: Path, db: Path, gx: bool, gx_rows: int) -> dict:
    from flows.db import connect
    from flows.ingest import ingest_drop

    connect(db).close()  # the same schema; created before the clock starts
    t0 = time.perf_counter()
    result = ingest_drop(drop, db, gx=gx, gx_max_rows=gx_rows)
    seconds = time.perf_counter() - t0
    if result.status != "merged":
        raise SystemExit(f"ingest did not merge: {[str(p) for p in result.errors]}")
    return {"seconds": seconds, "rows": result.row_counts, "timings": result.timings}


def child(args: argparse.Namespace) -> None:
    drop, db = Path(args.drop), Path(args.db)
    if args.phase == "raw":
        out = run_raw(drop, db)
    else:
        out = run_ingest(drop, db, gx=args.phase == "ingest+gx", gx_rows=args.gx_rows)
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    print(json.dumps(out))


def measure(phase: str, drop: Path, work: Path, gx_rows: int) -> dict:
    db = work / f"{phase.replace('+', '_')}.duckdb"
    for stale in (db, db.with_suffix(".duckdb.wal")):
        stale.unlink(missing_ok=True)
    cmd = [sys.executable, __file__, "--phase", phase, "--drop", str(drop), "--db", str(db)]
    cmd += ["--gx-rows", str(gx_rows)]
    done = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{phase} failed:\n{done.stderr[-3000:]}")
    out = json.loads(done.stdout.strip().splitlines()[-1])
    out["db_gb"] = db.stat().st_size / 2**30
    return out


def simulate(lots: int, out: Path, seed: int) -> Path:
    from flows.simulate import simulate_fab

    t0 = time.perf_counter()
    truth = simulate_fab(out, lots, seed, n_drops=1, fmt="parquet")
    print(f"simulated {lots} lots in {time.perf_counter() - t0:.1f} s: {truth.wafers} wafers, "
          f"{truth.step_rows:,} step rows")  # fmt: skip
    return truth.drop_dirs[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=3000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--gx-rows", type=int, default=100_000)
    parser.add_argument(
        "--repeat", type=int, default=1, help="runs per step, the fastest counts (noisy hosts)"
    )
    parser.add_argument("--work", type=Path, default=None, help="keep files here (default: temp)")
    parser.add_argument("--phase", choices=["raw", "ingest", "ingest+gx"], help=argparse.SUPPRESS)
    parser.add_argument("--drop", help=argparse.SUPPRESS)
    parser.add_argument("--db", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        child(args)
        return
    work = args.work or Path(tempfile.mkdtemp(prefix="ingest_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        drop = simulate(args.lots, work / "fab", args.seed)
        size = sum(p.stat().st_size for p in drop.rglob("*") if p.is_file()) / 2**20
        print(f"drop: {drop} ({size:.0f} MB of Parquet)")
        results: dict[str, dict] = {}
        for _ in range(args.repeat):  # interleaved, so load changes hit every step alike
            for phase in ("raw", "ingest", "ingest+gx"):
                r = measure(phase, drop, work, args.gx_rows)
                print(f"{phase:10s} {r['seconds']:7.1f} s   peak RSS {r['peak_rss_gb']:.2f} GB   "
                      f"db {r['db_gb']:.2f} GB   {r.get('timings', '')}")  # fmt: skip
                best = results.get(phase)
                if best is None or r["seconds"] < best["seconds"]:
                    peak = max(r["peak_rss_gb"], best["peak_rss_gb"] if best else 0.0)
                    results[phase] = r | {"peak_rss_gb": peak}
        rows = results["raw"]["rows"]
        assert results["ingest"]["rows"] == rows, (results["ingest"]["rows"], rows)
        print("rows: " + ", ".join(f"{t} {n:,}" for t, n in rows.items()))
        raw = results["raw"]["seconds"]
        print(f"fastest of {args.repeat}: " + ", ".join(
            f"{phase} {r['seconds']:.1f} s" for phase, r in results.items()))  # fmt: skip
        for phase in ("ingest", "ingest+gx"):
            ratio = results[phase]["seconds"] / raw
            verdict = "ok" if ratio <= 2 else "OVER the 2x goal"
            print(f"{phase} / raw = {ratio:.2f} ({verdict})")
        peak = max(r["peak_rss_gb"] for r in results.values())
        print(f"peak memory {peak:.2f} GB ({'ok' if peak < 4 else 'OVER the 4 GB goal'})")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
