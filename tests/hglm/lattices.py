"""Neighbour matrices of test lattices, shared by the CAR/SAR tests."""

from __future__ import annotations

import numpy as np


def rook_neighbours(n: int) -> np.ndarray:
    """The dense 0/1 rook-neighbour matrix of an n x n grid (row-major cells)."""
    W = np.zeros((n * n, n * n))
    for i in range(n):
        for j in range(n):
            k = i * n + j
            if i + 1 < n:
                W[k, k + n] = W[k + n, k] = 1
            if j + 1 < n:
                W[k, k + 1] = W[k + 1, k] = 1
    return W
