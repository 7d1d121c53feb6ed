"""The whole analysis of one database, sequentially: model frames from DuckDB, one fit per
layer, the chained model, the ranking, and the contract tables plus CSV and JSON.

The Prefect flow (`flows.orchestration.prefect_flows.analyse_flow`) runs the same pure
functions with the layer fits as concurrent, cached tasks; `method_record` is shared by both.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from flows.analysis.results import AnalysisResult


def method_record(seed: int) -> dict[str, Any]:
    """The models and methods behind a run, as the report's method section lists them."""
    from flows import __version__
    from flows.analysis.layers import LAYER_TEST, PROCESS_METHOD, YIELD_METHOD
    from flows.analysis.ranking import (
        INTERVAL_METHOD,
        P_VALUE_ADJUSTMENT,
        RANKING_RULE,
        YIELD_IMPACT_DEFINITION,
    )

    return {
        "yieldrank": __version__,
        "seed": seed,
        "yield_model": (
            f"binomial-beta HGLM per layer, logit link, {YIELD_METHOD} for the point estimates "
            "(REML-type dispersions: tool terms have 2-5 levels, where ML would shrink them)"
        ),
        "layer_test": LAYER_TEST,
        "process_models": f"gaussian or gamma HGLM by cAIC, phi by chamber, {PROCESS_METHOD}",
        "impact_definition": YIELD_IMPACT_DEFINITION,
        "interval": INTERVAL_METHOD,
        "p_value_adjustment": P_VALUE_ADJUSTMENT,
        "ranking": RANKING_RULE,
    }


def run_analysis(
    db_path: str | Path, out_dir: str | Path, *, run_id: str | None = None, seed: int = 0
) -> AnalysisResult:
    """Analyse the database at `db_path` sequentially; write the ranking to it and to `out_dir`.

    Parameters
    ----------
    db_path : the DuckDB file with the merged drops (its marts are read, never written)
    out_dir : the run folder for `analysis.json` and the CSV tables
    run_id : the run's id (default: UTC time and a random suffix)
    seed : seed of the interval draws and diagnostics

    Returns
    -------
    AnalysisResult : the ranking, the findings and every layer's fit, as written.
    """
    from flows.analysis.frames import chained_frame, layer_frames
    from flows.analysis.layers import fit_chained, fit_layer
    from flows.analysis.ranking import rank_layers, write_results

    run_id = run_id or f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    frames = layer_frames(db_path)
    fits = [fit_layer(layer, frame, seed=seed) for layer, frame in frames.items()]
    chained = fit_chained(chained_frame(frames), seed=seed) if frames else None
    ranking, findings = rank_layers(fits, chained)
    n_wafers = max((f.num_rows for f in frames.values()), default=0)
    result = AnalysisResult(
        run_id=run_id,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        ranking=ranking,
        findings=findings,
        layers=[*fits, *([chained] if chained is not None else [])],
        data_summary={"layers": len(frames), "wafers": n_wafers},
        method=method_record(seed),
    )
    write_results(db_path, result, out_dir)
    return result
