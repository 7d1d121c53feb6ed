"""At-risk wafers: for an active excursion, the wafers processed on its tool or chamber since
its onset, sorted (with their yield) or still in the line (the contract's `at_risk_wafers`)."""

from __future__ import annotations

import polars as pl

from flows.analysis.excursions import Excursion

AT_RISK_COLUMNS = (
    "wafer_id", "layer", "operation", "tool_id", "chamber_id", "processed_ts", "sorted", "yield",
)  # fmt: skip


def at_risk_wafers(
    excursion: Excursion, passes: pl.DataFrame, sort_yield: pl.DataFrame
) -> pl.DataFrame:
    """The wafers an active excursion may have hit: processed on its equipment since onset.

    "Since onset" is from `onset_low`, the lower end of the onset's 95 % interval, so that a
    wafer is missed only when the interval misses the onset.

    Parameters
    ----------
    excursion : an active excursion (an ended one has no wafers at risk: empty result)
    passes : wafer_id, layer, operation, tool_id, chamber_id, track_in_ts: every wafer's
        pass at the operation, the wafers still in the line included
    sort_yield : wafer_id, dies_good, dies_total of the sorted wafers

    Returns
    -------
    polars.DataFrame : the contract's `at_risk_wafers` columns but run_id, sorted first by
        processed_ts; `yield` is dies_good / dies_total, null when not sorted
    """
    if not excursion.active:
        return pl.DataFrame(schema=_AT_RISK_SCHEMA)
    on = (pl.col("operation") == excursion.operation) & (pl.col("tool_id") == excursion.tool_id)
    if excursion.chamber_id is not None:
        on &= pl.col("chamber_id") == excursion.chamber_id
    hit = (
        passes.filter(on)
        .group_by("wafer_id", "layer", "operation", "tool_id", "chamber_id")
        .agg(pl.col("track_in_ts").min().cast(pl.Datetime("us")).alias("processed_ts"))
        .filter(pl.col("processed_ts") >= excursion.onset_low)
    )
    ys = sort_yield.select(
        "wafer_id", (pl.col("dies_good") / pl.col("dies_total")).alias("yield")
    ).unique("wafer_id", keep="last")
    return (
        hit.join(ys, on="wafer_id", how="left")
        .with_columns(pl.col("yield").is_not_null().alias("sorted"))
        .select(AT_RISK_COLUMNS)
        .sort("processed_ts", "wafer_id")
        .cast(_AT_RISK_SCHEMA)  # type: ignore[arg-type]
    )


_AT_RISK_SCHEMA = {
    "wafer_id": pl.String,
    "layer": pl.String,
    "operation": pl.String,
    "tool_id": pl.String,
    "chamber_id": pl.String,
    "processed_ts": pl.Datetime("us"),
    "sorted": pl.Boolean,
    "yield": pl.Float64,
}
