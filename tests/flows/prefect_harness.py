"""One Prefect test server for the whole test session (its start-up costs 10-20 s).

Test modules that run flows import the `prefect_api` fixture from here. Whichever module
asks first starts `prefect_test_harness`; the others get the same server (a module-level
singleton, because a fixture imported into several modules is registered once per module).

Task results and the fit cache go to a temporary folder, so a test never reuses a fit
cached by an earlier session or by a user's own runs.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest

from flows.settings import apply_offline_defaults

_session: dict[str, object] = {}


def start_shared_harness() -> tuple[str, bool]:
    """The shared server's API URL, and whether this call started it."""
    if "url" in _session:
        return str(_session["url"]), False
    apply_offline_defaults()
    from prefect.settings import PREFECT_API_URL, PREFECT_LOCAL_STORAGE_PATH, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    stack = ExitStack()
    storage = Path(tempfile.mkdtemp(prefix="yieldrank-prefect-storage-"))
    stack.enter_context(temporary_settings(updates={PREFECT_LOCAL_STORAGE_PATH: storage}))
    stack.enter_context(prefect_test_harness(server_startup_timeout=120))
    _session.update(stack=stack, storage=storage, url=PREFECT_API_URL.value())
    return str(_session["url"]), True


def stop_shared_harness() -> None:
    stack = _session.pop("stack", None)
    _session.clear()
    if stack is not None:
        stack.close()


@pytest.fixture(scope="session")
def prefect_api() -> Iterator[str]:
    """The API URL of the session's Prefect test server (flows in this process use it)."""
    url, started = start_shared_harness()
    yield url
    if started:  # session teardown, while pytest's output streams are still open
        stop_shared_harness()


def shared_fit_cache(fallback: Path) -> Path:
    """Where this session's flows keep cached fits, for subprocess runs to share them.

    Runs over the same simulated fab then reuse fits instead of refitting (the fits are
    tested where they are computed); `fallback` when no shared server was started.
    """
    return Path(_session.get("storage", fallback))  # type: ignore[arg-type]
