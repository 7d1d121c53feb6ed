"""Every option of a simulated fab in one object: `FabConfig`, with the planted effects
(`PlantedSizes`) and the sort-yield model (`YieldModel`) it holds.

`simulate_fab(out_dir, config, seed=...)` reads nothing else, so a fab is fully described by
its config and its seed; the defaults are those of `yieldrank simulate`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from flows.fabsim.catalogue import DEFAULT_LAYERS, FORMATS, Format
from flows.fabsim.die_model import DEFAULT_DIE_MODEL, DieModel


@dataclass(frozen=True)
class PlantedSizes:
    """Sizes of the planted effects; an effect whose size is 0 (ratio 1) is not planted.

    Defaults cost about 3-6 yield points on the wafers each effect touches at ~88 % base yield:
    of the size a yield engineer would chase, and detectable at 300 lots. A tool needs the
    larger shift: a lot runs on one tool per operation, so a tool is compared with its peers
    through lot means, which carry the lot-to-lot variation (0.35 logit), while a chamber is
    compared with its sister chambers inside the same lots. At -0.25 even an oracle that knows
    the operation (an F test of the tools on product-adjusted lot-mean logits) had p < 0.001 in
    only 28 of 40 simulated 300-lot fabs (p up to 0.23), so no ranking could find such a tool
    reliably; at -0.4 it is below 0.001 in 40 of 40 (below 1e-6 in 37; validation.md).
    """

    bad_tool_logit: float = -0.4
    bad_chamber_logit: float = -0.3
    metrology_logit_per_unit: float = -0.2  # yield logit per unit_sd of the parameter
    metrology_shift_units: float = 1.5  # how far the shifting tool moves the parameter, in unit_sd
    noisy_chamber_sd_ratio: float = 2.0  # sd of the noisy chamber's values / sd of the others


@dataclass(frozen=True)
class YieldModel:
    """The sort-yield model: logit(p) = product + lot + wafer + planted terms."""

    base_logit: float = 2.0  # about 88 % yield
    product_sd_logit: float = 0.2
    lot_sd_logit: float = 0.35
    wafer_sd_logit: float = 0.25
    dies_total: tuple[int, int] = (500, 700)


DEFAULT_PLANTED = PlantedSizes()
DEFAULT_YIELD = YieldModel()
DEFAULT_START = datetime(2026, 1, 5, 6, 0)


@dataclass(frozen=True)
class FabConfig:
    """A simulated fab's options (the seed aside); checked when made (`ValueError`).

    `planted=None` is the null fab: nothing planted, yield varies by product, lot and wafer, and
    by the small real equipment differences (`equipment_sd`, on by default in planted and null
    fabs: tool offsets SD 0.02 logit, chamber offsets SD 0.015, about 0.2 yield points; `(0, 0)`
    is the exact null). `correlated_dispatch=p` routes the planted bad tool's lots with
    probability p to one tool of an operation in another layer (the shadow, in truth.json).
    `n_drops` splits the data by when they become known; `fmt` is the drops' file format;
    `chunk_lots` is how many lots are generated and written at a time (memory), and is part of
    the random streams, so it must stay fixed for identical drops. `equipment_events` and
    `bin_defs` add those optional tables (v2 of the contract) from random streams of their own.
    `dies` sorts every wafer by die with the mechanisms of `flows.fabsim.dies` (sizes in
    `die_model`), from streams of its own: no other table of the seed changes.
    """

    lots: int = 300
    wafers_per_lot: int | tuple[int, int] = 25  # fixed, or drawn from [low, high] per lot
    planted: PlantedSizes | None = DEFAULT_PLANTED
    n_drops: int = 1
    fmt: Format = "parquet"
    layers: tuple[str, ...] = DEFAULT_LAYERS
    ops_per_layer: tuple[int, int] = (2, 5)
    yield_model: YieldModel = DEFAULT_YIELD
    start: datetime = DEFAULT_START
    lots_per_day: float = 33.0
    meas_lot_fraction: float = 0.5
    meas_wafers_per_lot: int = 3
    rework_rate: float = 0.02
    retest_fraction: float = 0.01
    sort_die_fraction: float = 0.02
    chunk_lots: int = 1000
    # optional tables of contract v2; asking for them changes no other table of the same seed
    equipment_events: bool = False  # a few PMs and quals per tool
    bin_defs: bool = False  # the hard bins' names and good/fail, with the first die data
    # die-level sort results as the testers' STDF V4 files in each drop's sort/ folder
    # (wafer ids `{lot}-{wafer:02d}`), instead of sort_die Parquet/CSV; same dies either way
    stdf: bool = False
    # true yield-logit offsets of every tool and every chamber, SD (tool, chamber); (0, 0) is the
    # exact null; own random stream (flows/fabsim/equipment.py)
    equipment_sd: tuple[float, float] = (0.02, 0.015)
    # probability that a lot of the planted bad tool is routed to the shadow tool (0: off)
    correlated_dispatch: float = 0.0
    # excursions planted in time (flows.fabsim.excursions), any of "step" (stays active),
    # "pm_ended" (a PM, written to equipment_events, ends it) and "drift" (linear, one chamber);
    # size on the yield logit. About 60 days of processing: lots=300, lots_per_day=5.
    excursions: tuple[str, ...] = ()
    excursion_logit: float = -0.6
    # every sorted wafer as sort_die rows from the die-level mechanisms (flows/fabsim/dies.py):
    # random defects, edge-ring and centre-spot chambers, a fail bin per mechanism
    dies: bool = False
    die_model: DieModel = DEFAULT_DIE_MODEL

    def __post_init__(self) -> None:
        object.__setattr__(self, "layers", tuple(self.layers))
        object.__setattr__(self, "excursions", tuple(self.excursions))
        unknown = sorted(set(self.excursions) - {"step", "pm_ended", "drift"})
        if unknown or len(set(self.excursions)) != len(self.excursions):
            raise ValueError(
                "excursions must name each of 'step', 'pm_ended', 'drift' at most once, "
                f"got {self.excursions}"
            )
        if self.lots_per_day <= 0:
            raise ValueError(f"lots_per_day must be positive, got {self.lots_per_day}")
        if self.lots < 1:
            raise ValueError(f"lots must be at least 1, got {self.lots}")
        if self.n_drops < 1:
            raise ValueError(f"n_drops must be at least 1, got {self.n_drops}")
        if self.fmt not in FORMATS:
            raise ValueError(f"fmt must be one of {FORMATS}, got {self.fmt!r}")
        if self.chunk_lots < 1:
            raise ValueError(f"chunk_lots must be at least 1, got {self.chunk_lots}")
        for name, value in [
            ("meas_lot_fraction", self.meas_lot_fraction),
            ("retest_fraction", self.retest_fraction),
            ("sort_die_fraction", self.sort_die_fraction),
        ]:
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        _check_equipment(self)


def _check_equipment(c: FabConfig) -> None:
    object.__setattr__(c, "equipment_sd", tuple(float(x) for x in c.equipment_sd))
    if len(c.equipment_sd) != 2 or min(c.equipment_sd) < 0:
        raise ValueError(f"equipment_sd must be two SDs >= 0 (tool, chamber), got {c.equipment_sd}")
    if not 0.0 <= c.correlated_dispatch <= 1.0:
        raise ValueError(f"correlated_dispatch must lie in [0, 1], got {c.correlated_dispatch}")
    if c.correlated_dispatch and (c.planted is None or c.planted.bad_tool_logit == 0):
        raise ValueError("correlated_dispatch needs a planted bad tool (planted.bad_tool_logit)")


DEFAULT_FAB = FabConfig()
