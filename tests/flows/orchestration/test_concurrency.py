"""Two runs on one database: the second waits for the first, or fails naming the holder.

Both runs are `yieldrank run` processes, as a schedule and an engineer would start them,
reporting to the session's Prefect server.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.flows.pipeline_support import (
    YIELDRANK,
    hold_in_other_process,
    rows,
    simulate_small_fab,
)
from tests.flows.prefect_harness import (  # noqa: F401 (the shared server)
    prefect_api,
    shared_fit_cache,
)

pytestmark = pytest.mark.slow


def _env(api_url: str, tmp_path: Path) -> dict[str, str]:
    # one server for every process, and the session's fit cache (same fab, same fits)
    return {
        **os.environ,
        "PREFECT_API_URL": api_url,
        "PREFECT_LOCAL_STORAGE_PATH": str(shared_fit_cache(tmp_path / "prefect-storage")),
    }


def _run(drops: list[Path], db: Path, out: Path, *extra: str) -> list[str]:
    return [YIELDRANK, "run", *map(str, drops), "--db", str(db), "--out", str(out), *extra]


def test_a_run_that_cannot_get_the_database_fails_naming_it_and_its_holder(tmp_path, prefect_api):  # noqa: F811
    truth = simulate_small_fab(tmp_path / "fab")
    db = tmp_path / "fab.duckdb"
    holder = hold_in_other_process(db, 120)
    try:
        done = subprocess.run(
            _run(truth.drop_dirs, db, tmp_path / "reports", "--lock-wait", "2"),
            env=_env(prefect_api, tmp_path),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert holder.poll() is None, "the holder must still hold the file"
    finally:
        holder.kill()
        holder.wait()
    assert done.returncode == 1, done.stdout + done.stderr
    message = " ".join(done.stderr.split())
    assert f"database {db.resolve()} is in use by PID {holder.pid}" in message
    assert "waited 2 s" in message
    # nothing was written: the holder's table is all there is
    tables = rows(db, "SELECT table_name FROM information_schema.tables")
    assert tables == [("marker",)]


def test_two_runs_at_once_are_serialised_and_corrupt_nothing(tmp_path, prefect_api):  # noqa: F811
    truth = simulate_small_fab(tmp_path / "fab")
    db = tmp_path / "fab.duckdb"
    runs = [
        subprocess.Popen(
            _run(truth.drop_dirs, db, tmp_path / f"reports-{i}", "--lock-wait", "900"),
            env=_env(prefect_api, tmp_path),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [run.communicate(timeout=1200) for run in runs]
    for run, (out, err) in zip(runs, outputs, strict=True):
        assert run.returncode == 0, out + err
        assert out.strip().startswith("report: ")
        assert Path(out.strip().removeprefix("report: ")).is_file()

    # one run merged each drop, the other found it merged: they did not interleave
    log = rows(db, "SELECT drop_path, status FROM meta.drop_log ORDER BY attempt_id")
    for drop in truth.drop_dirs:
        statuses = sorted(s for p, s in log if Path(p) == drop.resolve())
        assert statuses == ["already_merged", "merged"], log
    # the data are the simulated fab's, once
    assert rows(db, "SELECT count(*) FROM core.lots")[0][0] == truth.lots
    assert rows(db, "SELECT count(*) FROM core.wafers")[0][0] == truth.wafers
    # each run wrote its own complete ranking
    per_run = rows(db, "SELECT run_id, count(*) FROM subprocess_ranking GROUP BY run_id")
    assert len(per_run) == 2
    assert all(n == len(truth.layers) for _, n in per_run), per_run
