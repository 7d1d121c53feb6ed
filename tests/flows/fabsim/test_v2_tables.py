"""The simulator's optional v2 tables: equipment events and bin definitions, on request only.

Asking for them must not move any other table of the same seed (their random stream is their
own), and what they hold must pass the contract when the drops are ingested in order.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from flows.fabsim.config import FabConfig
from flows.fabsim.simulation import simulate_fab
from flows.fabsim.tables import BIN_NAMES, OPTIONAL_TABLES
from flows.warehouse.ingest import ingest_drop

SMALL = {"lots": 40, "n_drops": 3, "wafers_per_lot": (3, 25), "sort_die_fraction": 0.2}


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    """The same small fab (seed 5) without and with the optional tables."""
    root = tmp_path_factory.mktemp("v2")
    plain = simulate_fab(root / "plain", FabConfig(**SMALL), seed=5)
    extra = simulate_fab(
        root / "extra", FabConfig(**SMALL, equipment_events=True, bin_defs=True), seed=5
    )
    return plain, extra


def _is_optional(name: str) -> bool:
    return any(f"/{t}" in "/" + name for t in OPTIONAL_TABLES)


def test_the_optional_tables_change_no_other_table(pair):
    plain, extra = pair
    a, b = _files(plain.out_dir), _files(extra.out_dir)
    assert not any(_is_optional(n) for n in a)  # nothing unasked
    added = sorted(n for n in b if _is_optional(n))
    assert added and any("equipment_events" in n for n in added)
    assert any("bin_defs" in n for n in added)
    a.pop("truth.json"), b.pop("truth.json")  # it lists the drops' tables, the new ones too
    assert {n: v for n, v in b.items() if not _is_optional(n)} == a
    assert extra.planted == plain.planted
    assert extra.layer_yield_impact == plain.layer_yield_impact


def test_the_events_are_reproduced_by_the_seed(pair, tmp_path):
    _, extra = pair
    again = simulate_fab(
        tmp_path / "again", FabConfig(**SMALL, equipment_events=True, bin_defs=True), seed=5
    )
    assert _files(again.out_dir) == _files(extra.out_dir)
    other = simulate_fab(tmp_path / "other", FabConfig(**SMALL, equipment_events=True), seed=6)
    events = [n for n in _files(other.out_dir) if "equipment_events" in n]
    assert events and _files(other.out_dir)[events[0]] != _files(extra.out_dir).get(events[0])


def test_the_drops_with_events_and_bins_ingest_and_keep_every_yield(pair, tmp_path):
    plain, extra = pair
    yields = {}
    for name, sim in (("plain", plain), ("extra", extra)):
        db = tmp_path / f"{name}.duckdb"
        for drop in sim.drop_dirs:
            result = ingest_drop(drop, db, gx=False)
            assert result.status == "merged", [str(p) for p in result.problems]
        con = duckdb.connect(str(db), read_only=True)
        try:
            yields[name] = con.sql("SELECT * FROM core.wafer_yield ORDER BY wafer_id").fetchall()
            if name == "extra":
                per_tool = con.sql(
                    "SELECT tool_id, count(*) FILTER (WHERE kind = 'pm'), "
                    "count(*) FILTER (WHERE kind = 'qual') FROM core.equipment_events GROUP BY 1"
                ).fetchall()
                (tools,) = con.sql(
                    "SELECT count(DISTINCT tool_id) FROM core.step_history"
                ).fetchall()[0]
                bins = con.sql("SELECT bin, name, good FROM core.bin_rule ORDER BY bin").fetchall()
        finally:
            con.close()
    # the definitions agree with the default rule: no wafer's yield moves
    assert yields["extra"] == yields["plain"]
    assert any(r[-1] == "sort_die" for r in yields["plain"])
    assert bins == [(b, n, b == 1) for b, n in sorted(BIN_NAMES.items())]
    # a PM and its qual on (nearly) every tool, a few at most over the simulated weeks
    assert len(per_tool) >= 0.9 * tools
    assert all(pm == qual and 1 <= pm <= 6 for _, pm, qual in per_tool)


def _parts(drop: Path, table: str) -> list[Path]:
    return sorted([*drop.glob(f"{table}.parquet"), *drop.glob(f"{table}/*.parquet")])


def test_events_arrive_only_once_their_tool_and_chamber_were_delivered(pair):
    _, extra = pair
    con = duckdb.connect()
    seen_by_drop, later = set(), []
    for drop in extra.drop_dirs:
        for path in _parts(drop, "step_history"):
            seen_by_drop |= set(
                con.sql(f"SELECT DISTINCT tool_id, chamber_id FROM '{path}'").fetchall()
            )
        for path in _parts(drop, "equipment_events"):
            events = con.sql(f"SELECT tool_id, chamber_id FROM '{path}'").fetchall()
            tools = {t for t, _ in seen_by_drop}
            later += [e for e in events if e[0] not in tools or (e[1] and e not in seen_by_drop)]
    assert later == [] and seen_by_drop
