"""Embedded defaults for running the pipeline with nothing started by hand.

Everything is local and offline: a DuckDB file, Prefect's own temporary server on
127.0.0.1 (SQLite under PREFECT_HOME), no account, no cloud, no analytics.

`apply_offline_defaults()` must run before Prefect reads its settings, which is why
`flows.terminal` (the CLI's `run` and `demo`) calls it before importing `flows.orchestration.prefect_flows`.
Values already in the environment win: a user who exports PREFECT_API_URL runs against
that server instead.

One Prefect server per run, never one per process: `prefect_api()` starts the
temporary server explicitly (when no PREFECT_API_URL is set) and puts its URL in the
settings context, with PREFECT_SERVER_EPHEMERAL_ENABLED=false. Prefect serialises that
context with every task it ships to a Dask worker, so the workers report to this one
server and may not start one. Start the workers themselves with `WORKER_ENV` (that same
setting): a worker that somehow has no URL then fails loudly ("No Prefect API URL
provided") instead of starting a server of its own, which costs 10-20 s per worker and
splits the run's records over several databases.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

# Exit code of `yieldrank run`, `report` and `demo` when the run finished with its report but
# something the engineer must know broke on the way: a chart that could not be drawn (a note
# in its place), a layer whose fit failed with an error (its row says why). Not 1 (the run
# failed: no report, or drops rejected) nor 2 (bad arguments), so a scheduler can tell them
# apart. A layer with too little data or a model that did not converge is a result about the
# data, reported as such, not a degraded run.
EXIT_DEGRADED = 3

OFFLINE_DEFAULTS: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "GX_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "MPLBACKEND": "Agg",
    # `prefect server start` and the temporary server listen on loopback only.
    "PREFECT_SERVER_API_HOST": "127.0.0.1",
    # No UI assets to build or serve for the embedded server.
    "PREFECT_SERVER_UI_ENABLED": "false",
    # Give a cold start on a busy 2-core machine time to come up.
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
}

# For processes that run tasks but must never host a server (Dask workers).
WORKER_ENV: dict[str, str] = {
    "PREFECT_SERVER_EPHEMERAL_ENABLED": "false",
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
}

DEFAULT_DB = "runs/yieldrank.duckdb"
DEFAULT_OUT = "runs/reports"
# How long a run waits for another run's hold on the DuckDB file before failing.
DEFAULT_LOCK_WAIT_SECONDS = 600.0
LOCK_WAIT_ENV = "YIELDRANK_DB_LOCK_WAIT"


def apply_offline_defaults() -> None:
    for name, value in OFFLINE_DEFAULTS.items():
        os.environ.setdefault(name, value)


def lock_wait_seconds(explicit: float | None = None) -> float:
    if explicit is not None:
        return float(explicit)
    raw = os.environ.get(LOCK_WAIT_ENV)
    if raw is None:
        return DEFAULT_LOCK_WAIT_SECONDS
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{LOCK_WAIT_ENV}={raw!r} is not a number of seconds") from None


@contextmanager
def prefect_api() -> Iterator[str]:
    """Yield the Prefect API URL every process of this run talks to.

    Uses PREFECT_API_URL when set (a `prefect server start` somewhere); otherwise
    starts Prefect's temporary server on 127.0.0.1 for the duration of the block.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_EPHEMERAL_ENABLED,
        temporary_settings,
    )

    configured = PREFECT_API_URL.value()
    if configured:
        yield configured
        return

    from prefect.logging.handlers import APILogWorker
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start()
    try:
        # Prefect ships these settings with every task it sends to a Dask worker: the worker
        # reports to this server and, with ephemeral mode off, can never start its own.
        one_server = {PREFECT_API_URL: server.api_url, PREFECT_SERVER_EPHEMERAL_ENABLED: False}
        with temporary_settings(updates=one_server):
            yield server.api_url
            # the run's last log lines are still queued: send them while the server listens
            APILogWorker.drain_all(timeout=10)
    finally:
        server.stop()
