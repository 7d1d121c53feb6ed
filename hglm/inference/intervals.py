"""Intervals for the dispersion parameters from the profile of the fit's criterion
(``profile_ci``), and intervals for every parameter (``confint``).

May import: ``hglm.inference.criteria``, ``hglm.dispatch`` (``hglm.results`` for annotations).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.optimize
from scipy import stats

from hglm.dispatch import FIT_ERRORS
from hglm.inference.criteria import CRITERION_TEXT, FitCriteria, fit_criteria

if TYPE_CHECKING:
    from hglm.results import HGLMResult


def _parameter_table(res: HGLMResult) -> list[tuple[str, str, int]]:
    """(label, scale, index into theta) of every dispersion parameter."""
    d = res.design
    disp = res.outcome.disp
    rows: list[tuple[str, str, int]] = []
    pos = 0
    if not disp.phi_fixed:
        if len(disp.gamma) == 1:
            rows.append(("phi", "phi", 0))
        else:
            rows += [(f"log phi: {n}", "log", i) for i, n in enumerate(d.disp_names)]
        pos = len(disp.gamma)
    for t, dk in zip(d.terms, disp.delta, strict=True):
        if len(dk) == 1:
            rows.append((f"lambda: {t.name}", "lambda", pos))
        else:
            rows += [
                (f"log lambda {t.name}: {n}", "log", pos + i) for i, n in enumerate(t.disp_names)
            ]
        pos += len(dk)
    return rows


def _wald_se(res: HGLMResult, index: int) -> float:
    se = np.concatenate(
        (
            []
            if res.outcome.disp.phi_fixed
            else [res.outcome.disp_se.get("phi", np.full(len(res.outcome.disp.gamma), np.nan))]
        )
        + [
            res.outcome.disp_se.get(t.name, np.full(len(dk), np.nan))
            for t, dk in zip(res.design.terms, res.outcome.disp.delta, strict=True)
        ]
    )
    return float(se[index]) if index < len(se) else math.nan


class _Profiler:
    """The profile of one parameter: the criterion maximised over the others.

    The maximiser moves smoothly along the profile, so each point starts from a linear
    extrapolation of the last two; with one other parameter a few Newton steps on a
    three-point stencil finish it, otherwise L-BFGS does."""

    def __init__(self, c: FitCriteria, j: int) -> None:
        self.c = c
        self.j = j  # position in x
        self.free = [i for i in range(len(c.x_hat)) if i != j]
        self.trace: list[tuple[float, np.ndarray]] = [(float(c.x_hat[j]), c.x_hat[self.free])]

    def _start(self, t: float) -> np.ndarray:
        pts = sorted(self.trace, key=lambda p: abs(p[0] - t))[:2]
        if len(pts) < 2 or pts[0][0] == pts[1][0]:
            return pts[0][1].copy()
        (t0, z0), (t1, z1) = pts
        return z0 + (z1 - z0) * (t - t0) / (t1 - t0)

    def _clip(self, z: np.ndarray) -> np.ndarray:
        lo = [self.c.bounds[i][0] for i in self.free]
        hi = [self.c.bounds[i][1] for i in self.free]
        return np.clip(
            z, [-np.inf if b is None else b for b in lo], [np.inf if b is None else b for b in hi]
        )

    def __call__(self, t: float) -> float:
        c = self.c
        x = c.x_hat.copy()
        x[self.j] = t
        if not self.free:
            return c.crit(x)
        free = self.free

        def f(z: np.ndarray) -> float:
            xx = x.copy()
            xx[free] = z
            return c.crit(xx)

        z = self._clip(self._start(t))
        value = -math.inf
        if len(free) == 1:
            value, z = self._newton(f, z)
        if not np.isfinite(value):
            value, z = self._lbfgs(f, self._clip(self._start(t)))
        if np.isfinite(value):
            self.trace.append((t, z))
        return value

    def _newton(self, f: Callable[[np.ndarray], float], z: np.ndarray) -> tuple[float, np.ndarray]:
        h = 1e-3
        fz = f(z)
        for _ in range(8):
            fp, fm = f(z + h), f(z - h)
            grad, curv = (fp - fm) / (2 * h), (fp - 2 * fz + fm) / h**2
            if not (np.isfinite(grad) and np.isfinite(curv)) or curv >= 0:
                return -math.inf, z
            step = float(np.clip(-grad / curv, -1.0, 1.0))
            new = self._clip(z + step)
            f_new = f(new)
            while not (np.isfinite(f_new) and f_new >= fz - 1e-10) and abs(step) > 1e-6:
                step /= 2
                new = self._clip(z + step)
                f_new = f(new)
            if not np.isfinite(f_new):
                return -math.inf, z
            z, fz = new, max(f_new, fz)
            # the remaining gain is about grad^2 / (2 |curv|): stop when negligible
            if abs(step) < 1e-4 or grad**2 / (2 * abs(curv)) < 1e-7:
                break
        return fz, z

    def _lbfgs(self, f: Callable[[np.ndarray], float], z0: np.ndarray) -> tuple[float, np.ndarray]:
        bounds = [self.c.bounds[i] for i in self.free]

        def negf(z: np.ndarray) -> tuple[float, np.ndarray]:
            fz = f(z)
            if not np.isfinite(fz):
                return 1e300, np.zeros_like(z)
            g = np.zeros_like(z)
            for k in range(len(z)):
                e = np.zeros_like(z)
                e[k] = 1e-4
                g[k] = (f(z + e) - f(z - e)) / 2e-4
            return -fz, -g

        opt = scipy.optimize.minimize(
            negf,
            z0,
            jac=True,
            method="L-BFGS-B",
            bounds=bounds,
            options={"maxiter": 100, "ftol": 1e-10, "gtol": 1e-3},
        )
        value = -float(opt.fun)
        return (value if value > -1e299 else -math.inf), opt.x


def _profile_side(
    prof: _Profiler,
    t_hat: float,
    value_hat: float,
    z: float,
    step: float,
    sign: int,
    bound: float | None,
) -> tuple[float, bool]:
    """Where the signed root sqrt(2 (max - profile)) reaches z on one side of t_hat.

    The root is close to linear in the log-scale parameter, so a secant on it converges
    in a few steps; it is safeguarded by the bracket [inside, outside] once one exists.
    Returns (limit, at_boundary): ``at_boundary`` when the profile stays within the
    interval all the way to the parameter's bound."""

    def root(t: float) -> float:
        v = prof(t)
        if not np.isfinite(v):
            raise FloatingPointError(f"the profile criterion is not finite at {t:.4g}")
        return math.sqrt(max(2.0 * (value_hat - v), 0.0))

    inside = (t_hat, 0.0)
    outside: tuple[float, float] | None = None
    last = inside
    t = t_hat + sign * step
    for _ in range(40):
        if bound is not None and sign * (t - bound) >= 0:
            t = bound
        r = root(t)
        if abs(r - z) < 2e-3:
            return t, False
        if r < z:
            if bound is not None and t == bound:
                return bound, True
            inside = (t, r)
        else:
            outside = (t, r)
        prev, last = last, (t, r)
        # secant through the last two points
        cand = math.nan
        if last[1] != prev[1]:
            cand = last[0] + (z - last[1]) * (last[0] - prev[0]) / (last[1] - prev[1])
        if outside is None:
            dist = abs(t - t_hat)
            ok = math.isfinite(cand) and sign * (cand - t) > 0
            # move outward: the secant guess, at least 1.2x and at most 4x farther
            new_dist = abs(cand - t_hat) if ok else 2 * dist
            t = t_hat + sign * min(max(new_dist, 1.2 * dist), 4 * dist + 1.0)
            continue
        lo, hi = sorted((inside[0], outside[0]))
        if hi - lo < 1e-4:
            return 0.5 * (lo + hi), False
        if not (math.isfinite(cand) and lo < cand < hi):
            # regula falsi on the bracket, then bisection if it hugs an end
            cand = inside[0] + (z - inside[1]) * (outside[0] - inside[0]) / (outside[1] - inside[1])
            if not lo + 0.02 * (hi - lo) < cand < hi - 0.02 * (hi - lo):
                cand = 0.5 * (lo + hi)
        t = cand
    raise FloatingPointError("the profile search did not converge")


def profile_ci(
    res: HGLMResult, *, parm: list[str] | None = None, level: float = 0.95
) -> pd.DataFrame:
    """Profile-likelihood intervals of the dispersion parameters, found on the log scale.

    One row per parameter (``"phi"``, ``"lambda: <term>"``, or the log-linear coefficients
    of a dispersion model): ``estimate``, ``lower``, ``upper`` on the natural scale
    (lambda, phi; coefficients as they are), the ``log_*`` columns, and ``method``. The
    criterion is the one the dispersions were estimated by (p_beta,v(h) for REML, p_v(h)
    for ML); where the profile cannot be traced the row falls back to the Wald interval
    on the log scale and ``method`` says so. A lower limit at lambda's bound is reported
    as 0.

    Parameters
    ----------
    res : HGLMResult
        The fit.
    parm : list of str, optional
        The parameters to profile (labels as in the returned index; default all).
    level : float
        The confidence level, between 0 and 1.

    Returns
    -------
    pandas.DataFrame
        One row per parameter (above).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    table = _parameter_table(res)
    if parm is not None:
        known = [r[0] for r in table]
        unknown = [p for p in parm if p not in known]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; choose from {known}")
        table = [r for r in table if r[0] in parm]
    z = float(stats.norm.ppf(0.5 + level / 2))
    try:
        c = fit_criteria(res)
        crit_error = None
    except FIT_ERRORS as exc:
        c, crit_error = None, str(exc)
    rows = []
    for label, scale, idx in table:
        se = _wald_se(res, idx)
        t_fit = float(res.outcome.disp.theta()[idx])
        row: dict[str, Any] = {"parameter": label, "scale": scale}
        try:
            if c is None:
                raise FloatingPointError(crit_error or "no criterion")
            j = c.offset + idx
            t_hat = float(c.x_hat[j])
            bound = c.bounds[j]
            step = z * (se if np.isfinite(se) and se > 0 else 0.5)
            step = min(max(step, 0.05), 3.0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                lo_t, lo_b = _profile_side(
                    _Profiler(c, j), t_hat, c.value_hat, z, step, -1, bound[0]
                )
                hi_t, hi_b = _profile_side(
                    _Profiler(c, j), t_hat, c.value_hat, z, step, +1, bound[1]
                )
            row.update(log_estimate=t_hat, log_lower=lo_t, log_upper=hi_t)
            row["method"] = f"profile {CRITERION_TEXT[c.which]}"
            if c.note:
                row["method"] += f" ({c.note})"
            if hi_b:
                row["method"] += "; upper limit at the parameter bound"
            lower_at_zero = lo_b and scale == "lambda"
        except FIT_ERRORS as exc:
            if not (np.isfinite(se) and se > 0):
                raise ValueError(
                    f"no interval for {label}: the profile failed ({exc}) and there is no "
                    "standard error for a Wald interval"
                ) from exc
            row.update(log_estimate=t_fit, log_lower=t_fit - z * se, log_upper=t_fit + z * se)
            row["method"] = f"Wald (log scale; profile failed: {exc})"
            lower_at_zero = False
        if scale == "log":
            row.update(estimate=row["log_estimate"], lower=row["log_lower"], upper=row["log_upper"])
        else:
            row.update(
                estimate=math.exp(row["log_estimate"]),
                lower=0.0 if lower_at_zero else math.exp(row["log_lower"]),
                upper=math.exp(row["log_upper"]),
            )
        rows.append(row)
    cols = [
        "estimate",
        "lower",
        "upper",
        "log_estimate",
        "log_lower",
        "log_upper",
        "scale",
        "method",
    ]
    return pd.DataFrame(rows).set_index("parameter")[cols]


def confint(res: HGLMResult, *, level: float = 0.95, dispersion: str = "profile") -> pd.DataFrame:
    """Intervals for every parameter: Wald for the fixed effects (t or z as in ``fixef``),
    profile (``dispersion="profile"``) or Wald on the log scale (``"wald"``) for the
    dispersion parameters.

    Parameters
    ----------
    res : HGLMResult
        The fit.
    level : float
        The confidence level, between 0 and 1.
    dispersion : str
        ``"profile"`` or ``"wald"``: how the dispersion parameters' intervals are made.

    Returns
    -------
    pandas.DataFrame
        ``estimate``, ``lower``, ``upper`` and ``method`` per parameter.
    """
    if dispersion not in ("profile", "wald"):
        raise ValueError("dispersion must be 'profile' or 'wald'")
    fx = res.fixef
    if "t" in fx.columns:
        q = float(stats.t.ppf(0.5 + level / 2, max(res.df_residual, 1)))
        how = f"Wald (t, {res.df_residual} df)"
    else:
        q = float(stats.norm.ppf(0.5 + level / 2))
        how = "Wald (z)"
    fixed = pd.DataFrame(
        {
            "estimate": fx["estimate"],
            "lower": fx["estimate"] - q * fx["se"],
            "upper": fx["estimate"] + q * fx["se"],
            "method": how,
        }
    )
    if dispersion == "profile":
        disp = profile_ci(res, level=level)[["estimate", "lower", "upper", "method"]]
    else:
        z = float(stats.norm.ppf(0.5 + level / 2))
        rows = []
        for label, scale, idx in _parameter_table(res):
            t = float(res.outcome.disp.theta()[idx])
            se = _wald_se(res, idx)
            lo, hi = t - z * se, t + z * se
            if scale != "log":
                t, lo, hi = math.exp(t), math.exp(lo), math.exp(hi)
            rows.append(
                {
                    "parameter": label,
                    "estimate": t,
                    "lower": lo,
                    "upper": hi,
                    "method": "Wald (log scale)",
                }
            )
        disp = pd.DataFrame(rows).set_index("parameter") if rows else None
    return pd.concat([fixed, disp]) if disp is not None else fixed
