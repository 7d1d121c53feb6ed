"""Helpers shared by the ingestion tests: a database path, snapshots, drop-log lookups."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from flows.warehouse.db import connect
from flows.warehouse.ingest import IngestResult, ingest_drop
from tests.flows.drops import fab_tables, write_drop

CORE = (
    "lots", "wafers", "step_history", "inline_meas", "sort_yield", "sort_die",
    "equipment_events", "bin_defs",
)  # fmt: skip


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "fab.duckdb"


def ingest(drop: Path, db: Path, **kwargs: Any) -> IngestResult:
    """Ingest without GX (the SQL rules decide; GX has its own tests) to keep tests fast."""
    kwargs.setdefault("gx", False)
    return ingest_drop(drop, db, **kwargs)


def snapshot(db: Path) -> dict[str, list[tuple]]:
    """Every core row, sorted: equal snapshots mean the analysis tables did not change."""
    con = connect(db, read_only=True)
    try:
        return {
            t: sorted(con.execute(f"SELECT * FROM core.{t}").fetchall(), key=repr) for t in CORE
        }
    finally:
        con.close()


def query(db: Path, sql: str, params: list | None = None) -> list[tuple]:
    con = connect(db, read_only=True)
    try:
        return con.execute(sql, params or []).fetchall()
    finally:
        con.close()


def last_log(db: Path) -> dict[str, Any]:
    (row,) = query(
        db,
        "SELECT attempt_id, drop_id, status, problems FROM meta.drop_log "
        "ORDER BY attempt_id DESC LIMIT 1",
    )
    return {
        "attempt_id": row[0],
        "drop_id": row[1],
        "status": row[2],
        "problems": json.loads(row[3]),
    }


@pytest.fixture(scope="session")
def base_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A database holding a merged fab (lots L001, L002; wafers, history, metrology, yield)."""
    root = tmp_path_factory.mktemp("base")
    db = root / "fab.duckdb"
    result = ingest(write_drop(root / "base", fab_tables()), db)
    assert result.status == "merged", [str(p) for p in result.problems]
    return db


@pytest.fixture
def base_db(base_template: Path, db: Path) -> Path:
    """A private copy of the base database (built once per session)."""
    shutil.copyfile(base_template, db)
    wal = base_template.with_name(base_template.name + ".wal")
    if wal.exists():
        shutil.copyfile(wal, db.with_name(db.name + ".wal"))
    return db
