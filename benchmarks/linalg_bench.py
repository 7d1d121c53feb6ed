"""The sparse linear algebra alone on the fab structure of cases 6 and 7.

The mixed-model matrix of the random effects, H = Z'WZ + diag(1/lambda), for a lot term,
40 tool terms and 40 chamber terms (the wafer term eliminated into W): q = 12,800 unknowns for
case 6 (300,000 wafers) and 40,800 for case 7. Times the CHOLMOD analysis + factorisation, a
refactorisation with new values, the selected inverse (Takahashi), the leverages of all data
rows, and checks the results against dense numpy on a sub-fab small enough to invert densely.

With the chambers dealt per wafer (the chained model of every layer), no two wafers share a
row pattern of Z: the mixed-model equations of hglm.mme are timed on that structure too, with
the memory their set-up traces (``--chained-lots``, 0 to skip).

    python -m benchmarks.linalg_bench [--cases 6,7] [--chained-lots 12000] [--out ...]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time
import tracemalloc
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

from benchmarks.cases import FAB_1M, FAB_300K, FabLayout, fab_paths, fab_yield
from hglm.design import build_design
from hglm.families import response_family
from hglm.formula import parse_formula
from hglm.linalg import SparseCholesky, row_quadratic_forms
from hglm.mme import MixedModelEquations

LAYOUTS = {"6": FAB_300K, "7": FAB_1M}


def random_effects_design(layout: FabLayout) -> tuple[sp.csr_matrix, np.ndarray]:
    """Z (n x q) for lot + tools + chambers of the case's data, and the lot of each row."""
    data = fab_yield(layout)
    columns = ["lot", *layout.tool_columns(), *layout.chamber_columns()]
    codes, offset = [], 0
    for name in columns:
        c = data[name].to_numpy().astype(np.int64)
        codes.append(c + offset)
        offset += int(c.max()) + 1
    cols = np.column_stack(codes)
    n, k = cols.shape
    z = sp.csr_matrix((np.ones(n * k), cols.ravel(), np.arange(0, n * k + 1, k)), shape=(n, offset))
    return z, data["lot"].to_numpy()


def mixed_model_matrix(
    z: sp.csr_matrix, lot: np.ndarray, weights: np.ndarray, precision: np.ndarray
) -> sp.csc_matrix:
    """Z'WZ + diag(precision), summing the weights of a lot's identical rows first."""
    first = np.flatnonzero(np.r_[True, lot[1:] != lot[:-1]])
    per_lot = np.add.reduceat(weights, first)
    z_lot = z[first]
    return sp.csc_matrix(z_lot.T @ sp.diags(per_lot) @ z_lot + sp.diags(precision))


def bench_layout(key: str, layout: FabLayout, rng: np.random.Generator) -> dict:
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}

    def step(name: str, f, *args):
        """Run f(*args), recording wall and process CPU seconds (on a shared, oversubscribed
        machine the CPU time is the steadier number)."""
        start, start_cpu = time.perf_counter(), time.process_time()
        value = f(*args)
        wall[name] = time.perf_counter() - start
        cpu[name] = time.process_time() - start_cpu
        return value

    z, lot = step("generate_data_and_Z", random_effects_design, layout)
    n, q = z.shape
    w = rng.uniform(20.0, 60.0, n)  # binomial working weights of ~600 dies after elimination
    precision = rng.uniform(5.0, 50.0, q)
    H = step("build_H", mixed_model_matrix, z, lot, w, precision)
    chol = step("analyse_and_factor", SparseCholesky, H)
    step("selected_inverse_first", chol.selected_inverse)
    H2 = mixed_model_matrix(z, lot, w * rng.uniform(0.8, 1.2, n), precision * 1.3)
    step("refactor", chol.refactor, H2)
    step("logdet", chol.logdet)
    step("solve", chol.solve, rng.normal(size=q))
    S = step("selected_inverse", chol.selected_inverse)
    step("inverse_diagonal_cached", chol.inverse_diagonal)
    step("leverages_all_rows", row_quadratic_forms, z, S)
    step("leverages_method_first", chol.row_quadratic_forms, z)
    chol.refactor(H)
    step("selected_inverse_again", chol.selected_inverse)
    step("leverages_method_cached", chol.row_quadratic_forms, z)
    factor, _ = chol._factor_csc()
    return {
        "case": key,
        "rows": n,
        "unknowns": q,
        "nnz_H": int(H.nnz),
        "nnz_L": int(factor.nnz),
        "supernodes": len(chol._pattern.widths),
        "seconds": wall,
        "cpu_seconds": cpu,
    }


def dense_check(layout: FabLayout, lots: int, rng: np.random.Generator) -> dict:
    """Selected inverse, log-determinant and leverages against dense numpy on a sub-fab."""
    small = FabLayout(
        lots=lots,
        operations=layout.operations,
        tools_per_operation=layout.tools_per_operation,
        chambers_per_tool=layout.chambers_per_tool,
    )
    z, lot = random_effects_design(small)
    n, q = z.shape
    H = mixed_model_matrix(z, lot, rng.uniform(20.0, 60.0, n), rng.uniform(5.0, 50.0, q))
    chol = SparseCholesky(H)
    selected = chol.selected_inverse().tocoo()
    start = time.perf_counter()
    dense = H.toarray()
    inverse = np.linalg.inv(dense)
    logdet = np.linalg.slogdet(dense)[1]
    t_dense = time.perf_counter() - start
    z_lots = z[np.flatnonzero(np.r_[True, lot[1:] != lot[:-1]])]
    lev_dense = np.einsum("ij,jk,ik->i", z_lots.toarray(), inverse, z_lots.toarray())
    return {
        "unknowns": q,
        "dense_inverse_seconds": t_dense,
        "max_abs_error_selected_inverse": float(
            np.abs(selected.data - inverse[selected.row, selected.col]).max()
        ),
        "abs_error_logdet": float(abs(chol.logdet() - logdet)),
        "max_abs_error_leverages": float(
            max(
                np.abs(row_quadratic_forms(z_lots, chol.selected_inverse()) - lev_dense).max(),
                np.abs(chol.row_quadratic_forms(z_lots) - lev_dense).max(),
            )
        ),
    }


def chained_design(layout: FabLayout, rng: np.random.Generator):
    """The design of lot + tool + chamber terms with the tools fixed per lot and the chambers
    dealt per wafer (the chained model's structure), and its random terms."""
    tool, _ = fab_paths(layout)
    lot = np.repeat(np.arange(layout.lots), layout.wafers_per_lot)
    columns: dict[str, np.ndarray] = {"lot": lot, "x": rng.normal(size=layout.n)}
    for k, (t_name, c_name) in enumerate(
        zip(layout.tool_columns(), layout.chamber_columns(), strict=True)
    ):
        columns[t_name] = tool[lot, k]
        dealt = rng.integers(0, layout.chambers_per_tool, layout.n)
        columns[c_name] = tool[lot, k] * layout.chambers_per_tool + dealt
    columns["dies"] = np.full(layout.n, 600)
    columns["good"] = rng.binomial(600, 0.8, layout.n)
    terms = ["lot", *layout.tool_columns(), *layout.chamber_columns()]
    formula = "good ~ x + " + " + ".join(f"(1 | {t})" for t in terms)
    design = build_design(
        parse_formula(formula), pd.DataFrame(columns), response_family("binomial"), trials="dies"
    )
    return design.X, design.terms


def bench_chained(layout: FabLayout, rng: np.random.Generator) -> dict:
    """Set-up (seconds, traced peak memory), factorisations and leverages of the equations
    with one row pattern per wafer; H checked against Z'AZ + diag(w) on a sub-fab."""
    X, terms = chained_design(layout, rng)
    tracemalloc.start()
    start = time.perf_counter()
    mme = MixedModelEquations(X, terms)
    set_up = time.perf_counter() - start
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    a, w_m = rng.uniform(20.0, 60.0, mme.n), rng.uniform(5.0, 50.0, mme.q)
    wall = {"set_up": set_up}
    for name in ("analyse_and_factor", "refactor"):
        start = time.perf_counter()
        mme.factor(a, w_m)
        wall[name] = time.perf_counter() - start
    start = time.perf_counter()
    mme.level_row_variances()
    wall["leverages_all_rows"] = time.perf_counter() - start
    small_X, small_terms = chained_design(replace(layout, lots=200), rng)
    small = MixedModelEquations(small_X, small_terms)
    c, d = rng.uniform(0.5, 2.0, small.n_patterns), rng.uniform(1.0, 2.0, small.q)
    H = small.products.assemble(c, d)
    expected = small.Zd.T @ sp.diags(c) @ small.Zd + sp.diags(d)
    return {
        "lots": layout.lots,
        "rows": mme.n,
        "row_patterns": mme.n_patterns,
        "unknowns": mme.q,
        "group_pairs": len(mme.products.pairs),
        "set_up_traced_peak_mb": traced_peak / 2**20,
        "seconds": wall,
        "assemble_seconds": mme.timings["assemble"],
        "max_rel_error_H_sub_fab": float(abs(H - expected).max() / abs(expected).max()),
    }


def to_markdown(report: dict) -> str:
    lines = [
        "# Sparse linear algebra on the fab structure (hglm.linalg)",
        "",
        "H = Z'WZ + diag(1/lambda) for lot + 40 tool + 40 chamber terms (wafer term eliminated).",
        "",
        "| case | rows | unknowns q | nnz(H) | nnz(L) | analyse+factor s | refactor s "
        "| selected inverse s (first / later) | leverages of all rows s (function / method, "
        "set-up kept) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["cases"]:
        s = r["seconds"]
        lines.append(
            f"| {r['case']} | {r['rows']:,} | {r['unknowns']:,} | {r['nnz_H']:,} | "
            f"{r['nnz_L']:,} | {s['analyse_and_factor']:.2f} | {s['refactor']:.2f} | "
            f"{s['selected_inverse_first']:.2f} / {s['selected_inverse']:.2f} | "
            f"{s['leverages_all_rows']:.2f} / {s['leverages_method_cached']:.2f} |"
        )
        c = r["cpu_seconds"]
        lines.append(
            f"| {r['case']} (CPU s) | | | | | {c['analyse_and_factor']:.2f} | {c['refactor']:.2f} | "
            f"{c['selected_inverse_first']:.2f} / {c['selected_inverse']:.2f} | "
            f"{c['leverages_all_rows']:.2f} / {c['leverages_method_cached']:.2f} |"
        )
    d = report["dense_check"]
    lines += [
        "",
        f"Dense check on a sub-fab with q = {d['unknowns']:,}: dense inverse "
        f"{d['dense_inverse_seconds']:.1f} s; max |error| selected inverse "
        f"{d['max_abs_error_selected_inverse']:.1e}, log-determinant "
        f"{d['abs_error_logdet']:.1e}, leverages {d['max_abs_error_leverages']:.1e}.",
        "",
    ]
    chained = report.get("chained")
    if chained:
        s = chained["seconds"]
        lines += [
            f"Chambers dealt per wafer ({chained['lots']:,} lots, {chained['rows']:,} rows, "
            f"{chained['row_patterns']:,} row patterns, q = {chained['unknowns']:,}, "
            f"{chained['group_pairs']} group pairs): set-up of the equations {s['set_up']:.1f} s "
            f"(traced peak {chained['set_up_traced_peak_mb']:.0f} MB), assembly + analysis + "
            f"factorisation {s['analyse_and_factor']:.1f} s, refactorisation {s['refactor']:.1f} s "
            f"(assembly {chained['assemble_seconds']:.1f} s of the two), leverages of all rows "
            f"{s['leverages_all_rows']:.1f} s; max relative error of H (against Z'AZ + W "
            f"by scipy) on a 200-lot sub-fab {chained['max_rel_error_H_sub_fab']:.1e}.",
            "",
        ]
    lines += [
        f"Peak RSS of the process: {report['peak_rss_mb']:.0f} MB; load average at the end: "
        f"{report['load_average']}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="6,7", help="comma-separated: 6, 7")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--dense-lots", type=int, default=2_000, help="lots of the dense check")
    parser.add_argument(
        "--chained-lots", type=int, default=12_000, help="lots with chambers per wafer (0: skip)"
    )
    args = parser.parse_args(argv)
    rng = np.random.default_rng(4)
    keys = [k.strip() for k in args.cases.split(",") if k.strip()]
    unknown = [k for k in keys if k not in LAYOUTS]
    if unknown:
        parser.error(f"unknown case(s) {unknown}; the linalg benchmark has cases 6 and 7")
    report = {"cases": []}
    for key in keys:
        result = bench_layout(key, LAYOUTS[key], rng)
        print(json.dumps(result, indent=1), flush=True)
        report["cases"].append(result)
    report["dense_check"] = dense_check(FAB_300K, args.dense_lots, rng)
    if args.chained_lots:
        report["chained"] = bench_chained(replace(FAB_300K, lots=args.chained_lots), rng)
        print(json.dumps(report["chained"], indent=1), flush=True)
    report["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    report["load_average"] = [round(x, 1) for x in os.getloadavg()]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linalg.json").write_text(json.dumps(report, indent=2))
    (args.out / "linalg.md").write_text(to_markdown(report))
    print(to_markdown(report))
    return report


if __name__ == "__main__":
    main()
