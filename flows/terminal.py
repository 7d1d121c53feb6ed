"""Running `yield_run` from a terminal: one Prefect API for the run, rich progress, a verdict.

The CLI commands `run` and `demo` both come through `run_in_terminal`.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TaskID,
    TextColumn,
)

from flows.settings import apply_offline_defaults

console = Console(stderr=True)

_STATUS_STYLE = {
    "merged": "green",
    "already merged": "cyan",
    "ranked": "green",
    "rejected": "red",
    "failed": "red",
}


@dataclass
class TerminalRun:
    ok: bool  # the run finished with its report (degraded or not)
    message: str
    summary: Any  # flows.orchestration.prefect_flows.RunSummary when the flow got far enough to return one
    degraded: bool = False  # ... but with problems the engineer must know (summary.problems)


class _ProgressView:
    """Turns pipeline events into rich progress bars and one line per drop and layer."""

    def __init__(self, progress: Progress) -> None:
        self.progress = progress
        self.bars: dict[str, TaskID] = {}

    def _bar(self, name: str, description: str, total: int | None) -> None:
        self.bars[name] = self.progress.add_task(description, total=total)

    def _line(self, what: str, name: str, status: str, note: str = "") -> None:
        style = _STATUS_STYLE.get(status, "yellow")
        note = f": {escape(note)}" if note else ""
        self.progress.console.print(
            f"  {what} {escape(name)}: [{style}]{escape(status)}[/{style}]{note}",
            highlight=False,
            soft_wrap=True,
        )

    def __call__(self, event: str, **info: Any) -> None:
        if event == "drops":
            self._bar("drops", "ingest drops", info["total"])
        elif event == "drop":
            note = info.get("message", "") if info["status"] != "merged" else ""
            self._line("drop", info["drop"], info["status"], note)
            self.progress.advance(self.bars["drops"])
        elif event == "fits":
            self._bar("fits", "fit layers", info["total"])
        elif event == "fit":
            self._line("layer", info["layer"], info["status"], info.get("reason") or "")
            self.progress.advance(self.bars["fits"])
        elif event == "report-start":
            self._bar("report", "build report", 1)
        elif event == "report":
            self.progress.advance(self.bars["report"])
            for problem in info.get("problems") or []:
                self._line("report", "chart", "not drawn", problem)


def run_in_terminal(
    drops: list[str],
    db: str | Path,
    out: str | Path,
    *,
    landing: str | Path | None = None,
    task_runner: str = "threads",
    seed: int = 0,
    lock_wait: float | None = None,
    materiality: float | None = None,
) -> TerminalRun:
    """Run `yield_run` with progress on the terminal; never raises for a failed run."""
    apply_offline_defaults()
    from flows.orchestration.prefect_flows import yield_run
    from flows.orchestration.progress import progress_to
    from flows.settings import prefect_api

    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        console=console,
        transient=True,
    )
    with ExitStack() as stack:
        with console.status("connecting to Prefect (a local server starts if none is set)"):
            api = stack.enter_context(prefect_api())
        console.print(f"Prefect API: {api}")
        with progress, progress_to(_ProgressView(progress)):
            state = yield_run(
                drops=[str(d) for d in drops],
                landing=str(landing) if landing else None,
                db=str(db),
                out=str(out),
                task_runner=task_runner,
                seed=seed,
                lock_wait=lock_wait,
                materiality=materiality,
                return_state=True,
            )
    summary = state.result(raise_on_failure=False)
    if isinstance(summary, BaseException):
        return TerminalRun(ok=False, message=state.message or str(summary), summary=None)
    return TerminalRun(
        ok=state.is_completed(),
        message=state.message or "",
        summary=summary,
        degraded=state.is_completed() and bool(getattr(summary, "problems", None)),
    )


def print_problems(what: str, problems: list[str]) -> None:
    """A degraded run's problems, one line each, on the terminal (stderr)."""
    console.print(
        f"[yellow]{escape(what)} degraded[/yellow] ({len(problems)} problem(s); "
        "the report was written, with a note where something is missing):",
        highlight=False,
        soft_wrap=True,
    )
    for problem in problems:
        console.print(f"  - {escape(problem)}", highlight=False, soft_wrap=True)
