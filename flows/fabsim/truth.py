"""What a simulation planted and delivered: `SimulationTruth`, written as `truth.json`."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

TRUTH_SCHEMA = "yieldrank.simulate.truth/v1"


@dataclass(frozen=True)
class PlantedEffect:
    """One planted effect, located as the analysis's `findings` locate theirs."""

    effect: str  # "tool", "chamber", "metrology", "dispersion"
    layer: str
    operation: str
    tool_id: str
    chamber_id: str | None
    param: str | None
    size_logit: float  # the yield-logit shift; per unit_sd of `param` for "metrology"; 0 else
    yield_impact: float  # pp over all wafers: mean(p without this effect - p simulated) * 100
    yield_impact_affected: float  # the same, over the wafers the effect touched
    n_wafers_affected: int
    param_target: float | None = None
    param_unit_sd: float | None = None
    param_shift: float | None = None  # metrology: shift of the tool's wafers, in param units
    sd_ratio: float | None = None  # dispersion: sd ratio of the noisy chamber
    # the design's finding loss at the true effects (flows/fabsim/equipment.py): points of fab
    # yield gained if the level performed like its operation's typical level; on its own wafers
    loss: float | None = None
    loss_on_wafers: float | None = None
    param_shift_vs_typical: float | None = None  # metrology: tool level - typical, param units


@dataclass(frozen=True)
class DropInfo:
    name: str
    path: str  # relative to the simulation folder
    tables: dict[str, int]  # table -> rows


@dataclass
class SimulationTruth:
    """What `truth.json` holds; `SimulationTruth.load(out_dir)` reads it back.

    Keys: `schema`, `seed`, `null`, `lots`, `wafers`, `step_rows`, `format`, `layers` (route
    order), `route` (per operation: layer, operation, step_seq, equipment, tools with their
    chamber ids, None for a single-chamber tool), `params` (param, layer, operation, target,
    unit_sd, sites), `products` (product, route, dies_total, base_logit), `yield_model`,
    `planted` (the PlantedEffect fields), `layer_yield_impact` (every layer -> yield points:
    the ranking's impact definition at the true effects, see `_layer_impacts`; 0.0 where nothing
    is planted), `drops` (name, path relative to the folder, rows per table), `equipment_sd`
    and `equipment_offsets` (every tool's and multi-chamber tool's chamber's true logit
    offset), `shadow` (the correlated-dispatch shadow tool and its lot overlap with the bad
    tool, or None) and `layer_loss` (every layer -> the sum of its planted findings' true
    `loss`, the design's layer loss at the true effects); with planted excursions also
    `excursions`; with `FabConfig(dies=True)` also `dies` (D0 and its unit, alpha, die areas and zone
    sizes, the mechanisms' bins and names, the signature chambers, the yield and each bin's
    share of the dies written: `flows.fabsim.dies.DieSimulation.truth_record`). Timestamps in
    the drops are UTC without an offset.
    """

    schema: str
    seed: int
    null: bool
    lots: int
    wafers: int
    step_rows: int
    format: str
    layers: list[str]
    route: list[dict[str, Any]]
    params: list[dict[str, Any]]
    products: list[dict[str, Any]]
    yield_model: dict[str, float]
    planted: list[PlantedEffect]
    layer_yield_impact: dict[str, float]
    drops: list[DropInfo]
    # (tool, chamber) SDs; {"tool": {tool_id: logit}, "chamber": {"TOOL:CHk": logit}}
    equipment_sd: list[float] = field(default_factory=lambda: [0.0, 0.0])
    equipment_offsets: dict[str, dict[str, float]] = field(default_factory=dict)
    shadow: dict[str, Any] | None = None  # correlated dispatch (`Dispatch.to_json`), else None
    layer_loss: dict[str, float] = field(default_factory=dict)  # layer -> sum of planted losses
    out_dir: Path = field(default=Path("."), compare=False)
    # the planted excursions (`flows.fabsim.excursions.PlantedExcursion` fields); the key is
    # written only when some were planted, so other simulations' truth.json stay as they were
    excursions: list[dict[str, Any]] = field(default_factory=list)
    dies: dict[str, Any] | None = None  # the die model (FabConfig(dies=True)); absent else

    @property
    def drop_dirs(self) -> list[Path]:
        return [self.out_dir / d.path for d in self.drops]

    def effect(self, kind: str) -> PlantedEffect | None:
        """The planted effect of that kind, if any."""
        return next((e for e in self.planted if e.effect == kind), None)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("out_dir")
        if not d["excursions"]:
            d.pop("excursions")
        if d["dies"] is None:  # a fab without dies writes the truth.json it always wrote
            d.pop("dies")
        return d

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, out_dir: str | Path) -> SimulationTruth:
        out_dir = Path(out_dir)
        d = json.loads((out_dir / "truth.json").read_text())
        if d.get("schema") != TRUTH_SCHEMA:
            raise ValueError(
                f"{out_dir / 'truth.json'}: schema {d.get('schema')!r}, not {TRUTH_SCHEMA}"
            )
        d["planted"] = [PlantedEffect(**e) for e in d["planted"]]
        d["drops"] = [DropInfo(**x) for x in d["drops"]]
        return cls(**d, out_dir=out_dir)
