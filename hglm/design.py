"""Model frame -> design: response, X (dense, R-style names), one code vector per random term.

A random intercept's block of Z is an indicator matrix: it is stored as an integer
code per row (level index), never as a matrix. Slopes and AR(1) terms keep the codes
of their grouping; their columns are built by ``hglm.structured``. Input checks live here and raise ``ValueError`` naming the column and
the offending rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import formulaic
import numpy as np
import pandas as pd
import scipy.sparse as sp
from formulaic.transforms.contrasts import CustomContrasts

from hglm.families import COUNT_FAMILIES, RandomFamily, ResponseFamily, random_family
from hglm.formula import ModelFormula, RandomTerm, normalise_term_key

_MAX_ROWS_SHOWN = 10


# ----------------------------------------------------------------------------- names


def poly_contrasts(n_levels: int) -> tuple[np.ndarray, list[str]]:
    """R's ``contr.poly``: orthonormal polynomial contrasts and their names."""
    if n_levels < 2:
        raise ValueError("polynomial contrasts need at least two levels")
    x = np.arange(1, n_levels + 1, dtype=float)
    x -= x.mean()
    q, r = np.linalg.qr(np.vander(x, n_levels, increasing=True))
    q = q * np.sign(np.diag(r))
    names = [".L", ".Q", ".C"] + [f"^{d}" for d in range(4, n_levels)]
    return q[:, 1:], names[: n_levels - 1]


_LEVEL_RE = re.compile(r"^(.*)\[(T\.)?(.*)\]$")


def r_style_name(column: str, aliases: dict[str, str]) -> str:
    """``seed[T.O75]:extract[T.Cucumber]`` -> ``seedO75:extractCucumber`` (R's names)."""
    if column == "Intercept":
        return "(Intercept)"
    parts = []
    for part in column.split(":"):
        m = _LEVEL_RE.match(part)
        if m:
            prefix = aliases.get(m.group(1), m.group(1))
            parts.append(prefix + m.group(3))
        else:
            parts.append(aliases.get(part, part))
    return ":".join(parts)


def _rows_text(index: pd.Index, mask: np.ndarray) -> str:
    rows = list(index[np.asarray(mask)])
    shown = ", ".join(str(r) for r in rows[:_MAX_ROWS_SHOWN])
    more = f" and {len(rows) - _MAX_ROWS_SHOWN} more" if len(rows) > _MAX_ROWS_SHOWN else ""
    return f"rows [{shown}]{more}"


def to_pandas(data: Any) -> pd.DataFrame:
    if isinstance(data, pd.DataFrame):
        return data
    if hasattr(data, "to_pandas"):  # polars, pyarrow
        return data.to_pandas()
    raise TypeError(f"data must be a pandas or polars DataFrame, got {type(data).__name__}")


# --------------------------------------------------------------------------- designs


@dataclass
class RandomTermDesign:
    term: RandomTerm
    family: RandomFamily
    codes: np.ndarray  # (n,) level index of each row
    levels: np.ndarray  # (q,) level labels, sorted
    observation_level: bool  # one level per row: eliminated in closed form
    X_disp: np.ndarray  # (q, r) design of log lambda (intercept column if no model)
    disp_names: list[str]

    @property
    def name(self) -> str:
        return self.term.name

    @property
    def n_levels(self) -> int:
        return len(self.levels)

    def indicator(self) -> sp.csr_matrix:
        n = len(self.codes)
        return sp.csr_matrix((np.ones(n), self.codes, np.arange(n + 1)), shape=(n, self.n_levels))


@dataclass
class FixedSpec:
    """What predict() needs to rebuild X on new data."""

    model_spec: Any
    context: dict[str, Any]
    aliases: dict[str, str]


@dataclass(frozen=True)
class OffsetSpec:
    """Where the offset came from, so that predict() can rebuild it on new data: the
    formula's ``offset(...)`` expressions, and the ``offset=`` argument when it named a
    column or an expression (``argument_values``: it was an array of the fit's rows)."""

    formula_terms: tuple[str, ...] = ()
    argument: str | None = None
    argument_values: bool = False

    @property
    def present(self) -> bool:
        return bool(self.formula_terms) or self.argument is not None or self.argument_values


@dataclass
class ModelDesign:
    formula: ModelFormula
    family: ResponseFamily
    y: np.ndarray  # response (a proportion for binomial)
    prior_weights: np.ndarray  # trials x user weights
    offset: np.ndarray
    X: np.ndarray
    fixed_names: list[str]
    X_disp: np.ndarray  # design of log phi (n, r)
    disp_names: list[str]
    terms: list[RandomTermDesign]
    index: pd.Index
    fixed_spec: FixedSpec
    trials: np.ndarray | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    offset_spec: OffsetSpec = field(default_factory=OffsetSpec)
    # na_action="omit": labels (positions in the data as given) of the rows left out
    omitted: pd.Index = field(default_factory=lambda: pd.Index([], dtype=np.int64))

    @property
    def n_omitted(self) -> int:
        return len(self.omitted)

    @property
    def n(self) -> int:
        return len(self.y)

    @property
    def p(self) -> int:
        return self.X.shape[1]


def _rewrite_fixed(rhs: str, frame: pd.DataFrame) -> tuple[str, dict[str, Any], dict[str, str]]:
    """R conveniences on top of formulaic: ``factor(x)`` and ordered factors (poly contrasts)."""
    context: dict[str, Any] = {}
    aliases: dict[str, str] = {}

    def factor_sub(m: re.Match[str]) -> str:
        var = m.group(1)
        aliases[f"C({var})"] = f"factor({var})"
        return f"C({var})"

    rhs = re.sub(r"\bfactor\(\s*([A-Za-z_][\w.]*)\s*\)", factor_sub, rhs)
    for col in frame.columns:
        s = frame[col]
        if isinstance(s.dtype, pd.CategoricalDtype) and s.dtype.ordered:
            pattern = rf"(?<![\w.(]){re.escape(str(col))}(?![\w.(])"
            if re.search(pattern, rhs):
                matrix, names = poly_contrasts(len(s.cat.categories))
                key = f"__poly_{col}"
                context[key] = CustomContrasts(matrix, names=names)
                expr = f"C({col}, {key})"
                aliases[expr] = str(col)
                rhs = re.sub(pattern, expr, rhs)
    return rhs, context, aliases


def fixed_matrix(
    rhs: str, frame: pd.DataFrame, what: str
) -> tuple[np.ndarray, list[str], FixedSpec]:
    rewritten, context, aliases = _rewrite_fixed(rhs, frame)
    try:
        mm = formulaic.model_matrix(rewritten, frame, context=context, na_action="raise")
    except Exception as exc:  # formulaic's own errors are obscure; say where it came from
        raise ValueError(f"cannot build the {what} design from {rhs!r}: {exc}") from exc
    names = [r_style_name(c, aliases) for c in mm.columns]
    spec = FixedSpec(model_spec=mm.model_spec, context=context, aliases=aliases)
    return np.asarray(mm.to_numpy(), dtype=float), names, spec


def required_columns(expr: str) -> set[str]:
    rewritten = re.sub(r"\bfactor\(", "C(", expr)
    try:
        return set(formulaic.Formula(rewritten).required_variables)
    except Exception as exc:
        raise ValueError(f"cannot read formula {expr!r}: {exc}") from exc


NA_ACTIONS = ("raise", "omit")


def _check_columns(frame: pd.DataFrame, needed: dict[str, str]) -> None:
    for col, role in needed.items():
        if col not in frame.columns:
            raise ValueError(f"column {col!r} ({role}) is not in the data")
    for col, role in needed.items():
        s = frame[col]
        mask = s.isna().to_numpy()
        if mask.any():
            raise ValueError(
                f"column {col!r} ({role}) has missing values in {_rows_text(frame.index, mask)}; "
                'na_action="omit" leaves such rows out'
            )


def _missing_rows(frame: pd.DataFrame, needed: dict[str, str], arrays: list[Any]) -> np.ndarray:
    """Rows with a missing value in any used column or in an array given per row."""
    mask = np.zeros(len(frame), dtype=bool)
    for col in needed:
        mask |= frame[col].isna().to_numpy()
    for value in arrays:
        arr = np.asarray(value, dtype=float).reshape(-1)
        if arr.shape[0] == len(frame):
            mask |= np.isnan(arr)
    return mask


def evaluate_offset(spec: OffsetSpec, frame: pd.DataFrame, argument: Any = None) -> np.ndarray:
    """The summed offset of ``frame``'s rows: the formula's offset(...) terms plus the
    ``offset=`` argument (a column, an expression, or an array given as ``argument``)."""
    total = np.zeros(len(frame))
    for expr in spec.formula_terms:
        total = total + _column_or_array(frame, expr, f"offset({expr})")
    if spec.argument is not None:
        total = total + _column_or_array(frame, spec.argument, "offset")
    elif argument is not None:
        total = total + _column_or_array(frame, argument, "offset")
    return total


def _column_or_array(frame: pd.DataFrame, value: Any, role: str) -> np.ndarray:
    if isinstance(value, str):
        if value in frame.columns:
            arr = frame[value].to_numpy(dtype=float)
        else:
            arr, _, _ = fixed_matrix(f"0 + {value}", frame, role)
            if arr.shape[1] != 1:
                raise ValueError(f"{role} {value!r} must give one column")
            arr = arr[:, 0]
    else:
        arr = np.asarray(value, dtype=float).reshape(-1)
        if arr.shape[0] != len(frame):
            raise ValueError(f"{role} has length {arr.shape[0]}, the data has {len(frame)} rows")
    bad = ~np.isfinite(arr)
    if bad.any():
        raise ValueError(f"{role} has missing or infinite values in {_rows_text(frame.index, bad)}")
    return arr


def _check_response(
    family: ResponseFamily, y: np.ndarray, trials: np.ndarray | None, frame: pd.DataFrame, name: str
) -> None:
    idx = frame.index
    if family.name in COUNT_FAMILIES:
        bad = (y < 0) | (np.abs(y - np.rint(y)) > 1e-8)
        if bad.any():
            raise ValueError(
                f"response {name!r} must hold non-negative integer counts for {family.name}; "
                f"see {_rows_text(idx, bad)}"
            )
    if family.name == "binomial":
        if trials is None:
            bad = y > 1
            if bad.any():
                raise ValueError(
                    f"response {name!r} must be 0/1 for binomial without trials=; "
                    f"see {_rows_text(idx, bad)}"
                )
        else:
            bad = (trials <= 0) | (np.abs(trials - np.rint(trials)) > 1e-8)
            if bad.any():
                raise ValueError(f"trials must be positive integers; see {_rows_text(idx, bad)}")
            bad = trials < y
            if bad.any():
                raise ValueError(
                    f"trials < {name!r} (more successes than trials) in {_rows_text(idx, bad)}"
                )
    if family.name == "gamma":
        bad = y <= 0
        if bad.any():
            raise ValueError(
                f"response {name!r} must be positive for gamma; see {_rows_text(idx, bad)}"
            )


def _term_codes(frame: pd.DataFrame, term: RandomTerm) -> tuple[np.ndarray, np.ndarray]:
    cols = list(term.factors)
    # sort levels like R (numerically when every factor is numeric)
    if all(pd.api.types.is_numeric_dtype(frame[c]) for c in cols):
        grouper = frame[cols]
    else:
        grouper = frame[cols].astype(str)
    codes = grouper.groupby(cols, sort=True).ngroup().to_numpy()
    first = np.zeros(codes.max() + 1, dtype=np.int64)
    first[codes[::-1]] = np.arange(len(codes))[::-1]
    # level labels need the text of one row per level only (not of every row)
    keys = frame[cols].iloc[first].astype(str)
    labels = keys.agg(":".join, axis=1).to_numpy() if len(cols) > 1 else keys[cols[0]].to_numpy()
    return codes.astype(np.int64), np.asarray(labels, dtype=object)


def build_design(
    formula: ModelFormula,
    data: Any,
    family: ResponseFamily,
    rand_family: str | RandomFamily | dict[str, str | RandomFamily] = "normal",
    disp: str | None = None,
    rand_disp: dict[str, str] | None = None,
    trials: str | None = None,
    weights: Any = None,
    offset: Any = None,
    na_action: str = "raise",
) -> ModelDesign:
    """The design of ``formula`` on ``data``. ``na_action="raise"`` (default) refuses rows
    with missing values in any column the model uses; ``"omit"`` leaves them out and records
    them (``ModelDesign.omitted``)."""
    if na_action not in NA_ACTIONS:
        raise ValueError(f"na_action must be one of {NA_ACTIONS}, got {na_action!r}")
    frame = to_pandas(data)
    if len(frame) == 0:
        raise ValueError("the data has no rows")

    # -- which columns are used, for what ----------------------------------------------
    needed: dict[str, str] = {formula.response: "response"}
    for col in required_columns(formula.fixed_formula) - {formula.response}:
        needed.setdefault(col, "fixed effects")
    for term in formula.random:
        for f in term.factors:
            needed.setdefault(f, f"grouping factor of {term.label}")
        if not term.intercept_only:
            for col in required_columns(f"~ {term.effects_formula}"):
                needed.setdefault(col, f"random effects of {term.label}")
        if term.time is not None:
            needed.setdefault(term.time, f"time of {term.label}")
    if disp is not None:
        for col in required_columns(_rhs_formula(disp)):
            needed.setdefault(col, "dispersion model")
    rand_disp = {normalise_term_key(k): v for k, v in (rand_disp or {}).items()}
    for key, f in rand_disp.items():
        for col in required_columns(_rhs_formula(f)):
            needed.setdefault(col, f"dispersion model of {key}")
    if trials is not None:
        needed.setdefault(trials, "binomial trials")
    for role, value in (("weights", weights), ("offset", offset)):
        if isinstance(value, str):
            for col in {value} if value in frame.columns else required_columns(f"~ {value}"):
                needed.setdefault(col, role)
    for expr in formula.offsets:
        for col in {expr} if expr in frame.columns else required_columns(f"~ {expr}"):
            needed.setdefault(col, f"offset({expr})")
    omitted = pd.Index([], dtype=np.int64)
    keep = None
    if na_action == "omit":
        absent = {c: r for c, r in needed.items() if c not in frame.columns}
        if absent:
            _check_columns(frame, absent)  # names the first absent column
        per_row = [v for v in (weights, offset) if v is not None and not isinstance(v, str)]
        drop = _missing_rows(frame, needed, per_row)
        if drop.all():
            raise ValueError("every row has a missing value in a column the model uses")
        if drop.any():
            omitted, keep = frame.index[drop], ~drop
            weights, offset = (
                np.asarray(v, dtype=float).reshape(-1)[keep]
                if v is not None and not isinstance(v, str)
                else v
                for v in (weights, offset)
            )
    else:
        _check_columns(frame, needed)
    frame = frame.reset_index(drop=False) if not isinstance(frame.index, pd.RangeIndex) else frame
    if keep is not None:
        # row labels stay the positions in the data as given (error messages name those)
        frame = frame.loc[keep]
    index = frame.index

    # -- response ----------------------------------------------------------------------
    y_col = frame[formula.response]
    if not pd.api.types.is_numeric_dtype(y_col):
        raise ValueError(f"response {formula.response!r} must be numeric")
    y = y_col.to_numpy(dtype=float)
    if trials is not None and family.name != "binomial":
        raise ValueError("trials= is only meaningful for the binomial family")
    trials_arr = _column_or_array(frame, trials, "trials") if trials is not None else None
    _check_response(family, y, trials_arr, frame, formula.response)
    w = np.ones(len(frame)) if weights is None else _column_or_array(frame, weights, "weights")
    bad = w <= 0
    if bad.any():
        raise ValueError(f"weights must be positive; see {_rows_text(index, bad)}")
    prior_weights = w.copy()
    if family.name == "binomial" and trials_arr is not None:
        y = y / trials_arr
        prior_weights = prior_weights * trials_arr
    offset_spec = OffsetSpec(
        formula_terms=formula.offsets,
        argument=offset if isinstance(offset, str) else None,
        argument_values=offset is not None and not isinstance(offset, str),
    )
    off = evaluate_offset(offset_spec, frame, offset)

    # -- fixed part --------------------------------------------------------------------
    X, names, spec = fixed_matrix(formula.fixed, frame, "fixed-effects")
    rank = np.linalg.matrix_rank(X) if X.shape[1] else 0
    if rank < X.shape[1]:
        raise ValueError(
            f"the fixed-effects design of {formula.fixed!r} is rank deficient "
            f"(rank {rank} < {X.shape[1]} columns {names})"
        )

    # -- dispersion model of phi ---------------------------------------------------------
    if disp is None:
        X_disp, disp_names = np.ones((len(frame), 1)), ["(Intercept)"]
    else:
        X_disp, disp_names, _ = fixed_matrix(
            _rhs_formula(disp).split("~", 1)[1], frame, "dispersion"
        )

    # -- random terms ------------------------------------------------------------------
    fams = _random_families(formula, rand_family)
    terms: list[RandomTermDesign] = []
    for term in formula.random:
        codes, levels = _term_codes(frame, term)
        if len(levels) < 2:
            raise ValueError(
                f"grouping factor {term.name!r} of {term.label} has a single level "
                f"({levels[0]!r}); a variance cannot be estimated from one group"
            )
        obs_level = len(levels) == len(frame) and term.intercept_only
        if not term.intercept_only:
            fam = fams[term.name]
            if fam.name != "normal" or fam.link.name != "identity":
                raise ValueError(
                    f"{term.label} needs normal random effects: random slopes and correlated "
                    f"(CAR, SAR, AR(1)) terms are normal; the conjugate families ({fam}) stay "
                    "intercept-only (1 | g)"
                )
            if term.name in rand_disp:
                raise ValueError(
                    f"rand_disp cannot model the variance of {term.label}: dispersion models "
                    "are for random intercepts (1 | g)"
                )
        if term.name in rand_disp:
            Xr_rows, rnames, _ = fixed_matrix(
                _rhs_formula(rand_disp[term.name]).split("~", 1)[1],
                frame,
                f"dispersion of {term.name}",
            )
            first = np.zeros(len(levels), dtype=np.int64)
            first[codes[::-1]] = np.arange(len(codes))[::-1]
            Xr = Xr_rows[first]
            varies = np.any(np.abs(Xr_rows - Xr[codes]) > 1e-12, axis=1)
            if varies.any():
                raise ValueError(
                    f"the dispersion covariates of {term.name!r} must be constant within its "
                    f"levels; they vary in {_rows_text(index, varies)}"
                )
        else:
            Xr, rnames = np.ones((len(levels), 1)), ["(Intercept)"]
        terms.append(
            RandomTermDesign(
                term=term,
                family=fams[term.name],
                codes=codes,
                levels=levels,
                observation_level=obs_level,
                X_disp=Xr,
                disp_names=rnames,
            )
        )
    unknown = set(rand_disp) - {t.name for t in formula.random}
    if unknown:
        raise ValueError(f"rand_disp names unknown random term(s) {sorted(unknown)}")
    return ModelDesign(
        formula=formula,
        family=family,
        y=y,
        prior_weights=prior_weights,
        offset=off,
        X=X,
        fixed_names=names,
        X_disp=X_disp,
        disp_names=disp_names,
        terms=terms,
        index=index,
        fixed_spec=spec,
        trials=trials_arr,
        offset_spec=offset_spec,
        omitted=omitted,
        extras={"trials_column": trials} if isinstance(trials, str) else {},
    )


def _rhs_formula(f: str) -> str:
    f = f.strip()
    return f if f.startswith("~") else f"~ {f}"


def _random_families(
    formula: ModelFormula, rand_family: str | RandomFamily | dict[str, str | RandomFamily]
) -> dict[str, RandomFamily]:
    names = [t.name for t in formula.random]
    if isinstance(rand_family, dict):
        given = {normalise_term_key(k): random_family(v) for k, v in rand_family.items()}
        unknown = set(given) - set(names)
        if unknown:
            raise ValueError(f"rand_family names unknown random term(s) {sorted(unknown)}")
        default = random_family("normal")
        return {n: given.get(n, default) for n in names}
    fam = random_family(rand_family)
    return dict.fromkeys(names, fam)


def new_fixed_matrix(spec: FixedSpec, data: Any) -> np.ndarray:
    frame = to_pandas(data)
    mm = spec.model_spec.get_model_matrix(frame, context=spec.context)
    return np.asarray(mm.to_numpy(), dtype=float)


def new_term_codes(term: RandomTermDesign, data: Any) -> np.ndarray:
    """Level index of each new row; -1 for a level not seen in the fit."""
    frame = to_pandas(data)
    cols = list(term.term.factors)
    missing = [c for c in cols if c not in frame.columns]
    if missing:
        raise ValueError(f"newdata lacks grouping column(s) {missing} of {term.term.label}")
    keys = frame[cols].astype(str)
    labels = keys.agg(":".join, axis=1) if len(cols) > 1 else keys[cols[0]]
    lookup = pd.Index(term.levels.astype(str))
    return lookup.get_indexer(labels.to_numpy())
