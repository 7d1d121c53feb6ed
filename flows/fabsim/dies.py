"""Die-level wafer sort with spatial mechanisms and fail bins (`FabConfig(dies=True)`).

Every sorted wafer gets one `sort_die` row per die of its product's grid. A die fails when
any of these mechanisms kills it, each independent of the others given the wafer:

- random (killer) defects: per wafer and zone a negative binomial count, D0 x die area x
  dies of the zone times a gamma(alpha, 1/alpha) factor, each defect on a die of its own;
- the edge-ring chamber: on its wafers each edge die (r > 0.8) fails with `edge_ring_fail`;
- the centre-spot chamber: on its wafers each centre die (r <= 0.5) with `center_spot_fail`;
- the wafer's yield logit of `fab.draw_wafers` (product, lot, wafer and the planted tool,
  chamber and metrology terms): a die survives it with probability expit(eta), as every die
  of a wafer did before. Its failures are split: a die that would have passed without the
  planted bad tool's term is the tool's loss, the others the general fail bins 2-8.

So the wafer's good count is binomial from expit(eta) times the other mechanisms' survival:
the logit model is unchanged, the die mechanisms lower the yield on top of it (by about
A x D0 = 5 % at the defaults). A die hit by several mechanisms takes the bin of the first in
`MECHANISM_BINS` order, the defect bin first, so that bin counts every defect.

The two signature chambers are chosen, from their own random stream, among the chambers
where a chamber effect is detectable (`fab._candidates`), in layers the planted effects do
not use where possible; the null fab (`planted=None`) has neither, nor a tool bin, but keeps
its random defects. All draws come from streams keyed by `DIES_STREAM_KEY`, apart from the
simulator's `STREAMS`, so asking for dies changes no other table of the same seed.

Everything is vectorised per chunk of wafers (`DieModel.wafers_per_chunk`, one Parquet part
each): memory is bounded by the chunk, whatever the number of wafers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from flows.analysis.die_geometry import ZONES, grid_zones
from flows.fabsim.catalogue import PRODUCTS
from flows.fabsim.die_model import (
    MECHANISM_BIN_NAMES,
    MECHANISM_BINS,
    WAFER_AREA_CM2,
    DieModel,
)
from flows.fabsim.fab import Fab, Site, WaferTruth, _candidates, _on, _tool_shares, expit
from flows.fabsim.tables import BAD_BIN_P, BAD_BINS, BIN_NAMES, SCHEMAS, Rows, die_grid, sort_times

DIES_STREAM_KEY = 1016  # spawn key of the die streams: apart from simulation.STREAMS' indices
DIE_BIN_NAMES = {**BIN_NAMES, **MECHANISM_BIN_NAMES}
SIGNATURES = (
    ("edge_ring", "edge", "edge_ring_fail"),
    ("center_spot", "center", "center_spot_fail"),
)


def die_stream(seed: int, *extra: int) -> np.random.Generator:
    """The die model's random streams (0: where the signatures sit; 1, k: chunk k's dies)."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(DIES_STREAM_KEY, *extra)))


@dataclass(frozen=True)
class ProductGrid:
    """One product's die positions, their contract radius and zone, and the die area."""

    x: np.ndarray
    y: np.ndarray
    r: np.ndarray
    zone: np.ndarray  # 0 center, 1 middle, 2 edge
    area_cm2: float

    @classmethod
    def of(cls, n_dies: int) -> ProductGrid:
        x, y, _ = die_grid(n_dies)
        r, zone = grid_zones(x, y)
        return cls(x, y, r, zone, WAFER_AREA_CM2 / n_dies)

    @property
    def zone_sizes(self) -> np.ndarray:
        return np.bincount(self.zone, minlength=len(ZONES))


@dataclass(frozen=True)
class Signature:
    """A chamber planted with a spatial signature: its site, zone, fail probability and bin."""

    kind: str  # "edge_ring" or "center_spot"
    zone: str
    fail: float
    site: Site


class DieSimulation:
    """The die mechanisms of one fab: where the signatures sit, and the dies of any wafers.

    Parameters
    ----------
    seed : the fab's seed
    fab, truth, sites : the fab, its wafer truth and planted sites (`simulation.simulate_fab`)
    model : the die model's sizes
    null : the null fab: no signature chamber, no tool bin
    """

    def __init__(
        self,
        seed: int,
        fab: Fab,
        truth: WaferTruth,
        sites: list[Site],
        model: DieModel,
        *,
        null: bool,
    ):
        self.seed, self.fab, self.truth, self.model = seed, fab, truth, model
        self.grids = [ProductGrid.of(int(n)) for n in truth.dies_total]
        wafers = np.arange(len(fab.wafer_lot))
        self.tool_term = np.zeros(len(wafers))
        for s, term in zip(sites, truth.planted_terms, strict=True):
            if s.kind == "tool" and term is not None:
                self.tool_term = self.tool_term + term
        self.signatures = [] if null else _signature_sites(die_stream(seed, 0), fab, sites, model)
        self.hit = {s.kind: _on(self.fab, s.site, wafers) for s in self.signatures}
        self.bin_counts = np.zeros(max(DIE_BIN_NAMES) + 1, dtype=np.int64)  # of the dies drawn

    def sort_die_chunks(self, wafers: np.ndarray) -> Iterator[Rows]:
        """`sort_die` rows of `wafers`, one `Rows` per chunk of `wafers_per_chunk` wafers."""
        size = self.model.wafers_per_chunk
        for k, first in enumerate(range(0, len(wafers), size)):
            yield self.sort_die_rows(wafers[first : first + size], die_stream(self.seed, 1, k))

    def sort_die_rows(self, wafers: np.ndarray, rng: np.random.Generator) -> Rows:
        """One row per die of each wafer (wafers contiguous, grouped by product)."""
        product = self.fab.lot_product[self.fab.wafer_lot[wafers]]
        parts = []
        for k in np.unique(product):
            wk = wafers[product == k]
            bins = self.draw_bins(wk, self.grids[k], rng)
            self.bin_counts += np.bincount(bins.ravel(), minlength=len(self.bin_counts))
            g = self.grids[k]
            parts.append((np.repeat(wk, len(g.x)), np.tile(g.x, len(wk)), np.tile(g.y, len(wk)),
                          bins.ravel()))  # fmt: skip
        w = np.concatenate([p[0] for p in parts])
        data = pa.table(
            {
                "wafer_id": self.fab.wafer_ids.take(pa.array(w)),
                "die_x": pa.array(np.concatenate([p[1] for p in parts]), type=pa.int64()),
                "die_y": pa.array(np.concatenate([p[2] for p in parts]), type=pa.int64()),
                "bin": pa.array(np.concatenate([p[3] for p in parts]), type=pa.int64()),
            },
            schema=SCHEMAS["sort_die"],
        )
        return Rows("sort_die", data, sort_times(self.fab)[w])

    def draw_bins(
        self, wafers: np.ndarray, grid: ProductGrid, rng: np.random.Generator
    ) -> np.ndarray:
        """(wafer, die) -> hard bin for wafers of one product; 1 = good.

        Returns
        -------
        np.ndarray : int64 of shape (len(wafers), dies of the grid), in the grid's die order
        """
        m, n = len(wafers), len(grid.x)
        defect = random_defect_mask(rng, m, grid, self.model.d0_per_cm2, self.model.alpha)
        u_zone = rng.random((m, n))  # the signatures' zones are disjoint: one uniform serves both
        u_eta = rng.random((m, n))
        general = rng.choice(BAD_BINS, p=BAD_BIN_P, size=(m, n))
        p_good = expit(self.truth.eta[wafers])[:, None]
        p_good_without_tool = expit(self.truth.eta[wafers] - self.tool_term[wafers])[:, None]
        eta_fail = u_eta > p_good
        conditions = [defect]
        choices = [MECHANISM_BINS["random_defect"]]
        for s in self.signatures:
            zone = (grid.zone == ZONES.index(s.zone))[None, :]
            conditions.append(self.hit[s.kind][wafers][:, None] & zone & (u_zone < s.fail))
            choices.append(MECHANISM_BINS[s.kind])
        conditions += [eta_fail & (u_eta <= p_good_without_tool), eta_fail]
        choices += [MECHANISM_BINS["bad_tool"], general]
        return np.select(conditions, choices, default=1).astype(np.int64)

    def truth_record(self) -> dict[str, Any]:
        """What `truth.json` says of the dies: D0, alpha, die areas, zones, mechanism bins and
        the signature chambers (located as findings locate theirs)."""
        r = self.fab.route
        return {
            "d0_per_cm2": self.model.d0_per_cm2,
            "d0_unit": "killer defects per cm^2; die area = usable wafer area / dies per wafer",
            "alpha": self.model.alpha,
            "wafer_area_cm2": WAFER_AREA_CM2,
            "products": [
                {
                    "product": f"P-{name}",
                    "die_area_cm2": g.area_cm2,
                    "dies_per_zone": dict(zip(ZONES, g.zone_sizes.tolist(), strict=True)),
                }
                for name, g in zip(PRODUCTS, self.grids, strict=True)
            ],
            "zones": {"center": "r <= 0.5", "middle": "0.5 < r <= 0.8", "edge": "r > 0.8"},
            "mechanism_bins": dict(MECHANISM_BINS),
            "general_fail_bins": [int(b) for b in BAD_BINS],
            "bin_names": {str(b): name for b, name in DIE_BIN_NAMES.items()},
            # of every die written: the yield and each bin's share (a bin Pareto's truth)
            "dies_written": int(self.bin_counts.sum()),
            "yield_pct": _pct(self.bin_counts[1], self.bin_counts.sum()),
            "bin_pct": {
                str(b): _pct(n, self.bin_counts.sum())
                for b, n in enumerate(self.bin_counts)
                if b in DIE_BIN_NAMES and b != 1
            },
            "signatures": [
                {
                    "signature": s.kind,
                    "zone": s.zone,
                    "fail_prob": s.fail,
                    "bin": MECHANISM_BINS[s.kind],
                    "layer": r.layers[s.site.layer],
                    "operation": r.op_name[s.site.op],
                    "tool_id": r.tool_name[s.site.tool],
                    "chamber_id": f"CH{(s.site.chamber or 0) + 1}",
                    "n_wafers_affected": int(self.hit[s.kind].sum()),
                }
                for s in self.signatures
            ],
        }


def _pct(part: int, whole: int) -> float:
    return float(100.0 * part / whole) if whole else 0.0


def random_defect_mask(
    rng: np.random.Generator, n_wafers: int, grid: ProductGrid, d0: float, alpha: float
) -> np.ndarray:
    """(wafer, die) -> hit by a killer defect, for wafers of one product grid.

    Per wafer and zone the defect count is Poisson(D0 x area x dies of the zone x G) with
    G ~ gamma(alpha, 1/alpha): negative binomial with mean n_zone x A x D0 and NB2 size alpha.
    The defects land on distinct dies of the zone, uniformly (a random ranking per zone), so
    the hit count is the NB count itself (capped at the zone's dies, never reached at sane D0).

    Returns
    -------
    np.ndarray : bool of shape (n_wafers, dies of the grid)
    """
    sizes = grid.zone_sizes
    gamma = rng.gamma(alpha, 1.0 / alpha, size=(n_wafers, len(ZONES)))
    count = rng.poisson(d0 * grid.area_cm2 * sizes[None, :] * gamma)
    count = np.minimum(count, sizes[None, :])
    keys = rng.random((n_wafers, len(grid.x)))
    hit = np.zeros((n_wafers, len(grid.x)), dtype=bool)
    for z in range(len(ZONES)):
        cols = np.flatnonzero(grid.zone == z)
        if len(cols) == 0:
            continue
        # rank of each die's key within its zone: the `count` lowest keys are hit
        rank = np.argsort(np.argsort(keys[:, cols], axis=1), axis=1)
        hit[:, cols] = rank < count[:, z][:, None]
    return hit


def _signature_sites(
    rng: np.random.Generator, fab: Fab, sites: list[Site], model: DieModel
) -> list[Signature]:
    """A chamber for each signature with a non-zero size, each on its own tool, in layers the
    planted effects leave free where there are such (else any layer but the other one's)."""
    shares = _tool_shares(fab)
    planted_layers = {s.layer for s in sites if s.kind in ("tool", "chamber", "metrology")}
    taken_tools = {s.tool for s in sites}
    used_layers: set[int] = set()
    out = []
    for kind, zone, size_name in SIGNATURES:
        fail = getattr(model, size_name)
        if fail == 0:
            continue
        order = [int(li) for li in rng.permutation(len(fab.route.layers))]
        by_preference = [
            [c for li in order if ok(li) for c in _candidates(fab, "chamber", li, shares)]
            for ok in (
                lambda li: li not in planted_layers and li not in used_layers,
                lambda li: li not in used_layers,
            )
        ]
        options = [c for c in by_preference[0] or by_preference[1] if c.tool not in taken_tools]
        if not options:
            raise ValueError(
                f"cannot plant the {kind} chamber: no multi-chamber tool left that carries "
                "enough wafers; use more layers or more lots"
            )
        site = options[rng.integers(len(options))]
        out.append(Signature(kind, zone, fail, site))
        used_layers.add(site.layer)
        taken_tools.add(site.tool)
    return out
