"""The power study of the ranking: its statistical validation on simulated fabs (`make validate`).

For each seed a fab is simulated (`flows.fabsim.simulation.simulate_fab`), ingested into a fresh DuckDB
file and analysed end to end (`flows.analysis.run.run_analysis`). Against the simulator's truth:

- planted fabs: are the three layers with a yield-planted effect ranks 1-3? Is the planted
  tool (chamber) the top finding of its layer? Does each planted layer's 95 % interval cover
  its true yield impact (the ranking's impact definition evaluated at the true effects,
  `SimulationTruth.layer_yield_impact`)?
- null fabs: does any layer reach an adjusted p-value below 0.05?

Run `python -m flows.analysis.power_study [--seeds 20] [--null-seeds 20] [--first 1] [--lots 300]
[--jobs N] [--out FILE]`.
Planted and null seeds alternate, so that a run cut short still scores both kinds; --jobs fabs
run side by side in worker processes (default: one per core); with --out every seed's line is
appended to FILE as it finishes and the table follows at the end.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import statistics
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from itertools import zip_longest
from pathlib import Path

from flows.analysis.results import AnalysisResult
from flows.fabsim.truth import SimulationTruth

YIELD_EFFECTS = ("tool", "chamber", "metrology")
ALPHA = 0.05


@dataclass
class SeedOutcome:
    seed: int
    null: bool
    seconds: float
    planted_top3: bool | None = None  # planted layers are exactly ranks 1-3
    top_finding: dict[str, bool] = field(default_factory=dict)  # "tool"/"chamber" -> found
    covered: dict[str, bool] = field(default_factory=dict)  # planted layer -> interval covers
    any_rejection: bool | None = None  # null: some layer with adjusted p < ALPHA
    # planted: p-value of an oracle that knows the planted tool's operation (`oracle_tool_p`)
    oracle_tool_p: float | None = None
    detail: str = ""


def run_seed(seed: int, *, null: bool, lots: int, workdir: Path) -> SeedOutcome:
    """Simulate, ingest and analyse one fab; score it against its truth."""
    from flows.analysis.run import run_analysis
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab
    from flows.warehouse.ingest import ingest_drop

    t0 = time.perf_counter()
    where = workdir / f"{'null' if null else 'planted'}-{seed}"
    truth = simulate_fab(
        where / "drops", FabConfig(lots=lots, **{"planted": None} if null else {}), seed=seed
    )
    db = where / "fab.duckdb"
    for drop in truth.drop_dirs:
        done = ingest_drop(drop, db, gx=False)
        if done.status == "rejected":
            raise RuntimeError(f"seed {seed}: drop {drop} was not merged: {done}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(db, where / "out", run_id=f"validation-{seed}", seed=seed)
    out = SeedOutcome(seed=seed, null=null, seconds=time.perf_counter() - t0)
    score(result, truth, out)
    out.oracle_tool_p = oracle_tool_p(db, truth)
    unranked = [f"{r.layer} {r.status}: {r.reason}" for r in result.ranking if r.rank is None]
    if unranked:
        out.detail += "; UNRANKED " + "; ".join(unranked)
    return out


def rescore_seed(where: Path, seconds: float = float("nan")) -> SeedOutcome:
    """Score a fab analysed earlier (`where` as `run_seed` left it) with today's ranking step.

    The model fits are read back from the run's analysis.json and only the ranking is redone
    (`rank_layers`, which orders each layer's findings with `sort_findings`): a change to the
    ranking rules is checked on the same fits without fitting anything again.
    """
    from flows.analysis.ranking import rank_layers

    truth = SimulationTruth.load(where / "drops")
    stored = AnalysisResult.from_json(where / "out" / "analysis.json")
    fits = [f for f in stored.layers if f.layer != "(chained)"]
    chained = next((f for f in stored.layers if f.layer == "(chained)"), None)
    stored.ranking, stored.findings = rank_layers(fits, chained)
    out = SeedOutcome(seed=truth.seed, null=truth.null, seconds=seconds)
    score(stored, truth, out)
    out.oracle_tool_p = oracle_tool_p(where / "fab.duckdb", truth)
    return out


def oracle_tool_p(db_path: Path, truth: SimulationTruth) -> float | None:
    """How visible the planted tool is to a test that knows where it sits (None if none planted).

    The F test of "the tools of the planted operation do not differ" on lot-mean empirical
    logits of final yield, with product as a covariate (a lot runs on one tool per operation,
    so lots are the units). No ranking can find reliably what this oracle cannot: it separates
    a method's failure from a planted effect the data do not show.
    """
    import numpy as np
    import polars as pl
    from scipy import stats

    from flows.analysis.frames import TOOL, layer_frames

    e = truth.effect("tool")
    if e is None or e.operation is None:
        return None
    frame = pl.from_arrow(layer_frames(db_path)[e.layer])
    assert isinstance(frame, pl.DataFrame)
    lots = frame.group_by("lot_id").agg(
        pl.col("product").first(),
        pl.col(TOOL + e.operation).first().alias("tool"),
        pl.col("dies_good").sum(),
        pl.col("dies_total").sum(),
    )
    good = lots.get_column("dies_good").to_numpy().astype(float) + 0.5
    bad = (lots.get_column("dies_total") - lots.get_column("dies_good")).to_numpy() + 0.5
    logit = np.log(good / bad)

    def dummies(column: str) -> np.ndarray:
        codes = lots.get_column(column).cast(pl.String).fill_null("")
        _, index = np.unique(codes.to_numpy(), return_inverse=True)
        return np.eye(index.max() + 1)[index][:, 1:]

    base = np.column_stack([np.ones(len(logit)), dummies("product")])
    full = np.column_stack([base, dummies("tool")])

    def rss(x: np.ndarray) -> float:
        fitted = x @ np.linalg.lstsq(x, logit, rcond=None)[0]
        return float(np.sum((logit - fitted) ** 2))

    df_tool = np.linalg.matrix_rank(full) - np.linalg.matrix_rank(base)
    df_resid = len(logit) - np.linalg.matrix_rank(full)
    if df_tool < 1 or df_resid < 1:
        return None
    f = (rss(base) - rss(full)) / df_tool / (rss(full) / df_resid)
    return float(stats.f.sf(f, df_tool, df_resid))


def score(result: AnalysisResult, truth: SimulationTruth, out: SeedOutcome) -> None:
    """Score one fab: under the null, whether any layer is rejected; else the planted effects."""
    if out.null:
        out.any_rejection = any(r.p_value is not None and r.p_value < ALPHA for r in result.ranking)
        out.detail = ", ".join(
            f"{r.layer} p={r.p_value:.2g}" for r in result.ranking if r.p_value is not None
        )
    else:
        score_planted(result, truth, out)


def score_planted(result: AnalysisResult, truth: SimulationTruth, out: SeedOutcome) -> None:
    planted = [e for e in truth.planted if e.effect in YIELD_EFFECTS]
    layers = {e.layer for e in planted}
    ranked = [r for r in result.ranking if r.rank is not None]
    top = {r.layer for r in ranked[: len(layers)]}
    out.planted_top3 = top == layers
    for e in planted:
        if e.effect in ("tool", "chamber"):
            mine = [f for f in result.findings if f.layer == e.layer]
            first = mine[0] if mine else None
            out.top_finding[e.effect] = bool(
                first is not None
                and first.effect == e.effect
                and first.operation == e.operation
                and first.tool_id == e.tool_id
                and (e.effect == "tool" or first.chamber_id == e.chamber_id)
            )
        row = next((r for r in result.ranking if r.layer == e.layer), None)
        true = truth.layer_yield_impact[e.layer]
        out.covered[e.layer] = bool(
            row is not None
            and row.ci_low is not None
            and row.ci_high is not None
            and row.ci_low <= true <= row.ci_high
        )
    out.detail = "; ".join(
        f"{r.rank}:{r.layer} {r.yield_impact:.2f} [{r.ci_low:.2f},{r.ci_high:.2f}] "
        f"truth {truth.layer_yield_impact.get(r.layer, 0.0):.2f} p={r.p_value:.2g}"
        for r in ranked[:4]
    )


def criteria_table(outcomes: list[SeedOutcome], n_planted: int, n_null: int) -> str:
    planted = [o for o in outcomes if not o.null]
    nulls = [o for o in outcomes if o.null]

    def need(k: int, of_20: int) -> int:
        return -(-of_20 * k // 20)  # the criteria, scaled to the seeds run

    rows = [
        (
            "planted layers are ranks 1-3",
            sum(bool(o.planted_top3) for o in planted),
            len(planted),
            need(n_planted, 18),
        ),
        (
            "planted tool is its layer's top finding",
            sum(o.top_finding.get("tool", False) for o in planted),
            len(planted),
            need(n_planted, 18),
        ),
        (
            "planted chamber is its layer's top finding",
            sum(o.top_finding.get("chamber", False) for o in planted),
            len(planted),
            need(n_planted, 18),
        ),
    ]
    coverage = [all(o.covered.values()) for o in planted]
    per_layer = sum(sum(o.covered.values()) for o in planted)
    rows.append(
        (
            "every planted layer's interval covers truth",
            sum(coverage),
            len(planted),
            need(n_planted, 17),
        )
    )
    rows.append(("planted-layer intervals covering truth", per_layer, 3 * len(planted), None))
    rows.append(
        (
            "planted tool visible to an oracle (p < 0.001)",
            sum(o.oracle_tool_p is not None and o.oracle_tool_p < 1e-3 for o in planted),
            len(planted),
            None,
        )
    )
    rows.append(
        (
            "null: seeds with no layer at adj. p < 0.05",
            sum(not o.any_rejection for o in nulls),
            len(nulls),
            len(nulls) - need(n_null, 1),
        )
    )
    lines = [f"{'criterion':<46} {'seeds':>9} {'needed':>7}  result"]
    for name, got, of, needed in rows:
        verdict = "" if needed is None else ("PASS" if got >= needed else "FAIL")
        need_txt = "" if needed is None else f">= {needed}"
        lines.append(f"{name:<46} {got:>4} / {of:<3} {need_txt:>7}  {verdict}")
    secs = [o.seconds for o in outcomes if o.seconds == o.seconds]  # rescored runs: NaN
    if secs:
        lines.append(
            f"seconds per fab (simulate + ingest + analyse): median {sorted(secs)[len(secs) // 2]:.0f}, "
            f"max {max(secs):.0f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--seeds", type=int, default=20, help="planted fabs (seeds F..F+N-1)")
    ap.add_argument("--null-seeds", type=int, default=20, help="null fabs (seeds 1000+F..)")
    ap.add_argument(
        "--first",
        type=int,
        default=1,
        help="F, the first seed (default 1): runs split in parts, e.g. --first 11 --seeds 10 "
        "--null-seeds 10 for planted 11-20 and null 1011-1020; --rescore on the shared "
        "--workdir scores all parts together",
    )
    ap.add_argument("--lots", type=int, default=300)
    ap.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="fabs analysed side by side"
    )
    ap.add_argument("--workdir", type=Path, default=None, help="keep the fabs here")
    ap.add_argument("--out", type=Path, default=None, help="append the lines and table here")
    ap.add_argument(
        "--rescore",
        type=Path,
        default=None,
        help="fit nothing: re-rank and score every fab analysed earlier under this --workdir",
    )
    ap.add_argument(
        "--stop-by",
        default=None,
        help="UTC time HH:MM: start no seed that would not finish by then (median seed time); "
        "the table then scores the seeds that ran",
    )
    args = ap.parse_args(argv)
    if args.rescore is not None:
        return _rescore_all(args.rescore)
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="yieldrank-validation-"))
    outcomes: list[SeedOutcome] = []
    planted = [(s, False) for s in range(args.first, args.first + args.seeds)]
    nulls = [(1000 + s, True) for s in range(args.first, args.first + args.null_seeds)]
    jobs = [job for pair in zip_longest(planted, nulls) for job in pair if job is not None]

    def say(text: str) -> None:
        print(text, flush=True)
        if args.out is not None:
            with args.out.open("a") as fh:
                fh.write(text + "\n")

    stop_by = _utc_today_at(args.stop_by) if args.stop_by else None

    def too_late(seed: int) -> bool:
        if stop_by is None or not outcomes:
            return False
        typical = statistics.median(o.seconds for o in outcomes)
        if datetime.now(UTC) + timedelta(seconds=typical) <= stop_by:
            return False
        say(f"stopped before seed {seed}: it would not finish by {args.stop_by} UTC")
        return True

    # "spawn": a forked child would inherit the parent's DuckDB and BLAS thread state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, args.jobs), mp_context=context) as pool:
        queue = list(jobs)
        running: dict[Future[SeedOutcome], bool] = {}
        while queue or running:
            while queue and len(running) < max(1, args.jobs):
                if too_late(queue[0][0]):
                    queue.clear()
                    break
                seed, null = queue.pop(0)
                job = pool.submit(run_seed, seed, null=null, lots=args.lots, workdir=workdir)
                running[job] = null
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in finished:
                null = running.pop(job)
                o = job.result()
                outcomes.append(o)
                tag = "null   " if null else "planted"
                say(f"{tag} seed {o.seed:>4} {o.seconds:5.0f}s  {o.detail}")
                if not null:
                    say(f"        {_scores(o)}")
    say("")
    n_planted = sum(not o.null for o in outcomes)
    say(criteria_table(outcomes, n_planted, len(outcomes) - n_planted))
    return 0


def _rescore_all(workdir: Path) -> int:
    outcomes = []

    def kind_and_seed(p: Path) -> tuple[bool, int]:
        kind, _, seed = p.name.partition("-")
        return kind == "null", int(seed) if seed.isdigit() else -1

    for where in sorted(workdir.glob("*-*"), key=kind_and_seed):
        if not (where / "out" / "analysis.json").is_file():
            continue
        o = rescore_seed(where)
        outcomes.append(o)
        print(f"{'null   ' if o.null else 'planted'} seed {o.seed:>4}  {o.detail}")
        if not o.null:
            print(f"        {_scores(o)}")
    n_planted = sum(not o.null for o in outcomes)
    print()
    print(criteria_table(outcomes, n_planted, len(outcomes) - n_planted))
    return 0


def _scores(o: SeedOutcome) -> str:
    oracle = "n/a" if o.oracle_tool_p is None else f"{o.oracle_tool_p:.2g}"
    return f"top3={o.planted_top3} top={o.top_finding} covered={o.covered} oracle_tool_p={oracle}"


def _utc_today_at(hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)


if __name__ == "__main__":
    raise SystemExit(main())
