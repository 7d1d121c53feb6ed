"""How often the process side finds what the simulator planted (issue 14, item 5).

Per seed a fab is simulated, ingested (no GX) and its layer frames read; then

- the noisy chamber: the process models of its layer (`process_models`); the planted noisy
  chamber is found when a dispersion finding names it with p x (the fab's inline parameters)
  < 0.05 (Bonferroni over the parameters: at least what Holm over the fab's dispersion
  findings, one per parameter, gives), and, as the stricter bound for the attribution step's
  Holm over every finding of the run, with p x (parameters + tool and chamber levels) < 0.05;
- the metrology chain of the planted parameter (`estimate_chain`, harmful direction given as
  the yield model would give it): is the shifting tool the planted one, and does the 95 %
  interval cover the true shift (the planted tool's true level minus the typical tool's, the
  simulator's background tool offsets included: `tests/flows/analysis/fab_truth.py`) and the
  planted shift alone;
- null fabs (`planted=None`): any dispersion finding below 0.05 after Holm over the fab's.

Run: `python -m benchmarks.process_study --lots 300 --seeds 20 --null-seeds 20 [--first 1]`
(prints one line per seed, then the rates).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import polars as pl

from flows.analysis.frames import CHAMBER, TOOL, FrameLayout, layer_frames
from flows.analysis.process import estimate_chain, process_models
from flows.analysis.ranking import holm_adjust
from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.ingest import ingest_drop
from tests.flows.analysis.fab_truth import true_tool_levels

ALPHA = 0.05


def _fab(where: Path, config: FabConfig, seed: int):
    truth = simulate_fab(where / "drops", config, seed=seed)
    db = where / "fab.duckdb"
    for drop in truth.drop_dirs:
        ingest_drop(drop, db, gx=False)
    return truth, layer_frames(db)


def _equipment_levels(frames) -> int:
    n = 0
    for frame in frames.values():
        df = pl.from_arrow(frame)
        for op in FrameLayout.of(df.columns).operations:
            n += df.get_column(TOOL + op).n_unique() + df.get_column(CHAMBER + op).n_unique()
    return n


def _dispersion(frames):
    findings = []
    for layer, frame in frames.items():
        findings += process_models(layer, frame)[1]
    holm = holm_adjust([f.p_value for f in findings]) if findings else []
    return findings, holm


def planted_seed(lots: int, seed: int) -> dict:
    config = FabConfig(lots=lots)
    with tempfile.TemporaryDirectory() as tmp:
        truth, frames = _fab(Path(tmp), config, seed)
    out: dict = {"seed": seed}
    noisy = truth.effect("dispersion")
    n_params = sum(len(FrameLayout.of(f.column_names).params) for f in frames.values())
    m_strict = n_params + _equipment_levels(frames)
    findings = process_models(noisy.layer, frames[noisy.layer])[1] if noisy else []
    hit = [
        (f.p_value, min(1.0, f.p_value * n_params))
        for f in findings
        if noisy is not None
        and (f.operation, f.tool_id, f.chamber_id, f.param)
        == (noisy.operation, noisy.tool_id, noisy.chamber_id, noisy.param)
    ]
    out["noisy_p"] = hit[0][0] if hit else None
    out["noisy_bonf"] = hit[0][1] if hit else None
    out["noisy_strict"] = min(1.0, hit[0][0] * m_strict) if hit else None
    met = truth.effect("metrology")
    if met is not None:
        df = pl.from_arrow(frames[met.layer]).filter(pl.col("dies_total") > 0)
        # larger values cost yield when slope x shift < 0 (the yield model's sign)
        sign = 1 if met.size_logit * (met.param_shift or 0) < 0 else -1
        est = estimate_chain(df, met.operation, met.param, sign)
        if est is not None:
            levels = true_tool_levels(seed, config, met.param)
            c = -est.typical
            c[est.worst] += 1.0
            true_shift = float(c @ np.array([levels[lv] for lv in est.levels]))
            cause = est.cause()
            out.update(
                chain_tool_ok=cause["tool_id"] == met.tool_id,
                shift=cause["shift"],
                low=cause["shift_low"],
                high=cause["shift_high"],
                true_shift=true_shift,
                planted_shift=met.param_shift,
                covers_true=cause["shift_low"] <= true_shift <= cause["shift_high"],
                covers_planted=cause["shift_low"] <= met.param_shift <= cause["shift_high"],
            )
    return out


def null_seed(lots: int, seed: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        _, frames = _fab(Path(tmp), FabConfig(lots=lots, planted=None), seed)
    findings, holm = _dispersion(frames)
    return {"seed": seed, "null_min_holm": min(holm, default=1.0), "n_findings": len(findings)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lots", type=int, default=300)
    ap.add_argument("--seeds", type=int, default=20)
    ap.add_argument("--null-seeds", type=int, default=20)
    ap.add_argument("--first", type=int, default=1)
    args = ap.parse_args()
    planted, null = [], []
    t0 = time.perf_counter()
    for seed in range(args.first, args.first + max(args.seeds, args.null_seeds)):
        if seed - args.first < args.seeds:
            planted.append(planted_seed(args.lots, seed))
            print(planted[-1], flush=True)
        if seed - args.first < args.null_seeds:
            null.append(null_seed(args.lots, seed))
            print(null[-1], flush=True)
    n = len(planted)
    chains = [r for r in planted if "covers_true" in r]

    def rate(rows: list[dict], key: str, test) -> str:
        k = sum(1 for r in rows if r.get(key) is not None and test(r[key]))
        return f"{k}/{len(rows)}"

    print(f"--- {args.lots} lots, seeds {args.first}.., {time.perf_counter() - t0:.0f} s")
    print(
        "noisy chamber found, p x (the fab's inline parameters) < 0.05:",
        rate(planted, "noisy_bonf", lambda p: p < ALPHA),
    )
    print(
        "noisy chamber found, p x (parameters + tool and chamber levels) < 0.05:",
        rate(planted, "noisy_strict", lambda p: p < ALPHA),
    )
    print(
        f"metrology chain estimated: {len(chains)}/{n}; shifting tool right:",
        rate(chains, "chain_tool_ok", bool),
    )
    print(
        "chain interval covers the true shift (background included):",
        rate(chains, "covers_true", bool),
    )
    print("chain interval covers the planted shift alone:", rate(chains, "covers_planted", bool))
    print(
        "null fabs with a dispersion finding below 0.05 (Holm over the fab's):",
        rate(null, "null_min_holm", lambda p: p < ALPHA),
    )


if __name__ == "__main__":
    main()
