"""Scale-out: `yield_run` with its layer fits on a Dask cluster of worker processes.

The workers get model frames (Arrow) and return LayerFits; they report to the run's one
Prefect server and never start their own (flows.settings.WORKER_ENV).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flows.settings import WORKER_ENV
from tests.flows.pipeline_support import copy_db, fit_states, simulate_small_fab
from tests.flows.prefect_harness import prefect_api  # noqa: F401 (the shared server)

pytestmark = pytest.mark.slow


def _same(a, b, path="") -> list[str]:
    """Where two JSON-like trees differ: empty when equal.

    Floats to 1e-4 relative (1e-7 absolute): Dask workers run BLAS on one thread, the flow's
    process on several, so sums are rounded in a different order (seen: 6e-9 relative), and
    since issue 14 the operation tests refit from the chained model's estimates: a rounding
    difference there moves the refits' stopping point within their convergence tolerance
    (seen: 1.3e-6 relative on a finding's estimate, 1e-9 absolute on a residual).
    """
    if isinstance(a, float) and isinstance(b, float):
        both_nan = math.isnan(a) and math.isnan(b)
        return (
            []
            if both_nan or math.isclose(a, b, rel_tol=1e-4, abs_tol=1e-7)
            else [f"{path}: {a} != {b}"]
        )
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{path}: keys {sorted(a)} != {sorted(b)}"]
        return [d for k in a for d in _same(a[k], b[k], f"{path}.{k}")]
    if isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            return [f"{path}: {len(a)} items != {len(b)}"]
        return [
            d
            for i, (x, y) in enumerate(zip(a, b, strict=True))
            for d in _same(x, y, f"{path}[{i}]")
        ]
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def _layers(summary) -> list[dict]:
    """The run's LayerFits as written to analysis.json, less their wall-clock timings."""
    analysis = json.loads((Path(summary.report_html).parent / "analysis.json").read_text())
    for layer in analysis["layers"]:
        diagnostics = layer["diagnostics"]
        for key in [k for k in diagnostics if k.startswith("seconds")]:
            del diagnostics[key]
    return analysis["layers"]


def _prefect_servers_here() -> dict:
    """On a worker: Prefect servers this process started, and any server child process."""
    import psutil
    from prefect.server.api.server import SubprocessASGIServer

    children = [" ".join(p.cmdline()) for p in psutil.Process().children(recursive=True)]
    return {
        "servers": [str(k) for k in SubprocessASGIServer._instances],
        "server_children": [c for c in children if "uvicorn" in c or "prefect" in c],
        "ephemeral_env": os.environ.get("PREFECT_SERVER_EPHEMERAL_ENABLED"),
    }


def test_yield_run_on_a_local_dask_cluster_equals_the_threaded_run(tmp_path, prefect_api):  # noqa: F811
    from distributed import Client, LocalCluster, get_task_stream
    from prefect.settings import PREFECT_TASKS_REFRESH_CACHE, temporary_settings

    from flows.orchestration.prefect_flows import yield_run

    truth = simulate_small_fab(tmp_path / "fab")
    threaded_db, dask_db = tmp_path / "threads.duckdb", tmp_path / "dask.duckdb"
    # no cached fits: both runs fit every layer
    with temporary_settings(updates={PREFECT_TASKS_REFRESH_CACHE: True}):
        threaded = yield_run(
            drops=[str(d) for d in truth.drop_dirs],
            db=str(threaded_db),
            out=str(tmp_path / "threads"),
            return_state=True,
        )
        assert threaded.is_completed(), threaded.message
        copy_db(threaded_db, dask_db)  # the same data, ingested once

        with (
            LocalCluster(
                n_workers=2,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                env=WORKER_ENV,
            ) as cluster,
            Client(cluster) as client,
        ):
            with get_task_stream(client) as stream:
                on_dask = yield_run(
                    db=str(dask_db),
                    out=str(tmp_path / "dask"),
                    task_runner=cluster.scheduler_address,
                    return_state=True,
                )
            worker_servers = client.run(_prefect_servers_here)
            worker_addresses = set(cluster.scheduler_info["workers"])

    assert on_dask.is_completed(), on_dask.message
    n_fits = len(truth.layers) + 1  # the layers and the chained model
    ran_on = [t["worker"] for t in stream.data if t["key"] and "fit" in str(t["key"])]
    assert len(ran_on) >= n_fits and set(ran_on) <= worker_addresses, stream.data

    # the workers reported to this session's one server and started none of their own
    states = fit_states(on_dask.state_details.flow_run_id)
    assert len(states) == n_fits and set(states.values()) == {"Completed"}, states
    assert len(worker_servers) == 2
    for info in worker_servers.values():
        assert info == {"servers": [], "server_children": [], "ephemeral_env": "false"}

    a, b = threaded.result(), on_dask.result()
    assert a.run_id != b.run_id
    differences = _same(_layers(a), _layers(b)) + _same(a.ranking, b.ranking)
    assert not differences, "threads and Dask disagree:\n" + "\n".join(differences)


def test_a_worker_without_a_server_url_fails_instead_of_starting_a_server(tmp_path):
    """The setting that WORKER_ENV carries has teeth: no URL means an error, not a server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_API")}
    env.update(WORKER_ENV, PREFECT_HOME=str(tmp_path / "prefect-home"))
    script = "from prefect import flow\n@flow\ndef probe():\n    return 1\nprobe()\n"
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode != 0
    assert "No Prefect API URL provided" in done.stderr
    assert "Starting temporary server" not in done.stderr + done.stdout
