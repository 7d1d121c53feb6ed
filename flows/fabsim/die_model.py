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

WAFER_AREA_CM2 = math.pi * 14.0**2  # usable area of a 300 mm wafer, 10 mm edge exclusion


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
