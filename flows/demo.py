"""`yieldrank demo`: the whole job on embedded defaults, nothing to start by hand.

Simulates a small fab (with planted effects, see `truth.json`), then runs the
`yield_run` flow over its drops through Prefect's local temporary server, into a local
DuckDB file, and prints where the report is.
"""

from __future__ import annotations

from pathlib import Path

from flows.settings import EXIT_DEGRADED, apply_offline_defaults

DEMO_LOTS = 48
DEMO_SEED = 7
# Four of the simulator's layers: room for its three planted effects, quick to fit.
DEMO_LAYERS = ("GATE", "CONTACT", "M1", "VIA1")


def run_demo(out: str | Path, lots: int = DEMO_LOTS, seed: int = DEMO_SEED) -> int:
    """Run the demo into `out`; returns the process exit code (0 when the run completed,
    `EXIT_DEGRADED` when it completed with problems, 1 when it failed)."""
    apply_offline_defaults()
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab
    from flows.terminal import console, print_problems, run_in_terminal

    out = Path(out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    console.print(f"[bold]yieldrank demo[/bold] in {out}")
    with console.status(f"simulating a fab of {lots} lots (seed {seed})"):
        truth = simulate_fab(
            out / "fab",
            # the optional v2 tables ride along: events feed no analysis yet, and the bin
            # definitions equal the default rule, so the ranking is the same without them
            FabConfig(
                lots=lots, layers=DEMO_LAYERS, n_drops=2, equipment_events=True, bin_defs=True
            ),
            seed=seed,
        )
    planted = ", ".join(f"{e.effect} in {e.layer}" for e in truth.planted) or "none"
    console.print(f"simulated {lots} lots in {len(truth.drops)} drops; planted: {planted}")

    done = run_in_terminal(
        [str(d) for d in truth.drop_dirs], out / "yieldrank.duckdb", out / "reports"
    )
    if not done.ok:
        console.print(f"[red]demo failed:[/red] {done.message}", highlight=False, soft_wrap=True)
        return 1
    summary = done.summary
    for row in summary.ranking[:3]:
        if row["rank"] is not None:
            console.print(
                f"  #{row['rank']} {row['layer']}: {row['yield_impact_pp']} yield points "
                f"(95 % CI {row['ci_low']} to {row['ci_high']})",
                highlight=False,
            )
    print(f"report: {summary.report_html}")
    if done.degraded:
        print_problems("demo", summary.problems)
        return EXIT_DEGRADED
    return 0
