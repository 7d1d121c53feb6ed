"""End-to-end analysis time: simulate, ingest and analyse a fab of N lots.

    .venv/bin/python benchmarks/analysis_bench.py --lots 300            # goal: < 2 minutes
    .venv/bin/python benchmarks/analysis_bench.py --lots 12000          # a year: goal < 15 minutes
    .venv/bin/python benchmarks/analysis_bench.py --lots 12000 --route full --flow

Times each stage (simulate_fab, ingest_drop without GX, layer_frames, fit_layer per layer,
fit_chained, ranking and write_results) sequentially in this process, the way
`flows.analysis.run.run_analysis` runs them, and the split inside each layer fit (yield model, tests,
interval draws, process models). The machine is shared: CPU seconds of this process are recorded
beside the wall-clock ones, with the load average before and after, so that a slow run can be
told apart from a busy machine. Writes benchmarks/results/analysis_<lots>_lots.json.

`--flow` times what an engineer runs instead: `yieldrank run` on the simulated drop, in a child
process (the Prefect flow: ingestion with Great Expectations, the layer fits side by side on the
thread runner, the chained model, the ranking, the report), with its peak resident memory;
writes analysis_<lots>_lots_flow.json. `--route full` simulates the 12-layer route (a year of it
is 15 M step rows) instead of the default 8 layers.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lots", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--route", choices=["default", "full"], default="default")
    ap.add_argument("--flow", action="store_true", help="time `yieldrank run` instead")
    args = ap.parse_args(argv)

    from flows.analysis.frames import chained_frame, layer_frames
    from flows.analysis.layers import fit_chained, fit_layer
    from flows.analysis.ranking import rank_layers, write_results
    from flows.analysis.results import AnalysisResult
    from flows.fabsim.catalogue import DEFAULT_LAYERS, LAYER_ORDER
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab
    from flows.warehouse.ingest import ingest_drop

    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="analysis-bench-"))
    layers = LAYER_ORDER if args.route == "full" else DEFAULT_LAYERS
    if args.flow:
        return _time_flow(args, work, layers)
    t: dict[str, float] = {}
    cpu: dict[str, float] = {}
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    @contextmanager
    def stage(name: str) -> Iterator[None]:
        t0, c0 = time.perf_counter(), time.process_time()
        yield
        t[name] = t.get(name, 0.0) + time.perf_counter() - t0
        cpu[name] = cpu.get(name, 0.0) + time.process_time() - c0

    with stage("simulate"):
        truth = simulate_fab(
            work / "drops", FabConfig(lots=args.lots, layers=layers), seed=args.seed
        )
    db = work / "fab.duckdb"
    with stage("ingest"):
        for drop in truth.drop_dirs:
            ingest_drop(drop, db, gx=False)
    with stage("frames"):
        frames = layer_frames(db)
    fits, per_layer = [], {}
    for layer, frame in frames.items():
        t0, c0 = time.perf_counter(), time.process_time()
        with stage("layers"):
            fits.append(fit_layer(layer, frame, seed=args.seed))
        per_layer[layer] = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "split_fit_test_draws_process": fits[-1].diagnostics.get(
                "seconds_fit_test_draws_process"
            ),
            "status": fits[-1].status,
        }
    with stage("chained"):
        chained = fit_chained(chained_frame(frames), seed=args.seed)
    t0, c0 = time.perf_counter(), time.process_time()
    ranking, findings = rank_layers(fits, chained)
    result = AnalysisResult(
        run_id="bench",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ranking=ranking,
        findings=findings,
        layers=[*fits, chained],
    )
    write_results(db, result, work / "out")
    t["rank_and_write"] = time.perf_counter() - t0
    cpu["rank_and_write"] = time.process_time() - c0
    total = sum(t.values())
    analysis = total - t["simulate"] - t["ingest"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "lots": args.lots,
        "wafers": truth.wafers,
        "layers": len(frames),
        "seconds": t,
        "cpu_seconds": cpu,
        "end_to_end_seconds": total,
        "end_to_end_cpu_seconds": sum(cpu.values()),
        "analysis_seconds": analysis,
        "per_layer": per_layer,
        "statuses": {r.layer: r.status for r in ranking},
        **_run_context(load_before, load),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"analysis_{args.lots}_lots.json"
    path.write_text(json.dumps(report, indent=1))
    print(
        f"{args.lots} lots, {truth.wafers} wafers, {len(frames)} layers "
        f"(load avg before {load_before}, after {load}):"
    )
    print(f"  {'stage':<16} {'wall':>8}   {'cpu':>8}")
    for k, v in t.items():
        print(f"  {k:<16} {v:8.1f} s {cpu[k]:8.1f} s")
    print(
        f"  {'end to end':<16} {total:8.1f} s {sum(cpu.values()):8.1f} s"
        "   (goal: 120 s at 300 lots, 900 s at 12,000)"
    )
    print(f"written {path}")
    return 0


def _run_context(load_before: float | None, load_after: float | None) -> dict:
    """The machine and the moment of a run, recorded beside its timings."""
    return {
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_before": load_before,
            "load_after": load_after,
        },
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _time_flow(args: argparse.Namespace, work: Path, layers: tuple[str, ...]) -> int:
    """`yieldrank run` on a simulated drop, in a child process: wall, CPU and peak memory."""
    import resource
    import subprocess

    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab

    truth = simulate_fab(work / "drops", FabConfig(lots=args.lots, layers=layers), seed=args.seed)
    cli = Path(sys.executable).with_name("yieldrank")
    command = [str(cli)] if cli.exists() else [sys.executable, "-m", "flows.cli"]
    command += ["run", *map(str, truth.drop_dirs), "--db", str(work / "fab.duckdb")]
    command += ["--out", str(work / "runs"), "--seed", str(args.seed)]
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    if done.returncode != 0:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        raise SystemExit(f"yieldrank run failed with exit code {done.returncode}")
    report = {
        "lots": args.lots,
        "wafers": truth.wafers,
        "layers": len(layers),
        "command": " ".join(command),
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss / 1e6,  # Linux reports KiB
        **_run_context(load_before, load),
        "output_tail": done.stdout[-2000:],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"analysis_{args.lots}_lots_flow.json"
    path.write_text(json.dumps(report, indent=1))
    print(
        f"yieldrank run, {args.lots} lots, {truth.wafers} wafers, {len(layers)} layers: "
        f"{wall:.0f} s wall, {report['cpu_seconds']:.0f} CPU s, peak {report['peak_rss_gb']:.1f} GB "
        f"(load avg before {load_before:.1f}, after {load:.1f}; goals: 120 s at 300 lots, 900 s at 12,000)"
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
