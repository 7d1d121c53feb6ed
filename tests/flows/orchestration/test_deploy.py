"""prefect.yaml against a real `prefect server start`: deploy, work pool, worker, a run.

Everything is started here and torn down here: a server on a free port bound to
127.0.0.1 with its own PREFECT_HOME, a process work pool, `prefect deploy --all` from
the repository root, a worker, and `prefect deployment run 'yield-run/adhoc'`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from tests.flows.pipeline_support import rows, simulate_small_fab
from tests.flows.prefect_harness import shared_fit_cache

REPO = Path(__file__).resolve().parents[3]
BIN = Path(sys.executable).parent
POOL = "yieldrank"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_healthy(url: str, server: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert server.poll() is None, "prefect server start exited"
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=5) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(1)
    raise TimeoutError(f"no healthy Prefect server at {url} after {timeout} s")


def _stop(proc: subprocess.Popen) -> None:
    """End a process started here and everything it started (its own session)."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _listening_addresses(pid: int) -> set[str]:
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {
        c.laddr.ip
        for p in procs
        for c in p.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN
    }


def test_prefect_yaml_declares_a_daily_schedule_with_its_timezone_and_an_adhoc_run():
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    deployments = {d["name"]: d for d in spec["deployments"]}
    assert set(deployments) == {"daily-landing", "adhoc"}
    for d in deployments.values():
        assert d["entrypoint"] == "flows/orchestration/prefect_flows.py:yield_run"
        assert d["work_pool"]["name"] == POOL
    (schedule,) = deployments["daily-landing"]["schedules"]
    assert len(schedule["cron"].split()) == 5 and schedule["timezone"]
    assert deployments["daily-landing"]["parameters"]["landing"]
    assert deployments["adhoc"]["schedules"] == []
    assert set(deployments["adhoc"]["parameters"]) >= {"drops", "db", "out"}


@pytest.mark.slow
def test_deploy_all_then_a_worker_runs_the_adhoc_deployment(tmp_path):
    truth = simulate_small_fab(tmp_path / "fab")
    db, out = tmp_path / "fab.duckdb", tmp_path / "reports"
    port = _free_port()
    api = f"http://127.0.0.1:{port}/api"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(tmp_path / "prefect-home"),
        PREFECT_API_URL=api,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_SERVER_UI_ENABLED="false",
        DO_NOT_TRACK="1",
        PREFECT_WORKER_QUERY_SECONDS="2",  # pick the run up promptly
        # fits of this fab cached by earlier tests of the session are reused
        PREFECT_LOCAL_STORAGE_PATH=str(shared_fit_cache(tmp_path / "prefect-storage")),
    )

    def prefect(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)}:\n{done.stdout}\n{done.stderr}"
        return done

    def start(*args: str, log: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(BIN / "prefect"), *args],
            cwd=REPO,
            env=env,
            stdout=(tmp_path / log).open("w"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    server = start("server", "start", "--host", "127.0.0.1", "--port", str(port), log="server.log")
    worker = None
    try:
        _wait_healthy(api, server)
        assert _listening_addresses(server.pid) == {"127.0.0.1"}

        prefect("work-pool", "create", POOL, "--type", "process")
        deployed = prefect("--no-prompt", "deploy", "--all")
        assert "yield-run/daily-landing" in deployed.stdout
        assert "yield-run/adhoc" in deployed.stdout

        worker = start("worker", "start", "--pool", POOL, log="worker.log")
        params = {"drops": [str(d) for d in truth.drop_dirs], "db": str(db), "out": str(out)}
        run = prefect(
            "deployment", "run", "yield-run/adhoc", "--params", json.dumps(params),
            "--watch", "--watch-interval", "2",
            timeout=900,
        )  # fmt: skip
        assert "Completed" in run.stdout, run.stdout + (tmp_path / "worker.log").read_text()
    finally:
        if worker is not None:
            _stop(worker)
        _stop(server)

    ranking = rows(
        db,
        "SELECT run_id, layer, rank FROM subprocess_ranking WHERE rank IS NOT NULL ORDER BY rank",
    )
    assert {layer for _, layer, _ in ranking} == set(truth.layers)
    assert [rank for _, _, rank in ranking] == list(range(1, len(truth.layers) + 1))
    (run_id,) = {r for r, _, _ in ranking}
    assert (out / run_id / "report.html").is_file()
