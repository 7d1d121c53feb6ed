"""End-to-end analysis time: simulate, ingest and analyse a fab of N lots.

    .venv/bin/python benchmarks/analysis_bench.py --lots 300            # goal: < 2 minutes
    .venv/bin/python benchmarks/analysis_bench.py --lots 12000          # a year: goal < 15 minutes

Times each stage (simulate_fab, ingest_drop without GX, layer_frames, fit_layer per layer,
fit_chained, ranking and write_results) sequentially in this process, the way
`flows.analysis.analyse` runs them, and the split inside each layer fit (yield model, tests,
interval draws, process models). Writes benchmarks/results/analysis_<lots>_lots.json.
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
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--lots", type=int, default=300)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = ap.parse_args(argv)

    from flows.analysis.frames import chained_frame, layer_frames
    from flows.analysis.layers import fit_chained, fit_layer
    from flows.analysis.ranking import rank_layers, write_results
    from flows.analysis.results import AnalysisResult
    from flows.ingest import ingest_drop
    from flows.simulate import simulate_fab

    warnings.simplefilter("ignore")
    work = Path(tempfile.mkdtemp(prefix="analysis-bench-"))
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    truth = simulate_fab(work / "drops", lots=args.lots, seed=args.seed)
    t["simulate"] = time.perf_counter() - t0
    db = work / "fab.duckdb"
    t0 = time.perf_counter()
    for drop in truth.drop_dirs:
        ingest_drop(drop, db, gx=False)
    t["ingest"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    frames = layer_frames(db)
    t["frames"] = time.perf_counter() - t0
    fits, per_layer = [], {}
    for layer, frame in frames.items():
        t0 = time.perf_counter()
        fits.append(fit_layer(layer, frame, seed=args.seed))
        per_layer[layer] = {
            "seconds": time.perf_counter() - t0,
            "split_fit_test_draws_process": fits[-1].diagnostics.get(
                "seconds_fit_test_draws_process"
            ),
            "status": fits[-1].status,
        }
    t["layers"] = sum(v["seconds"] for v in per_layer.values())
    t0 = time.perf_counter()
    chained = fit_chained(chained_frame(frames), seed=args.seed)
    t["chained"] = time.perf_counter() - t0
    t0 = time.perf_counter()
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
    total = sum(t.values())
    analysis = total - t["simulate"] - t["ingest"]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    report = {
        "lots": args.lots,
        "wafers": truth.wafers,
        "layers": len(frames),
        "seconds": t,
        "end_to_end_seconds": total,
        "analysis_seconds": analysis,
        "per_layer": per_layer,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load": load},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"analysis_{args.lots}_lots.json"
    path.write_text(json.dumps(report, indent=1))
    print(f"{args.lots} lots, {truth.wafers} wafers, {len(frames)} layers (load avg {load}):")
    for k, v in t.items():
        print(f"  {k:<16} {v:8.1f} s")
    print(f"  {'end to end':<16} {total:8.1f} s   (goal: 120 s at 300 lots, 900 s at 12,000)")
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
