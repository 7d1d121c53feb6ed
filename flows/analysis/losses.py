"""The loss arithmetic of the operation tests: contrasts, shifts to the typical level, losses.

Plain numpy on the numbers a conditional fit hands over (`flows.analysis.attribution`), so
that it is testable by hand: which linear contrasts the Wald tests use, how a tool's and its
chamber's shifts add up to the move to the operation's typical level, the yield a level's
wafers would gain, a metrology parameter's loss by tool, and the detectable shift.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import sparse, special, stats

from flows.analysis.ranking import _typical_rows


@dataclass
class CellLayout:
    """The operation's tool:chamber cells and which tool each belongs to."""

    cells: list[str]  # fixed-effect order
    tool_of: np.ndarray  # (cells,) index into `tools`, -1 for the "(not run)" cell
    tools: list[str]
    n: np.ndarray  # (cells,) wafers per cell


def contrast_matrices(layout: CellLayout) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Linear contrasts of the cell effects: one row per tool, one per chamber of a
    multi-chamber tool.

    A tool's effect is the wafer-weighted mean of its cells; its contrast is that minus the
    wafer-weighted mean of the other tools' cells. A chamber's contrast is its cell minus the
    wafer-weighted mean of the other cells of the same tool. The "(not run)" cell is in
    neither. Returns (tool rows, chamber rows, the cell index of each chamber row).
    """
    c = len(layout.cells)
    n = layout.n.astype(float)
    tool_rows = np.zeros((len(layout.tools), c))
    for k in range(len(layout.tools)):
        own = layout.tool_of == k
        other = (layout.tool_of >= 0) & ~own
        tool_rows[k, own] = n[own] / n[own].sum()
        if other.any():
            tool_rows[k, other] = -n[other] / n[other].sum()
    cham_rows, cham_cells = [], []
    for j in range(c):
        k = layout.tool_of[j]
        if k < 0:
            continue
        sisters = (layout.tool_of == k) & (np.arange(c) != j)
        if not sisters.any():
            continue
        row = np.zeros(c)
        row[j] = 1.0
        row[sisters] = -n[sisters] / n[sisters].sum()
        cham_rows.append(row)
        cham_cells.append(j)
    return tool_rows, np.array(cham_rows).reshape(-1, c), cham_cells


def level_shifts(theta: np.ndarray, layout: CellLayout) -> tuple[np.ndarray, np.ndarray]:
    """Per draw (rows of `theta`, cells in columns): each cell's tool shift and chamber shift.

    A tool's level is its typical chamber (median of its cells, of two the better); the
    operation's typical level is the typical tool level. A wafer of cell c on tool k moves by
    (typical - level_k) if its tool performed like the typical tool, and by
    (level_k - theta_c) if its chamber performed like its tool's typical chamber: the two
    add up to the move to the typical level, so that a tool's and its chamber's losses are
    never counted twice. The "(not run)" cell does not move.
    """
    d = theta.shape[0]
    level = np.zeros((d, len(layout.tools)))
    for k in range(len(layout.tools)):
        level[:, k] = _typical_rows(theta[:, layout.tool_of == k])
    typical = _typical_rows(level)
    ok = layout.tool_of >= 0
    at = np.maximum(layout.tool_of, 0)
    tool_shift = np.where(ok, typical[:, None] - level[:, at], 0.0)
    cham_shift = np.where(ok, level[:, at] - theta, 0.0)
    return tool_shift, cham_shift


def level_losses(
    eta: np.ndarray,
    cell_index: np.ndarray,
    theta_hat: np.ndarray,
    theta: np.ndarray,
    layout: CellLayout,
    n_fab: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Per draw: each tool's and each cell's loss in points of fab yield.

    `eta` is each wafer's fitted logit at `theta_hat`; in a draw, the wafer's cell effect is
    the drawn one and everything else stays as it is. A level's loss is the yield its wafers
    would gain by the shift of `level_shifts`, summed over them, as points of `n_fab` wafers.
    Returns (draws, tools) and (draws, cells) arrays.
    """
    tool_shift, cham_shift = level_shifts(theta, layout)
    eta_d = eta[None, :] + (theta - theta_hat)[:, cell_index]
    base = special.expit(eta_d)
    # (cells, wafers) indicator: sums each draw's gains over every cell's wafers
    members = sparse.csr_matrix(
        (np.ones(len(eta)), (cell_index, np.arange(len(eta)))), shape=(len(layout.cells), len(eta))
    )
    cell_tool = special.expit(eta_d + tool_shift[:, cell_index]) - base
    cell_cham = special.expit(eta_d + cham_shift[:, cell_index]) - base
    per_cell_tool = 100.0 / n_fab * np.asarray(members @ cell_tool.T).T
    per_cell_cham = 100.0 / n_fab * np.asarray(members @ cell_cham.T).T
    tool_losses = np.zeros((theta.shape[0], len(layout.tools)))
    for k in range(len(layout.tools)):
        tool_losses[:, k] = per_cell_tool[:, layout.tool_of == k].sum(axis=1)
    return tool_losses, per_cell_cham


def metrology_tool_losses(
    eta_other: np.ndarray, z: np.ndarray, tool: np.ndarray, b: np.ndarray, n_fab: int
) -> np.ndarray:
    """Per coefficient (rows of `b`) and tool (columns): the yield its wafers would gain if the
    tool set the parameter like the typical tool, in points of `n_fab` wafers.

    A tool's level is b times its wafers' mean standardised value; the typical level is the
    median tool level (of two, the better). Each wafer keeps its own deviation from its
    tool's mean: only the tool's shift is undone. A tool better than typical has a negative
    value here; the parameter's loss counts only the tools worse than typical (a thin-oxide
    furnace does not pay for a thick-oxide one).
    """
    ok = tool >= 0
    n_tools = int(tool[ok].max()) + 1 if ok.any() else 0
    counts = np.bincount(tool[ok], minlength=n_tools)
    z_tool = np.bincount(tool[ok], weights=z[ok], minlength=n_tools) / np.maximum(counts, 1)
    level = b[:, None] * z_tool[None, :]
    shift = _typical_rows(level)[:, None] - level  # (draws, tools)
    at = np.maximum(tool, 0)
    eta = eta_other + np.outer(b, z)
    gain = np.where(ok, special.expit(eta + shift[:, at]) - special.expit(eta), 0.0)
    members = sparse.csr_matrix(
        (np.ones(int(ok.sum())), (tool[ok], np.flatnonzero(ok))), shape=(n_tools, len(z))
    )
    return 100.0 / n_fab * np.asarray(members @ gain.T).T


def detectable_shift(
    contrast_se: float | None, typical_eta: np.ndarray, n_tests: int, alpha: float = 0.05
) -> tuple[float | None, float | None]:
    """The smallest tool shift the family's test detects with 80 % power.

    (z_{1 - a/2} + z_{0.8}) x the median SE of the operation's tool contrasts, a = alpha /
    n_tests (Bonferroni over the run's family: the Holm level of a single true effect), on
    the logit; in yield points, the mean drop of the typical tool's wafers shifted by it.
    Returns (points, logit), or (None, None) when the operation has no contrast.
    """
    if contrast_se is None or not math.isfinite(contrast_se) or len(typical_eta) == 0:
        return None, None
    a = alpha / max(n_tests, 1)
    logit = float((stats.norm.isf(a / 2) + stats.norm.ppf(0.8)) * contrast_se)
    points = float(100.0 * np.mean(special.expit(typical_eta) - special.expit(typical_eta - logit)))
    return points, logit
