"""End-to-end analysis time: simulate, ingest and analyse a fab of N lots.

    .venv/bin/python benchmarks/analysis_bench.py --lots 300            # goal: < 2 minutes
    .venv/bin/python benchmarks/analysis_bench.py --lots 12000          # a year: goal < 10 minutes
    .venv/bin/python benchmarks/analysis_bench.py --lots 12000 --route full --flow

Times each stage (simulate_fab, ingest_drop without GX, layer_frames, fit_layer per layer,
the chained model, the operation tests, ranking and write_results) sequentially, the way
`flows.analysis.run.run_analysis` runs them, with the seconds of each layer (process models) and
of each operation test. The machine is shared: CPU seconds of this process are recorded
beside the wall-clock ones, with the load average before and after, so that a slow run can be
told apart from a busy machine. Writes benchmarks/results/analysis_<lots>_lots.json.

`--flow` times what an engineer runs instead: `yieldrank run` on the simulated drop, in a child
process (the Prefect flow: ingestion with Great Expectations, the layer fits side by side on the
thread runner, the chained model, the ranking, the report), with its peak resident memory;
writes analysis_<lots>_lots_flow_seed<seed>.json with the exit code, whether the HTML and PDF
report were written, and the top of the ranking beside the planted truth. The child is
`python -m flows.cli` of this interpreter with this checkout first on PYTHONPATH, so that it
runs this checkout's code (the `yieldrank` console script runs whatever was installed). The
benchmark exits non-zero unless the run exited 0 with its report. `--route full` simulates the
12-layer route (a year of it is 15 M step rows) instead of the default 8 layers.
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

    from flows.analysis.attribution import test_operations
    from flows.analysis.frames import chained_frame, layer_frames
    from flows.analysis.layers import chained_model, fit_layer
    from flows.analysis.ranking import write_results
    from flows.analysis.results import DEFAULT_MATERIALITY, AnalysisResult
    from flows.analysis.run import finish_attribution
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
        with stage("layers (process models)"):
            fits.append(fit_layer(layer, frame, seed=args.seed))
        per_layer[layer] = {
            "seconds": time.perf_counter() - t0,
            "cpu_seconds": time.process_time() - c0,
            "status": fits[-1].status,
        }
    with stage("chained"):
        chained, pieces = chained_model(chained_frame(frames), seed=args.seed)
    with stage("operation tests"):
        outcomes = test_operations(pieces, seed=args.seed) if pieces is not None else []
    per_operation = {o.operation: {"seconds_final_stage": o.seconds} for o in outcomes}
    t0, c0 = time.perf_counter(), time.process_time()
    fits, ranking, findings, tests, _ = finish_attribution(
        fits, chained, pieces, outcomes, DEFAULT_MATERIALITY
    )
    result = AnalysisResult(
        run_id="bench",
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ranking=ranking,
        findings=findings,
        layers=[*fits, chained],
        operation_tests=tests,
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
        "per_operation": per_operation,
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

    from flows.analysis.results import AnalysisResult
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab

    truth = simulate_fab(work / "drops", FabConfig(lots=args.lots, layers=layers), seed=args.seed)
    command = [sys.executable, "-m", "flows.cli", "run", *map(str, truth.drop_dirs)]
    command += ["--db", str(work / "fab.duckdb"), "--out", str(work / "runs")]
    command += ["--seed", str(args.seed)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    # A Prefect home of its own: the fits are cached on their frame's content, so a second run
    # of the same seed would time the cache (a year: 102 s instead of 6-12 minutes).
    env["PREFECT_HOME"] = str(work / "prefect")
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    done = subprocess.run(command, cwd=work, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()
    runs = sorted((work / "runs").glob("*/analysis.json"))
    run_dir = runs[-1].parent if runs else None
    ranking = []
    if run_dir is not None:
        result = AnalysisResult.from_json(run_dir / "analysis.json")
        ranking = [
            f"{r.rank}:{r.layer} {r.yield_impact:.3f} [{r.ci_low:.3f}, {r.ci_high:.3f}]"
            if r.rank is not None
            else f"-:{r.layer} {r.status}: {r.reason}"
            for r in result.ranking
        ]
    report_written = run_dir is not None and all(
        (run_dir / name).is_file() for name in ("report.html", "report.pdf")
    )
    report = {
        "lots": args.lots,
        "seed": args.seed,
        "wafers": truth.wafers,
        "layers": len(layers),
        "command": " ".join(command),
        "exit_code": done.returncode,
        "report_written": report_written,
        "wall_seconds": wall,
        "cpu_seconds": usage.ru_utime + usage.ru_stime,
        "peak_rss_gb": usage.ru_maxrss / 1e6,  # Linux reports KiB
        "planted": [
            " ".join(
                x for x in (e.effect, e.layer, e.operation, e.tool_id, e.chamber_id, e.param) if x
            )
            + f": {e.yield_impact:.2f}"
            for e in truth.planted
        ],
        "ranking": ranking,
        **_run_context(load_before[0], load[0]),
        "load_avg_1_5_15_before": load_before,
        "load_avg_1_5_15_after": load,
        "output_tail": done.stdout[-2000:],
        "stderr_tail": done.stderr[-3000:] if done.returncode else "",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"analysis_{args.lots}_lots_flow_seed{args.seed}.json"
    path.write_text(json.dumps(report, indent=1))
    print(
        f"yieldrank run, {args.lots} lots, seed {args.seed}, {truth.wafers} wafers, "
        f"{len(layers)} layers: exit {done.returncode}, {wall:.0f} s wall, "
        f"{report['cpu_seconds']:.0f} CPU s, peak {report['peak_rss_gb']:.1f} GB (load avg "
        f"before {load_before[0]:.1f}, after {load[0]:.1f}; goals: 120 s at 300 lots, "
        "600 s at 12,000)"
    )
    print(f"written {path}")
    if done.returncode != 0 or not report_written:
        print(done.stdout[-3000:], done.stderr[-3000:], sep="\n")
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
