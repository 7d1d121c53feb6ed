"""Where the per-layer fits run: threads (default) or an existing Dask cluster."""

from __future__ import annotations

import os

from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

# --------------------------------------------------------------------------------------
# Task runners


def make_task_runner(spec: str = "threads", max_workers: int | None = None) -> TaskRunner:
    """`threads` (default) or the address of a running Dask scheduler, e.g. tcp://host:8786.

    A Dask cluster's workers must reach this run's Prefect API (PREFECT_API_URL) and
    should run with PREFECT_SERVER_EPHEMERAL_ENABLED=false so that none of them starts a
    Prefect server of its own (see flows/settings.py).
    """
    if spec in ("threads", "", None):
        # One layer fit per core: the fits hold the GIL little but each needs its own memory
        # (about 1.7 GB for a 300,000-wafer layer), and Prefect's default of unbounded threads
        # ran all 13 fits of a 12-layer year at once and exhausted 23 GB.
        return ThreadPoolTaskRunner(max_workers=max_workers or os.cpu_count() or 1)
    if "://" not in spec and ":" not in spec:
        raise ValueError(
            f"task runner {spec!r} is neither 'threads' nor a Dask scheduler address "
            "such as tcp://127.0.0.1:8786"
        )
    from prefect_dask import DaskTaskRunner

    return DaskTaskRunner(address=spec)
