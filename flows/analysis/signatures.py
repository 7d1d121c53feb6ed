"""Wafer signatures: where on each wafer the failing dies sit, as one class per wafer.

Classes, decided in this order (the first that applies):

- `none`: fewer than `min_fails` failing dies, too few to show any pattern;
- `edge_ring` / `center`: the edge zone (r > 0.8) or the centre zone (r <= 0.5) loses at
  least `zone_loss` of the dies the rest of the wafer passes (1 - Y_zone / Y_rest) with a
  z of at least `zone_z`, and at least half that in `zone_quadrants` of its four quadrants
  (a ring or a spot goes round the wafer; a blob that happens to sit at the edge does not);
  the larger z wins when both zones qualify. The rates are the wafer's own: a wafer that is
  bad all over is not a ring;
- `scratch`: a line of failing dies: among the straight bands one die wide (`line_angles`
  directions, offsets every half die), one holds at least `line_min_excess` failing dies more than its
  background expects and a binomial z of at least `line_z`, the background being the larger
  of the wafer's fail rate and that of the parallel bands two dies away on either side (so a
  round blob, which raises its neighbouring bands too, is not a line);
- `cluster`: the failing dies are spatially clustered: the join count of fail-fail neighbour
  pairs on the die grid's rook graph (the BB join count) exceeds its expectation under
  independent dies by `join_z` standard deviations (one-sided p = 0.001 by default). The
  expectation and variance are those of independent Bernoulli dies, each at the fail rate of
  its own zone on that wafer, so the zone-to-zone variation of defect density (a negative
  binomial wafer has it) is not taken for clustering; a zone's rate is the median of its four
  quadrants' rates, so a cluster does not raise the rate it is judged against;
- `random`: failing dies present and not clustered by that test.

So `random` means "fails not spatially clustered beyond the wafer's zone rates".

Everything is vectorised over the wafers of one die grid (one product): a (wafers x dies)
matrix of fails, the joins as index pairs, the bands as a sparse membership matrix. The
geometry (radius, zone, quadrant) is the contract's, as `flows.analysis.die_geometry` and
`marts.die_position` compute it; a product's grid is the union of the positions delivered
for it, and a die missing from a wafer counts as untested (in no rate and no join).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import polars as pl
import scipy.sparse as sp

from flows.analysis.die_geometry import ZONES, grid_quadrants, grid_zones

SIGNATURE_CLASSES = ("none", "center", "edge_ring", "cluster", "scratch", "random")
CENTER, EDGE = ZONES.index("center"), ZONES.index("edge")
WAFERS_PER_BLOCK = 4000  # wafers classified at a time: memory is bounded by the block


@dataclass(frozen=True)
class SignatureRules:
    """The thresholds of the classes (see the module docstring for what each one decides)."""

    min_fails: int = 5
    zone_loss: float = 0.2
    zone_z: float = 3.0
    zone_quadrants: int = 3
    line_z: float = 5.0
    line_min_excess: float = 6.0
    line_angles: int = 36
    join_z: float = 3.09

    def __post_init__(self) -> None:
        if not 1 <= self.zone_quadrants <= 4:
            raise ValueError(f"zone_quadrants must lie in 1..4, got {self.zone_quadrants}")
        if self.line_angles < 2:
            raise ValueError(f"line_angles must be at least 2, got {self.line_angles}")


DEFAULT_RULES = SignatureRules()


@dataclass(frozen=True)
class DieGrid:
    """One product's die positions with their zone, quadrant, rook joins and line bands."""

    x: np.ndarray
    y: np.ndarray
    zone: np.ndarray  # 0 center, 1 middle, 2 edge
    quadrant: np.ndarray  # 1..4
    join_a: np.ndarray  # rook joins as index pairs (a < b), each once
    join_b: np.ndarray
    neighbours: sp.csr_matrix  # symmetric 0/1 adjacency of the joins
    bands: sp.csc_matrix  # die x band membership, bands of `line_angles` directions
    band_flank_lo: np.ndarray  # per band: the parallel band two dies lower (-1: none)
    band_flank_hi: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray, y: np.ndarray, line_angles: int = DEFAULT_RULES.line_angles):
        """The grid of the given positions (each once).

        Parameters
        ----------
        x, y : integer die coordinates
        line_angles : directions of the scratch bands, evenly over 180 degrees

        Returns
        -------
        DieGrid
        """
        x = np.asarray(x, dtype=np.int64)
        y = np.asarray(y, dtype=np.int64)
        n = len(x)
        _, zone = grid_zones(x, y)
        # rook joins: the right and upper neighbour of each die, where delivered
        span = int(y.max() - y.min()) + 3
        key = (x - x.min() + 1) * span + (y - y.min() + 1)
        order = np.argsort(key)
        pairs = []
        for step in (span, 1):  # +1 in x, +1 in y
            pos = np.searchsorted(key[order], key + step)
            pos = np.minimum(pos, n - 1)
            found = key[order][pos] == key + step
            pairs.append((np.flatnonzero(found), order[pos[found]]))
        a = np.concatenate([p[0] for p in pairs])
        b = np.concatenate([p[1] for p in pairs])
        ones = np.ones(2 * len(a))
        neighbours = sp.csr_matrix((ones, (np.r_[a, b], np.r_[b, a])), shape=(n, n))
        # bands one die wide every half die: a die at offset rho (along the direction's normal)
        # is in the bands centred at k/2 for k = floor(2 rho) and k + 1, so a line of dies is
        # whole in one band wherever it sits
        dx = (2 * x - x.min() - x.max()) / 2
        dy = (2 * y - y.min() - y.max()) / 2
        theta = np.arange(line_angles) * np.pi / line_angles
        rho = dx[None, :] * np.cos(theta)[:, None] + dy[None, :] * np.sin(theta)[:, None]
        k = np.floor(2 * rho).astype(np.int64)
        lo = int(k.min())
        n_off = int(k.max()) - lo + 2
        column = np.arange(line_angles)[:, None] * n_off + (k - lo)
        rows = np.tile(np.arange(n), line_angles)
        bands = sp.csc_matrix(
            (
                np.ones(2 * column.size),
                (np.r_[rows, rows], np.r_[column.ravel(), column.ravel() + 1]),
            ),
            shape=(n, line_angles * n_off),
        )
        # the parallel bands two dies (four half-dies) away on either side
        offset = np.arange(line_angles * n_off) % n_off
        flank_lo = np.where(offset >= 4, np.arange(line_angles * n_off) - 4, -1)
        flank_hi = np.where(offset < n_off - 4, np.arange(line_angles * n_off) + 4, -1)
        return cls(x, y, zone, grid_quadrants(x, y), a, b, neighbours, bands, flank_lo, flank_hi)


def join_count_test(
    fails: np.ndarray, tested: np.ndarray, p: np.ndarray, grid: DieGrid
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The BB join count of each wafer against independent dies with fail probabilities `p`.

    BB = number of rook joins with both dies failing. For independent Bernoulli(p_i) dies,
    E[BB] = sum over joins of p_i p_j, and Var[BB] = sum over joins of p_i p_j (1 - p_i p_j)
    + sum over dies i of p_i (1 - p_i) (S_i^2 - T_i), S_i and T_i the sums of p_j and p_j^2
    over the neighbours j of i (two joins sharing die i covary by p_i p_j p_k (1 - p_i)).

    Parameters
    ----------
    fails, tested : bool (wafers x dies); an untested die counts in no join
    p : (wafers x dies) fail probability of each die under the null
    grid : the dies' grid

    Returns
    -------
    (bb, expected, z) : per wafer; z = 0 where the variance is 0
    """
    f = (fails & tested).astype(np.float64)
    p = np.where(tested, p, 0.0)
    a, b = grid.join_a, grid.join_b
    bb = (f[:, a] * f[:, b]).sum(axis=1)
    pp = p[:, a] * p[:, b]
    expected = pp.sum(axis=1)
    s = (grid.neighbours @ p.T).T
    t = (grid.neighbours @ (p**2).T).T
    var = (pp * (1 - pp)).sum(axis=1) + (p * (1 - p) * (s**2 - t)).sum(axis=1)
    sd = np.sqrt(np.maximum(var, 0.0))
    z = np.divide(bb - expected, sd, out=np.zeros_like(bb), where=sd > 0)
    return bb, expected, z


def _zone_test(f: np.ndarray, t: np.ndarray, grid: DieGrid, zone: int, rules: SignatureRules):
    """(relative loss, z, quadrants showing it) of one zone against the rest of each wafer.

    The loss is 1 - Y_zone / Y_rest, the share of the dies the rest of the wafer would pass
    that the zone loses: a mechanism that kills a fraction of the zone's dies shows as that
    fraction whatever else the wafer loses (the die mechanisms multiply), so a low-yield wafer
    does not hide a ring. z is log(Y_rest / Y_zone) over its delta-method standard error.
    """
    inside = grid.zone == zone
    good = t & ~f
    n_in, g_in = t[:, inside].sum(1), good[:, inside].sum(1)
    n_out, g_out = t[:, ~inside].sum(1), good[:, ~inside].sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        # half a die added to each good count keeps the logs finite on an all-fail zone
        y_in = (g_in + 0.5) / (n_in + 0.5)
        y_out = (g_out + 0.5) / (n_out + 0.5)
        loss = 1 - y_in / y_out
        se = np.sqrt((1 - y_in) / (n_in * y_in) + (1 - y_out) / (n_out * y_out))
        z = np.where(se > 0, np.log(y_out / y_in) / se, 0.0)
        showing = np.zeros(len(f), dtype=np.int64)
        for q in (1, 2, 3, 4):
            cols = inside & (grid.quadrant == q)
            y_q = (good[:, cols].sum(1) + 0.5) / (t[:, cols].sum(1) + 0.5)
            showing += np.nan_to_num(1 - y_q / y_out) >= rules.zone_loss / 2
    return np.nan_to_num(loss), np.nan_to_num(z), showing


def _line_test(f: np.ndarray, t: np.ndarray, grid: DieGrid, rules: SignatureRules):
    """Per wafer the largest z of a band with at least `line_min_excess` excess failing dies."""
    n_cols = grid.bands.shape[1]
    # counts per band, plus a last all-zero column that stands for a missing flank
    n_band = np.zeros((len(f), n_cols + 1), dtype=np.float32)
    f_band = np.zeros_like(n_band)
    n_band[:, :n_cols] = (grid.bands.T @ t.T.astype(np.float32)).T
    f_band[:, :n_cols] = (grid.bands.T @ (f & t).T.astype(np.float32)).T
    lo = np.where(grid.band_flank_lo >= 0, grid.band_flank_lo, n_cols)
    hi = np.where(grid.band_flank_hi >= 0, grid.band_flank_hi, n_cols)
    n_flank = n_band[:, lo] + n_band[:, hi]
    f_flank = f_band[:, lo] + f_band[:, hi]
    n_band, f_band = n_band[:, :n_cols], f_band[:, :n_cols]
    rate = ((f & t).sum(1) / np.maximum(t.sum(1), 1)).astype(np.float32)
    q = np.maximum(rate[:, None], f_flank / np.maximum(n_flank, 1))
    np.clip(q, 1e-6, 1 - 1e-6, out=q)
    excess = f_band - n_band * q
    z = excess / np.sqrt(np.maximum(n_band * q * (1 - q), 1e-12))
    z[(excess < rules.line_min_excess) | (n_band == 0)] = -np.inf
    best = z.max(axis=1).astype(np.float64)
    return np.where(np.isfinite(best), best, 0.0)


def robust_zone_rates(f: np.ndarray, t: np.ndarray, grid: DieGrid) -> np.ndarray:
    """(wafers x zones) fail rate of each zone: the median of its four quadrants' rates.

    The join count's null takes each die at its zone's rate, so that a zone-wide change of
    defect density is not taken for clustering; the median over quadrants keeps a cluster
    (which sits in one or two quadrants) from raising its own zone's rate and hiding itself.
    """
    failed = f & t
    rates = np.zeros((len(f), len(ZONES), 4))
    for z in range(len(ZONES)):
        in_zone = grid.zone == z
        # a quadrant without tested dies takes the zone's overall rate
        overall = failed[:, in_zone].sum(1) / np.maximum(t[:, in_zone].sum(1), 1)
        for q in range(4):
            cols = in_zone & (grid.quadrant == q + 1)
            n = t[:, cols].sum(1)
            rates[:, z, q] = np.where(n > 0, failed[:, cols].sum(1) / np.maximum(n, 1), overall)
    return np.median(rates, axis=2)


def classify_grid(
    fails: np.ndarray,
    grid: DieGrid,
    tested: np.ndarray | None = None,
    rules: SignatureRules = DEFAULT_RULES,
) -> dict[str, np.ndarray]:
    """The signature of each wafer of one die grid.

    Parameters
    ----------
    fails : bool (wafers x dies of `grid`)
    grid : the grid (`DieGrid.of`)
    tested : bool, same shape: the dies the wafer has (default all)
    rules : the thresholds

    Returns
    -------
    dict of arrays, one entry per wafer: `signature` (a class of SIGNATURE_CLASSES), `score`
    (what decided it: the zone's relative loss 1 - Y_zone / Y_rest for center/edge_ring, the
    line's z for scratch, the join-count z for cluster and random, the fail rate for none), and the
    statistics: `n_dies`, `n_fail`, `center_loss`, `center_z`, `edge_loss`, `edge_z`,
    `line_z`, `join_z`
    """
    f = np.asarray(fails, dtype=bool)
    t = np.ones_like(f) if tested is None else np.asarray(tested, dtype=bool)
    if f.shape != t.shape or f.ndim != 2 or f.shape[1] != len(grid.x):
        raise ValueError(
            f"fails and tested must be (wafers x {len(grid.x)} dies), got {f.shape} and {t.shape}"
        )
    n_dies = t.sum(1)
    n_fail = (f & t).sum(1)
    c_loss, c_z, c_q = _zone_test(f, t, grid, CENTER, rules)
    e_loss, e_z, e_q = _zone_test(f, t, grid, EDGE, rules)
    line_z = _line_test(f, t, grid, rules)
    _, _, join_z = join_count_test(f, t, robust_zone_rates(f, t, grid)[:, grid.zone], grid)

    def zone_hit(loss, z, quadrants):
        return (loss >= rules.zone_loss) & (z >= rules.zone_z) & (quadrants >= rules.zone_quadrants)

    center, edge = zone_hit(c_loss, c_z, c_q), zone_hit(e_loss, e_z, e_q)
    rate = n_fail / np.maximum(n_dies, 1)
    conditions = [
        n_fail < rules.min_fails,
        edge & (~center | (e_z >= c_z)),
        center,
        line_z >= rules.line_z,
        join_z >= rules.join_z,
    ]
    signature = np.select(
        conditions, ["none", "edge_ring", "center", "scratch", "cluster"], "random"
    )
    score = np.select(conditions, [rate, e_loss, c_loss, line_z, join_z], join_z)
    return {
        "signature": signature,
        "score": score,
        "n_dies": n_dies,
        "n_fail": n_fail,
        "center_loss": c_loss,
        "center_z": c_z,
        "edge_loss": e_loss,
        "edge_z": e_z,
        "line_z": line_z,
        "join_z": join_z,
    }


def classify_wafers(
    dies: pl.DataFrame,
    rules: SignatureRules = DEFAULT_RULES,
    *,
    grid_by: str | None = "product",
    positions: pl.DataFrame | None = None,
) -> pl.DataFrame:
    """The signature of every wafer of a die frame (e.g. `marts.die_result`).

    Parameters
    ----------
    dies : one row per die: `wafer_id`, `die_x`, `die_y` and `good` (bool; a die not good
        fails), plus the `grid_by` column (wafers of one value share a die grid)
    rules : the thresholds
    grid_by : the column naming each wafer's grid (None: every wafer on one grid)
    positions : each grid's die positions (`grid_by`, die_x, die_y; e.g. marts.die_position);
        default the positions `dies` holds. Give them when `dies` is a part of the wafers, so
        the grid (its centre, zones and joins) is the product's whole grid

    Returns
    -------
    pl.DataFrame : wafer_id, signature, score and the statistics of `classify_grid`, one row
        per wafer, in wafer_id order
    """
    needed = ["wafer_id", "die_x", "die_y", "good"] + ([grid_by] if grid_by else [])
    missing = [c for c in needed if c not in dies.columns]
    if missing:
        raise ValueError(f"the die frame lacks the columns {missing} (has {dies.columns})")
    if dies.select(pl.col(needed).null_count().sum()).to_series().sum():
        nulls = [c for c in needed if dies[c].null_count()]
        raise ValueError(f"the die frame has nulls in {nulls}")
    key = grid_by or "__grid"
    if grid_by is None:
        dies = dies.with_columns(pl.lit("").alias(key))
    if positions is None:
        positions = dies.select(key, "die_x", "die_y").unique()
    elif grid_by is None:
        positions = positions.with_columns(pl.lit("").alias(key))
    positions = positions.select(key, "die_x", "die_y").sort(key, "die_x", "die_y")
    frames = []
    for (name,), grid_positions in positions.group_by([key], maintain_order=True):
        grid_positions = grid_positions.with_row_index("die")
        grid = DieGrid.of(
            grid_positions["die_x"].to_numpy(),
            grid_positions["die_y"].to_numpy(),
            rules.line_angles,
        )
        group = dies.filter(pl.col(key) == name)
        indexed = group.join(grid_positions, on=[key, "die_x", "die_y"], how="left")
        if indexed["die"].null_count():
            raise ValueError(f"the die frame has dies outside the positions of grid {name!r}")
        wafers = indexed["wafer_id"].unique().sort()
        indexed = indexed.join(
            pl.DataFrame({"wafer_id": wafers}).with_row_index("wafer"), on="wafer_id"
        ).sort("wafer")
        w_all = indexed["wafer"].to_numpy()
        d_all = indexed["die"].to_numpy()
        fail_all = ~indexed["good"].to_numpy()
        bounds = np.searchsorted(
            w_all, np.arange(0, len(wafers) + WAFERS_PER_BLOCK, WAFERS_PER_BLOCK)
        )
        for b, first in enumerate(range(0, len(wafers), WAFERS_PER_BLOCK)):
            rows = slice(bounds[b], bounds[b + 1])
            n_block = min(WAFERS_PER_BLOCK, len(wafers) - first)
            w, d = w_all[rows] - first, d_all[rows]
            if np.bincount(w * len(grid.x) + d).max(initial=0) > 1:
                raise ValueError("the die frame repeats a (wafer_id, die_x, die_y)")
            tested = np.zeros((n_block, len(grid.x)), dtype=bool)
            fails = np.zeros_like(tested)
            tested[w, d] = True
            fails[w, d] = fail_all[rows]
            out = classify_grid(fails, grid, tested, rules)
            frames.append(pl.DataFrame({"wafer_id": wafers[first : first + n_block], **out}))
    if not frames:
        return pl.DataFrame(
            schema={"wafer_id": pl.String, "signature": pl.String, "score": pl.Float64}
        )
    return pl.concat(frames).sort("wafer_id")


# the dies of a range of wafers, without geometry (the grids come from marts.die_position once)
DIE_ROWS_SQL = """
SELECT wafer_id, product, die_x, die_y, good FROM marts.die_result
WHERE wafer_id >= $first AND wafer_id <= $last
"""
SORTED_WAFERS_SQL = """
SELECT DISTINCT wafer_id FROM core.sort_die ORDER BY wafer_id
"""


def wafer_signatures_from_db(
    con: duckdb.DuckDBPyConnection,
    rules: SignatureRules = DEFAULT_RULES,
    wafers_per_query: int = 8_000,
) -> pl.DataFrame:
    """The signature of every wafer with die data in the database (`marts.die_result`).

    The dies are read a range of wafer ids at a time (`wafers_per_query` wafers), so memory
    is bounded by that range, not by the database; every range is classified on its
    products' whole grids (`marts.die_position`).

    Parameters
    ----------
    con : a connection to the database (read-only is enough)
    rules : the thresholds
    wafers_per_query : wafers read per query

    Returns
    -------
    pl.DataFrame : as `classify_wafers`; empty without die data
    """
    positions = pl.from_arrow(
        con.sql("SELECT product, die_x, die_y FROM marts.die_position").to_arrow_table()
    )
    wafers = con.sql(SORTED_WAFERS_SQL).fetchnumpy()["wafer_id"]
    frames = []
    for first in range(0, len(wafers), wafers_per_query):
        ids = wafers[first : first + wafers_per_query]
        params = {"first": str(ids[0]), "last": str(ids[-1])}
        dies = pl.from_arrow(con.sql(DIE_ROWS_SQL, params=params).to_arrow_table())
        frames.append(classify_wafers(dies, rules, positions=positions))
    if not frames:
        return classify_wafers(
            pl.DataFrame(schema={"wafer_id": pl.String, "product": pl.String, "die_x": pl.Int64,
                                 "die_y": pl.Int64, "good": pl.Boolean}),
            rules,
        )  # fmt: skip
    return pl.concat(frames)


def store_wafer_signatures(
    con: duckdb.DuckDBPyConnection, run_id: str, signatures: pl.DataFrame
) -> int:
    """Replace the run's rows of table `wafer_signatures` with `signatures` (one transaction).

    Parameters
    ----------
    con : a read-write connection (`flows.warehouse.db.connect`)
    run_id : the analysis run
    signatures : wafer_id, signature, score (e.g. `classify_wafers`'s frame)

    Returns
    -------
    int : rows written
    """
    rows = signatures.select("wafer_id", "signature", "score").with_columns(
        run_id=pl.lit(run_id, dtype=pl.String)
    )
    if rows["wafer_id"].is_duplicated().any():
        raise ValueError("the signatures repeat a wafer_id")
    unknown = set(rows["signature"].unique()) - set(SIGNATURE_CLASSES)
    if unknown:
        raise ValueError(f"unknown signature classes {sorted(unknown)}")
    arrow = rows.select("run_id", "wafer_id", "signature", "score").to_arrow()
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("DELETE FROM wafer_signatures WHERE run_id = ?", [run_id])
        con.register("new_wafer_signatures", arrow)
        con.execute("INSERT INTO wafer_signatures SELECT * FROM new_wafer_signatures")
        con.unregister("new_wafer_signatures")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return rows.height
