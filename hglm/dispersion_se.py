"""Standard errors of the HL log-dispersion parameters, computed when first read.

May import: ``hglm.state``, ``hglm.model``, ``hglm.criterion``.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping

import numpy as np

from hglm.criterion import Criterion
from hglm.model import Model
from hglm.state import Dispersions, MeanFit


class DispersionSE(Mapping[str, np.ndarray]):
    """SEs of the log-dispersion coefficients from the observed information of the criterion.

    The information is a finite-difference Hessian of the HL criterion, which costs many
    criterion evaluations (as much as the whole search on the larger models), so it is
    computed when an SE is first read, then kept. Keys: "phi" (if estimated) and each term's
    name. Its time is added to ``timings["se_hessian"]`` (the fit's timings once the result
    is built; see ``record_timings_in``)."""

    def __init__(
        self,
        model: Model,
        disp: Dispersions,
        fit: MeanFit,
        x_hat: np.ndarray,
        which: str,
        joint: bool,
    ) -> None:
        self._model, self._disp, self._fit = model, disp, fit
        self._x_hat, self._which, self._joint = x_hat, which, joint
        self._se: dict[str, np.ndarray] | None = None
        self.timings: dict[str, float] = {}

    def record_timings_in(self, timings: dict[str, float]) -> None:
        self.timings = timings

    @property
    def computed(self) -> bool:
        return self._se is not None

    def compute(self) -> dict[str, np.ndarray]:
        if self._se is None:
            t0 = time.perf_counter()
            self._se = self._standard_errors()
            self.timings["se_hessian"] = self.timings.get("se_hessian", 0.0) + (
                time.perf_counter() - t0
            )
        return self._se

    def _standard_errors(self) -> dict[str, np.ndarray]:
        model, disp = self._model, self._disp
        d = model.design
        p = d.p if self._joint else 0
        try:
            crit = Criterion(model, disp, self._fit, self._which, beta_free=self._joint)
            cov = np.linalg.inv(-crit.hessian(self._x_hat))[p:, p:]
            var = np.diag(cov)
            sd = np.sqrt(np.where(var > 0, var, np.nan))
        except np.linalg.LinAlgError:
            sd = np.full(len(self._x_hat) - p, np.nan)
        se: dict[str, np.ndarray] = {}
        pos = 0
        if not disp.phi_fixed:
            se["phi"] = sd[: len(disp.gamma)]
            pos = len(disp.gamma)
        for t, dk in zip(d.terms, disp.delta, strict=True):
            se[t.name] = sd[pos : pos + len(dk)]
            pos += len(dk)
        return se

    def __getitem__(self, key: str) -> np.ndarray:
        return self.compute()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.compute())

    def __len__(self) -> int:
        return len(self.compute())
