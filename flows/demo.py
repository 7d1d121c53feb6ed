"""`yieldrank demo`: the main job on embedded defaults (a local DuckDB file, generated data).

The pipeline is being built stage by stage; the demo runs the stages that exist and
says plainly which ones do not exist yet, instead of pretending.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

console = Console()

PLANNED_STAGES = {
    "simulate": "fab simulator (issue 5)",
    "ingest": "DuckDB ingestion and validation (issue 5)",
    "analyse": "per-layer HGLMs and the ranking (issue 6)",
    "report": "HTML/PDF reports (issue 8)",
    "orchestrate": "Prefect flows (issue 7)",
}


def run_demo(out: str | Path) -> None:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]yieldrank demo[/bold] in {out.resolve()}")
    for stage, what in PLANNED_STAGES.items():
        console.print(f"  [yellow]not built yet[/yellow]  {stage}: {what}")
    console.print("Nothing to run yet: the demo grows as the stages above land.")
