"""The statistical validation of the analysis on simulated fabs (`make validate`, issue 14).

The table and the outcome it counts are in `flows/analysis/power_table.py`.

For each fab a seed is simulated (`flows.fabsim.simulation.simulate_fab`), ingested into a fresh
DuckDB file and analysed end to end (`flows.analysis.run.run_analysis`), then scored against the
simulator's truth. Four kinds of fab, per size (48, 100 and 300 lots by default):

- planted (seeds 2001-2020): a bad tool, a bad chamber, a metrology chain and a noisy chamber,
  on top of the small real differences every tool and chamber carries (SD 0.02 / 0.015 logit);
- null (3001-3020): nothing planted, the small real differences only;
- exact null (5001-5010): not even those (`equipment_sd=(0, 0)`), for the per-finding p-values;
- correlated dispatch (4001-4020, 300 lots only): planted, with 80 % of the bad tool's lots
  routed to one tool of an operation in another layer (the shadow).

Criteria (the issue's "Done when"), per size:

- planted tool / chamber found: a finding at the right tool (chamber) with p_adjusted < 0.05,
  beside the oracle test that knows the planted operation (`oracle_tool_p` < 0.05);
- noisy chamber found: the dispersion finding of the right chamber, p_adjusted < 0.05 (its
  p_value when p_adjusted is None);
- metrology chain: the parameter's finding names the shifting tool in its `cause` and the cause's
  shift interval covers the true shift of that tool against the typical tool, in the parameter's
  units (`PlantedEffect.param_shift_vs_typical`: the planted shift plus the tool's background
  offset, which the data cannot tell apart from it);
- planted losses: each planted finding's 95 % interval covers its true loss
  (`PlantedEffect.loss`) and each planted layer's its true layer loss (`layer_loss`);
- null fabs with any material finding (`Finding.material`); layers without a planted yield
  effect (planted and null fabs) whose interval excludes zero;
- exact-null fabs: every raw finding p-value pooled, Kolmogorov-Smirnov against uniform;
- correlated dispatch: the source's finding listed before its shadow's.

The analysis's fields are read with defaults, so the harness runs on any version of it; a
criterion whose field the analysis does not have yet prints "n/a".

Run `python -m flows.analysis.power_study [--sizes 48,100,300] [--seeds 20] [--null-seeds N]
[--exact-seeds 10] [--corr-seeds 20] [--first 1] [--jobs 2] [--workdir DIR] [--out FILE]`.
Kinds and sizes interleave, so a run cut short (--stop-by HH:MM) still scores all of them; with
--out every seed's line is appended to FILE as it finishes and the table follows at the end.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import statistics
import tempfile
import time
import warnings
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from flows.analysis.power_table import (
    ALPHA,
    CORRELATED_DISPATCH,
    KINDS,
    SEED_BASE,
    SIZES,
    YIELD_EFFECTS,
    SeedOutcome,
    criteria_table,
)
from flows.analysis.results import AnalysisResult, Finding
from flows.fabsim.truth import PlantedEffect, SimulationTruth

__all__ = ["KINDS", "SeedOutcome", "criteria_table", "main", "oracle_tool_p", "run_jobs"]


def fab_config(kind: str, lots: int) -> Any:
    """The simulator's options of one kind of validation fab.

    Parameters
    ----------
    kind : one of KINDS
    lots : lots of the fab

    Returns
    -------
    FabConfig : planted / null (small real differences) / exact null / correlated dispatch
    """
    from flows.fabsim.config import FabConfig

    return {
        "planted": FabConfig(lots=lots),
        "null": FabConfig(lots=lots, planted=None),
        "exact": FabConfig(lots=lots, planted=None, equipment_sd=(0.0, 0.0)),
        "corr": FabConfig(lots=lots, correlated_dispatch=CORRELATED_DISPATCH),
    }[kind]


def run_seed(seed: int, *, kind: str, lots: int, workdir: Path) -> SeedOutcome:
    """Simulate, ingest and analyse one fab of `kind` (one of KINDS); score it against its truth.

    Parameters
    ----------
    seed : the simulator's seed
    kind : "planted", "null", "exact" (exact null) or "corr" (correlated dispatch)
    lots : lots of the fab
    workdir : the fab, its database and the run go to `workdir/{kind}-{lots}-{seed}`

    Returns
    -------
    SeedOutcome : the fab's scores
    """
    from flows.analysis.run import run_analysis
    from flows.fabsim.simulation import simulate_fab
    from flows.warehouse.ingest import ingest_drop

    t0 = time.perf_counter()
    where = workdir / f"{kind}-{lots}-{seed}"
    truth = simulate_fab(where / "drops", fab_config(kind, lots), seed=seed)
    db = where / "fab.duckdb"
    for drop in truth.drop_dirs:
        done = ingest_drop(drop, db, gx=False)
        if done.status == "rejected":
            raise RuntimeError(f"seed {seed}: drop {drop} was not merged: {done}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_analysis(db, where / "out", run_id=f"validation-{kind}-{seed}", seed=seed)
    out = SeedOutcome(kind=kind, seed=seed, lots=lots, seconds=time.perf_counter() - t0)
    score(result, truth, out)
    if not out.null:
        out.oracle_tool_p = oracle_tool_p(db, truth)
    unranked = [f"{r.layer} {r.status}: {r.reason}" for r in result.ranking if r.rank is None]
    if unranked:
        out.detail += "; UNRANKED " + "; ".join(unranked)
    return out


def rescore_seed(where: Path) -> SeedOutcome:
    """Score a fab analysed earlier (`where` as `run_seed` left it) from its analysis.json,
    fitting nothing: a change to the scoring is checked on the same runs."""
    truth = SimulationTruth.load(where / "drops")
    kind = where.name.split("-")[0]
    stored = AnalysisResult.from_json(where / "out" / "analysis.json")
    out = SeedOutcome(kind=kind, seed=truth.seed, lots=truth.lots, seconds=float("nan"))
    score(stored, truth, out)
    if not out.null:
        out.oracle_tool_p = oracle_tool_p(where / "fab.duckdb", truth)
    return out


def oracle_tool_p(db_path: Path, truth: SimulationTruth) -> float | None:
    """How visible the planted tool is to a test that knows where it sits (None if none planted).

    The F test of "the tools of the planted operation do not differ" on lot-mean empirical
    logits of final yield, with product as a covariate (a lot runs on one tool per operation,
    so lots are the units). No method can find reliably what this oracle cannot: it separates
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


# ---------------------------------------------------------------------------------------------
# Scoring one fab
# ---------------------------------------------------------------------------------------------


def has_field(findings: list[Finding], name: str) -> bool:
    """Whether this version of the analysis has the finding field (the harness runs on every
    version): asked of the findings themselves, else of today's `Finding`."""
    record: Any = findings[0] if findings else Finding
    return dataclasses.is_dataclass(record) and name in {f.name for f in dataclasses.fields(record)}


def _matches(f: Finding, e: PlantedEffect | dict[str, Any], effect: str) -> bool:
    get = e.get if isinstance(e, dict) else lambda k: getattr(e, k, None)
    return (
        f.effect == effect
        and f.operation == get("operation")
        and (effect == "metrology" or f.tool_id == get("tool_id"))
        and (effect in ("tool", "metrology") or f.chamber_id == get("chamber_id"))
        and (effect not in ("metrology", "dispersion") or f.param == get("param"))
    )


def _index(findings: list[Finding], e: PlantedEffect | dict[str, Any], effect: str) -> int | None:
    return next((i for i, f in enumerate(findings) if _matches(f, e, effect)), None)


def _significant(f: Finding, fallback_to_raw: bool = False) -> bool:
    p = getattr(f, "p_adjusted", None)
    if p is None and fallback_to_raw:
        p = f.p_value
    return p is not None and p < ALPHA


def score(result: AnalysisResult, truth: SimulationTruth, out: SeedOutcome) -> None:
    """Score one fab against its truth.

    Parameters
    ----------
    result : the analysis of the fab (any version: missing fields score None)
    truth : the simulator's truth
    out : the outcome to fill in (its `kind` says what to score)
    """
    findings = result.findings
    planted_layers = {e.layer for e in truth.planted if e.effect in YIELD_EFFECTS}
    for r in result.ranking:
        if r.layer in planted_layers or r.ci_low is None or r.ci_high is None:
            continue
        out.quiet_layers += 1
        out.quiet_excluding_zero += bool(r.ci_low > 0 or r.ci_high < 0)
    if out.null:
        if has_field(findings, "material"):
            out.any_material = any(bool(getattr(f, "material", False)) for f in findings)
        out.any_layer_rejected = any(
            r.p_value is not None and r.p_value < ALPHA for r in result.ranking
        )
        out.finding_p_values = [
            f.p_value for f in findings if f.p_value is not None and f.effect != "lot"
        ]
        out.detail = ", ".join(
            f"{r.layer} p={r.p_value:.2g}" for r in result.ranking if r.p_value is not None
        )
        return
    _score_planted(result, truth, out)


def _score_planted(result: AnalysisResult, truth: SimulationTruth, out: SeedOutcome) -> None:
    findings = result.findings
    for e in truth.planted:
        i = _index(findings, e, e.effect)
        f = None if i is None else findings[i]
        if e.effect in ("tool", "chamber"):
            out.found[e.effect] = (
                None if not has_field(findings, "p_adjusted") else bool(f and _significant(f))
            )
        elif e.effect == "dispersion":
            out.found["noisy"] = bool(f and _significant(f, fallback_to_raw=True))
        elif e.effect == "metrology":
            out.found["chain"] = None if not has_field(findings, "cause") else _chain(f, e)
        if e.effect in YIELD_EFFECTS and e.loss is not None:
            out.finding_covers[e.effect] = bool(f and f.ci_low <= e.loss <= f.ci_high)
    layer_truth = truth.layer_loss or truth.layer_yield_impact
    for layer in {e.layer for e in truth.planted if e.effect in YIELD_EFFECTS}:
        row = next((r for r in result.ranking if r.layer == layer), None)
        true = layer_truth.get(layer, 0.0)
        out.layer_covers[layer] = bool(
            row is not None
            and row.ci_low is not None
            and row.ci_high is not None
            and row.ci_low <= true <= row.ci_high
        )
    ranked = [r for r in result.ranking if r.rank is not None]
    n_planted = len(out.layer_covers)
    out.planted_top3 = {r.layer for r in ranked[:n_planted]} == set(out.layer_covers)
    if truth.shadow is not None:
        source = _index(
            findings,
            {
                **truth.shadow,
                "operation": truth.shadow["source_operation"],
                "tool_id": truth.shadow["source_tool_id"],
            },
            "tool",
        )
        shadow = _index(findings, truth.shadow, "tool")
        out.source_first = source is not None and (shadow is None or source < shadow)
    out.detail = "; ".join(
        f"{r.rank}:{r.layer} {_num(r.yield_impact)} [{_num(r.ci_low)},{_num(r.ci_high)}] "
        f"truth {layer_truth.get(r.layer, 0.0):.2f} p={_num(r.p_value, '.2g')}"
        for r in ranked[:4]
    )


def _chain(f: Finding | None, e: PlantedEffect) -> bool:
    cause = getattr(f, "cause", None) if f is not None else None
    if not cause:
        return False
    true = e.param_shift_vs_typical if e.param_shift_vs_typical is not None else e.param_shift
    low, high = cause.get("shift_low"), cause.get("shift_high")
    return bool(
        cause.get("tool_id") == e.tool_id
        and low is not None
        and high is not None
        and true is not None
        and low <= true <= high
    )


def _num(x: float | None, fmt: str = ".2f") -> str:
    return "-" if x is None else format(x, fmt)


# ---------------------------------------------------------------------------------------------
# Running it
# ---------------------------------------------------------------------------------------------


def plan_jobs(
    sizes: tuple[int, ...],
    seeds: int,
    null_seeds: int,
    exact_seeds: int,
    corr_seeds: int,
    corr_lots: int,
    first: int = 1,
) -> list[tuple[str, int, int]]:
    """(kind, seed, lots) of every fab, interleaved so that a run cut short scores every kind.

    Parameters
    ----------
    sizes : lots per fab of the planted, null and exact-null fabs
    seeds, null_seeds, exact_seeds : fabs of each kind per size
    corr_seeds, corr_lots : correlated-dispatch fabs and their size
    first : F, the offset of every kind's seeds (SEED_BASE[kind] + F, ...)

    Returns
    -------
    list : (kind, seed, lots) per fab
    """
    counts = {"planted": seeds, "null": null_seeds, "exact": exact_seeds}
    jobs = []
    for i in range(max([seeds, null_seeds, exact_seeds, corr_seeds, 0])):
        for lots in sizes:
            for kind, n in counts.items():
                if i < n:
                    jobs.append((kind, SEED_BASE[kind] + first + i, lots))
        if i < corr_seeds:
            jobs.append(("corr", SEED_BASE["corr"] + first + i, corr_lots))
    return jobs


def run_jobs(
    jobs: list[tuple[str, int, int]],
    workdir: Path,
    n_jobs: int = 2,
    say: Any = print,
    stop_by: datetime | None = None,
) -> list[SeedOutcome]:
    """Run the fabs `n_jobs` at a time in worker processes; `say` each one as it finishes.

    Parameters
    ----------
    jobs : (kind, seed, lots) per fab (`plan_jobs`)
    workdir : where the fabs, databases and runs go
    n_jobs : fabs side by side
    say : called with each fab's lines as it finishes
    stop_by : start no fab that would not finish by then (median fab time so far)

    Returns
    -------
    list : a SeedOutcome per fab run, in the order they finished (`failed` when one crashed)
    """
    outcomes: list[SeedOutcome] = []

    def too_late() -> bool:
        if stop_by is None or not outcomes:
            return False
        typical = statistics.median(o.seconds for o in outcomes)
        return datetime.now(UTC) + timedelta(seconds=typical) > stop_by

    # "spawn": a forked child would inherit the parent's DuckDB and BLAS thread state
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=max(1, n_jobs), mp_context=context) as pool:
        queue = list(jobs)
        running: dict[Future[SeedOutcome], tuple[str, int, int]] = {}
        while queue or running:
            while queue and len(running) < max(1, n_jobs):
                if too_late():
                    say(f"stopped before {len(queue)} fabs: they would not finish in time")
                    queue.clear()
                    break
                kind, seed, lots = queue.pop(0)
                job = pool.submit(run_seed, seed, kind=kind, lots=lots, workdir=workdir)
                running[job] = (kind, seed, lots)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for job in finished:
                kind, seed, lots = running.pop(job)
                try:
                    o = job.result()
                except Exception as exc:  # one fab's crash is reported, not the run's end
                    o = SeedOutcome(kind, seed, lots, float("nan"), failed=True, detail=repr(exc))
                outcomes.append(o)
                say(_line(o))
    return outcomes


def _line(o: SeedOutcome) -> str:
    text = f"{o.kind:<7} {o.lots:>4} lots seed {o.seed:>4} {o.seconds:5.0f}s  {o.detail}"
    if o.failed:
        return "FAILED " + text
    if not o.null:
        oracle = "n/a" if o.oracle_tool_p is None else f"{o.oracle_tool_p:.2g}"
        text += (
            f"\n        found={o.found} oracle_tool_p={oracle} findings_covered="
            f"{o.finding_covers} layers_covered={o.layer_covers}"
        )
        if o.source_first is not None:
            text += f" source_first={o.source_first}"
    else:
        text += f"\n        material={o.any_material} p-values={len(o.finding_p_values)}"
    return text


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--sizes", default=",".join(map(str, SIZES)), help="lots per fab, comma-separated"
    )
    ap.add_argument("--seeds", type=int, default=20, help="planted fabs per size")
    ap.add_argument("--null-seeds", type=int, default=None, help="null fabs per size (= --seeds)")
    ap.add_argument("--exact-seeds", type=int, default=10, help="exact-null fabs per size")
    ap.add_argument("--corr-seeds", type=int, default=20, help="correlated-dispatch fabs")
    ap.add_argument("--corr-lots", type=int, default=300, help="lots of those")
    ap.add_argument(
        "--first",
        type=int,
        default=1,
        help="F: seeds 2000+F.. planted, 3000+F.. null, 4000+F.. correlated, 5000+F.. exact "
        "null (default 1); parts of a run share a --workdir and are scored together by --rescore",
    )
    ap.add_argument("--jobs", type=int, default=2, help="fabs analysed side by side")
    ap.add_argument("--workdir", type=Path, default=None, help="keep the fabs here")
    ap.add_argument("--out", type=Path, default=None, help="append the lines and table here")
    ap.add_argument(
        "--rescore",
        type=Path,
        default=None,
        help="fit nothing: score every fab analysed earlier under this --workdir",
    )
    ap.add_argument(
        "--stop-by",
        default=None,
        help="UTC time HH:MM: start no fab that would not finish by then (median fab time); "
        "the table then scores the fabs that ran",
    )
    args = ap.parse_args(argv)
    sizes = tuple(int(x) for x in args.sizes.split(",") if x.strip())

    def say(text: str) -> None:
        print(text, flush=True)
        if args.out is not None:
            with args.out.open("a") as fh:
                fh.write(text + "\n")

    if args.rescore is not None:
        outcomes = []
        for where in sorted(args.rescore.glob("*-*-*")):
            if (where / "out" / "analysis.json").is_file():
                outcomes.append(rescore_seed(where))
                say(_line(outcomes[-1]))
    else:
        workdir = args.workdir or Path(tempfile.mkdtemp(prefix="yieldrank-validation-"))
        jobs = plan_jobs(
            sizes,
            args.seeds,
            args.seeds if args.null_seeds is None else args.null_seeds,
            args.exact_seeds,
            args.corr_seeds,
            args.corr_lots,
            args.first,
        )
        stop_by = _utc_today_at(args.stop_by) if args.stop_by else None
        say(f"{len(jobs)} fabs, {args.jobs} at a time, in {workdir}")
        outcomes = run_jobs(jobs, workdir, args.jobs, say, stop_by)
    say("")
    say(criteria_table(outcomes, sizes))
    return 0


def _utc_today_at(hhmm: str) -> datetime:
    hour, minute = (int(x) for x in hhmm.split(":"))
    return datetime.now(UTC).replace(hour=hour, minute=minute, second=0, microsecond=0)


if __name__ == "__main__":
    raise SystemExit(main())
