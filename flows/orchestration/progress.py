"""Progress of a run: the CLI draws it, the flows report it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

# --------------------------------------------------------------------------------------
# Progress: the CLI draws it, the flows report it. In-process only, never shipped to
# workers (the flow body resolves the futures, so every event fires in this process).


ProgressListener = Callable[..., None]
_listeners: list[ProgressListener] = []


@contextmanager
def progress_to(listener: ProgressListener) -> Iterator[None]:
    """Send this process's pipeline events to `listener(event, **info)` inside the block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def emit_progress(event: str, **info: Any) -> None:
    for listener in list(_listeners):
        listener(event, **info)
