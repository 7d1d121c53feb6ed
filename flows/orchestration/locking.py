"""One writer per DuckDB file: hold the database for a run, or wait for it and say who holds it."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from flows.settings import lock_wait_seconds

# --------------------------------------------------------------------------------------
# The DuckDB file: one holder at a time.


class DatabaseBusy(RuntimeError):
    """Another process holds the DuckDB file for longer than this run was willing to wait."""


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (?P<exe>.*?) \(PID (?P<pid>\d+)\)")


def _describe_holder(message: str) -> str:
    match = _LOCK_HOLDER.search(message)
    if not match:
        return "an unknown process"
    pid = match["pid"]
    try:  # the command line says which run it is, when the holder is on this machine
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        command = " ".join(a.decode(errors="replace") for a in argv if a)
    except OSError:
        command = match["exe"]
    return f"PID {pid} ({command})"


@contextmanager
def hold_database(
    db_path: str | Path, wait_seconds: float | None = None, *, read_only: bool = False
) -> Iterator[Path]:
    """Hold the DuckDB file for the block, waiting for another holder to finish.

    Connections that the plain functions open to the same file from this process, with
    the same `read_only`, share the held instance (DuckDB keeps one instance per file per
    process), so they go through; writers in other processes are kept out until the block
    ends (and, while it holds read-write, readers too).
    """
    path = Path(db_path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    wait = lock_wait_seconds(wait_seconds)
    deadline = time.monotonic() + wait
    pause = 0.2
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            break
        except duckdb.IOException as err:
            if "lock" not in str(err).lower():
                raise
            if time.monotonic() >= deadline:
                raise DatabaseBusy(
                    f"database {path} is in use by {_describe_holder(str(err))}; "
                    f"waited {wait:g} s for it (set YIELDRANK_DB_LOCK_WAIT or --lock-wait "
                    "to wait longer)"
                ) from err
            time.sleep(min(pause, max(deadline - time.monotonic(), 0.01)))
            pause = min(pause * 1.5, 2.0)
    try:
        yield path
    finally:
        con.close()
