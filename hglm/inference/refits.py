"""Refits of a fitted model to new responses (the bootstrap's and the LRT bootstrap's), and
the progress bar they show.

May import: ``hglm.dispatch``, ``hglm.model``, ``hglm.simulate`` (``hglm.results`` for
annotations).
"""

from __future__ import annotations

import copy
import dataclasses
import sys
import time
from typing import TYPE_CHECKING, Any

import numpy as np

from hglm.dispatch import solve
from hglm.model import Model
from hglm.simulate import design_response

if TYPE_CHECKING:
    from hglm.results import HGLMResult


def refit(res: HGLMResult, y: np.ndarray, warm_start: bool = True) -> HGLMResult:
    """The same model fitted to a new response vector (on the data column's scale).

    The design, its sparse symbolic factorisation and the method are reused. HL fits start
    from ``res``'s estimates (no EQL pass) and fall back to a cold start (EQL, then HL) if
    that does not converge; EQL fits always start cold, as R hglm does (``hglm.dispatch.solve``).

    Parameters
    ----------
    res : HGLMResult
        The fit whose model (and options) to reuse.
    y : numpy.ndarray
        The new response, one value per row of the fit's data.
    warm_start : bool
        Start the HL search from ``res``'s estimates (True) or cold.

    Returns
    -------
    HGLMResult
        The refit (its ``timings`` hold only the total time).
    """
    model = _model_with_response(res.model, design_response(res.design, y))
    t0 = time.perf_counter()
    outcome = solve(
        model, res.method, reml=res.reml, start=res if warm_start else None, control=res.control
    )
    # a copy of the result (its class, without importing it: hglm.results sits above this)
    return dataclasses.replace(
        res,
        model=model,
        outcome=outcome,
        warnings=outcome.warnings,
        timings={"total": time.perf_counter() - t0},
    )


def _model_with_response(model: Model, y: np.ndarray) -> Model:
    # Nothing in a Model but the design depends on y: the mixed-model equations (pattern,
    # symbolic factorisation) are shared, and every solve refactors numerically.
    clone = copy.copy(model)
    clone.design = dataclasses.replace(model.design, y=y)
    return clone


class RefitProgress:
    """A rich progress bar with the running count of failed refits (silent when off)."""

    def __init__(self, what: str, total: int, show: bool | None) -> None:
        self.show = sys.stderr.isatty() if show is None else show
        self.what, self.total = what, total
        self._p: Any = None

    def __enter__(self) -> RefitProgress:
        if self.show:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
                TimeRemainingColumn,
            )

            self._p = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("failed: {task.fields[failed]}"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
            )
            self._p.__enter__()
            self._task = self._p.add_task(self.what, total=self.total, failed=0)
        return self

    def advance(self, failed: int) -> None:
        if self._p is not None:
            self._p.update(self._task, advance=1, failed=failed)

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.__exit__(*exc)
