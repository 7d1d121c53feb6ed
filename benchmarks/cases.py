"""The benchmark cases of issue 4: deterministic data generators and the model of each case.

Every generator is vectorised numpy with a fixed seed, so a case is the same data on every run
and for every package. Formulas use lme4 syntax; a binomial response with a number of trials
names the successes column in the formula and the totals in ``trials``.

Fab cases (5-7): a lot of 25 wafers follows one path through the fab, i.e. at every operation
the whole lot runs on one tool and one chamber of that tool ("lot nested in tool paths"); each
operation contributes a tool term and a chamber term, plus a lot term, a wafer-level
over-dispersion term and one wafer-level covariate.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

SHARED_DATA = (
    Path(os.environ.get("YIELDRANK_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    / "data"
)


@dataclass(frozen=True)
class Case:
    key: str
    title: str
    family: str  # "gaussian", "poisson" or "binomial" (response family, canonical link)
    formula: str  # lme4 syntax: response ~ fixed + (1 | g) + ...
    generate: Callable[[], pd.DataFrame] = field(repr=False)
    trials: str | None = None  # column of binomial totals
    statsmodels: str | None = None  # "mixedlm", "binomial_bayes", "poisson_bayes" or None
    statsmodels_note: str = ""
    r_peers: tuple[str, ...] = ("lme4", "glmmTMB")  # the R packages that can fit the model

    @property
    def response(self) -> str:
        return self.formula.split("~")[0].strip()

    @property
    def random_terms(self) -> list[str]:
        return re.findall(r"\(1 \| ([^)]+)\)", self.formula)

    @property
    def fixed_rhs(self) -> str:
        """Right-hand side without the random terms ("1" if nothing else)."""
        rhs = self.formula.split("~", 1)[1]
        kept = [t.strip() for t in rhs.split("+") if "|" not in t and ")" not in t]
        return " + ".join(t for t in kept if t) or "1"


def _codes(rng: np.random.Generator, n_levels: int, size: int) -> np.ndarray:
    return rng.integers(0, n_levels, size)


def _poisson(rng: np.random.Generator, eta: np.ndarray) -> np.ndarray:
    return rng.poisson(np.exp(eta))


def _bernoulli(rng: np.random.Generator, eta: np.ndarray) -> np.ndarray:
    return (rng.random(len(eta)) < 1.0 / (1.0 + np.exp(-eta))).astype(np.int64)


def grouseticks_like() -> pd.DataFrame:
    """403 chicks in 118 broods in 63 locations, 3 years; Poisson counts with a brood, a
    location and a chick-level (over-dispersion) term, as in lme4's grouseticks model."""
    rng = np.random.default_rng(101)
    n, n_brood, n_loc = 403, 118, 63
    brood_loc = np.concatenate([np.arange(n_loc), _codes(rng, n_loc, n_brood - n_loc)])
    brood_year = _codes(rng, 3, n_brood)
    brood = np.concatenate([np.arange(n_brood), _codes(rng, n_brood, n - n_brood)])
    loc = brood_loc[brood]
    height = rng.normal(460, 50, n_loc)
    year = brood_year[brood]
    eta = (
        0.4
        + np.array([0.0, 1.1, -1.0])[year]
        - 0.8 * (height[loc] - 460) / 50
        + rng.normal(0, 1.0, n_brood)[brood]
        + rng.normal(0, 0.6, n_loc)[loc]
        + rng.normal(0, 0.5, n)
    )
    return pd.DataFrame(
        {
            "ticks": _poisson(rng, eta),
            "year": np.array(["y95", "y96", "y97"])[year],
            "height": (height[loc] - 460) / 50,
            "brood": brood,
            "location": loc,
            "index": np.arange(n),
        }
    )


def cbpp() -> pd.DataFrame:
    """lme4's cbpp data (56 herd-periods), read from the shared data directory."""
    data = pd.read_csv(SHARED_DATA / "cbpp.csv", dtype={"herd": str, "period": str})
    return data.assign(period="p" + data["period"])


def poisson_one_term() -> pd.DataFrame:
    """n = 20,000 counts in 2,000 groups of 10, one covariate."""
    rng = np.random.default_rng(102)
    n, q = 20_000, 2_000
    g = np.repeat(np.arange(q), n // q)
    x = rng.normal(size=n)
    eta = 0.5 + 0.3 * x + rng.normal(0, 0.5, q)[g]
    return pd.DataFrame({"y": _poisson(rng, eta), "x": x, "g": g})


def insteval_like() -> pd.DataFrame:
    """InstEval-size Gaussian: 73,421 ratings, students (2,972) x lecturers (1,128) crossed,
    lecturers nested in 14 departments, a binary 'service' covariate."""
    rng = np.random.default_rng(103)
    n, n_s, n_d, n_dept = 73_421, 2_972, 1_128, 14
    s = np.concatenate([np.arange(n_s), _codes(rng, n_s, n - n_s)])
    d = np.concatenate([np.arange(n_d), _codes(rng, n_d, n - n_d)])
    rng.shuffle(d)
    d_dept = np.concatenate([np.arange(n_dept), _codes(rng, n_dept, n_d - n_dept)])
    dept = d_dept[d]
    service = rng.random(n) < 0.4
    y = (
        3.2
        - 0.07 * service
        + rng.normal(0, 0.32, n_s)[s]
        + rng.normal(0, 0.52, n_d)[d]
        + rng.normal(0, 0.08, n_dept)[dept]
        + rng.normal(0, 1.18, n)
    )
    return pd.DataFrame(
        {"y": y, "service": np.where(service, "yes", "no"), "s": s, "d": d, "dept": dept}
    )


def verbagg_like() -> pd.DataFrame:
    """VerbAgg-size binary responses: 316 persons x 24 items fully crossed (n = 7,584)."""
    rng = np.random.default_rng(104)
    n_id, n_item = 316, 24
    person = np.repeat(np.arange(n_id), n_item)
    item = np.tile(np.arange(n_item), n_id)
    anger = rng.integers(11, 40, n_id)
    eta = (
        -0.4
        + 0.06 * (anger[person] - 20)
        + rng.normal(0, 1.3, n_id)[person]
        + rng.normal(0, 0.8, n_item)[item]
    )
    return pd.DataFrame(
        {"r2": _bernoulli(rng, eta), "anger": anger[person], "id": person, "item": item}
    )


@dataclass(frozen=True)
class FabLayout:
    lots: int
    operations: int
    tools_per_operation: int
    chambers_per_tool: int
    wafers_per_lot: int = 25
    seed: int = 105

    @property
    def n(self) -> int:
        return self.lots * self.wafers_per_lot

    def tool_columns(self) -> list[str]:
        width = len(str(self.operations))
        return [f"tool{k + 1:0{width}d}" for k in range(self.operations)]

    def chamber_columns(self) -> list[str]:
        width = len(str(self.operations))
        return [f"chamber{k + 1:0{width}d}" for k in range(self.operations)]

    def formula(self) -> str:
        terms = ["lot", *self.tool_columns(), *self.chamber_columns(), "wafer"]
        return "good ~ x + " + " + ".join(f"(1 | {t})" for t in terms)


def fab_paths(layout: FabLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per lot and operation: the tool (0..tools_per_operation-1) and the chamber within the
    fab (tool * chambers_per_tool + k, unique across tools of the operation)."""
    rng = np.random.default_rng(layout.seed)
    shape = (layout.lots, layout.operations)
    tool = rng.integers(0, layout.tools_per_operation, shape)
    chamber = tool * layout.chambers_per_tool + rng.integers(0, layout.chambers_per_tool, shape)
    return tool, chamber


def fab_yield(layout: FabLayout) -> pd.DataFrame:
    """Good dies of ~600 per wafer; logit yield = 1.6 + 0.2 x + lot + tools + chambers + wafer."""
    rng = np.random.default_rng(layout.seed + 1)
    tool, chamber = fab_paths(layout)
    n_ch = layout.tools_per_operation * layout.chambers_per_tool
    ops = np.arange(layout.operations)
    tool_effect = rng.normal(0, 0.15, (layout.operations, layout.tools_per_operation))
    chamber_effect = rng.normal(0, 0.08, (layout.operations, n_ch))
    lot_eta = (
        rng.normal(0, 0.3, layout.lots)
        + tool_effect[ops, tool].sum(axis=1)
        + chamber_effect[ops, chamber].sum(axis=1)
    )
    lot = np.repeat(np.arange(layout.lots), layout.wafers_per_lot)
    x = rng.normal(size=layout.n)
    eta = 1.6 + 0.2 * x + lot_eta[lot] + rng.normal(0, 0.25, layout.n)
    dies = 600 - rng.integers(0, 16, layout.n)
    good = rng.binomial(dies, 1.0 / (1.0 + np.exp(-eta)))
    small = np.int16 if n_ch < 2**15 else np.int32
    paths = np.concatenate([tool, chamber], axis=1).astype(small)  # per lot: small
    columns = {"good": good, "dies": dies, "x": x, "lot": lot, "wafer": np.arange(layout.n)}
    names = layout.tool_columns() + layout.chamber_columns()
    # one lot-level column at a time: the (n x 2 * operations) int64 temporary costs seconds
    columns.update({name: paths[:, k][lot] for k, name in enumerate(names)})
    return pd.DataFrame(columns)


def slopes(family: str) -> pd.DataFrame:
    """n = 100,000 rows in 5,000 groups of 20: a random intercept and slope per group (SDs 0.5
    and 0.3, correlation 0.4), one covariate; Gaussian (residual SD 1) or binary."""
    rng = np.random.default_rng(108 if family == "gaussian" else 109)
    n, q = 100_000, 5_000
    g = np.repeat(np.arange(q), n // q)
    x = rng.normal(size=n)
    cov = np.array([[0.25, 0.4 * 0.5 * 0.3], [0.4 * 0.5 * 0.3, 0.09]])
    b = rng.multivariate_normal([0.0, 0.0], cov, q)
    eta = 0.5 + 0.4 * x + b[g, 0] + b[g, 1] * x
    y = eta + rng.normal(0, 1.0, n) if family == "gaussian" else _bernoulli(rng, eta)
    return pd.DataFrame({"y": y, "x": x, "g": g})


def tool_drift(tools: int = 200, weeks: int = 100) -> pd.DataFrame:
    """Good dies of 400 per tool and week; the tool effect follows an AR(1) over the weeks
    (rho 0.8, SD 0.35), logit yield = 1.5 + 0.2 x + effect (like tooldrift.csv, at fab scale)."""
    rng = np.random.default_rng(110)
    rho, sd = 0.8, 0.35
    effect = np.empty((tools, weeks))
    effect[:, 0] = rng.normal(0, sd, tools)
    for t in range(1, weeks):
        effect[:, t] = rho * effect[:, t - 1] + rng.normal(0, sd * np.sqrt(1 - rho**2), tools)
    tool = np.repeat(np.arange(tools), weeks)
    week = np.tile(np.arange(1, weeks + 1), tools)
    x = rng.normal(size=tools * weeks)
    eta = 1.5 + 0.2 * x + effect.ravel()
    dies = np.full(tools * weeks, 400)
    good = rng.binomial(dies, 1.0 / (1.0 + np.exp(-eta)))
    return pd.DataFrame(
        {"good": good, "dies": dies, "x": x, "tool": [f"T{k:03d}" for k in tool], "week": week}
    )


FAB_PEER_SIZED = FabLayout(lots=2_000, operations=3, tools_per_operation=8, chambers_per_tool=3)
FAB_300K = FabLayout(lots=12_000, operations=40, tools_per_operation=5, chambers_per_tool=3)
FAB_1M = FabLayout(lots=40_000, operations=40, tools_per_operation=5, chambers_per_tool=3)


CASES: dict[str, Case] = {
    c.key: c
    for c in [
        Case(
            "1a",
            "grouseticks-like Poisson, 3 nested/crossed terms, n = 403",
            "poisson",
            "ticks ~ year + height + (1 | brood) + (1 | location) + (1 | index)",
            grouseticks_like,
            statsmodels="poisson_bayes",
        ),
        Case(
            "1b",
            "cbpp binomial, n = 56",
            "binomial",
            "incidence ~ period + (1 | herd)",
            cbpp,
            trials="size",
            statsmodels_note="BinomialBayesMixedGLM takes binary responses only",
        ),
        Case(
            "2",
            "Poisson, one term, n = 20,000, q = 2,000",
            "poisson",
            "y ~ x + (1 | g)",
            poisson_one_term,
            statsmodels="poisson_bayes",
        ),
        Case(
            "3",
            "InstEval-size Gaussian, n = 73,421, crossed 2,972 x 1,128 x 14",
            "gaussian",
            "y ~ service + (1 | s) + (1 | d) + (1 | dept)",
            insteval_like,
            statsmodels="mixedlm",
        ),
        Case(
            "4",
            "VerbAgg-size binary, n = 7,584, crossed 316 x 24",
            "binomial",
            "r2 ~ anger + (1 | id) + (1 | item)",
            verbagg_like,
            statsmodels="binomial_bayes",
        ),
        Case(
            "5",
            "fab yield, n = 50,000 wafers, 2,000 lots, 3 operations (tool + chamber), wafer OD",
            "binomial",
            FAB_PEER_SIZED.formula(),
            lambda: fab_yield(FAB_PEER_SIZED),
            trials="dies",
            statsmodels_note="BinomialBayesMixedGLM takes binary responses only",
        ),
        Case(
            "6",
            "fab yield, n = 300,000, 12,000 lots, 40 operations: 200 tools, 600 chambers",
            "binomial",
            FAB_300K.formula(),
            lambda: fab_yield(FAB_300K),
            trials="dies",
            statsmodels_note="BinomialBayesMixedGLM takes binary responses only",
        ),
        Case(
            "7",
            "fab yield, n = 1,000,000, 40,000 lots, 40 operations: 200 tools, 600 chambers",
            "binomial",
            FAB_1M.formula(),
            lambda: fab_yield(FAB_1M),
            trials="dies",
            statsmodels_note="BinomialBayesMixedGLM takes binary responses only",
        ),
        Case(
            "8a",
            "random slopes (x | g), Gaussian, n = 100,000, 5,000 groups",
            "gaussian",
            "y ~ x + (x | g)",
            lambda: slopes("gaussian"),
        ),
        Case(
            "8b",
            "random slopes (x | g), binary, n = 100,000, 5,000 groups",
            "binomial",
            "y ~ x + (x | g)",
            lambda: slopes("binomial"),
        ),
        Case(
            "9",
            "tool drift: AR(1) over 100 weeks per tool, 200 tools, binomial (400 dies)",
            "binomial",
            "good ~ x + ar1(factor(week) + 0 | tool)",
            tool_drift,
            trials="dies",
            r_peers=("glmmTMB",),
        ),
    ]
}


def select(spec: str | None) -> list[Case]:
    """'1,3,5' -> those cases; '1' means 1a and 1b (8: 8a and 8b); None or 'all' -> every
    case."""
    if spec is None or spec.strip().lower() == "all":
        return list(CASES.values())
    chosen: list[Case] = []
    for token in (t.strip() for t in spec.split(",") if t.strip()):
        matches = [c for c in CASES.values() if c.key == token or c.key.rstrip("ab") == token]
        if not matches:
            raise ValueError(f"unknown case {token!r}; known: {', '.join(CASES)}")
        chosen.extend(c for c in matches if c not in chosen)
    return chosen
