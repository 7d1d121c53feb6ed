"""`yieldrank demo` and `yieldrank run` as a user starts them: no server started by hand."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from tests.flows.pipeline_support import YIELDRANK


def _without_prefect_server(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")  # nothing of the user's ~/.prefect
    return env


def test_run_without_drops_or_landing_says_what_it_needs(tmp_path):
    done = subprocess.run(
        [YIELDRANK, "run", "--db", str(tmp_path / "x.duckdb")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "give at least one drop folder or --landing" in done.stderr


def test_run_help_names_the_task_runner_and_lock_wait_options():
    done = subprocess.run([YIELDRANK, "run", "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for option in ("--db", "--out", "--landing", "--task-runner", "--lock-wait"):
        assert option in done.stdout


@pytest.mark.slow
def test_demo_runs_everything_on_embedded_defaults_and_prints_the_report(tmp_path):
    out = tmp_path / "demo"
    done = subprocess.run(
        [YIELDRANK, "demo", "--out", str(out), "--lots", "24"],
        env=_without_prefect_server(tmp_path),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("report: ")
    report = Path(last.removeprefix("report: "))
    assert report.is_file() and report.is_relative_to(out)
    assert (out / "yieldrank.duckdb").is_file()

    # Prefect's own temporary server, on loopback, gone when the demo ends
    started = re.search(r"Starting temporary server on http://(127\.0\.0\.1):(\d+)", done.stderr)
    assert started, done.stderr
    with socket.socket() as sock:
        assert sock.connect_ex((started[1], int(started[2]))) != 0
