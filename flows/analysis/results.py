"""What an analysis run produces: plain, picklable, JSON-able records.

These types are the seam between the statistics (`flows.analysis.layers`,
`flows.analysis.ranking`), the orchestration (`flows.orchestration.prefect_flows`, which ships
`LayerFit`s back from Dask workers) and the reports (`flows.report`). They hold
numbers and labels only, never fitted model objects, so that a worker can return
them and a report can be rebuilt from the JSON alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

LayerStatus = Literal["ranked", "not_converged", "too_little_data", "failed"]
EffectKind = Literal["tool", "chamber", "metrology", "dispersion", "lot"]


@dataclass(frozen=True)
class RandomEffect:
    """One predicted random effect (a tool, a chamber, ...) with its prediction SE."""

    term: str  # e.g. "tool:GATE_ETCH"
    level: str  # e.g. "ETCH03" or "ETCH03:CH2"
    estimate: float  # on the linear-predictor scale (logit for yield)
    se: float
    operation: str | None = None
    tool_id: str | None = None
    chamber_id: str | None = None


@dataclass(frozen=True)
class Finding:
    """One localised effect inside a sub-process, as in the contract's `findings` table."""

    layer: str
    effect: EffectKind
    estimate: float  # on the model's own scale (logit for yield, log-variance ratio for dispersion)
    yield_impact: float  # yield percentage points
    ci_low: float
    ci_high: float
    p_value: float | None
    operation: str | None = None
    tool_id: str | None = None
    chamber_id: str | None = None
    param: str | None = None


@dataclass
class LayerFit:
    """Everything the ranking and the report need from one layer's models."""

    layer: str
    status: LayerStatus
    reason: str | None = None  # why it is not ranked, in plain words
    operations: list[str] = field(default_factory=list)
    n_wafers: int = 0
    n_lots: int = 0
    method: str = ""  # e.g. "binomial-beta HGLM, HL(1,1), REML"
    converged: bool = False
    n_iter: int = 0
    caic: float | None = None
    varcomp: dict[str, float] = field(default_factory=dict)  # term -> lambda
    fixef: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {estimate, se}
    ranef: list[RandomEffect] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    process_models: list[dict[str, Any]] = field(default_factory=list)
    diagnostics: dict[str, list[float]] = field(default_factory=dict)  # fitted, residuals (sampled)
    yield_impact: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_value_raw: float | None = None
    variance_share: float | None = None
    # chained model only: layer -> {yield_impact, ci_low, ci_high, variance_share}, each layer's
    # terms estimated with every other layer's in the same model
    layer_effects: dict[str, dict[str, float | None]] = field(default_factory=dict)


@dataclass(frozen=True)
class LayerRanking:
    """One row of the contract's `subprocess_ranking` table (plus why a layer is unranked)."""

    layer: str
    rank: int | None  # None when the layer could not be ranked
    yield_impact: float | None
    ci_low: float | None
    ci_high: float | None
    p_value: float | None  # adjusted across layers
    variance_share: float | None
    status: LayerStatus = "ranked"
    reason: str | None = None


@dataclass
class AnalysisResult:
    """One analysis run: the ranking, the findings and the per-layer fits behind them."""

    run_id: str
    created_at: str  # ISO-8601 UTC
    ranking: list[LayerRanking]
    findings: list[Finding]
    layers: list[LayerFit]
    data_summary: dict[str, Any] = field(default_factory=dict)  # drops, date range, lots, wafers
    method: dict[str, Any] = field(default_factory=dict)  # models, versions, impact definition

    def to_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(asdict(self), indent=1, default=str))
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> AnalysisResult:
        raw = json.loads(Path(path).read_text())
        layers = []
        for layer in raw["layers"]:
            layer["ranef"] = [RandomEffect(**r) for r in layer["ranef"]]
            layer["findings"] = [Finding(**f) for f in layer["findings"]]
            layers.append(LayerFit(**layer))
        return cls(
            run_id=raw["run_id"],
            created_at=raw["created_at"],
            ranking=[LayerRanking(**r) for r in raw["ranking"]],
            findings=[Finding(**f) for f in raw["findings"]],
            layers=layers,
            data_summary=raw["data_summary"],
            method=raw["method"],
        )
