"""The die-level sort model's sizes (`DieModel`), its zones and its fail bins.

Kept apart from `dies.py` (which draws the dies) so that `config.py` can hold a `DieModel`
without importing the fab: nothing here imports the rest of `flows.fabsim`.

Units: D0 is in killer defects per cm^2. A product's die area is the usable wafer area
(a 300 mm wafer less a 10 mm edge exclusion: pi x 14^2 = 615.8 cm^2) shared by its dies,
so about 0.9-1.2 cm^2 for 500-700 dies; A x D0 is the mean number of killer defects per die.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

WAFER_AREA_CM2 = math.pi * 14.0**2  # usable area of a 300 mm wafer, 10 mm edge exclusion

# zones of the data contract ("Die geometry and zones"): r normalised to the outermost die,
# center r <= 0.5, middle 0.5 < r <= 0.8, edge r > 0.8 (see `grid_zones`)
ZONES = ("center", "middle", "edge")


@dataclass(frozen=True)
class DieModel:
    """Sizes of the die-level mechanisms (`FabConfig(dies=True)`).

    Random defects: the killer defects of a wafer's zone are negative binomial, a Poisson
    count whose density D0 x G varies from wafer to wafer and zone to zone by a gamma factor
    G (mean 1, shape `alpha`: the clustering; small alpha = strongly clustered, alpha -> inf
    = Poisson). Each defect kills a die of its zone of its own (drawn without replacement), so
    the count of dies in the defect bin per wafer and zone is exactly that negative binomial
    (mean n_zone x A x D0, NB2 size alpha): the Poisson-gamma model the analysis fits.
    The two signature chambers fail each die of their zone with a fixed probability on the
    wafers they process.
    """

    d0_per_cm2: float = 0.05
    alpha: float = 2.0
    edge_ring_fail: float = 0.3  # P(an edge die fails) on the edge-ring chamber's wafers
    center_spot_fail: float = 0.3  # P(a centre die fails) on the centre-spot chamber's wafers
    wafers_per_chunk: int = 2000  # wafers drawn and written at a time (memory; part of streams)

    def __post_init__(self) -> None:
        if not self.d0_per_cm2 >= 0 or not math.isfinite(self.d0_per_cm2):
            raise ValueError(f"d0_per_cm2 must be finite and >= 0, got {self.d0_per_cm2}")
        if not self.alpha > 0 or not math.isfinite(self.alpha):
            raise ValueError(f"alpha must be finite and > 0, got {self.alpha}")
        for name in ("edge_ring_fail", "center_spot_fail"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must lie in [0, 1], got {value}")
        if self.wafers_per_chunk < 1:
            raise ValueError(f"wafers_per_chunk must be at least 1, got {self.wafers_per_chunk}")


DEFAULT_DIE_MODEL = DieModel()

# Hard bins of the mechanisms, after the general fail bins 2-8 of `tables.BIN_NAMES`. A die hit
# by several mechanisms is binned by the first in this order (the tester's first failing
# test: continuity before leakage before parametric), so the defect bin counts every defect.
MECHANISM_BINS = {"random_defect": 9, "edge_ring": 10, "center_spot": 11, "bad_tool": 12}
MECHANISM_BIN_NAMES = {9: "PARTICLE_SHORT", 10: "EDGE_OPEN", 11: "CENTER_VT", 12: "TOOL_LEAK"}


def grid_zones(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each die's radius and zone as the contract defines them: the distance from the centre
    of the product's grid (the midpoint of its bounding box) over the largest such distance.

    The zone is decided on exact integers, as `sql/marts/08_die_position.sql` decides it:
    with doubled coordinates the squared distance D2 = (2x - xmin - xmax)^2 + (...)^2 is an
    integer, and r <= 0.5 is 4 D2 <= max D2, r > 0.8 is 25 D2 > 16 max D2; so a die on a zone
    border falls on the same side in Python and SQL, whatever the floating point rounding.

    Parameters
    ----------
    x, y : integer die coordinates of one product's grid (every position once)

    Returns
    -------
    (np.ndarray, np.ndarray) : r in [0, 1] and the zone index (0 center, 1 middle, 2 edge; `ZONES`)
    """
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    if len(x) == 0:
        raise ValueError("a die grid needs at least one die")
    d2 = (2 * x - x.min() - x.max()) ** 2 + (2 * y - y.min() - y.max()) ** 2
    top = d2.max()
    r = np.sqrt(d2 / top) if top > 0 else np.zeros(len(x))
    zone = np.where(4 * d2 <= top, 0, np.where(25 * d2 <= 16 * top, 1, 2))
    return r, zone
