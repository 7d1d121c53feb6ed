"""Model frames for the analysis: one Arrow table per sub-process layer, one row per wafer.

The SQL views of `sql/marts` do the joining (wafer x operation with tool, chamber and yield;
wafer x parameter metrology summaries; site values in `marts.analysis_param_sites`). Here they
are read once as Arrow and pivoted with Polars into the wide frame a layer's models need:

    wafer_id, lot_id, product, dies_good, dies_total      (dies_* null until the wafer is sorted)
    tool::<OP>, chamber::<OP>                              one pair per operation of the layer;
                                                           chamber = "tool:chamber" (unique)
    meas::<OP>::<PARAM>                                    wafer mean of the measured sites
    sites::<OP>::<PARAM>                                   list of the site values

Unmeasured wafers have nulls in the metrology columns: metrology is sampled.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa

TOOL = "tool::"
CHAMBER = "chamber::"
MEAS = "meas::"
SITES = "sites::"
LAYERS_KEY = "yieldrank.layers"
WAFER_COLUMNS = ("wafer_id", "lot_id", "product", "dies_good", "dies_total")


@dataclass(frozen=True)
class FrameLayout:
    """What a layer frame holds, read back from its column names."""

    operations: list[str]
    params: list[tuple[str, str]]  # (operation, param)

    @classmethod
    def of(cls, columns: list[str]) -> FrameLayout:
        ops = [c.removeprefix(TOOL) for c in columns if c.startswith(TOOL)]
        params = [tuple(c.removeprefix(MEAS).split("::", 1)) for c in columns if c.startswith(MEAS)]
        return cls(operations=ops, params=params)  # type: ignore[arg-type]


# the marts read below, checked (sql/marts/checks.toml) before they are read
MARTS_READ = (
    "operation_layer",
    "wafer_frame",
    "wafer_operation",
    "wafer_param",
    "analysis_param_sites",
)


def _read(db_path: str | Path) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    from flows.warehouse.db import connect
    from flows.warehouse.marts import check_marts

    con = connect(db_path)
    try:
        check_marts(con, MARTS_READ)
        steps = con.sql(
            """
            SELECT s.wafer_id, s.lot_id, s.product, s.layer, s.operation, s.tool_id,
                   s.chamber_key, s.dies_good, s.dies_total
            FROM marts.wafer_operation AS s
            """
        ).to_arrow_table()
        meas = con.sql(
            """
            SELECT p.wafer_id, p.layer, p.operation, p.param, p.value_mean, s.site_values
            FROM marts.wafer_param AS p
            JOIN marts.analysis_param_sites AS s USING (wafer_id, operation, param)
            WHERE p.layer IS NOT NULL
            """
        ).to_arrow_table()
        order = con.sql(
            "SELECT operation, layer, median_step_seq FROM marts.operation_layer"
        ).to_arrow_table()
    finally:
        con.close()
    return pl.from_arrow(steps), pl.from_arrow(meas), pl.from_arrow(order)


def build_layer_frames(
    steps: pl.DataFrame, meas: pl.DataFrame, op_order: pl.DataFrame
) -> dict[str, pa.Table]:
    """Pivot the long mart rows into one wide frame per layer (pure: no database)."""
    frames: dict[str, pa.Table] = {}
    order = (
        op_order.sort(["median_step_seq", "operation"]).get_column("operation").to_list()
        if op_order.height
        else sorted(steps.get_column("operation").unique().to_list())
    )
    rank = {op: i for i, op in enumerate(order)}
    for layer in sorted(steps.get_column("layer").unique().to_list()):
        rows = steps.filter(pl.col("layer") == layer)
        base = rows.select(WAFER_COLUMNS).unique(subset="wafer_id", keep="first")
        ops = sorted(
            rows.get_column("operation").unique().to_list(), key=lambda o: rank.get(o, 1e9)
        )
        frame = base
        for op in ops:
            part = rows.filter(pl.col("operation") == op).select(
                "wafer_id",
                pl.col("tool_id").alias(TOOL + op),
                pl.col("chamber_key").alias(CHAMBER + op),
            )
            frame = frame.join(part, on="wafer_id", how="left")
        lm = meas.filter(pl.col("layer") == layer)
        keys = lm.select("operation", "param").unique().sort("operation", "param").rows()
        for op, param in keys:
            part = lm.filter((pl.col("operation") == op) & (pl.col("param") == param)).select(
                "wafer_id",
                pl.col("value_mean").alias(f"{MEAS}{op}::{param}"),
                pl.col("site_values").alias(f"{SITES}{op}::{param}"),
            )
            frame = frame.join(part, on="wafer_id", how="left")
        frames[layer] = frame.sort("wafer_id").to_arrow()
    return frames


def layer_frames(db_path: str | Path) -> dict[str, pa.Table]:
    """Layer -> wide wafer frame (see the module docstring), from the DuckDB at `db_path`."""
    steps, meas, order = _read(db_path)
    return build_layer_frames(steps, meas, order)


def chained_frame(frames: dict[str, pa.Table]) -> pa.Table:
    """All layers side by side, one row per wafer: the frame of the chained model.

    Operation names belong to one layer each, so the layers' columns do not collide.
    """
    if not frames:
        return pa.table({c: pa.array([], pa.string()) for c in WAFER_COLUMNS})
    layer_dfs = [pl.from_arrow(frames[layer]) for layer in sorted(frames)]
    out = pl.concat([df.select(WAFER_COLUMNS) for df in layer_dfs]).unique(
        subset="wafer_id", keep="first"
    )
    for df in layer_dfs:
        extra = [c for c in df.columns if c not in WAFER_COLUMNS and c not in out.columns]
        out = out.join(df.select("wafer_id", *extra), on="wafer_id", how="left")
    table = out.sort("wafer_id").to_arrow()
    layers = {layer: FrameLayout.of(frames[layer].column_names).operations for layer in frames}
    return table.replace_schema_metadata({LAYERS_KEY: json.dumps(layers)})


def layer_operations(frame_all: pa.Table) -> dict[str, list[str]]:
    """Layer -> its operations, as recorded by `chained_frame` in the table's metadata."""
    meta = frame_all.schema.metadata or {}
    raw = meta.get(LAYERS_KEY.encode())
    if raw is None:
        raise ValueError(
            "this frame was not built by chained_frame: it does not say which layer each operation belongs to"
        )
    return json.loads(raw)
