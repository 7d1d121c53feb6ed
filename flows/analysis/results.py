"""What an analysis run produces: plain, picklable, JSON-able records.

These types are the seam between the statistics (`flows.analysis.layers`,
`flows.analysis.ranking`), the orchestration (`flows.orchestration.prefect_flows`, which ships
`LayerFit`s back from Dask workers) and the reports (`flows.report`). They hold
numbers and labels only, never fitted model objects, so that a worker can return
them and a report can be rebuilt from the JSON alone.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

# Materiality (issue 14): a finding or layer is "material" when its loss is significant and
# the lower end of its 95 % interval exceeds this many points of FAB yield (a minimum-effect
# test at one-sided 2.5 %). 0.25 points is a tool that runs a tenth of the wafers and loses
# 2.5 points on them. Fab yield, not yield on the affected wafers (the other
# candidate, 2 points there), because that is what the fab earns: 2 points on a chamber
# that ran 1 % of the wafers are 0.02 points of the fab. Healthy tools' real, small
# differences (SD 0.02 logit: about 0.3 points on a tool's own wafers, a few hundredths of
# fab yield) stay below it; the simulator's planted tools (0.9-2.4 points of fab yield) are
# above it. `yieldrank run/analyse --materiality` overrides it. Here, not in flows.settings: the
# analysis imports nothing of the entry points' settings (tests/test_architecture.py).
DEFAULT_MATERIALITY = 0.25


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
    # issue 14: multiplicity, materiality, where the number comes from, aliases, the lots
    p_adjusted: float | None = None  # Holm over the run's findings, at least its operation's
    material: bool | None = None  # p_adjusted < 0.05 and ci_low above the materiality threshold
    loss_on_wafers: float | None = None  # the same loss in points of yield on its own wafers
    n_wafers: int | None = None
    n_lots: int | None = None
    lots: list[str] = field(default_factory=list)  # lot ids, sorted
    aliased_with: str | None = None  # "operation:tool[:chamber]" joined by ";"
    # operation, tool_id, chamber_id, overlap, shared_lots, estimate, yield_impact
    aliases: list[dict[str, Any]] = field(default_factory=list)
    model: str | None = None  # "chained", "operation test", "process model"
    # metrology chain: operation, tool_id, chamber_id, shift, shift_low, shift_high,
    # shift_sigma, sigma, unit_note, yield_impact
    cause: dict[str, Any] | None = None
    # contract v2 columns, not estimated yet
    onset_ts: str | None = None
    onset_low: str | None = None
    onset_high: str | None = None
    end_ts: str | None = None
    active: bool | None = None
    event: str | None = None
    zone: str | None = None
    bin: int | None = None  # the hard bin (contract v2: int)


@dataclass(frozen=True)
class OperationTest:
    """The test of one operation's equipment (or one metrology parameter) given all the rest.

    `statistic`, `df`, `n_boundary`, `p_value`: the likelihood-ratio test of the operation's
    tool and chamber variance components (kind "equipment") or of the parameter's coefficient
    (kind "metrology") against a model holding every other term at its chained-model estimate;
    `p_adjusted`: Holm over all tests of the run. `detectable_shift`: the smallest tool shift
    (yield points on a typical tool's wafers) this fab's data detect with 80 % power at the
    family's Bonferroni level; `detectable_shift_logit` the same on the logit scale.
    """

    layer: str
    operation: str
    kind: Literal["equipment", "metrology"]
    param: str | None = None
    statistic: float | None = None
    df: int | None = None
    n_boundary: int | None = None
    p_value: float | None = None
    p_adjusted: float | None = None
    n_tools: int | None = None
    n_chambers: int | None = None
    n_lots: int | None = None
    detectable_shift: float | None = None
    detectable_shift_logit: float | None = None
    reason: str | None = None  # why the test has no p-value, in plain words


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
    material: bool | None = None  # significant and ci_low above the materiality threshold
    significant: bool | None = None  # a loss finding with p_adjusted < 0.05
    loss_label: str | None = None  # e.g. "no loss found"


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
    operation_tests: list[OperationTest] = field(default_factory=list)
    materiality: float = DEFAULT_MATERIALITY  # points of fab yield

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
            layers.append(LayerFit(**_known(LayerFit, layer)))
        return cls(
            run_id=raw["run_id"],
            created_at=raw["created_at"],
            ranking=[LayerRanking(**_known(LayerRanking, r)) for r in raw["ranking"]],
            findings=[Finding(**_known(Finding, f)) for f in raw["findings"]],
            layers=layers,
            data_summary=raw["data_summary"],
            method=raw["method"],
            operation_tests=[
                OperationTest(**_known(OperationTest, t)) for t in raw.get("operation_tests", [])
            ],
            materiality=float(raw.get("materiality", DEFAULT_MATERIALITY)),
        )


def _known(kind: type, record: dict[str, Any]) -> dict[str, Any]:
    """The fields of `record` that `kind` has: a record written by a newer version still reads
    (fields an older version lacks take their defaults)."""
    names = {f.name for f in fields(kind)}
    return {k: v for k, v in record.items() if k in names}
