"""The process route: layers, operations, tools and chambers drawn from the catalogue."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from flows.fabsim.catalogue import CATALOGUE, EQUIPMENT, ParamSpec

# ---------------------------------------------------------------------------------------------
# The route: operations, tools, chambers
# ---------------------------------------------------------------------------------------------


@dataclass
class Route:
    """The route as flat arrays: operation j, tool t (global index), chamber c (within tool)."""

    layers: list[str]
    op_name: list[str]
    op_layer: np.ndarray  # j -> layer index
    op_equipment: list[str]
    step_seq: np.ndarray  # j -> step_seq (10, 20, ...)
    tool_start: np.ndarray  # j -> first global tool index; tools of j are tool_start[j] + k
    n_tools: np.ndarray  # j -> number of tools
    tool_name: list[str]  # t -> tool_id
    tool_op: np.ndarray  # t -> operation
    tool_chambers: np.ndarray  # t -> number of chambers
    params: list[ParamSpec]
    param_op: np.ndarray  # p -> operation index

    @property
    def n_ops(self) -> int:
        return len(self.op_name)

    def to_records(self) -> list[dict[str, Any]]:
        out = []
        for j, op in enumerate(self.op_name):
            tools = range(self.tool_start[j], self.tool_start[j] + self.n_tools[j])
            out.append(
                {
                    "layer": self.layers[self.op_layer[j]],
                    "operation": op,
                    "step_seq": int(self.step_seq[j]),
                    "equipment": self.op_equipment[j],
                    "tools": [
                        {
                            "tool_id": self.tool_name[t],
                            "chambers": _chamber_labels(self.tool_chambers[t]),
                        }
                        for t in tools
                    ],
                }
            )
        return out


def _chamber_labels(n: int) -> list[str | None]:
    # A single-chamber tool reports no chamber: the contract makes chamber_id optional.
    return [None] if n == 1 else [f"CH{c + 1}" for c in range(n)]


def build_route(
    rng: np.random.Generator, layers: Sequence[str], ops_per_layer: tuple[int, int]
) -> Route:
    lo, hi = ops_per_layer
    if not 1 <= lo <= hi <= 5:
        raise ValueError(f"ops_per_layer must satisfy 1 <= low <= high <= 5, got {ops_per_layer}")
    unknown = [x for x in layers if x not in CATALOGUE]
    if unknown:
        raise ValueError(f"unknown layers {unknown}; known layers: {list(CATALOGUE)}")
    if len(set(layers)) != len(layers):
        raise ValueError(f"layers repeat: {list(layers)}")
    counts = np.arange(lo, hi + 1)
    weights = np.array([0.1, 0.2, 0.35, 0.35, 0.35])[counts - 1]  # most layers have 4-5 steps
    op_name, op_layer, op_eq, n_tools, tool_name, tool_op, tool_ch = [], [], [], [], [], [], []
    params: list[ParamSpec] = []
    serial: dict[str, int] = {}
    for li, layer in enumerate(layers):
        candidates, layer_params = CATALOGUE[layer]
        n = int(rng.choice(counts, p=weights / weights.sum()))
        required = {layer_params[0].operation}  # every layer keeps at least one measured step
        optional = [i for i, (op, _) in enumerate(candidates) if op not in required]
        chosen = set(rng.choice(optional, size=n - len(required), replace=False).tolist())
        chosen |= {i for i, (op, _) in enumerate(candidates) if op in required}
        for i in sorted(chosen):
            op, eq = candidates[i]
            spec = EQUIPMENT[eq]
            j = len(op_name)
            op_name.append(op)
            op_layer.append(li)
            op_eq.append(eq)
            k = int(rng.integers(spec.tools[0], spec.tools[1] + 1))
            n_tools.append(k)
            for _ in range(k):
                serial[eq] = serial.get(eq, 0) + 1
                tool_name.append(f"{eq}{serial[eq]:02d}")
                tool_op.append(j)
                tool_ch.append(int(rng.integers(spec.chambers[0], spec.chambers[1] + 1)))
        params += [p for p in layer_params if p.operation in op_name]
    n_tools_a = np.array(n_tools)
    return Route(
        layers=list(layers),
        op_name=op_name,
        op_layer=np.array(op_layer),
        op_equipment=op_eq,
        step_seq=10 * np.arange(1, len(op_name) + 1),
        tool_start=np.concatenate([[0], np.cumsum(n_tools_a)[:-1]]),
        n_tools=n_tools_a,
        tool_name=tool_name,
        tool_op=np.array(tool_op),
        tool_chambers=np.array(tool_ch),
        params=params,
        param_op=np.array([op_name.index(p.operation) for p in params]),
    )
