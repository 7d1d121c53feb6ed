"""Defect density D0 and clustering alpha: a Poisson-gamma (negative binomial) HGLM of the
killer-defect fail counts per wafer and zone.

Model: the dies of wafer w's zone z that fail in a defect bin, k_wz, are Poisson with mean
D0 x A x n_wz x u_wz, where n_wz is the zone's tested dies, A the die area and u_wz a gamma
random effect of mean 1 and variance 1/alpha, one per wafer and zone. That is the HGLM of Lee &
Nelder with a Poisson response and a gamma observation-level random effect; the random effect
integrates out in closed form to NB2 with size theta = alpha and mean D0 A n_wz, which is how
`hglm` fits it (`family="nbinom2"`, the exact NB likelihood; theta profiled). log D0 is the
intercept, log(A n_wz) the offset. Further random terms (a lot's defect level, say) can be
added to the formula; their variance then sits beside alpha's.

D0 is in defects per cm^2 when the die areas are given (per product), else per die (A = 1).
Intervals: D0 from the intercept's Wald interval (exp of beta0 +- 1.96 SE), alpha from `hglm`'s
interval of theta. A die with two defects is one fail, so k counts defects exactly only when
defects land on distinct dies (the simulator's model); with D0 x A of a few percent the
difference is below the interval's width at a few thousand wafers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import polars as pl

import hglm

Z95 = 1.959963984540054


@dataclass(frozen=True)
class DefectDensity:
    """The fitted D0 and alpha with their 95 % intervals, and what they came from."""

    d0: float
    d0_low: float
    d0_high: float
    alpha: float
    alpha_low: float
    alpha_high: float
    unit: str  # "defects per cm^2" or "defects per die"
    n_counts: int  # wafer x zone rows
    n_fails: int  # dies in the defect bins
    converged: bool
    formula: str
    fit: Any  # the hglm result

    def covers(self, d0: float, alpha: float) -> tuple[bool, bool]:
        """Whether the 95 % intervals hold the given D0 and alpha."""
        return self.d0_low <= d0 <= self.d0_high, self.alpha_low <= alpha <= self.alpha_high


ZONE_COUNTS_SQL = """
SELECT wafer_id, lot_id, product, zone, count(*) AS dies,
    count(*) FILTER (WHERE list_contains($bins, bin)) AS fails
FROM marts.die_frame
GROUP BY ALL
ORDER BY wafer_id, zone
"""


def zone_fail_counts(con: duckdb.DuckDBPyConnection, defect_bins: list[int]) -> pl.DataFrame:
    """Per wafer and zone: the dies tested and those failing in `defect_bins` (marts.die_frame).

    Parameters
    ----------
    con : a connection to the database
    defect_bins : the hard bins of killer defects (e.g. the simulator's random-defect bin)

    Returns
    -------
    pl.DataFrame : wafer_id, lot_id, product, zone, dies, fails
    """
    if not defect_bins:
        raise ValueError("name at least one defect bin")
    bins = [int(b) for b in defect_bins]
    return pl.from_arrow(con.sql(ZONE_COUNTS_SQL, params={"bins": bins}).to_arrow_table())


def fit_defect_density(
    counts: pl.DataFrame,
    die_area_cm2: dict[str, float] | None = None,
    random_terms: str = "",
) -> DefectDensity:
    """Fit D0 and alpha to fail counts per wafer and zone (see the module docstring).

    Parameters
    ----------
    counts : one row per wafer and zone: `dies` (tested), `fails` (in the defect bins),
        `product` (when `die_area_cm2` is given) and any column `random_terms` names
    die_area_cm2 : die area per product; without it D0 is per die
    random_terms : further random terms of the formula, e.g. "(1|lot_id)"

    Returns
    -------
    DefectDensity

    Raises
    ------
    ValueError : a product without a die area, counts that are not counts, no fails at all
    """
    needed = ["dies", "fails"] + (["product"] if die_area_cm2 is not None else [])
    missing = [c for c in needed if c not in counts.columns]
    if missing:
        raise ValueError(f"the counts lack the columns {missing}")
    frame = counts.filter(pl.col("dies") > 0)
    dies = frame["dies"].to_numpy().astype(float)
    fails = frame["fails"].to_numpy()
    if np.any(fails < 0) or np.any(fails > dies) or np.any(fails != np.round(fails)):
        raise ValueError("fails must be whole numbers between 0 and the dies tested")
    if fails.sum() == 0:
        raise ValueError("no die fails in the defect bins: D0 is not estimable")
    if die_area_cm2 is not None:
        unknown = sorted(set(frame["product"]) - set(die_area_cm2))
        if unknown:
            raise ValueError(f"no die area for the products {unknown}")
        area = frame["product"].replace_strict(die_area_cm2, return_dtype=pl.Float64).to_numpy()
        unit = "defects per cm^2"
    else:
        area = np.ones(len(frame))
        unit = "defects per die"
    data = frame.with_columns(
        fails=pl.Series(fails.astype(float)), exposure=pl.Series(dies * area)
    ).to_pandas()
    formula = "fails ~ 1 + offset(log(exposure))" + (f" + {random_terms}" if random_terms else "")
    res = hglm.fit(formula, data, family="nbinom2")
    beta, se = (
        float(res.fixef.loc["(Intercept)", "estimate"]),
        float(res.fixef.loc["(Intercept)", "se"]),
    )
    theta = res.theta
    return DefectDensity(
        d0=math.exp(beta),
        d0_low=math.exp(beta - Z95 * se),
        d0_high=math.exp(beta + Z95 * se),
        alpha=float(theta["estimate"]),
        alpha_low=float(theta["lower"]),
        alpha_high=float(theta["upper"]),
        unit=unit,
        n_counts=len(frame),
        n_fails=int(fails.sum()),
        converged=bool(res.converged),
        formula=formula,
        fit=res,
    )
