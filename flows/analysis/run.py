"""The whole analysis of one database, sequentially: model frames from DuckDB, the chained
model, the operation tests conditional on it, each layer's process models, the ranking, and
the contract tables plus CSV and JSON.

The Prefect flow (`flows.orchestration.prefect_flows.analyse_flow`) runs the same pure
functions as tasks (the operation tests fanned out after the chained model);
`method_record` and `finish_attribution` are shared by both.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.analysis.results import (
    DEFAULT_MATERIALITY,
    AnalysisResult,
    Finding,
    LayerFit,
    LayerRanking,
    OperationTest,
)


def method_record(seed: int, materiality: float = DEFAULT_MATERIALITY) -> dict[str, Any]:
    """The models and methods behind a run, as the report's method section lists them."""
    from flows import __version__
    from flows.analysis.attribution import CONTRAST_METHOD, TEST_METHOD
    from flows.analysis.findings import ALIAS_LIFT, ALIAS_MIN_LOTS, ALIAS_OVERLAP
    from flows.analysis.layers import PROCESS_METHOD, YIELD_METHOD
    from flows.analysis.ranking import (
        INTERVAL_METHOD,
        P_VALUE_ADJUSTMENT,
        P_VALUE_METHOD,
        RANKING_RULE,
        YIELD_IMPACT_DEFINITION,
    )

    return {
        "yieldrank": __version__,
        "seed": seed,
        "yield_model": (
            "one chained binomial-beta HGLM of final yield on every layer's terms at once "
            "(product and standardised metrology fixed; lot, per operation tool and "
            f"tool:chamber normal random effects; beta wafer effects), logit link, {YIELD_METHOD} "
            "(REML-type dispersions: tool terms have 2-5 levels, where ML would shrink them). "
            "Every yield number comes from it or from a fit conditional on it (the finding's "
            "`model` says which)"
        ),
        "operation_test": (
            "per operation, given the chained model (the product, the metrology and the "
            "equipment of the operations a first screening stage found held at their chained "
            "estimates as an offset; lot and wafer effects refitted): "
            f"{TEST_METHOD} ML fits with and without the operation's "
            "(1|tool) + (1|tool:chamber), likelihood ratio on p_v(h), chi-bar-square null "
            "distribution (hglm.lrt); per metrology parameter the same with and without its "
            f"coefficient, chi2(1). Contrasts, losses and intervals: the operation's "
            f"tool:chamber cells as fixed effects given the same offset ({CONTRAST_METHOD})"
        ),
        "layer_test": P_VALUE_METHOD,
        "process_models": f"gaussian or gamma HGLM by cAIC, phi by chamber, {PROCESS_METHOD}",
        "impact_definition": YIELD_IMPACT_DEFINITION,
        "interval": INTERVAL_METHOD,
        "p_value_adjustment": P_VALUE_ADJUSTMENT,
        "ranking": RANKING_RULE,
        "materiality": (
            f"{materiality:g} points of fab yield: a finding or layer is material when "
            "significant (adjusted p < 0.05) and its interval's lower end is above it"
        ),
        "aliasing": (
            "tools and chambers at other operations whose lot set overlaps a finding's with "
            f"overlap coefficient |A & B| / min(|A|, |B|) >= {ALIAS_OVERLAP} and at least "
            f"{ALIAS_MIN_LOTS} shared lots, at least {ALIAS_LIFT} times the shared lots "
            "expected under independent dispatch, with their chained-model estimate (logit) and "
            "their own conditional loss"
        ),
        "detectable_shift": (
            "per operation: (z_{1-a/2} + z_0.8) x the median SE of its tool contrasts, "
            "a = 0.05 / (number of tests of the run), in yield points on the typical tool's "
            "wafers"
        ),
    }


def finish_attribution(
    fits: list[LayerFit],
    chained: LayerFit,
    pieces: Any,
    outcomes: list[Any],
    materiality: float,
    frames: dict[str, Any] | None = None,
) -> tuple[list[LayerFit], list[LayerRanking], list[Finding], list[OperationTest], list[str]]:
    """From the operation outcomes to the layers' records, the ranking and the findings.

    Parameters
    ----------
    fits : the layers' records (process models and status)
    chained : the chained model's record
    pieces : its `ChainedPieces`, or None when it could not be fitted
    outcomes : the operations' `OperationOutcome`s (empty without pieces)
    materiality : points of fab yield (see flows.analysis.results.DEFAULT_MATERIALITY)
    frames : the layers' wide frames (pyarrow tables), for the metrology findings' causes

    Returns
    -------
    (layer fits, ranking, findings, adjusted operation tests, notes)
    """
    from flows.analysis.findings import apply_to_layers, attribute, variance_shares
    from flows.analysis.process import attach_chains
    from flows.analysis.ranking import rank_layers

    if pieces is None:  # no chained model: no yield numbers, every layer says why
        why = f"the chained model could not be fitted: {chained.reason}"
        fits = [
            f if f.status != "ranked" else replace(f, status="failed", reason=why) for f in fits
        ]
        ranking, findings = rank_layers(fits, chained, [], materiality)
        return fits, ranking, findings, [], [why]
    dispersion = [f for fit in fits for f in fit.findings if f.effect == "dispersion"]
    att = attribute(outcomes, pieces, materiality=materiality, dispersion=dispersion)
    if frames:
        att.findings = {k: attach_chains(v, frames) for k, v in att.findings.items()}
    fits = apply_to_layers(fits, chained, att, variance_shares(pieces), pieces)
    ranking, findings = rank_layers(fits, chained, att.tests, materiality)
    return fits, ranking, findings, att.tests, att.notes


def run_analysis(
    db_path: str | Path,
    out_dir: str | Path,
    *,
    run_id: str | None = None,
    seed: int = 0,
    materiality: float | None = None,
) -> AnalysisResult:
    """Analyse the database at `db_path` sequentially; write the ranking to it and to `out_dir`.

    Parameters
    ----------
    db_path : the DuckDB file with the merged drops (its marts are read, never written)
    out_dir : the run folder for `analysis.json` and the CSV tables
    run_id : the run's id (default: UTC time and a random suffix)
    seed : seed of the interval draws and diagnostics
    materiality : points of fab yield (default flows.analysis.results.DEFAULT_MATERIALITY)

    Returns
    -------
    AnalysisResult : the ranking, the findings and every layer's fit, as written.
    """
    from flows.analysis.attribution import test_operations
    from flows.analysis.frames import chained_frame, layer_frames
    from flows.analysis.layers import chained_model, fit_layer
    from flows.analysis.ranking import write_results

    materiality = DEFAULT_MATERIALITY if materiality is None else float(materiality)
    run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    frames = layer_frames(db_path)
    fits = [fit_layer(layer, frame, seed=seed) for layer, frame in frames.items()]
    chained, pieces = chained_model(chained_frame(frames), seed=seed)
    outcomes = test_operations(pieces, seed=seed) if pieces is not None else []
    fits, ranking, findings, tests, notes = finish_attribution(
        fits, chained, pieces, outcomes, materiality, frames
    )
    n_wafers = max((f.num_rows for f in frames.values()), default=0)
    result = AnalysisResult(
        run_id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ranking=ranking,
        findings=findings,
        layers=[*fits, chained],
        data_summary={"layers": len(frames), "wafers": n_wafers},
        method={**method_record(seed, materiality), "notes": notes},
        operation_tests=tests,
        materiality=materiality,
    )
    write_results(db_path, result, out_dir)
    return result
