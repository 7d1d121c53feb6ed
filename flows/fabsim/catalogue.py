"""The simulated fab's process catalogue: equipment classes, layers in process order, inline
parameters and their spreads, products.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

Format = Literal["parquet", "csv", "csv.gz"]
FORMATS: tuple[str, ...] = ("parquet", "csv", "csv.gz")


# ---------------------------------------------------------------------------------------------
# The process catalogue: equipment classes, layers in process order, inline parameters.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Equipment:
    """How an equipment class behaves: how many tools and chambers, how long a wafer takes."""

    tools: tuple[int, int]
    chambers: tuple[int, int]
    minutes: float  # per wafer, or per lot for batch tools
    batch: bool  # the whole lot is processed at once (furnaces)
    queue_hours: float  # mean wait before the operation


EQUIPMENT: dict[str, Equipment] = {
    "LITHO": Equipment((2, 5), (1, 1), 1.2, False, 10.0),
    "ETCH": Equipment((2, 6), (2, 4), 3.5, False, 8.0),
    "CVD": Equipment((2, 5), (2, 4), 4.0, False, 8.0),
    "PVD": Equipment((2, 4), (2, 4), 3.0, False, 6.0),
    "CMP": Equipment((2, 5), (1, 4), 2.5, False, 8.0),
    "FURN": Equipment((2, 4), (1, 1), 300.0, True, 12.0),
    "IMPL": Equipment((2, 4), (1, 1), 1.0, False, 8.0),
    "RTP": Equipment((2, 4), (1, 2), 2.0, False, 6.0),
    "WET": Equipment((2, 4), (2, 4), 6.0, False, 4.0),
    "ECP": Equipment((2, 4), (2, 4), 5.0, False, 6.0),
    "ASH": Equipment((2, 4), (1, 2), 1.5, False, 4.0),
}


@dataclass(frozen=True)
class ParamSpec:
    """An inline parameter: measured after `operation`, around `target` with natural scale `unit_sd`."""

    param: str
    operation: str
    target: float
    unit_sd: float
    sites: int


def _p(param: str, operation: str, target: float, unit_sd: float, sites: int = 9) -> ParamSpec:
    return ParamSpec(param, operation, target, unit_sd, sites)


# Layer -> (candidate operations with their equipment class, in process order; inline parameters).
CATALOGUE: dict[str, tuple[list[tuple[str, str]], list[ParamSpec]]] = {
    "STI": (
        [
            ("STI_PAD_OX", "FURN"),
            ("STI_LITHO", "LITHO"),
            ("STI_ETCH", "ETCH"),
            ("STI_FILL", "CVD"),
            ("STI_CMP", "CMP"),
        ],
        [_p("STI_DEPTH", "STI_ETCH", 300.0, 5.0), _p("STI_STEP", "STI_CMP", 25.0, 2.0)],
    ),
    "WELL": (
        [
            ("WELL_LITHO", "LITHO"),
            ("WELL_IMPL", "IMPL"),
            ("WELL_STRIP", "ASH"),
            ("WELL_CLEAN", "WET"),
            ("WELL_ANNEAL", "RTP"),
        ],
        [_p("WELL_RS", "WELL_ANNEAL", 450.0, 8.0, 5)],
    ),
    "GATE": (
        [
            ("GATE_OX", "FURN"),
            ("GATE_DEP", "CVD"),
            ("GATE_LITHO", "LITHO"),
            ("GATE_ETCH", "ETCH"),
            ("GATE_CLEAN", "WET"),
        ],
        [_p("GATE_CD", "GATE_ETCH", 45.0, 0.8), _p("GATE_OX_THK", "GATE_OX", 2.0, 0.03)],
    ),
    "SPACER": (
        [
            ("SPACER_LINER", "FURN"),
            ("SPACER_DEP", "CVD"),
            ("SPACER_ETCH", "ETCH"),
            ("SPACER_ASH", "ASH"),
            ("SPACER_CLEAN", "WET"),
        ],
        [_p("SPACER_WIDTH", "SPACER_ETCH", 12.0, 0.4), _p("SPACER_THK", "SPACER_DEP", 20.0, 0.5)],
    ),
    "SD": (
        [
            ("SD_LITHO", "LITHO"),
            ("SD_IMPL", "IMPL"),
            ("SD_STRIP", "ASH"),
            ("SD_CLEAN", "WET"),
            ("SD_ANNEAL", "RTP"),
        ],
        [_p("SD_RS", "SD_ANNEAL", 85.0, 2.0, 5)],
    ),
    "SILICIDE": (
        [
            ("SIL_PRECLEAN", "WET"),
            ("SIL_DEP", "PVD"),
            ("SIL_RTA1", "RTP"),
            ("SIL_STRIP", "WET"),
            ("SIL_RTA2", "RTP"),
        ],
        [_p("SIL_RS", "SIL_RTA2", 8.0, 0.25, 5)],
    ),
    "CONTACT": (
        [
            ("CT_ILD", "CVD"),
            ("CT_CMP", "CMP"),
            ("CT_LITHO", "LITHO"),
            ("CT_ETCH", "ETCH"),
            ("CT_FILL", "PVD"),
        ],
        [_p("CT_CD", "CT_ETCH", 60.0, 1.2), _p("ILD0_THK", "CT_CMP", 350.0, 6.0)],
    ),
    "M1": (
        [
            ("M1_DEP", "CVD"),
            ("M1_LITHO", "LITHO"),
            ("M1_ETCH", "ETCH"),
            ("M1_PLATE", "ECP"),
            ("M1_CMP", "CMP"),
        ],
        [_p("M1_THK", "M1_CMP", 120.0, 3.0), _p("M1_CD", "M1_ETCH", 50.0, 1.0)],
    ),
    "VIA1": (
        [
            ("V1_DEP", "CVD"),
            ("V1_LITHO", "LITHO"),
            ("V1_ETCH", "ETCH"),
            ("V1_CLEAN", "WET"),
            ("V1_FILL", "PVD"),
        ],
        [_p("V1_CD", "V1_ETCH", 40.0, 0.9)],
    ),
    "M2": (
        [
            ("M2_DEP", "CVD"),
            ("M2_LITHO", "LITHO"),
            ("M2_ETCH", "ETCH"),
            ("M2_PLATE", "ECP"),
            ("M2_CMP", "CMP"),
        ],
        [_p("M2_THK", "M2_CMP", 140.0, 3.5), _p("M2_CD", "M2_ETCH", 56.0, 1.1)],
    ),
    "VIA2": (
        [
            ("V2_DEP", "CVD"),
            ("V2_LITHO", "LITHO"),
            ("V2_ETCH", "ETCH"),
            ("V2_CLEAN", "WET"),
            ("V2_FILL", "PVD"),
        ],
        [_p("V2_CD", "V2_ETCH", 44.0, 1.0)],
    ),
    "M3": (
        [
            ("M3_DEP", "CVD"),
            ("M3_LITHO", "LITHO"),
            ("M3_ETCH", "ETCH"),
            ("M3_PLATE", "ECP"),
            ("M3_CMP", "CMP"),
        ],
        [_p("M3_THK", "M3_CMP", 220.0, 5.0)],
    ),
}
LAYER_ORDER: tuple[str, ...] = tuple(CATALOGUE)
DEFAULT_LAYERS: tuple[str, ...] = ("STI", "WELL", "GATE", "SPACER", "CONTACT", "M1", "VIA1", "M2")
PRODUCTS: tuple[str, ...] = ("ALPHA", "BETA", "GAMMA")

# Inline parameter process model, in units of the parameter's unit_sd.
PARAM_TOOL_SD = 0.3
PARAM_CHAMBER_SD = 0.2
PARAM_LOT_SD = 0.5
PARAM_WAFER_SD = 0.4
PARAM_SITE_SD = 0.5
SITE_RADIUS = np.array([0.0, 0.5, 0.5, 0.5, 0.5, 0.95, 0.95, 0.95, 0.95])  # 9-site pattern
