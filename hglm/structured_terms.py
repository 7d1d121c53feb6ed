"""The structured view of a design's random terms: per term its covariance structure
(``hglm.covariance``) and its block of Z (random intercepts: indicators; slopes: the
covariate values per level; AR(1): one indicator per (group, time)).

May import: ``hglm.covariance``, ``hglm.design``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from hglm.covariance import AR1, CAR, SAR, Precision, Structure, Unstructured
from hglm.design import ModelDesign, RandomTermDesign, fixed_matrix, to_pandas


@dataclass
class StructuredTerm:
    """One random term: its design (grouping codes and levels), its structure and its Z block."""

    design: RandomTermDesign
    structure: Structure
    Z: sp.csr_matrix  # (n, q_k)
    kind: str  # "intercept", "slopes", "ar1", "CAR", "SAR", "precision"
    columns: list[str]  # the columns per level (slopes) or ["(Intercept)"]
    unknowns: pd.Index  # a label per unknown, in v's order

    @property
    def name(self) -> str:
        return self.design.name

    @property
    def label(self) -> str:
        return self.design.term.label

    @property
    def q(self) -> int:
        return self.structure.q


def _indicator(codes: np.ndarray, n_cols: int, values: np.ndarray | None = None) -> sp.csr_matrix:
    n = len(codes)
    data = np.ones(n) if values is None else values
    return sp.csr_matrix((data, codes, np.arange(n + 1)), shape=(n, n_cols))


def _sorted_levels(col: pd.Series) -> tuple[np.ndarray, np.ndarray]:
    """(codes, levels) of a column, levels sorted like R (numerically when numeric)."""
    if pd.api.types.is_numeric_dtype(col):
        levels, codes = np.unique(col.to_numpy(), return_inverse=True)
    else:
        levels, codes = np.unique(col.astype(str).to_numpy(), return_inverse=True)
    return codes.astype(np.int64), levels


def build_terms(
    design: ModelDesign, data: Any, correlation: dict[str, Any] | None = None
) -> list[StructuredTerm]:
    """The structured view of every random term of a design (see the module docstring)."""
    frame = to_pandas(data)
    if not isinstance(frame.index, pd.RangeIndex):
        frame = frame.reset_index(drop=False)
    omitted = getattr(design, "omitted", None)  # rows a na_action="omit" design left out
    if omitted is not None and len(omitted):
        keep = np.ones(len(frame), dtype=bool)
        keep[np.asarray(omitted, dtype=np.int64)] = False
        frame = frame.iloc[np.flatnonzero(keep)].reset_index(drop=True)
    correlation = dict(correlation or {})
    names = {t.name for t in design.terms}
    unknown = set(correlation) - names
    if unknown:
        raise ValueError(
            f"correlation= names unknown random term(s) {sorted(unknown)}; the terms are "
            f"{sorted(names)}"
        )
    out = []
    for t in design.terms:
        term = t.term
        fam = t.family
        if fam.name != "normal" or fam.link.name != "identity":
            raise ValueError(
                f"{term.label} has {fam} random effects: a model with random slopes or "
                "correlated terms needs normal random effects throughout (the conjugate "
                "families stay with random intercepts alone)"
            )
        if t.X_disp.shape[1] != 1:
            raise ValueError(
                f"rand_disp is not available for {term.label} in a model with random slopes "
                "or correlated terms"
            )
        spec = correlation.get(t.name)
        G = t.n_levels
        if spec is not None:
            if not term.intercept_only:
                raise ValueError(
                    f"correlation= applies to random intercepts (1 | g); {term.label} is not one"
                )
            if not isinstance(spec, CAR | SAR | Precision):
                raise TypeError(
                    f"correlation[{t.name!r}] must be hglm.CAR(W), hglm.SAR(W) or "
                    f"hglm.Precision(Q), got {type(spec).__name__}"
                )
            structure = spec.bind(t.levels, t.name)
            kind = "precision" if isinstance(spec, Precision) else spec.kind
            out.append(
                StructuredTerm(
                    t,
                    structure,
                    _indicator(t.codes, G),
                    kind,
                    ["(Intercept)"],
                    pd.Index(t.levels.astype(str), name=t.name),
                )
            )
        elif term.structure == "ar1":
            assert term.time is not None
            tcodes, times = _sorted_levels(frame[term.time])
            T = len(times)
            structure = AR1(T, G)
            Z = _indicator(t.codes * T + tcodes, G * T)
            labels = [f"{g}:{tm}" for g in t.levels for tm in times]
            out.append(
                StructuredTerm(
                    t, structure, Z, "ar1", ["(Intercept)"], pd.Index(labels, name=t.name)
                )
            )
        elif term.intercept_only:
            out.append(
                StructuredTerm(
                    t,
                    Unstructured(1, G, ["(Intercept)"]),
                    _indicator(t.codes, G),
                    "intercept",
                    ["(Intercept)"],
                    pd.Index(t.levels.astype(str), name=t.name),
                )
            )
        else:
            E, cols, _ = fixed_matrix(
                term.effects_formula, frame, f"random effects of {term.label}"
            )
            k = E.shape[1]
            n = len(t.codes)
            idx = (t.codes[:, None] * k + np.arange(k)[None, :]).ravel()
            Z = sp.csr_matrix((E.ravel(), idx, np.arange(0, n * k + 1, k)), shape=(n, G * k))
            labels = [f"{g}:{c}" for g in t.levels for c in cols]
            out.append(
                StructuredTerm(
                    t, Unstructured(k, G, cols), Z, "slopes", cols, pd.Index(labels, name=t.name)
                )
            )
    return out
