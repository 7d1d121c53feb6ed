"""How long the run report takes to build for a 300-lot run (goal, issue 8: under 30 s).

    .venv/bin/python benchmarks/report_bench.py              # 300 lots
    .venv/bin/python benchmarks/report_bench.py --lots 1200

Simulates a fab of --lots lots into a DuckDB file and an analysis run over every layer
(tests/flows/report_sample.py: 10 layers, 8 ranked with every chart), then times
`flows.report.build.build_report` (HTML + PDF, raw-data charts read from the database) and
`build_index`, wall clock and process CPU, each stage separately. The machine may be shared:
CPU seconds say what the build costs, wall seconds what a user waited.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

GOAL_SECONDS = 30.0


def clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def since(start: tuple[float, float]) -> dict[str, float]:
    wall, cpu = clock()
    return {"wall_s": round(wall - start[0], 2), "cpu_s": round(cpu - start[1], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lots", type=int, default=300)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    from flows.report.assemble import assemble
    from flows.report.build import build_report
    from flows.report.html import render_charts, render_html
    from flows.report.index import build_index
    from flows.report.pdf import write_pdf
    from tests.flows import report_sample as sample

    with tempfile.TemporaryDirectory(prefix="report-bench-") as tmp:
        tmp = Path(tmp)
        fab = sample.simulate(n_lots=args.lots)
        db_path = sample.write_database(fab, tmp / "fab.duckdb")
        result = sample.analysis_result(fab)
        run_dir = sample.write_run(tmp / "runs" / result.run_id, result)

        start = clock()
        paths = build_report(result, run_dir, db_path=db_path)
        total = since(start)
        index_start = clock()
        build_index(run_dir.parent)
        index = since(index_start)

        # the same build again, stage by stage
        t = clock()
        model = assemble(result, run_dir, db_path)
        stages = {"assemble (incl. database reads)": since(t)}
        t = clock()
        rendered = render_charts(model.charts())
        stages[f"render {len(rendered)} charts"] = since(t)
        t = clock()
        render_html(model, rendered)
        stages["html"] = since(t)
        t = clock()
        write_pdf(model, rendered, tmp / "again.pdf")
        stages["pdf"] = since(t)

        record = {
            "lots": args.lots,
            "wafers": fab.wafers.height,
            "step_rows": fab.steps.height,
            "build_report": total,
            "build_index": index,
            "stages": stages,
            "html_mb": round(paths.html.stat().st_size / 1e6, 2),
            "pdf_mb": round(paths.pdf.stat().st_size / 1e6, 2),
            "goal_s": GOAL_SECONDS,
            "met": total["wall_s"] < GOAL_SECONDS,
            # wall time is only meaningful on a machine that is not busy with other work
            "load_average_1min": round(os.getloadavg()[0], 1),
            "cpus": os.cpu_count(),
        }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"report_{args.lots}_lots.json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
