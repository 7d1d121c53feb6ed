"""The data contract's die geometry ("Die geometry and zones"), in one place for Python.

`sql/marts/07_die_position.sql` computes the same radius, zone and quadrant in the database;
the simulator (`flows.fabsim.dies`) and the wafer signatures (`flows.analysis.signatures`) use
these functions, so a die is in the same zone wherever it is looked at.
"""

from __future__ import annotations

import numpy as np

# r normalised to the product's outermost die: center r <= 0.5, middle 0.5 < r <= 0.8, edge r > 0.8
ZONES = ("center", "middle", "edge")


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


def grid_quadrants(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Each die's quadrant 1-4 around the grid centre, as `marts.die_position` numbers them:
    counter-clockwise from +x, each half-axis in one quadrant (1 dx > 0, dy >= 0; 2 dx <= 0,
    dy > 0; 3 dx < 0, dy <= 0; 4 dx >= 0, dy < 0; the centre itself is 1).

    Parameters
    ----------
    x, y : integer die coordinates of one product's grid

    Returns
    -------
    np.ndarray : int quadrant per die
    """
    x = np.asarray(x, dtype=np.int64)
    y = np.asarray(y, dtype=np.int64)
    dx = 2 * x - x.min() - x.max()
    dy = 2 * y - y.min() - y.max()
    return np.select(
        [(dx > 0) & (dy >= 0), (dx <= 0) & (dy > 0), (dx < 0) & (dy <= 0), (dx >= 0) & (dy < 0)],
        [1, 2, 3, 4],
        default=1,
    )
