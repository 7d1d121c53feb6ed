"""One benchmark fit in this process, with our engine or a statsmodels peer.

benchmarks/run.py starts one child per fit (``python -m benchmarks.runners ...``) so that the
peak memory of a fit is that child's maximum resident set size; R peers run in Rscript the same
way. The child writes a JSON object to --out: status, fit_seconds, criterion, converged, ...
"""

from __future__ import annotations

import argparse
import json
import time
import traceback
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.cases import CASES, Case


def run_hglm(case: Case, data: pd.DataFrame) -> dict:
    """Our engine at HL(1,1) with ML dispersions: p_v(h) is the criterion."""
    try:
        import hglm

        fit = hglm.fit
    except (ImportError, AttributeError) as err:
        return {"status": "not available yet", "messages": f"{type(err).__name__}: {err}"}
    started = time.perf_counter()
    result = fit(
        case.formula,
        data,
        family=case.family,
        rand_family="normal",
        method="HL(1,1)",
        reml=False,
        trials=case.trials,
    )
    seconds = time.perf_counter() - started
    timings = getattr(result, "timings", None)
    return {
        "status": "ok",
        "fit_seconds": seconds,
        "criterion": float(result.likelihood["p_v"]),
        "converged": bool(result.converged),
        "n_iter": _plain(getattr(result, "n_iter", None)),
        "timings": _plain(timings),
    }


def _plain(value):
    """JSON-able copy of nested dicts/lists of numbers."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, int | float | str | bool):
        return value
    return repr(value)


def run_statsmodels(case: Case, data: pd.DataFrame) -> dict:
    """statsmodels' MixedLM (Gaussian, ML) or its Bayesian mixed GLMs (variational Bayes)."""
    import statsmodels.api as sm
    from statsmodels.genmod.bayes_mixed_glm import (
        BinomialBayesMixedGLM,
        PoissonBayesMixedGLM,
    )

    if case.statsmodels is None:
        return {"status": "not applicable", "messages": case.statsmodels_note}
    fixed = f"{case.response} ~ {case.fixed_rhs}"
    components = {t: f"0 + C({t})" for t in case.random_terms}
    started = time.perf_counter()
    if case.statsmodels == "mixedlm":
        model = sm.MixedLM.from_formula(
            fixed,
            groups=np.ones(len(data)),
            re_formula="0",
            vc_formula=components,
            data=data,
        )
        result = model.fit(reml=False)
        criterion, converged, note = float(result.llf), bool(result.converged), "ML"
    else:
        glm = {"binomial_bayes": BinomialBayesMixedGLM, "poisson_bayes": PoissonBayesMixedGLM}
        model = glm[case.statsmodels].from_formula(fixed, components, data)
        result = model.fit_vb()
        criterion, converged = None, True
        note = "variational Bayes: no log-likelihood to compare"
    return {
        "status": "ok",
        "fit_seconds": time.perf_counter() - started,
        "criterion": criterion,
        "converged": converged,
        "messages": note,
    }


RUNNERS = {"hglm": run_hglm, "statsmodels": run_statsmodels}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one benchmark fit (used by benchmarks.run)")
    parser.add_argument("package", choices=sorted(RUNNERS))
    parser.add_argument("--case", required=True, choices=sorted(CASES))
    parser.add_argument("--data", type=Path, required=True, help="the case's parquet file")
    parser.add_argument("--out", type=Path, required=True, help="JSON result file")
    args = parser.parse_args(argv)
    case = CASES[args.case]
    data = pd.read_parquet(args.data)
    try:
        outcome = RUNNERS[args.package](case, data)
    except Exception as err:  # a failed fit is a benchmark result, not a crash of the harness
        outcome = {
            "status": "error",
            "messages": f"{type(err).__name__}: {err}",
            "traceback": traceback.format_exc(limit=5),
        }
    args.out.write_text(json.dumps(outcome, indent=1))


if __name__ == "__main__":
    main()
