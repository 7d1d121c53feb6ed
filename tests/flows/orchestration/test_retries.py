"""`ingest-drop` and the other file-reading tasks retry only on errors a retry can fix.

The condition is checked on its own (fast) and inside a real Prefect flow (slow: the shared
test server), where a programming error must fail the task after one call while a transient
I/O error is retried and the drop then ingested.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from prefect import flow
from prefect.states import Failed

from flows.orchestration import tasks
from flows.orchestration.tasks import ingest_drop_task, is_transient, retry_if_transient
from tests.flows.drops import fab_tables, write_drop
from tests.flows.prefect_harness import prefect_api  # noqa: F401 (the shared server)


@pytest.mark.parametrize(
    ("exc", "transient"),
    [
        (OSError("stale NFS file handle"), True),
        (FileNotFoundError("drop_001/lots.parquet"), True),
        (duckdb.IOException('Could not set lock on file "fab.duckdb"'), True),
        (TypeError("ingest_drop() got an unexpected keyword argument"), False),
        (KeyError("lots"), False),
        (AttributeError("'NoneType' object has no attribute 'table'"), False),
        (duckdb.BinderException("column x not found"), False),  # a wrong query stays wrong
        (ValueError("bad"), False),
        (None, False),
    ],
)
def test_only_io_and_lock_errors_count_as_transient(exc, transient):
    assert is_transient(exc) is transient
    assert retry_if_transient(None, None, Failed(data=exc)) is transient


def _counting_ingest(monkeypatch, fail_with: list[BaseException]) -> list[str]:
    """Replace the plain ingest function: raise `fail_with` in turn, then ingest for real."""
    import flows.warehouse.ingest as ingest_module

    real = ingest_module.ingest_drop
    calls: list[str] = []

    def ingest_drop(drop, db, **kwargs):
        calls.append(str(drop))
        if len(calls) <= len(fail_with):
            raise fail_with[len(calls) - 1]
        return real(drop, db, **kwargs)

    monkeypatch.setattr(ingest_module, "ingest_drop", ingest_drop)
    return calls


def _run_ingest_task(drop: Path, db: Path):
    quick = ingest_drop_task.with_options(retry_delay_seconds=0)

    @flow(name="retry-test")
    def one_drop() -> dict:
        # wrapped, so that a failed task leaves the flow (and this call) alone
        return {"task": quick(str(drop), str(db), return_state=True)}

    return one_drop()["task"]


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_programming_error_in_ingest_is_not_retried(tmp_path, monkeypatch):
    drop = write_drop(tmp_path / "drop_001", fab_tables())
    calls = _counting_ingest(monkeypatch, [TypeError("a bug, not a hiccup")])
    state = _run_ingest_task(drop, tmp_path / "fab.duckdb")
    assert state.is_failed()
    assert len(calls) == 1, f"a TypeError was retried: {len(calls)} calls"
    assert tasks.ingest_drop_task.retries == 2  # the task does retry, just not on bugs


@pytest.mark.slow
@pytest.mark.usefixtures("prefect_api")
def test_a_transient_io_error_in_ingest_is_retried(tmp_path, monkeypatch):
    drop = write_drop(tmp_path / "drop_001", fab_tables())
    calls = _counting_ingest(monkeypatch, [OSError("file still being copied")])
    state = _run_ingest_task(drop, tmp_path / "fab.duckdb")
    assert state.is_completed(), state.message
    assert len(calls) == 2
    assert state.result().status == "merged"
