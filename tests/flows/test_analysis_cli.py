"""`yieldrank analyse` as a user runs it, and `flows.analysis.run.run_analysis` end to end on a small fab."""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.warehouse.ingest import ingest_drop

YIELDRANK = shutil.which("yieldrank", path=str(Path(sys.executable).parent))


def run_cli(*args: str) -> subprocess.CompletedProcess:
    assert YIELDRANK, "the yieldrank entry point is not installed in this environment"
    return subprocess.run([YIELDRANK, *args], capture_output=True, text=True, timeout=900)


def test_analyse_without_a_database_says_so(tmp_path):
    done = run_cli("analyse", "--db", str(tmp_path / "none.duckdb"), "--out", str(tmp_path))
    assert done.returncode == 2
    assert "no database" in done.stderr and "none.duckdb" in done.stderr


@pytest.mark.slow
def test_analyse_writes_the_contract_tables_and_files(tmp_path):
    truth = simulate_fab(
        tmp_path / "drops", FabConfig(lots=60, layers=("GATE", "M1"), planted=None), seed=4
    )
    db = tmp_path / "fab.duckdb"
    for drop in truth.drop_dirs:
        assert ingest_drop(drop, db, gx=False).status == "merged"
    out = tmp_path / "out"
    done = run_cli("analyse", "--db", str(db), "--out", str(out), "--run-id", "r1")
    assert done.returncode == 0, done.stderr
    assert "run r1" in done.stdout
    for name in ("subprocess_ranking.csv", "findings.csv", "analysis.json"):
        assert (out / name).exists(), name
    with (out / "subprocess_ranking.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["layer"] for r in rows) == ["GATE", "M1"]
    con = duckdb.connect(str(db), read_only=True)
    try:
        n = con.execute("SELECT count(*) FROM subprocess_ranking WHERE run_id = 'r1'").fetchone()
        ranked = sum(1 for r in rows if r["rank"])
        assert n == (ranked,)
    finally:
        con.close()


def test_analyse_refuses_a_negative_materiality(tmp_path):
    from typer.testing import CliRunner

    from flows.cli import app

    db = tmp_path / "fab.duckdb"
    db.touch()
    done = CliRunner().invoke(
        app, ["analyse", "--db", str(db), "--out", str(tmp_path), "--materiality", "-1"]
    )
    assert done.exit_code == 2
    assert "--materiality" in done.output and "-1" in done.output
