"""What the orchestration tests share: a small simulated fab, database and Prefect look-ups."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb

# Small enough to fit in seconds, big enough for every layer to be fitted (not too_little_data);
# three layers so that the simulator can plant its effects in different ones.
FAB_LAYERS = ("GATE", "M1", "VIA1")
FAB_LOTS = 24
FAB_SEED = 3

YIELDRANK = str(Path(sys.executable).parent / "yieldrank")


def simulate_small_fab(root: Path, n_drops: int = 2, seed: int = FAB_SEED):
    """The tests' fab: always the same data, so runs in one session share cached fits."""
    from flows.fabsim.config import FabConfig
    from flows.fabsim.simulation import simulate_fab

    return simulate_fab(
        root, FabConfig(lots=FAB_LOTS, layers=FAB_LAYERS, n_drops=n_drops), seed=seed
    )


def rows(db: Path | str, sql: str, params: list | None = None) -> list[tuple]:
    con = duckdb.connect(str(db), read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def copy_db(src: Path, dst: Path) -> Path:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


def bad_sort_drop(root: Path, wafer_id: str) -> Path:
    """A drop whose one sort row has more good dies than dies: the contract rejects it."""
    drop = root / "drop_bad_sort"
    drop.mkdir(parents=True, exist_ok=True)
    (drop / "sort_yield.csv").write_text(
        f"wafer_id,dies_total,dies_good,test_ts\n{wafer_id},500,600,2026-06-01T00:00:00\n"
    )
    return drop


def task_runs_below(flow_run_id: UUID) -> list[Any]:
    """Every task run of a flow run and of its subflows, as the Prefect server recorded them."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterParentFlowRunId,
        TaskRunFilter,
        TaskRunFilterFlowRunId,
    )

    with get_client(sync_client=True) as client:
        subflows = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[flow_run_id])
            )
        )
        ids = [flow_run_id, *(f.id for f in subflows)]
        return client.read_task_runs(
            task_run_filter=TaskRunFilter(flow_run_id=TaskRunFilterFlowRunId(any_=ids))
        )


def fit_states(flow_run_id: UUID) -> dict[str, str]:
    """Task run name -> state name, for the fit tasks of a yield run."""
    return {
        t.name: t.state.name
        for t in task_runs_below(flow_run_id)
        if t.name.startswith(("fit-layer", "fit-chained"))
    }


HOLDER = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("CREATE TABLE IF NOT EXISTS marker (x INTEGER)")
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def hold_in_other_process(db: Path, seconds: float) -> subprocess.Popen:
    """Another process holding the DuckDB file read-write (as a second run would)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "holding"
    return proc
